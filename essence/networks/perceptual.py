"""LPIPS with AlexNet features: the perceptual distance pivotal tuning minimises.

The ``lpips`` package (BSD-2-Clause, Zhang et al. 2018) defines the network and ships its learned
linear heads, and its ``LPIPS`` class is what PTI and STIT call. Its constructor would also fetch
the AlexNet backbone through torchvision's hub: a download Essence cannot control, at run time,
outside the weight manifest. So the package's own class is built with a random backbone; the heads
are read from the package's file, and the backbone from torchvision's ImageNet AlexNet file
(``alexnet-owt-7be5be79.pth``), found like every other weight file. The result is the package's
``LPIPS`` module with the package's keys, equal to ``lpips.LPIPS(net="alex")``.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import EssenceError, IncompatibleWeightsError, WrongFileKindError
from ..storage import describe_contents, load_state_strict, load_torch_file

# torchvision's AlexNet ``features`` convolutions -> where LPIPS's slices hold them
BACKBONE_KEYS = {"features.0": "net.slice1.0", "features.3": "net.slice2.3", "features.6": "net.slice3.6",
                 "features.8": "net.slice4.8", "features.10": "net.slice5.10"}
HEADS_VERSION = "0.1"  # LPIPS v0.1, the version the package (and PTI) use by default


def import_lpips() -> Any:
    """The ``lpips`` package, or an error saying how to install it."""
    try:
        import lpips
    except ImportError as exc:
        raise EssenceError(f"pivotal tuning needs the 'lpips' package ({exc}); install it with: "
                           f"pip install lpips") from exc
    return lpips


def heads_file() -> Path:
    """The package's file of AlexNet linear heads (found without importing the package)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        import_lpips()  # raises with the install command
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / f"v{HEADS_VERSION}" / "alex.pth"
    if not path.is_file():
        raise EssenceError(f"the lpips package has no {path.name} at {path}; reinstall it: "
                           f"pip install --force-reinstall lpips")
    return path


def backbone_state(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The five convolutions of a torchvision AlexNet state dict, under LPIPS's keys.

    The classifier (``classifier.*``) is not part of LPIPS and is left out; every convolution must
    be there with AlexNet's shapes (checked when loading)."""
    if not isinstance(obj, Mapping):
        raise WrongFileKindError(f"{source}: expected torchvision's AlexNet state dict, found a {type(obj).__name__}.")
    state = obj
    wanted = [f"{old}.{leaf}" for old in BACKBONE_KEYS for leaf in ("weight", "bias")]
    missing = [key for key in wanted if not isinstance(state.get(key), torch.Tensor)]
    if missing:
        raise WrongFileKindError(
            f"{source}: this is not torchvision's AlexNet file ({describe_contents(state)}); "
            f"missing {', '.join(missing[:4])}. LPIPS needs alexnet-owt-7be5be79.pth from download.pytorch.org.")
    return {f"{BACKBONE_KEYS[key.rsplit('.', 1)[0]]}.{key.rsplit('.', 1)[1]}": state[key].float() for key in wanted}


def build_perceptual(backbone: Mapping[str, torch.Tensor], source: str = "AlexNet weights") -> torch.nn.Module:
    """``lpips.LPIPS(net="alex")`` with the package's heads and ``backbone`` (LPIPS keys), frozen."""
    lpips = import_lpips()
    with warnings.catch_warnings():  # the package still passes torchvision's retired ``pretrained=``
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    heads = load_torch_file(heads_file())
    state = dict(model.state_dict())  # the scaling layer's constants stay the package's
    state.update(backbone)
    for i in range(5):  # the heads are held twice: lin{i} and lins.{i} are the same module
        key = f"lin{i}.model.1.weight"
        if key not in heads:
            raise IncompatibleWeightsError(f"{heads_file()}: no {key}; reinstall the lpips package.")
        state[key] = state[f"lins.{i}.model.1.weight"] = heads[key]
    load_state_strict(model, state, source, "LPIPS network")
    return model.eval().requires_grad_(False)


def load_perceptual_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """LPIPS(alex) whose backbone is the torchvision AlexNet file at ``path``."""
    source = str(path)
    return build_perceptual(backbone_state(load_torch_file(path), source), source).to(device)


def perceptual_distance(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """LPIPS between images [B, 3, H, W] and targets of the same shape, both in [-1, 1] -> [B]."""
    return model(images, targets).reshape(images.shape[0])
