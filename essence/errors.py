"""The exceptions Essence raises on purpose.

Every error a user can cause (a missing or damaged file, a file of the wrong kind, a tensor of the
wrong shape) is one of these, so callers (the CLI, the ComfyUI nodes, scripts) can catch
``EssenceError`` and show its message, which always says what was wrong and what to do.
"""

from __future__ import annotations

import torch


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


class FaceNotFoundError(EssenceError):
    """No face was found in a photo (callers may fall back, e.g. to a random initialisation)."""


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

    def advised(self, advice: str) -> "DeviceMemoryError":
        """The same error with ``advice`` (the caller's words for what to do) instead of the library's."""
        return DeviceMemoryError(self.what, advice)
