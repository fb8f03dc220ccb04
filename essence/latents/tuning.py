"""Pivotal tuning: the generator tuned to draw a photo (or a clip) from its e4e latent.

e4e puts a face where the generator can draw it, which is not quite the person in the photo.
Pivotal tuning (PTI: Roich et al. 2021, danielroich/PTI, MIT) keeps the e4e latent, the pivot, and
changes the generator instead, until G(pivot) reproduces the aligned photo. An essence applied to
the pivot is then drawn by the tuned generator, in the person's own likeness. STIT (Tzaban et al.
2022, rotemtzaban/STIT, MIT) tunes one generator on all the frames of a clip, each frame with its
own pivot, so that the clip stays one person.

The loop is PTI's coach, step for step (``training/coaches/single_id_coach.py`` and
``base_coach.calc_loss``): the image G(pivot) with the generator's fixed noise, its L2 and LPIPS
(AlexNet) distances to the photo, weighted 1 and 1; the LPIPS measured before each update stops
the tuning once it is at most 0.06; Adam at 3e-4 over the synthesis weights, at most 350 steps.
With ``locality``, PTI's locality regularisation (``criteria/localitly_regulizer.py``) is added
at every step: a random face's w (truncation 0.5) is moved to 30 units from the pivot, and the
tuned generator must draw it as the original one does, in L2 and LPIPS weighted 0.1 each (noise
off). For a clip, STIT's settings: 50 passes over the frames, one update per frame, Adam at
3e-5, locality on, no early stop (``STIT``). tests/test_tuning.py checks the loop against a
trace of PTI's own code on the tiny models.

``PivotalTuning`` is the option every front end passes down (None: no tuning): the settings, the
LPIPS network, a clip's frame budget and who hears the steps, built and checked by ``pivotal_tuning``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import EssenceError, ShapeError, require_finite
from ..networks import (StyleGAN2Generator, TunedWeights, perceptual_distance, perceptual_network,
                        synthesis_parameters, synthesize_with)

PathLike = str | os.PathLike
DEFAULT_TUNING_FRAMES = 300  # 10 s at 30 fps: 0.9 GB of 1024 px targets, 50 passes of 300 tuning steps


@dataclass(frozen=True)
class TuningSettings:
    """How a generator is tuned; the defaults are PTI's ``configs/hyperparameters.py``."""

    steps: int = 350                  # max_pti_steps; for several frames, passes over all of them
    learning_rate: float = 3e-4       # pti_learning_rate
    l2_weight: float = 1.0            # pt_l2_lambda
    lpips_weight: float = 1.0         # pt_lpips_lambda
    lpips_stop: float | None = 0.06   # LPIPS_value_threshold: a frame this close is not updated
    locality: bool = False            # use_locality_regularization
    locality_distance: float = 30.0   # regulizer_alpha: how far from the pivot the probe is put
    locality_l2_weight: float = 0.1   # regulizer_l2_lambda
    locality_lpips_weight: float = 0.1  # regulizer_lpips_lambda
    locality_samples: int = 1         # latent_ball_num_of_samples
    locality_truncation: float = 0.5  # the probes' truncation (PTI's mapping call)
    seed: int = 0                     # of the probes' random codes

    def check(self) -> None:
        if self.steps < 1:
            raise EssenceError(f"tuning needs at least 1 step, got {self.steps}.")
        if not self.learning_rate > 0:
            raise EssenceError(f"the tuning learning rate must be above 0, got {self.learning_rate}.")
        if self.locality and self.locality_samples < 1:
            raise EssenceError(f"the locality regularisation needs at least 1 sample, got {self.locality_samples}.")
        require_finite([self.learning_rate, self.l2_weight, self.lpips_weight, self.locality_distance,
                        self.locality_l2_weight, self.locality_lpips_weight], "the tuning settings")


PTI = TuningSettings()
STIT = TuningSettings(steps=50, learning_rate=3e-5, lpips_stop=None, locality=True)


@dataclass(frozen=True)
class PivotalTuning:
    """Pivotal tuning as it travels from a front end to ``tune_generator``, one value in place of five
    arguments (None in its place: no tuning). ``settings``: how (``PTI`` for photos, ``STIT`` for a
    clip); ``perceptual``: the LPIPS network, or its backbone file (None: looked up), loaded once
    where the tuning starts (``loaded``); ``frames``: at most this many of a clip's frames, spread
    over it, are tuned on (None: all), which bounds the targets held in memory; ``progress(step,
    steps)`` hears every step (a clip's: every pass) and may raise to stop. Checked when made."""

    settings: TuningSettings = PTI
    perceptual: torch.nn.Module | PathLike | None = None
    frames: int | None = DEFAULT_TUNING_FRAMES
    progress: Callable[[int, int], None] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.settings.check()
        if self.frames is not None and self.frames < 1:
            raise EssenceError(f"tuning a generator to a clip needs at least 1 frame, got {self.frames}.")

    def loaded(self, device: str | torch.device | None) -> "PivotalTuning":
        """This tuning with its LPIPS network on ``device``: a missing file stops the caller here,
        before any frame or photo is read."""
        return replace(self, perceptual=perceptual_network(self.perceptual, device))

    def picks(self, frames: Sequence[int]) -> list[int]:
        """Which of ``frames`` (a clip's, in order) the generator is tuned on: all of them, or
        ``self.frames`` of them spread evenly over the clip, the first and the last included."""
        if self.frames is None or len(frames) <= self.frames:
            return list(frames)
        picks = np.linspace(0, len(frames) - 1, self.frames).round().astype(int)
        return [frames[i] for i in sorted(set(picks.tolist()))]


def pivotal_tuning(clip: bool = False, steps: int | None = None, *, frames: int | None = DEFAULT_TUNING_FRAMES,
                   perceptual: torch.nn.Module | PathLike | None = None,
                   progress: Callable[[int, int], None] | None = None) -> PivotalTuning:
    """The tuning the front ends offer, from their few options: PTI's published settings for photos
    or STIT's for a ``clip``, with ``steps`` (a clip's: passes over its frames) in place of theirs
    when given; ``frames``, ``perceptual`` and ``progress`` as ``PivotalTuning`` keeps them."""
    settings = STIT if clip else PTI
    return PivotalTuning(settings if steps is None else replace(settings, steps=steps), perceptual, frames, progress)


@dataclass
class TuningStep:
    """One frame's losses before its update (``update`` False: close enough, not updated)."""

    step: int
    row: int
    l2: float
    lpips: float
    locality: float | None
    update: bool


Progress = Callable[[int, int, TuningStep], None]


def tune_generator(generator: StyleGAN2Generator, pivots: torch.Tensor, targets: torch.Tensor,
                   perceptual: torch.nn.Module, settings: TuningSettings = PTI, *,
                   progress: Progress | None = None) -> tuple[TunedWeights, list[TuningStep]]:
    """Tune ``generator``'s synthesis weights so that it draws ``targets`` [N, 3, S, S] (S the
    generator's size; float in [-1, 1], or uint8 pixels as ``essence.faces.pil_to_pixels`` gives them) from
    ``pivots`` [N, n_latent, D]; the generator itself is left as it was.

    uint8 targets stay where they are (a clip's frames on the CPU: 3 MB a 1024 px frame, a quarter
    of float32) and go to the generator's device one frame at a time.

    Returns the tuned weights (``TunedWeights``, against ``generator``) and every step's losses.
    ``perceptual`` is the LPIPS network (``load_perceptual``). ``progress(step, steps, last)`` hears
    every update; it may raise ``TrainingCancelled`` (ComfyUI's Cancel) to stop.
    """
    settings.check()
    pivots, targets = _checked_inputs(generator, pivots, targets)
    with torch.inference_mode(False), torch.enable_grad():
        # copies made here, outside any inference mode: ComfyUI's tensors cannot enter autograd
        parameters = {name: param.detach().clone().float().requires_grad_(True)
                      for name, param in synthesis_parameters(generator).items()}
        optimizer = torch.optim.Adam(parameters.values(), lr=settings.learning_rate)
        probe = _Probe(generator, perceptual, settings) if settings.locality else None
        history: list[TuningStep] = []
        for step in range(settings.steps):
            updated = False
            for row in range(len(pivots)):
                record = _step(generator, parameters, optimizer, perceptual, settings, probe,
                               pivots[row:row + 1], _target(targets, row, pivots.device), step, row)
                history.append(record)
                updated |= record.update
            if progress is not None:
                progress(step + 1, settings.steps, history[-1])
            if not updated:
                break
    info = {"method": "pivotal tuning (PTI)", "settings": asdict(settings), "frames": len(pivots),
            "steps": history[-1].step + 1, "updates": sum(r.update for r in history),
            "first": {"l2": history[0].l2, "lpips": history[0].lpips},
            "last": {"l2": history[-1].l2, "lpips": history[-1].lpips}}
    return TunedWeights.between(generator, parameters, info), history


def _checked_inputs(generator: StyleGAN2Generator, pivots: torch.Tensor,
                    targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    size, n, d = generator.size, generator.n_latent, generator.style_dim
    if pivots.ndim != 3 or pivots.shape[1:] != (n, d):
        raise ShapeError(f"pivots must be W+ [frames, {n}, {d}], got {list(pivots.shape)}.")
    if targets.ndim != 4 or targets.shape[1:] != (3, size, size) or len(targets) != len(pivots):
        raise ShapeError(f"targets must be [{len(pivots)}, 3, {size}, {size}] (one aligned crop per pivot at the "
                         f"generator's size), got {list(targets.shape)}.")
    if len(pivots) == 0:
        raise EssenceError("there is nothing to tune: no frames were given.")
    require_finite(pivots, "the pivots")
    device = generator.latent_avg.device
    with torch.inference_mode(False):
        pivots = pivots.detach().to(device).float().clone()
        if targets.dtype == torch.uint8:
            return pivots, targets.detach().clone()
        require_finite(targets, "the photos to tune on")
        return pivots, targets.detach().to(device).float().clone()


def _target(targets: torch.Tensor, row: int, device: torch.device) -> torch.Tensor:
    """Row ``row`` of the targets as float in [-1, 1] on ``device`` (uint8 as ``pil_to_model`` reads pixels)."""
    target = targets[row:row + 1]
    if target.dtype != torch.uint8:
        return target
    return target.to(device).float() / 255.0 * 2.0 - 1.0


def _step(generator: StyleGAN2Generator, parameters: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
          perceptual: torch.nn.Module, settings: TuningSettings, probe: "_Probe | None",
          pivot: torch.Tensor, target: torch.Tensor, step: int, row: int) -> TuningStep:
    """One frame: PTI's losses, then its update unless it is already close enough."""
    image = synthesize_with(generator, parameters, pivot, noise="fixed")
    l2 = F.mse_loss(image, target)
    lpips = perceptual_distance(perceptual, image, target).mean()
    loss = l2 * settings.l2_weight + lpips * settings.lpips_weight
    locality = None
    if probe is not None:
        locality = probe.loss(parameters, pivot)
        loss = loss + locality
    optimizer.zero_grad()
    distance = lpips.item()
    update = settings.lpips_stop is None or distance > settings.lpips_stop
    if update:
        if not torch.isfinite(loss):
            raise EssenceError(f"pivotal tuning diverged at step {step + 1} (loss {loss.item()}). "
                               f"Use a lower learning rate.")
        loss.backward()
        optimizer.step()
    return TuningStep(step, row, l2.item(), distance, None if locality is None else locality.item(), update)


class _Probe:
    """PTI's locality regularisation: faces far from the pivot must stay as the original draws them."""

    def __init__(self, generator: StyleGAN2Generator, perceptual: torch.nn.Module, settings: TuningSettings):
        self.generator, self.perceptual, self.settings = generator, perceptual, settings
        self.random = torch.Generator().manual_seed(settings.seed)
        self.silence = [torch.zeros_like(noise) for noise in generator.noise_buffers()]

    def loss(self, parameters: dict[str, torch.Tensor], pivot: torch.Tensor) -> torch.Tensor:
        s = self.settings
        z = torch.randn(s.locality_samples, self.generator.style_dim, generator=self.random)
        with torch.no_grad():
            w = self.generator.truncate(self.generator.mapping(z.to(pivot.device)), s.locality_truncation)
            codes = self.generator.to_wplus(w)
        total = pivot.new_zeros(())
        for code in codes:
            away = code[None] - pivot
            probe = pivot + s.locality_distance * away / away.norm(p=2)
            tuned = synthesize_with(self.generator, parameters, probe, noise=self.silence)
            with torch.no_grad():
                original = self.generator.synthesize(probe, noise=self.silence)
            if s.locality_l2_weight > 0:
                total = total + F.mse_loss(original, tuned) * s.locality_l2_weight
            if s.locality_lpips_weight > 0:
                total = total + perceptual_distance(self.perceptual, original, tuned).mean() * s.locality_lpips_weight
        return total / len(codes)

