"""Every knob of the encoder's training; the defaults are TargetCLIP's README command."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import EssenceError


@dataclass(frozen=True)
class EncoderSettings:
    """The encoder variant's settings. ``max_steps`` counts as the official loop does: it updates at
    global steps 0..max_steps, so a run makes ``max_steps + 1`` updates (``updates``).

    ``flip`` is the chance of a left-right flip per picture and ``shuffle`` reshuffles the pictures every
    epoch (both as the official loader; off to follow a recorded order). Validation runs after the
    updates at steps 0, ``validate_every``, 2 x ``validate_every``, ... and the last; a checkpoint is
    written after steps 0, ``checkpoint_every``, ... and the last. ``chunk_size``: source faces rendered
    per pass (less memory, the same gradient); None renders all of them at once.
    """

    max_steps: int = 3000
    lr: float = 1e-4
    lambda_consistency: float = 0.5
    lambda_reg: float = 3e-3
    batch_size: int = 1
    flip: float = 0.5
    shuffle: bool = True
    validate_every: int = 31
    checkpoint_every: int = 200
    seed: int = 0
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "lambda_consistency", "lambda_reg"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise EssenceError(f"{name} must be a finite number of at least 0, got {getattr(self, name)}.")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise EssenceError(f"lr must be a finite number above 0, got {self.lr}.")
        for name in ("batch_size", "validate_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise EssenceError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not 0 <= self.flip <= 1:
            raise EssenceError(f"flip is a probability between 0 and 1, got {self.flip}.")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise EssenceError(f"chunk_size must be at least 1 (or None for all sources), got {self.chunk_size}.")

    @property
    def updates(self) -> int:
        """How many optimiser updates the run makes (the official loop's ``max_steps + 1``)."""
        return self.max_steps + 1

    def record(self) -> dict[str, Any]:
        """What the encoder file and checkpoints record; ``chunk_size`` changes memory, not the result."""
        return {k: v for k, v in asdict(self).items() if k != "chunk_size"}
