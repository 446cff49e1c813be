"""Usernames that look like others: each must be a user of its own (docs/api.md)."""

from __future__ import annotations

from typing import Final

__all__ = ["LOOKALIKES"]

LOOKALIKES: Final = (
    "\uff41\uff4c\uff49\uff43\uff45",  # fullwidth "alice"
    "\u0430lice",  # Cyrillic "a"
    "\u01c5",  # the titlecase digraph "Dz" with caron
    "ren\u00e9e",  # precomposed e-acute
    "rene\u0301e",  # e, then a combining acute accent
)
"""Legal usernames that a reader may take for ``alice`` or for one another."""
