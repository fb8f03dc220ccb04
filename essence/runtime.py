"""Where models run, and the one place loaded models are kept.

Loading a 1.2 GB e4e file takes seconds; CLI sessions and the demo ask for the same model many
times, so loaded models are cached by file identity (path, size, modification time) and device.
This is Essence's one model cache, and ``clear_model_cache`` empties it. (ComfyUI's loader nodes
bypass it: there, ComfyUI's own node cache and loaded-model list hold the models.)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Sequence, TypeVar

import torch

from .errors import DeviceMemoryError, EssenceError

T = TypeVar("T")

__all__ = ["default_device", "resolve_device", "describe_device", "unused_gpu_reason", "gpu_hardware", "cached_model",
           "clear_model_cache", "cached_models", "is_out_of_memory", "release_device_memory", "run_in_chunks_on_oom",
           "retry_smaller_on_oom", "passes_fitting_memory", "backward_in_slices"]

_cache: dict[tuple, object] = {}
_cache_lock = threading.Lock()


def default_device() -> torch.device:
    """CUDA if present, then Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device (``"auto"`` or None: ``default_device``), refused with an
    ``EssenceError`` saying why when this machine cannot run on it (rather than failing later, deep
    inside the first model that moves there)."""
    if device in (None, "auto"):
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise EssenceError(f"{device!r} is not a device: use cpu, cuda, cuda:1, mps or auto.") from None
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise EssenceError(f"cannot run on {device}: Essence runs on cpu, cuda (cuda:1, ...) or mps.")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            why = unused_gpu_reason() or "this machine has no GPU that PyTorch can see"
            raise EssenceError(f"cannot run on {device}: {why}. Use --device cpu (or auto).")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise EssenceError(f"cannot run on {device}: this machine has {torch.cuda.device_count()} CUDA "
                               f"device(s), numbered from 0.")
    if resolved.type == "mps" and not _mps_available():
        raise EssenceError(f"cannot run on {device}: Apple's MPS is not available to this PyTorch.")
    return resolved


def describe_device(device: str | torch.device, dtype: torch.dtype = torch.float32, chosen_by: str = "") -> str:
    """Where work runs, in one line: ``cuda:0 (NVIDIA H200), float32``; on the CPU of a machine that
    has a GPU, also why the GPU is not used (``chosen_by`` names what asked for the CPU, e.g.
    ``--device cpu``), since work silently landing on the CPU is the slowest surprise there is."""
    device = torch.device(device)
    kind = str(dtype).removeprefix("torch.")
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)}), {kind}"
    if device.type != "cpu":
        return f"{device}, {kind}"
    reason = unused_gpu_reason(chosen_by)
    return f"cpu, {kind}" + (f" (not the GPU: {reason})" if reason else "")


def unused_gpu_reason(chosen_by: str = "") -> str | None:
    """Why this machine's GPU is not what work runs on, when it has one; None when it has none."""
    if torch.cuda.is_available() or _mps_available():
        return f"{chosen_by} asked for the CPU" if chosen_by else "the CPU was asked for"
    hardware = gpu_hardware()
    if hardware is None:
        return None
    if torch.version.cuda is None and torch.version.hip is None:
        return (f"this PyTorch ({torch.__version__}) is built without GPU support, though the machine has "
                f"{hardware}; install a CUDA (or ROCm) build of PyTorch to use it")
    hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (f"PyTorch {torch.__version__} cannot use the machine's {hardware.removeprefix('an ')}: "
            + (f"CUDA_VISIBLE_DEVICES={hidden!r} hides it" if hidden is not None else
               "its driver may be older than this PyTorch needs (CUDA "
               f"{torch.version.cuda or torch.version.hip}); `nvidia-smi` shows the driver's version"))


def gpu_hardware() -> str | None:
    """A GPU the operating system knows of, whatever PyTorch can do with it ("an NVIDIA GPU")."""
    nvidia = Path("/proc/driver/nvidia/gpus")
    if (nvidia.is_dir() and any(nvidia.iterdir())) or Path("/dev/nvidia0").exists():
        return "an NVIDIA GPU"
    if Path("/dev/kfd").exists():
        return "an AMD GPU"
    return None


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


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


def cached_models() -> list[object]:
    """Every model the cache holds now (to check that a host's models are not kept here)."""
    with _cache_lock:
        return list(_cache.values())


# ----------------------------------------------------------------------------- out of memory

_OOM_TEXTS = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA's ``torch.OutOfMemoryError`` and for the plain ``RuntimeError``s other backends
    raise when an allocation fails (MPS "out of memory", CPU "DefaultCPUAllocator: can't allocate")."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc).lower() for text in _OOM_TEXTS)


def release_device_memory() -> None:
    """Give cached device memory back after an out-of-memory error (a no-op on the CPU)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def run_in_chunks_on_oom(fn: Callable[[torch.Tensor], T], items: torch.Tensor, batch_size: int,
                         what: str) -> list[T]:
    """``fn`` on ``items`` in chunks of ``batch_size`` rows; the outputs, in order.

    When a chunk runs out of device memory, memory is released and the same rows are retried in
    half as many per chunk (and the rest continue at that size), down to one row; only then is it
    a ``DeviceMemoryError`` saying what ran out (the caller adds what its user can do). ``fn`` must
    treat rows independently (inference: every batched path here does), so the split changes
    nothing in the result. This is the only retry layer: ``fn`` itself must not retry.
    """
    if batch_size < 1:
        raise EssenceError(f"batch size must be at least 1, got {batch_size}.")
    outputs: list[T] = []
    start, size = 0, batch_size
    while start < len(items):
        chunk = items[start:start + size]
        failed = False
        try:
            outputs.append(fn(chunk))
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            if len(chunk) <= 1:
                raise DeviceMemoryError(f"{what}, even one at a time") from exc
            failed = True  # retried below, outside the handler, so the failed chunk's tensors are freed
        if failed:
            release_device_memory()
            size = max(1, len(chunk) // 2)
            continue
        start += len(chunk)
    return outputs


def retry_smaller_on_oom(run: Callable[[int], T], size: int, what: str,
                         release: Callable[[], None] = release_device_memory,
                         on_retry: Callable[[int], None] | None = None) -> T:
    """``run(size)``; on device out-of-memory, ``release`` memory and retry with half the size.

    For work whose result does not depend on ``size`` (a batch or chunk size) and that does not
    retry inside (one retry layer, never nested). ``on_retry`` hears each new size. At size 1 it
    is a ``DeviceMemoryError`` saying what ran out (the caller adds what its user can do).
    """
    while True:
        try:
            return run(size)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            if size <= 1:
                raise DeviceMemoryError(f"{what}, even one at a time") from exc
        # outside the handler, so the failed attempt's tensors are already freed
        release()
        size = max(1, size // 2)
        if on_retry is not None:
            on_retry(size)


def passes_fitting_memory(attempt: Callable[[int | None], T], rows: int, chunk_size: int | None, what: str,
                          faces: str, *, fit: bool = True, smallest_advice: str = "",
                          release: Callable[[], None] = release_device_memory,
                          on_retry: Callable[[int], None] | None = None) -> T:
    """``attempt(chunk_size)``: training whose passes render ``rows`` faces, at most ``chunk_size`` of
    them at a time (None: all in one pass), with a result that does not depend on the chunk size
    (``backward_in_slices``). Every trainer sizes its passes this way, so a small card gets the same
    result, later, and every user hears the same words when it cannot.

    On device out-of-memory, with ``fit``, memory is released and the attempt starts again with half
    as many faces a pass, down to one (``retry_smaller_on_oom``; ``on_retry`` hears each new size).
    Otherwise a ``DeviceMemoryError``: "``what`` (``faces``, N rendered per pass)", advising a lower
    ``chunk_size``, or ``smallest_advice`` at one face a pass.
    """
    def once(per_pass: int) -> T:
        try:
            return attempt(per_pass if per_pass < rows else None)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            if not fit:  # (retry_smaller_on_oom releases between attempts)
                release()
            advice = (f"Lower chunk_size (it is {per_pass}): the same result with less memory." if per_pass > 1
                      else smallest_advice)
            raise DeviceMemoryError(f"{what} ({faces}, {per_pass} rendered per pass)", advice) from exc

    first = min(chunk_size or rows, rows)
    if not fit:
        return once(first)
    return retry_smaller_on_oom(once, first, f"{what} ({faces})", release=release, on_retry=on_retry)



def backward_in_slices(outputs: Callable[[int, int], torch.Tensor], slices: Sequence[tuple[int, int]],
                       loss: Callable[[torch.Tensor], T], total: Callable[[T], torch.Tensor]) -> T:
    """``loss`` of every row of ``outputs`` together, with the gradient of ``total(loss(...))``
    accumulated into whatever ``outputs(start, stop)`` is computed from, while holding the autograd
    graph of one slice of rows at a time: the same gradient as one pass, in the memory of one slice.

    Why by hand: activation checkpointing (``torch.utils.checkpoint``) keeps every slice's output
    for the backward pass, and a loss over all rows together (the consistency of a source with every
    other) cannot be split into per-slice losses. So: every row without autograd, the loss and its
    gradient with respect to those rows (small), then each slice again with autograd, back-propagating
    its part of that gradient. ``slices`` cover ``0 .. rows`` in order.
    """
    with torch.no_grad():
        rows = torch.cat([outputs(start, stop) for start, stop in slices])
    rows.requires_grad_(True)
    result = loss(rows)
    total(result).backward()
    for start, stop in slices:
        outputs(start, stop).backward(rows.grad[start:stop])
    return result
