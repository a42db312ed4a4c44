"""Retry timing: exponential backoff with full jitter.

Jitter matters on fleets: thousands of devices that lost the same datastore
at the same moment must not all come back at the same second.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    base: float = 2.0
    cap: float = 300.0
    max_attempts: int = 5

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.cap, self.base * (2 ** max(attempt - 1, 0)))
        # Keep at least half the ceiling so delays still grow visibly.
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)

    def exhausted(self, attempt: int) -> bool:
        return attempt >= self.max_attempts
