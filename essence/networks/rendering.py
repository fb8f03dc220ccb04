"""Latents to images, in batches that fit the device.

Every front end renders many faces at once (sweeps, reconstructions, previews, the demo's edits);
rendering them all in one pass can exhaust a GPU, and one at a time wastes it. This is the one place
that renders a stack of W+ latents: a few at a time on the generator's device, halving the batch
when the device runs out of memory (rows are independent, so the images are the same), results
collected on the CPU in float32. Rows of photos whose generator was tuned (pivotal tuning) are
drawn with their own tuned weights. A batch that comes out with NaN or infinite values (weights
that overflow) is an error naming its rows, never a picture: one ``isfinite`` per batch.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..errors import EssenceError, ShapeError
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
        return _render_rows(generator, wplus, batch_size, stop_at, what, between_batches, weights,
                            list(range(len(wplus))))
    images = torch.empty(0)
    for weights, rows in groups:
        drawn = _render_rows(generator, wplus[rows], batch_size, stop_at, what, between_batches, weights, rows)
        if images.numel() == 0:
            images = drawn.new_empty((len(wplus), *drawn.shape[1:]))
        images[rows] = drawn
    return images


def _render_rows(generator: StyleGAN2Generator, wplus: torch.Tensor, batch_size: int, stop_at: int | None,
                 what: str, between_batches: Callable[[], None] | None,
                 weights: TunedWeights | None, rows: list[int]) -> torch.Tensor:
    """``wplus`` (rows ``rows`` of the caller's latents) drawn by one generator."""
    param = next(generator.parameters())
    parameters = None if weights is None else weights.parameters_for(generator)
    done = 0  # rows drawn so far: a batch retried after running out of memory starts where it did

    def render_batch(batch: torch.Tensor) -> torch.Tensor:
        nonlocal done
        if between_batches is not None:
            between_batches()
        latents = batch.to(param.device, param.dtype)
        images = synthesize_with(generator, parameters, latents, stop_at=stop_at).float()
        if not bool(torch.isfinite(images).all()):
            _refuse_overflow(images, rows[done:done + len(batch)], what, weights is not None)
        done += len(batch)
        return images.cpu()

    return torch.cat(run_in_chunks_on_oom(render_batch, wplus, batch_size, f"rendering {len(wplus)} {what}"))


def _refuse_overflow(images: torch.Tensor, rows: list[int], what: str, tuned: bool) -> None:
    """A batch holding NaN or infinite values: say which rows, and the likely cause."""
    bad = (~torch.isfinite(images)).reshape(len(images), -1).any(1).nonzero().flatten().tolist()
    named = ", ".join(str(rows[i]) for i in bad[:8]) + (", ..." if len(bad) > 8 else "")
    which = f"row{'s' if len(bad) > 1 else ''} {named}"
    if tuned:
        cause = ("the tuned weights they are drawn with are the likely cause (damaged, or tuned with too high a "
                 "learning rate): tune those faces again")
    else:
        cause = ("the generator's weights or these latents overflow (a damaged generator file, float16 weights too "
                 "large for their type, or latents far outside the generator's range): check them")
    raise EssenceError(f"drawing {what}: {which} came out as NaN or infinite values; {cause}.")


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
