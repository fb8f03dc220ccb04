"""Training modes: the named presets of ``TrainSettings`` offered by the CLI, the Train node, the demo
and the benchmark.

A mode chooses the loop and the approximations (precision, CLIP's input size); everything else
(steps, learning rate, memory options) stays the caller's. The table lives here once so every front
end offers the same names with the same meaning. Exact modes give the official result (up to float
rounding); approximate ones trade some of it for time or memory, and their cost is measured by
``./run bench --only quality``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import EssenceError
from .loop import TrainSettings


@dataclass(frozen=True)
class TrainMode:
    """One named preset: what it sets, whether the result is exact, and a one-line description."""

    name: str
    exact: bool
    help: str  # one line, without the exact/approximate label (``label`` adds it)
    overrides: Mapping[str, Any]  # the TrainSettings fields this mode sets

    @property
    def label(self) -> str:
        return "exact" if self.exact else "approximate"

    def settings(self, **fields: Any) -> TrainSettings:
        """``TrainSettings`` with this mode's fields and the caller's other ones.

        A field the mode itself sets is refused rather than silently overridden.
        """
        clash = sorted(set(fields) & set(self.overrides))
        if clash:
            raise EssenceError(f"training mode {self.name!r} sets {', '.join(clash)} itself; choose another "
                               f"mode instead of overriding it.")
        return TrainSettings(**fields, **self.overrides)


def _mode(name: str, exact: bool, help: str, **overrides: Any) -> TrainMode:
    return TrainMode(name, exact, help, MappingProxyType(overrides))


TRAIN_MODES: dict[str, TrainMode] = {mode.name: mode for mode in (
    _mode("fast", True, "the official result, with the sources' CLIP embeddings computed once instead of "
          "every step (on CUDA the step is replayed as a CUDA graph)", loop="auto"),
    _mode("official", True, "the official loop step for step, re-embedding the unchanged sources every "
          "step (slower; for comparison)", loop="official"),
    _mode("fast+bf16", False, "the generator renders in bfloat16 (CLIP stays float32); about half "
          "the memory", loop="auto", autocast="bf16"),
    _mode("fast+fp16", False, "the generator renders in float16 (CLIP stays float32); for devices "
          "without bfloat16", loop="auto", autocast="fp16"),
    _mode("fast+256px", False, "CLIP sees the generator's 256 px intermediate image, skipping the "
          "larger layers; faster and about a quarter of the memory", loop="auto", render_size=256),
    _mode("fast+bf16+256px", False, "the generator renders in bfloat16 and CLIP (float32) sees its 256 px "
          "intermediate image; the least memory", loop="auto", autocast="bf16", render_size=256),
)}
DEFAULT_MODE = "fast"


def train_mode(name: str) -> TrainMode:
    """The mode called ``name``, or an error listing the modes there are."""
    try:
        return TRAIN_MODES[name]
    except KeyError:
        raise EssenceError(f"unknown training mode {name!r}; choose one of {', '.join(TRAIN_MODES)}.") from None


def modes_help(separator: str = "; ") -> str:
    """Every mode with its description, for a help text or a tooltip."""
    return separator.join(f"{mode.name} ({mode.label}): {mode.help}" for mode in TRAIN_MODES.values())
