"""The ArcFace identity network (IR-SE-50), as pSp, e4e and TargetCLIP measure identity with it.

``model_ir_se50.pth`` is a plain state dict of the reference ``Backbone(input_size=112,
num_layers=50, mode='ir_se', drop_ratio=0.6)`` (omertov/encoder4editing and eladrich/pixel2style2pixel
``models/encoders/model_irse.py``; the weights are TreB1eN/InsightFace_Pytorch's). This module holds
it key for key: the IR-SE stem and units of ``irse``, then BatchNorm, dropout, flatten, a linear
layer to 512 and a BatchNorm1d; the output is L2-normalised.

``IdentityEncoder.embed`` reproduces the reference ``IDLoss.extract_feats`` of TargetCLIP's
``experiments/Losses.py``: faces not 256 px are first average-pooled to 256, then the face region
``[35:223, 32:220]`` is cropped and average-pooled to 112 px. The cosine of two embeddings is the
paper's identity similarity.

Widths, unit counts and the embedding size are read from the file, so the same code loads the real
file and small test networks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import IncompatibleWeightsError, ShapeError, WrongFileKindError
from ..runtime import run_in_chunks_on_oom
from ..storage import build_loaded, describe_contents, load_torch_file
from .irse import IR_SE_WIDTHS, Unit, input_stem, ir_se_units, unit_body, units_from_state_dict

NETWORK_SIZE = 112  # the backbone's input size (the reference's input_size=112)
FACE_SIZE = 256  # the aligned-face size the crop below is defined on
FACE_CROP = (slice(35, 223), slice(32, 220))  # rows, columns of the face region at 256 px (extract_feats)
DROP_RATIO = 0.6  # as the reference builds it; dropout does nothing at inference


@dataclass(frozen=True)
class IdentityConfig:
    """Shapes of an IR-SE backbone. ``units`` lists (in_channel, depth, stride, se_reduced)."""

    stem_width: int
    units: tuple[Unit, ...]
    embed_dim: int

    @property
    def out_width(self) -> int:
        return self.units[-1][1] if self.units else self.stem_width

    @property
    def out_size(self) -> int:
        """Side of the last feature map for a 112 px input (7 for IR-SE-50)."""
        size = NETWORK_SIZE
        for _in_c, _depth, stride, _se in self.units:
            size = (size - 1) // stride + 1
        return size

    @classmethod
    def ir_se50(cls, widths: tuple[int, int, int, int] = IR_SE_WIDTHS, embed_dim: int = 512) -> "IdentityConfig":
        """The layout of ``model_ir_se50.pth``: IR-SE-50, units (3, 4, 14, 3) at 64..512 channels."""
        return cls(widths[0], ir_se_units(widths), embed_dim)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], source: str = "state dict") -> "IdentityConfig":
        """Read the layout off the tensors (and check the output layer fits it)."""
        try:
            stem = state["input_layer.0.weight"].shape[0]
            units, _block_ends = units_from_state_dict(state)
            linear = state["output_layer.3.weight"]  # [embed_dim, width * size * size]
        except KeyError as exc:
            raise IncompatibleWeightsError(
                f"{source}: not an ArcFace IR-SE state dict (missing tensor {exc.args[0]!r}).") from None
        config = cls(stem, units, linear.shape[0])
        flat = config.out_width * config.out_size ** 2
        if linear.ndim != 2 or linear.shape[1] != flat:
            raise IncompatibleWeightsError(
                f"{source}: output_layer.3.weight has shape {list(linear.shape)}, but the body ends in "
                f"{config.out_width} channels at {config.out_size}x{config.out_size} px, so [{config.embed_dim}, "
                f"{flat}] was expected. Only the 112 px Backbone (model_ir_se50.pth) is supported.")
        return config


class IdentityEncoder(nn.Module):
    """The reference ``Backbone(112, 50, 'ir_se')`` plus ``extract_feats``' face crop (``embed``)."""

    def __init__(self, config: IdentityConfig):
        super().__init__()
        self.config = config
        c = config
        self.input_layer = input_stem(c.stem_width)
        self.output_layer = nn.Sequential(  # declared before the body, as the reference does (same key order)
            nn.BatchNorm2d(c.out_width),
            nn.Dropout(DROP_RATIO),
            nn.Flatten(),
            nn.Linear(c.out_width * c.out_size ** 2, c.embed_dim),
            nn.BatchNorm1d(c.embed_dim),
        )
        self.body = unit_body(c.units)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """112 px face crops [B, 3, 112, 112] in [-1, 1] -> unit vectors [B, embed_dim]."""
        features = self.output_layer(self.body(self.input_layer(x)))
        return features / torch.linalg.vector_norm(features, dim=1, keepdim=True)

    def embed(self, faces: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """FFHQ-aligned faces [B, 3, H, H] in [-1, 1] (any square size) -> unit vectors [B, embed_dim].

        Computed as TargetCLIP's ``IDLoss.extract_feats``, so cosines match the paper's identity
        metric. Runs in chunks of ``batch_size``; a chunk that runs out of device memory is retried
        in smaller chunks (same result). Gradients flow to ``faces`` when they require them; the
        network's own weights never change.
        """
        check_face_input(faces)
        param = self.input_layer[0].weight

        def embed_chunk(chunk: torch.Tensor) -> torch.Tensor:
            return self(face_crop(chunk.to(param.device, param.dtype)))

        return torch.cat(run_in_chunks_on_oom(embed_chunk, faces, batch_size, f"ArcFace-embedding {len(faces)} faces"))


def face_crop(faces: torch.Tensor) -> torch.Tensor:
    """Aligned faces [B, 3, H, H] -> the 112 px crops the backbone sees (``extract_feats``)."""
    if faces.shape[-2:] != (FACE_SIZE, FACE_SIZE):
        faces = F.adaptive_avg_pool2d(faces, (FACE_SIZE, FACE_SIZE))
    return F.adaptive_avg_pool2d(faces[:, :, FACE_CROP[0], FACE_CROP[1]], (NETWORK_SIZE, NETWORK_SIZE))


def check_face_input(faces: torch.Tensor) -> None:
    if not isinstance(faces, torch.Tensor) or faces.ndim != 4 or faces.shape[1] != 3:
        shape = list(faces.shape) if isinstance(faces, torch.Tensor) else type(faces).__name__
        raise ShapeError(f"the identity model expects aligned faces as a [batch, 3, height, width] tensor in "
                         f"[-1, 1], got {shape}.")
    if faces.shape[2] != faces.shape[3] or faces.shape[0] == 0:
        raise ShapeError(f"the identity model expects a non-empty batch of square FFHQ-aligned faces (e.g. "
                         f"256 or 1024 px), got {list(faces.shape)}. Align the face first.")
    if not faces.is_floating_point():
        raise ShapeError(f"the identity model expects a floating-point tensor in [-1, 1], got {faces.dtype}.")


# ----------------------------------------------------------------------------- loading


def identity_state_from_checkpoint(obj: Any, source: str) -> Mapping[str, torch.Tensor]:
    """The backbone's tensors: the file is the state dict itself."""
    if not isinstance(obj, Mapping) or "input_layer.0.weight" not in obj or "output_layer.3.weight" not in obj:
        what = describe_contents(obj) if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        hint = ""
        if isinstance(obj, Mapping) and "g_ema" in obj:
            hint = " It looks like a StyleGAN2 generator file."
        elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            hint = " It looks like an e4e/pSp checkpoint, not the ArcFace network."
        raise WrongFileKindError(f"{source}: this is not the ArcFace identity network ({what}).{hint} Expected "
                                 f"model_ir_se50.pth, a state dict with 'input_layer.*', 'body.*' and "
                                 f"'output_layer.*' tensors.")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise IncompatibleWeightsError(f"{source}: entries {bad[:5]} of the ArcFace state dict are not tensors.")
    return obj


def load_identity_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> IdentityEncoder:
    """``model_ir_se50.pth``-style file -> ``IdentityEncoder`` in eval mode, weights frozen."""
    source = str(path)
    state = identity_state_from_checkpoint(load_torch_file(path), source)
    config = IdentityConfig.from_state_dict(state, source)
    model = build_loaded(IdentityEncoder, config, state, source, "ArcFace identity")
    return model.eval().requires_grad_(False).to(device)


def build_identity(config: IdentityConfig, device: str | torch.device = "cpu") -> IdentityEncoder:
    """A randomly initialised identity network (tests, benchmarks)."""
    with torch.device(device):
        return IdentityEncoder(config).eval()
