"""The demo's whole path, with the tiny fixture models standing in for the real weight files.

This proves the plumbing (photo -> inversion -> training -> apply -> paste-back -> files), not the
quality: the tiny models produce 64 px blobs.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image

import essence
from essence import cli
from essence.latents import clear_inversion_cache


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    clear_inversion_cache()


@pytest.mark.slow
def test_demo_runs_end_to_end_on_the_bundled_pictures(tmp_path, tiny_files, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--steps", "3", *tiny_files.cli]) == 0
    stdout = capsys.readouterr().out
    for step in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"):
        assert step in stdout
    assert "astronaut.png" in stdout and "chelsea" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.safetensors", "grid.png", "report.json", "report.txt"]
    direction = essence.load_direction(out / "chelsea.safetensors")
    assert direction.meta["init"] == "random (no face found in the target)"  # a cat: no face to invert
    assert direction.meta["hyperparameters"]["steps"] == 3
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 3 and report["best_loss"] > 0 and report["peak_memory_mb"] > 0
    # on a CPU the default mode is the 256 px one; a 64 px generator has nothing above 256 px to skip
    assert report["mode"] == "fast+256px" and report["render_size"] is None
    assert "losses:" in (out / "report.txt").read_text()
    grid = Image.open(out / "grid.png")
    assert grid.height > 256 and grid.width > 5 * 256  # target, photo, reconstruction, 3 strengths


@pytest.mark.slow
def test_demo_with_a_face_target_starts_from_its_inversion(tmp_path, tiny_files, pictures, capsys):
    out = tmp_path / "demo"
    code = cli.main(["demo", "--out", str(out), "--steps", "2", "--photo", str(pictures.portrait),
                     "--target", str(pictures.headshot), "--strengths", "1", "--mode", "official",
                     "--lr", "0.1", "--weight-decay", "0.01", *tiny_files.cli])
    assert code == 0
    direction = essence.load_direction(out / "headshot.safetensors")
    assert direction.meta["init"] == "e4e inversion of the target"
    settings = direction.meta["hyperparameters"]
    assert (settings["loop"], settings["lr"], settings["coefficient_lr"], settings["weight_decay"]) == (
        "official", 0.1, 0.1, 0.01)
    grid = Image.open(out / "grid.png")
    assert grid.height == 256 + 20 + 2 * 4 and grid.width > 3 * 256  # target, photo, reconstruction, 1 edit


def test_demo_photo_without_a_face_is_a_clear_error(tmp_path, tiny_files, pictures, capsys):
    code = cli.main(["demo", "--out", str(tmp_path / "d"), "--steps", "2", "--photo", str(pictures.cat), *tiny_files.cli])
    err = capsys.readouterr().err
    assert code == 2 and "no face found in cat.png" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()
