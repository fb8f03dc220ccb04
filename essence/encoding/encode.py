"""A target's essence in one pass: the trained encoder's output, written as a standard direction.

Pictures reach the encoder as its training data did: faces aligned the FFHQ way at 256 px (or, with
``align=False``, pictures used as they are, resized to 256 px, for crops that are aligned already),
normalised to [-1, 1], the encoder in eval mode (BatchNorm with its running statistics, as at
inference). Several pictures of one target give one essence: the mean of their essences, as the
training objective averages over the pictures of a batch, each with its own essence.

Many targets (a folder of them: ``folder_targets``) are encoded together by ``encode_targets``: the
faces of several targets go through the encoder in batches, and each target's direction is the one
``encode_essence`` gives it alone (the encoder is in eval mode, so no picture changes another's).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from ..errors import EssenceError
from ..faces import FaceLandmarker, landmarker_from
from ..latents import Direction, LatentSpace, direction_metadata, target_thumbnail
from ..networks import E4EEncoder, StyleGAN2Generator
from .data import PICTURE_SUFFIXES, aligned_pixels, as_inputs, resized_pixels
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
    return _essence_direction(encoder, essences_of(encoder.model, pixels), pictures, align, name, encoder_file)


def _essence_direction(encoder: EssenceEncoder, essences: torch.Tensor, pictures: Sequence[Any], align: bool,
                       name: str | None, encoder_file: PathLike | None) -> Direction:
    """The pictures' essences [N, n_latent, D] -> the target's direction: their mean, with the metadata
    that says which encoder made it (one place, so a target encoded alone or among others is the same file)."""
    space = encoder.meta.get("latent_space") or asdict(LatentSpace(*essences.shape[1:]))
    files = [Path(p).name for p in pictures if isinstance(p, (str, os.PathLike))]
    meta = direction_metadata(
        latent_space=space, generator_fingerprint=encoder.meta.get("generator", {}).get("fingerprint"),
        clip_model=encoder.meta.get("clip_model"), init="encoder",
        source={"kind": "encoder", "encoder": encoder.name,
                "file": Path(encoder_file).name if encoder_file else None,
                "encoder_created": encoder.meta.get("created"), "data": encoder.meta.get("data"),
                "best_validation_loss": encoder.meta.get("best_validation_loss"), "aligned": align},
        target=files or f"{len(essences)} picture(s)", targets=len(essences))
    if name or files:
        meta["name"] = name or Path(files[0]).stem
    return Direction(essences.mean(0, keepdim=True), meta, target_thumbnail(pictures[0]))


@dataclass(frozen=True)
class EncodeTarget:
    """One target of a folder: its ``name`` (the output's stem and the direction's name) and its
    ``pictures`` (one, or several that are averaged)."""

    name: str
    pictures: tuple[Path, ...]


FOLDER_RULE = ("each picture directly in the folder is one target, named after its file (portrait.jpg -> "
               "portrait); each sub-folder is one target named after the folder, the pictures inside it "
               "averaged into one essence (as several pictures given to `essence encode` are); other files, "
               "hidden entries and sub-folders without pictures are ignored")


def folder_targets(folder: PathLike) -> list[EncodeTarget]:
    """The targets of a folder, sorted by name (the rule is ``FOLDER_RULE``): each picture in it one
    target, each sub-folder of pictures one target whose pictures are averaged. Refused when it holds
    none, or when two targets would share a name (their outputs would be one file)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise EssenceError(f"{folder}: not a folder of targets.")
    targets: dict[str, EncodeTarget] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            pictures = tuple(sorted(p for p in entry.iterdir() if p.is_file() and not p.name.startswith(".")
                                    and p.suffix.lower() in PICTURE_SUFFIXES))
            target = EncodeTarget(entry.name, pictures) if pictures else None
        elif entry.is_file() and entry.suffix.lower() in PICTURE_SUFFIXES:
            target = EncodeTarget(entry.stem, (entry,))
        else:
            target = None
        if target is None:
            continue
        if target.name in targets:
            raise EssenceError(f"{targets[target.name].pictures[0]} and {target.pictures[0]} are both target "
                               f"{target.name!r}, and each target is written to <name>.safetensors: rename one.")
        targets[target.name] = target
    if not targets:
        raise EssenceError(f"{folder}: no targets in this folder (pictures {', '.join(PICTURE_SUFFIXES)}, or "
                           f"sub-folders of them).")
    return list(targets.values())


@dataclass
class EncodedTarget:
    """One target's result from ``encode_targets``: its direction, or why it has none."""

    target: EncodeTarget
    direction: Direction | None = None
    error: Exception | None = None


FACES_PER_PASS = 32  # faces gathered before the encoder runs on them (in parts of 8: essences_of)


def encode_targets(encoder: EssenceEncoder, targets: Sequence[EncodeTarget], *, align: bool = True,
                   landmarks: FaceLandmarker | PathLike | None = None, generator: StyleGAN2Generator | None = None,
                   encoder_file: PathLike | None = None, faces_per_pass: int = FACES_PER_PASS
                   ) -> Iterator[EncodedTarget]:
    """Many targets encoded together, in order, one ``EncodedTarget`` each: the faces of several
    targets go through the encoder in batches (``essences_of``), and each target's direction is the
    one ``encode_essence`` gives it alone. A target whose pictures cannot be read or aligned (no
    face) gets its ``error`` and the others go on."""
    if generator is not None:
        encoder.check_generator(generator, str(encoder_file or encoder.name))
    if align:
        landmarks = landmarker_from(landmarks)  # loaded once for every target
    pending: list[tuple[EncodeTarget, torch.Tensor | Exception]] = []
    faces = 0
    for index, target in enumerate(targets):
        pixels: torch.Tensor | Exception
        try:
            pixels = target_pixels([str(p) for p in target.pictures], align, landmarks)
            faces += len(pixels)
        except Exception as exc:  # this target fails, not the batch
            pixels = exc
        pending.append((target, pixels))
        if faces >= faces_per_pass or index == len(targets) - 1:
            yield from _encode_pending(encoder, pending, align, encoder_file)
            pending, faces = [], 0


def _encode_pending(encoder: EssenceEncoder, pending: list[tuple[EncodeTarget, torch.Tensor | Exception]],
                    align: bool, encoder_file: PathLike | None) -> Iterator[EncodedTarget]:
    """One pass of the encoder over the faces of the pending targets, then each target's result."""
    ready = [pixels for _, pixels in pending if isinstance(pixels, torch.Tensor)]
    essences: list[torch.Tensor] = []
    failure: Exception | None = None
    if ready:
        try:
            essences = list(essences_of(encoder.model, torch.cat(ready)).split([len(p) for p in ready]))
        except Exception as exc:  # e.g. out of memory: every target of this pass fails with it
            failure = exc
    parts = iter(essences)
    for target, pixels in pending:
        if isinstance(pixels, Exception) or failure is not None:
            yield EncodedTarget(target, error=pixels if isinstance(pixels, Exception) else failure)
        else:
            yield EncodedTarget(target, _essence_direction(encoder, next(parts), [str(p) for p in target.pictures],
                                                           align, target.name, encoder_file))


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
