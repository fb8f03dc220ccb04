"""The StyleGAN2 generator, key-for-key compatible with rosinality/stylegan2-pytorch.

Users already have ``stylegan2-ffhq-config-f.pt`` (and e4e files that embed the same generator), so
every module and buffer below carries the reference's name and shape and those files load with
``strict=True``. The architecture (resolution, channel widths, style size, mapping depth) is read
from the checkpoint's shapes, so the same code serves the 1024 px FFHQ model and tiny test models.

Latent vocabulary used throughout Essence:
  z   [B, style_dim]             a Gaussian sample
  w   [B, style_dim]             the mapping network's output
  W+  [B, n_latent, style_dim]   one w per synthesis layer (18 rows at 1024 px); directions live here
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import IncompatibleWeightsError, ShapeError, WrongFileKindError
from ..storage import build_loaded, describe_contents, load_torch_file
from .fused import fused_bias_act, fused_scale_channels, require_triton
from .ops import (LEAKY_GAIN, LEAKY_SLOPE, bias_leaky_relu, make_blur_kernel, scale_channels, standard_normal,
                  upfirdn2d)

NoiseSpec = str | Sequence[torch.Tensor | None]
UPSAMPLE_METHODS = ("auto", "phases", "transposed")
KERNELS = ("eager", "fused")  # see StyleGAN2Generator.set_kernels


# ----------------------------------------------------------------------------- building blocks


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with StyleGAN's equalised learning rate (weights scaled at run time)."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(standard_normal(out_dim, in_dim, divisor=lr_mul))
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias * self.lr_mul
        if self.activation:
            return bias_leaky_relu(F.linear(x, self.weight * self.scale), bias)
        return F.linear(x, self.weight * self.scale, bias=bias)


class Blur(nn.Module):
    def __init__(self, taps: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        self.register_buffer("kernel", make_blur_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """x2 upsampling with a blur kernel (used on the RGB skip path)."""

    def __init__(self, taps: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_blur_kernel(taps) * factor**2)
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    """Style-modulated convolution.

    The reference folds the style into a per-sample weight and runs a grouped conv. Scaling the
    *input* channels by the style and the *output* channels by the demodulation coefficients is the
    same linear map, shares one weight across the batch, and is faster for batches.

    Upsampling layers: the reference runs a stride-2 transposed conv, then a 4x4 depthwise blur.
    Both are linear, so they compose into one kernel (conv weight * blur), whose four stride-2
    phases are ordinary 3x3 kernels: one conv with 4x the output channels plus a pixel shuffle
    gives the same image. Depthwise convs run on slow generic kernels on GPUs; this runs on
    cuDNN's tensor-core convolutions instead (the blur was 18 % of an H100 training step). It does
    4x the multiply-adds of the transposed conv, which costs more than the blur on CPUs.
    """

    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample = upsample
        self.demodulate = demodulate
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1),
                             upsample_factor=factor)
            self._init_phases(kernel_size, len(blur_kernel))
        # "phases" (one conv + pixel shuffle), "transposed" (the reference's transposed conv + blur)
        # or "auto": phases on CUDA, transposed elsewhere; see StyleGAN2Generator.set_upsample_method
        self.upsample_method = "auto"
        self.kernels = "eager"  # or "fused": see StyleGAN2Generator.set_kernels
        self.scale = 1 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(standard_normal(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1)

    def _init_phases(self, kernel_size: int, taps: int) -> None:
        """Where each output phase's taps sit in the composed (kernel_size + taps - 1)^2 kernel K.

        Output pixel 2i + p of the reference op is sum_u x[i + u] * K[p + offset - 2u] (per axis).
        For u in [lo, hi] that is a correlation with T = hi - lo + 1 taps, read from the flipped K
        at every second position from ``phase_starts[p]``, with -lo / hi zero padding.
        """
        size = kernel_size + taps - 1
        offset = taps - 1 - self.blur.pad[0]
        lo = min(-((size - 1 - p - offset) // 2) for p in (0, 1))  # ceil((p + offset - (size - 1)) / 2)
        hi = max((p + offset) // 2 for p in (0, 1))
        self.phase_taps = hi - lo + 1
        starts = [size - 1 - (p + offset - 2 * lo) for p in (0, 1)]  # flipped-K index of tap 0
        self.phase_margin = max(0, -min(starts))  # zeros before the flipped K keep starts >= 0
        self.phase_starts = [start + self.phase_margin for start in starts]
        self.phase_padding = (-lo, hi)

    def _uses_phases(self, x: torch.Tensor) -> bool:
        return self.upsample_method == "phases" or (self.upsample_method == "auto" and x.device.type == "cuda")

    def _upsample_conv(self, x: torch.Tensor, weight: torch.Tensor, shuffle: bool = True) -> torch.Tensor:
        """Transposed conv (stride 2) then blur, as one conv + pixel shuffle. [B, in, H, W] -> [B, out, 2H, 2W]
        (without ``shuffle``: the four phases, [B, 4 * out, H, W])"""
        out_c, in_c, k, _ = weight.shape
        blur = self.blur.kernel.to(weight.dtype)
        taps, span = self.phase_taps, 2 * self.phase_taps - 1
        # K = weight (*) blur, the full 2-D convolution, flipped: [out * in, 1, k + blur - 1, same]
        flipped = F.conv2d(F.pad(weight.reshape(out_c * in_c, 1, k, k).flip(2, 3), [blur.shape[0] - 1] * 4),
                           blur[None, None])
        margin = self.phase_margin
        tail = max(0, max(self.phase_starts) + span - (flipped.shape[-1] + margin))
        flipped = F.pad(flipped, [margin, tail, margin, tail])
        phases = torch.stack([flipped[..., r: r + span: 2, c: c + span: 2]
                              for r in self.phase_starts for c in self.phase_starts], dim=1)  # [out*in, 4, 1, T, T]
        phases = phases.reshape(out_c, in_c, 4, taps, taps).transpose(1, 2).reshape(out_c * 4, in_c, taps, taps)
        before, after = self.phase_padding
        if before != after:
            x = F.pad(x, [before, after, before, after])
        out = F.conv2d(x, phases, padding=before if before == after else 0)  # [B, out * 4, H, W]
        return F.pixel_shuffle(out, 2) if shuffle else out  # channel 4c + 2p + q -> pixel (2i + p, 2j + q) of channel c

    def modulated(self, x: torch.Tensor, w: torch.Tensor,
                  shuffle: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The convolution before demodulation, and the demodulation gains [B, out] (None without).

        Returned apart so ``StyledConv`` can fold the gains into its own per-channel arithmetic.
        ``shuffle=False``: an upsampling layer that runs as phases returns them unshuffled,
        [B, 4 * out, H, W], for the fused kernel that shuffles as it writes.

        Why the style scales the input and the gains the output instead of one weight per sample
        (the reference's grouped conv): one weight serves the batch, cuDNN's dense kernels run, and
        on the fused path the gains cost no pass (the bias/activation kernel applies them). The
        input scale remains one pass, which the grouped form avoids at the cost of B weights built
        and differentiated per layer; that could win at the wide-image, few-channel layers (1024 px:
        32 channels) and lose at the 512-channel ones. Only a GPU measurement can decide.
        """
        # x: [B, in, H, W], w: [B, style_dim]
        style = self.modulation(w)  # [B, in]
        weight = (self.weight[0] * self.scale).to(x.dtype)  # [out, in, k, k]
        x = fused_scale_channels(x, style) if self.kernels == "fused" else scale_channels(x, style)
        if self.upsample and self._uses_phases(x):
            out = self._upsample_conv(x, weight, shuffle)
        elif self.upsample:
            out = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
        else:
            out = F.conv2d(x, weight, padding=self.padding)
        if not self.demodulate:
            return out, None
        # sum over (in, k, k) of (weight * style)^2, as one [B, in] x [in, out] product
        energy = style.square() @ weight.square().sum(dim=(2, 3)).t().to(style.dtype)
        return out, torch.rsqrt(energy + 1e-8).to(out.dtype)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out, gains = self.modulated(x, w)
        return out if gains is None else out * gains[:, :, None, None]


class NoiseInjection(nn.Module):
    """Holds the per-layer noise strength; ``StyledConv`` applies it (kept as a module for the
    checkpoint's ``noise.weight`` key)."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


class ConstantInput(nn.Module):
    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(standard_normal(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class FusedLeakyReLU(nn.Module):
    """Holds the activation's bias; ``StyledConv`` applies it (kept as a module for the checkpoint's
    ``activate.bias`` key)."""

    def __init__(self, channel: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))


class StyledConv(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 upsample: bool = False, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim,
                                    upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)
        self.kernels = "eager"  # or "fused": see StyleGAN2Generator.set_kernels

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """``leaky(demod * conv + noise_weight * noise + bias) * sqrt(2)`` in three passes over the
        activations instead of six: leaky ReLU commutes with a positive scale, so the gain folds into
        the demodulation and the additive terms. At 1024 px these passes, not the convolutions,
        dominate a GPU training step."""
        if self.kernels == "fused":
            return self._fused_forward(x, w, noise)
        out, demod = self.conv.modulated(x, w)  # demod: [B, out]
        if noise is None:
            noise = torch.randn(out.shape[0], 1, out.shape[2], out.shape[3], device=out.device, dtype=out.dtype)
        gain = LEAKY_GAIN
        noise_term = (self.noise.weight * gain).to(out.dtype) * noise.to(out.dtype)  # [1|B, 1, H, W]
        out = scale_channels(out, demod * gain, noise_term)
        out = out.add_((self.activate.bias * gain).to(out.dtype)[None, :, None, None])
        return F.leaky_relu_(out, LEAKY_SLOPE)

    def _fused_forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """``forward``'s arithmetic with the demodulation, noise, bias, activation and (upsampling by
        phases) the pixel shuffle in one Triton pass."""
        out, demod = self.conv.modulated(x, w, shuffle=False)
        phases = out.shape[1] != self.conv.out_channel  # [B, 4 * out, H, W]: shuffled by the kernel
        if noise is None:
            size = [2 * s for s in out.shape[2:]] if phases else list(out.shape[2:])
            noise = torch.randn(out.shape[0], 1, *size, device=out.device, dtype=out.dtype)
        gain = LEAKY_GAIN
        return fused_bias_act(out, demod * gain, self.noise.weight * gain, noise, self.activate.bias * gain, phases)


class ToRGB(nn.Module):
    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(x, w) + self.bias.to(x.dtype)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything that fixes the generator's shapes. ``channels`` maps resolution -> width."""

    size: int
    style_dim: int
    n_mlp: int
    channels: tuple[tuple[int, int], ...]
    blur_kernel: tuple[float, ...] = (1, 3, 3, 1)
    lr_mlp: float = 0.01

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def n_latent(self) -> int:
        return self.log_size * 2 - 2

    @property
    def num_layers(self) -> int:
        return (self.log_size - 2) * 2 + 1

    def width(self, resolution: int) -> int:
        return dict(self.channels)[resolution]

    @classmethod
    def ffhq_config_f(cls, size: int = 1024, style_dim: int = 512, n_mlp: int = 8,
                      channel_multiplier: int = 2) -> "GeneratorConfig":
        """The published FFHQ "config-f" widths (rosinality's defaults)."""
        widths = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier,
                  128: 128 * channel_multiplier, 256: 64 * channel_multiplier,
                  512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
        return cls(size, style_dim, n_mlp,
                   tuple((2**i, widths[2**i]) for i in range(2, int(math.log2(size)) + 1)))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], source: str = "state dict") -> "GeneratorConfig":
        """Read the architecture off the tensors' shapes (the checkpoint stores no config)."""
        try:
            style_dim = state["style.1.weight"].shape[0]
            n_mlp = len({k.split(".")[1] for k in state if k.startswith("style.")})
            widths = {4: state["input.input"].shape[1]}
            n_rgbs = len({k.split(".")[1] for k in state if k.startswith("to_rgbs.")})
            for i in range(n_rgbs):
                widths[2 ** (i + 3)] = state[f"convs.{2 * i}.conv.weight"].shape[1]
            blur = state["convs.0.conv.blur.kernel"] if n_rgbs else None
        except KeyError as exc:
            raise IncompatibleWeightsError(
                f"{source}: not a StyleGAN2 generator state dict (missing tensor {exc.args[0]!r})."
            ) from None
        # the kernel's values are buffers loaded from the file; only its length shapes the model
        taps = (1, 3, 3, 1) if blur is None or blur.shape[0] == 4 else (1,) * blur.shape[0]
        return cls(size=4 * 2**n_rgbs, style_dim=style_dim, n_mlp=n_mlp,
                   channels=tuple(sorted(widths.items())), blur_kernel=taps)


# ----------------------------------------------------------------------------- the generator


class StyleGAN2Generator(nn.Module):
    """rosinality's ``Generator`` with an explicit API: ``mapping``, ``truncate``, ``synthesize``.

    ``latent_avg`` (the mean w, used for truncation) is a non-persistent buffer, so the state dict
    keeps exactly the reference's keys.
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        c, blur = config, config.blur_kernel
        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(c.style_dim, c.style_dim, lr_mul=c.lr_mlp, activation=True) for _ in range(c.n_mlp)
        ])
        self.input = ConstantInput(c.width(4))
        self.conv1 = StyledConv(c.width(4), c.width(4), 3, c.style_dim, blur_kernel=blur)
        self.to_rgb1 = ToRGB(c.width(4), c.style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer in range(c.num_layers):
            res = 2 ** ((layer + 5) // 2)
            self.noises.register_buffer(f"noise_{layer}", standard_normal(1, 1, res, res))
        in_channel = c.width(4)
        for i in range(3, c.log_size + 1):
            out_channel = c.width(2**i)
            self.convs.append(StyledConv(in_channel, out_channel, 3, c.style_dim, upsample=True, blur_kernel=blur))
            self.convs.append(StyledConv(out_channel, out_channel, 3, c.style_dim, blur_kernel=blur))
            self.to_rgbs.append(ToRGB(out_channel, c.style_dim, blur_kernel=blur))
            in_channel = out_channel
        self.register_buffer("latent_avg", torch.zeros(c.style_dim), persistent=False)

    # -- shapes

    @property
    def size(self) -> int:
        return self.config.size

    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    @property
    def style_dim(self) -> int:
        return self.config.style_dim

    # -- latents

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, style_dim] -> w [B, style_dim]."""
        if z.ndim != 2 or z.shape[1] != self.style_dim:
            raise ShapeError(f"z must have shape [batch, {self.style_dim}], got {list(z.shape)}.")
        return self.style(z)

    def truncate(self, w: torch.Tensor, psi: float) -> torch.Tensor:
        """Pull w (or W+) toward ``latent_avg``: psi 1 keeps w, psi 0 gives the average face."""
        return self.latent_avg + psi * (w - self.latent_avg)

    def to_wplus(self, latent: torch.Tensor) -> torch.Tensor:
        """Accept w [B, D] or W+ [B, n_latent, D]; return W+ (w repeated over every layer)."""
        d, n = self.style_dim, self.n_latent
        if latent.ndim == 2 and latent.shape[1] == d:
            return latent[:, None, :].expand(-1, n, -1)
        if latent.ndim == 3 and latent.shape[1:] == (n, d):
            return latent
        raise ShapeError(
            f"latent must be W+ [batch, {n}, {d}] or w [batch, {d}] for this {self.size} px "
            f"generator, got {list(latent.shape)}."
        )

    def sample_wplus(self, count: int, seed: int | None = None, truncation: float = 1.0) -> torch.Tensor:
        """Random W+ latents: z ~ N(0, I) (seeded, CPU generator for reproducibility) -> w -> truncate."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        z = torch.randn(count, self.style_dim, generator=gen).to(self.latent_avg.device)
        w = self.mapping(z.to(self.style[1].weight.dtype))
        if truncation != 1.0:
            w = self.truncate(w, truncation)
        return self.to_wplus(w)

    def set_upsample_method(self, method: str) -> "StyleGAN2Generator":
        """How the upsampling layers run: "phases", "transposed" or "auto" (the default: phases on
        CUDA, where they are faster, transposed elsewhere). The same maths; for benchmarks and tests."""
        if method not in UPSAMPLE_METHODS:
            raise ValueError(f"upsample method must be one of {', '.join(UPSAMPLE_METHODS)}, got {method!r}.")
        for module in self.modules():
            if isinstance(module, ModulatedConv2d):
                module.upsample_method = method
        return self

    def set_kernels(self, kernels: str) -> "StyleGAN2Generator":
        """Which code runs the per-pixel passes around the convolutions: "eager" (the default, the
        reference, every device) or "fused" (``fused``'s Triton kernels: the input style scale as
        one pass, and demodulation + noise + bias + leaky ReLU (+ pixel shuffle) as another).

        "fused" is an explicit choice, not a default anywhere: it runs on CUDA (and on the CPU only
        under Triton's interpreter, for tests), and becomes the CUDA default only once a GPU has
        measured it exact and faster (bench/gpu_session.sh, section "fused"). Like
        ``set_upsample_method``, it changes this generator (and every user of a cached one).
        """
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}.")
        if kernels == "fused":
            require_triton()
        for module in self.modules():
            if isinstance(module, (ModulatedConv2d, StyledConv)):
                module.kernels = kernels
        return self

    def fingerprint(self) -> str:
        """A short hash of the mapping network and constant input.

        Direction files record it so a direction can say which generator it was trained on
        without hashing the whole checkpoint file.
        """
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            if name.startswith("style.") or name == "input.input":
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    # -- synthesis

    def noise_buffers(self) -> list[torch.Tensor]:
        return [getattr(self.noises, f"noise_{i}") for i in range(self.config.num_layers)]

    def _noise_list(self, noise: NoiseSpec) -> Sequence[torch.Tensor | None]:
        if noise == "fixed":
            return self.noise_buffers()
        if noise == "random":
            return [None] * self.config.num_layers
        if isinstance(noise, str) or len(noise) != self.config.num_layers:
            raise ValueError(f"noise must be 'fixed', 'random' or a list of {self.config.num_layers} tensors.")
        return noise

    def synthesize(self, latent: torch.Tensor, noise: NoiseSpec = "fixed", stop_at: int | None = None,
                   recompute_from: int | None = None) -> torch.Tensor:
        """W+ (or w) -> RGB image [B, 3, S, S], roughly in [-1, 1].

        ``noise="fixed"`` uses the stored noise buffers (TargetCLIP's ``randomize_noise=False``);
        ``"random"`` draws fresh noise. ``stop_at`` (a power of two below ``size``) returns the
        RGB skip output at that resolution and skips the layers above it: a cheaper, blurrier image.
        ``recompute_from`` (a resolution): when gradients are taken, the layers making that
        resolution and above keep only their inputs and run again during the backward pass
        (activation checkpointing). The largest resolutions hold most of the activations, so this
        trades one more forward pass of those layers for much less memory; the result is the same.
        """
        wplus = self.to_wplus(latent)
        resolutions = [r for r, _ in self.config.channels]
        if stop_at is not None and (stop_at not in resolutions or stop_at < 4):
            raise ValueError(f"stop_at must be one of {resolutions}, got {stop_at}.")
        if recompute_from is not None and recompute_from not in resolutions:
            raise ValueError(f"recompute_from must be one of {resolutions}, got {recompute_from}.")
        noises = self._noise_list(noise)
        batch = wplus.shape[0]
        x = self.input(batch).to(wplus.dtype)
        x = self.conv1(x, wplus[:, 0], noises[0])
        skip = self.to_rgb1(x, wplus[:, 1])
        resolution = 4
        for level in range(len(self.to_rgbs)):
            if stop_at is not None and resolution >= stop_at:
                break
            resolution *= 2
            i = 1 + 2 * level
            inputs = (x, skip, wplus[:, i:i + 3], noises[i], noises[i + 1])
            if recompute_from is not None and resolution >= recompute_from and torch.is_grad_enabled():
                x, skip = checkpoint(self._level, level, *inputs, use_reentrant=False)
            else:
                x, skip = self._level(level, *inputs)
        return skip

    def _level(self, level: int, x: torch.Tensor, skip: torch.Tensor, w: torch.Tensor,
               noise_a: torch.Tensor | None, noise_b: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One resolution doubling: upsampling conv, conv, RGB skip. w: [B, 3, D], one row per layer."""
        x = self.convs[2 * level](x, w[:, 0], noise_a)
        x = self.convs[2 * level + 1](x, w[:, 1], noise_b)
        return x, self.to_rgbs[level](x, w[:, 2], skip)

    def forward(self, latent: torch.Tensor, noise: NoiseSpec = "fixed", stop_at: int | None = None,
                recompute_from: int | None = None) -> torch.Tensor:
        return self.synthesize(latent, noise=noise, stop_at=stop_at, recompute_from=recompute_from)


# ----------------------------------------------------------------------------- loading


def generator_state_from_checkpoint(obj: Any, source: str) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """Find the generator's state dict and mean latent in any file layout users have.

    Accepted: rosinality's ``{"g_ema": ..., "latent_avg": [D]}`` (extra ``g``/``d``/``args`` ignored),
    an e4e checkpoint (its ``decoder.*`` tensors; ``latent_avg`` [n_latent, D]), or a bare state dict.
    """
    if not isinstance(obj, Mapping):
        raise WrongFileKindError(f"{source}: expected a StyleGAN2 checkpoint (a dict with 'g_ema'), "
                                 f"found a {type(obj).__name__}.")
    latent_avg = obj.get("latent_avg")
    if "g_ema" in obj:
        state = dict(obj["g_ema"])
    elif isinstance(obj.get("state_dict"), Mapping) and any(k.startswith("decoder.") for k in obj["state_dict"]):
        state = {k[len("decoder."):]: v for k, v in obj["state_dict"].items() if k.startswith("decoder.")}
    elif "style.1.weight" in obj and "input.input" in obj:
        state, latent_avg = {k: v for k, v in obj.items() if k != "latent_avg"}, obj.get("latent_avg")
    else:
        raise WrongFileKindError(f"{source}: this is not a StyleGAN2 generator checkpoint "
                                 f"({describe_contents(obj)}). Expected a dict with 'g_ema' (rosinality "
                                 f"format) or an e4e checkpoint that embeds a decoder.")
    if isinstance(latent_avg, torch.Tensor) and latent_avg.ndim == 2:
        latent_avg = latent_avg[0]  # e4e stores it repeated over the W+ rows
    return state, latent_avg if isinstance(latent_avg, torch.Tensor) else None


def build_generator(config: GeneratorConfig, device: str | torch.device = "cpu") -> StyleGAN2Generator:
    """A randomly initialised generator (tests, benchmarks; real use loads weights)."""
    with torch.device(device):
        return StyleGAN2Generator(config).eval()


def load_generator_file(path: str | os.PathLike, device: str | torch.device = "cpu") -> StyleGAN2Generator:
    """Load a generator from any accepted file layout (see ``generator_state_from_checkpoint``)."""
    source = str(path)
    state, latent_avg = generator_state_from_checkpoint(load_torch_file(path), source)
    config = GeneratorConfig.from_state_dict(state, source)
    model = build_loaded(StyleGAN2Generator, config, state, source, "generator")
    avg = latent_avg.float() if latent_avg is not None else _estimate_mean_w(model)
    if avg.shape != (config.style_dim,):
        raise IncompatibleWeightsError(f"{source}: latent_avg has shape {list(avg.shape)}, "
                                       f"expected [{config.style_dim}].")
    model.latent_avg = avg
    return model.eval().requires_grad_(False).to(device)


@torch.no_grad()
def _estimate_mean_w(model: StyleGAN2Generator, samples: int = 4096) -> torch.Tensor:
    """Mean w over seeded samples, for checkpoints saved without ``latent_avg`` (as the reference's
    ``mean_latent(4096)`` does, but deterministic)."""
    z = torch.randn(samples, model.style_dim, generator=torch.Generator().manual_seed(0))
    return model.mapping(z).mean(0)
