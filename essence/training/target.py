"""The target of a training: its pictures read once, and its CLIP embedding computed once per guide.

A target reaches Essence as a path, a PIL picture, a ComfyUI IMAGE [B, H, W, C] in [0, 1], a list of
pictures of one target, or (benchmarks, the reference traces) a bare CLIP embedding. Every front end
turns it into one ``TrainingTarget`` and passes that value down, so training, its start, the
candidates' scores and the metrics read the files once and embed the target once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..errors import EssenceError, require_finite
from ..faces import load_image
from ..networks import ClipGuide, to_unit

TargetLike = Any  # a path, a PIL image, a ComfyUI IMAGE, a list of pictures of one target, or a TrainingTarget
Pictures = Image.Image | list[Image.Image] | torch.Tensor


@dataclass(frozen=True, eq=False)
class TrainingTarget:
    """One target: ``pictures`` as CLIP takes them (None when only its embedding is known), the
    ``files`` they came from (file names, recorded in a direction's metadata), and the unit CLIP
    embedding for each guide it meets, computed on first use."""

    pictures: Pictures | None
    files: tuple[str, ...] = ()
    given_embedding: torch.Tensor | None = None
    _embeddings: dict[ClipGuide, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, target: TargetLike) -> TrainingTarget:
        """The target as given to any front end (files opened as upright RGB pictures; pictures and
        tensors kept, so a tensor keeps CLIP's differentiable path); a ``TrainingTarget`` is itself."""
        if isinstance(target, TrainingTarget):
            return target
        items = target if isinstance(target, (list, tuple)) else [target]
        files = tuple(Path(item).name for item in items if isinstance(item, (str, os.PathLike)))
        return cls(_pictures(target), files)

    @classmethod
    def from_embedding(cls, embedding: torch.Tensor) -> TrainingTarget:
        """A target known only by its CLIP embedding [1, C] or [C] (made unit here): what the
        reference traces and the benchmarks train on. It has no picture to invert or to show."""
        require_finite(embedding, "the target embedding")
        return cls(None, given_embedding=to_unit(embedding.detach().float().reshape(1, -1)))

    @property
    def count(self) -> int:
        """How many pictures of the target there are (0 for an embedding)."""
        if self.pictures is None:
            return 0
        if isinstance(self.pictures, list):
            return len(self.pictures)
        return self.pictures.shape[0] if isinstance(self.pictures, torch.Tensor) and self.pictures.ndim == 4 else 1

    @property
    def shown(self) -> Image.Image | torch.Tensor | None:
        """The first picture (a PIL image or a [1, H, W, C] tensor): the one whose face is inverted
        for the start, measured for target identity and drawn as a direction's thumbnail."""
        if isinstance(self.pictures, list):
            return self.pictures[0]
        if isinstance(self.pictures, torch.Tensor) and self.pictures.ndim == 4:
            return self.pictures[:1]
        return self.pictures

    @property
    def name(self) -> str | None:
        """The first file's stem, the default name of what is trained on it."""
        return Path(self.files[0]).stem if self.files else None

    def describe(self) -> list[str] | str:
        """What a direction's metadata records as its target: the file names, else a count."""
        if self.files:
            return list(self.files)
        return f"{self.count} picture(s)" if self.pictures is not None else "a given CLIP embedding"

    def embedding(self, guide: ClipGuide) -> torch.Tensor:
        """Unit CLIP embedding [1, C] of the target as ``guide`` sees it, computed once per guide.

        Several pictures: the mean of their unit embeddings, renormalised (the official code takes
        one picture; with one, this is exactly its embedding). Computed outside inference mode, so the
        one cached value serves every later use, training's included, whoever asked first.
        """
        if self.given_embedding is not None:
            return self.given_embedding
        if guide not in self._embeddings:
            with torch.inference_mode(False), torch.no_grad():
                embeddings = to_unit(guide.embed_target(self.pictures).float())
            self._embeddings[guide] = to_unit(embeddings.mean(0, keepdim=True))
        return self._embeddings[guide]


def _pictures(target: Any) -> Pictures:
    """Files opened, pictures and tensors as given; a list of pictures flattened into one list."""
    if isinstance(target, (list, tuple)):
        if not target:
            raise EssenceError("the target is an empty list; give at least one picture of the target.")
        pictures = [_pictures(item) for item in target]
        if any(isinstance(p, torch.Tensor) for p in pictures):
            if len(pictures) == 1:
                return pictures[0]
            raise EssenceError("give the target as one batched image tensor or as a list of pictures, not a "
                               "list of tensors.")
        return [p for item in pictures for p in (item if isinstance(item, list) else [item])]
    if isinstance(target, (Image.Image, torch.Tensor)):
        return target
    return load_image(target)
