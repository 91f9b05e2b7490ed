"""Validation helpers shared by the config dataclasses.

Every config dataclass validates itself in ``__post_init__`` and raises :class:`ConfigError`
naming the full dotted key, so a bad value fails before any Ray job starts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """An invalid configuration value; the message starts with the dotted key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def check_positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_fraction(key: str, value: float, *, inclusive_high: bool = False) -> None:
    ok = 0.0 <= value <= 1.0 if inclusive_high else 0.0 <= value < 1.0
    if not ok:
        raise ConfigError(key, f"must be in [0, 1{']' if inclusive_high else ')'}, got {value!r}")


def check_choice(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(map(repr, choices))}; got {value!r}")
