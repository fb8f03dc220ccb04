"""The one training call: ``train``, which every front end (``essence train``, ``essence batch train``,
the Train Essence node, the demo, the benchmarks) and a user's own script call.

It takes the target, the source faces, the start or starts, the job (the optimisation's settings and
what is recorded) and what to do with candidates. It reads the target once (``TrainingTarget``) and
hands each part what it needs: the target's picture to the start (``start``), its unit CLIP embedding
to the loop (``loop``), which runs once for every start together, and the target itself to the
ranking of the candidates (``candidates``) and to the metadata. It records every direction the same way
(``trained_direction``): the kept step's losses, the settings that ran, the start used, the generator
and CLIP model, the name, the target pictures (file names when they were files), where the source
faces came from, the training mode, the start asked for, the whole loss curve, the candidates'
ranking and the target's thumbnail.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import torch
from PIL import Image

from ..errors import EssenceError
from ..latents import (Direction, LatentSet, LatentSpace, direction_metadata, load_latents, sample_latents,
                       target_thumbnail)
from ..networks import ClipGuide, E4EEncoder, StyleGAN2Generator
from ..runtime import release_device_memory
from .candidates import CandidateChoice, Selection, choose_candidate, training_starts
from .loop import TrainProgress, TrainResult, TrainSettings, _train_starts
from .start import INIT_CHOICES, NamedStart, StartLike, initial_direction, named_start
from .target import TargetLike, TrainingTarget

SOURCE_TRUNCATION = 0.7  # sampled source faces, as TargetCLIP's random faces


@dataclass(frozen=True)
class EssenceJob:
    """What to train, apart from the target and the models: the optimisation's ``settings``, the
    ``mode`` name they came from (recorded), the start asked for (``INIT_CHOICES``), how many
    ``candidates`` to train together (the best is kept), a ``name`` for the file, and the source
    faces when the caller does not give them: a latent ``sources`` file, else ``sample`` random faces
    of seed ``settings.seed + 1`` (so they differ from a random start, which uses ``settings.seed``).
    Plain values only, so a batch can store it and compare a rerun's."""

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
    """What ``train`` made: the kept ``direction`` (with its metadata and thumbnail), its ``result``
    and its ``start``, every start's result in order (``results``, each with its recorded direction)
    and, when candidates were ranked, the ``choice``."""

    direction: Direction
    result: TrainResult
    start: str
    results: list[TrainResult]
    choice: CandidateChoice | None = None

    @property
    def candidates(self) -> list[Direction]:
        """Every direction trained, recorded alike, in start order."""
        return [result.direction for result in self.results]

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
        mode = self.direction.meta.get("mode")
        lines = [f"Trained {self.result.settings.steps} steps" + (f" ({mode} mode)" if mode else "")
                 + f": {self.result.summary()}."]
        return lines + (self.choice.report(self.candidates) if self.choice is not None else [])


def train(target: TargetLike, sources: LatentSet | torch.Tensor | None, generator: StyleGAN2Generator,
          guide: ClipGuide, job: EssenceJob = EssenceJob(), *, start: StartLike = None,
          encoder: E4EEncoder | None = None, landmarks: Any = None, choose: Selection | None = Selection(),
          metadata: Mapping[str, Any] | None = None, fit_memory: bool = True,
          progress: Callable[[TrainProgress], None] | None = None, should_stop: Callable[[], bool] | None = None,
          on_retry: Callable[[int], None] | None = None,
          release: Callable[[], None] = release_device_memory) -> TrainedEssence:
    """Train a TargetCLIP direction for ``target``, or several candidates together and keep the best.

    target: a ``TrainingTarget``, or what builds one: a path, a PIL image, a ComfyUI IMAGE
        [B, H, W, C] in [0, 1], or a list of pictures of one target (their CLIP embeddings are averaged).
    sources: W+ latents [N, n_latent, D] or a ``LatentSet`` (inverted photos, samples, TargetCLIP's
        opt_latents); None: ``job.source_faces``.
    job: the settings, the start asked for, the number of candidates and what is recorded.
    start: None starts where ``job.init`` says (see ``initial_direction``: the e4e inversion of the
        target with ``encoder`` and the dlib ``landmarks``, else random). Or a start already made: a
        direction [1, n_latent, D], ``"random"``, or a ``(start, note)`` tuple (a host that moves the
        encoder to the GPU only for the inversion makes it first); with ``job.candidates`` > 1 the
        candidates start from it and from ``training_starts``. A list of starts trains one candidate each.
    choose: how candidates are ranked (``Selection``: the scorer, the identity model); None ranks none
        and keeps the first. ``metadata``: added to every direction's metadata.
    fit_memory: on device out-of-memory, start again with half as many faces per pass, down to one
        (the same result, later); ``on_retry`` hears each new chunk size and ``release`` frees memory
        between attempts; otherwise a ``DeviceMemoryError``.
    progress: called with a ``TrainProgress`` every ``settings.progress_every`` steps (with several
        candidates, for the one with the lowest best loss so far); it may raise to abort (ComfyUI's
        interrupt does). ``should_stop``: polled every step; True raises ``TrainingCancelled``.

    Candidates train together (K x N edited faces per generator pass) but share nothing else, so each
    ends where training from its start alone would. Runs with gradients even under ``torch.no_grad``
    or ``inference_mode`` (ComfyUI); the models stay frozen. Nothing is written.
    """
    target = TrainingTarget.read(target)
    faces = job.source_faces(generator) if sources is None else sources
    starts = _starts(job, target.shown, generator, start, encoder, landmarks)
    results = _train_starts(target.embedding(guide), faces.latents if isinstance(faces, LatentSet) else faces,
                            generator, guide, [init for init, _ in starts], job.settings, fit_memory=fit_memory,
                            progress=progress, should_stop=should_stop, on_retry=on_retry, release=release)
    notes = [note for _, note in starts]
    choice = None
    if choose is not None and len(results) > 1:
        choice = choose_candidate([result.direction for result in results], *choose.ranker(generator, guide, target))
    recorded = [replace(result, direction=trained_direction(result, index, notes, target, faces, job, generator,
                                                            guide, choice, metadata))
                for index, result in enumerate(results)]
    kept = choice.chosen if choice is not None else 0
    return TrainedEssence(recorded[kept].direction, recorded[kept], notes[kept], recorded, choice)


def _starts(job: EssenceJob, picture: Image.Image | torch.Tensor | None, generator: StyleGAN2Generator,
            start: StartLike, encoder: E4EEncoder | None, landmarks: Any) -> list[NamedStart]:
    """Every candidate's start with its note: the starts given, or ``job.init``'s start (from the
    target's ``picture``) and, for several candidates, those ``training_starts`` adds to it."""
    if isinstance(start, list):
        if job.candidates not in (1, len(start)):
            raise EssenceError(f"{len(start)} starts were given for {job.candidates} candidates; give one start, "
                               f"or one per candidate.")
        return [named_start(item) for item in start]
    first = initial_direction(job.init, picture, generator, encoder, landmarks) if start is None else named_start(start)
    if job.candidates == 1:
        return [first]
    return training_starts(job.candidates, generator, first[0], job.settings)


def trained_direction(result: TrainResult, index: int, starts: Sequence[str], target: TrainingTarget,
                      sources: LatentSet | torch.Tensor, job: EssenceJob, generator: StyleGAN2Generator,
                      guide: ClipGuide, choice: CandidateChoice | None = None,
                      metadata: Mapping[str, Any] | None = None) -> Direction:
    """Candidate ``index``'s direction (of ``len(starts)``) with the metadata every front end records,
    its recommended strength when ranking measured one, and the target's thumbnail: the one place a
    trained direction's metadata is written."""
    settings = result.settings
    meta = direction_metadata(
        latent_space=asdict(LatentSpace.of_generator(generator)), generator_fingerprint=generator.fingerprint(),
        clip_model=guide.name, sources=sources.shape[0] if isinstance(sources, torch.Tensor) else len(sources),
        hyperparameters={**{k: v for k, v in asdict(settings).items() if k != "progress_every"},
                         "coefficient_lr": settings.coefficient_rate},
        losses=result.terms(), train_seconds=round(result.seconds, 3))
    if len(starts) > 1:
        meta.update(candidate=index, candidates=len(starts))
    meta["init"] = starts[index]
    name = job.name or target.name
    if name:
        meta["name"] = name
    meta.update(target=target.describe(), targets=target.count,
                source_latents=sources.describe() if isinstance(sources, LatentSet) else f"{sources.shape[0]} faces")
    if job.mode is not None:
        meta["mode"] = job.mode
    meta["init_option"] = job.init
    meta["loss_curve"] = {"total": _rounded(result.losses), "transfer": _rounded(result.transfer),
                          "consistency": _rounded(result.consistency)}
    if choice is not None:
        meta["selection"] = choice.selection(index, starts)
    meta.update(metadata or {})
    thumbnail = target_thumbnail(target.shown) if target.shown is not None else None
    direction = Direction(result.direction.tensor, meta, thumbnail)
    strength = choice.details[index].auto_strength if choice is not None else None
    return direction.with_auto_strength(strength) if strength is not None else direction


def _rounded(values: list[float]) -> list[float]:
    return [round(float(v), 6) for v in values]
