"""The custom socket types Essence nodes exchange, and the latent batch and face alignment that
travel between them.

ComfyUI matches sockets by type name only, so every name is prefixed (``ESSENCE_...``) to keep the
pack's sockets from connecting to other StyleGAN packs whose objects look alike but are not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..essence.align import CropTransform

GENERATOR = "ESSENCE_GENERATOR"   # essence.StyleGAN2Generator
ENCODER = "ESSENCE_ENCODER"       # essence.E4EEncoder
GUIDE = "ESSENCE_GUIDE"           # essence.ClipGuide
LATENT = "ESSENCE_LATENT"         # EssenceLatent (below)
DIRECTION = "ESSENCE_DIRECTION"   # essence.Direction
LANDMARKS = "ESSENCE_LANDMARKS"   # essence.FaceLandmarker (dlib detector + 68-point predictor)
ALIGNMENT = "ESSENCE_ALIGNMENT"   # EssenceAlignment (below)

CUSTOM_TYPES = (GENERATOR, ENCODER, GUIDE, LATENT, DIRECTION, LANDMARKS, ALIGNMENT)


@dataclass(frozen=True)
class EssenceLatent:
    """A batch of W+ latents with one provenance entry per row.

    It holds what an Essence latent file holds (``essence/latents.py``): ``tensor`` [N, n_latent,
    style_dim] float32 on the CPU (small, and safe to keep in ComfyUI's output cache); ``sources``,
    one JSON-able dict per row saying where it came from (``{"kind": "sample", "seed": 7, "row": 0,
    "truncation": 0.7}``), with an ``edits`` list once directions were applied; and ``meta`` for
    the whole batch (``latent_space``, ``generator`` {"fingerprint", "size"}). Nodes never modify
    one in place: ComfyUI reuses cached outputs across prompts.
    """

    tensor: torch.Tensor
    sources: tuple[dict[str, Any], ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tensor.ndim != 3 or self.tensor.shape[0] < 1:
            raise ValueError(f"latents must be W+ [count, n_latent, style_dim], got {list(self.tensor.shape)}.")
        if self.sources and len(self.sources) != self.tensor.shape[0]:
            raise ValueError(f"{len(self.sources)} source entries for {self.tensor.shape[0]} latents.")

    @property
    def count(self) -> int:
        return int(self.tensor.shape[0])

    @classmethod
    def create(cls, tensor: torch.Tensor, sources: list[dict[str, Any]], meta: dict[str, Any]) -> "EssenceLatent":
        """Copy ``tensor`` to a CPU float32 tensor owned by this batch, with copies of the notes.

        The copy is made outside inference mode, so later nodes may use it with autograd (a tensor
        created under ComfyUI's inference mode never can).
        """
        with torch.inference_mode(False):
            owned = tensor.detach().to("cpu", torch.float32).clone()
        return cls(owned, tuple(dict(s) for s in sources), dict(meta))

    def edited(self, tensor: torch.Tensor, edit: dict[str, Any]) -> "EssenceLatent":
        """A new batch with ``tensor`` as its rows and ``edit`` appended to every row's ``edits``."""
        sources = self.sources or tuple({"kind": "unknown", "row": i} for i in range(self.count))
        return EssenceLatent.create(tensor, [{**s, "edits": [*s.get("edits", []), dict(edit)]} for s in sources],
                                    self.meta)


@dataclass(frozen=True)
class FacePlacement:
    """Where one aligned face came from: ``transform`` maps its crop into the photo (and knows the
    photo's original size), ``photo_index`` is the photo's place in the aligned IMAGE batch,
    ``face_index`` the face's rank by size in that photo (0 = largest)."""

    transform: CropTransform
    photo_index: int
    face_index: int
    photo_sha256: str

    @property
    def photo_size(self) -> tuple[int, int]:
        """(width, height) of the photo the face was aligned from."""
        return self.transform.photo_size


@dataclass(frozen=True)
class EssenceAlignment:
    """What Paste Back needs to put edited faces back into their photos.

    ``faces`` has one entry per aligned image (in the order of the aligned IMAGE batch, and of the
    latents Invert Face makes from it); ``photo_count`` is the size of the photo batch that was
    aligned, which may hold more photos than faces when photos without a face were skipped.
    """

    faces: tuple[FacePlacement, ...]
    photo_count: int

    def __post_init__(self) -> None:
        if not self.faces:
            raise ValueError("an alignment needs at least one face.")
        if any(not 0 <= f.photo_index < self.photo_count for f in self.faces):
            raise ValueError(f"face photo indices must lie in 0..{self.photo_count - 1}.")

    def __len__(self) -> int:
        return len(self.faces)
