"""Reading weight files safely.

Users download checkpoints from strangers. A ``.pt`` file is a pickle, and a pickle can run any
code while it loads, so Essence only ever opens them with ``torch.load(weights_only=True)``, whose
unpickler builds tensors and plain containers and refuses everything else. The one class we add to
its allow-list is ``argparse.Namespace``: rosinality's training script stores its ``args`` that way,
and a Namespace is only a bag of attributes. Everything that goes wrong is turned into one of
Essence's own errors, naming the file.
"""

from __future__ import annotations

import argparse
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ..errors import CorruptFileError, IncompatibleWeightsError, MissingWeightsError, UnsafeFileError, WeightFileError

_SAFE_EXTRA_GLOBALS = [argparse.Namespace]


def _require_file(path: Path) -> None:
    if not path.exists():
        raise MissingWeightsError(f"{path}: no such file.")
    if not path.is_file():
        raise WeightFileError(f"{path}: is not a regular file.")
    if path.stat().st_size == 0:
        raise CorruptFileError(f"{path}: the file is empty (0 bytes). Download it again.")


def load_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load`` that never unpickles code; every failure becomes an ``EssenceError``.

    ``map_location`` defaults to the CPU because research checkpoints often hold CUDA tensors
    (TargetCLIP's ``opt_latents.pt`` does) that would not load on a machine without a GPU.
    """
    path = Path(path)
    _require_file(path)
    refuse_zip_bomb(path)
    try:
        with torch.serialization.safe_globals(_SAFE_EXTRA_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text and "truncated" not in text.lower():
            raise UnsafeFileError(
                f"{path}: refused. Loading it would need full unpickling, which can run code "
                f"hidden in the file, so Essence does not do it. If you trust the file, convert it "
                f"to safetensors in a separate script. Detail: {_unpickler_reason(text)}"
            ) from None
        raise CorruptFileError(f"{path}: not a readable PyTorch file ({_unpickler_reason(text)}). "
                               f"It may be truncated; download it again.") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CorruptFileError(
            f"{path}: not a complete PyTorch file ({_first_line(str(exc)) or type(exc).__name__}). "
            f"It is probably truncated or damaged; download it again."
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch's unpickler lets IndexError, KeyError, ... out of damaged files
        raise CorruptFileError(
            f"{path}: not a readable PyTorch file ({type(exc).__name__}: {_first_line(str(exc))}). "
            f"It is damaged or not a checkpoint; download it again."
        ) from None


MAX_UNPACKED_EXTRA_BYTES = 64 * 2**20


def refuse_zip_bomb(path: Path) -> None:
    """Refuse a zip whose members would unpack to far more than the file holds.

    ``torch.save`` stores members uncompressed, so a real checkpoint unpacks to about its own size;
    a small file declaring gigabytes of compressed data would only fill memory. Files that are not
    zips (legacy pickles) are left to ``torch.load``.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        return
    size = path.stat().st_size
    if declared > 2 * size + MAX_UNPACKED_EXTRA_BYTES:
        raise UnsafeFileError(f"{path}: refused. Its zip members unpack to {declared:,} bytes from a "
                              f"{size:,}-byte file (a zip bomb?); PyTorch never compresses checkpoints.")


def refuse_torchscript_load_code(path: str | os.PathLike) -> None:
    """Refuse a TorchScript archive whose code defines ``__setstate__``.

    ``torch.jit.load`` runs an object's TorchScript ``__setstate__`` while loading, and TorchScript
    can open, create and write files (``torch.from_file(..., shared=True)``), so such an archive could
    act on the machine before Essence sees a tensor. Model releases (OpenAI's CLIP files are traced
    modules) define no ``__setstate__``; an archive that does is refused unread.
    """
    path = Path(path)
    refuse_zip_bomb(path)
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".py"):  # TorchScript source, wherever it sits
                    if b"__setstate__" in archive.read(info):
                        raise UnsafeFileError(
                            f"{path}: refused. This TorchScript archive defines __setstate__ "
                            f"({info.filename}), code that torch.jit.load would run while loading it; "
                            f"released CLIP models do not. Use the official file.")
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as exc:
        raise CorruptFileError(f"{path}: damaged TorchScript archive ({exc}). Download it again.") from None


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """True for a TorchScript zip (OpenAI's CLIP releases), which ``torch.load`` cannot read."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(name.endswith("constants.pkl") for name in names) and any(
        "/code/" in name for name in names
    )


def require_mapping(obj: Any, path: Path | str, what: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise WeightFileError(f"{path}: expected {what} (a dictionary of tensors), "
                              f"found a {type(obj).__name__}.")
    return obj


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _unpickler_reason(text: str) -> str:
    """The useful line of torch's long weights-only message (e.g. 'Unsupported global: ...')."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for marker in ("Unsupported global", "Unsupported operand", "Trying to", "truncated"):
        for line in lines:
            if marker in line:
                return line
    return lines[-1] if lines else "unknown reason"


def describe_contents(obj: Mapping[str, Any]) -> str:
    """A short human description of a checkpoint's top level, for error messages."""
    keys = list(obj.keys())
    if "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        prefixes = sorted({k.split(".")[0] for k in obj["state_dict"]})
        return f"it holds a 'state_dict' with parts {prefixes}"
    if any(str(k).startswith("visual.") for k in keys):
        return "it looks like a CLIP model"
    shown = ", ".join(repr(k) for k in keys[:6]) + (" ..." if len(keys) > 6 else "")
    return f"its top-level keys are {shown}"


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what did not fit."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mis_shaped = [f"{k} (file {list(state[k].shape)}, model {list(expected[k].shape)})"
                  for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or mis_shaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
            if items:
                parts.append(f"{len(items)} {label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}")
        raise IncompatibleWeightsError(f"{source}: the {what} weights do not fit the architecture "
                                       f"({'; '.join(parts)}). The file may be damaged or from another model.")
    module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()},
                           strict=True, assign=True)


def build_loaded(model_cls: Callable[[Any], torch.nn.Module], config: Any, state: Mapping[str, torch.Tensor],
                 source: str, what: str):
    """``model_cls(config)`` filled strictly from ``state``, without allocating random weights first
    (built on the meta device; the loaded tensors are assigned in place)."""
    with torch.device("meta"):
        model = model_cls(config)
    load_state_strict(model, state, source, what)
    return model
