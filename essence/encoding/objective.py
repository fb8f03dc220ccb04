"""The objective of TargetCLIP's encoder variant, and its gradient with the sources in chunks.

For each training picture x_i the encoder gives an essence e_i (its raw output: e4e's ``latent_avg``
is not added). With the fixed sources s_1..s_N, CLIP's raw features f(.) and the target's unit
feature t_i, as the official coach computes them:

* transfer      1 - mean_n  unit(f(G(s_n + e_i))) . t_i
* consistency   mean over n != m of 1 - d_n . d_m, with d_n = unit(f(G(s_n + e_i)) - f(G(s_n))): differences
  of the *un-normalised* features (the optimiser normalises the features first);
* regulariser   the plain L2 norm of the whole batch's essence tensor (not squared);

transfer and consistency are averaged over the batch's pictures, and the total is
``transfer + lambda_consistency * consistency + lambda_reg * norm``.

CLIP sees every picture the coach's way: the [-1, 1] 256 px input resized to the generator's size
(bilinear, antialiased, as torchvision's ``Resize`` does a tensor), then the guide's
``embed_generated`` path (upsample x7, average pool, no CLIP mean/std), which generated faces take too.

Memory: each picture renders N faces with their activations kept for the backward pass. With
``chunk_size`` the gradient is the same but only ``chunk_size`` faces are kept at a time
(``runtime.backward_in_slices``, which the optimiser's chunked sources use too).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from ..networks import ClipGuide, StyleGAN2Generator, to_unit
from ..runtime import backward_in_slices

Embed = Callable[[torch.Tensor], torch.Tensor]  # W+ latents [n, L, D] -> raw CLIP features [n, C]


class EncoderLosses(NamedTuple):
    """One step's loss terms (0-d tensors): the total and its three parts, as the coach logs them."""

    total: torch.Tensor
    similarity: torch.Tensor
    consistency: torch.Tensor
    l2: torch.Tensor

    def values(self) -> list[float]:
        """[total, similarity, consistency, l2] as floats (the trace's column order)."""
        return [float(v) for v in self]


def generated_features(generator: StyleGAN2Generator, guide: ClipGuide) -> Embed:
    """W+ latents -> raw CLIP features of the faces the generator draws from them with its fixed noise."""
    def embed(latents: torch.Tensor) -> torch.Tensor:
        return guide.embed_generated(generator.synthesize(latents, noise="fixed")).float()
    return embed


def target_features(images: torch.Tensor, generator_size: int, guide: ClipGuide) -> torch.Tensor:
    """Training pictures [B, 3, 256, 256] in [-1, 1] -> unit CLIP features [B, C], the coach's way:
    resized to the generator's size, then CLIP's generated-image path. No gradient is needed here."""
    with torch.no_grad():
        resized = F.interpolate(images, size=(generator_size, generator_size), mode="bilinear",
                                align_corners=False, antialias=True)
        return to_unit(guide.embed_generated(resized).float())


def loss_terms(essence: torch.Tensor, edited: torch.Tensor, sources: torch.Tensor, targets: torch.Tensor,
               lambda_consistency: float, lambda_reg: float) -> EncoderLosses:
    """The objective from features: ``essence`` [B, L, D], ``edited`` [B, N, C] raw features of
    G(s_n + e_i), ``sources`` [N, C] raw features of G(s_n), ``targets`` [B, C] unit features."""
    count = sources.shape[0]
    similarity = consistency = 0.0
    for i in range(edited.shape[0]):
        differences = to_unit(edited[i] - sources)
        similarity = similarity + (1 - (to_unit(edited[i]) @ targets[i:i + 1].T).mean())
        consistency = consistency + (1 - differences @ differences.T).sum() / (count ** 2 - count)
    similarity = similarity / edited.shape[0]
    consistency = consistency / edited.shape[0]
    l2 = essence.norm()
    total = similarity + lambda_consistency * consistency + lambda_reg * l2
    return EncoderLosses(total, similarity, consistency, l2)


def objective(essence: torch.Tensor, sources: torch.Tensor, source_features: torch.Tensor,
              targets: torch.Tensor, embed: Embed, lambda_consistency: float, lambda_reg: float,
              chunk_size: int | None = None) -> EncoderLosses:
    """The losses of ``essence`` [B, L, D] with autograd through every rendered face (validation
    calls it under ``no_grad``, where ``chunk_size`` faces a pass bound its memory; with autograd,
    ``objective_backward`` does). ``sources`` [N, L, D] are the W+ source latents."""
    parts = sources.split(chunk_size or sources.shape[0])
    edited = torch.stack([torch.cat([embed(part + essence[i:i + 1]) for part in parts])
                          for i in range(essence.shape[0])])
    return loss_terms(essence, edited, source_features, targets, lambda_consistency, lambda_reg)


def objective_backward(essence: torch.Tensor, sources: torch.Tensor, source_features: torch.Tensor,
                       targets: torch.Tensor, embed: Embed, lambda_consistency: float, lambda_reg: float,
                       chunk_size: int | None = None) -> EncoderLosses:
    """The losses, with their gradient accumulated into whatever ``essence`` was computed from.

    All sources at once when ``chunk_size`` is None or covers them (the coach's computation);
    otherwise the same gradient holding only ``chunk_size`` rendered faces at a time (module docstring).
    """
    count = sources.shape[0]
    if chunk_size is None or chunk_size >= count:
        losses = objective(essence, sources, source_features, targets, embed, lambda_consistency, lambda_reg)
        losses.total.backward()
        return _detached(losses)
    leaf = essence.detach().requires_grad_(True)  # [B, n_latent, D]; rows: (essence i, source j) at i x N + j

    def edited(start: int, stop: int) -> torch.Tensor:  # within one essence's sources
        i, j = divmod(start, count)
        return embed(sources[j:j + stop - start] + leaf[i:i + 1])

    slices = [(i * count + start, i * count + min(start + chunk_size, count))
              for i in range(leaf.shape[0]) for start in range(0, count, chunk_size)]
    losses = backward_in_slices(edited, slices, lambda rows: loss_terms(
        leaf, rows.view(leaf.shape[0], count, -1), source_features, targets, lambda_consistency, lambda_reg),
        lambda terms: terms.total)
    essence.backward(leaf.grad)
    return _detached(losses)


def _detached(losses: EncoderLosses) -> EncoderLosses:
    return EncoderLosses(*(term.detach() for term in losses))
