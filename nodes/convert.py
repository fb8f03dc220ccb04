"""Between the library's image conventions and ComfyUI's IMAGE ([B, H, W, 3] float32 in 0..1): the
conversions live in ``essence.faces.images``; these only add where ComfyUI wants the result."""

from __future__ import annotations

import torch
from PIL import Image

from ..essence.faces import comfy_to_pil, grid_to_pil, model_to_comfy
from ..essence.latents import image_grid, target_thumbnail


def to_comfy_image(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Generator output -> ComfyUI IMAGE float32 [B, H, W, 3] in 0..1 on ``device`` (clamped)."""
    return model_to_comfy(images).to(device)


def grid_to_comfy_image(grid: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One grid [3, H, W] in 0..1 (``essence.latents.apply.image_grid``) -> IMAGE [1, H, W, 3]."""
    return grid.detach().float().clamp(0, 1).permute(1, 2, 0)[None].contiguous().to(device)


def to_pil(images: torch.Tensor) -> Image.Image:
    """Generator output [B, 3, H, W] -> one PIL image, the batch side by side (progress previews)."""
    return grid_to_pil(image_grid(images, columns=len(images), padding=0))


def comfy_image_thumbnail(image: torch.Tensor) -> torch.Tensor:
    """The first picture of an IMAGE batch as a direction's thumbnail (``essence.latents.target_thumbnail``)."""
    return target_thumbnail(comfy_to_pil(image[:1])[0])
