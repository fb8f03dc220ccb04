"""The CLIP guide embeds like OpenAI's CLIP and reproduces TargetCLIP's preprocessing."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pictures import trace_target

import essence
from essence.networks.clip_guide import load_guide_file, official_resize_matrix, to_unit


@pytest.fixture(scope="module")
def reference_clip(tiny_files):
    import clip

    model, _ = clip.load(str(tiny_files.guide), jit=False, device="cpu")
    return model.eval()


def test_guide_reads_the_tower_shape(guide):
    assert (guide.input_resolution, guide.embed_dim) == (224, 32)


def test_target_embedding_matches_the_official_trace(guide, trace):
    """The trace was made by the reference code on another machine: equal up to rounding."""
    with torch.no_grad():
        emb = to_unit(guide.encode(trace["target_clip_input"]))
    assert (emb - trace["target_embedding"]).abs().max().item() < 1e-5


def assert_preprocesses_and_embeds_like_the_trace(guide, image: Image.Image, trace) -> None:
    # a changed resize filter or normalisation moves pixels by 1e-2 or more
    assert (guide.preprocess(image) - trace["target_clip_input"]).abs().max().item() < 1e-6
    with torch.no_grad():
        emb = to_unit(guide.embed_target(image))
    assert (emb - trace["target_embedding"]).abs().max().item() < 1e-5


def test_target_preprocessing_and_embedding_match_the_official_trace(guide, trace):
    """The repository's trace is TargetCLIP's optimization.py run on the astronaut's public-domain face
    (tests/pictures.py trace_target()), upscaled from 140 px by CLIP's bicubic resize."""
    assert_preprocesses_and_embeds_like_the_trace(guide, trace_target(), trace)


def test_target_preprocessing_and_embedding_match_the_golden_trace_of_face_a(guide, shared):
    """The shared fixtures' golden trace, made with TargetCLIP's face_a.jpg (1024 px, downscaled)."""
    from safetensors.torch import load_file

    face_a = Image.open(shared("face_a.jpg"))  # asked first: a skip names TargetCLIP's photo
    golden = load_file(shared("targetclip_public_trace.safetensors"))
    assert_preprocesses_and_embeds_like_the_trace(guide, face_a, golden)


def test_embeddings_equal_openai_clip_for_the_same_weights(guide, reference_clip):
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # two implementations of the same maths: equal up to rounding
        torch.testing.assert_close(guide.encode(pixels), reference_clip.encode_image(pixels), rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [64, 256, 1024])
def test_official_resize_equals_upsample_x7_then_avg_pool(guide, size):
    images = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
    literal = torch.nn.AvgPool2d(size // 32)(torch.nn.Upsample(scale_factor=7)(images))
    assert (guide.resize_generated(images) - literal).abs().max().item() < 1e-5


def test_official_mode_skips_normalisation_and_normalized_mode_applies_it(guide):
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    official = guide.resize_generated(images, "official")
    normalized = guide.resize_generated(images, "normalized")
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    assert torch.allclose(normalized, ((official + 1) / 2 - mean) / std, atol=1e-6)
    with pytest.raises(ValueError, match="official"):
        guide.resize_generated(images, "other")


def test_generated_path_is_differentiable(guide):
    images = torch.zeros(2, 3, 64, 64, requires_grad=True)
    guide.embed_generated(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_comfy_style_tensor_target_is_close_to_the_pil_path(guide, aligned_face):
    image = Image.open(aligned_face).convert("RGB")
    tensor = torch.from_numpy(np.asarray(image) / 255.0).float()[None]  # [1, H, W, 3]
    pil = guide.preprocess(image)
    via_tensor = guide.preprocess(tensor)
    assert via_tensor.shape == pil.shape
    assert ((via_tensor - pil).abs() * torch.tensor([0.2686, 0.2613, 0.2758]).view(1, 3, 1, 1)).max() < 0.01


@pytest.mark.parametrize("size, mode", [((300, 200), "RGB"), ((200, 301), "RGBA"), ((224, 224), "RGB"),
                                        ((225, 401), "L"), ((97, 131), "P"), ((1024, 1024), "RGB")])
def test_a_picture_is_preprocessed_as_clip_itself_does_bit_for_bit(guide, size, mode):
    """The clip package's own torchvision pipeline, whatever the picture's shape and mode (resized in
    its own mode, then made RGB), smaller or larger than CLIP's input."""
    import clip

    pixels = np.random.default_rng(size[0] * size[1]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    assert torch.equal(guide.preprocess(image), clip.clip._transform(guide.input_resolution)(image)[None])


@pytest.mark.parametrize("shape", [(1, 300, 200, 3), (2, 150, 401, 4), (1, 224, 224, 1), (1, 96, 97, 3)])
def test_a_comfy_tensor_takes_torchvisions_tensor_steps_bit_for_bit(guide, shape):
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    images = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    x = (images[..., :3] if shape[-1] != 1 else images.expand(-1, -1, -1, 3)).permute(0, 3, 1, 2)
    x = TF.resize(x, guide.input_resolution, interpolation=InterpolationMode.BICUBIC, antialias=True)
    x = TF.center_crop(x, [guide.input_resolution, guide.input_resolution]).clamp(0, 1)
    assert torch.equal(guide.preprocess(images), (x - guide.mean) / guide.std)


def test_resize_rejects_sizes_that_do_not_pool_to_224():
    with pytest.raises(essence.errors.ShapeError, match="multiple of 32"):
        official_resize_matrix(100, 224)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_torchscript_archive_loads_like_openai_releases(tmp_path, reference_clip):
    """OpenAI publishes CLIP as traced TorchScript; build one from the tiny model."""
    import clip

    pixels = torch.randn(1, 3, 224, 224)
    tokens = clip.tokenize(["a face"]) % reference_clip.vocab_size  # the fixture's token table is cut short
    traced = torch.jit.trace(reference_clip, (pixels, tokens))
    traced.save(str(tmp_path / "ViT-tiny.pt"))
    guide = load_guide_file(tmp_path / "ViT-tiny.pt")
    with torch.no_grad():
        torch.testing.assert_close(guide.encode(pixels), reference_clip.encode_image(pixels), rtol=0, atol=1e-6)
    assert guide.name == "ViT-tiny"


def test_guide_loads_without_pkg_resources(monkeypatch, tiny_files):
    """clip-anytorch's package __init__ needs pkg_resources; the guide must not."""
    for name in [m for m in sys.modules if m == "clip" or m.startswith("clip.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # makes `import pkg_resources` fail
    with pytest.raises(ImportError):
        importlib.import_module("clip")
    guide = load_guide_file(tiny_files.guide)
    assert guide.embed_dim == 32


def test_generator_file_given_as_guide_is_refused(tiny_files):
    with pytest.raises(essence.errors.WrongFileKindError, match=r"stylegan2_tiny64\.pt.*not an OpenAI CLIP"):
        load_guide_file(tiny_files.generator)


@pytest.mark.slow
def test_loading_the_models_warns_nothing_and_imports_no_compiler(tiny_files):
    """In a fresh interpreter: the clip package imports pkg_resources, and setuptools warned about it
    on every run; other warnings still show. Nor does loading the three models and embedding a target
    picture import torchvision or torch's compiler (1.9 s of every command's start before any work, and 1.2 s
    more where a target picture is embedded)."""
    import subprocess
    from pathlib import Path

    code = ("import sys, warnings, essence\n"
            f"guide = essence.load_guide({str(tiny_files.guide)!r})\n"
            "from PIL import Image\n"
            "import torch; guide.embed_target(Image.new('RGB', (300, 200))); guide.embed_target(torch.rand(1, 90, 60, 3))\n"
            f"essence.load_generator({str(tiny_files.generator)!r})\n"
            f"essence.load_encoder({str(tiny_files.encoder)!r})\n"
            "warnings.warn('still shown')\n"
            "print(sorted(m for m in ('torchvision', 'torch._dynamo', 'sympy') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert "pkg_resources" not in done.stderr and "still shown" in done.stderr
    assert done.stdout.strip() == "[]"
