"""The encoder training's checkpoint: everything a killed run needs to go on as if never stopped.

One safetensors file, replaced atomically at every checkpoint (``storage.save_safetensors_atomic``):
the encoder's state (its BatchNorm running statistics included), the optimiser's state (Ranger's
moments and Lookahead's slow weights as tensors; its step count and settings as JSON), the next
global step, the loss history, the validations and the best one, torch's CPU random state, and the
``run`` record (settings, generator, sources, data, starting encoder), which a resume must match.

Nothing here is pickled: tensors are safetensors, everything else JSON, read back through
``storage.read_typed_file``, which checks the header before any tensor is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import EssenceError
from ..storage import encode_metadata, read_typed_file, save_safetensors_atomic

CHECKPOINT_FORMAT = "essence.encoder_checkpoint"
BEST_FORMAT = "essence.encoder_best"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.safetensors"
BEST_PREFIX = "best-"


@dataclass
class TrainingState:
    """Where a run stands after ``step`` updates (the next global step to run is ``step``)."""

    step: int
    encoder: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    run: dict[str, Any]
    losses: list[list[float]] = field(default_factory=list)  # per step: total, similarity, consistency, l2
    grad_norms: list[float] = field(default_factory=list)
    validations: list[list[float]] = field(default_factory=list)  # [step, mean total loss]
    best_loss: float | None = None
    best_step: int | None = None
    rng: torch.Tensor = field(default_factory=torch.get_rng_state)


def save_checkpoint(folder: str | os.PathLike, state: TrainingState) -> Path:
    """Replace ``folder``/checkpoint.safetensors with ``state`` (atomically: a kill leaves the old one)."""
    tensors = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in state.encoder.items()}
    optimizer_tensors, optimizer_json = _split_optimizer(state.optimizer)
    tensors.update(optimizer_tensors)
    tensors["rng"] = state.rng.cpu().contiguous()
    fields = {"step": state.step, "run": state.run, "optimizer": optimizer_json, "losses": state.losses,
              "grad_norms": state.grad_norms, "validations": state.validations, "best_loss": state.best_loss,
              "best_step": state.best_step}
    return save_safetensors_atomic(tensors, encode_metadata(CHECKPOINT_FORMAT, FORMAT_VERSION, fields),
                                   Path(folder) / CHECKPOINT_NAME)


def load_checkpoint(folder: str | os.PathLike) -> TrainingState | None:
    """The state in ``folder``/checkpoint.safetensors, or None when the folder has none."""
    path = Path(folder) / CHECKPOINT_NAME
    if not path.is_file():
        return None
    tensors, meta = read_typed_file(path, CHECKPOINT_FORMAT, FORMAT_VERSION, "rng", EssenceError,
                                    "encoder training checkpoint")
    encoder = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    optimizer = _join_optimizer(tensors, meta["optimizer"])
    return TrainingState(int(meta["step"]), encoder, optimizer, meta["run"], meta["losses"], meta["grad_norms"],
                         meta["validations"], meta["best_loss"], meta["best_step"], tensors["rng"])


def best_path(folder: str | os.PathLike, step: int) -> Path:
    """The file of the encoder that validated best, as of step ``step``."""
    return Path(folder) / f"{BEST_PREFIX}{step:07d}.safetensors"


def save_best(folder: str | os.PathLike, encoder: dict[str, torch.Tensor], step: int, loss: float,
              run: dict[str, Any]) -> Path:
    """Write the encoder that validated best so far, as ``best-<step>.safetensors``. Earlier best files
    stay until a checkpoint no longer names them (``prune_best``): a run killed between this file and
    its checkpoint resumes from a checkpoint that names an earlier one."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.items()}
    meta = encode_metadata(BEST_FORMAT, FORMAT_VERSION, {"step": step, "loss": loss, "run": run})
    return save_safetensors_atomic(tensors, meta, best_path(folder, step))


def load_best(folder: str | os.PathLike, step: int | None, run: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The state of the best encoder of step ``step`` of this run, or None when there is none."""
    path = best_path(folder, step) if step is not None else None
    if path is None or not path.is_file():
        return None
    tensors, meta = read_typed_file(path, BEST_FORMAT, FORMAT_VERSION, "input_layer.0.weight", EssenceError,
                                    "best encoder checkpoint")
    return tensors if meta.get("step") == step and meta.get("run") == run else None


def prune_best(folder: str | os.PathLike, keep: int | None) -> None:
    """Remove the best files a written checkpoint no longer names (all but the one of step ``keep``)."""
    kept = best_path(folder, keep).name if keep is not None else None
    for path in Path(folder).glob(f"{BEST_PREFIX}*.safetensors"):
        if path.name != kept:
            path.unlink(missing_ok=True)


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimiser state dict as tensors (``optimizer.<param>.<name>``) and JSON (the rest)."""
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], saved: dict[str, Any]) -> dict[str, Any]:
    """``_split_optimizer`` undone: a state dict ``Optimizer.load_state_dict`` takes."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    for index, entries in saved["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    groups = [{**group, "betas": tuple(group["betas"])} if "betas" in group else group
              for group in saved["param_groups"]]
    return {"state": state, "param_groups": groups}
