"""The training node: TargetCLIP optimisation of one essence direction, with progress and cancel.

ComfyUI runs every node inside ``torch.inference_mode()``; ``essence.train`` switches
autograd back on for its loop, and the models it back-propagates through were built outside
inference mode by ``essence.load_*`` (and are moved between devices outside it, see ``host.py``).

Starting point (``init``): TargetCLIP starts from the e4e inversion of the target and falls back to
a random latent when the target has no face; 'auto' does the same when an encoder is connected,
'inversion' insists on it, 'random' skips it; 'encoder' starts from the essence a trained essence
encoder gives the target (a warm start). The direction records which start was used.

Cancelling: ComfyUI's Cancel sets a flag that ``throw_exception_if_processing_interrupted`` turns
into an exception. It is checked every step and on every progress update; the exception leaves
``essence.train`` before any result exists, so nothing reaches Save Essence and no file is written.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from .. import essence
from ..essence.encoding import EssenceEncoder, encoder_start
from ..essence.errors import DeviceMemoryError
from ..essence.networks import render
from ..essence.training import (DEFAULT_MODE, INIT_CHOICES, TRAIN_MODES, EssenceJob, NamedStart, Selection,
                                TrainingTarget, TrainProgress, TrainSettings, initial_direction, modes_help, train,
                                train_mode, training_memory)
from . import host
from . import types as T
from .convert import to_comfy_image, to_pil
from .inputs import choice, integer, link, number, seed

log = logging.getLogger(__name__)
CATEGORY = "essence/train"
PREVIEW_FACES = 4        # sources shown in the progress preview
PREVIEW_RESOLUTION = 256  # previews of big generators stop early at this size (cheap)
ENCODER_INIT = "encoder"  # init's warm start from a trained essence encoder (the essence_encoder input)
PROGRESS_UPDATES = 200   # at most this many progress reports (each one synchronises the GPU)
DEFAULTS = TrainSettings()  # the official hyperparameters, the inputs' defaults


class EssenceTrain:
    """Train an essence from target pictures."""

    DESCRIPTION = ("TargetCLIP: learns one direction that gives any face the essence of the target (a person, a "
                   "character, a painting) while keeping who the face is. Feed several pictures of the same "
                   "target as one batch. 1000 steps is the paper's setting. Cancel stops it; nothing is saved.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    RETURN_TYPES = (T.DIRECTION, "IMAGE", "STRING")
    RETURN_NAMES = ("direction", "preview", "report")
    OUTPUT_TOOLTIPS = ("The trained essence (save it with Save Essence).",
                       "The source faces with the essence applied at strength 1.",
                       "How training went (the kept step's losses, time) and, with candidates, every "
                       "candidate's score, the chosen one's metrics and its recommended strength.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "target": link("IMAGE", "Picture(s) of the target; a batch of several pictures of the same "
                               "target is averaged."),
                "sources": link(T.LATENT, "Source faces the essence must work on (TargetCLIP uses 4)."),
                "generator": link(T.GENERATOR, "The StyleGAN2 generator."),
                "guide": link(T.GUIDE, "The CLIP model that compares edited faces with the target."),
                "steps": integer(1000, 1, 20000, "Optimisation steps (the paper uses 1000)."),
                "lambda_transfer": number(1.0, 0.0, 10.0, "Weight of 'look like the target' (official: 1).", 0.05),
                "lambda_consistency": number(0.5, 0.0, 10.0, "Weight of 'change every face the same way' "
                                             "(official: 0.5); 0 turns it off.", 0.05),
                "seed": seed("Seed of the random starting direction and of the optimisation."),
                "mode": choice(list(TRAIN_MODES), modes_help(), DEFAULT_MODE),
                "init": choice([*INIT_CHOICES, ENCODER_INIT], "Starting direction: " + "; ".join(
                    f"{name} = {text}" for name, text in INIT_CHOICES.items())
                    + f"; {ENCODER_INIT} = the essence a trained essence encoder gives the target (connect "
                    "essence_encoder). The inversion needs the encoder input connected.", "auto"),
                "chunk_size": integer(0, 0, 64, "Faces rendered per pass: 0 = all at once; smaller uses less "
                                      "memory with the same result (halved automatically on out-of-memory)."),
            },
            "optional": {
                "clip_preprocessing": choice(("official", "normalized"), "How generated faces enter CLIP: "
                                             "'official' reproduces TargetCLIP (no mean/std normalisation); "
                                             "'normalized' is CLIP's own preprocessing.", "official"),
                "preview_every": integer(50, 0, 10000, "Show the edited sources on the node every this many "
                                         "steps (0 = no previews)."),
                "encoder": link(T.ENCODER, "The e4e encoder, for init 'inversion' / 'auto' (start from the "
                                "target's own latent, as TargetCLIP does)."),
                "landmarks": link(T.LANDMARKS, "dlib's landmark model, to align the target for the inversion "
                                  "(default: found automatically, as Load Landmark Model's 'auto')."),
                "lr": number(DEFAULTS.lr, 0.0, 10.0, "Learning rate of the direction and of the per-source "
                             "coefficients (official: 0.2).", 0.001),
                "weight_decay": number(DEFAULTS.weight_decay, 0.0, 1.0, "L2 weight decay of the direction "
                                       "(official: 0.003).", 0.0001),
                "candidates": integer(1, 1, 16, "Train this many directions together (from the target's "
                                      "inversion, perturbations of it and random latents) and output the one "
                                      "with the best target similarity on held-out faces while keeping identity "
                                      "(see the identity input); its metadata records every score and its "
                                      "recommended strength."),
                "identity": link(T.IDENTITY, "ArcFace identity model: with candidates > 1, they are ranked by "
                                 "target similarity while keeping identity (without it, a CLIP proxy)."),
                "essence_encoder": link(T.TRAINED_ENCODER, "A trained essence encoder (Load Essence Encoder "
                                        "(trained)), for init 'encoder': start from its essence of the target "
                                        "instead of the e4e inversion."),
            },
        }

    def train(self, target: torch.Tensor, sources: essence.LatentSet, generator: essence.networks.StyleGAN2Generator,
              guide: essence.networks.ClipGuide, steps: int, lambda_transfer: float, lambda_consistency: float,
              seed: int, mode: str, init: str, chunk_size: int, clip_preprocessing: str = "official",
              preview_every: int = 50, encoder: essence.networks.E4EEncoder | None = None,
              landmarks: essence.faces.FaceLandmarker | None = None, lr: float = DEFAULTS.lr,
              weight_decay: float = DEFAULTS.weight_decay, candidates: int = 1,
              identity: essence.networks.IdentityEncoder | None = None,
              essence_encoder: EssenceEncoder | None = None) -> tuple[essence.Direction, torch.Tensor, str]:
        settings = train_mode(mode).settings(
            steps=steps, lambda_transfer=lambda_transfer, lambda_consistency=lambda_consistency,
            clip_mode=clip_preprocessing, seed=seed, progress_every=max(1, steps // PROGRESS_UPDATES),
            chunk_size=chunk_size or None, lr=lr, weight_decay=weight_decay)
        warm = init == ENCODER_INIT
        job = EssenceJob(settings, mode=mode, init="auto" if warm else init, candidates=candidates)
        target = TrainingTarget.read(target)
        start = (_warm_start(essence_encoder, target.pictures, generator, landmarks) if warm
                 else _start(job, target.shown, generator, encoder, landmarks))
        room = training_memory(generator, len(sources), settings, candidates)
        with host.models_on_compute_device(generator, guide, working_memory=room):
            trained = train(target, sources, generator, guide, job, start=start, choose=Selection(identity=identity),
                            metadata={"init_option": ENCODER_INIT} if warm else None,
                            progress=_progress_reporter(generator, sources.latents[:PREVIEW_FACES], settings.steps,
                                                        preview_every),
                            should_stop=_interrupted, release=host.release_memory,
                            on_retry=host.memory_retry_log("Train Essence"))
            preview = render(generator, sources.latents + trained.direction.tensor,
                             between_batches=host.check_interrupt)
        return (trained.direction, to_comfy_image(preview, host.intermediate_device()), "\n".join(trained.report()))


def _start(job: EssenceJob, picture: Any, generator: essence.networks.StyleGAN2Generator,
           encoder: essence.networks.E4EEncoder | None, landmarks: essence.faces.FaceLandmarker | None) -> NamedStart:
    """``initial_direction`` from the target's ``picture`` with the encoder on the compute device only
    for the inversion (it need not stay there while training), and a message that names the node input
    to connect."""
    if job.init == "inversion" and encoder is None:
        raise essence.EssenceError(
            "init 'inversion' starts from the e4e inversion of the target, but Train Essence's encoder "
            "input is not connected. Connect Load Essence Encoder (e4e_ffhq_encode.pt) to it, or choose "
            "init 'auto' or 'random'.")
    if encoder is None:
        return initial_direction(job.init, picture, generator)
    with host.models_on_compute_device(encoder):
        return initial_direction(job.init, picture, generator, encoder, landmarks)


def _warm_start(essence_encoder: EssenceEncoder | None, pictures: Any, generator: essence.networks.StyleGAN2Generator,
                landmarks: essence.faces.FaceLandmarker | None) -> NamedStart:
    """init 'encoder': ``encoding.encoder_start`` with the encoder on the compute device only while it
    encodes, and a message that names the node input to connect."""
    if essence_encoder is None:
        raise essence.EssenceError(
            "init 'encoder' starts from a trained essence encoder's essence of the target, but Train Essence's "
            "essence_encoder input is not connected. Connect Load Essence Encoder (trained) to it, or choose "
            "init 'auto'.")
    with host.models_on_compute_device(essence_encoder.model):
        return encoder_start(essence_encoder, pictures, generator, landmarks=landmarks)


def _interrupted() -> bool:
    """Polled by ``train`` every step: raises ComfyUI's interrupt exception on Cancel."""
    host.check_interrupt()
    return False


def _progress_reporter(generator: essence.networks.StyleGAN2Generator, faces: torch.Tensor, steps: int,
                       preview_every: int) -> Callable[[TrainProgress], None]:
    """A ``train`` progress callback driving ComfyUI's bar, with a preview of the edited faces
    (rendered from the current direction) every ``preview_every`` steps. Training that starts again
    with smaller passes (out of device memory) counts its steps from 1 again, and so do the previews."""
    bar = host.Progress(steps)
    next_preview = [preview_every]
    stop = PREVIEW_RESOLUTION if generator.size > PREVIEW_RESOLUTION else None

    def report(progress: TrainProgress) -> None:
        host.check_interrupt()
        image = None
        if progress.step < next_preview[0] - preview_every:  # started again after running out of memory
            next_preview[0] = preview_every
        if preview_every and (progress.step >= next_preview[0] or progress.step == progress.total):
            next_preview[0] = progress.step + preview_every
            image = _preview(generator, faces + progress.direction.to(faces.dtype).cpu(), stop)
        bar.update(progress.step, image)

    return report


def _preview(generator: essence.networks.StyleGAN2Generator, edited: torch.Tensor, stop: int | None) -> Any:
    """The edited faces side by side, or None when the device has no room for even one of them.

    A preview is only a picture: running out of memory for it must not count as training running
    out (which would restart training with smaller chunks), so it is skipped, with a log line.
    """
    try:
        return to_pil(render(generator, edited, stop_at=stop, between_batches=host.check_interrupt))
    except DeviceMemoryError as exc:
        host.release_memory()
        log.warning("Train Essence: no preview this time (%s); training goes on.", exc.what)
        return None

