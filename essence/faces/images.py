"""Turning whatever a user hands over into one kind of image: 8-bit RGB, upright, in memory.

Users give photos as files (JPEG from phones with an EXIF rotation, PNG with transparency, 16-bit
scans, palette GIFs, CMYK print files), as PIL images, or as ComfyUI IMAGE tensors ([B, H, W, C]
float32 in 0..1). Face detection, alignment and the encoder must see the same pixels whatever the
wrapping, so every input goes through ``load_photo`` / ``to_rgb`` here and nowhere else:

- EXIF orientation is applied (a phone photo stored sideways is turned upright), so landmarks and
  crops refer to the picture as people see it.
- 16-bit modes (``I;16*``, ``I``) are scaled to 8 bits (65535 -> 255); Pillow's own conversion clips
  them instead, which turns most 16-bit photos white.
- Transparency is composited over a background, white by default (how viewers and web pages show
  such images). A fully opaque RGBA image gives exactly its RGB pixels.
- Palette, greyscale, bilevel, CMYK, YCbCr, LAB and HSV images are converted to RGB.
- Huge photos: above ``MAX_PIXELS`` the file is refused with a clear error (a decompression bomb, or
  a scan that needs downscaling first). Below it, photos larger than ``WORK_PIXELS`` are reduced by
  an integer factor; JPEGs are then *decoded* at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), so
  a 20000 x 20000 JPEG never exists in memory at full size. Other formats are decoded once and
  reduced at once. ``Photo.scale`` records the factor so coordinates map back to the original.
- A missing, truncated or non-image file is an ``ImageInputError`` naming the file.

This module also converts between PIL images, ComfyUI IMAGE tensors and the models' [-1, 1]
tensors, so those conventions live in one place.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, JpegImagePlugin

from ..errors import EssenceError, ImageInputError

MAX_PIXELS = 1 << 30        # ~1.07 gigapixels (32768 x 32768): above this a file is refused
WORK_PIXELS = 64 * 2**20    # ~67 megapixels: larger photos are reduced by an integer factor
# A picture decoded whole (every format but JPEG, which libjpeg reads at 1/2, 1/4 or 1/8 scale) needs
# 3-4 bytes per pixel at once: above this (~134 megapixels, about 0.5 GB) it is refused before decoding.
FULL_DECODE_PIXELS = 2 * WORK_PIXELS
BACKGROUND = (255, 255, 255)  # what transparent pixels become

PathLike = str | os.PathLike
ImageSource = Any  # a path, a PIL image, a numpy array or a torch tensor (see ``load_photos``)

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
_open_lock = threading.Lock()


@dataclass
class Photo:
    """One input photo, normalised: ``image`` is RGB, upright, at most ``WORK_PIXELS`` large.

    ``size`` is the original (upright) size and ``scale`` the number of original pixels per pixel
    of ``image`` (1 unless the photo was reduced), so a point (x, y) in ``image`` is
    ((x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5) in the original, in pixel-centre coordinates.
    ``sha256`` identifies the content (pixels, size and scale), whatever wrapping it came in.
    """

    image: Image.Image
    size: tuple[int, int]
    scale: int
    name: str
    sha256: str
    file_sha256: str | None = None

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """Pixel-centre points in ``image`` -> pixel-centre points in the original photo."""
        return (np.asarray(points, dtype=np.float64) + 0.5) * self.scale - 0.5

    def from_original(self, points: np.ndarray) -> np.ndarray:
        """Pixel-centre points in the original photo -> pixel-centre points in ``image``."""
        return (np.asarray(points, dtype=np.float64) + 0.5) / self.scale - 0.5

    def describe(self) -> str:
        w, h = self.size
        reduced = f", reduced 1/{self.scale}" if self.scale > 1 else ""
        return f"{self.name} ({w}x{h}{reduced})"


# ----------------------------------------------------------------------------- entry points


def load_image(source: ImageSource, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Any single image input -> an upright RGB PIL image at full size (no reduction)."""
    photos = load_photos(source, background=background, work_pixels=MAX_PIXELS)
    if len(photos) != 1:
        raise ImageInputError(f"expected one image, got a batch of {len(photos)}.")
    return photos[0].image


def load_photo(source: ImageSource, *, background: tuple[int, int, int] = BACKGROUND,
               work_pixels: int = WORK_PIXELS, max_pixels: int = MAX_PIXELS) -> Photo:
    """One input (path, PIL image, array or single-image tensor) -> a normalised ``Photo``."""
    photos = load_photos(source, background=background, work_pixels=work_pixels, max_pixels=max_pixels)
    if len(photos) != 1:
        raise ImageInputError(f"expected one image, got a batch of {len(photos)}; use load_photos.")
    return photos[0]


def load_photos(sources: ImageSource | Sequence[ImageSource], *,
                background: tuple[int, int, int] = BACKGROUND, work_pixels: int = WORK_PIXELS,
                max_pixels: int = MAX_PIXELS) -> list[Photo]:
    """Every photo in ``sources``, normalised, in order.

    Accepted: a path (``str``/``PathLike``), a PIL image, a numpy array ([H, W], [H, W, C]; uint8,
    uint16 or float in 0..1), a ComfyUI IMAGE tensor ([B, H, W, C] or [H, W, C], float in 0..1,
    C = 1, 3 or 4; each batch item is one photo), or a list/tuple of any of these.
    """
    items = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    photos: list[Photo] = []
    for item in items:
        photos += _load_any(item, background, work_pixels, max_pixels)
    return photos


def scikit_image_picture(name: str) -> Path:
    """A sample picture bundled in scikit-image's wheel (``astronaut.png``, ``chelsea.png``), read as a
    file without importing scikit-image: public-domain pictures the demo, the benchmark and the tests
    share, so none of them ships pictures of its own."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise EssenceError(f"{name} is one of scikit-image's sample pictures, and scikit-image is not installed: "
                           f"pip install scikit-image, or give a picture of your own.")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    if not path.is_file():
        raise EssenceError(f"{path} is missing from the installed scikit-image; give a picture of your own.")
    return path


def _load_any(item: ImageSource, background: tuple[int, int, int], work_pixels: int,
              max_pixels: int) -> list[Photo]:
    if isinstance(item, Photo):
        return [item]
    if isinstance(item, (str, os.PathLike)):
        return [_load_file(Path(item), background, work_pixels, max_pixels)]
    if isinstance(item, Image.Image):
        name = Path(getattr(item, "filename", "") or "").name or "PIL image"
        return [_normalise(item, name, background, work_pixels)]
    if isinstance(item, torch.Tensor):
        item = item.detach().cpu()
        if item.ndim == 4:
            return [_from_array(t.numpy(), f"image {i + 1} of {len(item)} in the batch", background, work_pixels)
                    for i, t in enumerate(item)]
        return [_from_array(item.numpy(), "tensor image", background, work_pixels)]
    if isinstance(item, np.ndarray):
        return [_from_array(item, "array image", background, work_pixels)]
    raise ImageInputError(f"cannot read an image from a {type(item).__name__}; give a file path, a PIL "
                          f"image, a numpy array or a [B, H, W, C] tensor in 0..1.")


# ----------------------------------------------------------------------------- files


def _load_file(path: Path, background: tuple[int, int, int], work_pixels: int, max_pixels: int) -> Photo:
    if not path.exists():
        raise ImageInputError(f"{path}: no such file.")
    if not path.is_file():
        raise ImageInputError(f"{path}: is a folder or device, not an image file.")
    image = _open_without_pillow_limit(path)
    try:
        stored_size = image.size
        _check_pixels(*stored_size, max_pixels, str(path))
        drafted = _draft_jpeg(image, work_pixels)
        if drafted == 1 and max_pixels == MAX_PIXELS:  # decoded whole: refused by name before the memory is taken
            _check_pixels(*stored_size, FULL_DECODE_PIXELS, str(path),
                          f"the most Essence decodes whole from a {image.format or 'picture'} file (JPEG files "
                          f"are read at a reduced size instead)")
        photo = _normalise(_decoded(image, path), path.name, background, work_pixels, stored_size, drafted)
        if photo.image is image:  # keep nothing that closing the file would invalidate
            photo.image = image.copy()
    finally:
        image.close()
    photo.file_sha256 = _file_sha256(path)
    return photo


def _draft_jpeg(image: Image.Image, work_pixels: int) -> int:
    """For a JPEG over ``work_pixels``, make libjpeg decode at 1/2, 1/4 or 1/8 scale (the mildest that
    fits), so the full-size pixels never exist in memory. Returns the scale (1: full size)."""
    width, height = image.size
    if width * height <= work_pixels or not isinstance(image, JpegImagePlugin.JpegImageFile):
        return 1
    fits = [s for s in (2, 4, 8) if math.ceil(width / s) * math.ceil(height / s) <= work_pixels]
    scale = fits[0] if fits else 8
    image.draft(image.mode, (width // scale, height // scale))
    return scale


def _open_without_pillow_limit(path: Path) -> Image.Image:
    """``Image.open`` (header only) with Pillow's decompression-bomb check lifted.

    Pillow refuses images over ~179 megapixels at open time; Essence applies its own, documented
    limit (``MAX_PIXELS``) right after reading the header, before any pixel is decoded. Pillow's
    global is changed under a lock and restored at once.
    """
    with _open_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        except Image.UnidentifiedImageError:
            raise ImageInputError(f"{path}: not an image file Pillow can read (or an unsupported format). "
                                  f"Use a JPEG, PNG, WebP, TIFF or BMP photo.") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise ImageInputError(f"{path}: cannot open the image ({exc}).") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _decoded(image: Image.Image, path: Path) -> Image.Image:
    """Decode the pixels now, so a damaged file fails here with its name (not later, somewhere)."""
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
        raise ImageInputError(f"{path}: the image data is damaged or truncated ({exc}). "
                              f"Re-export or re-download the file.") from None
    return image


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_pixels(width: int, height: int, max_pixels: int, name: str, why: str = "") -> None:
    if width * height > max_pixels:
        limit = f"the {_megapixels(max_pixels)}-megapixel limit" + (f", {why}" if why else
                                                                     " (it may be a decompression bomb)")
        raise ImageInputError(
            f"{name}: {width}x{height} is {_megapixels(width * height)} megapixels, more than {limit}. "
            f"Downscale it first (a face needs far fewer pixels), or pass a larger max_pixels if you trust it.")
    if width == 0 or height == 0:
        raise ImageInputError(f"{name}: the image is empty ({width}x{height}).")


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:,.0f}" if pixels >= 1e6 else f"{pixels / 1e6:.2g}"


def _reduction(width: int, height: int, work_pixels: int | None) -> int:
    """The smallest integer factor that brings the photo within ``work_pixels``."""
    if work_pixels is None or width * height <= work_pixels:
        return 1
    return math.ceil(math.sqrt(width * height / work_pixels))


# ----------------------------------------------------------------------------- PIL images and arrays


def _normalise(image: Image.Image, name: str, background: tuple[int, int, int], work_pixels: int | None,
               stored_size: tuple[int, int] | None = None, prescale: int = 1) -> Photo:
    """Orientation, colour mode and size normalisation of a decoded image.

    ``stored_size`` is the size before any reduced decoding (``prescale`` > 1), as stored (before
    the EXIF rotation); the photo's ``size`` is the upright original size.
    """
    width, height = stored_size or image.size
    upright = _upright(image)
    turned = upright.size != image.size  # EXIF orientations 5-8 swap the axes
    rgb = to_rgb(upright, background)
    factor = _reduction(rgb.width, rgb.height, work_pixels)
    if factor > 1:
        rgb = rgb.reduce(factor)
    size = (height, width) if turned else (width, height)
    scale = prescale * factor
    return Photo(rgb, size, scale, name, _content_sha256(rgb, size, scale))


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; a damaged EXIF block leaves the image as stored."""
    try:
        turned = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError):
        return image
    return turned if turned is not None else image


def to_rgb(image: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (16-bit scaled, transparency composited over ``background``)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I;16") or mode == "I":
        return Image.fromarray(_sixteen_to_eight(np.asarray(image)), "L").convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_eight(np.asarray(image, dtype=np.float32)), "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        mode, image = "RGBA", image.convert("RGBA")
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return image.convert("RGB")


def _sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """16-bit samples (``I`` mode is taken as 16-bit data, as every format that yields it stores)
    -> 8 bit with rounding: v * 255 / 65535, so 257 * g maps back to g exactly."""
    wide = np.clip(values.astype(np.int64), 0, 65535)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _float_to_eight(values: np.ndarray) -> np.ndarray:
    """Float images: 0..1 data (the usual convention) is scaled; anything larger is taken as 0..255."""
    values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and values.max() <= 1.0:
        values = values * 255.0
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _from_array(array: np.ndarray, name: str, background: tuple[int, int, int], work_pixels: int) -> Photo:
    """[H, W] or [H, W, C] (C = 1, 3, 4) arrays: uint8, uint16, or float in 0..1 (ComfyUI)."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageInputError(f"{name}: expected [H, W], [H, W, 3] or [H, W, 4] pixels (or a [B, H, W, C] "
                              f"batch), got shape {list(array.shape)}. Channels must come last.")
    if 0 in array.shape:
        raise ImageInputError(f"{name}: the image is empty (shape {list(array.shape)}).")
    if array.dtype == np.uint16:
        array = _sixteen_to_eight(array)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageInputError(f"{name}: the image holds NaN or infinite values.")
        array = np.clip(np.rint(array.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageInputError(f"{name}: unsupported pixel type {array.dtype}; use uint8, uint16 or float 0..1.")
    mode = "L" if array.ndim == 2 else {3: "RGB", 4: "RGBA"}[array.shape[-1]]
    image = Image.fromarray(np.ascontiguousarray(array), mode)
    return _normalise(image, name, background, work_pixels)


def _content_sha256(image: Image.Image, size: tuple[int, int], scale: int) -> str:
    """sha256 of the pixels (hashed in bands of rows, so a big photo is never copied whole)."""
    digest = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:{size[0]}x{size[1]}/{scale}".encode())
    band = max(1, (1 << 22) // max(1, image.width * 3))
    for top in range(0, image.height, band):
        digest.update(image.crop((0, top, image.width, min(image.height, top + band))).tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- tensor conventions


def pil_to_comfy(images: Image.Image | Iterable[Image.Image]) -> torch.Tensor:
    """PIL images (same size) -> ComfyUI IMAGE [B, H, W, 3] float32 in 0..1."""
    images = [images] if isinstance(images, Image.Image) else list(images)
    arrays = [np.asarray(to_rgb(im), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays))


def comfy_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """ComfyUI IMAGE [B, H, W, C] (or [H, W, C]) in 0..1 -> RGB PIL images."""
    return [photo.image for photo in load_photos(images, work_pixels=MAX_PIXELS)]


def pil_to_pixels(images: Iterable[Image.Image]) -> torch.Tensor:
    """PIL images of one size -> [B, 3, H, W] uint8: ``pil_to_model``'s layout at a quarter of its
    memory, for many frames held at once (pivotal tuning over a clip reads them back one by one)."""
    return torch.from_numpy(np.stack([np.asarray(to_rgb(image), dtype=np.uint8).transpose(2, 0, 1)
                                      for image in images]))


def pil_to_model(images: Image.Image | Iterable[Image.Image], size: int | None = None) -> torch.Tensor:
    """PIL images -> [B, 3, H, W] float32 in [-1, 1] (e4e's ``ToTensor`` + ``Normalize(0.5, 0.5)``).

    ``size`` resizes first (bilinear, as torchvision's ``Resize`` does for PIL images).
    """
    images = [images] if isinstance(images, Image.Image) else list(images)
    arrays = []
    for image in images:
        image = to_rgb(image)
        if size is not None and image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    return torch.from_numpy(np.stack(arrays)) * 2.0 - 1.0


def model_to_comfy(images: torch.Tensor) -> torch.Tensor:
    """Generator output [B, 3, H, W] in about [-1, 1] -> ComfyUI IMAGE [B, H, W, 3] in 0..1 (clamped)."""
    return ((images.detach().float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().contiguous()


def grid_to_pil(grid: torch.Tensor) -> Image.Image:
    """One image [3, H, W] in 0..1 (e.g. ``essence.latents.apply.image_grid``) -> an RGB PIL image (clamped, rounded)."""
    pixels = (grid.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(pixels, "RGB")


def model_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Generator output [B, 3, H, W] in about [-1, 1] -> RGB PIL images (clamped, rounded)."""
    pixels = (model_to_comfy(images) * 255.0).round().to(torch.uint8).numpy()
    return [Image.fromarray(p, "RGB") for p in pixels]
