"""Latents to images, in batches that fit the device.

Every front end renders many faces at once (sweeps, reconstructions, previews, the demo's edits);
rendering them all in one pass can exhaust a GPU, and one at a time wastes it. This is the one place
that renders a stack of W+ latents: a few at a time on the generator's device, halving the batch
when the device runs out of memory (rows are independent, so the images are the same), results
collected on the CPU in float32.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..runtime import run_in_chunks_on_oom
from .stylegan2 import StyleGAN2Generator

DEFAULT_BATCH = 4  # images per generator pass: a 1024 px face needs about 0.7 GB to render


@torch.no_grad()
def render(generator: StyleGAN2Generator, wplus: torch.Tensor, batch_size: int = DEFAULT_BATCH,
           stop_at: int | None = None, what: str = "faces",
           between_batches: Callable[[], None] | None = None) -> torch.Tensor:
    """``generator.synthesize`` of every row of ``wplus`` [N, n_latent, style_dim] with its fixed
    noise -> [N, 3, S, S] float32 on the CPU, in the generator's [-1, 1] range.

    ``stop_at`` renders the intermediate image at that resolution (quick previews). ``what`` names
    the images in an out-of-memory error. ``between_batches`` runs before every batch (ComfyUI's
    Cancel check).
    """
    param = next(generator.parameters())

    def render_batch(rows: torch.Tensor) -> torch.Tensor:
        if between_batches is not None:
            between_batches()
        return generator.synthesize(rows.to(param.device, param.dtype), stop_at=stop_at).float().cpu()

    return torch.cat(run_in_chunks_on_oom(render_batch, wplus, batch_size, f"rendering {len(wplus)} {what}"))
