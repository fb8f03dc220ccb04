"""Every file a command reads is an input, every output is checked before any work, every write can
fail cleanly, and impossible numbers or options that would do nothing are refused by the parser.

Each case runs the real command line and asserts what the user sees: exit 2, one ``error:`` line and
no traceback, the inputs' bytes unchanged, and nothing half-written."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import essence
from essence.cli import main as cli_main
from essence.faces import scikit_image_picture
from essence.latents import Direction

REPO = Path(__file__).resolve().parents[1]
NO_MODEL = ["--generator", "/nonexistent/generator.pt", "--device", "cpu"]


def _no_model(argv: list) -> list:
    """``argv`` with a generator that does not exist, for the commands that load one: any model load
    would then be the error, so a refusal seen instead came before any work."""
    return [*argv, *NO_MODEL] if argv[0] not in ("export-npy", "import-official") else argv


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    photo = tmp_path / "photo.png"
    shutil.copy(scikit_image_picture("astronaut.png"), photo)
    direction = Direction(torch.full((1, 18, 512), 0.01), {"name": "d"}).save(tmp_path / "d.safetensors")
    return {"photo": photo, "direction": direction}


def _refused(argv: list, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command; it must end with exit 2 and one ``error:`` line, and that line is returned."""
    code = cli_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    assert code == 2 and len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("error: "), err
    return errors[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- 1. inputs found by lookup


@pytest.mark.parametrize("command", ["evaluate --json", "invert --out"])
def test_an_output_onto_a_model_found_by_the_default_lookup_is_refused(command, inputs, tmp_path, monkeypatch,
                                                                         capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("ESSENCE_WEIGHTS_DIR", str(weights))
    model = weights / ("model_ir_se50.pth" if command.startswith("evaluate") else "e4e_ffhq_encode.pt")
    model.write_bytes(b"the user's model file")
    argv = {"evaluate --json": ["evaluate", inputs["direction"], "--target", inputs["photo"], "--json", model],
            "invert --out": ["invert", inputs["photo"], "--out", model]}[command]
    before = _snapshot(tmp_path)
    line = _refused(argv + NO_MODEL, capsys)
    assert "writing it would replace the input" in line and model.name in line
    assert _snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- 1. suffixes and companions


@pytest.mark.parametrize("argv, ending", [
    (["invert", "{photo}", "--out", "{photo2}"], ".safetensors"),
    (["sample", "--out", "{photo2}"], ".safetensors"),
    (["train", "{photo}", "--out", "{photo2}"], ".safetensors"),
    (["apply", "{direction}", "--photo", "{photo}", "--refine", "pti", "--out", "o.gif"], ".png, .jpg, .jpeg or .webp"),
    (["apply", "{direction}", "--video", "{photo}", "--out", "o.png"], ".mp4"),
    (["export-npy", "{direction}", "{photo2}"], ".npy"),
    (["evaluate", "{direction}", "--target", "{photo}", "--plot", "{photo2}.jpg"], ".png"),
])
def test_every_output_has_the_ending_of_what_it_holds(argv, ending, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "other.png"  # a picture a shell glob might have put in --out's place
    shutil.copy(inputs["photo"], other)
    names = {"photo": inputs["photo"], "photo2": other, "direction": inputs["direction"]}
    before = _snapshot(tmp_path)
    line = _refused(_no_model([a.format(**names) for a in argv]), capsys)
    assert "must end in" in line and ending in line
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("argv", [
    ["invert", "{photo}", "--out", "faces.tuned.safetensors"],
    ["invert", "{photo}", "--refine", "pti", "--out", "other.tuned.safetensors"],
    ["sample", "--out", "faces.tuned.safetensors"],
    ["train", "{photo}", "--out", "d.tuned.safetensors"],
    ["import-official", "{npy}", "--out-dir", "."],
])
def test_a_latent_files_companion_name_is_never_an_output(argv, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    faces = essence.LatentSet(torch.zeros(1, 10, 64), [{"kind": "sample"}]).save(tmp_path / "faces.safetensors")
    (tmp_path / "faces.tuned.safetensors").write_bytes(b"the tuned weights of faces.safetensors")
    npy = tmp_path / "d.tuned.npy"
    Direction.load(inputs["direction"]).to_npy(npy)
    before = _snapshot(tmp_path)
    line = _refused(_no_model([a.format(photo=inputs["photo"], npy=npy) for a in argv]), capsys)
    assert ".tuned.safetensors belong to the tuned weights of a latent file" in line
    assert _snapshot(tmp_path) == before
    assert essence.load_latents(faces).latents.shape == (1, 10, 64)


def test_reconstruction_pictures_that_would_replace_an_input_are_refused_before_any_work(inputs, tmp_path, capsys):
    folder = tmp_path / "faces"
    folder.mkdir()
    second = folder / "photo_face0.png"  # what --reconstruction folder writes for photo.png's first face
    shutil.copy(inputs["photo"], second)
    before = _snapshot(tmp_path)
    line = _refused(["invert", inputs["photo"], second, "--out", tmp_path / "faces.safetensors",
                     "--reconstruction", folder, *NO_MODEL], capsys)
    assert "--reconstruction" in line and "photo_face0.png" in line and "is the input" in line
    assert _snapshot(tmp_path) == before


def test_two_outputs_with_one_name_are_refused(inputs, tmp_path, capsys):
    report = tmp_path / "report.json"
    line = _refused(["evaluate", inputs["direction"], "--target", inputs["photo"], "--json", report, "--plot", report,
                     *NO_MODEL], capsys)
    assert "--plot" in line and "is also --json" in line
    assert not report.exists()


# ----------------------------------------------------------------------------- 2. writes that fail


def _limited_file_size(limit: int):
    """A child process whose files cannot grow past ``limit`` bytes: the kernel refuses the write
    (EFBIG), as a full disk or a quota does with ENOSPC or EDQUOT."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="needs POSIX file-size limits")
def test_a_safetensors_file_the_disk_refuses_is_one_error_line_and_nothing_half_written(tiny_files, tmp_path):
    out = tmp_path / "faces" / "sampled.safetensors"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "essence", "sample", "--count", "64", "--out", str(out),
                           "--generator", str(tiny_files.generator), "--device", "cpu"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=_limited_file_size(20_000))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1
    assert lines[0].startswith(f"error: {out}: file too large")
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_a_trained_direction_the_disk_refuses_is_saved_beside_the_folder_and_named(tiny_files, pictures, tmp_path,
                                                                                   monkeypatch, capsys):
    import safetensors.torch
    from safetensors import SafetensorError

    out = tmp_path / "results" / "portrait.safetensors"
    out.parent.mkdir()
    real_save = safetensors.torch.save_file

    def full_disk_in_results(tensors, filename, metadata=None):
        if Path(filename).parent == out.parent:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk_in_results)
    line = _refused(["train", pictures.portrait, "--out", out, "--sample", "2", "--steps", "2", "--init", "random",
                     "--generator", tiny_files.generator, "--guide", tiny_files.guide, "--device", "cpu"], capsys)
    rescued = tmp_path / "portrait.safetensors"
    assert f"cannot write {out}: no space left on device" in line and f"saved as {rescued} instead" in line
    assert Direction.load(rescued).tensor.shape == (1, 10, 64)
    assert list(out.parent.iterdir()) == []  # no temporary file left in the folder that refused it


# ----------------------------------------------------------------------------- 3. impossible numbers


@pytest.mark.parametrize("argv, option", [
    (["invert", "{photo}", "--out", "f.safetensors", "--batch-size", "0"], "--batch-size"),
    (["train", "{photo}", "--out", "d.safetensors", "--sample", "0"], "--sample"),
    (["train", "{photo}", "--out", "d.safetensors", "--steps", "-5"], "--steps"),
    (["train", "{photo}", "--out", "d.safetensors", "--lr", "nan"], "--lr"),
    (["train", "{photo}", "--out", "d.safetensors", "--candidates", "0"], "--candidates"),
    (["apply", "{direction}", "--sample", "0", "--out", "o.png"], "--sample"),
    (["sample", "--count", "0", "--out", "f.safetensors"], "--count"),
    (["evaluate", "{direction}", "--target", "{photo}", "--sample", "-1"], "--sample"),
    (["apply", "{direction}", "--video", "{photo}", "--out", "o.mp4", "--refine", "pti", "--pti-frames", "0"],
     "--pti-frames"),
    (["batch", "apply", "{direction}", "--photos", "{photo}", "--out", "b", "--workers", "0"], "--workers"),
    (["batch", "video", "{direction}", "--video", "{photo}", "--out", "o.mp4", "--chunk-frames", "0"],
     "--chunk-frames"),
])
def test_impossible_numbers_are_refused_by_the_parser(argv, option, inputs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    line = _refused([a.format(**inputs) for a in argv], capsys)
    assert f"argument {option}" in line and ("must be at least" in line or "finite" in line)
    assert _snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- 4. options that would do nothing


@pytest.mark.parametrize("extra, named", [
    (["--sample", "2", "--smoothing", "offline"], "--smoothing"),
    (["--photo", "{photo}", "--paste-mask", "square", "--face-tracking", "off"], "--paste-mask and --face-tracking"),
    (["--photo", "{photo}", "--seed", "3"], "--seed"),
])
def test_options_that_would_do_nothing_are_refused(extra, named, inputs, tmp_path, capsys):
    line = _refused(["apply", inputs["direction"], "--out", tmp_path / "o.png",
                     *[a.format(**inputs) for a in extra], *NO_MODEL], capsys)
    assert line.startswith(f"error: {named} only act")
    assert not (tmp_path / "o.png").exists()
