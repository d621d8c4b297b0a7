"""The card-network simulator (and the customers' app): population, scenarios, open-loop load,
reconciliation, reports. An outside client of the bank: it reaches it only through its wires (the
gateway's HTTP API, cards' ISO 8583 link) and imports nothing of it (decision 0044)."""
