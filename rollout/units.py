"""Parsing the human units plans and policies are written in: durations and percentages.

Used by ``rollout.plan`` when a plan or policy is loaded, before anything is stored or run.
Pure functions; errors are ``ValueError`` with a message a user can act on.
"""

from __future__ import annotations

import math
import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from ``"90s"``, ``"10m"``, ``"1h30m"``, ``"2h"``, or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '10m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        if not text:
            raise ValueError("a duration cannot be empty")
        try:
            seconds = float(text)
        except ValueError:
            position = 0
            seconds = 0.0
            for match in _DURATION_PART.finditer(text):
                if match.start() != position:
                    break
                seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
                position = match.end()
            if position != len(text) or position == 0:
                raise ValueError(
                    f"{value!r} is not a duration: use a number of seconds or units "
                    "ms, s, m, h, d (for example '90s', '10m', '1h30m')"
                ) from None
    else:
        raise ValueError("a duration is a number of seconds or a string like '10m'")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive, got {value!r}")
    return seconds


def parse_fraction(value: object) -> float:
    """A fraction from ``"0.5%"`` (0.005) or a plain number taken as a fraction (0.005)."""
    if isinstance(value, bool):
        raise ValueError("a rate is a fraction like 0.005 or a percentage like '0.5%'")
    if isinstance(value, int | float):
        fraction = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            fraction = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(
                f"{value!r} is not a rate: write a fraction (0.005) or a percentage ('0.5%')"
            ) from None
    else:
        raise ValueError("a rate is a fraction like 0.005 or a percentage like '0.5%'")
    if not math.isfinite(fraction) or fraction < 0:
        raise ValueError(f"a rate must be a non-negative number, got {value!r}")
    return fraction


def format_duration(seconds: float) -> str:
    """The inverse of ``parse_duration`` for messages: 600 -> '10m', 5400 -> '1h30m'."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    remaining = round(seconds)
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"
