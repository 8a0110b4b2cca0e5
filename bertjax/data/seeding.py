"""Stable integer seeds derived from tuples: every data module seeds its RNGs through here.

The pipeline, the prepared-shard reader and the offline `prepare` step all need the same
derivation (a shard reader must shuffle exactly as the in-memory path does), so it lives apart
from all of them and none has to import another for it.
"""

from __future__ import annotations

import hashlib
from typing import Any


def seed_int(*parts: Any) -> int:
    """A 64-bit seed from any tuple of ints/strings (stable across machines and Python runs)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")
