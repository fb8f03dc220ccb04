"""``essence train --init encoder --encoder-file F``: training that starts from an essence encoder's output
(issue 28 §4), on the tiny models; and the refusals, all before any training step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import essence
from essence import cli
from essence.encoding import load_essence_encoder
from essence.latents import clear_inversion_cache


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    clear_inversion_cache()


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory, tiny_files) -> Path:
    """An essence encoder trained against the tiny generator: one update on one generated face."""
    out = tmp_path_factory.mktemp("encoder") / "enc.safetensors"
    assert cli.main(["train-encoder", "--generated", "1", "--heldout", "0", "--max-steps", "0", "--out", str(out),
                     *tiny_files.cli]) == 0
    return out


@pytest.fixture(scope="module")
def foreign_encoder_file(encoder_file, tmp_path_factory) -> Path:
    """The same encoder, its file saying it was trained against another generator."""
    encoder = load_essence_encoder(encoder_file)
    encoder.meta["generator"] = {**encoder.meta["generator"], "fingerprint": "another-generator"}
    return encoder.save(tmp_path_factory.mktemp("foreign") / "foreign.safetensors")


def _train(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(["train", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_starts_from_the_encoders_essence_and_says_so(pictures, encoder_file, tmp_path, tiny_files, capsys):
    encoded = tmp_path / "encoded.safetensors"
    assert cli.main(["encode", str(pictures.portrait), "--encoder-file", str(encoder_file), "--out", str(encoded),
                     "--generator", str(tiny_files.generator), "--device", "cpu"]) == 0
    one = tmp_path / "one.safetensors"  # one step: the only objective seen is the start's, so the start is kept
    code, stdout, _ = _train([str(pictures.portrait), "--out", str(one), "--steps", "1", "--sample", "2", "--init",
                              "encoder", "--encoder-file", str(encoder_file), *tiny_files.cli], capsys)
    assert code == 0, stdout
    direction = essence.load_direction(one)
    assert direction.meta["init"] == "essence encoder enc.safetensors" and direction.meta["init_option"] == "encoder"
    assert torch.allclose(direction.tensor, essence.load_direction(encoded).tensor, atol=1e-6)

    out = tmp_path / "a.safetensors"
    code, stdout, _ = _train([str(pictures.portrait), "--out", str(out), "--steps", "4", "--sample", "2", "--init",
                              "encoder", "--encoder-file", str(encoder_file), *tiny_files.cli], capsys)
    assert code == 0, stdout
    trained = essence.load_direction(out)
    assert trained.meta["init"] == "essence encoder enc.safetensors" and len(trained.meta["loss_curve"]["total"]) == 4
    assert trained.meta["loss_curve"]["total"][0] == direction.meta["loss_curve"]["total"][0]
    assert "start: essence encoder enc.safetensors" in stdout


@pytest.mark.parametrize("options, message", [
    (["--init", "encoder"], "--encoder-file F"),
    (["--encoder-file", "enc.safetensors"], "add --init encoder"),
    (["--init", "random", "--encoder-file", "enc.safetensors"], "add --init encoder"),
])
def test_init_encoder_and_encoder_file_go_together(pictures, tmp_path, tiny_files, capsys, options, message):
    out = tmp_path / "a.safetensors"
    code, _, err = _train([str(pictures.portrait), "--out", str(out), *options, *tiny_files.cli], capsys)
    assert code == 2 and message in err and not out.exists()


def test_an_encoder_of_another_generator_is_refused_before_any_step(pictures, foreign_encoder_file, tmp_path,
                                                                    tiny_files, capsys, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("essence.cli.directions.train", no_training)
    out = tmp_path / "a.safetensors"
    code, _, err = _train([str(pictures.portrait), "--out", str(out), "--init", "encoder", "--encoder-file",
                           str(foreign_encoder_file), *tiny_files.cli], capsys)
    assert code == 2 and "another generator" in err and not out.exists()


def test_the_encoder_file_is_an_input_no_output_may_replace(pictures, encoder_file, tiny_files, capsys):
    before = encoder_file.read_bytes()
    code, _, err = _train([str(pictures.portrait), "--out", str(encoder_file), "--init", "encoder", "--encoder-file",
                           str(encoder_file), *tiny_files.cli], capsys)
    assert code == 2 and "error:" in err and encoder_file.read_bytes() == before


def test_batch_train_does_not_offer_init_encoder(pictures, tmp_path, tiny_files, capsys):
    assert cli.main(["batch", "train", str(pictures.portrait), "--out", str(tmp_path / "out"), "--init", "encoder",
                     *tiny_files.cli]) == 2
    assert "invalid choice: 'encoder'" in capsys.readouterr().err
