"""Durations on the command line: ``90d``, ``12h``, ``30m``, ``45s``, ``1w``, ``1d12h``, or bare seconds."""

from __future__ import annotations

import math
import re

from keyswap.errors import InvalidInput

__all__ = ["MAX_DURATION", "format_duration", "parse_duration"]

#: The longest duration accepted (100 years): far enough for any expiry, small enough to stay exact.
MAX_DURATION = 100 * 365 * 86400

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_NUMBER = r"\d+(?:\.\d+)?"
_BARE = re.compile(_NUMBER, re.ASCII)
_WHOLE = re.compile(rf"(?:{_NUMBER}[wdhms])+", re.ASCII)
_PART = re.compile(rf"({_NUMBER})([wdhms])", re.ASCII)


def parse_duration(text: str) -> float:
    """Parse a duration into seconds.

    A bare number is seconds (``3600``, ``1.5``); otherwise one or more ``<number><unit>`` parts with
    units ``w`` (weeks), ``d``, ``h``, ``m`` (minutes) and ``s``, largest first, e.g. ``90d`` or ``1h30m``.

    Raises:
        InvalidInput: anything else, a negative value, or more than :data:`MAX_DURATION`.
    """
    value = text.strip().lower() if isinstance(text, str) else ""
    if _BARE.fullmatch(value):
        seconds = float(value)
    elif _WHOLE.fullmatch(value):
        parts = _PART.findall(value)
        units = [unit for _, unit in parts]
        order = list(_UNITS)
        if len(set(units)) != len(units) or units != sorted(units, key=order.index):
            raise InvalidInput(
                f"invalid duration {_shown(text)}: give each unit once, largest first (e.g. 1d12h)"
            )
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    else:
        raise InvalidInput(
            f"invalid duration {_shown(text)}: use seconds (3600) or a number with a unit "
            "(w, d, h, m, s), e.g. 90d, 12h, 30m, 45s"
        )
    if not math.isfinite(seconds) or seconds > MAX_DURATION:
        raise InvalidInput(f"invalid duration {_shown(text)}: longer than 100 years")
    return seconds


def _shown(text: object) -> str:
    shown = repr(text)
    return shown if len(shown) <= 42 else shown[:40] + "..."


def format_duration(seconds: float) -> str:
    """A short human form, e.g. ``1d12h``, ``45s``; ``0s`` for zero or less."""
    remaining = round(seconds)
    if remaining <= 0:
        return "0s"
    parts = []
    for unit, size in _UNITS.items():
        if unit == "w":
            continue
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
