"""Loading the networks from the files users have, found by role when no path is given.

Models are built outside ``torch.inference_mode``: ComfyUI runs every node under it, and tensors
created there can never take part in autograd (training). By default a loaded model is kept in
``runtime``'s cache, so asking for the same file again costs nothing.
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

import torch

from ..errors import MissingWeightsError
from ..runtime import cached_model, resolve_device
from ..storage import fetch_command, find_weight
from .clip_guide import ClipGuide, load_guide_file
from .e4e import E4EEncoder, load_encoder_file
from .identity import IdentityEncoder, load_identity_file
from .perceptual import load_perceptual_file
from .stylegan2 import StyleGAN2Generator, load_generator_file

PathLike = str | os.PathLike
Model = TypeVar("Model")


def _load(role: str, path: PathLike | None, device: str | torch.device | None,
          loader: Callable[..., Model], cache: bool) -> Model:
    file = find_weight(role, explicit_path=path)
    target = resolve_device(device)
    with torch.inference_mode(False):
        if not cache:
            return loader(file, target)
        return cached_model(role, file, target, loader)


def load_generator(path: PathLike | None = None, device: str | torch.device | None = "cpu",
                   cache: bool = True) -> StyleGAN2Generator:
    """StyleGAN2 generator from ``stylegan2-ffhq-config-f.pt``-style files or an e4e file's decoder."""
    return _load("generator", path, device, load_generator_file, cache)


def load_encoder(path: PathLike | None = None, device: str | torch.device | None = "cpu",
                 cache: bool = True) -> E4EEncoder:
    """e4e encoder from ``e4e_ffhq_encode.pt``-style files."""
    return _load("encoder", path, device, load_encoder_file, cache)


def load_guide(path: PathLike | None = None, device: str | torch.device | None = "cpu",
               cache: bool = True) -> ClipGuide:
    """CLIP image tower from OpenAI's TorchScript files (``ViT-B-32.pt``) or a CLIP state dict."""
    return _load("guide", path, device, load_guide_file, cache)


def load_identity(path: PathLike | None = None, device: str | torch.device | None = "cpu",
                  cache: bool = True) -> IdentityEncoder:
    """ArcFace IR-SE-50 identity network from ``model_ir_se50.pth`` (pSp / e4e / TargetCLIP's ID metric).

    ``load_identity().embed(faces)`` turns aligned faces [B, 3, H, H] in [-1, 1] into unit vectors
    [B, 512]; the dot product of two is their identity similarity.
    """
    return _load("identity", path, device, load_identity_file, cache)


def load_perceptual(path: PathLike | None = None, device: str | torch.device | None = "cpu",
                    cache: bool = True) -> torch.nn.Module:
    """LPIPS(alex), the perceptual distance of pivotal tuning: the ``lpips`` package's network with
    its heads, and torchvision's AlexNet from ``alexnet-owt-7be5be79.pth``. ``model(a, b)`` takes
    images [B, 3, H, W] in [-1, 1] and gives [B, 1, 1, 1]."""
    return _load("perceptual", path, device, load_perceptual_file, cache)


def perceptual_network(perceptual: torch.nn.Module | PathLike | None,
                       device: str | torch.device | None = "cpu") -> torch.nn.Module:
    """The LPIPS network a caller gave, or the one loaded from the file it named (default: looked up)."""
    return perceptual if isinstance(perceptual, torch.nn.Module) else load_perceptual(perceptual, device)


def encoder_from(encoder: E4EEncoder | PathLike | None, device: str | torch.device | None = "cpu") -> E4EEncoder:
    """The e4e encoder a caller gave, or the one loaded from the file it named (default: looked up)."""
    return encoder if isinstance(encoder, E4EEncoder) else load_encoder(encoder, device)


def generator_from(generator: StyleGAN2Generator | PathLike | None, device: str | torch.device | None = "cpu", *,
                   fallback_encoder: E4EEncoder | PathLike | None = None) -> StyleGAN2Generator:
    """The generator a caller gave, or the one loaded from the file it named; when it named none, the
    decoder inside the e4e file ``fallback_encoder`` names (an e4e file embeds the generator its
    latents were trained for, so the two always fit), else the one looked up."""
    if isinstance(generator, StyleGAN2Generator):
        return generator
    if generator is None and isinstance(fallback_encoder, (str, os.PathLike)):
        return load_generator(fallback_encoder, device)
    return load_generator(generator, device)


def optional_identity(path: PathLike | None = None,
                      device: str | torch.device | None = "cpu") -> tuple[IdentityEncoder | None, str | None]:
    """The identity network where one is only nice to have (metrics, ranking candidates): the file
    given (which must then exist), else the installed one, else None and a note saying how to get it
    (the caller says what goes without it)."""
    if path:
        return load_identity(path, device), None
    try:
        return load_identity(device=device), None
    except MissingWeightsError:
        return None, (f"no identity model (model_ir_se50.pth) found; get it with: {fetch_command()} "
                      f"arcface-ir-se50")
