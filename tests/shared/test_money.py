import pytest

from shared.errors import BankError
from shared.money import Money, format_amount, parse_amount, parse_currency


@pytest.mark.parametrize("raw, expected", [("1915", 1915), ("1", 1), (250, 250), ("000042", 42)])
def test_parse_amount_accepts_integer_minor_units(raw: object, expected: int) -> None:
    assert parse_amount(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["19.15", "1e3", "NaN", "nan", "inf", "", " 1", "1 ", "+5", "0x10", "١٢", "12abc", 1.5, float("nan"),
     True, False, None, [1], "9" * 16],
)  # fmt: skip
def test_parse_amount_rejects_anything_but_integers(raw: object) -> None:
    with pytest.raises(BankError) as err:
        parse_amount(raw)
    assert err.value.code == "bad_request.bad_param.amount"
    assert err.value.status == 400


def test_negative_and_zero_only_where_allowed() -> None:
    with pytest.raises(BankError):
        parse_amount("-5")
    with pytest.raises(BankError):
        parse_amount("0")
    assert parse_amount("-5", allow_negative=True) == -5
    assert parse_amount("0", allow_zero=True) == 0


def test_amount_bound_guards_against_absurd_values() -> None:
    with pytest.raises(BankError):
        parse_amount(str(10**12 + 1))
    assert parse_amount(str(10**12)) == 10**12


@pytest.mark.parametrize("code", ["GBP", "EUR", "USD", "JPY"])
def test_known_currencies(code: str) -> None:
    assert parse_currency(code) == code


@pytest.mark.parametrize("code", ["gbp", "XXX", "", "GB", None, 826])
def test_unknown_currencies_are_a_clear_4xx(code: object) -> None:
    with pytest.raises(BankError) as err:
        parse_currency(code)
    assert err.value.code == "bad_request.bad_param.currency"


def test_money_arithmetic_keeps_currency_and_integers() -> None:
    assert Money(1915, "GBP") + Money(2440, "GBP") == Money(4355, "GBP")
    assert -Money(5, "EUR") == Money(-5, "EUR")
    with pytest.raises(ValueError):
        Money(1, "GBP") + Money(1, "EUR")
    with pytest.raises(TypeError):
        Money(19.15, "GBP")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Money(True, "GBP")


@pytest.mark.parametrize(
    "amount, currency, text",
    [(1915, "GBP", "£19.15"), (-300, "EUR", "-€3.00"), (500, "JPY", "¥500"), (1234567, "USD", "$12,345.67"),
     (1500, "KWD", "KWD 1.500"), (5, "GBP", "£0.05")],
)  # fmt: skip
def test_format_for_people(amount: int, currency: str, text: str) -> None:
    assert format_amount(amount, currency) == text
