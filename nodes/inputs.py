"""Builders for ComfyUI input declarations, so every input carries a tooltip and sane limits.

ComfyUI describes an input as ``(TYPE, options)``; a list instead of a TYPE is a dropdown. The
frontend turns INT/FLOAT/STRING/BOOLEAN and dropdowns into widgets and everything else (IMAGE,
the ``ESSENCE_*`` types) into link-only sockets.
"""

from __future__ import annotations

from typing import Any, Sequence

SEED_MAX = 0xFFFFFFFFFFFFFFFF  # ComfyUI's convention for seed widgets (KSampler uses the same)

InputSpec = tuple[Any, ...]


def link(kind: str, tooltip: str) -> InputSpec:
    """A socket that takes another node's output."""
    return (kind, {"tooltip": tooltip})


def choice(options: Sequence[str], tooltip: str, default: str | None = None) -> InputSpec:
    """A dropdown; ``default`` must be one of ``options`` (the first one when omitted)."""
    values = list(options)
    extra: dict[str, Any] = {"tooltip": tooltip}
    if default is not None:
        extra["default"] = default
    return (values, extra)


def integer(default: int, minimum: int, maximum: int, tooltip: str, step: int = 1) -> InputSpec:
    return ("INT", {"default": default, "min": minimum, "max": maximum, "step": step, "tooltip": tooltip})


def number(default: float, minimum: float, maximum: float, tooltip: str, step: float = 0.01) -> InputSpec:
    return ("FLOAT", {"default": default, "min": minimum, "max": maximum, "step": step,
                      "round": step, "tooltip": tooltip})


def boolean(default: bool, tooltip: str, on: str = "true", off: str = "false") -> InputSpec:
    """A toggle; ``on`` / ``off`` are the labels the frontend shows for its two states."""
    return ("BOOLEAN", {"default": default, "label_on": on, "label_off": off, "tooltip": tooltip})


def text(default: str, tooltip: str) -> InputSpec:
    return ("STRING", {"default": default, "multiline": False, "tooltip": tooltip})


def seed(tooltip: str) -> InputSpec:
    """An INT named ``seed``: the frontend adds its 'control after generate' widget after it."""
    return ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "tooltip": tooltip})
