"""A folder of targets encoded with an essence encoder: ``essence encode --targets-dir`` (in this process, faces
of several targets in each pass) and ``essence batch encode`` (one task per target on Ray) write, for each
target, the direction ``essence encode`` writes for it alone, report every target, and skip finished ones
when run again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from encoder_trace import sample_picture
from PIL import Image
from workflow_tools import tiny_essence_encoder

import essence
from essence import cli
from essence.encoding import encode_targets, folder_targets, load_essence_encoder

TOLERANCE = 1e-6
EXPECTED = {"astronaut": ["astronaut.png"], "chelsea": ["chelsea.jpg"], "pair": ["a.png", "b.png"]}


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("encoder") / "tiny_encoder.safetensors"
    path.write_bytes(tiny_essence_encoder())
    return path


def _small(name: str) -> Image.Image:
    return sample_picture(name).convert("RGB").resize((128, 128))


@pytest.fixture(scope="module")
def targets(tmp_path_factory) -> Path:
    """Two targets of one picture each, one of two pictures (a sub-folder), and files that are no target."""
    folder = tmp_path_factory.mktemp("targets")
    _small("astronaut").save(folder / "astronaut.png")
    _small("chelsea").save(folder / "chelsea.jpg", quality=95)
    (folder / "pair").mkdir()
    _small("coffee").save(folder / "pair" / "a.png")
    _small("astronaut").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "pair" / "b.png")
    (folder / "notes.txt").write_text("not a target")
    (folder / "empty").mkdir()
    return folder


def _pictures(targets: Path, name: str) -> list[str]:
    folder = targets / name if (targets / name).is_dir() else targets
    return [str(folder / file) for file in EXPECTED[name]]


@pytest.fixture(scope="module")
def alone(targets, encoder_file, tmp_path_factory) -> dict[str, Path]:
    """``essence encode`` of each target alone."""
    out = tmp_path_factory.mktemp("alone")
    for name in EXPECTED:
        assert cli.main(["encode", *_pictures(targets, name), "--no-align", "--encoder-file", str(encoder_file),
                         "--name", name, "--out", str(out / f"{name}.safetensors"), "--device", "cpu"]) == 0
    return {name: out / f"{name}.safetensors" for name in EXPECTED}


def _rows(out: Path) -> dict[str, dict]:
    return {row["key"]: row for row in json.loads((out / "report.json").read_text())["tasks"]}


def _same_as_alone(out: Path, alone: dict[str, Path]) -> None:
    assert sorted(p.name for p in out.glob("*.safetensors")) == sorted(f"{n}.safetensors" for n in EXPECTED)
    for name, single in alone.items():
        got, expected = essence.load_direction(out / f"{name}.safetensors"), essence.load_direction(single)
        torch.testing.assert_close(got.tensor, expected.tensor, rtol=0, atol=TOLERANCE)
        assert got.name == name and got.meta["init"] == "encoder"
        assert got.meta["targets"] == len(EXPECTED[name]) and got.meta["target"] == EXPECTED[name]


def test_the_folder_rule(targets):
    found = {t.name: [p.name for p in t.pictures] for t in folder_targets(targets)}
    assert found == EXPECTED


def test_targets_dir_writes_each_target_as_encode_does_alone_and_a_rerun_skips(targets, encoder_file, alone,
                                                                               tmp_path, capsys):
    out = tmp_path / "essences"
    command = ["encode", "--targets-dir", str(targets), "--encoder-file", str(encoder_file), "--out-dir", str(out),
               "--no-align", "--device", "cpu", "--no-progress"]
    assert cli.main(command) == 0
    _same_as_alone(out, alone)
    rows = _rows(out)
    assert {k: r["status"] for k, r in rows.items()} == {name: "done" for name in EXPECTED}
    assert rows["pair"]["pictures"] == 2
    assert "3 done, 0 skipped, 0 failed" in capsys.readouterr().out
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    assert cli.main(command) == 0
    assert {r["status"] for r in _rows(out).values()} == {"skipped"}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")} == before
    # a missing output is done again, and only it
    (out / "astronaut.safetensors").unlink()
    assert cli.main(command) == 0
    assert _rows(out)["astronaut"]["status"] == "done" and _rows(out)["chelsea"]["status"] == "skipped"


def test_faces_of_several_targets_in_one_pass_give_each_its_own_essence(targets, encoder_file):
    encoder = load_essence_encoder(encoder_file)
    found = folder_targets(targets)
    together = [r.direction.tensor for r in encode_targets(encoder, found, align=False)]
    apart = [r.direction.tensor for r in encode_targets(encoder, found, align=False, faces_per_pass=1)]
    for a, b in zip(together, apart):
        torch.testing.assert_close(a, b, rtol=0, atol=TOLERANCE)


@pytest.mark.slow
def test_a_folder_of_photos_is_aligned_like_one_target_alone_and_a_faceless_one_fails_alone(encoder_file, pictures,
                                                                                             tmp_path):
    """With alignment (the default), each photo's face is found and aligned as ``encode`` aligns it for
    one target; a picture without a face is that target's error, the others go on."""
    from essence.encoding import encode_essence
    from essence.errors import FaceNotFoundError
    from essence.faces import load_landmarker

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "portrait.jpg").write_bytes(pictures.portrait.read_bytes())
    (folder / "cat.png").write_bytes(pictures.cat.read_bytes())
    encoder, landmarks = load_essence_encoder(encoder_file), load_landmarker()
    results = {r.target.name: r for r in encode_targets(encoder, folder_targets(folder), landmarks=landmarks)}
    assert isinstance(results["cat"].error, FaceNotFoundError) and results["cat"].direction is None
    alone = encode_essence(encoder, [folder / "portrait.jpg"], landmarks=landmarks)
    torch.testing.assert_close(results["portrait"].direction.tensor, alone.tensor, rtol=0, atol=TOLERANCE)


def test_a_target_that_cannot_be_read_fails_alone(encoder_file, tmp_path, capsys):
    folder = tmp_path / "targets"
    folder.mkdir()
    _small("coffee").save(folder / "good.png")
    (folder / "broken.png").write_bytes((folder / "good.png").read_bytes()[:200])  # a truncated download
    out = tmp_path / "out"
    assert cli.main(["encode", "--targets-dir", str(folder), "--encoder-file", str(encoder_file), "--out-dir",
                     str(out), "--no-align", "--device", "cpu", "--no-progress"]) == 2
    rows = _rows(out)
    assert rows["good"]["status"] == "done" and rows["broken"]["status"] == "failed"
    assert (out / "good.safetensors").is_file() and not (out / "broken.safetensors").exists()
    assert "failed broken" in capsys.readouterr().err


def test_every_output_is_checked_before_any_work(targets, encoder_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    encoder_copy = out / "chelsea.safetensors"  # the output of target chelsea would replace the encoder
    encoder_copy.write_bytes(encoder_file.read_bytes())
    assert cli.main(["encode", "--targets-dir", str(targets), "--encoder-file", str(encoder_copy), "--out-dir",
                     str(out), "--no-align", "--device", "cpu", "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["chelsea.safetensors"]  # nothing written, not even a report
    assert cli.main(["encode", "--targets-dir", str(targets), "--encoder-file", str(encoder_file), "--out",
                     str(tmp_path / "x.safetensors")]) == 2
    assert "leave out --out" in capsys.readouterr().err
    assert cli.main(["encode", "--targets-dir", str(targets), "--encoder-file", str(encoder_file)]) == 2
    assert "--out-dir" in capsys.readouterr().err


@pytest.mark.slow
def test_batch_encode_on_ray_writes_the_same_files_and_a_complete_report(local_ray, targets, encoder_file, alone,
                                                                         tmp_path, capsys):
    out = tmp_path / "essences"
    command = ["batch", "encode", str(targets), "--encoder-file", str(encoder_file), "--out", str(out), "--no-align",
               "--device", "cpu", "--workers", "2", "--no-progress"]
    assert cli.main(command) == 0
    _same_as_alone(out, alone)
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["tasks"] == 3 and report["summary"]["done"] == 3 and report["summary"]["failed"] == 0
    assert {row["key"]: row["status"] for row in report["tasks"]} == {name: "done" for name in EXPECTED}
    assert all(row["worker"] and row["output"].endswith(f"{row['key']}.safetensors") for row in report["tasks"])
    assert (out / "report.csv").is_file()
    capsys.readouterr()
    assert cli.main(command) == 0
    assert {r["status"] for r in _rows(out).values()} == {"skipped"}
    assert "3 skipped" in capsys.readouterr().out
