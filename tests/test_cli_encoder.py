"""``essence train-encoder`` -> kill -> the same command again -> ``essence encode`` -> ``essence apply``,
on the tiny models: the round trip a user makes, with a resume after a real kill (SIGKILL, no cleanup)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from encoder_trace import sample_picture

from essence import cli
from essence.encoding import load_checkpoint, load_essence_encoder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def picture_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pictures")
    for i, name in enumerate(("astronaut", "chelsea", "coffee")):
        sample_picture(name).save(folder / f"{i:02d}_{name}.png")
    return folder


def _train_args(tiny_files, folder: Path, out: Path) -> list[str]:
    return ["train-encoder", "--pictures", str(folder), "--heldout", "1", "--max-steps", "2",
            "--checkpoint-every", "1", "--validate-every", "1", "--out", str(out), *tiny_files.cli]


@pytest.mark.slow
def test_train_encoder_killed_resumes_then_encode_and_apply(tiny_files, picture_folder, tmp_path, capsys):
    out = tmp_path / "enc.safetensors"
    checkpoints = tmp_path / "enc.checkpoints"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    process = subprocess.Popen([sys.executable, "-m", "essence", *_train_args(tiny_files, picture_folder, out)],
                               cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while (not (checkpoints / "checkpoint.safetensors").is_file() and process.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.2)
        assert process.poll() is None, process.stderr.read().decode()
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert not out.exists()
    done = load_checkpoint(checkpoints).step
    assert 1 <= done <= 3

    assert cli.main(_train_args(tiny_files, picture_folder, out)) == 0
    printed = capsys.readouterr().out
    assert "Saved" in printed and (done == 3 or f"Resumed from step {done}" in printed)
    meta = load_essence_encoder(out).meta
    assert meta["updates"] == 3 and meta["data"]["kind"] == "pictures" and meta["data"]["heldout"] == 1

    direction = tmp_path / "essence.safetensors"
    assert cli.main(["encode", str(picture_folder / "00_astronaut.png"), "--no-align", "--encoder-file", str(out),
                     "--generator", str(tiny_files.generator), "--out", str(direction), "--device", "cpu"]) == 0
    assert direction.is_file()
    image = tmp_path / "applied.png"
    assert cli.main(["apply", str(direction), "--sample", "2", "--out", str(image), "--generator",
                     str(tiny_files.generator), "--device", "cpu"]) == 0
    assert image.is_file()


def test_encode_refuses_an_output_over_its_input_before_any_work(tiny_files, picture_folder, capsys):
    picture = picture_folder / "00_astronaut.png"
    assert cli.main(["encode", str(picture), "--encoder-file", str(tiny_files.encoder), "--out",
                     str(tiny_files.encoder)]) == 2
    assert "error:" in capsys.readouterr().err


def test_train_encoder_refuses_an_empty_folder(tiny_files, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(_train_args(tiny_files, tmp_path / "empty", tmp_path / "e.safetensors")) == 2
    assert "no pictures" in capsys.readouterr().err


def test_train_encoder_out_of_memory_goes_on_with_fewer_faces_a_pass_and_says_so(tiny_files, picture_folder,
                                                                                 tmp_path, monkeypatch, capsys):
    from essence.networks import StyleGAN2Generator

    real = StyleGAN2Generator.synthesize

    def one_face_a_pass(self, latents, *args, **kwargs):  # a device with room for one rendered face
        if len(latents) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, latents, *args, **kwargs)

    monkeypatch.setattr(StyleGAN2Generator, "synthesize", one_face_a_pass)
    out = tmp_path / "enc.safetensors"
    assert cli.main(_train_args(tiny_files, picture_folder, out)) == 0
    printed = capsys.readouterr().out
    assert ("Out of device memory: starting again with 2 source face(s) per pass (the same result, less memory; "
            "--chunk 2 skips this next time)." in printed)  # 5 default sources -> 2 -> 1
    assert "starting again with 1 source face(s) per pass" in printed and "Saved" in printed
    assert load_essence_encoder(out).meta["updates"] == 3
