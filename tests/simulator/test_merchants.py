"""The merchant catalogue is valid: 4-digit MCCs, descriptors that parse back to name, city and country."""

from __future__ import annotations

from simulator.merchants import CATEGORIES, catalogue, load, parse_descriptor, validate


def test_every_merchant_is_valid() -> None:
    merchants = load()
    assert len(merchants) >= 40
    assert [p for m in merchants for p in validate(m)] == []
    assert len({m.id for m in merchants}) == len(merchants), "card acceptor ids are unique"


def test_every_category_has_merchants() -> None:
    present = {m.category for m in catalogue()}
    assert present == set(CATEGORIES)


def test_descriptors_parse() -> None:
    name, city, country = parse_descriptor("BRIGHTBIRD ESPRESSO LONDON GBR", "London")
    assert (name, city, country) == ("BRIGHTBIRD ESPRESSO", "LONDON", "GBR")
    for m in catalogue():
        name, city, _ = parse_descriptor(m.descriptor, m.city)
        assert name == m.name and city == m.city.upper()
        assert len(m.mcc) == 4 and m.mcc.isdigit()


def test_atms_are_6011_and_messages_carry_the_fields_the_bank_requires() -> None:
    for m in catalogue():
        if m.category == "atm":
            assert m.mcc == "6011"
        body = m.message_json()
        assert set(body) == {"id", "name", "mcc", "city", "country", "postcode"}
        assert len(body["country"]) == 2
