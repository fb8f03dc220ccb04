"""The fused Triton kernels (``essence.networks.fused``) against the eager path they replace.

On the CPU they run in Triton's interpreter (TRITON_INTERPRET=1, set for each test here and unset
after, so no other test sees it); on a CUDA machine, compiled. Each kernel is checked forward and
backward against the eager code at the tiny fixture generator's sizes and at a full-size layer
(512 channels), then the whole generator, and the reference traces with the fused path selected
(on the CPU, in the interpreter, wherever the tests run). The last tests compile every kernel for an
H100 without one. Floats are compared with tolerances: the kernels add in another order than torch.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="the fused kernels are Triton kernels")

from safetensors.torch import load_file  # noqa: E402
from test_train import LR01_TRACE, assert_follows_reference  # noqa: E402

import essence  # noqa: E402
from essence.errors import EssenceError, ShapeError  # noqa: E402
from essence.networks.fused import fused_bias_act, fused_scale_channels  # noqa: E402
from essence.networks.ops import LEAKY_SLOPE, scale_channels  # noqa: E402
from essence.networks.stylegan2 import StyledConv  # noqa: E402
from essence.training import EssenceJob, TrainingTarget, TrainSettings, train  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}  # float32; the gradients sum up to 4 x 64 x 64 terms in another order


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    """Triton's interpreter on the CPU; on CUDA compiled kernels, and convolutions in strict float32
    (TF32 would round the two paths' slightly different gradients apart by far more than float32)."""
    if DEVICE.type == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
        monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)


def random(*shape: int, seed: int, grad: bool = True) -> torch.Tensor:
    tensor = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    return tensor.requires_grad_(grad)


def outputs_and_gradients(fn, inputs: list[torch.Tensor], seed: int = 99) -> list[torch.Tensor]:
    """fn's output and the gradients of a fixed random projection of it to every input."""
    out = fn(*inputs)
    projection = random(*out.shape, seed=seed, grad=False)
    return [out.detach(), *torch.autograd.grad(out, inputs, projection)]


def assert_all_close(fused: list[torch.Tensor], eager: list[torch.Tensor]) -> None:
    """Each pair within float32 tolerances, the absolute one relative to the tensor's largest value."""
    for index, (a, b) in enumerate(zip(fused, eager)):
        atol = TOLERANCE["atol"] * max(1.0, b.abs().max().item())
        torch.testing.assert_close(a, b, rtol=TOLERANCE["rtol"], atol=atol, msg=lambda m: f"tensor {index}: {m}")


# ----------------------------------------------------------------------------- each kernel


# (batch, channels, height, width): the tiny generator's 4 px and 64 px layers, and a full-size layer
SHAPES = {"tiny 4px": (4, 32, 4, 4), "tiny 64px": (4, 16, 64, 64), "full 512ch 16px": (2, 512, 16, 16)}


@pytest.mark.parametrize("shared_scale", [False, True], ids=["per-sample", "batch-shared"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_the_input_style_scale_matches_eager(shape, shared_scale):
    batch, channels = shape[:2]
    inputs = [random(*shape, seed=1), random(1 if shared_scale else batch, channels, seed=2)]
    assert_all_close(outputs_and_gradients(fused_scale_channels, inputs),
                     outputs_and_gradients(scale_channels, inputs))


def eager_bias_act(conv, scale, noise_weight, noise, bias, phases=False):
    """StyledConv's eager arithmetic, the gain already folded into the coefficients."""
    conv = F.pixel_shuffle(conv, 2) if phases else conv
    out = scale_channels(conv, scale, noise_weight * noise) + bias[None, :, None, None]
    return F.leaky_relu(out, LEAKY_SLOPE)


@pytest.mark.parametrize("noise_batch", ["shared", "per-sample"])
@pytest.mark.parametrize("phases", [False, True], ids=["plain", "phases"])
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_demodulation_noise_bias_and_activation_match_eager(shape, phases, noise_batch):
    """Output and gradients to the conv, demodulation, noise strength, noise and bias. With phases the
    conv output is an upsampling conv's four phases, shuffled by the kernel."""
    batch, channels, height, width = shape
    conv_shape = (batch, 4 * channels, height // 2, width // 2) if phases else shape
    inputs = [random(*conv_shape, seed=3), random(batch, channels, seed=4), random(1, seed=5),
              random(1 if noise_batch == "shared" else batch, 1, height, width, seed=6), random(channels, seed=7)]
    fused = outputs_and_gradients(lambda *x: fused_bias_act(*x, phases=phases), inputs)
    eager = outputs_and_gradients(lambda *x: eager_bias_act(*x, phases=phases), inputs)
    assert_all_close(fused, eager)
    assert (fused[0] > 0).any() and (fused[0] < 0).any()  # both sides of the leaky ReLU were exercised


def test_only_the_wanted_gradients_are_computed_and_they_are_right():
    """Training a direction differentiates the conv and the demodulation only (the generator is frozen)."""
    batch, channels, height, width = SHAPES["tiny 64px"]
    conv, scale = random(batch, channels, height, width, seed=8), random(batch, channels, seed=9)
    frozen = [random(1, seed=10, grad=False), random(1, 1, height, width, seed=11, grad=False),
              random(channels, seed=12, grad=False)]
    assert_all_close(outputs_and_gradients(lambda c, s: fused_bias_act(c, s, *frozen), [conv, scale]),
                     outputs_and_gradients(lambda c, s: eager_bias_act(c, s, *frozen), [conv, scale]))


def test_bfloat16_stays_within_bfloat16_rounding_of_float32():
    """The fast+bf16 modes: the kernel computes in float32 and rounds once, eager rounds each step."""
    batch, channels, height, width = SHAPES["tiny 64px"]
    inputs = [random(batch, channels, height, width, seed=13), random(batch, channels, seed=14), random(1, seed=15),
              random(1, 1, height, width, seed=16), random(channels, seed=17)]
    exact = eager_bias_act(*inputs).detach()
    low = fused_bias_act(*[t.detach().bfloat16() for t in inputs])
    assert low.dtype == torch.bfloat16
    assert ((low.float() - exact).norm() / exact.norm()).item() < 1e-2


def test_a_noise_of_the_wrong_size_is_refused():
    conv, scale = random(1, 4, 8, 8, seed=0, grad=False), random(1, 4, seed=0, grad=False)
    with pytest.raises(ShapeError, match=r"noise must have shape \[1 or 1, 1, 8, 8\]"):
        fused_bias_act(conv, scale, torch.ones(1, device=DEVICE), torch.ones(1, 1, 4, 4, device=DEVICE),
                       torch.zeros(4, device=DEVICE))


# ----------------------------------------------------------------------------- layers and the generator


def styled_conv_outputs(layer: StyledConv, kernels: str, x: torch.Tensor, w: torch.Tensor,
                        noise: torch.Tensor) -> list[torch.Tensor]:
    """A layer's output and the gradients to its input, style and every parameter, on the given kernels."""
    layer.kernels = layer.conv.kernels = kernels
    params = [p for p in layer.parameters()]
    return outputs_and_gradients(lambda x_, w_, *_: layer(x_, w_, noise), [x, w, *params])


@pytest.mark.parametrize("method", ["phases", "transposed"])
def test_the_tiny_generators_layers_match_eager(tiny_files, method):
    """The fixture's own weights: its 4 px layer, an upsampling layer (8 -> 16 px) and a 64 px layer."""
    model = essence.load_generator(tiny_files.generator, device=DEVICE, cache=False).requires_grad_(True)
    model.set_upsample_method(method)
    noises = model.noise_buffers()
    for index, layer in [(0, model.conv1), (3, model.convs[2]), (8, model.convs[7])]:
        in_channels, size = layer.conv.in_channel, noises[index].shape[-1] // (2 if layer.conv.upsample else 1)
        x, w = random(4, in_channels, size, size, seed=index), random(4, model.style_dim, seed=20 + index)
        assert_all_close(styled_conv_outputs(layer, "fused", x, w, noises[index]),
                         styled_conv_outputs(layer, "eager", x, w, noises[index]))


@pytest.mark.parametrize("upsample", [False, True], ids=["conv", "upsampling conv"])
def test_a_full_size_layer_matches_eager(upsample):
    """512 -> 512 channels at 16 px, style size 512, as in the 1024 px generator's 16 px block.

    Upsampling by the transposed conv: building the phases' kernels for 512 x 512 channels takes
    the CPU seconds; the phase layout is checked at this size by the kernel's own test above."""
    torch.manual_seed(0)
    layer = StyledConv(512, 512, 3, 512, upsample=upsample).to(DEVICE)
    layer.noise.weight.data.fill_(0.3)  # checkpoints hold non-zero strengths; the init is 0
    layer.conv.upsample_method = "transposed"
    size = 8 if upsample else 16
    x, w, noise = random(2, 512, size, size, seed=30), random(2, 512, seed=31), random(2, 1, 16, 16, seed=32)
    assert_all_close(styled_conv_outputs(layer, "fused", x, w, noise),
                     styled_conv_outputs(layer, "eager", x, w, noise))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["phases", "transposed"])
def test_the_tiny_generator_draws_and_differentiates_as_eager(tiny_files, method):
    """Image and gradients to W+ and to every synthesis weight, the whole generator on each path."""
    model = essence.load_generator(tiny_files.generator, device=DEVICE, cache=False).requires_grad_(True)
    model.set_upsample_method(method)
    wplus = model.sample_wplus(4, seed=1, truncation=0.7).detach()
    params = [p for name, p in model.named_parameters() if not name.startswith("style.")]
    results = {}
    for kernels in ("eager", "fused"):
        model.set_kernels(kernels)
        results[kernels] = outputs_and_gradients(lambda w, *_: model.synthesize(w),
                                                 [wplus.requires_grad_(True), *params])
    assert_all_close(results["fused"], results["eager"])


def test_the_fused_path_is_chosen_explicitly_and_can_be_undone(tiny_files):
    model = essence.load_generator(tiny_files.generator, device=DEVICE, cache=False)
    wplus = model.sample_wplus(2, seed=3)
    eager = model.synthesize(wplus)
    assert model.set_kernels("fused") is model
    assert {m.kernels for m in model.modules() if hasattr(m, "kernels")} == {"fused"}
    assert model.set_kernels("eager").synthesize(wplus).equal(eager)
    with pytest.raises(ValueError, match="kernels must be one of eager, fused"):
        model.set_kernels("triton")


@pytest.mark.skipif(DEVICE.type != "cpu", reason="the CPU refuses compiled kernels")
def test_the_cpu_without_the_interpreter_gets_an_actionable_error(tiny_files, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET")
    model = essence.load_generator(tiny_files.generator, cache=False).set_kernels("fused")
    with pytest.raises(EssenceError, match=r"TRITON_INTERPRET=1.*set_kernels\('eager'\)"):
        model.synthesize(model.sample_wplus(1, seed=0))


# ----------------------------------------------------------------------------- the reference traces


@pytest.fixture(scope="module")
def fused_generator(tiny_files):
    return essence.load_generator(tiny_files.generator, cache=False).set_kernels("fused")


@pytest.fixture
def cpu_interpreter(monkeypatch):
    """The traces' models are on the CPU even where CUDA is present."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.mark.slow
def test_the_official_loop_with_fused_kernels_reproduces_the_reference_trace(fused_generator, guide, trace,
                                                                            trace_target, cpu_interpreter):
    """test_train's public trace, the same settings, the fused kernels selected."""
    run = train(TrainingTarget.from_embedding(trace_target), trace["sources"], fused_generator, guide,
                EssenceJob(TrainSettings(steps=40, loop="official")), start=trace["init_direction"]).result
    assert_follows_reference(run, trace)


@pytest.mark.slow
def test_fused_kernels_follow_the_reference_at_learning_rate_0_1(fused_generator, guide, trace_target,
                                                                 cpu_interpreter):
    """test_train's lr 0.1 trace, the same settings, the fused kernels selected."""
    reference = load_file(f"{LR01_TRACE}.safetensors")
    run = train(TrainingTarget.from_embedding(trace_target), reference["sources"], fused_generator, guide,
                EssenceJob(TrainSettings(steps=40, lr=0.1)), start=reference["init_direction"]).result
    assert_follows_reference(run, reference)


# ----------------------------------------------------------------------------- the compiled source


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_every_kernel_compiles_for_an_h100(monkeypatch, tmp_path, dtype):
    """The tests above run the interpreter on the CPU; this compiles the same source for sm_90 with
    Triton's own ptxas (no GPU needed), so a lent GPU's minutes are not spent on a front-end error."""
    import triton
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from essence.networks import fused_kernels

    if "nvidia" not in backends:
        pytest.skip("this Triton has no NVIDIA backend")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))  # compiled afresh, nothing left in ~/.triton
    for name, kernel in vars(fused_kernels.build()).items():
        signature, constants = {}, {}
        for param in kernel.params:
            if param.is_constexpr:
                signature[param.name] = "constexpr"
                block = 256 if param.name == "BLOCK_N" else 4
                constants[(param.num,)] = block if param.name.startswith("BLOCK") else True
            elif param.name.endswith("_ptr"):
                signature[param.name] = "*fp32" if "sums" in param.name else f"*{dtype}"
            else:
                signature[param.name] = "i32"
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constants),
                                  target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], name
