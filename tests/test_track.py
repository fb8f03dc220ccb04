"""Face tracking for video: the detector runs at the first frame, scene cuts, a lost or doubtful face
and every refresh interval; in between the landmarks follow the face, close to what detecting it
would give. Detector calls are counted by wrapping the landmarker's ``detect`` method."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.jitter import noisy_still, panning
from essence.faces import FaceLandmarker, Tracking, detect_frames, load_landmarker
from essence.faces.smoothing import corner_movement, quad_side

RATE = 25.0


@pytest.fixture(scope="module")
def landmarker() -> FaceLandmarker:
    """Its own instance (not the cached one), so wrapping ``detect`` touches no other test."""
    return load_landmarker(cache=False)


@pytest.fixture()
def counted(landmarker):
    """The landmarker, with a list that gets one entry per detector call."""
    calls: list[int] = []
    original = landmarker.detect

    def detect(rgb, upsample=1):
        calls.append(1)
        return original(rgb, upsample)

    landmarker.detect = detect
    yield landmarker, calls
    del landmarker.detect


@pytest.fixture(scope="module")
def face(pictures) -> Image.Image:
    return Image.open(pictures.headshot).convert("RGB")


def scene_with(face: Image.Image, x: int, size: int = 80) -> np.ndarray:
    """A small face at ``x`` on a plain 320 x 240 background: moving it barely changes the picture."""
    scene = Image.new("RGB", (320, 240), (70, 90, 110))
    scene.paste(face.resize((size, size)), (x, 80))
    return np.asarray(scene)


@pytest.mark.parametrize("clip", ["still", "pan"])
def test_followed_crops_stay_close_to_detected_ones_with_one_detection(counted, face, clip):
    landmarker, calls = counted
    frames = list(noisy_still(face, 10, "gaussian") if clip == "still" else panning(face, 10, 2.0))
    detected = detect_frames(frames, landmarker)
    assert len(calls) == 10
    calls.clear()
    tracked = detect_frames(frames, landmarker, tracking=Tracking(), rate=RATE)
    assert len(calls) == 1 and tracked.detected == [True] + [False] * 9
    distance = [corner_movement(a.quad, b.quad) / quad_side(a.quad) for a, b in zip(detected.faces, tracked.faces)]
    assert np.mean(distance) < 0.03 and np.max(distance) < 0.06  # of the crop's side; per-frame noise is ~0.02
    if clip == "pan":  # the followed crop moves with the face (2 px per frame), it is not stuck at frame 0
        moved = tracked.faces[-1].quad.mean(axis=0) - tracked.faces[0].quad.mean(axis=0)
        assert abs(moved[0] - 18) < 4 and abs(moved[1]) < 3


def test_a_scene_cut_forces_detection(counted, aligned_face, face):
    landmarker, calls = counted
    other = Image.open(aligned_face).convert("RGB").resize((180, 180))  # another shot: closer, another crop
    frames = list(noisy_still(face, 3, "gaussian")) + list(noisy_still(other, 3, "gaussian"))
    tracked = detect_frames(frames, landmarker, tracking=Tracking(), rate=RATE)
    assert tracked.detected == [True, False, False, True, False, False] and len(calls) == 2
    fresh = detect_frames(frames[3:4], landmarker).faces[0]
    assert corner_movement(fresh.quad, tracked.faces[3].quad) < 1e-9  # the new shot's face, as detected


def test_the_refresh_interval_forces_detection(counted, face):
    landmarker, calls = counted
    frames = list(noisy_still(face, 8, "jpeg"))
    tracked = detect_frames(frames, landmarker, tracking=Tracking(refresh=3 / RATE), rate=RATE)
    assert [i for i, d in enumerate(tracked.detected) if d] == [0, 3, 6] and len(calls) == 3
    # counted from the clip's frame number: a run starting at frame 5 detects at 5 (its first) and 6
    later = detect_frames(frames[5:], landmarker, tracking=Tracking(refresh=3 / RATE), rate=RATE, start=5)
    assert later.detected == [True, True, False]


def test_a_lost_or_jumping_face_falls_back_to_detection(counted, face):
    landmarker, calls = counted
    empty = np.asarray(Image.new("RGB", (320, 240), (70, 90, 110)))
    frames = [empty, scene_with(face, 40), scene_with(face, 40), scene_with(face, 76), scene_with(face, 76)]
    tracked = detect_frames(frames, landmarker, tracking=Tracking(), rate=RATE)
    assert max(tracked.changes) < Tracking().cut_pixels  # no scene cut in this clip
    # frame 1: the previous frame had no face; frame 3: the face left its box (it jumped 36 px)
    assert tracked.faces[0] is None and tracked.detected == [True, True, False, True, False] and len(calls) == 3
    fresh = detect_frames(frames[3:4], landmarker).faces[0]
    assert corner_movement(fresh.quad, tracked.faces[3].quad) < 1e-9 and tracked.faces[4].box[0] > 90


def test_tracking_settings_are_checked():
    with pytest.raises(ValueError, match="refresh"):
        Tracking(refresh=0)
    with pytest.raises(ValueError, match="frame rate"):
        Tracking().interval(0)
    assert Tracking().interval(29.97) == 30 and Tracking(refresh=0.01).interval(25) == 1
