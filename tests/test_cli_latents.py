"""``python -m essence align | invert | sample`` with the tiny fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import essence
from essence import cli
from essence.latents import clear_inversion_cache


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    clear_inversion_cache()


def test_align_writes_crops_and_transforms(pictures, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["align", str(pictures.headshot), str(pictures.cat), "--out", str(tmp_path), "--size", "256"])
    captured = capsys.readouterr()
    assert code == 2  # cat.png has no (human) face: reported, the other photo is still aligned
    assert "error: no face found in cat.png" in captured.err
    assert "headshot.jpg face 0 ->" in captured.out and "crop->photo [[" in captured.out
    assert Image.open(tmp_path / "headshot.png").size == (256, 256)
    record = json.loads((tmp_path / "headshot.json").read_text())
    transform = essence.faces.CropTransform.from_dict(record["transform"])
    assert transform.photo_size == (180, 180) and len(record["landmarks"]) == 68
    assert np.allclose(transform.corners(), record["quad"], atol=0.03 * 180)


@pytest.mark.slow
def test_align_all_faces(pictures, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = Image.open(pictures.portrait).convert("RGB")
    small = big.resize((big.width * 3 // 4, big.height * 3 // 4), Image.Resampling.LANCZOS)
    group = Image.new("RGB", (small.width + big.width, big.height), (200, 200, 200))
    group.paste(small, (0, 60))
    group.paste(big, (small.width, 0))
    group.save(tmp_path / "group.png")
    assert cli.main(["align", str(tmp_path / "group.png"), "--out", str(tmp_path / "out"), "--size", "256",
                     "--all-faces"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["group_face0.png", "group_face1.png"]


@pytest.mark.slow
def test_invert_writes_a_latent_file_and_reconstructions(pictures, tiny_files, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "faces.safetensors"
    code = cli.main(["invert", str(pictures.headshot), str(pictures.portrait), "--out", str(out),
                     "--encoder", str(tiny_files.encoder), "--reconstruction", str(tmp_path / "rec"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert "wrote 2 latent(s) (10 x 64 W+)" in capsys.readouterr().out
    loaded = essence.load_latents(out)
    assert loaded.latents.shape == (2, 10, 64)
    assert [s["name"] for s in loaded.sources] == ["headshot.jpg", "portrait.jpg"]
    assert loaded.meta["encoder"]["name"] == "e4e_tiny64.pt"
    generator = essence.load_generator(tiny_files.encoder)  # the e4e file's own decoder
    assert loaded.generator_fingerprint == generator.fingerprint()
    assert Image.open(tmp_path / "rec" / "portrait_face0.png").size == (64, 64)
    direct = essence.invert(pictures.portrait, essence.load_encoder(tiny_files.encoder))
    assert torch.allclose(loaded.latents[1], direct.latents[0], atol=1e-5)


@pytest.mark.slow
def test_invert_without_any_face_fails_clearly(pictures, tiny_files, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "none.safetensors"
    args = ["invert", str(pictures.cat), "--out", str(out), "--encoder", str(tiny_files.encoder), "--device", "cpu"]
    assert cli.main(args) == 2
    assert "error: no face found in cat.png" in capsys.readouterr().err
    assert cli.main(args + ["--skip-missing"]) == 2
    assert "no face found in any of the 1 photo(s); nothing to invert" in capsys.readouterr().err
    assert not out.exists()
    (tmp_path / "notes.jpg").write_text("not a photo")
    assert cli.main(["invert", str(tmp_path / "notes.jpg"), "--out", str(out), "--encoder",
                     str(tiny_files.encoder), "--device", "cpu"]) == 2
    assert "notes.jpg: not an image file" in capsys.readouterr().err


def test_sample_writes_seeded_latents(tiny_files, generator, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "random.safetensors"
    assert cli.main(["sample", "--count", "3", "--seed", "7", "--truncation", "0.5", "--out", str(out),
                     "--generator", str(tiny_files.generator), "--device", "cpu"]) == 0
    assert "wrote 3 sampled latent(s)" in capsys.readouterr().out
    loaded = essence.load_latents(out)
    assert torch.allclose(loaded.latents, generator.sample_wplus(3, seed=7, truncation=0.5))
    assert loaded.sources[1]["description"] == "sample seed=7 row=1 truncation=0.5"
    assert loaded.meta["generator"]["name"] == "stylegan2_tiny64.pt"


def test_sample_without_a_generator_says_where_to_get_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sample", "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "stylegan2-ffhq-config-f.pt" in err
