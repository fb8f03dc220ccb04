"""NaN or infinite inputs are refused with the input named; an implausibly large direction warns.

Without these checks a NaN source latent trains to a NaN-free-looking result of nonsense and a NaN
strength renders black images, with nothing saying which input was wrong.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from targetclip_files import OFFICIAL_DIRECTIONS

import essence
from essence import cli
from essence.errors import EssenceWarning
from essence.latents import apply_direction, mix_directions, strength_sweep
from essence.latents.direction import IMPLAUSIBLE_RMS, Direction
from essence.training import EssenceJob, TrainSettings, train

NAN, INF = float("nan"), float("inf")


def _direction(name: str = "d", scale: float = 0.1) -> Direction:
    return Direction(torch.full((1, 10, 64), scale), {"name": name})


def _latents(count: int = 3) -> torch.Tensor:
    return torch.randn(count, 10, 64, generator=torch.Generator().manual_seed(0)) * 0.5


# ----------------------------------------------------------------------------- library


@pytest.mark.parametrize("bad", [NAN, INF])
def test_training_refuses_source_latents_with_nan_or_inf_naming_the_row(generator, guide, target, bad):
    sources = _latents(4)
    sources[2, 3, 5] = bad
    with pytest.raises(essence.EssenceError, match=r"NaN or infinite values in the source latents \(row 2\)"):
        train(target, sources, generator, guide, EssenceJob(TrainSettings(steps=1)), start="random").result


def test_training_refuses_a_nan_learning_rate_or_loss_weight():
    with pytest.raises(essence.EssenceError, match="lr must be a finite number"):
        TrainSettings(lr=NAN)
    with pytest.raises(essence.EssenceError, match="lambda_consistency must be a finite number"):
        TrainSettings(lambda_consistency=INF)


def test_applying_refuses_nan_latents_strengths_and_per_layer_strengths():
    latents = _latents()
    with pytest.raises(essence.EssenceError, match=r"NaN or infinite values in the strength \(nan\)"):
        apply_direction(latents, _direction(), NAN)
    per_layer = [1.0] * 10
    per_layer[4] = INF
    with pytest.raises(essence.EssenceError, match=r"the per-layer strengths \(entry 4 = inf\)"):
        apply_direction(latents, _direction(), per_layer)
    latents[1, 0, 0] = NAN
    with pytest.raises(essence.EssenceError, match=r"NaN or infinite values in the latents \(row 1\)"):
        apply_direction(latents, _direction(), 1.0)
    with pytest.raises(essence.EssenceError, match=r"NaN or infinite values in the direction"):
        apply_direction(_latents(), torch.full((1, 10, 64), NAN))


def test_a_strength_sweep_refuses_a_nan_strength_before_rendering(generator):
    with pytest.raises(essence.EssenceError, match=r"the strengths \(entry 1 = nan\)"):
        strength_sweep(generator, _latents(1), _direction(), [0.0, NAN, 1.0])


def test_mixing_refuses_a_nan_weight_naming_its_direction():
    with pytest.raises(essence.EssenceError, match="the mix weight of 'b' is nan"):
        mix_directions([_direction("a"), _direction("b")], [1.0, NAN])


def test_a_latent_file_or_set_with_nan_is_refused_naming_the_row(tmp_path):
    latents = _latents()
    latents[0, 1, 2] = INF
    with pytest.raises(essence.errors.LatentFileError, match=r"NaN or infinite values in the latents \(row 0\)"):
        essence.LatentSet(latents)
    torch.save(latents, tmp_path / "opt_latents.pt")  # TargetCLIP's layout, imported on load
    with pytest.raises(essence.errors.LatentFileError, match=r"opt_latents.pt: NaN or infinite values in the latents"):
        essence.load_latents(tmp_path / "opt_latents.pt")


def test_an_implausibly_large_direction_warns_and_a_plausible_one_does_not():
    with pytest.warns(EssenceWarning, match=r"direction 'huge' is implausibly large: 1e\+30 root-mean-square"):
        _direction("huge", 1e30)
    with pytest.warns(EssenceWarning, match="implausibly large"):
        mix_directions([_direction("a", 1.0), _direction("b", 1.0)], [1e3, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", EssenceWarning)
        _direction("just below", IMPLAUSIBLE_RMS * 0.99)


def test_the_official_directions_are_far_below_the_implausible_size(shared):
    official = [shared(f"official/{name}.npy") for name in OFFICIAL_DIRECTIONS]
    with warnings.catch_warnings():
        warnings.simplefilter("error", EssenceWarning)
        largest = max(float(essence.load_direction(p).tensor.square().mean().sqrt()) for p in official)
    assert largest < IMPLAUSIBLE_RMS / 50  # the threshold is far from any published direction


# ----------------------------------------------------------------------------- command line


@pytest.fixture()
def tiny(tiny_files) -> list[str]:
    return ["--generator", str(tiny_files.generator), "--device", "cpu"]


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = cli.main(args)
    return code, capsys.readouterr().err


def test_cli_apply_refuses_a_nan_strength_or_mix_weight(tmp_path, tiny, capsys):
    direction = _direction("d").save(tmp_path / "d.safetensors")
    out = tmp_path / "out.png"
    code, err = _run(["apply", str(direction), "--strength", "0.5,nan", "--sample", "1", "--out", str(out), *tiny],
                     capsys)
    assert code == 2 and "NaN or infinite values in --strength" in err and not out.exists()
    code, err = _run(["apply", str(direction), f"{direction}:inf", "--sample", "1", "--out", str(out), *tiny], capsys)
    assert code == 2 and "the weight after ':' must be a finite number" in err and not out.exists()
    assert "Traceback" not in err


def test_cli_train_and_apply_refuse_source_latents_with_nan(tmp_path, tiny, tiny_files, pictures, capsys):
    latents = _latents(4)
    latents[3, 0, 0] = NAN
    torch.save(latents, tmp_path / "opt_latents.pt")
    out = tmp_path / "d.safetensors"
    code, err = _run(["train", str(pictures.portrait), "--sources", str(tmp_path / "opt_latents.pt"),
                      "--out", str(out), "--steps", "1", "--init", "random", "--guide", str(tiny_files.guide),
                      *tiny], capsys)
    assert code == 2 and "NaN or infinite values in the latents (row 3)" in err and not out.exists()
    direction = _direction("d").save(tmp_path / "dir.safetensors")
    code, err = _run(["apply", str(direction), "--latents", str(tmp_path / "opt_latents.pt"),
                      "--out", str(tmp_path / "o.png"), *tiny], capsys)
    assert code == 2 and "opt_latents.pt: NaN or infinite values in the latents (row 3)" in err


def test_cli_warns_about_an_implausibly_large_direction_and_still_renders(tmp_path, tiny, capsys):
    np.save(tmp_path / "huge.npy", np.full((1, 10, 64), 50.0, dtype=np.float32))
    out = tmp_path / "out.png"
    code, err = _run(["apply", str(tmp_path / "huge.npy"), "--sample", "1", "--out", str(out), *tiny], capsys)
    assert code == 0 and out.exists()
    assert "warning: direction 'huge' is implausibly large: 50 root-mean-square per W+ value" in err


# ----------------------------------------------------------------------------- nodes, as ComfyUI calls them

from comfy_stubs import comfy_env, extra_model_paths  # noqa: E402,F401


def _call_node(env, node_id: str, **inputs):
    """The node's function under inference mode, without the stub's range check: ComfyUI's own check
    (``val < min``, ``val > max``) is False for NaN, so a NaN from the API reaches the node."""
    cls = env.node(node_id)
    with torch.inference_mode():
        return getattr(cls(), cls.FUNCTION)(**inputs)


def test_nodes_refuse_a_nan_strength_sweep_bound_and_mix_weight(comfy_env):  # noqa: F811
    lib = comfy_env.pack.essence  # ComfyUI imports the library under the pack: its own classes
    (generator,) = comfy_env.run("EssenceGeneratorLoader", generator_file="stylegan2_tiny64.pt")
    (latents,) = comfy_env.run("EssenceSampleLatents", generator=generator, count=2, seed=0, truncation=0.7)
    a, b = (lib.Direction(torch.full((1, 10, 64), 0.1), {"name": name}) for name in "ab")
    with pytest.raises(lib.EssenceError, match=r"NaN or infinite values in the strength \(nan\)"):
        _call_node(comfy_env, "EssenceApply", latents=latents, direction=a, strength=NAN, layers="all")
    with pytest.raises(lib.EssenceError, match=r"NaN or infinite values in the strengths"):
        _call_node(comfy_env, "EssenceStrengthSweep", generator=generator, latents=latents, direction=a,
                   strength_start=0.0, strength_end=NAN, steps=3, layers="all")
    with pytest.raises(lib.EssenceError, match="the mix weight of 'b' is nan"):
        _call_node(comfy_env, "EssenceMix", direction_1=a, weight_1=1.0, direction_2=b, weight_2=NAN)
