"""Face alignment: from any photo to the FFHQ crop that StyleGAN2 and e4e were trained on.

e4e only inverts faces well when they are framed exactly as in FFHQ, so this module reproduces the
FFHQ dataset recipe (also used by encoder4editing and TargetCLIP): dlib's HOG face detector, its
68-point landmarks, then an oriented square ("quad") built from the eye and mouth positions,

    x = (eye_right - eye_left) - rot90(eye_to_mouth), scaled to max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)
    y = rot90(x),  centre c = eye_avg + 0.1 eye_to_mouth,  quad = c -+ x -+ y

and the same resampling steps: shrink the photo when the face is much larger than the output,
crop around the quad with a 10% border, pad with reflected, blurred and median-blended edges when
the quad leaves the photo, warp the quad to a square, and (at 1024 px, FFHQ's setting) warp at 4x
and downsample with Lanczos. At 256 px the warp is done at 256 directly, as e4e's and TargetCLIP's
inference code does.

Every ``AlignedFace`` carries a ``CropTransform``: the exact 3x3 matrix from crop pixels to photo
pixels (pixel-centre coordinates, including any reduction of huge photos), so an edited face can be
pasted back. Which faces: the largest one by default (deterministic: area, then top, then left), or
all of them, largest first. No face is a ``FaceNotFoundError`` naming the photo, so callers can fall
back (TargetCLIP uses a random initialisation for targets such as cartoons).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import CorruptFileError, EssenceError, FaceIndexError, FaceNotFoundError, WrongFileKindError
from ..runtime import cached_model
from ..storage import find_weight
from .images import ImageSource, Photo, load_photo, load_photos

DETECT_PIXELS = 1 << 21  # detection runs on a copy of at most ~2 megapixels (then upsampled once)
N_LANDMARKS = 68
RECIPE = "ffhq-dlib68-v1"  # names the alignment maths, for caches and latent-file provenance

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------- dlib


class FaceLandmarker:
    """dlib's frontal face detector and 68-point shape predictor (load with ``load_landmarker``)."""

    def __init__(self, predictor_path: PathLike):
        dlib = _import_dlib()
        self.path = Path(predictor_path)
        self.detector = dlib.get_frontal_face_detector()
        try:
            self.predictor = dlib.shape_predictor(str(self.path))
        except RuntimeError as exc:
            raise CorruptFileError(f"{self.path}: not a readable dlib shape predictor ({exc}). "
                                   f"Download shape_predictor_68_face_landmarks.dat again.") from None
        self._rectangle = dlib.rectangle

    def detect(self, rgb: np.ndarray, upsample: int = 1) -> list[tuple[int, int, int, int]]:
        """Face boxes (left, top, right, bottom; inclusive pixel indices) in an RGB uint8 array."""
        return [(r.left(), r.top(), r.right(), r.bottom()) for r in self.detector(rgb, upsample)]

    def landmarks(self, rgb: np.ndarray, box: Sequence[int]) -> np.ndarray:
        """The 68 landmarks [68, 2] (x, y; pixel centres) of the face in ``box``."""
        shape = self.predictor(rgb, self._rectangle(*(int(v) for v in box)))
        if shape.num_parts != N_LANDMARKS:
            raise WrongFileKindError(f"{self.path}: this predictor gives {shape.num_parts} landmarks; the FFHQ "
                                     f"recipe needs dlib's 68-point model (shape_predictor_68_face_landmarks.dat).")
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError:
        raise EssenceError("face alignment needs dlib: install the prebuilt wheel with "
                           "`pip install dlib-bin` (no compiler needed).") from None
    return dlib


def load_landmarker(path: PathLike | None = None, cache: bool = True) -> FaceLandmarker:
    """The detector + predictor for ``path`` (or the landmarks file found by ``essence.storage.weights``),
    by default loaded once per file and kept in the model cache (``essence.clear_model_cache``
    frees it); ``cache=False`` for a host that manages the models' lifetime itself (ComfyUI)."""
    file = find_weight("landmarks", explicit_path=path)
    if not cache:
        return FaceLandmarker(file)
    return cached_model("landmarks", file, torch.device("cpu"), lambda p, _device: FaceLandmarker(p))


def landmarker_from(landmarks: FaceLandmarker | PathLike | None) -> FaceLandmarker:
    """The landmark model a caller gave, or the one loaded from the file it named (default: looked up)."""
    return landmarks if isinstance(landmarks, FaceLandmarker) else load_landmarker(landmarks)


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CropTransform:
    """Where an aligned crop came from: ``matrix`` maps crop pixels to photo pixels.

    Coordinates are pixel centres ((0, 0) is the centre of the top-left pixel), in the original,
    upright photo (after EXIF rotation, before any reduction). The mapping is affine; it is kept as a
    3x3 homogeneous matrix so it composes with other transforms by matrix product. ``landmarks``, the
    face's 68 points in crop pixels, travel with it because pasting back along the face's outline
    (``essence.faces.paste``) needs them wherever the transform goes (a ComfyUI socket, a JSON file).
    """

    matrix: np.ndarray
    crop_size: int
    photo_size: tuple[int, int]
    landmarks: np.ndarray | None = field(default=None, compare=False)

    @property
    def crop_to_photo(self) -> np.ndarray:
        return self.matrix

    @property
    def photo_to_crop(self) -> np.ndarray:
        return np.linalg.inv(self.matrix)

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """Crop points [N, 2] -> photo points [N, 2]."""
        return _apply(self.matrix, points)

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Photo points [N, 2] -> crop points [N, 2]."""
        return _apply(self.photo_to_crop, points)

    def corners(self) -> np.ndarray:
        """The crop's outer corners in the photo [4, 2]: top-left, bottom-left, bottom-right, top-right."""
        lo, hi = -0.5, self.crop_size - 0.5
        return self.to_photo(np.array([[lo, lo], [lo, hi], [hi, hi], [hi, lo]]))

    def pil_affine_to_photo(self) -> tuple[float, ...]:
        """``Image.transform(photo_size, Image.Transform.AFFINE, data)`` data that warps the crop
        (or an edited version of it) into the photo's frame, for pasting back."""
        edge = np.array([[1.0, 0, -0.5], [0, 1.0, -0.5], [0, 0, 1]])  # PIL samples at pixel edges + 0.5
        m = np.linalg.inv(edge) @ self.photo_to_crop @ edge
        return tuple(float(v) for v in m[:2].reshape(-1))

    def warp_to_photo(self, crop: Image.Image) -> tuple[Image.Image, Image.Image]:
        """The crop (any size; it is scaled to ``crop_size``) drawn in the photo's frame, and a mask
        (L, 255 where the crop covers the photo) for compositing it over the original."""
        crop = crop.convert("RGB")
        if crop.size != (self.crop_size, self.crop_size):
            crop = crop.resize((self.crop_size, self.crop_size), Image.Resampling.LANCZOS)
        data = self.pil_affine_to_photo()
        warped = crop.transform(self.photo_size, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
        mask = Image.new("L", crop.size, 255).transform(self.photo_size, Image.Transform.AFFINE, data,
                                                        Image.Resampling.BILINEAR)
        return warped, mask

    def to_dict(self) -> dict[str, Any]:
        data = {"crop_to_photo": self.matrix.tolist(), "crop_size": self.crop_size,
                "photo_size": list(self.photo_size)}
        if self.landmarks is not None:
            data["crop_landmarks"] = np.asarray(self.landmarks).round(3).tolist()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CropTransform":
        landmarks = data.get("crop_landmarks")
        return cls(np.array(data["crop_to_photo"], dtype=np.float64), int(data["crop_size"]),
                   (int(data["photo_size"][0]), int(data["photo_size"][1])),
                   None if landmarks is None else np.array(landmarks, dtype=np.float64))


@dataclass
class AlignedFace:
    """One aligned face: the crop, and everything needed to relate it to the photo.

    ``landmarks`` and ``box`` are in photo coordinates (original, upright photo); ``crop_landmarks``
    are the same 68 points in the crop; ``quad`` is the FFHQ quad in the photo (the crop's corners:
    top-left, bottom-left, bottom-right, top-right). ``index`` is the face's rank by size (0 = largest).
    """

    crop: Image.Image
    landmarks: np.ndarray
    crop_landmarks: np.ndarray
    quad: np.ndarray
    box: tuple[float, float, float, float]
    transform: CropTransform
    source: str
    photo_sha256: str
    index: int = 0
    file_sha256: str | None = None
    recipe: str = field(default=RECIPE)

    @property
    def size(self) -> int:
        return self.crop.width


# ----------------------------------------------------------------------------- public functions


def align_face(photo: ImageSource, size: int = 1024, *, landmarks: FaceLandmarker | PathLike | None = None,
               transform_size: int | None = None) -> AlignedFace:
    """The largest face in ``photo``, aligned the FFHQ way into a ``size`` x ``size`` crop.

    ``photo``: a path, PIL image, array or single-image tensor (see ``essence.faces.images``).
    ``landmarks``: a loaded ``FaceLandmarker`` or the predictor file (default: looked up).
    Raises ``FaceNotFoundError`` when the detector finds no face.
    """
    return align_faces(photo, size, landmarks=landmarks, all_faces=False, transform_size=transform_size)[0]


def align_faces(photo: ImageSource, size: int = 1024, *, landmarks: FaceLandmarker | PathLike | None = None,
                all_faces: bool = True, face_index: int = 0, transform_size: int | None = None,
                detect_pixels: int = DETECT_PIXELS) -> list[AlignedFace]:
    """Every face in ``photo`` (largest first), or with ``all_faces=False`` only face number
    ``face_index`` (0 = the largest, 1 = the second largest, ...), the only one then aligned.

    A photo without a face raises ``FaceNotFoundError``; one with faces, but fewer than
    ``face_index`` asks for, raises ``FaceIndexError`` (a kind of it) saying how many were found.

    ``transform_size`` is the resolution the quad is warped at before the final Lanczos resize:
    by default 4 x ``size`` from 1024 px up (FFHQ's 4096 for 1024) and ``size`` below (e4e's 256).
    """
    if size < 16 or size > 4096:
        raise ValueError(f"size must be between 16 and 4096 pixels, got {size}.")
    if transform_size is None:
        transform_size = size * 4 if size >= 1024 else size
    landmarker = landmarker_from(landmarks)
    photo = load_photo(photo)
    faces = detect_faces(photo, landmarker, detect_pixels=detect_pixels)
    if not faces:
        raise FaceNotFoundError(
            f"no face found in {photo.describe()}. dlib's frontal face detector needs a roughly frontal, "
            f"unobstructed face at least about 40 pixels wide; cartoons and paintings are often missed. "
            f"Use another photo, or (for a training target) a random initialisation.")
    if face_index < 0:
        raise EssenceError(f"face_index must be 0 (the largest face) or more, got {face_index}.")
    if not all_faces and face_index >= len(faces):
        raise FaceIndexError(f"face_index {face_index} asks for face {face_index + 1} of {photo.describe()}, but "
                             f"only {len(faces)} face(s) were found. Use face_index 0 for the largest.")
    chosen = list(enumerate(faces)) if all_faces else [(face_index, faces[face_index])]
    return [align_detected(photo, box, points, size, transform_size=transform_size, index=i)
            for i, (box, points) in chosen]


def align_photos(photos: ImageSource | Sequence[ImageSource], size: int = 1024, *,
                 landmarks: FaceLandmarker | PathLike | None = None, face_index: int = 0, skip_missing: bool = False,
                 progress: Callable[[int, int], None] | None = None) -> list[tuple[int, AlignedFace]]:
    """Face number ``face_index`` of every photo (a batch tensor counts one photo per image), as
    (the photo's place in ``photos``, its aligned face), in order.

    A photo without a face raises ``FaceNotFoundError`` naming it, or with ``skip_missing`` is left
    out; a photo with too few faces always raises (``align_faces``); and when no photo at all has the
    face there is nothing to align, which raises too. ``progress(done, total)`` hears each photo.
    """
    landmarker = landmarker_from(landmarks)
    loaded = load_photos(photos)
    chosen: list[tuple[int, AlignedFace]] = []
    for index, photo in enumerate(loaded):
        try:
            chosen += [(index, face) for face in align_faces(photo, size, landmarks=landmarker, all_faces=False,
                                                              face_index=face_index)]
        except FaceNotFoundError as exc:
            if isinstance(exc, FaceIndexError) or not skip_missing:
                raise
        if progress is not None:
            progress(index + 1, len(loaded))
    if not chosen:
        raise FaceNotFoundError(nothing_found(len(loaded), "photo(s)"))
    return chosen


def nothing_found(count: int, what: str, task: str = "align") -> str:
    """The message when pictures without a face were skipped and none was left."""
    return f"no face found in any of the {count} {what}; nothing to {task}."


def detect_faces(photo: Photo, landmarker: FaceLandmarker, detect_pixels: int = DETECT_PIXELS,
                 upsample: int = 1) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """(box, 68 landmarks) per face in ``photo.image`` coordinates, largest face first.

    Detection (HOG, upsampled once as the reference does) runs on a copy reduced to at most
    ``detect_pixels``; the landmarks are then predicted on the full working image.
    """
    image = photo.image
    factor = max(1, int(np.ceil(np.sqrt(image.width * image.height / detect_pixels))))
    small = image.reduce(factor) if factor > 1 else image
    boxes = [(l * factor, t * factor, (r + 1) * factor - 1, (b + 1) * factor - 1)
             for l, t, r, b in landmarker.detect(np.asarray(small), upsample)]
    boxes.sort(key=lambda b: (-(b[2] - b[0] + 1) * (b[3] - b[1] + 1), b[1], b[0]))
    rgb = np.asarray(image)
    return [(box, landmarker.landmarks(rgb, box)) for box in boxes]


def ffhq_quad(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """The FFHQ crop quad [4, 2] (top-left, bottom-left, bottom-right, top-right) and its side length,
    from dlib's 68 landmarks [68, 2]."""
    lm = np.asarray(landmarks, dtype=np.float64)
    eye_left, eye_right = lm[36:42].mean(axis=0), lm[42:48].mean(axis=0)
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (lm[48] + lm[54]) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.array([-eye_to_mouth[1], eye_to_mouth[0]])  # minus eye_to_mouth turned 90 degrees
    x = x / np.hypot(*x) * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    c = eye_avg + eye_to_mouth * 0.1
    return square_quad(c, x), float(np.hypot(*x) * 2)


def square_quad(centre: np.ndarray, half_side: np.ndarray) -> np.ndarray:
    """The square quad [4, 2] (top-left, bottom-left, bottom-right, top-right) with this centre and
    half-side vector (pointing from the left edge's middle to the centre)."""
    c, x = centre, half_side
    y = np.array([-x[1], x[0]])
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def quad_side(quad: np.ndarray) -> float:
    """The side length of a square quad."""
    quad = np.asarray(quad)
    return float(np.hypot(*(quad[3] - quad[0])))


# ----------------------------------------------------------------------------- the crop


def align_detected(photo: Photo, box: Sequence[int], points: np.ndarray, size: int, *,
                   quad: np.ndarray | None = None, transform_size: int | None = None,
                   index: int = 0) -> AlignedFace:
    """The face ``detect_faces`` found (``box``, 68 ``points``, in ``photo.image`` coordinates),
    cropped at its FFHQ quad, or at ``quad`` when given: a video smooths the quads of successive
    frames (``essence.faces.smoothing``) before cropping, so the crop does not jitter with the landmarks."""
    if transform_size is None:
        transform_size = size * 4 if size >= 1024 else size
    if quad is None:
        quad, qsize = ffhq_quad(points)
    else:
        quad = np.asarray(quad, dtype=np.float64)
        qsize = quad_side(quad)
    if qsize < 4:
        raise FaceNotFoundError(f"the face found in {photo.describe()} is too small to align ({qsize:.1f} px).")
    crop, crop_to_work = ffhq_crop(photo.image, quad, qsize, size, transform_size)
    work_to_photo = _scale_matrix(photo.scale)
    landmarks = photo.to_original(points)
    transform = CropTransform(work_to_photo @ crop_to_work, size, photo.size)
    transform = dataclasses.replace(transform, landmarks=transform.to_crop(landmarks))
    l, t, r, b = box
    corners = photo.to_original(np.array([[l, t], [r, b]], dtype=np.float64))
    return AlignedFace(crop=crop, landmarks=landmarks, crop_landmarks=transform.landmarks,
                       quad=photo.to_original(quad), box=tuple(float(v) for v in corners.reshape(-1)),
                       transform=transform, source=photo.name, photo_sha256=photo.sha256, index=index,
                       file_sha256=photo.file_sha256)


def realign(photo: Photo, face: AlignedFace, size: int) -> AlignedFace:
    """``face`` (found in ``photo``) cropped again at ``size`` px, at the same quad: pivotal tuning
    compares the generator's full-size image with the photo, not with the 256 px crop e4e reads."""
    if photo.sha256 != face.photo_sha256:
        raise EssenceError(f"this face was found in another photo than {photo.describe()}.")
    box = photo.from_original(np.asarray(face.box, dtype=np.float64).reshape(2, 2)).reshape(-1)
    return align_detected(photo, tuple(box), photo.from_original(face.landmarks), size,
                          quad=photo.from_original(face.quad), index=face.index)


def ffhq_crop(image: Image.Image, quad: np.ndarray, qsize: float, output_size: int,
              transform_size: int) -> tuple[Image.Image, np.ndarray]:
    """The FFHQ resampling steps on an RGB image; returns the crop and the crop -> image matrix.

    Follows the dataset script step by step (shrink, crop, pad, quad warp, final resize), and
    composes each step's exact pixel mapping into the returned matrix.
    """
    quad = np.array(quad, dtype=np.float64)
    to_image = np.eye(3)  # current image -> input image
    shrink = int(np.floor(qsize / output_size * 0.5))
    if shrink > 1:
        rsize = (int(np.rint(image.width / shrink)), int(np.rint(image.height / shrink)))
        to_image = to_image @ _scale_matrix(image.width / rsize[0], image.height / rsize[1])
        image = image.resize(rsize, Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    image, quad, to_image = _crop_around(image, quad, border, to_image)
    pad = _padding(image, quad, border)
    if max(pad) > border - 4:
        pad = tuple(int(p) for p in np.maximum(pad, int(np.rint(qsize * 0.3))))
        image = _pad_blurred(image, pad, qsize)
        quad = quad + pad[:2]
        to_image = to_image @ _translation(-pad[0], -pad[1])
    image = image.transform((transform_size, transform_size), Image.Transform.QUAD, tuple((quad + 0.5).flatten()),
                            Image.Resampling.BILINEAR)
    to_image = to_image @ _quad_matrix(quad, transform_size)
    if output_size < transform_size:
        image = image.resize((output_size, output_size), Image.Resampling.LANCZOS)
        to_image = to_image @ _scale_matrix(transform_size / output_size)
    return image, to_image


def _crop_around(image: Image.Image, quad: np.ndarray, border: int,
                 to_image: np.ndarray) -> tuple[Image.Image, np.ndarray, np.ndarray]:
    crop = (int(np.floor(quad[:, 0].min())), int(np.floor(quad[:, 1].min())),
            int(np.ceil(quad[:, 0].max())), int(np.ceil(quad[:, 1].max())))
    crop = (max(crop[0] - border, 0), max(crop[1] - border, 0),
            min(crop[2] + border, image.width), min(crop[3] + border, image.height))
    if crop[2] - crop[0] < image.width or crop[3] - crop[1] < image.height:
        image = image.crop(crop)
        quad = quad - crop[:2]
        to_image = to_image @ _translation(crop[0], crop[1])
    return image, quad, to_image


def _padding(image: Image.Image, quad: np.ndarray, border: int) -> tuple[int, int, int, int]:
    """How far (left, top, right, bottom) the quad plus border reaches outside the image."""
    lo = np.floor(quad.min(axis=0)).astype(int)
    hi = np.ceil(quad.max(axis=0)).astype(int)
    return (max(-lo[0] + border, 0), max(-lo[1] + border, 0),
            max(hi[0] - image.width + border, 0), max(hi[1] - image.height + border, 0))


def _pad_blurred(image: Image.Image, pad: tuple[int, int, int, int], qsize: float) -> Image.Image:
    """FFHQ's padding: reflect the photo outwards, blur the reflection more the further it is from
    the photo, and fade it towards the median colour, so the pad does not look like a mirror."""
    left, top, right, bottom = pad
    img = np.pad(np.asarray(image, dtype=np.float32), ((top, bottom), (left, right), (0, 0)), "reflect")
    h, w, _ = img.shape
    y, x, _ = np.ogrid[:h, :w, :1]
    with np.errstate(divide="ignore", invalid="ignore"):
        mask = np.maximum(1.0 - np.minimum(np.float32(x) / left, np.float32(w - 1 - x) / right),
                          1.0 - np.minimum(np.float32(y) / top, np.float32(h - 1 - y) / bottom))
    mask = np.nan_to_num(mask, nan=0.0, neginf=0.0).astype(np.float32)
    blur = qsize * 0.02
    img += (gaussian_blur(img, blur) - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    img += (np.median(img, axis=(0, 1)) - img) * np.clip(mask, 0.0, 1.0)
    return Image.fromarray(np.uint8(np.clip(np.rint(img), 0, 255)), "RGB")


def gaussian_blur(image: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Gaussian blur of an [H, W, C] float32 array over H and W, edges mirrored (the edge sample is
    repeated), kernel cut at ``truncate`` sigmas: the filter of ``scipy.ndimage.gaussian_filter``
    with ``sigma=[s, s, 0]`` (agrees to about 1e-4 on 0..255 data), computed by FFT in float32 so
    that FFHQ's large sigmas (2% of the face size) stay fast and scipy is not needed."""
    if sigma <= 0:
        return image.copy()
    radius = int(truncate * sigma + 0.5)
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel = (kernel / kernel.sum()).astype(np.float32)
    out = np.asarray(image, dtype=np.float32)
    for axis in (0, 1):
        out = _convolve_axis(out, kernel, radius, axis)
    return out


def _convolve_axis(values: np.ndarray, kernel: np.ndarray, radius: int, axis: int) -> np.ndarray:
    widths = [(0, 0)] * values.ndim
    widths[axis] = (radius, radius)
    padded = np.pad(values, widths, mode="symmetric")
    n = _fft_size(padded.shape[axis] + kernel.size - 1)
    shape = [1] * values.ndim
    shape[axis] = -1
    spectrum = np.fft.rfft(padded, n, axis=axis) * np.fft.rfft(kernel, n).reshape(shape)
    full = np.fft.irfft(spectrum, n, axis=axis)
    return np.take(full, np.arange(2 * radius, 2 * radius + values.shape[axis]), axis=axis).astype(np.float32)


def _fft_size(n: int) -> int:
    """The smallest length >= n with no prime factor above 5 (fast for FFT)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


# ----------------------------------------------------------------------------- pixel-centre geometry


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    out = np.c_[pts, np.ones(len(pts))] @ matrix.T
    return out[:, :2] / out[:, 2:]


def _translation(dx: float, dy: float) -> np.ndarray:
    """Points in a crop starting at (dx, dy) -> points in the image it was cut from."""
    return np.array([[1.0, 0, dx], [0, 1.0, dy], [0, 0, 1]])


def _scale_matrix(sx: float, sy: float | None = None) -> np.ndarray:
    """Points in an image resized by 1/s -> points in the original: pixel edges scale, centres
    shift by half a pixel ((c + 0.5) s - 0.5), as Pillow's resize and JPEG's DCT scaling sample."""
    sy = sx if sy is None else sy
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])


def _quad_matrix(quad: np.ndarray, size: int) -> np.ndarray:
    """Output pixels of Pillow's QUAD warp (given ``quad + 0.5``) -> input pixels.

    Pillow maps output pixel centre (u + 0.5, v + 0.5) / size bilinearly onto the quad's corners;
    for FFHQ's quad (a square) that is affine: p = q0 + (q3 - q0)(u + 0.5)/size + (q1 - q0)(v + 0.5)/size.
    """
    q0, q1, q3 = quad[0], quad[1], quad[3]
    ex, ey = (q3 - q0) / size, (q1 - q0) / size
    origin = q0 + 0.5 * ex + 0.5 * ey
    return np.array([[ex[0], ey[0], origin[0]], [ex[1], ey[1], origin[1]], [0, 0, 1]])
