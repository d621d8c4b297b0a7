"""The card network's own wire: ISO 8583:1987 over persistent TCP links (docs/iso8583.md).

`codec` reads and writes the messages (our own implementation of the ASCII profile; the tests check
it against pyiso8583, an independent one), `profile` maps their data elements onto the same request
models and answers as the JSON routes (services/cards/network.py), and `link` is the listener: one
codec in front of the one authorisation service (decision 0032).
"""
