"""Latents to images, in batches that fit the device.

Every front end renders many faces at once (sweeps, reconstructions, previews, the demo's edits);
rendering them all in one pass can exhaust a GPU, and one at a time wastes it. This is the one place
that renders a stack of W+ latents: a few at a time on the generator's device, halving the batch
when the device runs out of memory (rows are independent, so the images are the same), results
collected on the CPU in float32. Rows of photos whose generator was tuned (pivotal tuning) are
drawn with their own tuned weights.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..errors import ShapeError
from ..runtime import run_in_chunks_on_oom
from .stylegan2 import StyleGAN2Generator
from .tuned import TunedWeights, synthesize_with

DEFAULT_BATCH = 4  # images per generator pass: a 1024 px face needs about 0.7 GB to render

Tuned = TunedWeights | Sequence[TunedWeights | None] | None


@torch.no_grad()
def render(generator: StyleGAN2Generator, wplus: torch.Tensor, batch_size: int = DEFAULT_BATCH,
           stop_at: int | None = None, what: str = "faces",
           between_batches: Callable[[], None] | None = None, tuned: Tuned = None) -> torch.Tensor:
    """``generator.synthesize`` of every row of ``wplus`` [N, n_latent, style_dim] with its fixed
    noise -> [N, 3, S, S] float32 on the CPU, in the generator's [-1, 1] range.

    ``stop_at`` renders the intermediate image at that resolution (quick previews). ``what`` names
    the images in an out-of-memory error. ``between_batches`` runs before every batch (ComfyUI's
    Cancel check). ``tuned``: weights tuned for these faces, one for every row or one per row
    (None for a row drawn by the plain generator).
    """
    groups = _groups(_per_row(tuned, len(wplus)))
    if len(groups) <= 1:  # one generator draws every row
        weights = groups[0][0] if groups else None
        return _render_rows(generator, wplus, batch_size, stop_at, what, between_batches, weights)
    images = torch.empty(0)
    for weights, rows in groups:
        drawn = _render_rows(generator, wplus[rows], batch_size, stop_at, what, between_batches, weights)
        if images.numel() == 0:
            images = drawn.new_empty((len(wplus), *drawn.shape[1:]))
        images[rows] = drawn
    return images


def _render_rows(generator: StyleGAN2Generator, wplus: torch.Tensor, batch_size: int, stop_at: int | None,
                 what: str, between_batches: Callable[[], None] | None,
                 weights: TunedWeights | None) -> torch.Tensor:
    param = next(generator.parameters())
    parameters = None if weights is None else weights.parameters_for(generator)

    def render_batch(rows: torch.Tensor) -> torch.Tensor:
        if between_batches is not None:
            between_batches()
        latents = rows.to(param.device, param.dtype)
        return synthesize_with(generator, parameters, latents, stop_at=stop_at).float().cpu()

    return torch.cat(run_in_chunks_on_oom(render_batch, wplus, batch_size, f"rendering {len(wplus)} {what}"))


def _per_row(tuned: Tuned, rows: int) -> list[TunedWeights | None]:
    if tuned is None or isinstance(tuned, TunedWeights):
        return [tuned] * rows
    per_row = list(tuned)
    if len(per_row) != rows:
        raise ShapeError(f"got tuned weights for {len(per_row)} rows but {rows} latents to render.")
    return per_row


def _groups(per_row: list[TunedWeights | None]) -> list[tuple[TunedWeights | None, list[int]]]:
    """Rows that share weights, in order of first appearance (each tuned generator is built once)."""
    groups: dict[int, tuple[TunedWeights | None, list[int]]] = {}
    for row, weights in enumerate(per_row):
        groups.setdefault(id(weights), (weights, []))[1].append(row)
    return list(groups.values())
