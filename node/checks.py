"""Field checks shared by the model, the commands and the API's JSON validation.

Rules: each check takes ``object`` (a value decoded from anywhere is checked, never
trusted) and raises ``ValidationError`` naming the field with dots and brackets
(``retry.max_attempts``, ``executor.command[0]``). Pure.
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Mapping


class ValidationError(ValueError):
    """Bad input; ``field`` names it with dots (``retry.max_attempts``, ``tags.gpu``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def within(self, parent: str) -> ValidationError:
        """The same error, named inside ``parent``."""
        return ValidationError(f"{parent}.{self.field}" if self.field else parent, self.message)


def check_int(value: object, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(name, f"must be an integer, got {value!r:.40}")
    if not lo <= value <= hi:
        raise ValidationError(name, f"must be between {lo} and {hi}, got {value}")
    return value


def check_number(value: object, name: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(name, f"must be a number, got {value!r:.40}")
    number = float(value)
    if not math.isfinite(number) or not lo <= number <= hi:
        raise ValidationError(name, f"must be between {lo:g} and {hi:g}, got {value!r}")
    return number


def check_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(name, f"must be true or false, got {value!r:.40}")
    return value


def check_str(
    value: object,
    name: str,
    chars_max: int,
    pattern: re.Pattern[str] | None = None,
    *,
    empty_ok: bool = False,
) -> str:
    if not isinstance(value, str):
        raise ValidationError(name, f"must be a string, got {value!r:.40}")
    if len(value) > chars_max:
        raise ValidationError(name, f"must be at most {chars_max} characters, got {len(value)}")
    if not value and not empty_ok:
        raise ValidationError(name, "must not be empty")
    if "\x00" in value:
        raise ValidationError(name, "must not contain NUL characters")
    if not value.isascii() and not _is_utf8(value):
        raise ValidationError(name, "must be valid Unicode (no lone surrogates)")
    if pattern is not None and value and pattern.fullmatch(value) is None:
        raise ValidationError(name, f"has an invalid format: {value!r:.60}")
    return value


def _is_utf8(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def check_optional_str(value: object, name: str, chars_max: int) -> str | None:
    return None if value is None else check_str(value, name, chars_max, empty_ok=True)


def check_str_map(
    value: object,
    name: str,
    entries_max: int,
    key_pattern: re.Pattern[str],
    key_chars_max: int,
    value_chars_max: int,
) -> Mapping[str, str]:
    """A read-only copy, keys sorted, of a small string → string map."""
    if not isinstance(value, Mapping):
        raise ValidationError(name, "must be an object of strings")
    if len(value) > entries_max:
        raise ValidationError(name, f"must have at most {entries_max} entries, got {len(value)}")
    if not value:
        return EMPTY_STR_MAP  # shared: most jobs have no tags, metadata or env
    for key, item in value.items():
        if not isinstance(key, str):
            raise ValidationError(name, f"keys must be strings, got {key!r:.40}")
        check_str(key, f"{name}.{key}", key_chars_max, key_pattern)
        check_str(item, f"{name}.{key}", value_chars_max, empty_ok=True)
    return types.MappingProxyType(dict(sorted(value.items())))


EMPTY_STR_MAP: Mapping[str, str] = types.MappingProxyType({})  # read-only, so one will do


__all__ = [
    "ValidationError",
    "check_bool",
    "check_int",
    "check_number",
    "check_optional_str",
    "check_str",
    "check_str_map",
]
