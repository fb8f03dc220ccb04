"""Pivotal tuning from the user's side: ``invert(tuning=...)``, latent files that carry the tuned
generators beside them, the command line's ``--refine pti`` and Invert Face's ``refine`` input, with
the tiny models, dlib's real landmark model and the deterministic AlexNet stand-in for LPIPS."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from comfy_stubs import comfy_env, extra_model_paths  # noqa: F401
from perceptual_weights import FILENAME, write_alexnet
from workflow_tools import load_image

import essence
from essence import cli
from essence.errors import LatentFileError, MissingWeightsError
from essence.faces import align_faces, pil_to_model
from essence.latents import PTI, PivotalTuning, clear_inversion_cache, tuned_path
from essence.networks import load_perceptual

QUICK = replace(PTI, steps=12)  # enough steps to move the weights; the trace tests check the recipe itself


@pytest.fixture(autouse=True)
def fresh_cache() -> None:
    clear_inversion_cache()


@pytest.fixture(scope="module")
def alexnet(tmp_path_factory) -> Path:
    return write_alexnet(tmp_path_factory.mktemp("lpips") / FILENAME)


@pytest.fixture(scope="module")
def tuned(pictures, generator, encoder, alexnet) -> essence.latents.Inversion:
    """The portrait and the headshot, inverted and tuned (12 steps a face)."""
    clear_inversion_cache()
    return essence.invert([pictures.portrait, pictures.headshot], encoder, generator=generator,
                          tuning=PivotalTuning(QUICK, load_perceptual(alexnet, cache=False)),
                          return_reconstruction=True)


def psnr(images: torch.Tensor, targets: torch.Tensor) -> float:
    mse = ((images.clamp(-1, 1) - targets) / 2).pow(2).mean()
    return float(10 * torch.log10(1 / mse))


def test_invert_with_pti_tunes_one_generator_per_face_and_reconstructs_closer(tuned, pictures, generator):
    keys = [source["tuned"] for source in tuned.sources]
    assert len(set(keys)) == 2 and set(tuned.tunings) == set(keys)
    for key, source in zip(keys, tuned.sources):
        info = tuned.tunings[key].info
        assert info["source"]["name"] == source["name"] and info["steps"] <= QUICK.steps
    crops = [align_faces(path, generator.size, all_faces=False)[0].crop for path in (pictures.portrait,
                                                                                     pictures.headshot)]
    photos = pil_to_model(crops)
    plain = essence.render(generator, tuned.latents)
    assert tuned.reconstructions is not None
    for row in range(2):  # the reconstructions are the tuned generators' renders, and closer to the photo
        assert psnr(tuned.reconstructions[row:row + 1], photos[row:row + 1]) > psnr(plain[row:row + 1],
                                                                                   photos[row:row + 1]) + 1.0


def test_a_face_given_twice_is_tuned_once(pictures, generator, encoder, alexnet):
    heard: list[tuple[int, int]] = []
    tuning = PivotalTuning(replace(PTI, steps=3), load_perceptual(alexnet, cache=False),
                           progress=lambda done, total: heard.append((done, total)))
    result = essence.invert([pictures.portrait, pictures.portrait], encoder, generator=generator, tuning=tuning)
    assert len(result.tunings) == 1 and result.sources[0]["tuned"] == result.sources[1]["tuned"]
    assert heard[-1] == (6, 6)  # the progress reaches its end


def test_bad_tuning_is_refused_when_it_is_made_before_any_work():
    with pytest.raises(essence.EssenceError, match="at least 1 step, got 0"):
        PivotalTuning(replace(PTI, steps=0))


def test_edits_keep_the_tuned_weights_and_draw_with_them(tuned, generator):
    faces = tuned.latent_set(generator)
    direction = essence.Direction(torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(1)) * 0.3)
    edited, _ = essence.latents.edit_latents(faces, direction, 1.0)
    assert edited.tuned_keys() == faces.tuned_keys() and edited.select([1]).tuned_keys() == faces.tuned_keys()[1:]
    drawn = essence.render(generator, edited.latents, tuned=edited.tuned_rows())
    for row, key in enumerate(faces.tuned_keys()):
        alone = essence.render(generator, edited.latents[row:row + 1], tuned=faces.tuned[key])
        torch.testing.assert_close(drawn[row:row + 1], alone)
    assert not torch.allclose(drawn, essence.render(generator, edited.latents), atol=1e-3)
    sweep = essence.latents.strength_sweep(generator, faces.latents, direction, [0.0, 1.0], tuned=faces.tuned_rows())
    torch.testing.assert_close(sweep[1::2], drawn)  # strength 1 of each face, drawn tuned


def test_a_saved_set_writes_its_tuned_weights_beside_it_and_reads_them_back(tuned, generator, tmp_path):
    faces = tuned.latent_set(generator)
    path = faces.save(tmp_path / "faces.safetensors")
    companion = tuned_path(path)
    assert companion == tmp_path / "faces.tuned.safetensors" and companion.is_file()
    back = essence.load_latents(path, generator)
    assert back.tuned_keys() == faces.tuned_keys() and back.meta["tuned"]["file"] == companion.name
    torch.testing.assert_close(essence.render(generator, back.latents, tuned=back.tuned_rows()),
                               essence.render(generator, faces.latents, tuned=faces.tuned_rows()))
    again = back.save(tmp_path / "copy.safetensors")  # a loaded set saves its tuned weights again
    assert tuned_path(again).is_file() and essence.load_latents(again).tuned_rows() is not None


def test_without_its_companion_a_tuned_set_loads_and_drawing_it_names_the_missing_file(tuned, generator,
                                                                                       tmp_path):
    path = tuned.latent_set(generator).save(tmp_path / "faces.safetensors")
    tuned_path(path).unlink()
    back = essence.load_latents(path)  # the latents themselves are intact
    assert back.latents.shape == (2, 10, 64)
    with pytest.raises(MissingWeightsError, match=r"faces\.tuned\.safetensors\) are not beside it. Keep "
                                                  r"faces\.safetensors and faces\.tuned\.safetensors together"):
        back.tuned_rows()
    assert essence.sample_latents(generator, 1).tuned_rows() is None  # nothing tuned, nothing to read


def test_a_companion_of_another_set_or_damaged_is_not_used(tuned, generator, tmp_path):
    first = tuned.latent_set(generator).save(tmp_path / "a" / "faces.safetensors")
    second = tuned.latent_set(generator).save(tmp_path / "b" / "faces.safetensors")
    tuned_path(second).replace(tuned_path(first))  # same name, other set
    with pytest.raises(MissingWeightsError, match="holds the tuned weights of another latent file"):
        essence.load_latents(first).tuned_rows()
    tuned_path(first).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")  # a header, but nothing in it
    with pytest.raises(MissingWeightsError, match="cannot be read"):
        essence.load_latents(first).tuned_rows()


def test_a_failed_latent_save_leaves_no_companion(tuned, generator, tmp_path, monkeypatch):
    import essence.latents.latent_set as latent_set

    faces = tuned.latent_set(generator)
    real = latent_set.save_safetensors_atomic

    def full_disk(tensors, metadata, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(latent_set, "save_safetensors_atomic", full_disk)
    monkeypatch.setattr(latent_set, "save_tuned", lambda path, tunings, set_id: real(
        {"x": torch.zeros(1)}, {"format": "essence.tuned"}, path))
    with pytest.raises(OSError):
        faces.save(tmp_path / "faces.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_rows_naming_tuned_weights_that_are_not_given_are_refused(tuned):
    with pytest.raises(LatentFileError, match="rows name tuned weights that are not given"):
        essence.LatentSet(tuned.latents, [dict(s) for s in tuned.sources])


def test_training_on_tuned_faces_uses_their_pivots_in_the_plain_generator(tuned, models, target):
    generator, guide = models
    faces = tuned.latent_set(generator)
    result = essence.train(target, faces.latents, generator, guide,
                           essence.EssenceJob(essence.TrainSettings(steps=2, loop="fast")), start="random").result
    same = essence.train(target, faces.latents.clone(), generator, guide,
                         essence.EssenceJob(essence.TrainSettings(steps=2, loop="fast")), start="random").result
    assert result.losses == pytest.approx(same.losses, rel=1e-6)


# ----------------------------------------------------------------------------- the command line


def test_cli_invert_refine_pti_writes_both_files_and_tuned_reconstructions(pictures, tiny_files, alexnet, tmp_path,
                                                                           capsys):
    out = tmp_path / "faces.safetensors"
    code = cli.main(["invert", str(pictures.portrait), "--out", str(out), "--encoder", str(tiny_files.encoder),
                     "--refine", "pti", "--pti-steps", "8", "--lpips", str(alexnet),
                     "--reconstruction", str(tmp_path / "rec"), "--device", "cpu"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "wrote the generator tuned to each face (1 x float16 differences" in printed.out
    faces = essence.load_latents(out)
    generator = essence.load_generator(tiny_files.encoder)
    tuned_face = essence.render(generator, faces.latents, tuned=faces.tuned_rows())
    written = pil_to_model([essence.faces.load_image(tmp_path / "rec" / "portrait_face0.png")])
    assert (written - tuned_face.clamp(-1, 1)).abs().max() < 2 / 255 + 1e-6  # the PNG is the tuned render


def test_cli_apply_draws_tuned_latents_with_their_generators(pictures, tiny_files, alexnet, tmp_path, capsys):
    faces = tmp_path / "faces.safetensors"
    assert cli.main(["invert", str(pictures.portrait), "--out", str(faces), "--encoder", str(tiny_files.encoder),
                     "--generator", str(tiny_files.generator), "--refine", "pti", "--pti-steps", "8",
                     "--lpips", str(alexnet), "--device", "cpu"]) == 0
    direction = tmp_path / "d.safetensors"
    essence.Direction(torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(2)) * 0.3).save(direction)
    common = ["--generator", str(tiny_files.generator), "--strength", "0", "--device", "cpu"]
    assert cli.main(["apply", str(direction), "--latents", str(faces), "--out", str(tmp_path / "t.png"), *common]) == 0
    loaded = essence.load_latents(faces)
    generator = essence.load_generator(tiny_files.generator)
    expected = essence.render(generator, loaded.latents, tuned=loaded.tuned_rows())
    grid = pil_to_model([essence.faces.load_image(tmp_path / "t.png")])  # a grid of one image is that image
    assert (grid - expected.clamp(-1, 1)).abs().max() < 2 / 255 + 1e-6
    tuned_path(faces).unlink()
    assert cli.main(["apply", str(direction), "--latents", str(faces), "--out", str(tmp_path / "u.png"), *common]) == 2
    assert "faces.tuned.safetensors) are not beside it" in capsys.readouterr().err
    assert not (tmp_path / "u.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--sample", "2", "--refine", "pti"], "--refine pti tunes the generator to photos or a clip: use it with "
                                           "--photo or --video"),
    (["--sample", "2", "--pti-steps", "5"], "--pti-steps need(s) --refine pti"),
    (["--sample", "2", "--pti-steps", "5", "--lpips", "x.pth"], "--pti-steps, --lpips need(s) --refine pti"),
    (["--sample", "2", "--refine", "pti", "--pti-frames", "5"], "--pti-frames only acts with --video"),
    (["--video", "clip.mp4", "--refine", "pti", "--pti-frames", "0"], "argument --pti-frames: must be at least 1, got 0"),
])
def test_cli_apply_refuses_refine_options_that_cannot_apply(tiny_files, tmp_path, capsys, args, message):
    direction = tmp_path / "d.safetensors"
    essence.Direction(torch.zeros(1, 10, 64)).save(direction)
    code = cli.main(["apply", str(direction), *args, "--generator", str(tiny_files.generator), "--out",
                     str(tmp_path / "x.png"), "--device", "cpu"])
    assert code == 2 and message in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_cli_invert_refine_pti_without_alexnet_says_where_to_get_it(pictures, tiny_files, tmp_path, capsys):
    out = tmp_path / "faces.safetensors"
    code = cli.main(["invert", str(pictures.portrait), "--out", str(out), "--encoder", str(tiny_files.encoder),
                     "--refine", "pti", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and FILENAME in err and "alexnet-imagenet" in err
    assert not out.exists() and not tuned_path(out).exists()


# ----------------------------------------------------------------------------- ComfyUI


def test_invert_face_node_with_pti_hands_tuned_latents_to_render(comfy_env, pictures):
    write_alexnet(comfy_env.models_dir / "essence_lpips" / FILENAME)
    (landmarks,) = comfy_env.run("EssenceLandmarkLoader", landmarks_file="auto")
    (encoder,) = comfy_env.run("EssenceEncoderLoader", encoder_file="e4e_tiny64.pt")
    (generator,) = comfy_env.run("EssenceGeneratorLoader", generator_file="[e4e] e4e_tiny64.pt")
    photo = load_image(pictures.portrait)
    with pytest.raises(comfy_env.pack.essence.EssenceError, match="connect the generator input"):
        comfy_env.run("EssenceInvertFace", encoder=encoder, landmarks=landmarks, images=photo, face_index=0,
                      refine="pti")
    latents, _, _ = comfy_env.run("EssenceInvertFace", encoder=encoder, landmarks=landmarks, images=photo,
                                  face_index=0, refine="pti", generator=generator, pti_steps=6)
    (face,) = comfy_env.run("EssenceRender", generator=generator, latents=latents)
    (plain,) = comfy_env.run("EssenceRender", generator=generator,
                             latents=essence.LatentSet(latents.latents, [{"kind": "photo"}]))
    assert latents.tuned_rows() is not None and not torch.allclose(face, plain, atol=1e-3)
    expected = essence.render(generator, latents.latents, tuned=latents.tuned_rows())
    torch.testing.assert_close(face[0].permute(2, 0, 1), ((expected[0].clamp(-1, 1) + 1) / 2), atol=1e-5, rtol=0)


def test_tuned_weights_refuse_a_generator_with_other_synthesis_weights(tuned, generator):
    """A fine-tune may keep the mapping network (the generator's fingerprint) and change the rest."""
    import copy

    weights = next(iter(tuned.tunings.values()))
    other = copy.deepcopy(generator)
    with torch.no_grad():
        other.to_rgb1.conv.weight.mul_(-1)
    assert other.fingerprint() == generator.fingerprint()
    with pytest.raises(essence.errors.IncompatibleWeightsError, match="belong to another generator"):
        essence.render(other, tuned.latents[:1], tuned=weights)


def test_one_tuning_shared_by_several_keys_saves(tuned, tmp_path):
    from essence.networks import TunedFile, save_tuned

    weights = next(iter(tuned.tunings.values()))
    path = save_tuned(tmp_path / "t.safetensors", {"a": weights, "b": weights}, "set")
    loaded = TunedFile(path)
    assert set(loaded) == {"a", "b"}
    for name, delta in loaded["b"].deltas.items():
        assert torch.equal(delta, weights.deltas[name])


def test_a_failed_save_over_an_earlier_pair_leaves_that_pair_intact(tuned, generator, tmp_path, monkeypatch):
    import essence.latents.latent_set as latent_set

    path = tuned.latent_set(generator).save(tmp_path / "faces.safetensors")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(tensors, metadata, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(latent_set, "save_safetensors_atomic", full_disk)
    with pytest.raises(OSError):
        tuned.latent_set(generator).save(path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    assert essence.load_latents(path).tuned_rows() is not None  # still a working pair
