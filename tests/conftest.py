"""Shared test set-up: the golden fixtures, deterministic single-threaded torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("ESSENCE_FIXTURES", REPO.parent / "shared" / "fixtures"))

# Tiny models on 2 cores run several times faster on one thread (the official training loop on the
# tiny fixtures: 2.0 s/step with the default threads, 0.22 s/step with one).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"golden fixtures not found at {FIXTURES}; set ESSENCE_FIXTURES")
    return FIXTURES


@pytest.fixture(autouse=True)
def _isolated_weights(monkeypatch, tmp_path_factory):
    """No test may find weight files on this machine by accident, nor share the model cache."""
    import essence

    monkeypatch.setenv("ESSENCE_WEIGHTS_DIR", str(tmp_path_factory.mktemp("no-weights")))
    monkeypatch.setenv("ESSENCE_REPO_WEIGHTS_DIR", str(tmp_path_factory.mktemp("no-repo-weights")))
    monkeypatch.delenv("ESSENCE_CLI", raising=False)  # messages name `python -m essence`, not ./run's command
    essence.clear_model_cache()
    yield
    essence.clear_model_cache()


# The tiny TargetCLIP problem several test modules share (a module may define its own instead).


@pytest.fixture(scope="module")
def trace(fixtures: Path) -> dict[str, torch.Tensor]:
    """The official optimisation's trace on the tiny models (see the fixtures' README)."""
    from safetensors.torch import load_file

    return load_file(fixtures / "targetclip_public_trace.safetensors")


@pytest.fixture(scope="module")
def models(fixtures: Path):
    """(tiny generator, tiny CLIP guide), loaded outside the model cache."""
    import essence

    generator = essence.load_generator(fixtures / "stylegan2_tiny64.pt", cache=False)
    guide = essence.load_guide(fixtures / "clip_tiny.pt", cache=False)
    return generator, guide


@pytest.fixture(scope="module")
def target(fixtures: Path):
    """The trace's target picture."""
    from PIL import Image

    return Image.open(fixtures / "face_a.jpg")
