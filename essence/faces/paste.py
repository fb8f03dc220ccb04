"""Paste-back: an edited face, drawn back into the photo it was aligned from.

Editing happens on the FFHQ crop (the generator only knows aligned faces), but users want their
photo back. ``paste_back`` maps the edited face through the crop's ``CropTransform`` into the
photo's frame and blends it in with a feathered mask:

- ``mask="face"`` (the default): the face region, from the 68 landmarks the alignment found (the jaw
  line, the brows, and a forehead above them), falling smoothly to 0 at the face's outline over
  ``feather`` x the crop size, then intersected with the square mask below. Everything outside the
  face stays the photo's, exactly: the generator's own hair, background and neck never show, so no
  box appears around the face, and on video no box edge flickers.
- ``mask="square"``: 1 in the middle of the crop square, falling smoothly to 0 at the square's edges
  over ``feather`` x the crop size, so the seam lands in the background margin FFHQ crops have
  around the face. ``feather=0`` gives a hard edge.
- It is computed analytically for every photo pixel (where that pixel's centre falls in the crop),
  so it is exact at any scale and rotation; parts of the crop outside the photo (FFHQ pads the photo
  with blurred reflections there) are simply never drawn.
- Only the bounding box of the crop in the photo is touched: every pixel outside it is returned
  bit for bit unchanged.
- The face may have any size (a 1024 px render for a 256 px alignment is fine: only the geometry
  of the crop square matters). When the face is drawn smaller than it is, it is first reduced with
  an anti-aliased filter, so large renders pasted onto small faces do not shimmer.

Colour values are blended in floating point; nothing is quantised except when the photo is a PIL
image or a uint8 array (the result then has the same type).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..errors import ShapeError
from .align import CropTransform
from .images import load_image

MAX_FEATHER = 0.5  # a ramp of half the crop size reaches the centre: the softest possible mask
MASKS = ("face", "square")
FOREHEAD = 0.35  # how far the face outline rises above the brows, as a share of the brow-to-chin distance
MASK_RESOLUTION = 256  # the face region is drawn on this grid and sampled from it (smooth: no need for more)
JAW, BROWS, CHIN = slice(0, 17), slice(17, 27), 8  # dlib's 68-point layout


def paste_back(photo: Any, edited_face: Any, transform: CropTransform, feather: float = 0.1,
               mask: str = "face") -> Any:
    """``photo`` with ``edited_face`` blended into the place the aligned crop came from.

    photo: the original photo, at the size it was aligned from (``transform.photo_size``): a PIL
        image or path (turned upright and RGB as ``essence.faces.images`` does), or an RGB array / tensor
        [H, W, 3] (or [1, H, W, 3]), uint8 or float in 0..1.
    edited_face: the face to paste, square, any size (e.g. ``G(w + d)`` rendered at 1024 px for a
        256 px alignment); same kinds as ``photo``.
    transform: the ``CropTransform`` of the alignment (``AlignedFace.transform``).
    feather: width of the soft edge as a fraction of the crop size, 0 (hard edge) to 0.5.
    mask: ``"face"`` (the face region, from ``transform.landmarks``) or ``"square"`` (the whole crop).

    Returns the composited photo at its original size, as the same kind as ``photo``: a PIL image
    for a PIL image or path, an array of the same dtype for an array, a float32 tensor [H, W, 3]
    on the photo's device for a tensor. Raises ``ShapeError`` when the photo is not the size the
    face was aligned from, or an input is not a single RGB image.
    """
    base = _as_float_image(photo, "photo")
    face = _as_float_image(edited_face, "edited face").to(base.device)
    _check_sizes(base, face, transform)
    _check_options(transform, feather, mask)
    return _like(photo, _composite(base, face, transform, feather, mask))


def paste_mask(transform: CropTransform, feather: float = 0.1, mask: str = "face") -> torch.Tensor:
    """The blending mask ``paste_back`` uses, over the whole photo: float32 [H, W] in 0..1."""
    _check_options(transform, feather, mask)
    width, height = transform.photo_size
    weights = torch.zeros(height, width)
    box = _photo_box(transform)
    if box is not None:
        x0, y0, x1, y1 = box
        u, v = _crop_coordinates(transform, box, weights.device)
        weights[y0:y1, x0:x1] = _weights(u, v, transform, feather, mask)
    return weights


def face_region(landmarks: np.ndarray, crop_size: int, feather: float = 0.1,
                resolution: int = MASK_RESOLUTION) -> torch.Tensor:
    """The face region of an aligned crop, float32 [resolution, resolution] in 0..1 over the crop.

    The outline is the jaw line (landmarks 0-16) closed over the forehead: the brows (17-26) raised
    by ``FOREHEAD`` x their distance to the chin, along the face's own up direction (so a tilted
    face gets a tilted forehead). Inside, the value rises from 0 at the outline to 1 over ``feather``
    x the crop size; outside it is exactly 0.
    """
    points = np.asarray(landmarks, dtype=np.float64) * (resolution / crop_size)
    brows = points[BROWS]
    forehead = brows + FOREHEAD * (brows.mean(axis=0) - points[CHIN])
    outline = np.concatenate([points[JAW], forehead[::-1]])
    canvas = Image.new("L", (resolution, resolution), 0)
    ImageDraw.Draw(canvas).polygon([(x + 0.5, y + 0.5) for x, y in outline], fill=255)
    inside = torch.from_numpy(np.asarray(canvas, dtype=np.float32) / 255.0)
    ramp = feather * resolution
    if ramp < 1:
        return inside
    return _ramp_inside(inside, ramp)


def _ramp_inside(inside: torch.Tensor, ramp: float) -> torch.Tensor:
    """A soft edge that stays inside the region: the region eroded by half the ramp, blurred over the
    ramp, then cut to the region, so the value is exactly 0 outside it and reaches 1 about ``ramp``
    pixels in (a distance transform would do the same without a dependency PyTorch lacks)."""
    reach = max(1, round(ramp / 2))
    eroded = 1 - F.max_pool2d((1 - inside)[None, None], 2 * reach + 1, stride=1, padding=reach)
    sigma = ramp / 4
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-offsets.square() / (2 * sigma * sigma))
    kernel = kernel / kernel.sum()
    blurred = F.conv2d(F.pad(eroded, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    blurred = F.conv2d(F.pad(blurred, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return blurred[0, 0] * inside


def _check_options(transform: CropTransform, feather: float, mask: str) -> None:
    if not 0.0 <= feather <= MAX_FEATHER:
        raise ValueError(f"feather must be between 0 and {MAX_FEATHER} (a fraction of the crop size), got {feather}.")
    if mask not in MASKS:
        raise ValueError(f"mask must be one of {', '.join(MASKS)}, got {mask!r}.")
    if mask == "face" and transform.landmarks is None:
        raise ShapeError("pasting along the face's outline (mask 'face') needs the face's landmarks, which this "
                         "alignment does not carry (it was saved by an older Essence); align the photo again, or "
                         "paste with mask 'square'.")


# ----------------------------------------------------------------------------- compositing


def _composite(base: torch.Tensor, face: torch.Tensor, transform: CropTransform, feather: float,
               mask: str) -> torch.Tensor:
    """The blend on float32 [H, W, 3] tensors; only the crop's bounding box is computed."""
    box = _photo_box(transform)
    out = base.clone()
    if box is None:  # the crop does not overlap the photo
        return out
    x0, y0, x1, y1 = box
    u, v = _crop_coordinates(transform, box, base.device)
    size = transform.crop_size
    weights = _weights(u, v, transform, feather, mask)
    source = _prefiltered(face, size * _photo_pixels_per_crop_pixel(transform))
    drawn = _sample(source.permute(2, 0, 1), u, v, size).permute(1, 2, 0)
    region = out[y0:y1, x0:x1]
    out[y0:y1, x0:x1] = torch.lerp(region, drawn.clamp(0, 1), weights[..., None])
    return out


def _weights(u: torch.Tensor, v: torch.Tensor, transform: CropTransform, feather: float, mask: str) -> torch.Tensor:
    """The blend weight of each photo pixel (its crop coordinates ``u, v``): the square's, times the
    face region's with ``mask="face"``."""
    square = _mask(u, v, transform.crop_size, feather)
    if mask == "square":
        return square
    region = face_region(transform.landmarks, transform.crop_size, feather)
    return square * _sample(region[None], u, v, transform.crop_size)[0]


def _sample(image: torch.Tensor, u: torch.Tensor, v: torch.Tensor, size: int) -> torch.Tensor:
    """``image`` [C, h, w] covering the crop, bilinearly sampled at crop coordinates ``u, v`` -> [C, H, W]."""
    # align_corners=False: -1 and 1 are the outer edges of the image, whatever its resolution
    grid = torch.stack(((u + 0.5) / size * 2 - 1, (v + 0.5) / size * 2 - 1), dim=-1)[None].float()
    return F.grid_sample(image[None].to(grid.device), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)[0]


def _mask(u: torch.Tensor, v: torch.Tensor, size: int, feather: float) -> torch.Tensor:
    """1 inside the crop square, 0 outside, with a smoothstep ramp ``feather * size`` crop pixels wide
    just inside its edges (a hard edge at 0). ``u, v``: crop pixel-centre coordinates."""
    inside = torch.minimum(torch.minimum(u + 0.5, size - 0.5 - u), torch.minimum(v + 0.5, size - 0.5 - v))
    if feather == 0:
        return (inside > 0).float()
    t = (inside / (feather * size)).clamp(0, 1).float()
    return t * t * (3 - 2 * t)


def _crop_coordinates(transform: CropTransform, box: tuple[int, int, int, int],
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the centre of every photo pixel in ``box`` falls in the crop (pixel-centre coordinates)."""
    x0, y0, x1, y1 = box
    m = torch.as_tensor(transform.photo_to_crop, dtype=torch.float64, device=device)
    ys = torch.arange(y0, y1, dtype=torch.float64, device=device)[:, None]
    xs = torch.arange(x0, x1, dtype=torch.float64, device=device)[None, :]
    u = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    v = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    return u, v


def _photo_box(transform: CropTransform) -> tuple[int, int, int, int] | None:
    """The photo pixels (x0, y0, x1, y1; end exclusive) whose centres may fall inside the crop."""
    corners = transform.corners()
    width, height = transform.photo_size
    x0 = max(0, math.floor(corners[:, 0].min()))
    y0 = max(0, math.floor(corners[:, 1].min()))
    x1 = min(width, math.ceil(corners[:, 0].max()) + 1)
    y1 = min(height, math.ceil(corners[:, 1].max()) + 1)
    return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None


def _photo_pixels_per_crop_pixel(transform: CropTransform) -> float:
    return math.sqrt(abs(float(np.linalg.det(transform.matrix[:2, :2]))))


def _prefiltered(face: torch.Tensor, drawn_size: float) -> torch.Tensor:
    """The face reduced (anti-aliased) to about the size it is drawn at, when it is larger; bilinear
    sampling alone would alias when shrinking by more than 2x."""
    target = max(1, math.ceil(drawn_size))
    if face.shape[0] <= target:
        return face
    small = F.interpolate(face.permute(2, 0, 1)[None], size=(target, target), mode="bilinear",
                          antialias=True, align_corners=False)
    return small[0].permute(1, 2, 0)


# ----------------------------------------------------------------------------- inputs and outputs


def _as_float_image(image: Any, what: str) -> torch.Tensor:
    """Any single RGB image -> float32 [H, W, 3] in 0..1 (PIL images and paths through ``load_image``)."""
    if isinstance(image, (Image.Image, str, os.PathLike)):
        return torch.from_numpy(np.asarray(load_image(image), dtype=np.float32) / 255.0)
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.array(image))
    if not isinstance(image, torch.Tensor):
        raise ShapeError(f"the {what} must be a PIL image, a file path, or an RGB array/tensor [H, W, 3]; "
                         f"got a {type(image).__name__}.")
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ShapeError(f"the {what} must be one RGB image [H, W, 3] (channels last), got shape "
                         f"{list(image.shape)}; paste batches one image at a time.")
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    return image.detach().float()


def _check_sizes(photo: torch.Tensor, face: torch.Tensor, transform: CropTransform) -> None:
    height, width = photo.shape[:2]
    if (width, height) != tuple(transform.photo_size):
        w, h = transform.photo_size
        raise ShapeError(f"the photo is {width}x{height} but the face was aligned from a {w}x{h} photo; paste "
                         f"the face into the photo it was aligned from, at its original size.")
    if face.shape[0] != face.shape[1]:
        raise ShapeError(f"the edited face must be square like the aligned crop, got {face.shape[1]}x{face.shape[0]}.")


def _like(photo: Any, result: torch.Tensor) -> Any:
    """``result`` (float32 [H, W, 3]) as the same kind of image as ``photo``."""
    if isinstance(photo, (Image.Image, str, os.PathLike)):
        return Image.fromarray(_to_uint8(result), "RGB")
    if isinstance(photo, np.ndarray):
        return _to_uint8(result) if photo.dtype == np.uint8 else result.cpu().numpy().astype(photo.dtype)
    if photo.dtype == torch.uint8:
        return torch.from_numpy(_to_uint8(result)).to(photo.device)
    return result.to(photo.device)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
