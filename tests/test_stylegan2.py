"""The generator reproduces rosinality's StyleGAN2 on the golden fixtures and loads real layouts."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

import essence
from essence.networks import GeneratorConfig, build_generator


@pytest.fixture(scope="module")
def tiny_io(fixtures):
    return load_file(fixtures / "stylegan2_tiny64_io.safetensors")


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def test_tiny_generator_architecture_is_read_from_the_checkpoint(generator):
    cfg = generator.config
    assert (cfg.size, cfg.style_dim, cfg.n_mlp, generator.n_latent) == (64, 64, 2, 10)
    assert dict(cfg.channels) == {4: 32, 8: 32, 16: 32, 32: 16, 64: 16}


def test_mapping_and_synthesis_match_reference(generator, tiny_io):
    with torch.no_grad():
        assert max_abs(generator.mapping(tiny_io["z"]), tiny_io["w"]) < 1e-4
        assert max_abs(generator.synthesize(tiny_io["wplus"]), tiny_io["image_from_wplus"]) < 1e-4


def test_truncation_toward_latent_avg_matches_reference(generator, tiny_io):
    with torch.no_grad():
        wplus = generator.to_wplus(generator.truncate(generator.mapping(tiny_io["z"]), 0.7))
        assert max_abs(wplus, tiny_io["wplus_from_z_trunc07"]) < 1e-4
        assert max_abs(generator.synthesize(wplus), tiny_io["image_from_z_trunc07"]) < 1e-4


def test_gradient_through_synthesis_matches_reference(generator, tiny_io):
    wplus = tiny_io["wplus"].clone().requires_grad_(True)
    image = generator.synthesize(wplus)
    (image * torch.linspace(-1, 1, image.numel()).view_as(image)).sum().backward()
    ref = tiny_io["grad_wplus"]
    assert ((wplus.grad - ref).norm() / ref.norm()).item() < 1e-3


def test_full_size_generator_has_exactly_the_ffhq_keys_and_shapes(fixtures):
    expected = json.loads((fixtures / "stylegan2_ffhq_config_f_keys.json").read_text())["g_ema"]
    model = build_generator(GeneratorConfig.ffhq_config_f(), device="meta")
    state = model.state_dict()
    assert set(state) == set(expected)
    assert {k: list(v.shape) for k, v in state.items()} == expected
    assert model.n_latent == 18
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(30.37e6, rel=1e-3)


def test_full_size_config_is_inferred_back_from_its_own_state_dict():
    config = GeneratorConfig.ffhq_config_f()
    state = build_generator(config, device="meta").state_dict()
    assert GeneratorConfig.from_state_dict(state) == config


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_every_tensor_of_a_built_or_loaded_generator_is_on_its_device(generator, tiny_files, device):
    """``build_generator`` makes the model in place on the device; the loaders build on the meta device
    and assign the file's tensors. Neither may leave a tensor (a blur kernel, say) anywhere else."""
    built = build_generator(generator.config, device=device)
    loaded = essence.load_generator(tiny_files.generator, device=device, cache=False)
    for model in (built, loaded):
        places = {t.device.type for t in [*model.parameters(), *model.buffers()]}
        assert places == {device}, places


def test_checkpoint_with_training_extras_and_namespace_args_loads(tmp_path, tiny_files, generator, tiny_io):
    """rosinality's train.py saves g, d and an argparse Namespace beside g_ema."""
    ckpt = torch.load(tiny_files.generator, weights_only=True)
    ckpt.update(g=ckpt["g_ema"], d={"convs.0.0.weight": torch.zeros(1)},
                args=argparse.Namespace(size=64, latent=64, n_mlp=2))
    path = tmp_path / "trained.pt"
    torch.save(ckpt, path)
    model = essence.load_generator(path, cache=False)
    with torch.no_grad():
        assert max_abs(model.synthesize(tiny_io["wplus"]), tiny_io["image_from_wplus"]) < 1e-4


def test_half_precision_checkpoint_loads_as_float32(tmp_path, tiny_files):
    ckpt = torch.load(tiny_files.generator, weights_only=True)
    ckpt["g_ema"] = {k: v.half() for k, v in ckpt["g_ema"].items()}
    torch.save(ckpt, tmp_path / "half.pt")
    model = essence.load_generator(tmp_path / "half.pt", cache=False)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_wrong_latent_shape_names_the_expected_shapes(generator):
    with pytest.raises(essence.errors.ShapeError, match=r"\[batch, 10, 64\].*\[2, 18, 512\]"):
        generator.synthesize(torch.zeros(2, 18, 512))
    with pytest.raises(essence.errors.ShapeError, match=r"\[batch, 64\]"):
        generator.mapping(torch.zeros(2, 512))


def test_w_is_broadcast_over_all_layers(generator, tiny_io):
    """A W code [B, style_dim] renders as that code repeated over every layer. The broadcast and the
    repeated copy reach the kernels in different memory layouts, so rounding may differ (2.9e-6 seen
    on an AVX-512 machine); another code in any one layer moves pixels by more than 1."""
    w = tiny_io["w"]
    with torch.no_grad():
        assert max_abs(generator.synthesize(w), generator.synthesize(w[:, None].repeat(1, 10, 1))) < 1e-5


def test_fixed_noise_is_deterministic_and_random_noise_is_not(generator, tiny_io):
    wplus = tiny_io["wplus"][:1]
    with torch.no_grad():
        assert torch.equal(generator.synthesize(wplus), generator.synthesize(wplus, noise="fixed"))
        assert not torch.equal(generator.synthesize(wplus, noise="random"), generator.synthesize(wplus, noise="random"))


def test_stop_at_returns_the_intermediate_rgb(generator, tiny_io):
    wplus = tiny_io["wplus"]
    with torch.no_grad():
        low = generator.synthesize(wplus, stop_at=16)
        full = generator.synthesize(wplus, stop_at=64)
        image = generator.synthesize(wplus)
    assert low.shape == (3, 3, 16, 16)
    assert torch.equal(full, image)
    # the intermediate RGB is a coarse version of the final image, not unrelated pixels
    coarse = torch.nn.functional.avg_pool2d(image, 4)
    assert torch.corrcoef(torch.stack([low.flatten(), coarse.flatten()]))[0, 1] > 0.5
    with pytest.raises(ValueError, match="stop_at"):
        generator.synthesize(wplus, stop_at=48)


def test_seeded_sampling_is_reproducible_and_truncated(generator):
    a = generator.sample_wplus(3, seed=7, truncation=0.7)
    b = generator.sample_wplus(3, seed=7, truncation=0.7)
    free = generator.sample_wplus(3, seed=7)
    assert a.shape == (3, 10, 64) and torch.equal(a, b)
    dist = lambda x: (x - generator.latent_avg).norm(dim=-1).mean()  # noqa: E731
    assert dist(a) == pytest.approx(0.7 * dist(free).item(), rel=1e-4)


def test_bf16_autocast_stays_close_to_float32(generator, tiny_io):
    wplus = tiny_io["wplus"]
    with torch.no_grad():
        ref = generator.synthesize(wplus)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = generator.synthesize(wplus)
    assert torch.isfinite(low).all()
    assert ((low.float() - ref).norm() / ref.norm()).item() < 0.05


def test_fp16_autocast_runs_and_stays_finite(generator, tiny_io):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        image = generator.synthesize(tiny_io["wplus"])
    assert torch.isfinite(image).all()
    ref = generator.synthesize(tiny_io["wplus"]).detach()
    assert ((image.float() - ref).norm() / ref.norm()).item() < 0.05


@pytest.mark.parametrize("method", ["phases", "transposed"])
def test_both_ways_of_upsampling_match_the_reference(tiny_files, tiny_io, method):
    """The GPU's conv + pixel-shuffle upsampling and the CPU's transposed conv + blur: same images
    and gradients as the reference."""
    model = essence.load_generator(tiny_files.generator, cache=False).set_upsample_method(method)
    with torch.no_grad():
        assert max_abs(model.synthesize(tiny_io["wplus"]), tiny_io["image_from_wplus"]) < 1e-4
    wplus = tiny_io["wplus"].clone().requires_grad_(True)
    image = model.synthesize(wplus)
    (image * torch.linspace(-1, 1, image.numel()).view_as(image)).sum().backward()
    ref = tiny_io["grad_wplus"]
    assert ((wplus.grad - ref).norm() / ref.norm()).item() < 1e-3


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 1), (1, 4, 6, 4, 1), (1,)])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_phase_upsampling_equals_transposed_conv_then_blur_for_any_kernel(taps, kernel_size):
    from essence.networks.stylegan2 import ModulatedConv2d

    torch.manual_seed(0)
    conv = ModulatedConv2d(8, 6, kernel_size, 16, upsample=True, blur_kernel=taps)
    x, w = torch.randn(2, 8, 5, 7), torch.randn(2, 16)
    conv.upsample_method = "transposed"
    expected = conv(x, w)
    conv.upsample_method = "phases"
    assert conv(x, w).shape == expected.shape == (2, 6, 10, 14)
    assert max_abs(conv(x, w), expected) < 1e-5


def test_an_unknown_upsampling_method_is_refused(generator):
    with pytest.raises(ValueError, match="upsample method must be one of auto, phases, transposed"):
        generator.set_upsample_method("nearest")


def test_recomputed_layers_give_the_same_image_and_gradient(generator, tiny_io):
    def grad(**kwargs):
        wplus = tiny_io["wplus"].clone().requires_grad_(True)
        image = generator.synthesize(wplus, **kwargs)
        (image * torch.linspace(-1, 1, image.numel()).view_as(image)).sum().backward()
        return image.detach(), wplus.grad

    image, gradient = grad()
    for resolution in (8, 64):
        again, again_gradient = grad(recompute_from=resolution)
        assert torch.equal(again, image) and torch.equal(again_gradient, gradient)
    with pytest.raises(ValueError, match="recompute_from"):
        generator.synthesize(tiny_io["wplus"], recompute_from=100)
