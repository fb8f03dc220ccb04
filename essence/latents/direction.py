"""The essence direction: one W+ offset, and the self-describing file users share.

A direction file is a safetensors file holding ``direction`` [1, n_latent, style_dim] float32 (and
optionally ``thumbnail``, the target as uint8 [H, W, 3]) plus string metadata saying what it is and
how it was made: format and version, the latent space and a fingerprint of the generator it was
trained on, the CLIP model, the target, the initialisation, every hyper-parameter, the final loss
terms, a recommended strength range, when and with which Essence version it was made, and the
licence note of the generator when it is one the manifest knows (NVIDIA's FFHQ generator). Files are
written atomically and validated on load, so a shared file is either usable or refused with a reason.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import DirectionFileError, EssenceError, EssenceWarning, IncompatibleLatentSpaceError
from ..faces import load_image
from ..storage import (atomic_write, encode_metadata, load_npy_checked, read_typed_file, save_safetensors_atomic,
                       save_safetensors_numbered, spec_for_generator, utc_now)
from ..version import __version__
from .latent_set import holds_latents

FORMAT_NAME = "essence.direction"
FORMAT_VERSION = 1
DEFAULT_STRENGTH_RANGE = (0.5, 1.2)  # the paper's usual range; its evaluation used 1.2
# ``auto_strength``: the single strength measured for this direction (``essence.training.metrics``), an object
# {"value", "basis", "threshold", ...}; files without it (older ones, imports, mixes) read as before
# and "auto" falls back to FALLBACK_STRENGTH, saying so.
AUTO_STRENGTH_KEY = "auto_strength"
AUTO = "auto"
FALLBACK_STRENGTH = 1.0
FFHQ_RESOLUTION = 1024
# The 19 directions published with TargetCLIP have a root-mean-square of 0.067-0.139 per W+ value
# (norms 6.4-13.4 over 18 x 512); W+ latents themselves are about 0.5. A direction above this RMS
# (70 times the largest published one) moves every face far outside what the generator has seen.
IMPLAUSIBLE_RMS = 10.0
LICENCE_NOTE = ("Trained against the StyleGAN2 FFHQ generator (NVIDIA Source Code License-NC): "
                "use for non-commercial purposes only.")


@dataclass(frozen=True)
class LatentSpace:
    """Which W+ space a direction lives in; directions only transfer between equal spaces."""

    n_latent: int
    style_dim: int
    resolution: int | None = None

    def describe(self) -> str:
        res = f"{self.resolution} px, " if self.resolution else ""
        return f"{res}{self.n_latent} x {self.style_dim} W+"

    @classmethod
    def of_generator(cls, generator: Any) -> "LatentSpace":
        return cls(generator.n_latent, generator.style_dim, generator.size)


@dataclass
class Direction:
    """A W+ direction [1, n_latent, style_dim] with its metadata (plain JSON-able values)."""

    tensor: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    thumbnail: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.tensor = _validated_tensor(self.tensor, "direction")
        _warn_if_implausible(self.tensor, self.name)

    @property
    def space(self) -> LatentSpace:
        _, n, d = self.tensor.shape
        space = self.meta.get("latent_space")
        resolution = space.get("resolution") if isinstance(space, dict) else None
        return LatentSpace(n, d, resolution if isinstance(resolution, int) else None)

    @property
    def name(self) -> str:
        return str(self.meta.get("name", "direction"))

    @property
    def auto_strength(self) -> float | None:
        """The recommended strength measured for this direction, or None when the file has none."""
        record = self.meta.get(AUTO_STRENGTH_KEY)
        value = record.get("value") if isinstance(record, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return None

    def with_auto_strength(self, record: Mapping[str, Any]) -> "Direction":
        """A copy whose metadata records ``record`` (``StrengthRecommendation.metadata()``) as the
        recommended strength; the tensor and the thumbnail are shared."""
        return Direction(self.tensor, {**self.meta, AUTO_STRENGTH_KEY: dict(record)}, self.thumbnail)

    def resolve_strength(self, strength: float | str) -> tuple[float, str | None]:
        """A number as it is; ``"auto"``: the recommended strength, or 1.0 with a note saying the
        file has none (measure it with ``essence evaluate --recommend`` or the Metrics node)."""
        if isinstance(strength, str):
            if strength.strip().lower() != AUTO:
                raise EssenceError(f"strength must be a number or {AUTO!r}, got {strength!r}.")
            value = self.auto_strength
            if value is not None:
                return value, None
            return FALLBACK_STRENGTH, (f"{self.name!r} has no recommended strength; using {FALLBACK_STRENGTH:g}. "
                                       f"Measure one with the evaluate command (--recommend) or the Essence Metrics node.")
        return float(strength), None

    def check_fits(self, generator: Any, what: str | None = None) -> None:
        """Refuse to apply a direction made for another latent space, naming both spaces."""
        mine, theirs = self.space, LatentSpace.of_generator(generator)
        if (mine.n_latent, mine.style_dim) != (theirs.n_latent, theirs.style_dim):
            raise IncompatibleLatentSpaceError(
                f"{what or self.name!r} is a direction for a {mine.describe()} latent space, but the "
                f"generator is {theirs.describe()}. Use a direction trained for this generator.")

    # -- files

    def save(self, path: str | os.PathLike) -> Path:
        """Write the direction file atomically (a cancelled or failed save leaves no file)."""
        return save_safetensors_atomic(*self._contents(), path)

    def save_numbered(self, folder: str | os.PathLike, stem: str) -> Path:
        """Write the direction as the next free ``<stem>_00001.safetensors`` in ``folder``, never
        replacing a file (``essence.storage.write_numbered``); its path."""
        return save_safetensors_numbered(*self._contents(), folder, stem)

    def _contents(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {"direction": self.tensor.detach().float().cpu().contiguous()}
        if self.thumbnail is not None:
            tensors["thumbnail"] = self.thumbnail.to(torch.uint8).cpu().contiguous()
        return tensors, encode_metadata(FORMAT_NAME, FORMAT_VERSION, self.meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Direction":
        """Read a direction file (``.safetensors``) or an official TargetCLIP ``.npy``."""
        path = Path(path)
        if path.suffix.lower() == ".npy":
            return cls.from_official_npy(path)
        tensors, meta = read_typed_file(path, FORMAT_NAME, FORMAT_VERSION, "direction", DirectionFileError,
                                        "direction file")
        try:
            direction = cls(tensors["direction"], meta, tensors.get("thumbnail"))
        except DirectionFileError as exc:
            raise DirectionFileError(f"{path}: {exc}") from None
        space = meta.get("latent_space")
        if isinstance(space, dict) and (space.get("n_latent"), space.get("style_dim")) != tuple(direction.tensor.shape[1:]):
            raise DirectionFileError(f"{path}: metadata says {space} but the tensor is {list(direction.tensor.shape)}.")
        return direction

    @classmethod
    def from_official_npy(cls, path: str | os.PathLike, name: str | None = None) -> "Direction":
        """Import a direction published with TargetCLIP (float32 [1, 18, 512] ``.npy``)."""
        path = Path(path)
        array = load_npy_checked(path, DirectionFileError)
        if holds_latents(array.shape):
            raise DirectionFileError(
                f"{path}: holds {array.shape[0]} W+ latents {list(array.shape)}, not a direction "
                f"([1, 18, 512]); TargetCLIP's w_plus.npy is its source faces. Load it as latents "
                f"(essence.load_latents, the --latents/--sources options, or import-official).")
        try:
            tensor = torch.from_numpy(array)
            if tensor.ndim == 2:
                tensor = tensor[None]
            tensor = _validated_tensor(tensor, "direction")  # before reading its shape below
            meta = {
                "name": name or path.stem,
                "source": f"official TargetCLIP direction ({path.name}), imported",
                "latent_space": {"n_latent": tensor.shape[-2], "style_dim": tensor.shape[-1],
                                 "resolution": FFHQ_RESOLUTION if tensor.shape[-2] == 18 else None},
                "generator": "stylegan2-ffhq-config-f (as published with TargetCLIP)",
                "clip_model": "ViT-B/32",
                "recommended_strength": list(DEFAULT_STRENGTH_RANGE),
                "licence": LICENCE_NOTE,  # published for the FFHQ generator; its creation date is unknown
            }
            return cls(tensor, meta)
        except DirectionFileError as exc:
            raise DirectionFileError(f"{path}: {exc}") from None

    def to_npy(self, path: str | os.PathLike) -> Path:
        """Export as TargetCLIP's ``.npy`` layout (float32 [1, n_latent, style_dim])."""
        path = Path(path)

        with atomic_write(path) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, self.tensor.detach().cpu().numpy().astype(np.float32))
        return path


def _validated_tensor(tensor: Any, what: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise DirectionFileError(f"the {what} must be a tensor, got {type(tensor).__name__}.")
    if not tensor.is_floating_point():
        raise DirectionFileError(f"the {what} must hold floating-point numbers, got {tensor.dtype}.")
    if tensor.ndim != 3 or tensor.shape[0] != 1 or 0 in tensor.shape:
        raise DirectionFileError(f"the {what} must have shape [1, n_latent, style_dim] "
                                 f"(e.g. [1, 18, 512]), got {list(tensor.shape)}.")
    converted = tensor.detach().float()  # Essence computes in float32: a float64 1e300 becomes inf here
    if not torch.isfinite(converted).all():
        if torch.isfinite(tensor).all():
            raise DirectionFileError(f"the {what} holds {str(tensor.dtype).removeprefix('torch.')} values beyond "
                                     f"float32's range (about 3.4e38); it cannot be applied.")
        raise DirectionFileError(f"the {what} contains NaN or infinite values; it cannot be applied.")
    return converted


def _warn_if_implausible(tensor: torch.Tensor, name: str) -> None:
    """Warn about a direction far larger than any trained one (a damaged file, a runaway mix)."""
    rms = float(tensor.double().square().mean().sqrt())  # float64: 1e30 squared overflows float32
    if rms > IMPLAUSIBLE_RMS:
        warnings.warn(EssenceWarning(
            f"direction {name!r} is implausibly large: {rms:.3g} root-mean-square per W+ value (norm "
            f"{float(tensor.double().norm()):.3g}), where trained directions are about 0.07-0.14 and anything "
            f"above {IMPLAUSIBLE_RMS:g} pushes faces far outside the generator's range. Check the file, the mix "
            f"weights or the training settings."), stacklevel=4)


def target_thumbnail(image: Any, size: int = 128) -> torch.Tensor:
    """A picture (PIL, path or one-image ComfyUI tensor) as the uint8 [h, w, 3] thumbnail a direction
    file carries (longest side ``size``), so a shared file shows what it was trained on."""
    thumb = load_image(image)
    thumb.thumbnail((size, size))
    return torch.from_numpy(np.asarray(thumb).copy())


def licence_note(generator_fingerprint: str | None, latent_space: Mapping[str, Any] | None = None) -> str | None:
    """The licence note a direction trained with this generator carries: NVIDIA's FFHQ note when the
    generator is the manifest's FFHQ generator (``weights.spec_for_generator``), none otherwise (a
    generator of the user's own, or a test model, is not under NVIDIA's licence)."""
    return LICENCE_NOTE if spec_for_generator(generator_fingerprint, latent_space) is not None else None


def direction_metadata(**fields: Any) -> dict[str, Any]:
    """Metadata common to every direction Essence creates (time, version, the generator's licence
    note when it has one) plus ``fields``."""
    base: dict[str, Any] = {"created": utc_now(), "essence_version": __version__,
                            "recommended_strength": list(DEFAULT_STRENGTH_RANGE)}
    note = licence_note(fields.get("generator_fingerprint"), fields.get("latent_space"))
    if note:
        base["licence"] = note
    base.update(fields)
    return base


def load_direction(path: str | os.PathLike) -> Direction:
    return Direction.load(path)

