"""CLIP image embeddings: the signal that steers TargetCLIP.

Only CLIP's image tower is kept (the text tower of ViT-B/32 alone is ~63 M parameters we never use).
The architecture comes from the ``clip`` package (PyPI ``clip-anytorch``), so embeddings equal
OpenAI's for the same weights; Essence only reads the file itself, because ``clip.load`` falls back
to full unpickling when a file is not TorchScript, which a shared file must never get.

Two ways into the tower, as in the official TargetCLIP code:

* ``embed_generated``: generator output (about [-1, 1], any power-of-two size >= 32) is resized to
  224 px with TargetCLIP's "nearest upsample x7, then average-pool by size/32" and, in the default
  ``"official"`` mode, fed to CLIP *without* CLIP's mean/std normalisation (what the paper's code
  does). ``"normalized"`` maps it to [0, 1] and applies CLIP's mean/std, as CLIP was trained.
* ``embed_target``: a target picture goes through CLIP's own preprocessing (bicubic resize of the
  short side, centre crop, mean/std normalisation).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, Iterable, Literal, Mapping

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import CorruptFileError, IncompatibleWeightsError, ShapeError, WrongFileKindError
from ..storage import is_torchscript_archive, load_torch_file, refuse_torchscript_load_code

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
UPSAMPLE_FACTOR = 7  # TargetCLIP's nn.Upsample(scale_factor=7)
_CLIP_MODEL = "essence_clip_model"  # clip.model, loaded without the package (import_clip_model)

GeneratedMode = Literal["official", "normalized"]


def official_resize_matrix(size: int, out_size: int, factor: int = UPSAMPLE_FACTOR) -> torch.Tensor:
    """The linear map of "nearest upsample x factor, then average-pool to out_size" along one axis.

    Computing it as ``A @ image @ A.T`` gives the official result without materialising the
    7x-upsampled image (7168 x 7168 x 3 floats per 1024 px image, 616 MB). A: [out_size, size].
    """
    kernel = size * factor // out_size
    if kernel * out_size != size * factor:
        raise ShapeError(f"generated images must be a multiple of 32 px on each side for TargetCLIP's "
                         f"resize to {out_size} px, got {size} px.")
    upsampled_source = torch.arange(size * factor) // factor  # which input pixel each upsampled one copies
    bins = torch.arange(size * factor) // kernel  # which output pixel each upsampled one averages into
    matrix = torch.zeros(out_size, size)
    matrix.index_put_((bins, upsampled_source), torch.full((size * factor,), 1.0 / kernel), accumulate=True)
    return matrix


class ClipGuide(nn.Module):
    """CLIP's image tower with TargetCLIP's two preprocessing paths."""

    def __init__(self, visual: nn.Module, name: str = "CLIP"):
        super().__init__()
        self.visual = visual
        self.name = name
        self.input_resolution: int = int(visual.input_resolution)
        self.embed_dim: int = int(visual.output_dim)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self._resize_cache: dict[tuple[int, str, torch.dtype], torch.Tensor] = {}

    def _resize_matrix(self, size: int, like: torch.Tensor) -> torch.Tensor:
        key = (size, str(like.device), like.dtype)
        if key not in self._resize_cache:
            self._resize_cache[key] = official_resize_matrix(size, self.input_resolution).to(like.device, like.dtype)
        return self._resize_cache[key]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Already-preprocessed pixels [B, 3, R, R] -> embeddings [B, embed_dim] (not normalised)."""
        dtype = self.visual.conv1.weight.dtype
        return self.visual(pixels.to(dtype))

    def resize_generated(self, images: torch.Tensor, mode: GeneratedMode = "official") -> torch.Tensor:
        """Generator output [B, 3, S, S] -> CLIP input [B, 3, R, R] (differentiable)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3]:
            raise ShapeError(f"generated images must be [batch, 3, size, size], got {list(images.shape)}.")
        matrix = self._resize_matrix(images.shape[-1], images)
        pixels = matrix @ images @ matrix.t()
        if mode == "official":
            return pixels
        if mode == "normalized":
            return ((pixels + 1) / 2 - self.mean.to(pixels.dtype)) / self.std.to(pixels.dtype)
        raise ValueError(f"mode must be 'official' or 'normalized', got {mode!r}.")

    def embed_generated(self, images: torch.Tensor, mode: GeneratedMode = "official") -> torch.Tensor:
        """Generator output [B, 3, S, S] -> CLIP embeddings [B, embed_dim] (not normalised)."""
        return self.encode(self.resize_generated(images, mode))

    def preprocess(self, images: Image.Image | torch.Tensor | Iterable[Image.Image]) -> torch.Tensor:
        """CLIP's own preprocessing -> [B, 3, R, R].

        PIL images take exactly the steps of the torchvision pipeline ``clip`` uses (bicubic resize of the
        short side, centre crop, to [0, 1], mean/std). Tensors are ComfyUI-style [B, H, W, C] in
        [0, 1] and take the same steps on the tensor (antialiased bicubic), which stays
        differentiable and differs from PIL's resampling by at most about 0.01 in 0..1 pixel values on
        an aligned face photo (0.02 on finely textured pictures: the two resize kernels differ).
        """
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, torch.Tensor):
            return self._preprocess_tensor(images)
        return torch.stack([_clip_pixels(image, self.input_resolution) for image in images]).to(self.mean.device)

    def _preprocess_tensor(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
            raise ShapeError(f"target images must be [batch, height, width, channels] in [0, 1] "
                             f"(channels 1, 3 or 4), got {list(images.shape)}.")
        x = images[..., :3] if images.shape[-1] != 1 else images.expand(-1, -1, -1, 3)
        x = x.permute(0, 3, 1, 2).to(self.mean.device, torch.float32)
        size = _short_side_resized(x.shape[-2], x.shape[-1], self.input_resolution)
        if size != tuple(x.shape[-2:]):
            x = nn.functional.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
        return (_centre_crop(x, self.input_resolution).clamp(0, 1) - self.mean) / self.std

    def embed_target(self, images: Image.Image | torch.Tensor | Iterable[Image.Image]) -> torch.Tensor:
        """Target picture(s) -> CLIP embeddings [B, embed_dim] (not normalised)."""
        return self.encode(self.preprocess(images))


# CLIP's preprocessing is torchvision's Resize(bicubic), CenterCrop, ToTensor and Normalize. Written
# here with the same arithmetic (tests check it against torchvision, bit for bit) because importing
# torchvision costs every process that embeds a target 1.2 s, mostly torch's compiler.


def _short_side_resized(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) with the short side ``short`` and the long one truncated, as ``Resize(int)``."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def _centre_offset(length: int, crop: int) -> int:
    return int(round((length - crop) / 2.0))


def _centre_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """[..., H, W] -> [..., size, size]; H and W are at least ``size`` after ``_short_side_resized``."""
    top, left = _centre_offset(x.shape[-2], size), _centre_offset(x.shape[-1], size)
    return x[..., top:top + size, left:left + size]


def _clip_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """A PIL picture -> [3, R, R] as CLIP's own preprocessing makes it: bicubic resize (PIL's
    antialiased filter) in the picture's own mode, centre crop, RGB, /255, mean/std in float32."""
    height, width = _short_side_resized(image.height, image.width, resolution)
    if (height, width) != (image.height, image.width):
        image = image.resize((width, height), Image.BICUBIC)
    top, left = _centre_offset(height, resolution), _centre_offset(width, resolution)
    image = image.crop((left, top, left + resolution, top + resolution)).convert("RGB")
    x = torch.from_numpy(np.array(image, np.uint8, copy=True)).permute(2, 0, 1).float().div(255)
    return (x - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


# ----------------------------------------------------------------------------- loading


def clip_state_from_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of an OpenAI CLIP file: a TorchScript archive or a plain state dict.

    TorchScript archives are opened with ``torch.jit.load``, which reads TorchScript code and
    tensors but never Python pickles of arbitrary objects; only the weights are kept. Archives whose
    code would run while loading (a ``__setstate__``) or that unpack to far more than their size are
    refused first (``refuse_torchscript_load_code``).
    """
    source = str(path)
    if is_torchscript_archive(path):
        refuse_torchscript_load_code(path)
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except (RuntimeError, OSError) as exc:
            raise CorruptFileError(f"{source}: damaged TorchScript archive ({str(exc).splitlines()[0]}). "
                                   f"Download it again.") from None
        state = {k: v for k, v in scripted.state_dict().items()}
    else:
        obj = load_torch_file(path)
        state = obj.get("state_dict", obj) if isinstance(obj, Mapping) else obj
    if not isinstance(state, Mapping) or "visual.proj" not in state and "visual.attnpool.c_proj.weight" not in state:
        what = _describe(state)
        raise WrongFileKindError(f"{source}: this is not an OpenAI CLIP model ({what}). Expected a file such "
                                 f"as ViT-B-32.pt (TorchScript) or a CLIP state dict with 'visual.*' tensors.")
    return dict(state)


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        if "g_ema" in obj:
            return "it looks like a StyleGAN2 generator"
        if "state_dict" in obj:
            return "it looks like an encoder checkpoint"
        return f"top-level keys {list(obj)[:5]}"
    return f"a {type(obj).__name__}"


def import_clip_model():
    """clip-anytorch's ``clip.model`` module (the network), loaded on its own.

    The package's ``__init__`` imports torchvision and pkg_resources for tokenising and preprocessing
    that Essence does not take from it; torchvision alone costs 1.2 s (mostly torch's compiler) in
    every process that loads a guide. Loaded once per process, kept in ``sys.modules``."""
    for name in ("clip.model", _CLIP_MODEL):
        if name in sys.modules:
            return sys.modules[name]
    spec = importlib.util.find_spec("clip")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'clip' package is missing: pip install clip-anytorch")
    location = os.path.join(list(spec.submodule_search_locations)[0], "model.py")
    module_spec = importlib.util.spec_from_file_location(_CLIP_MODEL, location)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.modules[_CLIP_MODEL] = module
    return module


def load_guide_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> ClipGuide:
    """Build the CLIP image tower from a file, in float32, without gradients on its weights."""
    state = clip_state_from_file(path)
    clip_model = import_clip_model()
    for key in ("input_resolution", "context_length", "vocab_size"):
        state.pop(key, None)
    try:
        model = clip_model.build_model(state)
    except (KeyError, RuntimeError, IndexError) as exc:
        raise IncompatibleWeightsError(f"{path}: the CLIP weights do not fit the architecture "
                                       f"({str(exc).splitlines()[0]}).") from None
    visual = model.visual.float()
    name = os.path.splitext(os.path.basename(str(path)))[0]
    return ClipGuide(visual, name=name).eval().requires_grad_(False).to(device)


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """Normalise embeddings to unit length along the last axis (``x / |x|``)."""
    return x / x.norm(dim=-1, keepdim=True)
