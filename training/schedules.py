"""Step-indexed schedules: WSD learning rate, sequence-length curriculum, LeRaC per-depth multipliers.

All are pure functions of the step, so resuming needs only the step number, and tests can check exact values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WSD:
    """Warmup-Stable-Decay: linear warmup to `peak`, flat, then decay to `peak * min_ratio` over the last
    `decay_fraction` of the steps. WSD keeps the rate high for most of the run, so one run can be extended and
    only the final decay repeated (MiniCPM, 2024)."""

    peak: float
    total_steps: int
    warmup_steps: int = 0
    decay_fraction: float = 0.2
    min_ratio: float = 0.1
    shape: str = "linear"  # linear | cosine | sqrt

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.decay_fraction <= 1:
            raise ValueError(f"optim.decay_fraction must be in [0, 1], got {self.decay_fraction}")
        if self.warmup_steps < 0 or self.warmup_steps + self.decay_steps > self.total_steps:
            raise ValueError(
                f"optim.warmup_steps ({self.warmup_steps}) plus decay steps ({self.decay_steps}) exceed the "
                f"{self.total_steps} training steps"
            )
        if self.shape not in ("linear", "cosine", "sqrt"):
            raise ValueError(f"optim.decay_shape must be linear, cosine or sqrt, got {self.shape!r}")

    @property
    def decay_steps(self) -> int:
        return round(self.total_steps * self.decay_fraction)

    def __call__(self, step: int) -> float:
        """Learning rate used for optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        decay_start = self.total_steps - self.decay_steps
        if step < decay_start or self.decay_steps == 0:
            return self.peak
        progress = min(1.0, (step - decay_start + 1) / self.decay_steps)
        if self.shape == "linear":
            factor = 1 - progress
        elif self.shape == "cosine":
            factor = 0.5 * (1 + math.cos(math.pi * progress))
        else:
            factor = 1 - math.sqrt(progress)
        return self.peak * (self.min_ratio + (1 - self.min_ratio) * factor)


@dataclass(frozen=True)
class Curriculum:
    """Sequence length by training progress: stages [(start_fraction, seq_len), ...] sorted by start.

    Short sequences early are cheap and give many more optimizer steps per token budget; the model sees the
    full length once it has learned local structure.
    """

    stages: tuple[tuple[float, int], ...]
    total_steps: int

    def __post_init__(self) -> None:
        if not self.stages or self.stages[0][0] != 0:
            raise ValueError(
                "train.curriculum must start with a stage at fraction 0, e.g. [[0, 256], [0.5, 512]]"
            )
        starts = [start for start, _ in self.stages]
        if starts != sorted(starts) or any(not 0 <= s < 1 for s in starts):
            raise ValueError("train.curriculum stage fractions must be increasing and in [0, 1)")
        if any(length < 2 for _, length in self.stages):
            raise ValueError("train.curriculum sequence lengths must be >= 2")

    @classmethod
    def constant(cls, seq_len: int, total_steps: int) -> Curriculum:
        return cls(((0.0, seq_len),), total_steps)

    @property
    def max_len(self) -> int:
        return max(length for _, length in self.stages)

    def __call__(self, step: int) -> int:
        fraction = step / self.total_steps
        length = self.stages[0][1]
        for start, stage_len in self.stages:
            if fraction >= start:
                length = stage_len
        return length


@dataclass(frozen=True)
class LeRaC:
    """Learning Rate Curriculum (Croitoru et al., 2023): at step 0, depth d of D starts at
    `min_ratio ** (d / D)` of the base rate (the input side fastest, the output side slowest), and every depth
    reaches the base rate geometrically by `steps`. Early noisy gradients of deep layers then do less harm."""

    depths: int
    steps: int
    min_ratio: float = 0.01

    def __post_init__(self) -> None:
        if not 0 < self.min_ratio <= 1:
            raise ValueError(f"lerac.min_ratio must be in (0, 1], got {self.min_ratio}")
        if self.steps < 0:
            raise ValueError(f"lerac.steps must be >= 0, got {self.steps}")

    def initial(self, depth: int) -> float:
        return self.min_ratio ** (depth / max(1, self.depths - 1))

    def __call__(self, depth: int, step: int) -> float:
        """LR multiplier of the parameters at `depth` (0 = embeddings) for optimizer step `step`."""
        if step >= self.steps:
            return 1.0
        return self.initial(depth) ** (1 - step / self.steps)
