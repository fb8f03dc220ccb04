"""The ComfyUI nodes, executed as ComfyUI executes them (inside inference mode, through FUNCTION)
against stand-ins for ComfyUI's modules and a real models folder holding the tiny fixtures."""

from __future__ import annotations

import inspect
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from comfy_stubs import (ComfyEnv, InterruptProcessingException, comfy_env, drop_pack, extra_model_paths,  # noqa: F401
                         import_pack)
from PIL import Image

NODE_IDS = ["EssenceGeneratorLoader", "EssenceEncoderLoader", "EssenceGuideLoader", "EssenceLandmarkLoader",
            "EssenceIdentityLoader", "EssenceAlignFace", "EssenceInvertFace", "EssencePasteBack",
            "EssenceSampleLatents", "EssenceApply", "EssenceTrain", "EssenceSave", "EssenceLoad", "EssenceMix",
            "EssenceRender", "EssenceStrengthSweep", "EssenceMetrics", "EssenceTrainedEncoderLoader", "EssenceEncode",
            "EssenceTrainEncoder"]
CATEGORIES = {"essence/loaders", "essence/latents", "essence/train", "essence/directions", "essence/render",
              "essence/faces"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
LINK_TYPES = {"IMAGE", "ESSENCE_GENERATOR", "ESSENCE_ENCODER", "ESSENCE_GUIDE", "ESSENCE_LATENT", "ESSENCE_DIRECTION",
              "ESSENCE_LANDMARKS", "ESSENCE_ALIGNMENT", "ESSENCE_IDENTITY", "ESSENCE_TRAINED_ENCODER"}
TRAIN_STEPS = 12


def target_image(pictures, size: int = 128) -> torch.Tensor:
    """A target picture (the headshot) as LoadImage outputs it: IMAGE [1, H, W, 3] float32 in 0..1."""
    image = Image.open(pictures.headshot).convert("RGB").resize((size, size))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]


@pytest.fixture
def models(comfy_env):
    (generator,) = comfy_env.run("EssenceGeneratorLoader", generator_file="stylegan2_tiny64.pt")
    (guide,) = comfy_env.run("EssenceGuideLoader", clip_file="clip_tiny.pt")
    return generator, guide


def sample(env: ComfyEnv, generator, count: int = 4, seed: int = 0):
    return env.run("EssenceSampleLatents", generator=generator, count=count, seed=seed, truncation=0.7)[0]


def train(env: ComfyEnv, generator, guide, pictures, steps: int = TRAIN_STEPS, **overrides):
    inputs = dict(target=target_image(pictures), sources=sample(env, generator), generator=generator, guide=guide,
                  steps=steps, lambda_transfer=1.0, lambda_consistency=0.5, seed=3, mode="fast", init="random",
                  chunk_size=0, preview_every=5)
    return env.run("EssenceTrain", **{**inputs, **overrides})


# ----------------------------------------------------------------------------- registration


def test_pack_imports_without_comfyui(monkeypatch):
    for name in ("folder_paths", "comfy", "comfy.utils", "comfy.model_management"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        pack = import_pack()
        assert sorted(pack.NODE_CLASS_MAPPINGS) == sorted(NODE_IDS)
        assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_IDS)
        assert pack.nodes.host.register_model_folders() is False
        assert pack.essence.storage.weights._folder_provider is None
        for cls in pack.NODE_CLASS_MAPPINGS.values():
            cls.INPUT_TYPES()  # dropdowns work (empty folders) without ComfyUI
    finally:
        drop_pack()


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_input_types_are_valid(comfy_env, node_id):
    cls = comfy_env.node(node_id)
    assert node_id.startswith("Essence") and cls.CATEGORY in CATEGORIES
    assert cls.DESCRIPTION and comfy_env.pack.NODE_DISPLAY_NAME_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional"}
    inputs = {**spec["required"], **spec.get("optional", {})}
    for name, declaration in inputs.items():
        kind, options = declaration
        where = f"{node_id}.{name}"
        assert options.get("tooltip"), f"{where} has no tooltip"
        if isinstance(kind, list):
            assert kind and all(isinstance(v, str) for v in kind), where
            assert options.get("default", kind[0]) in kind, where
        elif kind in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"], where
            assert isinstance(options["default"], int if kind == "INT" else float), where
        elif kind in WIDGET_TYPES:
            assert isinstance(options["default"], str if kind == "STRING" else bool), where
        else:
            assert kind in LINK_TYPES, f"{where}: unknown type {kind}"
    signature = inspect.signature(getattr(cls, cls.FUNCTION))
    params = {n: p for n, p in signature.parameters.items() if n != "self"}
    if [p.kind for p in params.values()] != [inspect.Parameter.VAR_KEYWORD]:  # loaders take their one input by name
        assert set(params) == set(inputs), node_id
        for name in spec.get("optional", {}):
            assert params[name].default is not inspect.Parameter.empty, f"{node_id}.{name} needs a default"
    assert all(t in LINK_TYPES | {"STRING"} for t in cls.RETURN_TYPES)
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)


@pytest.mark.parametrize("extra_model_paths", [{"essence_stylegan2": "/data/shared-models/stylegan"}])
def test_model_folders_are_added_to_comfyui_keeping_existing_entries(comfy_env, extra_model_paths):
    registry = comfy_env.folder_paths.folder_names_and_paths
    models = str(comfy_env.models_dir)
    paths, extensions = registry["essence_stylegan2"]
    assert paths == ["/data/shared-models/stylegan", os.path.join(models, "essence_stylegan2")]
    assert ".pt" in extensions and ".pth" in extensions
    for folder in ("essence_e4e", "essence_clip", "essence_landmarks", "essence_directions"):
        assert registry[folder][0] == [os.path.join(models, folder)]
    assert registry["essence_directions"][1] == {".safetensors", ".npy"}
    assert registry["essence_landmarks"][1] == {".dat"}
    assert not any("custom_nodes" in p for paths, _ in registry.values() for p in paths)
    # the library searches the same folders
    found = comfy_env.pack.essence.storage.weights.provider_dirs("essence_stylegan2")
    assert [str(p) for p in found] == paths


def test_loader_dropdowns_list_the_model_folders(comfy_env):
    (comfy_env.dir("essence_stylegan2") / "notes.txt").write_text("not a model")
    options = comfy_env.node("EssenceGeneratorLoader").INPUT_TYPES()["required"]["generator_file"][0]
    assert options == ["stylegan2_tiny64.pt", "[e4e] e4e_tiny64.pt"]
    assert comfy_env.node("EssenceGuideLoader").INPUT_TYPES()["required"]["clip_file"][0] == ["clip_tiny.pt"]
    assert comfy_env.node("EssenceEncoderLoader").INPUT_TYPES()["required"]["encoder_file"][0] == ["e4e_tiny64.pt"]


# ----------------------------------------------------------------------------- loading


def test_loaders_build_models_usable_for_training(comfy_env):
    (generator,) = comfy_env.run("EssenceGeneratorLoader", generator_file="stylegan2_tiny64.pt")
    (decoder,) = comfy_env.run("EssenceGeneratorLoader", generator_file="[e4e] e4e_tiny64.pt")
    (encoder,) = comfy_env.run("EssenceEncoderLoader", encoder_file="e4e_tiny64.pt")
    assert generator.size == decoder.size == 64 and encoder.n_latent == generator.n_latent == 10
    # built outside ComfyUI's inference mode, so autograd can flow through them
    assert not any(p.is_inference() for p in generator.parameters())
    # ComfyUI's node cache owns them (its 'free model and node cache' frees them); Essence keeps none
    assert comfy_env.pack.essence.runtime.cached_models() == []


def test_missing_model_names_the_folder_and_the_download(comfy_env):
    cls = comfy_env.node("EssenceGeneratorLoader")
    assert cls.VALIDATE_INPUTS(generator_file="stylegan2-ffhq-config-f.pt") is True
    with pytest.raises(comfy_env.pack.essence.errors.MissingWeightsError) as info:
        comfy_env.run("EssenceGeneratorLoader", generator_file="stylegan2-ffhq-config-f.pt")
    message = str(info.value)
    assert "'essence_stylegan2'" in message and str(comfy_env.dir("essence_stylegan2")) in message
    assert "Download: https://" in message and "Licence:" in message


def test_missing_direction_names_its_folder(comfy_env):
    with pytest.raises(comfy_env.pack.essence.errors.MissingWeightsError, match="essence_directions"):
        comfy_env.run("EssenceLoad", direction_file="keanu.npy")


def test_empty_model_folder_dropdown_shows_the_expected_file(comfy_env):
    shutil.rmtree(comfy_env.dir("essence_clip"))
    options = comfy_env.node("EssenceGuideLoader").INPUT_TYPES()["required"]["clip_file"]
    assert options[0] == ["ViT-B-32.pt"] and options[1]["default"] == "ViT-B-32.pt"


# ----------------------------------------------------------------------------- latents and rendering


def test_sample_latents_follow_the_seed_convention(comfy_env, models):
    generator, _ = models
    latents = sample(comfy_env, generator, count=3, seed=2**64 - 1)
    assert latents.latents.shape == (3, 10, 64) and latents.latents.dtype == torch.float32
    assert not latents.latents.is_inference()  # safe to reuse outside inference mode
    assert [r["row"] for r in latents.sources] == [0, 1, 2] and latents.sources[0]["seed"] == 2**64 - 1
    assert latents.sources[0]["kind"] == "sample" and latents.meta["generator"]["fingerprint"]
    assert latents.meta["latent_space"]["n_latent"] == 10
    same = sample(comfy_env, generator, count=3, seed=2**64 - 1)
    assert torch.equal(same.latents, latents.latents)
    assert not torch.equal(sample(comfy_env, generator, count=3, seed=1).latents, latents.latents)


def test_render_gives_comfyui_images(comfy_env, models):
    generator, _ = models
    latents = sample(comfy_env, generator)
    (full,) = comfy_env.run("EssenceRender", generator=generator, latents=latents)
    assert full.shape == (4, 64, 64, 3)
    (small,) = comfy_env.run("EssenceRender", generator=generator, latents=latents, resolution="32")
    assert small.shape == (4, 32, 32, 3)
    (same,) = comfy_env.run("EssenceRender", generator=generator, latents=latents, resolution="512")
    assert torch.equal(same, full)  # at or above the generator's size: every layer
    expected = ((generator.synthesize(latents.latents).clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1)
    assert torch.allclose(full, expected, atol=1e-5)


def test_apply_and_sweep(comfy_env, models):
    generator, _ = models
    latents = sample(comfy_env, generator, count=2)
    noise = torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(0))
    direction = comfy_env.pack.essence.Direction(noise * 0.3, {"name": "test"})
    (edited,) = comfy_env.run("EssenceApply", latents=latents, direction=direction, strength=0.5, layers="coarse")
    delta = edited.latents - latents.latents
    assert torch.allclose(delta[:, :4], 0.5 * direction.tensor[:, :4].expand(2, -1, -1), atol=1e-6)
    assert torch.all(delta[:, 4:] == 0)
    assert edited.sources[0]["edits"] == [{"direction": "test", "strength": 0.5, "layers": "coarse"}]
    assert "edits" not in latents.sources[0]  # the input batch is untouched
    (grid,) = comfy_env.run("EssenceStrengthSweep", generator=generator, latents=latents, direction=direction,
                            strength_start=0.0, strength_end=1.0, steps=3, layers="all")
    assert grid.shape == (1, 2 * 66 + 2, 3 * 66 + 2, 3)  # 2 rows x 3 columns of 64 px, 2 px padding


def test_official_npy_direction_loads_and_refuses_another_latent_space(comfy_env, models, targetclip_files):
    generator, _ = models
    comfy_env.dir("essence_directions").mkdir(exist_ok=True)
    shutil.copy(targetclip_files["direction"], comfy_env.dir("essence_directions") / "official.npy")
    assert "official.npy" in comfy_env.node("EssenceLoad").INPUT_TYPES()["required"]["direction_file"][0]
    (direction,) = comfy_env.run("EssenceLoad", direction_file="official.npy")
    assert direction.tensor.shape == (1, 18, 512) and direction.name == "official"
    with pytest.raises(comfy_env.pack.essence.errors.IncompatibleLatentSpaceError, match="18"):
        comfy_env.run("EssenceApply", latents=sample(comfy_env, generator), direction=direction,
                      strength=1.0, layers="all")


def test_mix_weights_directions(comfy_env):
    Direction = comfy_env.pack.essence.Direction
    noise = torch.randn(3, 1, 10, 64, generator=torch.Generator().manual_seed(1))
    a, b, c = (Direction(t, {"name": n}) for t, n in zip(noise, "abc"))
    (mixed,) = comfy_env.run("EssenceMix", direction_1=a, weight_1=0.5, direction_2=b, weight_2=-1.0)
    assert torch.allclose(mixed.tensor, 0.5 * a.tensor - b.tensor, atol=1e-6)
    (three,) = comfy_env.run("EssenceMix", direction_1=a, weight_1=1.0, direction_2=b, weight_2=1.0,
                             direction_3=c, weight_3=2.0)
    assert torch.allclose(three.tensor, a.tensor + b.tensor + 2 * c.tensor, atol=1e-6)
    assert [p["name"] for p in three.meta["mix"]] == ["a", "b", "c"]


# ----------------------------------------------------------------------------- training


def test_training_node_trains_reports_progress_and_saves(comfy_env, models, pictures):
    generator, guide = models
    direction, preview, report = train(comfy_env, generator, guide, pictures)
    curve = direction.meta["loss_curve"]["total"]
    assert len(curve) == TRAIN_STEPS
    assert min(curve) < curve[0] - 1e-3 and direction.meta["losses"]["total"] == pytest.approx(min(curve), abs=1e-6)
    assert direction.meta["init"] == "random" and direction.meta["mode"] == "fast"
    assert direction.thumbnail is not None and direction.thumbnail.dtype == torch.uint8
    assert preview.shape == (4, 64, 64, 3)
    # the progress bar reached the end, with previews of the edited faces
    values = [value for value, _total, _preview in comfy_env.progress.updates]
    assert values == sorted(values) and values[-1] == TRAIN_STEPS
    previews = [p for _v, _t, p in comfy_env.progress.updates if p is not None]
    assert previews and all(p[0] == "JPEG" and isinstance(p[1], Image.Image) and p[2] > 0 for p in previews)
    assert previews[0][1].size == (4 * 64, 64)
    # the report output says what was kept
    best = direction.meta["losses"]
    assert report.startswith(f"Trained {TRAIN_STEPS} steps (fast mode): best loss {best['total']:.4f} at step "
                             f"{best['best_step']}") and "Candidates" not in report
    # models are still usable for autograd after a run under inference mode
    assert not any(p.is_inference() for p in generator.parameters())

    (name,) = comfy_env.run("EssenceSave", direction=direction, filename_prefix="face_a")
    assert name == "face_a_00001.safetensors"
    assert comfy_env.run("EssenceSave", direction=direction, filename_prefix="face_a")[0] == "face_a_00002.safetensors"
    assert comfy_env.node("EssenceLoad").INPUT_TYPES()["required"]["direction_file"][0] == [
        "face_a_00001.safetensors", "face_a_00002.safetensors"]
    (loaded,) = comfy_env.run("EssenceLoad", direction_file=name)
    assert torch.equal(loaded.tensor, direction.tensor) and loaded.name == "face_a"
    assert loaded.meta["loss_curve"]["total"] == curve and torch.equal(loaded.thumbnail, direction.thumbnail)


@pytest.mark.slow
def test_training_node_with_candidates_outputs_the_best_and_previews_it(comfy_env, models, pictures):
    generator, guide = models
    spec = comfy_env.node("EssenceTrain").INPUT_TYPES()["optional"]["candidates"]
    assert spec[1]["default"] == 1
    direction, preview, report = train(comfy_env, generator, guide, pictures, steps=3, candidates=3)
    selection = direction.meta["selection"]
    assert selection["rank"] == 1 and len(selection["scores"]) == 3
    assert selection["starts"] == ["random (seed 3)", "random (seed 4)", "random (seed 5)"]
    assert len(direction.meta["loss_curve"]["total"]) == 3 and direction.meta["candidates"] == 3
    # chosen by the documented metric (CLIP proxy: no identity input), with its strength for Apply's auto
    assert selection["metrics"]["basis"] == "clip-proxy" and "CLIP proxy" in selection["method"]
    assert direction.auto_strength == selection["metrics"]["strength"]
    # the report output lists every candidate's score, marks the chosen one and gives its metrics
    lines = report.splitlines()
    chosen = [line for line in lines if line.endswith("<- chosen")]
    assert len(chosen) == 1 and chosen[0].startswith(f"  {selection['chosen']}: score ")
    assert sum(line.startswith("  ") and " score " in line for line in lines) == 3
    assert any(line.startswith(f"Chosen candidate at strength {selection['metrics']['strength']:g}") and
               "target similarity" in line for line in lines)
    assert f"Recommended strength {direction.auto_strength:g}" in report
    assert comfy_env.node("EssenceTrain").INPUT_TYPES()["optional"]["identity"][0] == "ESSENCE_IDENTITY"
    from essence.networks import IdentityConfig, build_identity

    torch.manual_seed(0)
    identity = build_identity(IdentityConfig.ir_se50(widths=(8, 16, 24, 32), embed_dim=32))
    with_identity, _, _ = train(comfy_env, generator, guide, pictures, steps=1, candidates=2, identity=identity)
    assert with_identity.meta["selection"]["metrics"]["basis"] == "identity"
    assert with_identity.meta["auto_strength"]["basis"] == "identity"
    from essence.networks import render

    expected = render(generator, sample(comfy_env, generator).latents + direction.tensor)
    assert torch.allclose(preview, expected.permute(0, 2, 3, 1).add(1).div(2).clamp(0, 1), atol=1e-2)


def test_official_mode_matches_fast_mode(comfy_env, models, pictures):
    generator, guide = models
    fast, _, _ = train(comfy_env, generator, guide, pictures, steps=4, mode="fast")
    official, _, _ = train(comfy_env, generator, guide, pictures, steps=4, mode="official", chunk_size=3)
    assert official.meta["loss_curve"]["total"] == pytest.approx(fast.meta["loss_curve"]["total"], abs=1e-5)
    # Adam divides by the gradients' size, so where a gradient is near 0 the two summation orders' rounding
    # moves a value by up to a few 1e-5 per step (7e-5 after 4 steps on some CPUs); a real difference
    # between the modes moves it by the learning rate, 0.1
    assert torch.allclose(official.tensor, fast.tensor, atol=1e-3)


def test_cancel_from_the_progress_hook_stops_training_and_saves_nothing(comfy_env, models, pictures):
    generator, guide = models
    mm = comfy_env.model_management

    def press_cancel(value, total, preview):
        if value >= 3:
            mm.interrupt_current_processing(True)

    comfy_env.progress.hook = press_cancel
    with pytest.raises(InterruptProcessingException):
        train(comfy_env, generator, guide, pictures, steps=50)
    # ComfyUI skips every node downstream of the failed one: Save never runs and no file exists
    assert not comfy_env.dir("essence_directions").exists() or not any(comfy_env.dir("essence_directions").iterdir())
    assert comfy_env.progress.updates[-1][0] < 50
    assert not any(p.is_inference() for p in generator.parameters())


@pytest.mark.parametrize("name", ["../evil", "..", "/tmp/evil", "sub/dir", "sub\\dir", "", "  ", ".hidden",
                                  "C:evil", "a..b", "bad\x00name"])
def test_save_refuses_names_that_leave_the_folder(comfy_env, name):
    direction = comfy_env.pack.essence.Direction(torch.zeros(1, 10, 64))
    before = sorted(p for p in comfy_env.models_dir.parent.parent.rglob("*"))
    with pytest.raises(comfy_env.pack.essence.EssenceError, match="cannot save the essence"):
        comfy_env.run("EssenceSave", direction=direction, filename_prefix=name)
    assert sorted(p for p in comfy_env.models_dir.parent.parent.rglob("*")) == before


def test_save_writes_into_the_first_directions_path(comfy_env):
    direction = comfy_env.pack.essence.Direction(torch.zeros(1, 10, 64))
    (name,) = comfy_env.run("EssenceSave", direction=direction, filename_prefix="plain.safetensors")
    assert name == "plain_00001.safetensors" and (comfy_env.dir("essence_directions") / name).is_file()
    assert not [p for p in comfy_env.dir("essence_directions").iterdir() if p.name.endswith(".tmp")]


def test_models_move_to_the_device_outside_inference_mode(comfy_env):
    """A parameter copied to another device under ComfyUI's inference mode would become an inference
    tensor that training can never back-propagate through; the move must happen outside it."""
    seen = []

    class Probe(torch.nn.Linear):
        def to(self, *args, **kwargs):
            seen.append(torch.is_inference_mode_enabled())
            return super().to(*args, **kwargs)

    with torch.inference_mode():
        with comfy_env.pack.nodes.host.models_on_compute_device(Probe(2, 2)):
            pass
    assert seen == [False]  # to the compute device; it stays loaded until ComfyUI unloads it


def test_comfyui_makes_room_for_essence_models_and_unloads_them_whole(comfy_env, models):
    """ComfyUI's ledger manages Essence's models like its own: another model is unloaded to make room
    before the generator moves; a request to free part of the generator unloads all of it (a plain
    module cannot run split across devices); 'Unload Models' releases it; Essence caches nothing."""
    mm, mp = comfy_env.model_management, sys.modules["comfy.model_patcher"]
    gpu = torch.device("cpu", 0)  # a device with a memory ledger, as ComfyUI sees a GPU (tensors stay on the CPU)
    mm.get_torch_device = lambda: gpu
    generator, _ = models
    size = mm.module_size(generator)
    mm.device_memory[gpu] = size + 1000  # room for the generator or for a model as big as it, not both
    other = mp.ModelPatcher(torch.nn.Linear(size // 4, 1, bias=False), gpu, torch.device("cpu"))
    mm.load_models_gpu([other])

    def on_device() -> list:
        return [patcher for patcher in mm.loaded_models() if patcher.loaded_size() > 0]

    assert on_device() == [other]
    latents = sample(comfy_env, generator, count=1)
    comfy_env.run("EssenceRender", generator=generator, latents=latents)
    (essence_model,) = on_device()  # the other model was unloaded to make room
    assert essence_model.model is generator and essence_model.loaded_size() == size
    assert any(required >= size and device == gpu for required, device in mm.free_memory_calls)
    comfy_env.run("EssenceRender", generator=generator, latents=latents)
    assert on_device() == [essence_model]  # still loaded: the next node found it in place

    mm.load_models_gpu([other], force_full_load=True)  # needs all but 1000 bytes: ComfyUI asks to free part
    assert on_device() == [other] and essence_model not in mm.loaded_models()
    assert essence_model.loaded_size() == 0 and not generator.model_lowvram  # unloaded whole, not split
    mm.unload_all_models()  # what POST /free {"unload_models": true} runs
    assert mm.loaded_models() == [] and comfy_env.pack.essence.runtime.cached_models() == []


def test_essence_models_load_and_unload_whole_where_a_plain_model_patcher_splits_them(comfy_env):
    """The stand-in reproduces the hazard the pack avoids: ComfyUI loads and frees part of a plain
    module (its "lowvram" mode); Essence's patcher moves all of it or nothing."""
    mm, mp = comfy_env.model_management, sys.modules["comfy.model_patcher"]
    gpu = torch.device("cpu", 0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 2))
    size = mm.module_size(model)
    mm.device_memory[gpu] = size + 100
    patcher = mp.ModelPatcher(model, gpu, torch.device("cpu"))
    mm.load_models_gpu([patcher])
    mm.free_memory(200, gpu)
    assert mm.loaded_models() == [patcher]  # still loaded, in part
    assert model.model_lowvram and 0 < model.model_loaded_weight_memory < size
    mm.unload_all_models()

    mm.get_torch_device = lambda: gpu
    essence_model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 2))
    whole = comfy_env.pack.nodes.host.model_patcher(essence_model)
    assert comfy_env.pack.nodes.host.model_patcher(essence_model) is whole  # one per model
    assert whole.partially_load(gpu, 1000) == size and not essence_model.model_lowvram  # asked for part: all
    assert whole.partially_unload(torch.device("cpu"), 200) == 0 and whole.loaded_size() == size  # none


# ----------------------------------------------------------------------------- out of memory


def _fail_above(synthesize, limit: int, tried: list[int]):
    """``synthesize``, except that more than ``limit`` faces at once raise CUDA's out-of-memory error."""
    def fake(wplus, *args, **kwargs):
        tried.append(len(wplus))
        if len(wplus) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return synthesize(wplus, *args, **kwargs)
    return fake


def test_render_and_sweep_retry_smaller_in_one_layer_with_comfyui_advice(comfy_env, models, monkeypatch):
    generator, _ = models
    latents = sample(comfy_env, generator, count=2)
    direction = comfy_env.pack.essence.Direction(torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(0)))
    sweep = dict(generator=generator, latents=latents, direction=direction, strength_start=0.0, strength_end=1.0,
                 steps=3, layers="all")
    (expected,) = comfy_env.run("EssenceStrengthSweep", **sweep)
    tried: list[int] = []
    real = generator.synthesize
    monkeypatch.setattr(generator, "synthesize", _fail_above(real, 1, tried))
    (grid,) = comfy_env.run("EssenceStrengthSweep", **sweep)
    assert torch.allclose(grid, expected, atol=1e-5)
    assert tried == [4, 2, 1, 1, 1, 1, 1, 1]  # 6 images: halved once per failure, never restarted
    tried.clear()
    comfy_env.run("EssenceRender", generator=generator, latents=latents)
    assert tried == [2, 1, 1]

    monkeypatch.setattr(generator, "synthesize", _fail_above(real, 0, tried))
    tried.clear()
    with pytest.raises(torch.OutOfMemoryError) as info:
        comfy_env.run("EssenceStrengthSweep", **sweep)
    assert tried == [4, 2, 1]
    assert str(info.value) == ("out of device memory while rendering 6 strength-sweep images, even one at a time. "
                               "Free GPU memory with ComfyUI's 'Unload Models' button, use fewer or smaller "
                               "inputs, or start ComfyUI with --cpu.")


def test_bf16_mode_trains_in_reduced_precision(comfy_env, models, pictures):
    generator, guide = models
    direction, preview, _ = train(comfy_env, generator, guide, pictures, steps=3, mode="fast+bf16")
    assert direction.meta["hyperparameters"]["autocast"] == "bf16"
    assert torch.isfinite(direction.tensor).all() and torch.isfinite(preview).all()


def test_train_node_offers_the_library_modes_and_the_official_learning_rate_inputs(comfy_env, models, pictures):
    from essence.training import TRAIN_MODES

    generator, guide = models
    spec = comfy_env.node("EssenceTrain").INPUT_TYPES()
    assert spec["required"]["mode"][0] == list(TRAIN_MODES)
    assert all(f"{name} (" in spec["required"]["mode"][1]["tooltip"] for name in TRAIN_MODES)
    assert spec["optional"]["lr"][1]["default"] == 0.2 and spec["optional"]["weight_decay"][1]["default"] == 0.003
    direction, _, _ = train(comfy_env, generator, guide, pictures, steps=2, lr=0.1, weight_decay=0.01)
    settings = direction.meta["hyperparameters"]
    assert (settings["lr"], settings["coefficient_lr"], settings["weight_decay"]) == (0.1, 0.1, 0.01)


def test_train_asks_comfyui_for_room_to_train_before_it_starts(comfy_env, models, pictures):
    """Training needs far more memory than the weights (activations of every face in a pass): the node
    asks ComfyUI for that room too, so a model ComfyUI keeps beside Essence's is unloaded first
    instead of training running out part way."""
    mm, mp = comfy_env.model_management, sys.modules["comfy.model_patcher"]
    lib = comfy_env.pack.essence
    generator, guide = models
    sources = lib.sample_latents(generator, 4, seed=0)  # what Sample Face Latents makes, without loading G
    gpu = torch.device("cpu", 0)  # a device with a memory ledger, as ComfyUI sees a GPU
    mm.get_torch_device = lambda: gpu
    weights = mm.module_size(generator) + mm.module_size(guide)
    room = lib.training.training_memory(generator, len(sources), lib.training.train_mode("fast").settings())
    assert room > weights  # activations dwarf the weights
    mm.device_memory[gpu] = weights + room  # room for Essence's weights and training, nothing else
    other = mp.ModelPatcher(torch.nn.Linear(1024, 1, bias=False), gpu, torch.device("cpu"))
    mm.load_models_gpu([other])

    comfy_env.run("EssenceTrain", target=target_image(pictures), sources=sources, generator=generator, guide=guide,
                  steps=1, lambda_transfer=1.0, lambda_consistency=0.5, seed=3, mode="fast", init="random",
                  chunk_size=0, preview_every=5)
    assert any(required >= weights + room and device == gpu for required, device in mm.free_memory_calls)
    assert other not in mm.loaded_models()  # unloaded to make room for training, not just for the weights


def test_training_memory_follows_the_measured_peaks():
    """The estimate the Train node asks ComfyUI for: the measured H100 peaks for 4 faces at 1024 px
    (7.4 GB exact, 3.7 GB bf16, 1.9 GB with the 256 px CLIP path), fewer faces per pass with chunks."""
    from essence.networks import GeneratorConfig, build_generator
    from essence.training import TrainSettings, training_memory

    full = build_generator(GeneratorConfig.ffhq_config_f(), device="meta")  # shapes only, no memory
    gb = lambda **s: training_memory(full, 4, TrainSettings(**s)) / 1e9  # noqa: E731
    assert gb() == pytest.approx(7.4) and gb(autocast="bf16") == pytest.approx(3.72)
    assert gb(render_size=256) == pytest.approx(1.92) and gb(chunk_size=2) == pytest.approx(3.7)


def test_a_preview_that_does_not_fit_is_skipped_without_restarting_training(comfy_env, models, pictures, monkeypatch,
                                                                          caplog):
    """Out of memory while drawing a progress preview is not training running out of memory: training
    goes on with the same chunks (same result), and the log says the preview was skipped."""
    generator, guide = models
    expected, _, _ = train(comfy_env, generator, guide, pictures, steps=3, preview_every=1)
    real, failures = generator.synthesize, []

    def previews_fail(wplus, *args, **kwargs):
        # training renders pass recompute_from, essence.render does not; the first preview fails at every
        # batch size (4, 2, 1 faces), the later ones and the node's output image fit
        if "recompute_from" not in kwargs and len(failures) < 3:
            failures.append(len(wplus))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(wplus, *args, **kwargs)

    monkeypatch.setattr(generator, "synthesize", previews_fail)
    direction, _, _ = train(comfy_env, generator, guide, pictures, steps=3, preview_every=1)
    assert torch.allclose(direction.tensor, expected.tensor, atol=1e-6)
    assert direction.meta["hyperparameters"]["chunk_size"] is None  # never restarted with smaller chunks
    assert failures == [4, 2, 1] and "no preview this time" in caplog.text
