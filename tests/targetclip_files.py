"""Files in the formats TargetCLIP publishes, written by the tests.

TargetCLIP's own files (its 19 directions, ``w_plus.npy``, ``opt_latents.pt``) carry no licence, so
the repository cannot hold them. The tests that only need "a file as TargetCLIP writes it" use these
instead; tests/test_fixtures.py checks that they match the real files' formats when those are present.

* a direction: ``np.save`` of float32 [1, 18, 512] (the published ones are about 0.08 root-mean-square);
* ``w_plus.npy``: ``np.save`` of float32 [N, 18, 512] source latents;
* ``opt_latents.pt``: ``torch.save`` of a float32 [4, 18, 512] tensor made on a GPU. Its storages are
  recorded as ``cuda:0``, so on a machine without CUDA it loads only with ``map_location``. Written
  here without a GPU by letting ``torch.save`` record that location for CPU tensors.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import numpy as np
import torch

W_PLUS = (18, 512)  # the FFHQ 1024 px generator's W+
# The directions TargetCLIP publishes (``official/<name>.npy`` in the shared fixtures).
OFFICIAL_DIRECTIONS = ["ariel", "avatar", "beyonce", "doc", "dumbledore", "ed", "elsa", "gargamel", "grindelwald",
                       "joker", "keanu", "megan", "moana", "morgan", "pocahontas", "thanos", "trump", "wolverine",
                       "zendaya"]
OPT_ROWS = [67, 4, 9, 34]  # as in TargetCLIP: its 4 default sources are these rows of w_plus.npy


def write_direction(path: Path, seed: int = 0, rms: float = 0.08) -> Path:
    rng = np.random.default_rng(seed)
    np.save(path, (rng.standard_normal((1, *W_PLUS)) * rms).astype(np.float32))
    return path


def write_w_plus(path: Path, count: int = 68, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.save(path, (rng.standard_normal((count, *W_PLUS)) * 0.5).astype(np.float32))
    return path


def write_opt_latents(path: Path, latents: torch.Tensor) -> Path:
    """``torch.save(latents)`` as on a CUDA machine: the file's storages say ``cuda:0``."""
    with mock.patch("torch.serialization.location_tag", lambda storage: "cuda:0"):
        torch.save(latents.detach().float().contiguous(), path)
    return path


def write_targetclip_files(folder: Path) -> dict[str, Path]:
    """A direction (``direction.npy``), ``w_plus.npy`` [68, 18, 512] and ``opt_latents.pt``, whose 4
    latents are rows 67, 4, 9 and 34 of ``w_plus.npy`` as in TargetCLIP's release."""
    folder.mkdir(parents=True, exist_ok=True)
    w_plus = write_w_plus(folder / "w_plus.npy")
    rows = torch.from_numpy(np.load(w_plus)[OPT_ROWS])
    return {"direction": write_direction(folder / "direction.npy"), "w_plus": w_plus,
            "opt_latents": write_opt_latents(folder / "opt_latents.pt", rows)}
