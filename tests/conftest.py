"""Shared test set-up: the fixtures in the repository, TargetCLIP's own files when they are beside
it, pictures anyone may redistribute, the tiny models, one local Ray, and deterministic
single-threaded torch.

``tests/fixtures/`` holds everything the suite needs that may be redistributed (its README says what
each file is). TargetCLIP's photos, official directions and latents carry no licence: the tests about
those very files read them from ``../shared/fixtures`` beside the checkout (or ``$ESSENCE_FIXTURES``)
and skip, naming the file, when it is absent. ``ESSENCE_REQUIRE_SHARED=1`` (CI) makes that a failure.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from pictures import Pictures, write_pictures
from targetclip_files import write_targetclip_files

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED = Path(os.environ.get("ESSENCE_FIXTURES") or REPO.parent / "shared" / "fixtures")

# cuBLAS gives the same sums run after run only with a fixed workspace, set before its first call
# (the CUDA tests compare a captured training step with the same step run eagerly, bit for bit)
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

# Tiny models on 2 cores run several times faster on one thread (the official training loop on the
# tiny fixtures: 2.0 s/step with the default threads, 0.22 s/step with one).
torch.set_num_threads(1)

TARGETCLIP_FILES = ("face_", "photos/", "official/")  # TargetCLIP's own files: no licence to redistribute them


def shared_file(name: str) -> Path:
    """``name`` (e.g. ``photos/keanu.jpg``) from the shared fixtures, or skip the test naming it."""
    path = SHARED / name
    if not path.is_file():
        whose = " (TargetCLIP's: the repository may not hold it)" if name.startswith(TARGETCLIP_FILES) else ""
        message = (f"needs {name}{whose} from the shared fixtures, not found in {SHARED}: put that folder "
                   f"beside the checkout as ../shared/fixtures or set ESSENCE_FIXTURES")
        if os.environ.get("ESSENCE_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C (SIGINT) raises KeyboardInterrupt in this process and in the processes it starts, as in
    a terminal. A suite started in the background by a shell inherits SIGINT ignored, and so would
    every process it starts (an ignored signal stays ignored across exec; a handled one does not)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """The repository's fixtures: the tiny models, their reference outputs and the reference traces."""
    return FIXTURES


@pytest.fixture(scope="session")
def shared() -> Callable[[str], Path]:
    """``shared("official/keanu.npy")``: a file of the shared fixtures, or the test is skipped."""
    return shared_file


@pytest.fixture(autouse=True)
def _isolated_weights(monkeypatch, tmp_path_factory):
    """No test may find weight files on this machine by accident, nor share the model cache (but for
    the landmark model's one stateless copy, ``_reuse_landmarker``)."""
    import essence

    monkeypatch.setenv("ESSENCE_WEIGHTS_DIR", str(tmp_path_factory.mktemp("no-weights")))
    monkeypatch.setenv("ESSENCE_REPO_WEIGHTS_DIR", str(tmp_path_factory.mktemp("no-repo-weights")))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("no-torch-hub")))  # where AlexNet is also looked for
    monkeypatch.delenv("ESSENCE_CLI", raising=False)  # messages name `python -m essence`, not ./run's command
    essence.clear_model_cache()
    _reuse_landmarker()
    yield
    essence.clear_model_cache()


_LANDMARKERS: dict[Path, object] = {}  # dlib's landmark models read in this process, by file


def _reuse_landmarker() -> None:
    """Put the landmark model that a test would load (the file the weight lookup finds now) back into
    the emptied model cache, read from disk once per test process instead of once per test (0.9 s
    each time, over 50 times in a run). dlib's detector and predictor keep no state between calls;
    a test that gives another file, or finds none, loads or fails as before."""
    from essence.errors import MissingWeightsError
    from essence.faces import FaceLandmarker
    from essence.runtime import cached_model
    from essence.storage import find_weight

    def read_once(path: Path, _device: torch.device) -> object:
        if path not in _LANDMARKERS:
            _LANDMARKERS[path] = FaceLandmarker(path)
        return _LANDMARKERS[path]

    try:
        file = find_weight("landmarks")
    except MissingWeightsError:
        return
    cached_model("landmarks", file, torch.device("cpu"), read_once)


# ----------------------------------------------------------------------------- the tiny models


@dataclass(frozen=True)
class TinyFiles:
    """The tiny models' files, in the real files' layouts (tests/fixtures/README.md)."""

    generator: Path = FIXTURES / "stylegan2_tiny64.pt"
    encoder: Path = FIXTURES / "e4e_tiny64.pt"
    guide: Path = FIXTURES / "clip_tiny.pt"

    @property
    def cli(self) -> list[str]:
        """The command line's options for them: generator, guide, encoder, then ``--device cpu``."""
        return ["--generator", str(self.generator), "--guide", str(self.guide), "--encoder", str(self.encoder),
                "--device", "cpu"]


TINY = TinyFiles()


@pytest.fixture(scope="session")
def tiny_files() -> TinyFiles:
    """The tiny models' files: ``tiny_files.generator``, ``.encoder``, ``.guide``, ``.cli``."""
    return TINY


@pytest.fixture(scope="module")
def generator():
    """The tiny generator, loaded outside the model cache (one per test module)."""
    import essence

    return essence.load_generator(TINY.generator, cache=False)


@pytest.fixture(scope="module")
def guide():
    """The tiny CLIP guide, loaded outside the model cache (one per test module)."""
    import essence

    return essence.load_guide(TINY.guide, cache=False)


@pytest.fixture(scope="module")
def encoder():
    """The tiny e4e encoder, loaded outside the model cache (one per test module)."""
    import essence

    return essence.load_encoder(TINY.encoder, cache=False)


@pytest.fixture(scope="module")
def models(generator, guide):
    """(tiny generator, tiny CLIP guide)."""
    return generator, guide


# ----------------------------------------------------------------------------- the TargetCLIP problem


@pytest.fixture(scope="module")
def trace() -> dict[str, torch.Tensor]:
    """The official optimisation's trace on the tiny models (see the fixtures' README)."""
    from safetensors.torch import load_file

    return load_file(FIXTURES / "targetclip_public_trace.safetensors")


@pytest.fixture(scope="module")
def trace_target(guide, trace) -> torch.Tensor:
    """The trace's target as the unit embedding training starts from: its picture (the astronaut's
    public-domain face, tests/pictures.py trace_target()) went through the reference's CLIP
    preprocessing into the trace; this embeds that."""
    from essence.networks.clip_guide import to_unit

    with torch.no_grad():
        return to_unit(guide.encode(trace["target_clip_input"]))


@pytest.fixture(scope="module")
def target(trace) -> torch.Tensor:
    """The trace's target picture as a ComfyUI-style image [1, 224, 224, 3] in [0, 1]: the astronaut's
    face (tests/pictures.py trace_target(): NASA's public-domain portrait, cropped) after CLIP's resize
    and centre crop, recovered from the trace's CLIP input. Its embedding is the trace's within 1e-7, so
    training on it follows the runs the reference traces record."""
    from essence.networks.clip_guide import CLIP_MEAN, CLIP_STD

    pixels = trace["target_clip_input"] * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    return pixels.permute(0, 2, 3, 1).contiguous()


@pytest.fixture(scope="session")
def pictures(tmp_path_factory) -> Pictures:
    """The tests' photos as files (tests/pictures.py): a portrait, a headshot, a cat."""
    return write_pictures(tmp_path_factory.mktemp("pictures"))


@pytest.fixture(scope="session")
def aligned_face(pictures, tmp_path_factory) -> Path:
    """The portrait's face already in FFHQ alignment at 1024 px, as FFHQ's images and TargetCLIP's
    aligned photos are (aligned here by Essence, then saved as a JPEG)."""
    from essence.faces import align_face, load_landmarker

    path = tmp_path_factory.mktemp("aligned") / "aligned.jpg"
    align_face(pictures.portrait, 1024, landmarks=load_landmarker()).crop.save(path, quality=95)
    return path


@pytest.fixture(scope="session")
def targetclip_files(tmp_path_factory) -> dict[str, Path]:
    """Files in TargetCLIP's formats (tests/targetclip_files.py): ``direction`` (.npy [1, 18, 512]),
    ``w_plus`` (.npy [68, 18, 512]) and ``opt_latents`` (.pt of CUDA tensors, [4, 18, 512])."""
    return write_targetclip_files(tmp_path_factory.mktemp("targetclip"))


# ----------------------------------------------------------------------------- Ray


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for the whole run: 2 CPUs, no dashboard, started the way ``essence batch`` starts
    one (but with no idle workers waiting), and never someone's cluster. Ray Train's controller looks
    at its workers every 0.5 s instead of 2 s, so that a short run's end (and a crashed worker) is
    seen sooner."""
    ray = pytest.importorskip("ray", reason="batch jobs need Ray: pip install -r requirements-dev.txt")
    from essence.scale import batch

    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    # No idle workers started in advance: this Ray lives for the whole run, mostly between tests, and
    # each idle worker costs about 1 % of a core meanwhile (the tests' actors start their own)
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    previous = os.environ.pop("RAY_ADDRESS", None)
    if ray.is_initialized():
        ray.shutdown()
    batch.connect(num_cpus=2)
    yield ray
    ray.shutdown()
    if previous is not None:
        os.environ["RAY_ADDRESS"] = previous
