"""Record a trace of TargetCLIP's own ``optimization.py`` on the tiny fixtures, at any learning rate.

    python tests/tools/make_reference_trace.py PATH/TO/TargetCLIP --lr 0.2 --with-target \
        --out tests/fixtures/targetclip_public_trace
    python tests/tools/make_reference_trace.py PATH/TO/TargetCLIP --lr 0.1 \
        --out tests/fixtures/targetclip_lr0.1_trace

PATH/TO/TargetCLIP is a checkout of hila-chefer/TargetCLIP (nothing of it is copied here; its
modules are imported from that path). The tiny models and the public trace's sources and start come
from tests/fixtures. The target picture is by default ``astronaut_face``: ``tests/pictures.py``'s
``trace_target()``, her face cut from NASA's public-domain portrait of Eileen Collins in
scikit-image's wheel, written losslessly as a PNG for the reference to read. ``--target NAME`` takes
a picture from ``--fixtures`` instead (default ../shared/fixtures), e.g. ``face_a.jpg``: TargetCLIP's,
which may not be redistributed, and the target of the shared fixtures' golden trace (this tool
reproduces that trace: the same target tensors bit for bit, losses within 1e-6 for 7 steps).
Its ``main(args)`` runs unchanged in its maths, on the CPU, with these stand-ins for what cannot run here:

* the compiled CUDA ops ``fused_leaky_relu`` / ``upfirdn2d``: plain-PyTorch versions below (checked:
  the reference generator built on them reproduces ``stylegan2_tiny64_io.safetensors`` within 1e-4);
* ``.cuda()`` / ``.to("cuda")``: stay on the CPU;
* ``clip.load("ViT-B/32")``: the tiny CLIP fixture; ``load_model``: the reference ``Generator``
  built at the tiny fixture's size and widths, loaded with ``strict=True``;
* ``get_latent`` (the random start): returns the public trace's ``init_direction``, so every
  trace starts from the same point; the sources are the public trace's ``sources``;
* image saving and the unused e4e/OpenCV imports: no-ops.

The loss before each update is read where the reference calls ``loss.backward()``; the best
direction is the ``direction0.npy`` the reference writes. With ``--with-target`` the trace also holds
the target as the reference saw it: ``target_clip_input``, the output of ``optimization.transform``
(CLIP's resize, centre crop and normalisation), and ``target_embedding``, the reference model's
``encode_image`` of it divided by its norm as ``main`` divides it (both read as they pass, not
recomputed). Writes ``<out>.safetensors`` and ``<out>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import math
import sys
import tempfile
import types
from argparse import Namespace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "tests" / "fixtures"  # the tiny models, their reference outputs, the public trace
DEFAULT_FIXTURES = REPO.parent / "shared" / "fixtures"  # where a --target picture is
ASTRONAUT_FACE = "astronaut_face"  # the default target: tests/pictures.py trace_target(), public domain
# tests/pictures.py's TRACE_TARGET_BOX; test_clip_guide.py checks that the trace's target is that picture
TRACE_TARGET_BOX = (150, 40, 290, 180)
PICTURE_SOURCES = {
    ASTRONAUT_FACE: "tests/pictures.py trace_target(): scikit-image's astronaut.png (NASA's portrait of Eileen "
                    "Collins, public domain) cropped to (150, 40, 290, 180), 140 x 140 px, read by the reference "
                    "from a lossless PNG",
    "face_a.jpg": "TargetCLIP's face_a.jpg (no licence: may not be redistributed)",
}


# ----------------------------------------------------------------------------- stand-in ops


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor, negative_slope: float = 0.2,
                     scale: float = 2 ** 0.5) -> torch.Tensor:
    """Bias (over dim 1), leaky ReLU, gain: what the fused CUDA op computes."""
    shape = [1, -1] + [1] * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), negative_slope) * scale


class FusedLeakyReLU(torch.nn.Module):
    def __init__(self, channel: int, negative_slope: float = 0.2, scale: float = 2 ** 0.5) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(channel))
        self.negative_slope = negative_slope
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias, self.negative_slope, self.scale)


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, down: int = 1,
              pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Zero-insert upsampling by ``up``, pad (negative = crop), true 2-D convolution with
    ``kernel``, keep every ``down``-th sample: the CUDA op's definition, per channel."""
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    if up > 1:
        spread = y.new_zeros(n * c, 1, h * up, w * up)
        spread[:, :, ::up, ::up] = y
        y = spread
    y = F.pad(y, [pad[0], pad[1], pad[0], pad[1]])
    kh, kw = kernel.shape
    y = F.conv2d(y, torch.flip(kernel, [0, 1]).view(1, 1, kh, kw).to(y.dtype))
    y = y[:, :, ::down, ::down]
    return y.reshape(n, c, y.shape[2], y.shape[3])


def install_stand_ins() -> None:
    """Modules the reference imports but cannot build or does not use here."""
    op = types.ModuleType("models.stylegan2.op")
    op.FusedLeakyReLU, op.fused_leaky_relu, op.upfirdn2d = FusedLeakyReLU, fused_leaky_relu, upfirdn2d
    sys.modules["models.stylegan2.op"] = op
    sys.modules.setdefault("cv2", types.ModuleType("cv2"))  # only its imshow helper uses OpenCV
    psp = types.ModuleType("models.psp")  # e4e: only for the inversion start, which is not used

    def no_psp(*_args, **_kwargs):
        raise RuntimeError("the e4e start is not used by this trace")

    psp.pSp = no_psp
    sys.modules["models.psp"] = psp


@contextlib.contextmanager
def on_the_cpu():
    """``.cuda()`` and ``.to("cuda")`` leave tensors and modules on the CPU."""
    tensor_to, tensor_cuda, module_cuda = torch.Tensor.to, torch.Tensor.cuda, torch.nn.Module.cuda

    def to(self, *args, **kwargs):
        args = tuple("cpu" if isinstance(a, str) and a.startswith("cuda") else a for a in args)
        if isinstance(kwargs.get("device"), str) and kwargs["device"].startswith("cuda"):
            kwargs["device"] = "cpu"
        return tensor_to(self, *args, **kwargs)

    torch.Tensor.to = to
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.nn.Module.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.to, torch.Tensor.cuda, torch.nn.Module.cuda = tensor_to, tensor_cuda, module_cuda


@contextlib.contextmanager
def recording_target(optimization, model, seen: dict[str, torch.Tensor]):
    """Record the reference's target as it passes: the output of its ``transform`` (the CLIP input)
    and what ``model.encode_image`` makes of that very input."""
    transform, encode_image = optimization.transform, model.encode_image

    def recorded_transform(image):
        pixels = transform(image)
        seen.setdefault("target_clip_input", pixels.detach().clone().unsqueeze(0))
        return pixels

    def recorded_encode_image(images):
        features = encode_image(images)
        target = seen.get("target_clip_input")
        if "target_features" not in seen and target is not None and images.shape == target.shape \
                and torch.equal(images.detach(), target):
            seen["target_features"] = features.detach().clone()
        return features

    optimization.transform, model.encode_image = recorded_transform, recorded_encode_image
    try:
        yield
    finally:
        optimization.transform = transform
        del model.encode_image  # back to the class's method


@contextlib.contextmanager
def recording_backward(losses: list[float]):
    """Record the value of every tensor ``.backward()`` is called on (the reference's total loss)."""
    original = torch.Tensor.backward

    def backward(self, *args, **kwargs):
        losses.append(float(self.detach().reshape(-1)[0]))
        return original(self, *args, **kwargs)

    torch.Tensor.backward = backward
    try:
        yield
    finally:
        torch.Tensor.backward = original


# ----------------------------------------------------------------------------- the reference, tiny


def tiny_generator(model_module, checkpoint: Path):
    """The reference ``Generator`` at the fixture's size, style width, mapping depth and widths."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["g_ema"]
    widths = {4: state["input.input"].shape[1]}
    for key, value in state.items():  # convs.{2k, 2k+1} make resolution 2 ** (3 + k); weight [1, out, in, 3, 3]
        if key.startswith("convs.") and key.endswith(".conv.weight"):
            widths[2 ** (3 + int(key.split(".")[1]) // 2)] = value.shape[1]
    size = max(widths)
    style_dim = state["style.1.weight"].shape[1]
    n_mlp = sum(1 for key in state if key.startswith("style.") and key.endswith(".weight"))

    class TinyGenerator(model_module.Generator):
        def __setattr__(self, name, value):  # the reference hard-codes the FFHQ widths
            if name == "channels":
                value = dict(widths)
            super().__setattr__(name, value)

    generator = TinyGenerator(size, style_dim, n_mlp)
    generator.load_state_dict(state, strict=True)
    return generator.eval(), size


def check_generator(generator, fixtures: Path) -> float:
    """Max abs difference from the reference generator's recorded images (must be below 1e-4)."""
    io = load_file(fixtures / "stylegan2_tiny64_io.safetensors")
    with torch.no_grad():
        image, _ = generator([io["wplus"]], input_is_latent=True, randomize_noise=False)
    return float((image - io["image_from_wplus"]).abs().max())


def target_picture(target: str, fixtures: Path, folder: Path) -> Path:
    """The file the reference reads as its target: the astronaut's face written as a PNG, or ``fixtures/target``."""
    if target != ASTRONAUT_FACE:
        path = fixtures / target
        if not path.is_file():
            raise SystemExit(f"no target picture {path}")
        return path
    spec = importlib.util.find_spec("skimage")  # its pictures ship in the wheel: no import, no download
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the default target is cut from scikit-image's astronaut.png: pip install scikit-image")
    astronaut = Path(list(spec.submodule_search_locations)[0]) / "data" / "astronaut.png"
    path = folder / f"{ASTRONAUT_FACE}.png"
    with Image.open(astronaut) as image:  # lossless: the reference reads the very pixels of the crop
        image.convert("RGB").crop(TRACE_TARGET_BOX).save(path)
    return path


def run_reference(reference: Path, fixtures: Path, lr: float, weight_decay: float, steps: int,
                  target: str) -> dict:
    work = tempfile.TemporaryDirectory()
    target_path = target_picture(target, fixtures, Path(work.name))
    sys.path.insert(0, str(reference))
    install_stand_ins()
    import clip
    import torchvision.utils

    import optimization
    from models.stylegan2 import model as model_module

    public = load_file(MODELS / "targetclip_public_trace.safetensors")
    generator, size = tiny_generator(model_module, MODELS / "stylegan2_tiny64.pt")
    generator_error = check_generator(generator, MODELS)
    if generator_error > 1e-4:
        raise SystemExit(f"the stand-in ops do not reproduce the reference generator ({generator_error:.2e})")

    clip_load = clip.load
    losses: list[float] = []
    seen: dict[str, torch.Tensor] = {}
    tiny_clip = clip_load(str(MODELS / "clip_tiny.pt"), device="cpu", jit=False)
    with work as tmp, on_the_cpu(), recording_backward(losses), recording_target(optimization, tiny_clip[0], seen):
        torch.save(public["sources"].clone(), Path(tmp) / "sources.pt")
        clip.load = lambda _name, device="cpu", jit=False: tiny_clip
        torchvision.utils.save_image = lambda *args, **kwargs: None
        optimization.load_model = lambda _args: torch.nn.DataParallel(generator)
        optimization.get_latent = lambda _g: public["init_direction"].clone().requires_grad_(True)
        args = Namespace(lambda_consistency=0.5, dir_name=str(Path(tmp) / "run"), output_folder=None,
                         ckpt=None, e4e_ckpt=None, stylegan_size=size, lr=lr, weight_decay=weight_decay,
                         step=steps, target_path=str(target_path), truncation=0.7,
                         save_intermediate_image_every=1, lambda_transfer=1.0, num_images=4,
                         num_directions=1, generated_images=False, data_path=str(Path(tmp) / "sources.pt"),
                         dir_initialization=None, random_initiate=True)
        torch.manual_seed(0)
        try:
            optimization.main(args)
        finally:
            clip.load = clip_load
        best = torch.from_numpy(np.load(Path(tmp) / "run" / "direction0.npy"))
    if len(losses) != steps or not all(math.isfinite(v) for v in losses):
        raise SystemExit(f"expected {steps} finite losses, recorded {losses}")
    if set(seen) != {"target_clip_input", "target_features"}:
        raise SystemExit(f"the reference's target was not seen as expected (recorded {sorted(seen)})")
    features = seen["target_features"]
    return {"loss_per_step": torch.tensor(losses), "best_direction": best,
            "sources": public["sources"], "init_direction": public["init_direction"],
            "target_clip_input": seen["target_clip_input"],
            "target_embedding": features / features.norm(dim=-1),  # as optimization.main normalises it
            "generator_max_abs_error": generator_error}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reference", type=Path, help="a checkout of hila-chefer/TargetCLIP")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--target", default=ASTRONAUT_FACE,
                        help=f"'{ASTRONAUT_FACE}' (tests/pictures.py trace_target(), public domain; the default) or "
                             "an image in the --fixtures folder, e.g. face_a.jpg")
    parser.add_argument("--fixtures", type=Path, default=DEFAULT_FIXTURES,
                        help="the folder of any other --target picture (default ../shared/fixtures)")
    parser.add_argument("--with-target", action="store_true",
                        help="also store target_clip_input and target_embedding (the public trace's layout)")
    parser.add_argument("--reference-commit", default="", help="the checkout's commit, recorded in the JSON")
    parser.add_argument("--out", type=Path, required=True, help="output path without extension")
    args = parser.parse_args()
    torch.set_num_threads(1)

    trace = run_reference(args.reference.resolve(), args.fixtures, args.lr, args.weight_decay, args.steps,
                          args.target)
    losses = trace["loss_per_step"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    keys = ["loss_per_step", "best_direction", "sources", "init_direction"]
    keys += ["target_clip_input", "target_embedding"] if args.with_target else []
    tensors = {k: trace[k].contiguous() for k in keys}
    save_file(tensors, f"{args.out}.safetensors")
    summary = {
        "made_by": "tests/tools/make_reference_trace.py: TargetCLIP optimization.py main(), on the CPU",
        "reference": "hila-chefer/TargetCLIP" + (f" @ {args.reference_commit}" if args.reference_commit else ""),
        "official_args": {"lambda_consistency": 0.5, "lambda_transfer": 1.0, "stylegan_size": 64,
                          "lr": args.lr, "weight_decay": args.weight_decay, "step": args.steps,
                          "num_images": 4, "num_directions": 1},
        "generator": "stylegan2_tiny64.pt", "clip": "clip_tiny.pt", "target_image": args.target,
        "target_source": PICTURE_SOURCES.get(args.target, f"{args.target} of the shared fixtures"),
        "sources_and_init": "sources / init_direction of targetclip_public_trace.safetensors (the shared fixtures' "
                            "golden trace's, bit for bit)",
        "generator_max_abs_error_vs_fixture": trace["generator_max_abs_error"],
        "torch": torch.__version__,
        "steps_recorded": len(losses), "loss_first": float(losses[0]), "loss_min": float(losses.min()),
        "best_step": int(losses.argmin()), "loss_last": float(losses[-1]),
    }
    Path(f"{args.out}.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
