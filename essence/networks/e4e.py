"""The e4e encoder (Encoder4Editing), key-for-key compatible with omertov/encoder4editing.

e4e maps an FFHQ-aligned 256 px face to a W+ latent: an IR-SE-50 ResNet body (``irse``), a small feature
pyramid, and one "style block" per W+ row. Row 0 predicts a base w; every other row predicts an
offset added to it, which is what keeps e4e's latents editable. The file users have,
``e4e_ffhq_encode.pt``, also embeds the StyleGAN2 generator it was trained with (``decoder.*``).

Widths, unit counts, SE reduction and the number of W+ rows are read from the checkpoint, so the
same code loads the real file and the tiny test fixture.
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
from .irse import Unit, input_stem, ir_se_units, unit_body, units_from_state_dict
from .stylegan2 import EqualLinear

INPUT_SIZE = 256


# ----------------------------------------------------------------------------- building blocks


class GradualStyleBlock(nn.Module):
    """Stride-2 convs down to 1x1, then an equalised linear layer: feature map -> one w row."""

    def __init__(self, in_c: int, out_c: int, num_convs: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_c, out_c, 3, stride=2, padding=1), nn.LeakyReLU()]
        for _ in range(num_convs - 1):
            layers += [nn.Conv2d(out_c, out_c, 3, stride=2, padding=1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)
        self.out_c = out_c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).reshape(-1, self.out_c))


def _upsample_add(x: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class EncoderConfig:
    """Shapes of an Encoder4Editing. ``units`` lists (in_channel, depth, stride, se_reduced)."""

    stem_width: int
    units: tuple[Unit, ...]
    taps: tuple[int, int, int]  # body indices whose outputs feed the pyramid (fine, middle, coarse)
    style_dim: int
    style_convs: tuple[int, ...]  # stride-2 convs per style block; sets which pyramid level it reads

    @property
    def n_styles(self) -> int:
        return len(self.style_convs)

    @classmethod
    def ir_se50(cls, n_styles: int = 18, widths: tuple[int, int, int, int] = (64, 128, 256, 512)) -> "EncoderConfig":
        """The published e4e_ffhq_encode layout: IR-SE-50 with units (3, 4, 14, 3)."""
        units = ir_se_units(widths)
        convs = tuple(4 if i < 3 else 5 if i < 7 else 6 for i in range(n_styles))
        return cls(widths[0], units, (6, 20, 23), widths[-1], convs)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], source: str = "state dict") -> "EncoderConfig":
        """Read the layout off the tensors. Each block of units starts with a stride-2 unit: the
        first unit, and every unit whose width changes (the reference's ``get_blocks``)."""
        try:
            stem = state["input_layer.0.weight"].shape[0]
            units, block_ends = units_from_state_dict(state)
            n_styles = len({k.split(".")[1] for k in state if k.startswith("styles.")})
            style_convs = tuple(
                len({k.split(".")[3] for k in state if k.startswith(f"styles.{i}.convs.")})
                for i in range(n_styles))
            style_dim = state["styles.0.linear.weight"].shape[0]
        except KeyError as exc:
            raise IncompatibleWeightsError(
                f"{source}: not an e4e encoder state dict (missing tensor {exc.args[0]!r}).") from None
        if len(block_ends) != 4 or n_styles == 0:
            raise IncompatibleWeightsError(f"{source}: expected an IR-SE body of 4 blocks and at least one "
                                           f"style block, found {len(block_ends)} blocks, {n_styles} styles.")
        return cls(stem, units, (block_ends[1], block_ends[2], block_ends[3]), style_dim, style_convs)


# ----------------------------------------------------------------------------- the encoder


class E4EEncoder(nn.Module):
    """``Encoder4Editing`` at inference (all W+ offsets active) plus its ``latent_avg``."""

    def __init__(self, config: EncoderConfig):
        super().__init__()
        self.config = config
        c = config
        self.input_layer = input_stem(c.stem_width)
        self.body = unit_body(c.units)
        fine_c, middle_c, coarse_c = (c.units[t][1] for t in c.taps)
        self.styles = nn.ModuleList(GradualStyleBlock(coarse_c, c.style_dim, n) for n in c.style_convs)
        self.latlayer1 = nn.Conv2d(middle_c, coarse_c, kernel_size=1)
        self.latlayer2 = nn.Conv2d(fine_c, coarse_c, kernel_size=1)
        self.register_buffer("latent_avg", torch.zeros(c.n_styles, c.style_dim), persistent=False)

    @property
    def n_latent(self) -> int:
        return self.config.n_styles

    def _pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Body features -> [coarse (16 px), middle (32 px), fine (64 px)] maps for 256 px input."""
        taps = {}
        x = self.input_layer(x)
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self.config.taps:
                taps[i] = x
        fine, middle, coarse = (taps[t] for t in self.config.taps)
        p2 = _upsample_add(coarse, self.latlayer1(middle))
        p1 = _upsample_add(p2, self.latlayer2(fine))
        return [coarse, p2, p1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, 256, 256] in [-1, 1] -> encoder output [B, n_latent, D] (before latent_avg)."""
        levels = self._pyramid(images)
        first = self.config.style_convs[0]
        rows = [self.styles[i](levels[n - first]) for i, n in enumerate(self.config.style_convs)]
        base = rows[0]
        return torch.stack([base] + [base + delta for delta in rows[1:]], dim=1)

    def encode(self, images: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Aligned faces [B, 3, 256, 256] in [-1, 1] -> W+ latents [B, n_latent, D].

        Runs in chunks of ``batch_size`` so large batches do not exhaust memory; a chunk that still
        runs out of device memory is retried in smaller chunks (same result), down to one face.
        """
        check_encoder_input(images)
        param = self.input_layer[0].weight
        # NHWC on CUDA: cuDNN's tensor-core convolutions want it (H100, batch 128: 672 -> 1214 faces/s)
        layout = torch.channels_last if param.device.type == "cuda" else torch.contiguous_format
        if layout == torch.channels_last and not param.is_contiguous(memory_format=layout):
            self.to(memory_format=layout)

        def encode_chunk(chunk: torch.Tensor) -> torch.Tensor:
            return self(chunk.to(param.device, param.dtype).contiguous(memory_format=layout))

        chunks = run_in_chunks_on_oom(encode_chunk, images, batch_size, f"e4e-encoding {len(images)} faces")
        return torch.cat(chunks) + self.latent_avg.to(chunks[0].dtype)


def check_encoder_input(images: torch.Tensor) -> None:
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[2:] != (INPUT_SIZE, INPUT_SIZE):
        raise ShapeError(f"e4e expects aligned faces as a [batch, 3, {INPUT_SIZE}, {INPUT_SIZE}] tensor "
                         f"in [-1, 1], got {list(images.shape)}. Align and resize the face first.")
    if not images.is_floating_point():
        raise ShapeError(f"e4e expects a floating-point tensor in [-1, 1], got {images.dtype}.")


# ----------------------------------------------------------------------------- loading


def encoder_state_from_checkpoint(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The ``encoder.*`` tensors and ``latent_avg`` of an e4e checkpoint."""
    state = obj.get("state_dict") if isinstance(obj, Mapping) else None
    if not isinstance(state, Mapping) or not any(k.startswith("encoder.") for k in state):
        what = describe_contents(obj) if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
        hint = " It looks like a StyleGAN2 generator file." if isinstance(obj, Mapping) and "g_ema" in obj else ""
        raise WrongFileKindError(f"{source}: this is not an e4e encoder checkpoint ({what}).{hint} "
                                 f"Expected e4e_ffhq_encode.pt, a dict with 'state_dict' holding 'encoder.*' tensors.")
    latent_avg = obj.get("latent_avg")
    if not isinstance(latent_avg, torch.Tensor):
        raise IncompatibleWeightsError(f"{source}: the e4e checkpoint has no 'latent_avg' tensor; "
                                       f"its W+ codes cannot be computed without it.")
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    return encoder, latent_avg


def load_encoder_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> E4EEncoder:
    source = str(path)
    state, latent_avg = encoder_state_from_checkpoint(load_torch_file(path), source)
    config = EncoderConfig.from_state_dict(state, source)
    model = build_loaded(E4EEncoder, config, state, source, "e4e encoder")
    if latent_avg.ndim == 1:
        latent_avg = latent_avg[None].expand(config.n_styles, -1)
    if tuple(latent_avg.shape) != (config.n_styles, config.style_dim):
        raise IncompatibleWeightsError(f"{source}: latent_avg has shape {list(latent_avg.shape)}, expected "
                                       f"[{config.n_styles}, {config.style_dim}].")
    model.latent_avg = latent_avg.float().clone()
    return model.eval().requires_grad_(False).to(device)


def build_encoder(config: EncoderConfig, device: str | torch.device = "cpu") -> E4EEncoder:
    """A randomly initialised encoder (tests, benchmarks)."""
    with torch.device(device):
        return E4EEncoder(config).eval()
