"""TargetCLIP: optimise one W+ direction that carries a target's essence to any face.

This follows hila-chefer/TargetCLIP's ``optimization.py`` step for step, quirks included, because
users compare against the paper's directions:

* parameters: the direction ``d`` [1, n_latent, D] and one coefficient ``c_i`` per source (init 1);
* per step: ``e_src_i = E(G(w_i))``, ``e_amp_i = E(G(w_i + c_i d))`` with fixed noise;
  ``L_transfer = 1 - mean_i n(e_amp_i) . t`` and ``L_consistency = sum_{i != j} (1 - delta_i . delta_j)
  / (N^2 - N)`` with ``delta_i = n(n(e_src_i) - n(e_amp_i))``; loss = 1 * L_transfer + 0.5 * L_consistency;
* Adam on ``d`` (lr 0.2, coupled weight decay 3e-3) with a cosine ramp-down and a linear warm-up whose
  first step has lr 0; a *new* Adam (the run's base lr, without the schedule; weight decay 0.01) on the
  coefficients every step, so changing ``lr`` changes both optimisers, as in the reference;
* the direction kept is the one after the step whose pre-step loss was the lowest.

Three exact loops give the same numbers: ``"official"`` recomputes ``E(G(w_i))`` every step as the
reference does; ``"fast"`` computes it once (the sources never change) and keeps the loop free of
host-device synchronisation (best-so-far tracking stays on the device); ``"graph"`` is ``"fast"``
written as one step with static shapes and no host value at all (both optimisers' updates from device
tensors, ``essence.training.adam``), which on CUDA is captured once as a CUDA graph and replayed: the same
numbers without Python's per-operator cost, which dominates the cheap paths. ``"auto"``, the default,
is ``"graph"`` on CUDA and ``"fast"`` elsewhere. Approximations are separate,
named options: ``autocast="bf16"``/``"fp16"`` runs the generator in reduced precision (CLIP stays float32), and
``render_size=256`` lets CLIP see the generator's intermediate RGB at 256 px (CLIP looks at 224 px
anyway), skipping the two most expensive resolutions. Two exact options
trade time for memory: ``chunk_size`` renders a few sources per pass, ``recompute_from`` re-runs the
largest layers during the backward pass instead of keeping their activations.

The one training call, ``essence.training.train``, runs this loop (``_train_starts``) for one start, or
for K candidates at once (K x N faces per generator pass, each candidate with its own parameters,
optimiser state, losses and best step), and by default starts again with smaller passes when the
device runs out of memory. The target reaches the loop as its unit CLIP embedding, computed once by the
``TrainingTarget``; where training starts is ``essence.training.start``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Sequence

import torch

from ..errors import EssenceError, ShapeError, TrainingCancelled, require_finite
from ..latents import Direction
from ..networks import ClipGuide, GeneratedMode, StyleGAN2Generator, to_unit
from ..runtime import backward_in_slices, passes_fitting_memory, release_device_memory
from .adam import ScheduledAdam, fresh_adam_step_
from .start import Start, random_initial_direction

TrainLoop = Literal["auto", "official", "fast", "graph"]
GRAPH_WARMUP_STEPS = 3  # steps the "graph" loop runs eagerly (on a side stream) before capturing one on CUDA
SMALLEST_PASS_ADVICE = "Use fewer source faces, render_size=256 or a reduced-precision autocast."


@dataclass(frozen=True)
class TrainSettings:
    """Every knob of the optimisation; the defaults are the official ones."""

    steps: int = 1000
    lr: float = 0.2
    weight_decay: float = 3e-3
    coefficient_lr: float | None = None  # None: the run's base ``lr``, as the reference does
    coefficient_weight_decay: float = 0.01
    lambda_transfer: float = 1.0
    lambda_consistency: float = 0.5
    clip_mode: GeneratedMode = "official"
    loop: TrainLoop = "auto"  # "official": E(G(w_i)) recomputed every step, as the reference; "graph": the
    # fast step replayed as a CUDA graph on CUDA (run eagerly elsewhere); all three give the same result.
    # "auto": "graph" on CUDA (1.2-1.4x faster at full size on an H200, 3x at 256 px), else "fast"
    autocast: Literal["bf16", "fp16"] | None = None
    seed: int = 0
    random_init_truncation: float = 0.7
    progress_every: int = 10
    chunk_size: int | None = None  # sources rendered per pass; smaller = less memory, same result
    recompute_from: int | None = None  # layers at this resolution and up re-run in backward: less memory, same result
    render_size: int | None = None  # approximation: CLIP sees the generator's intermediate RGB at this size

    @property
    def coefficient_rate(self) -> float:
        """The per-source coefficients' learning rate: ``coefficient_lr``, else the run's base ``lr``."""
        return self.lr if self.coefficient_lr is None else self.coefficient_lr

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise EssenceError(f"steps must be at least 1, got {self.steps}.")
        for name in ("lr", "weight_decay", "coefficient_lr", "coefficient_weight_decay"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise EssenceError(f"{name} must be a finite number of at least 0, got {value}.")
        for name in ("lambda_transfer", "lambda_consistency"):
            if not math.isfinite(getattr(self, name)):
                raise EssenceError(f"{name} must be a finite number, got {getattr(self, name)}.")
        if self.loop not in ("auto", "official", "fast", "graph"):
            raise EssenceError(f"loop must be 'auto', 'official', 'fast' or 'graph', got {self.loop!r}.")
        if self.loop == "graph" and self.recompute_from is not None:
            raise EssenceError("recompute_from does not work with loop 'graph' (its re-run layers are not "
                               "captured safely in a CUDA graph); use loop 'fast' to save memory that way.")
        if self.autocast not in (None, "bf16", "fp16"):
            raise EssenceError(f"autocast must be None, 'bf16' or 'fp16', got {self.autocast!r}.")
        if self.clip_mode not in ("official", "normalized"):
            raise EssenceError(f"clip_mode must be 'official' or 'normalized', got {self.clip_mode!r}.")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise EssenceError(f"chunk_size must be at least 1 (or None for all sources), got {self.chunk_size}.")


# Device memory one 1024 px face needs during a training pass (render, CLIP, backward) besides the
# models' weights: peaks measured on an H100 for passes of 4 faces, divided by 4 (docs/benchmarks.md:
# exact 7.4 GB, bf16 3.7 GB, 256 px CLIP path 1.9 GB, bf16 with the 256 px path 1.0 GB).
_PASS_BYTES_PER_1024PX_FACE = {(False, False): 1.85e9, (True, False): 0.93e9, (False, True): 0.48e9,
                               (True, True): 0.25e9}  # (reduced precision, early exit) -> bytes


def training_memory(generator: StyleGAN2Generator, sources: int, settings: TrainSettings, candidates: int = 1) -> int:
    """About how many bytes of device memory training needs besides the models' weights.

    A host that shares the GPU with other models (ComfyUI) asks for this room before training
    starts, rather than running out part way. An estimate: the measured per-face peaks above, scaled
    by the generator's image area and by the faces rendered per pass (``chunk_size``); candidates
    trained together render ``candidates x sources`` faces, in passes of ``chunk_size``.
    """
    reduced = settings.autocast is not None
    early_exit = settings.render_size is not None and settings.render_size < generator.size
    per_face = _PASS_BYTES_PER_1024PX_FACE[(reduced, early_exit)] * (generator.size / 1024) ** 2
    rows = sources * candidates
    return int(per_face * min(rows, settings.chunk_size or rows))


@dataclass
class TrainProgress:
    """What a progress callback sees (every ``progress_every`` steps and at the last step)."""

    step: int  # steps completed
    total: int
    loss: float
    transfer: float
    consistency: float
    lr: float
    best_loss: float
    direction: torch.Tensor  # the current direction [1, n_latent, D], detached
    candidate: int = 0  # with several candidates: the one reported (the lowest best loss so far)


@dataclass
class TrainResult:
    """One start's optimisation: the kept ``direction`` (its metadata is written by ``train``, which
    records every result the same way), the loss terms before each step, and the ``settings`` that
    actually ran (the loop "auto" chose, the chunk size an out-of-memory restart settled on)."""

    direction: Direction
    losses: list[float]  # total loss before each step's update
    transfer: list[float]
    consistency: list[float]
    best_step: int
    seconds: float
    settings: TrainSettings
    coefficients: list[float] = field(default_factory=list)

    @property
    def best_loss(self) -> float:
        return self.losses[self.best_step]

    def terms(self) -> dict[str, float | int]:
        """The kept step's loss terms, as a direction's metadata records them under ``losses``."""
        return {"total": self.losses[self.best_step], "transfer": self.transfer[self.best_step],
                "consistency": self.consistency[self.best_step], "best_step": self.best_step,
                "steps": self.settings.steps}

    def summary(self) -> str:
        """One line for people: the kept step's loss terms and the time taken (CLI, node report)."""
        terms = self.terms()
        return (f"best loss {terms['total']:.4f} at step {terms['best_step']}: transfer {terms['transfer']:.4f}, "
                f"consistency {terms['consistency']:.4f}; {self.seconds:.1f} s")


def learning_rate(step: int, steps: int, base_lr: float, rampdown: float = 0.75, rampup: float = 0.005) -> float:
    """The official schedule: cosine ramp-down over the last 75 %, linear warm-up over the first 0.5 %."""
    t = step / steps
    ramp = 0.5 - 0.5 * math.cos(math.pi * min(1.0, (1 - t) / rampdown))
    return base_lr * ramp * min(1.0, t / rampup)


def essence_losses(e_src: torch.Tensor, e_amp: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_transfer, L_consistency) from source / edited CLIP embeddings [N, C] and a unit target [1, C]."""
    amp = to_unit(e_amp.float())
    transfer = 1 - (amp @ target.float().t()).mean()
    count = e_amp.shape[0]
    if count < 2:
        return transfer, torch.zeros_like(transfer)
    deltas = _unit_or_zero(to_unit(e_src.float()) - amp)
    consistency = (1 - deltas @ deltas.t()).sum() / (count * count - count)
    return transfer, consistency


def _unit_or_zero(x: torch.Tensor) -> torch.Tensor:
    """``x / |x|`` row by row, with zero rows left zero instead of 0/0 = NaN.

    A coefficient can land on (almost exactly) 0: the official code's fresh Adam moves each one by
    0.2 per step from 1. Then the edited face equals its source and its delta is zero; in float32 the
    leftover rounding noise keeps it finite, in bf16/fp16 it is exactly zero, and one NaN would end
    the run. Elsewhere this is ``to_unit``, bit for bit.
    """
    norm = x.norm(dim=-1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def _check_inputs(sources: torch.Tensor, init: torch.Tensor, generator: StyleGAN2Generator,
                  settings: TrainSettings) -> None:
    n, d = generator.n_latent, generator.style_dim
    if sources.ndim != 3 or sources.shape[1:] != (n, d) or sources.shape[0] < 1:
        raise ShapeError(f"sources must be W+ latents [count, {n}, {d}] for this generator, "
                         f"got {list(sources.shape)}.")
    if init.shape != (1, n, d):
        raise ShapeError(f"the initial direction must be [1, {n}, {d}], got {list(init.shape)}.")
    require_finite(sources, "the source latents", fix="Invert or sample those faces again.")
    require_finite(init, "the initial direction")
    sizes = [r for r, _ in generator.config.channels if r >= 32]
    for name in ("render_size", "recompute_from"):
        value = getattr(settings, name)
        if value is not None and value not in sizes:
            raise EssenceError(f"{name} must be one of this generator's resolutions {sizes}, got {value}.")


def autocast_for(device: torch.device, mode: str | None, cache: bool = True):
    """The reduced-precision context for ``mode`` ("bf16", "fp16"), or none for float32 (None).

    ``cache=False`` turns off autocast's cache of cast weights, which a CUDA graph capture forbids.
    """
    if mode is None:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def _train_starts(target: torch.Tensor, sources: torch.Tensor, generator: StyleGAN2Generator, guide: ClipGuide,
                  starts: Sequence[Start], settings: TrainSettings, *, fit_memory: bool = True,
                  progress: Callable[[TrainProgress], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, on_retry: Callable[[int], None] | None = None,
                  release: Callable[[], None] = release_device_memory) -> list[TrainResult]:
    """The optimisation of every start together toward ``target``, the target's unit CLIP embedding
    [1, C], for ``essence.training.train`` (the one training call, which documents the arguments); one
    ``TrainResult`` per start, in order, with no metadata yet.

    The inputs are checked and copied out of inference mode (ComfyUI runs nodes inside it) once; each
    attempt runs the loop on them, its passes sized by ``runtime.passes_fitting_memory``: on device
    out-of-memory it starts again with half as many faces per pass (``fit_memory``), and chunking is
    exact, so a small card gets the same directions, later.
    """
    if not starts:
        raise EssenceError("training needs at least one start.")
    rows = sources.shape[0] * len(starts)
    device = generator.latent_avg.device
    for init in starts:
        if isinstance(init, str) and init != "random":
            raise EssenceError(f"a start must be a tensor or 'random', got {init!r}.")
    inits = [random_initial_direction(generator, settings.seed, settings.random_init_truncation)
             if isinstance(init, str) else init for init in starts]
    with torch.inference_mode(False):
        # tensors made under inference mode cannot join autograd: copy them out of it
        sources = sources.detach().clone().to(device, torch.float32)
        inits = [init.detach().clone().to(device, torch.float32) for init in inits]
        for init in inits:
            _check_inputs(sources, init, generator, settings)
        target = target.clone().to(device)
    settings = replace(settings, loop=resolved_loop(settings, device))

    def attempt(chunk: int | None) -> list[TrainResult]:
        with torch.inference_mode(False), torch.enable_grad():
            torch.manual_seed(settings.seed)
            return _optimise(sources, torch.cat(inits), target, generator, guide, replace(settings, chunk_size=chunk),
                             progress, should_stop)

    return passes_fitting_memory(attempt, rows, settings.chunk_size, "training", _faces(sources.shape[0], len(starts)),
                                 fit=fit_memory, smallest_advice=SMALLEST_PASS_ADVICE, release=release,
                                 on_retry=on_retry)


def resolved_loop(settings: TrainSettings, device: torch.device) -> TrainLoop:
    """The loop ``settings.loop`` means on ``device``: "auto" is the CUDA-graph loop on CUDA, where
    replaying the step removes the host's dispatch cost, and "fast" elsewhere (and wherever
    ``recompute_from`` is set, which the graph loop cannot capture). The result's metadata records it."""
    if settings.loop != "auto":
        return settings.loop
    return "graph" if device.type == "cuda" and settings.recompute_from is None else "fast"


def _faces(count: int, candidates: int) -> str:
    """What one training step renders, for messages."""
    if candidates == 1:
        return f"{count} source faces"
    return f"{candidates} candidates x {count} source faces"


def _loss_and_backward(edited, losses, e_src, candidates: int, count: int, chunk: int | None):
    """Loss terms [K] of every candidate (``losses(e_src, e_amp)``), with their gradients accumulated
    into the parameters.

    ``losses`` computes each candidate's loss on its own N edited embeddings exactly as a single run
    would; their sum is back-propagated (candidates share no parameter, so each gets its own gradient).
    In one pass when ``chunk`` covers all K x N faces. Otherwise exactly the same gradient with the
    memory of one chunk (``runtime.backward_in_slices``).
    """
    rows = candidates * count
    if chunk is None or chunk >= rows:
        loss, transfer, consistency = losses(e_src, edited(0, rows))
        (loss[0] if candidates == 1 else loss.sum()).backward()
        return loss, transfer, consistency
    return backward_in_slices(edited, _passes(candidates, count, chunk), lambda e_amp: losses(e_src, e_amp),
                              lambda terms: terms[0][0] if candidates == 1 else terms[0].sum())


def embed_faces(latents: torch.Tensor, generator: StyleGAN2Generator, guide: ClipGuide,
                s: TrainSettings) -> torch.Tensor:
    """CLIP embeddings [B, C] (float32, not normalised) of the faces of W+ ``latents``, seen the way
    training sees them (``s``'s autocast, render size, recomputation and CLIP preprocessing)."""
    # reduced precision for the generator only: the consistency loss compares nearly equal
    # CLIP embeddings, which bf16/fp16 arithmetic inside CLIP would drown in rounding
    with autocast_for(latents.device, s.autocast, cache=s.loop != "graph"):
        images = generator.synthesize(latents, stop_at=s.render_size, recompute_from=s.recompute_from)
    return guide.embed_generated(images.float(), mode=s.clip_mode).float()


def _passes(candidates: int, count: int, chunk: int) -> list[tuple[int, int]]:
    """Row ranges of the K x N (candidate-major) faces rendered per pass, at most ``chunk`` each.

    Passes never split a candidate's faces differently from a single run with the same
    ``chunk_size``: whole candidates per pass when ``chunk >= N``, else each candidate's faces in
    slices of ``chunk``. A generator pass over a different mix of faces may round differently, so
    this keeps every candidate's numbers equal to its single run's.
    """
    if chunk >= count:
        per_pass = chunk // count * count
        return [(i, min(i + per_pass, candidates * count)) for i in range(0, candidates * count, per_pass)]
    return [(k * count + i, k * count + min(i + chunk, count))
            for k in range(candidates) for i in range(0, count, chunk)]


class _BestSoFar:
    """The best-so-far direction of every candidate and the loss history, kept on the device and
    updated in place: no host value is read, so a CUDA graph can replay the update.

    ``counter`` is the number of steps recorded (a device scalar); ``history`` [steps, K, 3] holds
    each step's (loss, transfer, consistency) of every candidate.
    """

    def __init__(self, direction: torch.Tensor, steps: int) -> None:
        candidates, device = direction.shape[0], direction.device
        self.loss = torch.full((candidates,), float("inf"), device=device)
        self.direction = direction.detach().clone()
        self.step = torch.zeros(candidates, dtype=torch.long, device=device)
        self.counter = torch.zeros((), dtype=torch.long, device=device)
        self.history = torch.zeros(steps, candidates, 3, device=device)

    @torch.no_grad()
    def record(self, loss: torch.Tensor, transfer: torch.Tensor, consistency: torch.Tensor,
               direction: torch.Tensor) -> None:
        """Record one step: its pre-step losses [K] and the direction after its update."""
        improved = loss < self.loss
        self.loss.copy_(torch.where(improved, loss, self.loss))
        self.direction.copy_(torch.where(improved[:, None, None], direction, self.direction))
        self.step.copy_(torch.where(improved, self.counter, self.step))
        self.history.index_copy_(0, self.counter.reshape(1), torch.stack([loss, transfer, consistency], dim=1)[None])
        self.counter += 1


class _CudaGraphStep:
    """Calls ``step`` eagerly ``GRAPH_WARMUP_STEPS`` times on a side stream (CUDA's recipe: lazy
    initialisation and autotuning happen outside the capture), then captures the next call as a CUDA
    graph and from then on replays it. Every call is a real training step."""

    def __init__(self, step: Callable[[], None], device: torch.device) -> None:
        self.step, self.device = step, device
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self) -> None:
        with torch.cuda.device(self.device):  # the models' GPU, whichever is current
            if self.graph is None and self.calls < GRAPH_WARMUP_STEPS:
                main, side = torch.cuda.current_stream(), torch.cuda.Stream()
                side.wait_stream(main)
                with torch.cuda.stream(side):
                    self.step()
                main.wait_stream(side)
            else:
                if self.graph is None:
                    self.graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(self.graph):  # records the step's kernels; runs nothing
                        self.step()
                self.graph.replay()
        self.calls += 1


def _optimise(sources, inits, target, generator, guide, s: TrainSettings, progress, should_stop) -> list[TrainResult]:
    """The loop for K candidates at once: ``inits`` [K, n_latent, D], toward ``target`` [1, C]."""
    device = sources.device
    count = sources.shape[0]
    candidates = inits.shape[0]
    use_coefficients = s.lambda_consistency > 0

    def losses(e_src: torch.Tensor, e_amp: torch.Tensor):
        """(loss, transfer, consistency) [K] of the K x N edited embeddings ``e_amp``, candidate by candidate."""
        per_candidate = e_amp.reshape(candidates, count, -1)
        loss, transfer, consistency = [], [], []
        for k in range(candidates):
            t, c = essence_losses(e_src, per_candidate[k], target)
            loss.append(s.lambda_transfer * t + s.lambda_consistency * c)
            transfer.append(t)
            consistency.append(c)
        return torch.stack(loss), torch.stack(transfer), torch.stack(consistency)

    def render_and_embed(latents: torch.Tensor) -> torch.Tensor:
        return embed_faces(latents, generator, guide, s)

    def embed_sources() -> torch.Tensor:
        step = s.chunk_size or count
        with torch.no_grad():
            return torch.cat([render_and_embed(part) for part in sources.split(step)])

    direction = inits.clone().requires_grad_(True)  # [K, n_latent, D]: one Adam, elementwise = K Adams
    coefficients = torch.ones(candidates, count, device=device, requires_grad=use_coefficients)

    def edited(start: int, stop: int) -> torch.Tensor:
        """Embeddings of edited faces ``start:stop`` of the K x N (candidate-major) batch; each
        candidate's latents are formed exactly as a single run forms them."""
        parts = []
        for k in range(start // count, (stop - 1) // count + 1):
            rows = slice(max(start - k * count, 0), min(stop - k * count, count))
            own = direction[k:k + 1]
            parts.append(sources[rows] + (own * coefficients[k, rows, None, None] if use_coefficients else own))
        return render_and_embed(parts[0] if len(parts) == 1 else torch.cat(parts))

    coefficient_lr = s.coefficient_rate
    cached_src = embed_sources() if s.loop != "official" else None
    best = _BestSoFar(direction, s.steps)

    def one_step(e_src: torch.Tensor, update: Callable[[], None]) -> None:
        """Losses and gradients of every candidate, then ``update`` (both optimisers) and the
        best-so-far record: the step every loop takes, whatever its optimisers."""
        direction.grad = coefficients.grad = None
        loss, transfer, consistency = _loss_and_backward(edited, losses, e_src, candidates, count, s.chunk_size)
        with torch.no_grad():
            update()
            best.record(loss, transfer, consistency, direction)

    if s.loop == "graph":
        adam = ScheduledAdam(direction, [learning_rate(i, s.steps, s.lr) for i in range(s.steps)], s.weight_decay)

        def static_update() -> None:
            if use_coefficients:  # the reference's fresh Adam, whose one step needs no state
                fresh_adam_step_(coefficients, coefficients.grad, coefficient_lr, s.coefficient_weight_decay)
            adam.step_(best.counter)

        # the whole step with static shapes and no host value: what a CUDA graph replays
        static_step = functools.partial(one_step, cached_src, static_update)
        replayed = _CudaGraphStep(static_step, device) if device.type == "cuda" else static_step

        def run_step(lr: float) -> None:  # the step's rate is already in the device table
            replayed()
    else:
        optimizer = torch.optim.Adam([direction], lr=s.lr, weight_decay=s.weight_decay)

        def torch_update() -> None:
            if use_coefficients:  # the reference builds a fresh Adam for the coefficients every step
                torch.optim.Adam([coefficients], lr=coefficient_lr, weight_decay=s.coefficient_weight_decay).step()
            optimizer.step()

        def run_step(lr: float) -> None:
            optimizer.param_groups[0]["lr"] = lr
            one_step(embed_sources() if cached_src is None else cached_src, torch_update)

    start = time.perf_counter()
    for step in range(s.steps):
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"training stopped at step {step} of {s.steps}; nothing was saved.")
        lr = learning_rate(step, s.steps, s.lr)
        run_step(lr)
        done = step + 1
        if progress is not None and (done % s.progress_every == 0 or done == s.steps):
            lead = int(best.loss.argmin().item())
            last = best.history[step, lead].tolist()
            progress(TrainProgress(done, s.steps, last[0], last[1], last[2], lr, best.loss[lead].item(),
                                   direction[lead:lead + 1].detach().clone(), lead))
    seconds = time.perf_counter() - start
    return _results(best, coefficients, seconds, s)


def _results(best: _BestSoFar, coefficients: torch.Tensor, seconds: float, s: TrainSettings) -> list[TrainResult]:
    """One ``TrainResult`` per candidate, read back from the device once."""
    table = best.history.cpu().tolist()  # [steps][K][3]
    bests = best.step.tolist()
    results = []
    for k in range(best.loss.shape[0]):
        losses, transfers, consistencies = (list(column) for column in zip(*(row[k] for row in table)))
        results.append(TrainResult(
            direction=Direction(best.direction[k:k + 1].cpu()), losses=losses, transfer=transfers,
            consistency=consistencies, best_step=bests[k], seconds=seconds, settings=s,
            coefficients=coefficients[k].detach().cpu().tolist(),
        ))
    return results
