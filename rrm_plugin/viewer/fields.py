"""Typed field checks for the viewer's input files (feature cards, `viewer.json`).

Every failure is one line naming the file, the field, what was found and what was expected, as
a `CorruptFileError` (the CLI prints it as a user error).
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from typing import Any

from rrm_plugin.io import CorruptFileError

# The only image URLs the page shows: base64 PNG or JPEG data URLs (nothing else can be an
# image that runs code or fetches anything). The page's script applies the same pattern.
IMAGE_URL = re.compile(r"data:image/(png|jpeg);base64,[A-Za-z0-9+/=]+")
MAX_TEXT = 1_000            # characters of a name, class, title or type
MAX_IMAGE_URL = 20_000_000  # characters of one data URL (a 224 x 224 PNG is ~100 KB)


class Said(str):
    """A description of what was found (printed as is), not a value from the file."""


class Fields:
    """Checks values of one file; `where` prefixes every message (file, and e.g. the card)."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, field: str, found: Any, expected: str) -> CorruptFileError:
        return CorruptFileError(f"{self.where}: field {field}: found {shown(found)}, expected "
                                f"{expected}")

    def obj(self, value: Any, field: str, *, required: set[str],
            optional: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
        """A JSON object with exactly the `required` keys plus any of the `optional` ones."""
        if not isinstance(value, dict):
            raise self.fail(field, value, "an object")
        missing = sorted(required - set(value))
        if missing:
            raise self.fail(f"{field}.{missing[0]}" if field else missing[0], Said("nothing"),
                            "a value (the key is required)")
        unknown = sorted(set(value) - required - set(optional))
        if unknown:
            raise self.fail(f"{field}.{unknown[0]}" if field else unknown[0],
                            Said("an unknown key"),
                            f"only the keys {sorted(required | set(optional))}")
        return value

    def integer(self, value: Any, field: str, *, low: int | None = None,
                high: int | None = None) -> int:
        """An integer in [low, high] (JSON booleans are not numbers)."""
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or (low is not None and value < low) or (high is not None and value > high):
            bounds = f" in [{low if low is not None else '-inf'}, " \
                     f"{high if high is not None else 'inf'}]"
            raise self.fail(field, value, "an integer" + bounds)
        return value

    def number(self, value: Any, field: str, *, low: float | None = None,
               high: float | None = None) -> float:
        """A finite number in [low, high]."""
        ok = isinstance(value, int | float) and not isinstance(value, bool) and \
            math.isfinite(value)
        if not ok or (low is not None and value < low) or (high is not None and value > high):
            bounds = "" if low is None and high is None else \
                f" in [{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
            raise self.fail(field, value, "a finite number" + bounds)
        return float(value)

    def text(self, value: Any, field: str, *, nullable: bool = False,
             limit: int = MAX_TEXT) -> str | None:
        if value is None and nullable:
            return None
        if not isinstance(value, str) or len(value) > limit:
            raise self.fail(field, value, f"a string of at most {limit} characters"
                            + (" or null" if nullable else ""))
        return value

    def array(self, value: Any, field: str, *, length: int | None = None,
              limit: int | None = None) -> list:
        if not isinstance(value, list):
            raise self.fail(field, value, "an array")
        if length is not None and len(value) != length:
            raise self.fail(field, Said(f"{len(value)} entries"), f"{length}")
        if limit is not None and len(value) > limit:
            raise self.fail(field, Said(f"{len(value)} entries"), f"at most {limit}")
        return value

    def image_url(self, value: Any, field: str, *, nullable: bool = False) -> str | None:
        if value is None and nullable:
            return None
        if not isinstance(value, str) or len(value) > MAX_IMAGE_URL or \
                IMAGE_URL.fullmatch(value) is None:
            raise self.fail(field, value, "a data:image/png or data:image/jpeg base64 URL"
                            + (" or null" if nullable else ""))
        return value

    def b64(self, value: Any, field: str, *, n_bytes: int) -> bytes:
        """Base64 text of exactly `n_bytes` bytes."""
        try:
            if not isinstance(value, str):
                raise ValueError
            data = base64.b64decode(value, validate=True)
        except (ValueError, binascii.Error):
            raise self.fail(field, value, f"base64 text of {n_bytes} bytes") from None
        if len(data) != n_bytes:
            raise self.fail(field, Said(f"base64 of {len(data)} bytes"), f"{n_bytes} bytes")
        return data

    def equal(self, value: Any, field: str, expected: Any, why: str) -> Any:
        if type(value) is not type(expected) or value != expected:
            raise self.fail(field, value, f"{expected!r} ({why})")
        return value


def shown(value: Any, limit: int = 80) -> str:
    """A value as it appears in a message: repr, cut to `limit` characters."""
    text = value if isinstance(value, Said) else repr(value)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
