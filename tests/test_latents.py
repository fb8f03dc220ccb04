"""The latent file: round trip, metadata, validation, sampling, and TargetCLIP's own latents."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import essence
from essence.errors import IncompatibleLatentSpaceError, LatentFileError
from essence.latents import LatentSet, import_targetclip_latents, load_latents, sample_latents, save_latents


def test_round_trip_keeps_latents_sources_and_metadata(generator, tmp_path: Path) -> None:
    latents = torch.randn(2, 10, 64, generator=torch.Generator().manual_seed(0))
    sources = [{"kind": "photo", "name": "a.jpg", "sha256": "0" * 64, "face": 0},
               {"kind": "sample", "seed": 3, "row": 0, "truncation": 0.7}]
    path = save_latents(tmp_path / "l.safetensors", latents, sources, generator=generator, meta={"note": "hi"})
    loaded = load_latents(path, generator=generator)
    assert torch.equal(loaded.latents, latents) and loaded.latents.dtype == torch.float32
    assert loaded.sources == sources and loaded.meta["note"] == "hi"
    assert loaded.space == {"n_latent": 10, "style_dim": 64, "resolution": 64}
    assert loaded.generator_fingerprint == generator.fingerprint()
    from safetensors import safe_open
    with safe_open(str(path), "pt") as handle:
        raw = handle.metadata()
    assert raw["format"] == "essence.latents" and raw["format_version"] == "1" and raw["count"] == "2"
    assert json.loads(raw["sources"]) == sources and "created" in raw and "essence_version" in raw


def test_sampling_is_seeded_and_reproducible_per_row(generator, tmp_path: Path) -> None:
    sampled = sample_latents(generator, 3, seed=5, truncation=0.7)
    assert sampled.latents.shape == (3, 10, 64)
    assert torch.equal(sampled.latents, sample_latents(generator, 3, seed=5, truncation=0.7).latents)
    assert torch.allclose(sampled.latents, generator.sample_wplus(3, seed=5, truncation=0.7))
    assert not torch.allclose(sampled.latents, sample_latents(generator, 3, seed=6, truncation=0.7).latents)
    assert sampled.sources[2] == {"kind": "sample", "seed": 5, "row": 2, "truncation": 0.7,
                                  "description": "sample seed=5 row=2 truncation=0.7"}
    reloaded = load_latents(sampled.save(tmp_path / "s.safetensors"))
    assert torch.equal(reloaded.latents, sampled.latents) and reloaded.sources == sampled.sources
    # truncation 0 is the mean face
    assert torch.allclose(sample_latents(generator, 1, seed=1, truncation=0.0).latents[0],
                          generator.latent_avg.expand(10, -1))


def test_other_latent_spaces_are_refused(generator, tmp_path: Path) -> None:
    path = save_latents(tmp_path / "ffhq.safetensors", torch.zeros(1, 18, 512))
    assert load_latents(path).space == {"n_latent": 18, "style_dim": 512, "resolution": 1024}
    with pytest.raises(IncompatibleLatentSpaceError, match="18 x 512 W\\+ codes.*10 x 64"):
        load_latents(path, generator=generator)


@pytest.mark.parametrize("tensor, message", [
    (torch.full((1, 10, 64), float("nan")), "NaN"),
    (torch.zeros(10, 64), "shape"),
    (torch.zeros(1, 10, 64, dtype=torch.int32), "floating-point"),
])
def test_bad_tensors_are_refused(tmp_path: Path, tensor: torch.Tensor, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    save_file({"latents": tensor}, str(path), metadata={"format": "essence.latents", "format_version": "1"})
    with pytest.raises(LatentFileError, match=message):
        load_latents(path)
    with pytest.raises(LatentFileError, match=message):
        LatentSet(tensor)


def test_foreign_damaged_and_newer_files_are_refused(tmp_path: Path) -> None:
    good = save_latents(tmp_path / "good.safetensors", torch.zeros(2, 10, 64))
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(LatentFileError, match="truncated"):
        load_latents(tmp_path / "cut.safetensors")
    save_file({"direction": torch.zeros(1, 10, 64)}, str(tmp_path / "dir.safetensors"),
              metadata={"format": "essence.direction", "format_version": "1"})
    with pytest.raises(LatentFileError, match="not an Essence latent file"):
        load_latents(tmp_path / "dir.safetensors")
    save_file({"latents": torch.zeros(1, 10, 64)}, str(tmp_path / "new.safetensors"),
              metadata={"format": "essence.latents", "format_version": "9"})
    with pytest.raises(LatentFileError, match="newer"):
        load_latents(tmp_path / "new.safetensors")
    save_file({"latents": torch.zeros(2, 10, 64)}, str(tmp_path / "src.safetensors"),
              metadata={"format": "essence.latents", "format_version": "1", "sources": "[{}]"})
    with pytest.raises(LatentFileError, match="1 source entries for 2 latents"):
        load_latents(tmp_path / "src.safetensors")
    with pytest.raises(LatentFileError, match="no such file"):
        load_latents(tmp_path / "missing.safetensors")
    assert issubclass(LatentFileError, essence.EssenceError)


@pytest.mark.parametrize("made", ["written here", "TargetCLIP's"])
def test_targetclip_source_latents_are_imported(targetclip_files, shared, made: str, tmp_path: Path) -> None:
    """``opt_latents.pt`` holds CUDA tensors: it imports on a CPU-only machine, safely."""
    files = (targetclip_files if made == "written here" else
             {name: shared(f"official/{name}.{suffix}") for name, suffix in (("opt_latents", "pt"), ("w_plus", "npy"))})
    opt = load_latents(files["opt_latents"])
    assert opt.latents.shape == (4, 18, 512) and opt.latents.device.type == "cpu"
    evaluation = import_targetclip_latents(files["w_plus"])
    assert evaluation.latents.shape == (68, 18, 512)
    assert torch.equal(opt.latents, evaluation.latents[[67, 4, 9, 34]])  # the 4 default sources are rows of the 68
    assert opt.sources[0] == {"kind": "imported", "name": "opt_latents.pt", "row": 0}
    again = load_latents(opt.save(tmp_path / "opt.safetensors"))
    assert torch.equal(again.latents, opt.latents) and again.meta["imported_from"] == "TargetCLIP opt_latents.pt"
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    with pytest.raises(LatentFileError, match="junk.pt"):
        load_latents(tmp_path / "junk.pt")
    np.save(tmp_path / "flat.npy", np.zeros((18, 512), np.float32))
    with pytest.raises(LatentFileError, match="flat.npy.*shape"):
        load_latents(tmp_path / "flat.npy")
