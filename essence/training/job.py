"""A whole training job as every front end runs it: the sources, the start, one direction or the best of
several candidates, and the metadata the kept direction records.

``essence train``, ``essence batch train``, the Train Essence node and the demo all call
``train_essence``, so a direction made by any of them records the same things (``trained_direction``):
``train``'s own record (the kept step's losses, the settings, the start used, the generator and CLIP
model) plus the name, the target pictures (file names when they were files), where the source faces
came from, the training mode, the start asked for, the whole loss curve and the target's thumbnail.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import EssenceError, MissingWeightsError
from ..latents import Direction, LatentSet, load_latents, sample_latents, target_thumbnail
from ..networks import ClipGuide, E4EEncoder, StyleGAN2Generator, load_encoder
from ..runtime import release_device_memory
from .candidates import CandidateChoice, train_best_candidate, training_starts
from .loop import (INIT_CHOICES, Start, Target, TrainProgress, TrainResult, TrainSettings, first_picture,
                   initial_direction, target_pictures, train)

SOURCE_TRUNCATION = 0.7  # sampled source faces, as TargetCLIP's random faces


@dataclass(frozen=True)
class EssenceJob:
    """What to train, apart from the target and the models: the optimisation's ``settings``, the
    ``mode`` name they came from (recorded), the start asked for (``INIT_CHOICES``), how many
    ``candidates`` to train together (the best is kept), a ``name`` for the file, and the source
    faces when the caller does not give them: a latent ``sources`` file, else ``sample`` random faces
    of seed ``settings.seed + 1`` (so they differ from a random start, which uses ``settings.seed``)."""

    settings: TrainSettings = field(default_factory=TrainSettings)
    mode: str | None = None
    init: str = "auto"
    candidates: int = 1
    name: str | None = None
    sources: str | None = None
    sample: int = 4

    def __post_init__(self) -> None:
        if self.init not in INIT_CHOICES:
            raise EssenceError(f"unknown initialisation {self.init!r}; choose one of {', '.join(INIT_CHOICES)}.")
        if self.candidates < 1:
            raise EssenceError(f"the number of candidates must be at least 1, got {self.candidates}.")
        if self.sources is None and self.sample < 1:
            raise EssenceError(f"the number of sampled source faces must be at least 1, got {self.sample}.")

    def source_faces(self, generator: StyleGAN2Generator) -> LatentSet:
        """The job's source faces for ``generator``: its latent file, or its seeded random samples."""
        if self.sources is not None:
            return load_latents(self.sources, generator)
        return sample_latents(generator, self.sample, seed=self.settings.seed + 1, truncation=SOURCE_TRUNCATION)

    def needs_encoder(self) -> bool:
        return self.init != "random"


@dataclass
class TrainedEssence:
    """A finished job: the kept ``direction`` (with its metadata and thumbnail), its ``result``, the
    ranking when several ``candidates`` were trained, and the ``start`` that was used."""

    direction: Direction
    result: TrainResult
    start: str
    choice: CandidateChoice | None = None
    candidates: list[Direction] = field(default_factory=list)  # every candidate, recorded alike (in start order)

    @property
    def note(self) -> str | None:
        """Said when training did not start where it was asked to (``init`` 'auto' fell back to random)."""
        asked = self.direction.meta.get("init_option")
        if asked == "auto" and self.start.startswith("random"):
            return f"started from a {self.start}."
        return None

    def report(self) -> list[str]:
        """What people read: the kept step's losses and time, then the candidates' scores and the
        chosen one's metrics (the CLI prints it, the Train node outputs it)."""
        steps = self.result.direction.meta.get("losses", {}).get("steps", len(self.result.losses))
        mode = self.direction.meta.get("mode")
        lines = [f"Trained {steps} steps" + (f" ({mode} mode)" if mode else "") + f": {self.result.summary()}."]
        return lines + (self.choice.report() if self.choice is not None else [])


def encoder_for_start(init: str, encoder: E4EEncoder | str | os.PathLike | None = None,
                      device: str | torch.device = "auto") -> E4EEncoder | None:
    """The e4e encoder a start needs (loaded from ``encoder``, or looked up): none for ``"random"``,
    and none for ``"auto"`` when no encoder file is installed (training then starts randomly, as
    TargetCLIP does for a target without a face); ``"inversion"`` raises ``MissingWeightsError``."""
    if init == "random":
        return None
    if isinstance(encoder, E4EEncoder):
        return encoder
    try:
        return load_encoder(encoder, device=device)
    except MissingWeightsError:
        if init == "inversion":
            raise
        return None


def train_essence(target: Target, generator: StyleGAN2Generator, guide: ClipGuide, job: EssenceJob = EssenceJob(), *,
                  sources: LatentSet | None = None, encoder: E4EEncoder | None = None, landmarks: Any = None,
                  start: tuple[Start, str] | None = None, identity: Any = None, progress: Callable[[TrainProgress], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, on_retry: Callable[[int], None] | None = None,
                  release: Callable[[], None] = release_device_memory) -> TrainedEssence:
    """Train ``job`` for ``target`` (a path, picture, ComfyUI tensor or a list of pictures of one target).

    ``sources``: the source faces (default: ``job.source_faces``). ``encoder`` (and the dlib
    ``landmarks``) give the e4e inversion of the target as the start (``job.init``; see
    ``initial_direction``), or ``start`` is that function's answer already made (a host that moves the
    encoder to the GPU only for the inversion makes it first). With ``job.candidates`` > 1 they train together from ``training_starts``
    and the best on held-out faces is kept (ranked with ArcFace when ``identity`` is given, else a
    CLIP proxy). ``progress``, ``should_stop``, ``on_retry`` and ``release`` are ``train``'s: device
    memory too small for a pass starts again with smaller ones (the same result). Nothing is written.
    """
    pictures = target_pictures(target)  # the one reading of the target's files
    faces = sources if sources is not None else job.source_faces(generator)
    start, note = start or initial_direction(job.init, pictures, generator, encoder, landmarks)
    hooks = dict(progress=progress, should_stop=should_stop, on_retry=on_retry, release=release)
    if job.candidates == 1:
        result = train(pictures, faces.latents, generator, guide, start, job.settings, metadata={"init": note},
                       **hooks)
        return TrainedEssence(trained_direction(result, target, faces, job, pictures), result, note)
    starts = training_starts(job.candidates, generator, start, job.settings)
    choice = train_best_candidate(pictures, faces.latents, generator, guide, starts, job.settings, identity=identity,
                                  **hooks)
    candidates = [trained_direction(replace(result, direction=direction), target, faces, job, pictures)
                  for result, direction in zip(choice.results, choice.directions)]
    best = choice.ranking[0]
    return TrainedEssence(candidates[best], choice.best_result, note, choice, candidates)


def trained_direction(result: TrainResult, target: Target, sources: LatentSet | torch.Tensor,
                      job: EssenceJob = EssenceJob(), pictures: Any = None) -> Direction:
    """``result``'s direction with the metadata every front end records and the target's thumbnail.

    ``target`` is the target as given (paths are recorded by file name); the name defaults to the
    first target file's stem; ``job.mode`` and ``job.init`` are recorded as ``mode`` and
    ``init_option`` (``train`` records the start actually used as ``init``). ``pictures``: the target
    already read by ``target_pictures`` (read here otherwise).
    """
    files = _file_names(target)
    pictures = target_pictures(target) if pictures is None else pictures
    count = len(pictures) if isinstance(pictures, list) else (
        pictures.shape[0] if isinstance(pictures, torch.Tensor) and pictures.ndim == 4 else 1)
    meta: dict[str, Any] = dict(result.direction.meta)
    name = job.name or (Path(files[0]).stem if files else None)
    if name:
        meta["name"] = name
    meta.update(target=files or f"{count} picture(s)", targets=count,
                source_latents=sources.describe() if isinstance(sources, LatentSet) else f"{sources.shape[0]} faces")
    if job.mode is not None:
        meta["mode"] = job.mode
    meta["init_option"] = job.init
    meta["loss_curve"] = {"total": _rounded(result.losses), "transfer": _rounded(result.transfer),
                          "consistency": _rounded(result.consistency)}
    return Direction(result.direction.tensor, meta, target_thumbnail(first_picture(pictures)))


def _file_names(target: Target) -> list[str]:
    """The file names of a target given as paths (none for pictures and tensors)."""
    items = target if isinstance(target, (list, tuple)) else [target]
    return [Path(item).name for item in items if isinstance(item, (str, os.PathLike))]


def _rounded(values: list[float]) -> list[float]:
    return [round(float(v), 6) for v in values]
