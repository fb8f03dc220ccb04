"""A target's essence in one pass: the trained encoder's output, written as a standard direction.

Pictures reach the encoder as its training data did: faces aligned the FFHQ way at 256 px (or, with
``align=False``, pictures used as they are, resized to 256 px, for crops that are aligned already),
normalised to [-1, 1], the encoder in eval mode (BatchNorm with its running statistics, as at
inference). Several pictures of one target give one essence: the mean of their essences, as the
training objective averages over the pictures of a batch, each with its own essence.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import torch

from ..faces import FaceLandmarker
from ..latents import Direction, LatentSpace, direction_metadata, target_thumbnail
from ..networks import E4EEncoder, StyleGAN2Generator
from .data import aligned_pixels, as_inputs, resized_pixels
from .encoder_file import EssenceEncoder

PathLike = str | os.PathLike


def target_pixels(pictures: Sequence[Any], align: bool = True,
                  landmarks: FaceLandmarker | PathLike | None = None) -> torch.Tensor:
    """Pictures of one target -> uint8 [N, 3, 256, 256]: the face of each aligned (a picture without
    one is refused, naming it), or with ``align=False`` each picture resized as it is."""
    return aligned_pixels(pictures, landmarks) if align else resized_pixels(pictures)


def essences_of(model: E4EEncoder, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, 256, 256] -> each picture's essence [N, n_latent, D] (float32, CPU): the encoder's
    raw output in eval mode (BatchNorm with its running statistics, as at inference), in parts of 8."""
    model = model.eval()
    param = next(model.parameters())
    with torch.inference_mode(False), torch.no_grad():
        return torch.cat([model(as_inputs(part).to(param.device, param.dtype)).float().cpu()
                          for part in pixels.split(8)])


def encode_essence(encoder: EssenceEncoder, pictures: Sequence[Any], *, align: bool = True,
                   landmarks: FaceLandmarker | PathLike | None = None, generator: StyleGAN2Generator | None = None,
                   name: str | None = None, encoder_file: PathLike | None = None) -> Direction:
    """The essence of the target in ``pictures`` (paths, PIL images or single-image tensors) as a
    ``Direction`` [1, n_latent, D] whose metadata says it came from this encoder. ``generator``, when
    given, must be the one the encoder was trained against."""
    if generator is not None:
        encoder.check_generator(generator, str(encoder_file or encoder.name))
    pixels = target_pixels(pictures, align, landmarks)
    essences = essences_of(encoder.model, pixels)
    space = encoder.meta.get("latent_space") or asdict(LatentSpace(*essences.shape[1:]))
    files = [Path(p).name for p in pictures if isinstance(p, (str, os.PathLike))]
    meta = direction_metadata(
        latent_space=space, generator_fingerprint=encoder.meta.get("generator", {}).get("fingerprint"),
        clip_model=encoder.meta.get("clip_model"), init="encoder",
        source={"kind": "encoder", "encoder": encoder.name,
                "file": Path(encoder_file).name if encoder_file else None,
                "encoder_created": encoder.meta.get("created"), "data": encoder.meta.get("data"),
                "best_validation_loss": encoder.meta.get("best_validation_loss"), "aligned": align},
        target=files or f"{len(pixels)} picture(s)", targets=len(pixels))
    if name or files:
        meta["name"] = name or Path(files[0]).stem
    return Direction(essences.mean(0, keepdim=True), meta, target_thumbnail(pictures[0]))


def encoder_start(encoder: EssenceEncoder, pictures: Sequence[Any], generator: StyleGAN2Generator, *,
                  align: bool = True, landmarks: FaceLandmarker | PathLike | None = None,
                  encoder_file: PathLike | None = None) -> tuple[torch.Tensor, str]:
    """The optimiser's warm start from a trained encoder: the target's essence (``encode_essence``;
    the encoder checked against ``generator`` first) on the generator's device, and the note its
    direction records as ``init``. ``essence.train`` takes the pair as ``start``; every front end that
    offers this start (``essence train --init encoder``, the Train Essence node) makes it here."""
    essence = encode_essence(encoder, pictures, align=align, landmarks=landmarks, generator=generator,
                             encoder_file=encoder_file)
    label = Path(encoder_file).name if encoder_file is not None else encoder.name
    return essence.tensor.to(generator.latent_avg.device), f"essence encoder {label}"
