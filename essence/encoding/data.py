"""The encoder's training pictures: read once as 256 px 8-bit crops, batched the coach's way.

The official dataset reads each picture, resizes it to 256 x 256 (bilinear, PIL), flips it at random
(p 0.5), and normalises it to [-1, 1]. Here the resized 8-bit pictures are kept ([N, 3, 256, 256]
uint8, a quarter of the float memory) and each batch is turned into floats when it is used, which
gives the coach's values exactly: resizing a picture that is already 256 px does nothing, and a flip
commutes with the conversion.

Three sources, all made into ``EncoderData`` here:

* ``picture_data``: pictures as they are (files, PIL, tensors), only resized, as the official dataset
  does (its pictures are aligned faces already);
* ``photo_data``: face photos, each aligned the FFHQ way at 256 px (``faces.align_photos``), the crops
  cached in a folder by the photos' content, so a resumed or repeated run does not align them again;
* ``generated_data``: faces the generator draws from seeded samples at truncation 0.7, so no dataset
  is needed.

The order and the flips depend only on the seed and the step (never on a random state carried from
step to step), so a resumed run sees exactly the pictures an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from ..errors import EssenceError
from ..faces import FaceLandmarker, align_photos, load_image, model_to_pil, pil_to_pixels
from ..latents import sample_latents
from ..networks import INPUT_SIZE, StyleGAN2Generator, render
from ..storage import read_safetensors_header, save_safetensors_atomic

PathLike = str | os.PathLike
PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
GENERATED_TRUNCATION = 0.7


@dataclass(frozen=True)
class EncoderData:
    """Training and held-out pictures, uint8 [N, 3, 256, 256], and what they are (``describe``)."""

    train: torch.Tensor
    heldout: torch.Tensor
    kind: str  # "pictures", "photos" or "generated"
    detail: dict[str, Any]

    def __post_init__(self) -> None:
        for name in ("train", "heldout"):
            pixels = getattr(self, name)
            if pixels.dtype != torch.uint8 or pixels.ndim != 4 or tuple(pixels.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
                raise EssenceError(f"the {name} pictures must be uint8 [N, 3, {INPUT_SIZE}, {INPUT_SIZE}], "
                                   f"got {pixels.dtype} {list(pixels.shape)}.")
        if self.train.shape[0] == 0:
            raise EssenceError("the encoder needs at least one training picture.")

    @property
    def digest(self) -> str:
        """The sha256 of every picture's pixels (training, then held out): what a checkpoint and the
        encoder file record, so a resume refuses other data."""
        sha = hashlib.sha256()
        for pixels in (self.train, self.heldout):
            sha.update(str(list(pixels.shape)).encode())
            sha.update(pixels.contiguous().numpy().tobytes())
        return sha.hexdigest()

    def describe(self) -> dict[str, Any]:
        """The encoder file's ``data`` record: the kind, the counts, the pixels' hash and the details."""
        return {"kind": self.kind, "train": int(self.train.shape[0]), "heldout": int(self.heldout.shape[0]),
                "sha256": self.digest, **self.detail}


def as_inputs(pixels: torch.Tensor, flips: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 [B, 3, 256, 256] -> float32 in [-1, 1] (``ToTensor`` + ``Normalize(0.5, 0.5)``, the same
    arithmetic as ``faces.pil_to_model``), each row flipped left-right where ``flips`` is True."""
    if flips is not None and bool(flips.any()):
        pixels = torch.where(flips[:, None, None, None], pixels.flip(-1), pixels)
    return pixels.float() / 255.0 * 2.0 - 1.0


def step_batch(data: EncoderData, step: int, batch_size: int, shuffle: bool, flip: float, seed: int) -> torch.Tensor:
    """The inputs of global step ``step``: the coach's loader (batches of ``batch_size``, the last
    incomplete one dropped, reshuffled every epoch when ``shuffle``) and its random flips."""
    count = data.train.shape[0]
    per_epoch = count // batch_size
    epoch, position = divmod(step, per_epoch)
    order = (torch.randperm(count, generator=_generator(seed, "order", epoch)) if shuffle
             else torch.arange(count))
    rows = order[position * batch_size:(position + 1) * batch_size]
    flips = torch.rand(batch_size, generator=_generator(seed, "flip", step)) < flip if flip > 0 else None
    return as_inputs(data.train[rows], flips)


def _generator(seed: int, purpose: str, index: int) -> torch.Generator:
    """A CPU generator for one purpose and one epoch or step, independent of every other."""
    digest = hashlib.sha256(f"{seed}:{purpose}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


# ----------------------------------------------------------------------------- the three sources


def resized_pixels(pictures: Sequence[Any]) -> torch.Tensor:
    """Pictures (paths, PIL images, single-image tensors) -> uint8 [N, 3, 256, 256], each resized to
    256 x 256 with PIL's bilinear filter as torchvision's ``Resize((256, 256))`` does."""
    resized = []
    for picture in pictures:
        image = load_image(picture)
        if image.size != (INPUT_SIZE, INPUT_SIZE):
            image = image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR)
        resized.append(image)
    return pil_to_pixels(resized)


def picture_data(train: Sequence[Any], heldout: Sequence[Any], names: Sequence[str] = ()) -> EncoderData:
    """Pictures used as they are (only resized to 256 px): aligned faces, or any test pictures."""
    detail = {"names": list(names)} if names else {}
    return EncoderData(resized_pixels(train), _pixels_or_empty(heldout), "pictures", detail)


def _pixels_or_empty(pictures: Sequence[Any]) -> torch.Tensor:
    if not pictures:
        return torch.empty(0, 3, INPUT_SIZE, INPUT_SIZE, dtype=torch.uint8)
    return resized_pixels(pictures)


def folder_pictures(folder: PathLike) -> list[Path]:
    """The pictures of a folder (not its sub-folders), sorted by name, as the official dataset lists them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EssenceError(f"{folder}: not a folder of pictures.")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES)
    if not files:
        raise EssenceError(f"{folder}: no pictures ({', '.join(PICTURE_SUFFIXES)}) in this folder.")
    return files


def aligned_pixels(photos: Sequence[Any], landmarks: FaceLandmarker | PathLike | None = None) -> torch.Tensor:
    """Face photos -> uint8 [N, 3, 256, 256]: the face of each aligned the FFHQ way (a photo without
    one is refused, naming it)."""
    faces = align_photos(list(photos), INPUT_SIZE, landmarks=landmarks)
    return pil_to_pixels([face.crop for _, face in faces])


def batch_data(pictures: Sequence[Any], heldout: int, *, align: bool,
               landmarks: FaceLandmarker | PathLike | None = None) -> EncoderData:
    """Pictures given together (files, PIL images, single-image tensors, a ComfyUI IMAGE batch): each
    face aligned at 256 px (``align``, kind "photos") or each picture used as it is, resized (kind
    "pictures"); the last ``heldout`` are held out for validation."""
    _check_split(len(pictures), heldout, "the training pictures")
    pixels = aligned_pixels(pictures, landmarks) if align else resized_pixels(pictures)
    split = len(pictures) - heldout
    return EncoderData(pixels[:split].clone(), pixels[split:].clone(), "photos" if align else "pictures",
                       {"aligned": align})


def photo_data(folder: PathLike, heldout: int, *, landmarks: FaceLandmarker | PathLike | None = None,
               cache: PathLike | None = None) -> EncoderData:
    """The face photos of ``folder``, each aligned at 256 px (a photo without a face is refused, naming
    it); the last ``heldout`` (by name) are held out for validation. The crops are cached in
    ``cache`` (a folder) under the hash of the photos' bytes."""
    files = folder_pictures(folder)
    _check_split(len(files), heldout, str(folder))
    files_sha = _files_sha256(files)
    cached = _read_cache(cache, files_sha)
    if cached is None:
        cached = aligned_pixels([str(p) for p in files], landmarks)
        if cache is not None:
            save_safetensors_atomic({"pixels": cached}, {"files_sha256": files_sha},
                                    Path(cache) / f"aligned-{files_sha[:16]}.safetensors")
    split = len(files) - heldout
    detail = {"folder": Path(folder).name, "files_sha256": files_sha, "aligned": True}
    return EncoderData(cached[:split].clone(), cached[split:].clone(), "photos", detail)


def _check_split(count: int, heldout: int, what: str) -> None:
    if heldout < 0 or heldout >= count:
        raise EssenceError(f"{what}: {count} pictures cannot keep {heldout} held out and still train on one; "
                           f"give more pictures or a smaller held-out count.")


def _files_sha256(files: Sequence[Path]) -> str:
    sha = hashlib.sha256()
    for path in files:
        sha.update(path.name.encode() + b"\0")
        sha.update(hashlib.sha256(path.read_bytes()).digest())
    return sha.hexdigest()


def _read_cache(cache: PathLike | None, files_sha: str) -> torch.Tensor | None:
    path = Path(cache) / f"aligned-{files_sha[:16]}.safetensors" if cache is not None else None
    if path is None or not path.is_file():
        return None
    if read_safetensors_header(path).get("__metadata__", {}).get("files_sha256") != files_sha:
        return None
    from safetensors.torch import load_file

    return load_file(str(path))["pixels"]


def generated_data(generator: StyleGAN2Generator, count: int, heldout: int, seed: int = 0,
                   truncation: float = GENERATED_TRUNCATION) -> EncoderData:
    """``count`` training and ``heldout`` held-out faces drawn by ``generator`` (fixed noise) from
    rows of ``sample_latents(generator, count + heldout, seed, truncation)``, as 8-bit pictures
    resized to 256 px, as if saved and read back by the official dataset."""
    if count < 1 or heldout < 0:
        raise EssenceError(f"generated targets need a count of at least 1 and a held-out count of at least 0, "
                           f"got {count} and {heldout}.")
    latents = sample_latents(generator, count + heldout, seed=seed, truncation=truncation).latents
    with torch.no_grad():
        images = render(generator, latents.to(generator.latent_avg.device), what="generated targets")
    pixels = resized_pixels(model_to_pil(images))
    detail = {"count": count, "seed": seed, "truncation": truncation}
    return EncoderData(pixels[:count].clone(), pixels[count:].clone(), "generated", detail)
