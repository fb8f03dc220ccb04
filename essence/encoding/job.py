"""Training an encoder into its file: every check first, the training, the file when complete.

The output file and the checkpoint folder are checked together against every input (the e4e file,
the generator, CLIP, the sources file, the pictures' folder) before any picture is read or any step
runs (``storage.check_files``), as every other Essence command does. Checkpoints go to
``<out>.checkpoints/`` beside the output unless another folder is named; a rerun of the same command
after a kill goes on from there. The encoder file appears, atomically, only when training is complete.
A run on several workers (``essence.scale.run_encoder_training``) keeps its checkpoints in the same
folder's ``ray-train/``; a folder holds one kind of run or the other, and the other kind is refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..errors import EssenceError
from ..networks import ClipGuide, E4EEncoder, StyleGAN2Generator
from ..storage import Output, check_files
from .data import EncoderData
from .encoder_file import SUFFIX, EssenceEncoder, trained_encoder
from .settings import EncoderSettings
from .state import CHECKPOINT_NAME
from .trainer import EncoderProgress, EncoderTraining, train_encoder

PathLike = str | os.PathLike
DISTRIBUTED_RUN = "ray-train"  # the sub-folder of the checkpoint folder that holds a run on several workers


def checkpoint_folder(out: PathLike) -> Path:
    """Where a run writing ``out`` keeps its checkpoints by default: ``<out>.checkpoints`` beside it."""
    out = Path(out)
    return out.with_name(out.name.removesuffix(SUFFIX) + ".checkpoints")


def check_encoder_outputs(out: PathLike, checkpoints: PathLike | None, inputs: Iterable[PathLike | None], *,
                          distributed: bool = False) -> Path:
    """Refuse, before any work, an output or checkpoint folder that would replace an input, clash, or
    cannot be written, or a checkpoint folder that holds the other kind of run (``distributed``: a run
    on several workers); the checkpoint folder to use."""
    folder = Path(checkpoints) if checkpoints is not None else checkpoint_folder(out)
    check_files([Output(Path(out), "--out", (SUFFIX,)), Output(folder, "--checkpoints", folder=True)], inputs)
    if distributed and (folder / CHECKPOINT_NAME).is_file():
        raise EssenceError(f"{folder}: holds the checkpoint of a run in one process; go on with it in one process, "
                           f"or choose another checkpoint folder for a run on several workers.")
    if not distributed and (folder / DISTRIBUTED_RUN).is_dir():
        raise EssenceError(f"{folder}: holds the checkpoints of a run on several workers ({DISTRIBUTED_RUN}/); go "
                           f"on with it on workers, or choose another checkpoint folder for a run in one process.")
    return folder


def train_encoder_file(out: PathLike, encoder: E4EEncoder, generator: StyleGAN2Generator, guide: ClipGuide,
                       data: EncoderData, sources: torch.Tensor, settings: EncoderSettings = EncoderSettings(), *,
                       checkpoints: PathLike | None = None, inputs: Iterable[PathLike | None] = (),
                       name: str | None = None, start: str | None = None,
                       progress: Callable[[EncoderProgress], None] | None = None,
                       should_stop: Callable[[], bool] | None = None,
                       on_retry: Callable[[int], None] | None = None) -> tuple[EssenceEncoder, EncoderTraining]:
    """Train (or resume) and write the encoder file ``out``; the file's contents and the run.
    ``inputs`` are the files the caller read, which no output may replace; ``start`` names the
    starting e4e file in the metadata; ``on_retry``: as ``train_encoder``'s."""
    folder = check_encoder_outputs(out, checkpoints, inputs)
    training = train_encoder(encoder, generator, guide, data, sources, settings, checkpoints=folder,
                             progress=progress, should_stop=should_stop, on_retry=on_retry)
    result = trained_encoder(training, generator, guide.name, data, sources, settings, name or Path(out).stem,
                             Path(start).name if start else None)
    result.save(out)
    return result, training
