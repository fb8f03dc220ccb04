"""Direction files: self-describing, atomic, validated, and interchangeable with TargetCLIP's .npy."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from targetclip_files import OFFICIAL_DIRECTIONS

import essence
from essence.latents import Direction
from essence.networks import GeneratorConfig, build_generator


def _direction(rows: int = 10, width: int = 64, seed: int = 0) -> Direction:
    tensor = torch.randn(1, rows, width, generator=torch.Generator().manual_seed(seed))
    return Direction(tensor, {"name": "test", "latent_space": {"n_latent": rows, "style_dim": width},
                              "hyperparameters": {"lr": 0.2}})


def test_save_and_load_round_trip_keeps_tensor_and_metadata(tmp_path):
    original = _direction()
    original.thumbnail = torch.randint(0, 255, (8, 8, 3), dtype=torch.uint8)
    original.save(tmp_path / "d.safetensors")
    loaded = Direction.load(tmp_path / "d.safetensors")
    assert torch.equal(loaded.tensor, original.tensor)
    assert torch.equal(loaded.thumbnail, original.thumbnail)
    assert loaded.meta["hyperparameters"] == {"lr": 0.2} and loaded.name == "test"


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_partial(tmp_path, monkeypatch):
    path = tmp_path / "d.safetensors"
    _direction(seed=1).save(path)
    before = path.read_bytes()

    import safetensors.torch

    def broken_save(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _direction(seed=2).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["d.safetensors"]


def _write_raw(path: Path, tensor: torch.Tensor, meta: dict | None = None) -> Path:
    save_file({"direction": tensor}, str(path), metadata=meta or {"format": "essence.direction", "format_version": "1"})
    return path


def test_nan_or_inf_in_a_file_is_refused(tmp_path):
    for value in (float("nan"), float("inf")):
        tensor = torch.zeros(1, 18, 512)
        tensor[0, 3, 7] = value
        path = _write_raw(tmp_path / f"bad-{value}.safetensors", tensor)
        with pytest.raises(essence.errors.DirectionFileError, match="NaN or infinite"):
            Direction.load(path)


def test_truncated_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "cut.safetensors"
    _direction().save(path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(essence.errors.DirectionFileError, match=r"cut\.safetensors.*truncated"):
        Direction.load(path)


def test_a_safetensors_file_that_is_not_a_direction_is_refused(fixtures):
    with pytest.raises(essence.errors.DirectionFileError, match="not an Essence direction file"):
        Direction.load(fixtures / "stylegan2_tiny64_io.safetensors")


def test_wrong_shape_and_dtype_are_refused(tmp_path):
    with pytest.raises(essence.errors.DirectionFileError, match=r"\[1, n_latent, style_dim\].*\[18, 512\]"):
        Direction.load(_write_raw(tmp_path / "a.safetensors", torch.zeros(18, 512)))
    with pytest.raises(essence.errors.DirectionFileError, match="floating-point"):
        Direction.load(_write_raw(tmp_path / "b.safetensors", torch.zeros(1, 18, 512, dtype=torch.int32)))


def test_newer_format_version_asks_to_update(tmp_path):
    path = _write_raw(tmp_path / "v9.safetensors", torch.zeros(1, 18, 512),
                      {"format": "essence.direction", "format_version": "9"})
    with pytest.raises(essence.errors.DirectionFileError, match="newer.*update Essence"):
        Direction.load(path)


def test_direction_for_another_latent_space_is_refused_naming_both():
    generator = build_generator(GeneratorConfig.ffhq_config_f(), device="meta")
    small = _direction(rows=10, width=64)
    with pytest.raises(essence.errors.IncompatibleLatentSpaceError, match=r"10 x 64 W\+.*1024 px, 18 x 512 W\+"):
        small.check_fits(generator)
    with pytest.raises(essence.errors.IncompatibleLatentSpaceError, match=r"\[1, 10, 64\].*\[2, 18, 512\]"):
        essence.apply_direction(torch.zeros(2, 18, 512), small)


@pytest.mark.parametrize("name", ["written here", *OFFICIAL_DIRECTIONS])
def test_official_directions_import_and_export_bit_identically(tmp_path, targetclip_files, shared, name):
    """TargetCLIP's 19 directions when they are beside the checkout, and one written in their format."""
    if name == "written here":
        name = "direction"
        source = targetclip_files["direction"]
    else:
        source = shared(f"official/{name}.npy")
    imported = Direction.from_official_npy(source)
    assert imported.tensor.shape == (1, 18, 512)
    assert "official TargetCLIP" in imported.meta["source"] and imported.name == name
    imported.save(tmp_path / f"{name}.safetensors")
    reloaded = Direction.load(tmp_path / f"{name}.safetensors")
    reloaded.to_npy(tmp_path / f"{name}.npy")
    assert (tmp_path / f"{name}.npy").read_bytes() == source.read_bytes()
    assert reloaded.meta["latent_space"] == {"n_latent": 18, "style_dim": 512, "resolution": 1024}


def test_npy_holding_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(essence.errors.DirectionFileError, match=r"evil\.npy"):
        Direction.load(path)


def test_metadata_is_stored_as_readable_json(tmp_path):
    _direction().save(tmp_path / "d.safetensors")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "d.safetensors"), "pt") as handle:
        meta = handle.metadata()
    assert meta["format"] == "essence.direction" and meta["format_version"] == "1"
    assert json.loads(meta["latent_space"]) == {"n_latent": 10, "style_dim": 64}


def test_saved_files_get_the_permissions_the_umask_gives(tmp_path):
    """Not owner-only temporary-file permissions: a ComfyUI server or a teammate must be able to read them."""
    from essence.latents import LatentSet

    previous = os.umask(0o022)
    try:
        _direction().save(tmp_path / "d.safetensors")
        LatentSet(torch.zeros(2, 10, 64)).save(tmp_path / "l.safetensors")
        _direction().to_npy(tmp_path / "d.npy")
        os.umask(0o077)
        _direction().save(tmp_path / "private.safetensors")
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"d.safetensors": 0o644, "l.safetensors": 0o644, "d.npy": 0o644, "private.safetensors": 0o600}


def test_the_ffhq_licence_note_goes_only_with_the_ffhq_generator(tiny_files, monkeypatch):
    """A direction trained with another generator (here the tiny test model) is not under NVIDIA's licence;
    one trained with the generator whose fingerprint the manifest lists is, and so is a mix containing it."""
    import dataclasses

    from essence.storage import weights
    from essence.latents import mix_directions
    from essence.latents.direction import LICENCE_NOTE, direction_metadata

    fingerprint = essence.load_generator(tiny_files.generator).fingerprint()
    assert "licence" not in direction_metadata(generator_fingerprint=fingerprint)
    assert "licence" not in direction_metadata()  # unknown generator
    unlicensed = Direction(_direction().tensor, direction_metadata(generator_fingerprint=fingerprint))

    ffhq = [dataclasses.replace(s, generator_fingerprint=fingerprint) if s.role == "generator" else s
            for s in weights.load_manifest()]
    monkeypatch.setattr(weights, "load_manifest", lambda path=None: tuple(ffhq))
    assert direction_metadata(generator_fingerprint=fingerprint)["licence"] == LICENCE_NOTE
    licensed = Direction(_direction(seed=1).tensor, direction_metadata(generator_fingerprint=fingerprint))
    assert mix_directions([unlicensed, licensed]).meta["licence"] == LICENCE_NOTE
    assert "licence" not in mix_directions([unlicensed, unlicensed]).meta


def test_an_npy_of_latents_is_not_taken_for_a_direction(targetclip_files):
    with pytest.raises(essence.errors.DirectionFileError, match=r"holds 68 W\+ latents \[68, 18, 512\], not a direction"):
        essence.load_direction(targetclip_files["w_plus"])


def test_until_its_fingerprint_is_measured_the_ffhq_note_goes_with_the_ffhq_architecture(tiny_files, monkeypatch):
    """The manifest cannot yet name the real FFHQ generator's fingerprint (measuring it needs the weights), so a
    direction for a 1024 px 18 x 512 W+ generator carries NVIDIA's note; the tiny test model's does not; and once
    a fingerprint is recorded, only that generator gets the note."""
    import dataclasses

    from essence.storage import weights
    from essence.latents.direction import LICENCE_NOTE, direction_metadata

    ffhq_space = {"n_latent": 18, "style_dim": 512, "resolution": 1024}
    tiny = essence.load_generator(tiny_files.generator)
    tiny_space = {"n_latent": tiny.n_latent, "style_dim": tiny.style_dim, "resolution": tiny.size}
    assert direction_metadata(generator_fingerprint="0123456789abcdef", latent_space=ffhq_space)["licence"] == LICENCE_NOTE
    assert "licence" not in direction_metadata(generator_fingerprint=tiny.fingerprint(), latent_space=tiny_space)

    measured = [dataclasses.replace(s, generator_fingerprint="fedcba9876543210") if s.generator_latent_space else s
                for s in weights.load_manifest()]
    monkeypatch.setattr(weights, "load_manifest", lambda path=None: tuple(measured))
    assert "licence" not in direction_metadata(generator_fingerprint="0123456789abcdef", latent_space=ffhq_space)
    assert direction_metadata(generator_fingerprint="fedcba9876543210", latent_space=ffhq_space)["licence"] == LICENCE_NOTE
