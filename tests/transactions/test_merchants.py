"""The merchant directory's rules on a table of real-looking network descriptors, and the MCC table."""

from __future__ import annotations

import pytest

from services.transactions.merchants import (
    CATEGORIES,
    category_for_mcc,
    clean_name,
    emoji_for,
    mcc_table,
    profile,
)

# (descriptor as the network sends it, city, country, MCC) -> (clean name, category, emoji)
DESCRIPTORS = [
    ("BRIGHTBIRD ESPRESSO LONDON GBR", "London", "GB", "5814", "Brightbird Espresso", "eating_out", "☕"),
    ("BRIGHTBIRD ESPRESSO", "London", "GB", "5814", "Brightbird Espresso", "eating_out", "☕"),
    ("SQ *GAIL'S BAKERY", "London", "GB", "5462", "Gail's Bakery", "eating_out", "🍞"),
    ("GREGGS 1234 LEEDS GB", "Leeds", "GB", "5462", "Greggs", "eating_out", "🍞"),
    ("TESCO STORES 3297", "Leeds", "GB", "5411", "Tesco", "groceries", "🛒"),
    ("SAINSBURYS S/MKTS", "Manchester", "GB", "5411", "Sainsbury's", "groceries", "🛒"),
    ("PRET A MANGER #123 LONDON GB", "London", "GB", "5814", "Pret A Manger", "eating_out", "🍔"),
    ("MCDONALDS 1234", "Manchester", "GB", "5814", "McDonald's", "eating_out", "🍔"),
    ("AMZN MKTP UK*1A2B3C", "", "GB", "5942", "Amazon", "shopping", "📚"),
    ("ADDISON LEE TAXI LONDON", "London", "GB", "4121", "Addison Lee Taxi", "transport", "🚕"),
    ("UBER *TRIP HELP.UBER.COM", "London", "GB", "4121", "Uber", "transport", "🚕"),
    ("TFL TRAVEL CH TFL.GOV.UK/CP", "London", "GB", "4111", "TfL", "transport", "🚇"),
    ("SHELL BAYSWATER 2031", "London", "GB", "5541", "Shell Bayswater", "transport", "⛽"),
    ("CASH LINK ATM BRISTOL GBR", "Bristol", "GB", "6011", "Cash Link ATM", "cash", "🏧"),
    ("THE DE BEAUVOIR ARMS N1 4QG", "London", "GB", "5813", "The De Beauvoir Arms", "eating_out", "🍺"),
    ("ODEON CINEMAS 0412", "Oxford", "GB", "7832", "Odeon Cinemas", "entertainment", "🎬"),
    ("EASYJET 000EJU1234", "Luton", "GB", "4511", "easyJet", "holidays", "✈️"),
    ("PREMIER INN 44521", "Cardiff", "GB", "7011", "Premier Inn", "holidays", "🏨"),
    ("THAMES WATER UTILITIE", "Reading", "GB", "4900", "Thames Water Utilitie", "bills", "💡"),
    ("EE LIMITED", "Bristol", "GB", "4812", "EE Limited", "bills", "📱"),
    ("REGUS MANAGEMENT LTD", "London", "GB", "7399", "Regus Management Ltd", "expenses", "💼"),
    ("BOOTS 1092 GLASGOW", "Glasgow", "GB", "5912", "Boots", "shopping", "💊"),
    ("Monmouth Coffee Company", "London", "GB", "5499", "Monmouth Coffee Company", "groceries", "☕"),
    ("HAIR BY O'NEILL LTD", "Belfast", "GB", "7230", "Hair by O'Neill Ltd", "general", "💇"),
]


@pytest.mark.parametrize(("raw", "city", "country", "mcc", "name", "category", "emoji"), DESCRIPTORS)
def test_descriptors_become_clean_merchants(
    raw: str, city: str, country: str, mcc: str, name: str, category: str, emoji: str
) -> None:
    assert clean_name(raw, city, country) == name
    assert category_for_mcc(mcc) == category
    assert emoji_for(name, mcc) == emoji


@pytest.mark.parametrize(
    ("mcc", "category"),
    [
        ("3005", "holidays"), ("3390", "transport"), ("3750", "holidays"), ("4121", "transport"),
        ("5411", "groceries"), ("5542", "transport"), ("5812", "eating_out"), ("5813", "eating_out"),
        ("5942", "shopping"), ("5992", "shopping"), ("6011", "cash"), ("7995", "entertainment"),
        ("9311", "bills"), ("8999", "expenses"), ("0000", "general"), ("9999", "general"),
        ("12x4", "general"), ("", "general"),
    ],
)  # fmt: skip
def test_mcc_categories_the_narrowest_range_winning(mcc: str, category: str) -> None:
    assert category_for_mcc(mcc) == category


def test_the_mcc_table_is_well_formed() -> None:
    table = mcc_table()
    assert len(table) > 80
    assert {row.category for row in table} <= set(CATEGORIES)
    assert {row.category for row in table} == set(CATEGORIES) - {"general"} | {"general"}
    assert all(row.emoji and row.label for row in table)


def test_merchant_ids_are_stable_and_groups_span_branches() -> None:
    a = profile("BB0001", "BRIGHTBIRD ESPRESSO", "5814", "London", "GB", "N1 3JD", "https://logos.test")
    again = profile("BB0001", "BRIGHTBIRD ESPRESSO", "5814", "London", "GB", "N1 3JD", "https://logos.test")
    branch = profile(
        "BB0002", "BRIGHTBIRD ESPRESSO LEEDS", "5814", "Leeds", "GB", "LS1 4AP", "https://logos.test"
    )
    assert a == again and a.id.startswith("merch_") and a.group_id.startswith("grp_")
    assert branch.id != a.id and branch.group_id == a.group_id and branch.name == "Brightbird Espresso"
    assert a.logo == "https://logos.test/brightbird-espresso.png"
    assert a.address["city"] == "London" and a.address["postcode"] == "N1 3JD" and a.address["approximate"]
    assert not a.atm and profile("X", "ATM", "6011", "Leeds", "GB", None, "https://l").atm
