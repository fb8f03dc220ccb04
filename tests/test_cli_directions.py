"""``python -m essence train | apply | import-official | export-npy | info`` with the tiny fixtures, files in
TargetCLIP's formats (tests/targetclip_files.py) and, when beside the checkout, TargetCLIP's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import essence
from essence import cli
from essence.latents import clear_inversion_cache


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    clear_inversion_cache()


def _train(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(["train", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_inverts_a_target_with_a_face_and_writes_a_direction(pictures, tmp_path, tiny_files, capsys):
    out = tmp_path / "a.safetensors"
    code, stdout, _ = _train([str(pictures.portrait), "--out", str(out), "--steps", "4", "--sample", "2",
                              *tiny_files.cli], capsys)
    assert code == 0, stdout
    direction = essence.load_direction(out)
    assert direction.meta["init"] == "e4e inversion of the target"
    assert direction.meta["name"] == "portrait" and direction.meta["target"] == ["portrait.jpg"]
    assert direction.meta["hyperparameters"]["steps"] == 4 and direction.thumbnail is not None
    assert "Saved" in stdout and "best loss" in stdout
    assert "licence" not in direction.meta  # the tiny test generator is not NVIDIA's FFHQ model


def test_train_takes_the_official_scripts_learning_rate_and_weight_decay(pictures, tmp_path, tiny_files, capsys):
    out = tmp_path / "a.safetensors"
    code, stdout, _ = _train([str(pictures.portrait), "--out", str(out), "--steps", "2", "--sample", "2",
                              "--init", "random", "--lr", "0.1", "--weight-decay", "0.01", *tiny_files.cli], capsys)
    assert code == 0, stdout
    settings = essence.load_direction(out).meta["hyperparameters"]
    assert (settings["lr"], settings["coefficient_lr"], settings["weight_decay"]) == (0.1, 0.1, 0.01)
    defaults = {action.dest: action.default for action in _train_parser()._actions}
    assert (defaults["lr"], defaults["weight_decay"]) == (0.2, 0.003)  # the official script's


def _train_parser():
    return cli.build_parser()._subparsers._group_actions[0].choices["train"]


def test_train_modes_are_the_librarys_and_a_mode_keeps_its_own_render_size(pictures, tmp_path, tiny_files,
                                                                          capsys):
    mode = next(action for action in _train_parser()._actions if action.dest == "mode")
    assert mode.choices == list(essence.training.TRAIN_MODES) and mode.default == "fast"
    out = tmp_path / "a.safetensors"
    code, _, err = _train([str(pictures.portrait), "--out", str(out), "--steps", "2", "--sample", "2",
                           "--init", "random", "--mode", "fast+256px", "--render-size", "32", *tiny_files.cli], capsys)
    assert code == 2 and "'fast+256px' sets render_size itself" in err and not out.exists()
    code, _, err = _train([str(pictures.portrait), "--out", str(out), "--steps", "2", "--sample", "2",
                           "--init", "random", "--mode", "fast+bf16", "--render-size", "32", *tiny_files.cli], capsys)
    assert code == 0, err
    settings = essence.load_direction(out).meta["hyperparameters"]
    assert (settings["loop"], settings["autocast"], settings["render_size"]) == ("fast", "bf16", 32)


@pytest.mark.slow
def test_train_falls_back_to_random_init_when_the_target_has_no_face(pictures, tmp_path, tiny_files, capsys):
    out = tmp_path / "cat.safetensors"
    code, _, err = _train([str(pictures.cat), "--out", str(out), "--steps", "2",
                           "--sample", "2", *tiny_files.cli], capsys)
    assert code == 0
    assert "started from a random (no face found in the target)" in err
    assert essence.load_direction(out).meta["init"] == "random (no face found in the target)"


@pytest.mark.slow
def test_train_with_init_inversion_required_fails_clearly_without_a_face(pictures, tmp_path, tiny_files, capsys):
    out = tmp_path / "cat.safetensors"
    code, _, err = _train([str(pictures.cat), "--out", str(out), "--steps", "2",
                           "--init", "inversion", *tiny_files.cli], capsys)
    assert code == 2 and "no face found" in err and not out.exists()


def test_train_refuses_sources_from_another_latent_space(pictures, targetclip_files, tmp_path, tiny_files, capsys):
    out = tmp_path / "x.safetensors"
    code, _, err = _train([str(pictures.portrait), "--out", str(out), "--steps", "2", "--init", "random",
                           "--sources", str(targetclip_files["opt_latents"]), *tiny_files.cli], capsys)
    assert code == 2 and "18 x 512" in err and "10 x 64" in err and not out.exists()


def test_interrupted_training_exits_130_and_writes_nothing(pictures, tmp_path, tiny_files, capsys, monkeypatch):
    from essence.cli import directions as cli_directions

    def interrupting_progress(total):
        def report(p):
            raise KeyboardInterrupt

        return report

    monkeypatch.setattr(cli_directions, "training_progress_bar", interrupting_progress)
    out = tmp_path / "cancelled.safetensors"
    code, _, err = _train([str(pictures.portrait), "--out", str(out), "--steps", "30", "--init", "random",
                           "--sample", "2", *tiny_files.cli], capsys)
    assert code == 130 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_apply_renders_a_sweep_grid(pictures, tmp_path, tiny_files, capsys):
    direction = tmp_path / "d.safetensors"
    assert _train([str(pictures.cat), "--out", str(direction), "--steps", "2", "--init", "random",
                   "--sample", "2", *tiny_files.cli], capsys)[0] == 0
    out = tmp_path / "grid.png"
    code = cli.main(["apply", str(direction), "--sample", "2", "--strength", "0,0.5,1", "--out", str(out),
                     *tiny_files.cli[:2], "--device", "cpu"])
    assert code == 0
    assert Image.open(out).size == (3 * 64 + 4 * 2, 2 * 64 + 3 * 2)  # 3 strengths x 2 faces, 2 px padding


@pytest.mark.slow
def test_apply_mixes_weighted_directions_and_inverts_photos(pictures, tmp_path, tiny_files, capsys):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for path, seed in ((a, "1"), (b, "2")):
        assert _train([str(pictures.portrait), "--out", str(path), "--steps", "2", "--init", "random",
                       "--seed", seed, "--sample", "2", *tiny_files.cli], capsys)[0] == 0
    out = tmp_path / "mix.jpg"
    code = cli.main(["apply", f"{a}:0.5", f"{b}:0.5", "--photo", str(pictures.headshot),
                     "--out", str(out), *tiny_files.cli[:2], *tiny_files.cli[4:]])
    assert code == 0 and Image.open(out).size == (64, 64)  # one face, one strength: no grid padding


def test_apply_refuses_an_official_direction_on_a_small_generator(targetclip_files, tmp_path, tiny_files, capsys):
    code = cli.main(["apply", str(targetclip_files["direction"]), "--sample", "1",
                     "--out", str(tmp_path / "x.png"), *tiny_files.cli[:2]])
    err = capsys.readouterr().err
    assert code == 2 and "18 x 512" in err and "10 x 64" in err
    assert not (tmp_path / "x.png").exists()


@pytest.fixture(params=["written here", "TargetCLIP's"])
def official(request, targetclip_files, shared, tmp_path) -> dict[str, Path]:
    """``keanu.npy``, ``w_plus.npy`` and ``opt_latents.pt``: files in TargetCLIP's formats written by the
    tests, and TargetCLIP's own files when they are beside the checkout."""
    if request.param == "TargetCLIP's":
        return {name: shared(f"official/{name}") for name in ("keanu.npy", "w_plus.npy", "opt_latents.pt")}
    folder = tmp_path / "official"
    folder.mkdir()
    (folder / "keanu.npy").write_bytes(targetclip_files["direction"].read_bytes())
    return {"keanu.npy": folder / "keanu.npy", "w_plus.npy": targetclip_files["w_plus"],
            "opt_latents.pt": targetclip_files["opt_latents"]}


def test_import_official_export_npy_and_info(official, tmp_path, capsys):
    assert cli.main(["import-official", str(official["keanu.npy"]), str(official["opt_latents.pt"]),
                     "--out-dir", str(tmp_path)]) == 0
    assert essence.load_direction(tmp_path / "keanu.safetensors").tensor.shape == (1, 18, 512)
    assert essence.load_latents(tmp_path / "opt_latents.safetensors").latents.shape == (4, 18, 512)
    assert cli.main(["export-npy", str(tmp_path / "keanu.safetensors"), str(tmp_path / "keanu.npy")]) == 0
    assert (tmp_path / "keanu.npy").read_bytes() == official["keanu.npy"].read_bytes()
    capsys.readouterr()
    assert cli.main(["info", str(tmp_path / "keanu.safetensors"), str(tmp_path / "opt_latents.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "direction [1, 18, 512]" in out and "latents [4, 18, 512]" in out
    assert "official TargetCLIP direction" in out
    assert cli.main(["info", "--json", str(tmp_path / "keanu.safetensors")]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["name"] == "keanu"


def test_import_official_converts_directions_and_both_kinds_of_latents(official, tmp_path, capsys):
    """TargetCLIP publishes directions as [1, 18, 512] .npy, its sources as opt_latents.pt and its
    evaluation faces as w_plus.npy [68, 18, 512]; each is recognised for what it holds."""
    files = [official["keanu.npy"], official["w_plus.npy"], official["opt_latents.pt"]]
    assert cli.main(["import-official", *map(str, files), "--out-dir", str(tmp_path / "D")]) == 0
    assert essence.load_direction(tmp_path / "D" / "keanu.safetensors").tensor.shape == (1, 18, 512)
    assert essence.load_latents(tmp_path / "D" / "w_plus.safetensors").latents.shape == (68, 18, 512)
    assert essence.load_latents(tmp_path / "D" / "opt_latents.safetensors").latents.shape == (4, 18, 512)
    capsys.readouterr()
    assert cli.main(["info", *map(str, files), *map(str, sorted((tmp_path / "D").iterdir()))]) == 0
    out = capsys.readouterr().out
    for shown in ("keanu.npy: direction [1, 18, 512]", "w_plus.npy: latents [68, 18, 512]",
                  "opt_latents.pt: latents [4, 18, 512]", "keanu.safetensors: direction [1, 18, 512]",
                  "w_plus.safetensors: latents [68, 18, 512]", "opt_latents.safetensors: latents [4, 18, 512]"):
        assert shown in out
    assert "created" not in out  # when TargetCLIP made them is unknown; no date is invented


def test_info_on_a_non_direction_file_is_a_clear_error(fixtures, capsys):
    assert cli.main(["info", str(fixtures / "stylegan2_tiny64_io.safetensors")]) == 2
    assert "not an Essence direction file" in capsys.readouterr().err


def _limit_faces_per_render(monkeypatch, most: int) -> None:
    """Make rendering more than ``most`` faces at once fail as a full GPU would."""
    from essence.networks import StyleGAN2Generator

    synthesize = StyleGAN2Generator.synthesize

    def limited(self, latent, *args, **kwargs):
        if latent.shape[0] > most:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return synthesize(self, latent, *args, **kwargs)

    monkeypatch.setattr(StyleGAN2Generator, "synthesize", limited)


def test_training_that_runs_out_of_memory_starts_again_in_smaller_chunks(pictures, tmp_path, tiny_files, capsys,
                                                                         monkeypatch):
    out = tmp_path / "a.safetensors"
    _limit_faces_per_render(monkeypatch, 1)
    code, stdout, _ = _train([str(pictures.portrait), "--out", str(out), "--steps", "3", "--sample", "4",
                              "--init", "random", *tiny_files.cli], capsys)
    assert code == 0, stdout
    assert "starting again with 2 source face(s) per pass" in stdout and "with 1 source face(s)" in stdout
    assert essence.load_direction(out).meta["hyperparameters"]["chunk_size"] == 1


def test_training_that_cannot_fit_even_one_face_says_what_to_lower(pictures, tmp_path, tiny_files, capsys,
                                                                   monkeypatch):
    out = tmp_path / "a.safetensors"
    _limit_faces_per_render(monkeypatch, 0)
    code, _, err = _train([str(pictures.portrait), "--out", str(out), "--steps", "3", "--sample", "2",
                           "--init", "random", *tiny_files.cli], capsys)
    assert code == 2 and "out of device memory" in err and "--render-size 256" in err and not out.exists()
