"""The exceptions Essence raises on purpose.

Every error a user can cause (a missing or damaged file, a file of the wrong kind, a tensor of the
wrong shape) is one of these, so callers (the CLI, the ComfyUI nodes, scripts) can catch
``EssenceError`` and show its message, which always says what was wrong and what to do.
"""

from __future__ import annotations

from typing import Any

import torch


__all__ = [
    "EssenceError", "WeightFileError", "MissingWeightsError", "UnsafeFileError", "CorruptFileError",
    "WrongFileKindError", "IncompatibleWeightsError", "DownloadError", "ShapeError", "DirectionFileError",
    "IncompatibleLatentSpaceError", "TrainingCancelled", "ImageInputError", "VideoInputError", "FaceNotFoundError",
    "FaceIndexError", "LatentFileError", "DeviceMemoryError", "EssenceWarning", "require_finite",
]

class EssenceError(Exception):
    """Base class: an error whose message is meant for the user."""


class WeightFileError(EssenceError):
    """A weight file is missing, unreadable, damaged or of the wrong kind."""


class MissingWeightsError(WeightFileError):
    """A required weight file is not present where Essence looks for it."""


class UnsafeFileError(WeightFileError):
    """A file would need full unpickling (which can run code) to load; it was refused unread."""


class CorruptFileError(WeightFileError):
    """A file is truncated or damaged (not a complete archive, checksum mismatch)."""


class WrongFileKindError(WeightFileError):
    """A file is readable but holds something else (e.g. an encoder where a generator was asked)."""


class IncompatibleWeightsError(WeightFileError):
    """A state dict does not fit the architecture (missing, unexpected or mis-shaped tensors)."""


class DownloadError(EssenceError):
    """A download failed (network, server error, checksum); nothing that looks complete was left."""


class ShapeError(EssenceError, ValueError):
    """A tensor given to a model has the wrong shape, size, channel count or dtype."""


class DirectionFileError(EssenceError):
    """A direction or latent file is unreadable, damaged, not what it claims, or holds NaN/inf."""


class IncompatibleLatentSpaceError(EssenceError):
    """A direction or latent belongs to another latent space (rows x width) than the generator's."""


class TrainingCancelled(EssenceError):
    """Training was stopped on request; nothing was saved."""


class ImageInputError(EssenceError, ValueError):
    """An input image is missing, not an image, damaged or truncated, too large, or of an unusable shape."""


class VideoInputError(EssenceError, ValueError):
    """An input video is missing, not a video, damaged, or cannot be written as asked."""


class FaceNotFoundError(EssenceError):
    """No face was found in a photo (callers may fall back, e.g. to a random initialisation)."""


class FaceIndexError(FaceNotFoundError):
    """A photo has faces, but fewer than the face index asks for: an error even where photos without
    a face are skipped, since the photo is not empty and a different face would be a silent swap."""


class LatentFileError(DirectionFileError):
    """A latent file is unreadable, damaged, not an Essence latent file, or holds NaN/inf."""


class DeviceMemoryError(EssenceError, torch.OutOfMemoryError):
    """The device ran out of memory even at the smallest batch.

    The library says what ran out (``what``); what the user can do about it depends on where they
    are (a CLI flag, ComfyUI's 'Unload models', a keyword argument), so the caller adds that with
    ``advised``. Also a ``torch.OutOfMemoryError``, so code that handles device out-of-memory
    recognises it.
    """

    def __init__(self, what: str, advice: str = ""):
        self.what, self.advice = what, advice
        super().__init__(f"out of device memory while {what}." + (f" {advice}" if advice else ""))

    def __reduce__(self):
        # rebuilt from its parts, not from its message: how a Ray worker's error reaches the driver
        return type(self), (self.what, self.advice)

    def advised(self, advice: str) -> "DeviceMemoryError":
        """The same error with ``advice`` (the caller's words for what to do) instead of the library's."""
        return DeviceMemoryError(self.what, advice)


class EssenceWarning(UserWarning):
    """Something is probably wrong but not certainly (e.g. a direction far larger than any trained
    one); the CLI prints it as ``warning: <message>``."""


def require_finite(values: Any, what: str, error: type[EssenceError] = EssenceError, fix: str = "") -> None:
    """Refuse NaN or infinite numbers, naming the input (and, for a batch, the rows that hold them).

    One NaN in a latent, a strength or a weight silently turns every image it touches black and
    every loss it touches into NaN; stopping at the input says where it came from.
    """
    tensor = values.detach() if isinstance(values, torch.Tensor) else torch.as_tensor(values, dtype=torch.float64)
    bad = ~torch.isfinite(tensor)
    if not bool(bad.any()):
        return
    if tensor.ndim == 0:
        where = f" ({tensor.item()})"
    elif tensor.ndim == 1:
        entries = bad.nonzero().flatten().tolist()
        where = " (" + _listed([f"entry {i} = {tensor[i].item()}" for i in entries]) + ")"
    else:
        rows = bad.reshape(tensor.shape[0], -1).any(1).nonzero().flatten().tolist()
        where = f" (row{'s' if len(rows) > 1 else ''} " + _listed([str(r) for r in rows]) + ")"
    raise error(f"NaN or infinite values in {what}{where}." + (f" {fix}" if fix else ""))


def _listed(items: list[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
