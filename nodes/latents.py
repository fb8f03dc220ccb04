"""Latent nodes: make W+ latents and edit them with a direction.

Latents travel as ``essence.LatentSet`` (CPU float32 tensor + one provenance entry per row), so a
batch always says where each face came from and which essences were added to it.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import essence
from ..essence.latents import LAYER_PRESETS, edit_latents, sample_latents
from . import host
from . import types as T
from .inputs import boolean, choice, integer, link, number, seed

CATEGORY = "essence/latents"
log = logging.getLogger(__name__)
MAX_SAMPLES = 64


def layers_input() -> tuple:
    return choice(LAYER_PRESETS, "Which W+ rows the essence changes: all; coarse = pose and face shape; "
                  "middle = features; fine = colour and texture; or a combination.", "all")


class EssenceSampleLatents:
    """Random faces from the generator."""

    DESCRIPTION = ("Draws random W+ latents (random faces) from the generator: z -> mapping -> truncation. "
                   "The same seed and count always give the same faces.")
    CATEGORY = CATEGORY
    FUNCTION = "sample"
    RETURN_TYPES = (T.LATENT,)
    RETURN_NAMES = ("latents",)
    OUTPUT_TOOLTIPS = ("W+ latents [count, rows, width], one per face.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "generator": link(T.GENERATOR, "The generator whose latent space to sample."),
            "count": integer(4, 1, MAX_SAMPLES, "How many faces to draw."),
            "seed": seed("Random seed; the same seed and count give the same faces."),
            "truncation": number(0.7, 0.0, 1.0, "Pull toward the average face: 1 = full variety, lower = "
                                 "more typical, cleaner faces (TargetCLIP uses 0.7).", 0.05),
        }}

    def sample(self, generator: essence.networks.StyleGAN2Generator, count: int, seed: int,
               truncation: float) -> tuple[essence.LatentSet]:
        with host.models_on_compute_device(generator):
            return (sample_latents(generator, count, seed, truncation),)


class EssenceApply:
    """Add an essence to latents."""

    DESCRIPTION = ("Adds an essence direction to every latent: w + strength * d, on the chosen W+ rows. "
                   "Strength 0.5-1.2 is typical (the paper evaluated at 1.2); negative strengths push away.")
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = (T.LATENT,)
    RETURN_NAMES = ("latents",)
    OUTPUT_TOOLTIPS = ("The edited latents (render them with Render Latents).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "latents": link(T.LATENT, "The faces to edit."),
            "direction": link(T.DIRECTION, "The essence to add (from Train, Load or Mix Essence)."),
            "strength": number(1.0, -5.0, 5.0, "How much of the essence to add (ignored with auto strength).", 0.05),
            "layers": layers_input(),
        }, "optional": {
            "auto_strength": boolean(False, "auto: use the strength recommended for this essence (measured by "
                                     "Essence Metrics or 'essence evaluate --recommend'); an essence without one "
                                     "uses 1.0 and says so in the log. manual: use 'strength'.",
                                     on="auto (recommended)", off="manual"),
        }}

    def apply(self, latents: essence.LatentSet, direction: essence.Direction, strength: float,
              layers: str, auto_strength: bool = False) -> tuple[essence.LatentSet]:
        edited, note = edit_latents(latents, direction, "auto" if auto_strength else strength, layers)
        if note:
            log.warning("Apply Essence: %s", note)
        return (edited,)

