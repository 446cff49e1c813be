"""Kubernetes resource quantities: parsing (``4Gi``, ``500m``) and display."""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["format_bytes", "parse_bytes", "parse_cpu", "parse_quantity"]


# ---------------------------------------------------------------------------
# Quantities


_QUANTITY = re.compile(
    r"(?P<number>[+-]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"(?:(?P<exponent>[eE][+-]?\d+)|(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E))?"
)
_SUFFIX_FACTORS: dict[str, float] = {
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
    "Ei": 2.0**60,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}


def parse_quantity(text: str | int | float) -> float:
    """Parse a Kubernetes resource quantity.

    Parameters
    ----------
    text
        A number, or a string such as ``"4Gi"``, ``"512Mi"``, ``"1G"``,
        ``"500m"`` (milli), ``"1e3"`` or ``"2.5"``.

    Returns
    -------
    float
        The quantity in base units (bytes, or cores for CPU).

    Raises
    ------
    ValueError
        If the text is not a quantity; the message says what is wrong.
    """
    if isinstance(text, bool):
        raise ValueError(f"invalid quantity {text!r}: expected a number or a string like '4Gi'")
    if isinstance(text, int | float):
        try:
            value = float(text)
        except OverflowError:  # An int beyond any float (YAML allows 4300 digits).
            raise ValueError(f"invalid quantity: a {len(str(text))}-digit number") from None
    elif isinstance(text, str):
        stripped = text.strip()
        match = _QUANTITY.fullmatch(stripped)
        if not match:
            raise ValueError(_explain_bad_quantity(stripped))
        value = float(match["number"] + (match["exponent"] or ""))
        if match["suffix"]:
            value *= _SUFFIX_FACTORS[match["suffix"]]
    else:
        raise ValueError(f"invalid quantity {text!r}: expected a number or a string like '4Gi'")
    if not math.isfinite(value):
        raise ValueError(f"invalid quantity {text!r}: not a finite number")
    return value


def _explain_bad_quantity(text: str) -> str:
    if not text:
        return "invalid quantity '': empty"
    number = re.match(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)", text)
    if number is None:
        return f"invalid quantity {text!r}: does not start with a number"
    suffix = text[number.end() :]
    return (
        f"invalid quantity {text!r}: unknown suffix {suffix!r} "
        "(use Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E, m, or an exponent like 1e3)"
    )


def parse_cpu(value: Any) -> Any:
    if isinstance(value, str | int | float):
        return parse_quantity(value)
    return value


def parse_bytes(value: Any) -> Any:
    if not isinstance(value, str | int | float):
        return value
    quantity = parse_quantity(value)
    if quantity != math.floor(quantity):
        raise ValueError(f"{value!r} is not a whole number of bytes")
    return int(quantity)


def format_bytes(size: int) -> str:
    """Render a byte count in binary units for people (``4 GiB``, ``1.5 MiB``).

    Parameters
    ----------
    size
        A number of bytes.

    Returns
    -------
    str
        The largest binary unit that keeps the number at least 1, with at
        most two decimals.
    """
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            text = f"{value:.2f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
