"""Where models run, and the one place loaded models are kept.

Loading a 1.2 GB e4e file takes seconds; CLI sessions, the demo and ComfyUI graphs ask for the same
model many times, so loaded models are cached by file identity (path, size, modification time) and
device. That cache is the only module-level state in Essence, and ``clear_model_cache`` empties it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

_cache: dict[tuple, object] = {}
_cache_lock = threading.Lock()


def default_device() -> torch.device:
    """CUDA if present, then Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    return default_device() if device in (None, "auto") else torch.device(device)


def _file_identity(path: Path) -> tuple:
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def cached_model(kind: str, path: str | os.PathLike, device: torch.device,
                 load: Callable[[Path, torch.device], T]) -> T:
    """Return the cached model for this file and device, loading it on first use.

    A file replaced on disk (new size or mtime) is loaded again. The lock keeps two threads
    (e.g. two ComfyUI prompts) from loading the same big file twice at once.
    """
    path = Path(path)
    key = (kind, _file_identity(path), str(device))
    with _cache_lock:
        if key not in _cache:
            _cache[key] = load(path, device)
        return _cache[key]  # type: ignore[return-value]


def clear_model_cache() -> None:
    with _cache_lock:
        _cache.clear()
