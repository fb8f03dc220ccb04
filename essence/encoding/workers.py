"""Where one encoder training runs: as a single process (the default) or as one of several workers,
and where its checkpoints go. ``train_encoder`` runs the coach's loop through these two seams only,
so a distributed run (``essence.scale.run_encoder_training``: Ray Train, DDP) shares every line of it.

``Workers`` is the run as one worker sees it. The default is the single process: rank 0 of 1, the
whole batch, the model itself, nothing to average. With ``count`` workers and ``batch_size`` B, step k's
pictures are ``data.step_batch`` of ``count x B`` pictures (exactly the pictures and flips one process
with that batch takes at step k; with one worker, the single-process run's) and worker ``rank`` takes
rows ``[rank x B, (rank + 1) x B)``; the gradient flows through ``trained_through(model)`` (DDP, which
averages it over the workers, so every worker makes the same update); the recorded losses are their
``mean`` over the workers; a stop asked by ``should_stop`` is agreed with ``any``. Rank 0 alone validates,
reports progress and writes checkpoints.

``DistributedWorkers`` is one process of a ``torch.distributed`` run (DDP), as on Ray Train's workers.

``CheckpointStore`` is where checkpoints and the best encoder go: ``CheckpointFolder`` (a folder, the
files of ``state``), or Ray Train's checkpoints (the same files, reported with ``ray.train.report``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import torch

from .state import TrainingState, load_best, load_checkpoint, prune_best, save_best, save_checkpoint


class Workers:
    """One process doing all of a run (see the module docstring for what a distributed run changes)."""

    rank: int = 0
    count: int = 1

    def trained_through(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training forward and backward go through (DDP's wrapper when distributed)."""
        return model

    def share(self, images: torch.Tensor) -> torch.Tensor:
        """This worker's rows of the step's ``count x batch_size`` pictures."""
        size = images.shape[0] // self.count
        return images[self.rank * size:(self.rank + 1) * size]

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` averaged over the workers (the same tensor on every worker)."""
        return values

    def any(self, flag: bool) -> bool:
        """True on every worker when any worker's ``flag`` is."""
        return flag


class DistributedWorkers(Workers):
    """Rank ``rank`` of ``count`` processes of one ``torch.distributed`` run, whose default process group is
    ready (Ray Train's workers, or any launcher of torch's): the encoder in torch's DistributedDataParallel,
    which averages the gradient so that every worker makes the same update, and collectives for the
    losses and the stop vote. DDP's default ``broadcast_buffers`` gives every worker rank 0's BatchNorm
    running statistics before each forward. One worker is the single process: no wrapper, nothing sent."""

    def __init__(self, rank: int, count: int, device: torch.device) -> None:
        self.rank, self.count, self.device = rank, count, device

    def trained_through(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.count == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        on_gpu = self.device.type == "cuda"  # as Ray Train's prepare_model: the worker's own GPU
        return DistributedDataParallel(model, device_ids=[self.device] if on_gpu else None,
                                       output_device=self.device if on_gpu else None)

    def mean(self, values: torch.Tensor) -> torch.Tensor:
        if self.count == 1:
            return values
        summed = values.detach().clone()
        torch.distributed.all_reduce(summed)
        return summed / self.count

    def any(self, flag: bool) -> bool:
        if self.count == 1:
            return flag
        vote = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(vote, op=torch.distributed.ReduceOp.MAX)
        return bool(vote.item())


class CheckpointStore(Protocol):
    """Where a run's checkpoint and best encoder are kept; ``where`` names it in messages."""

    where: str

    def load(self) -> TrainingState | None:
        """The latest checkpoint, or None for a fresh run."""

    def load_best(self, state: TrainingState) -> dict[str, torch.Tensor] | None:
        """The state of the best encoder ``state`` names (``state.best_step``), or None."""

    def keep_best(self, encoder: dict[str, torch.Tensor], step: int, loss: float, run: dict[str, Any]) -> None:
        """A new best encoder, just validated (rank 0)."""

    def save(self, state: TrainingState, best: dict[str, torch.Tensor] | None) -> None:
        """A checkpoint after ``state.step`` updates, with the best encoder so far; every worker calls it."""


class CheckpointFolder:
    """Checkpoints in a folder: ``checkpoint.safetensors`` replaced atomically, and the best encoder as
    ``best-<step>.safetensors`` written when it validates, the older ones removed once a checkpoint
    no longer names them."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.where = str(self.folder)

    def load(self) -> TrainingState | None:
        return load_checkpoint(self.folder)

    def load_best(self, state: TrainingState) -> dict[str, torch.Tensor] | None:
        return load_best(self.folder, state.best_step, state.run)

    def keep_best(self, encoder: dict[str, torch.Tensor], step: int, loss: float, run: dict[str, Any]) -> None:
        save_best(self.folder, encoder, step, loss, run)

    def save(self, state: TrainingState, best: dict[str, torch.Tensor] | None) -> None:
        save_checkpoint(self.folder, state)
        prune_best(self.folder, state.best_step)


def checkpoint_store(checkpoints: str | os.PathLike | CheckpointStore | None) -> CheckpointStore | None:
    """A folder's store for a path, the store itself when given one, None for none."""
    if checkpoints is None or not isinstance(checkpoints, (str, os.PathLike)):
        return checkpoints
    return CheckpointFolder(checkpoints)
