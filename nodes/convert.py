"""Between the generator's images ([B, 3, H, W], about [-1, 1]) and ComfyUI's IMAGE ([B, H, W, 3], 0..1)."""

from __future__ import annotations

import torch
from PIL import Image


def to_comfy_image(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Generator output -> ComfyUI IMAGE float32 [B, H, W, 3] in 0..1 on ``device`` (clamped)."""
    pixels = (images.detach().float().clamp(-1, 1) + 1) / 2
    return pixels.permute(0, 2, 3, 1).contiguous().to(device)


def grid_to_comfy_image(grid: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One grid [3, H, W] in 0..1 (``essence.apply.image_grid``) -> IMAGE [1, H, W, 3]."""
    return grid.detach().float().clamp(0, 1).permute(1, 2, 0)[None].contiguous().to(device)


def to_pil(images: torch.Tensor) -> Image.Image:
    """Generator output [B, 3, H, W] -> one PIL image, the batch side by side (progress previews)."""
    pixels = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    strip = torch.cat(list(pixels), dim=2)  # [3, H, B*W]
    return Image.fromarray(strip.permute(1, 2, 0).numpy(), "RGB")


def comfy_image_thumbnail(image: torch.Tensor, size: int = 128) -> torch.Tensor:
    """The first picture of an IMAGE batch as uint8 [h, w, 3], longest side ``size`` (a direction's
    thumbnail, so a shared file shows what it was trained on)."""
    first = image[0, :, :, :3].detach().float().clamp(0, 1).cpu()
    if first.shape[-1] == 1:
        first = first.expand(-1, -1, 3)
    scale = size / max(first.shape[0], first.shape[1])
    if scale < 1:
        h, w = max(1, round(first.shape[0] * scale)), max(1, round(first.shape[1] * scale))
        first = torch.nn.functional.interpolate(first.permute(2, 0, 1)[None], size=(h, w), mode="area")[0]
        first = first.permute(1, 2, 0)
    return (first * 255).round().to(torch.uint8).contiguous()
