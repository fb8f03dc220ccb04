"""The offline smoothing of a clip's face crop (the ``offline`` preset: a Gaussian over each shot,
looking both ways) against the causal One-Euro presets, on synthetic detected quads."""

from __future__ import annotations

import numpy as np
import pytest

from essence.faces import SMOOTHING_PRESETS, Smoothing
from essence.faces.align import square_quad
from essence.faces.smoothing import quad_params, smooth_quads

RATE = 30.0


def _quads(centres: np.ndarray, noise: float, seed: int = 0) -> list[np.ndarray]:
    """Detected quads of a 200 px face at these centres, their corners shaken by landmark noise."""
    rng = np.random.default_rng(seed)
    return [square_quad(c, np.array([100.0, 0.0])) + rng.normal(0, noise, (4, 2)) for c in centres]


def _centre_error(smoothed: list[np.ndarray], centres: np.ndarray) -> np.ndarray:
    return np.array([np.linalg.norm(quad_params(q)[:2] - c) for q, c in zip(smoothed, centres)])


def test_offline_smoothing_follows_a_steady_move_without_lag_where_one_euro_trails():
    centres = np.stack([np.array([300.0 + 2.0 * t, 300.0]) for t in range(90)])  # 2 px per frame, to the right
    detected = _quads(centres, noise=1.5)
    middle = slice(15, 75)  # away from the shot's ends, where a centred window is complete
    offline, _ = smooth_quads(detected, RATE, SMOOTHING_PRESETS["offline"])
    online, _ = smooth_quads(detected, RATE, SMOOTHING_PRESETS["normal"])
    lag_offline = np.mean([quad_params(q)[0] - c[0] for q, c in zip(offline[middle], centres[middle])])
    lag_online = np.mean([quad_params(q)[0] - c[0] for q, c in zip(online[middle], centres[middle])])
    assert abs(lag_offline) < 0.3 and lag_online < -1.0  # One-Euro trails behind the moving face
    assert _centre_error(offline[middle], centres[middle]).mean() < _centre_error(detected[middle], centres[middle]).mean() / 3


def test_offline_smoothing_steadies_a_still_face_and_never_mixes_shots():
    still = np.tile(np.array([[300.0, 300.0]]), (40, 1))
    other = np.tile(np.array([[700.0, 320.0]]), (40, 1))  # a cut to another framing at frame 40
    detected = _quads(np.concatenate([still, other]), noise=2.0)
    smoothed, starts = smooth_quads(detected, RATE, SMOOTHING_PRESETS["offline"])
    assert starts == [0, 40]
    moves = [np.linalg.norm(smoothed[i + 1] - smoothed[i], axis=1).mean() for i in range(79) if i != 39]
    raw = [np.linalg.norm(detected[i + 1] - detected[i], axis=1).mean() for i in range(79) if i != 39]
    assert np.mean(moves) < np.mean(raw) / 4
    assert _centre_error(smoothed[:40], still).max() < 3 and _centre_error(smoothed[40:], other).max() < 3


def test_a_lost_face_ends_the_shot_and_settings_are_checked():
    detected = _quads(np.tile(np.array([[300.0, 300.0]]), (10, 1)), noise=1.0)
    detected[5] = None
    smoothed, starts = smooth_quads(detected, RATE, SMOOTHING_PRESETS["offline"])
    assert starts == [0, 6] and smoothed[5] is None
    with pytest.raises(ValueError, match="kind must be"):
        Smoothing(kind="median")
    with pytest.raises(ValueError, match="sigma must be a positive number"):
        Smoothing(kind="gaussian", sigma=0)
