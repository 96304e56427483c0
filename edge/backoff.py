"""Capped exponential backoff with full jitter, shared by every reconnecting or retrying component."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter; reset only after the broker accepted us."""

    minimum: float
    maximum: float
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next(self) -> float:
        """The delay before the next attempt."""
        ceiling = min(self.maximum, self.minimum * (2 ** min(self.attempt, 16)))
        self.attempt += 1
        return self.minimum / 2 + self.rng.uniform(0, ceiling)

    def reset(self) -> None:
        """Start over after a successful connection."""
        self.attempt = 0
