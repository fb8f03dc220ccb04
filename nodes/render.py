"""Render nodes: latents -> IMAGE, and strength sweeps as one comparison grid."""

from __future__ import annotations

from typing import Any

import torch

from .. import essence
from ..essence.latents import image_grid, strength_sweep
from ..essence.networks import render
from . import host
from . import types as T
from .convert import grid_to_comfy_image, to_comfy_image
from .inputs import choice, integer, link, number
from .latents import layers_input

CATEGORY = "essence/render"
RESOLUTIONS = ("full", "512", "256", "128", "64", "32")


def stop_at(generator: essence.networks.StyleGAN2Generator, resolution: str) -> int | None:
    """The generator's ``stop_at`` for a dropdown value; None (all layers) for 'full' or at/above its size."""
    if resolution == "full" or int(resolution) >= generator.size:
        return None
    return int(resolution)


class EssenceRender:
    """Latents -> images."""

    DESCRIPTION = ("Renders W+ latents with the generator into an IMAGE batch (one picture per latent). "
                   "A lower resolution stops the generator early: faster, blurrier previews.")
    CATEGORY = CATEGORY
    FUNCTION = "render"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("One image per latent, at the generator's resolution (or the chosen one).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "generator": link(T.GENERATOR, "The generator the latents belong to."),
                "latents": link(T.LATENT, "The faces to render."),
            },
            "optional": {
                "resolution": choice(RESOLUTIONS, "'full' renders every layer; a smaller size skips the top "
                                     "layers (quick previews).", "full"),
            },
        }

    def render(self, generator: essence.networks.StyleGAN2Generator, latents: essence.LatentSet,
               resolution: str = "full") -> tuple[torch.Tensor]:
        with host.models_on_compute_device(generator):
            wplus = generator.to_wplus(latents.latents)
            images = render(generator, wplus, stop_at=stop_at(generator, resolution), between_batches=host.check_interrupt,
                            tuned=latents.tuned_rows())  # faces tuned to their photos (Invert Face's pti)
        return (to_comfy_image(images, host.intermediate_device()),)


class EssenceStrengthSweep:
    """One grid: each face at several strengths."""

    DESCRIPTION = ("Renders every latent at evenly spaced strengths of an essence, as one grid image: one row "
                   "per face, one column per strength (left = start, right = end).")
    CATEGORY = CATEGORY
    FUNCTION = "sweep"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("grid",)
    OUTPUT_TOOLTIPS = ("The comparison grid (a single image).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "generator": link(T.GENERATOR, "The generator the latents and the essence belong to."),
            "latents": link(T.LATENT, "The faces to edit (one grid row each)."),
            "direction": link(T.DIRECTION, "The essence to sweep."),
            "strength_start": number(0.0, -5.0, 5.0, "Strength of the first column (0 = the unedited face).", 0.05),
            "strength_end": number(1.2, -5.0, 5.0, "Strength of the last column (the paper evaluated at 1.2).", 0.05),
            "steps": integer(5, 2, 16, "Number of columns (strengths) in the grid."),
            "layers": layers_input(),
        }}

    def sweep(self, generator: essence.networks.StyleGAN2Generator, latents: essence.LatentSet, direction: essence.Direction,
              strength_start: float, strength_end: float, steps: int, layers: str) -> tuple[torch.Tensor]:
        strengths = torch.linspace(strength_start, strength_end, steps).tolist()
        with host.models_on_compute_device(generator):
            images = strength_sweep(generator, latents.latents, direction, strengths, layers,
                                    between_batches=host.check_interrupt, tuned=latents.tuned_rows())
        grid = image_grid(images, columns=steps)
        return (grid_to_comfy_image(grid, host.intermediate_device()),)
