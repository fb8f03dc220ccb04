"""Training the encoder: TargetCLIP's coach, step for step, and resumable at any point.

Per global step 0..max_steps (the official loop's ``max_steps + 1`` updates): the batch of that step
(``data.step_batch``), the encoder in train mode (BatchNorm uses the batch's own statistics and its
running statistics move), the objective and its gradient (``objective``), one Ranger update; after
the update, validation on the held-out pictures in eval mode at steps 0, ``validate_every``, ... and
the last (the mean total loss over the pictures, one at a time as the coach's test loader does), the
best encoder so far written to ``best-<step>.safetensors``; and a checkpoint (``state``) at steps 0,
``checkpoint_every``, ... and the last. Only the encoder trains: the generator is frozen and draws
with its fixed noise, and the sources' features are computed once (they never change).

A run given a checkpoint folder that holds a checkpoint of the same run (settings, generator, CLIP,
sources, data, starting encoder) goes on from it; since each step's pictures depend only on the seed
and the step, it ends where an uninterrupted run ends. A checkpoint of another run is refused.

The same loop runs on several workers (``essence.scale.run_encoder_training``, Ray Train's DDP) through
two seams, both single-process by default: ``Workers`` (which worker this is, its share of each step's
batch, the model the gradient flows through, losses averaged and a stop agreed over the workers) and
``CheckpointStore`` (where checkpoints and the best encoder go: a folder here, ``ray.train.report``
there). Nothing else differs, so one worker is the single-process run.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from ..errors import EssenceError, ShapeError, TrainingCancelled, require_finite
from ..networks import ClipGuide, E4EEncoder, StyleGAN2Generator, synthesis_fingerprint
from ..runtime import passes_fitting_memory, release_device_memory
from .data import EncoderData, as_inputs, step_batch
from .objective import EncoderLosses, generated_features, objective, objective_backward, target_features
from .ranger import official_ranger
from .settings import EncoderSettings
from .state import TrainingState
from .workers import CheckpointStore, Workers, checkpoint_store

PathLike = str | os.PathLike
SMALLEST_PASS_ADVICE = "Use fewer source faces (2 at the least), or a device with more memory."


@dataclass(frozen=True)
class EncoderProgress:
    """After each update: ``done`` of ``updates``, that step's losses [total, similarity, consistency,
    l2], its validation loss when it validated, the best validation loss so far, and when it
    validated, the held-out pictures' essences [M, n_latent, D] (CPU; for previews)."""

    done: int
    updates: int
    losses: list[float]
    validation: float | None
    best_loss: float | None
    essences: torch.Tensor | None = None


@dataclass
class EncoderTraining:
    """What ``train_encoder`` returns: the encoder after the last update (eval mode), the state of
    the best validated one (None without held-out pictures), the history and the run's record."""

    encoder: E4EEncoder
    best_state: dict[str, torch.Tensor] | None
    best_step: int | None
    best_loss: float | None
    losses: list[list[float]]
    grad_norms: list[float]
    validations: list[list[float]]
    run: dict[str, Any]
    resumed_from: int
    seconds: float

    def best_encoder(self) -> E4EEncoder:
        """The encoder that validated best (a copy; the last one when nothing was validated)."""
        model = copy.deepcopy(self.encoder)
        if self.best_state is not None:
            model.load_state_dict(self.best_state, strict=True)
        return model.eval()


def train_encoder(encoder: E4EEncoder, generator: StyleGAN2Generator, guide: ClipGuide, data: EncoderData,
                  sources: torch.Tensor, settings: EncoderSettings = EncoderSettings(), *,
                  checkpoints: PathLike | CheckpointStore | None = None,
                  progress: Callable[[EncoderProgress], None] | None = None,
                  should_stop: Callable[[], bool] | None = None, workers: Workers | None = None,
                  fit_memory: bool = True, on_retry: Callable[[int], None] | None = None,
                  release: Callable[[], None] = release_device_memory) -> EncoderTraining:
    """Fine-tune (a copy of) ``encoder`` so that its raw output is the essence of its input picture.

    ``sources`` [N, n_latent, D]: the fixed source latents (the official file holds 5). ``checkpoints``:
    a folder for the checkpoint and the best encoder; when it holds this run's checkpoint, the run goes
    on from there (or a ``CheckpointStore``). ``should_stop`` is asked before every step; stopping raises
    ``TrainingCancelled`` (the last checkpoint stays). ``workers``: this process as one of several
    workers sharing each step (``essence.encoding.workers``; by default the only one).

    ``fit_memory``: on device out-of-memory, start again from the last checkpoint (or the start) with
    half as many source faces rendered per pass, down to one: the same training, later, as the
    optimiser's ``train`` does (``runtime.passes_fitting_memory``; ``on_retry`` hears each new chunk
    size, ``release`` frees memory between attempts). Otherwise, and on several workers (whose steps
    are collective), a ``DeviceMemoryError`` naming the chunk size to lower.
    """
    device = generator.latent_avg.device
    workers = workers or Workers()
    store = checkpoint_store(checkpoints)
    with torch.inference_mode(False):
        sources = _checked_sources(sources, generator, data, settings, workers.count).to(device)
    run = run_record(encoder, generator, guide, data, sources, settings, workers.count)

    began: list[int] = []  # the step each attempt started from

    def attempt(chunk: int | None) -> EncoderTraining:
        chunked = replace(settings, chunk_size=chunk)
        with torch.inference_mode(False), torch.enable_grad():
            model = copy.deepcopy(encoder).to(device).requires_grad_(True)
            optimizer = official_ranger(model.parameters(), chunked.lr)
            state = _start(store, run, model, optimizer)
            began.append(state.step)
            return _loop(model, optimizer, state, generator, guide, data, sources, chunked, store,
                         progress, should_stop, workers)

    faces = (f"{settings.batch_size} pictures x " if settings.batch_size > 1 else "") + f"{sources.shape[0]} source faces"
    started = time.perf_counter()
    training = passes_fitting_memory(attempt, sources.shape[0], settings.chunk_size, "training the encoder", faces,
                                     fit=fit_memory and workers.count == 1, smallest_advice=SMALLEST_PASS_ADVICE,
                                     release=release, on_retry=on_retry)
    # what this call did, whichever attempt finished: where it started and how long it took in all
    training.resumed_from, training.seconds = began[0], time.perf_counter() - started
    return training


def run_record(encoder: E4EEncoder, generator: StyleGAN2Generator, guide: ClipGuide, data: EncoderData,
               sources: torch.Tensor, settings: EncoderSettings, workers: int = 1) -> dict[str, Any]:
    """What makes two runs the same run: a checkpoint resumes only a run with an equal record. A run
    on several workers records how many (their batches make each step's); one worker is the single process."""
    identity = {k: v for k, v in settings.record().items() if k != "checkpoint_every"}
    record = {"settings": identity, "generator": {"fingerprint": generator.fingerprint(),
                                                  "synthesis_sha256": synthesis_fingerprint(generator)},
              "clip_model": guide.name, "clip_sha256": _state_sha256(guide.state_dict())[:16],
              "sources_sha256": _tensor_sha256(sources), "data_sha256": data.digest,
              "start_encoder_sha256": _state_sha256(encoder.state_dict())}
    return {"workers": workers, **record} if workers != 1 else record


def run_id(record: dict[str, Any]) -> str:
    """A short name for the run ``record`` describes (``run_record``): its digest, so that a folder of
    checkpoints per run is found again by the same run and by no other."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]


def _checked_sources(sources: torch.Tensor, generator: StyleGAN2Generator, data: EncoderData,
                     settings: EncoderSettings, workers: int = 1) -> torch.Tensor:
    if sources.ndim != 3 or tuple(sources.shape[1:]) != (generator.n_latent, generator.style_dim):
        raise ShapeError(f"sources must be W+ latents [N, {generator.n_latent}, {generator.style_dim}] for this "
                         f"generator, got {list(sources.shape)}.")
    if sources.shape[0] < 2:
        raise EssenceError(f"the consistency loss compares sources in pairs: give at least 2 sources, got "
                           f"{sources.shape[0]}.")
    require_finite(sources, "the source latents")
    if data.train.shape[0] < settings.batch_size * workers:
        each = f" on each of {workers} workers" if workers != 1 else ""
        raise EssenceError(f"{data.train.shape[0]} training pictures cannot fill a batch of "
                           f"{settings.batch_size}{each}.")
    return sources.detach().clone().float()


def _start(store: CheckpointStore | None, run: dict[str, Any], model: E4EEncoder,
           optimizer: torch.optim.Optimizer) -> TrainingState:
    """A fresh state, or the checkpoint's (loaded into the model and the optimiser) when it is this run's."""
    saved = store.load() if store is not None else None
    if saved is None:
        return TrainingState(0, {}, {}, run)
    if saved.run != run:
        differs = sorted(k for k in set(run) | set(saved.run) if run.get(k) != saved.run.get(k))
        raise EssenceError(f"{store.where}: holds the checkpoint of another training run (it differs in "
                           f"{', '.join(differs)}); choose another checkpoint folder or remove that one.")
    model.load_state_dict(saved.encoder, strict=True)
    optimizer.load_state_dict(saved.optimizer)
    torch.set_rng_state(saved.rng)
    return saved


def _loop(model, optimizer, state: TrainingState, generator, guide, data: EncoderData, sources, s: EncoderSettings,
          store: CheckpointStore | None, progress, should_stop, workers: Workers) -> EncoderTraining:
    embed = generated_features(generator, guide)
    device = sources.device
    with torch.no_grad():
        source_features = torch.cat([embed(part) for part in sources.split(s.chunk_size or sources.shape[0])])
    best_state = store.load_best(state) if store is not None else None
    trained = workers.trained_through(model)  # after the checkpoint is loaded: DDP starts from rank 0's state
    writer = workers.rank == 0
    resumed_from, start = state.step, time.perf_counter()
    for step in range(state.step, s.max_steps + 1):
        if workers.any(should_stop is not None and should_stop()):
            raise TrainingCancelled(f"encoder training stopped before step {step} of {s.max_steps}; "
                                    f"{'it resumes from its last checkpoint' if store else 'nothing was saved'}.")
        batch = step_batch(data, step, s.batch_size * workers.count, s.shuffle, s.flip, s.seed)
        images = workers.share(batch)
        losses, grad_norm = _update(model, trained, optimizer, images.to(device), sources, source_features, embed,
                                    generator.size, guide, s, workers)
        state.losses.append(losses)
        state.grad_norms.append(grad_norm)
        state.step = step + 1
        validation, essences = None, [] if progress is not None else None
        if writer and data.heldout.shape[0] and (step % s.validate_every == 0 or step == s.max_steps):
            validation = float(validate(model, data.heldout, sources, source_features, embed, generator.size, guide,
                                        s, essences)[:, 0].mean())
            state.validations.append([step, validation])
            if state.best_loss is None or validation < state.best_loss:
                state.best_loss, state.best_step = validation, step
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                if store is not None:
                    store.keep_best(best_state, step, validation, state.run)
        if store is not None and (step % s.checkpoint_every == 0 or step == s.max_steps):
            state.encoder, state.optimizer, state.rng = model.state_dict(), optimizer.state_dict(), torch.get_rng_state()
            store.save(state, best_state)
        if writer and progress is not None:
            progress(EncoderProgress(step + 1, s.updates, state.losses[-1], validation, state.best_loss,
                                     torch.cat(essences) if essences else None))
    return EncoderTraining(model.eval().requires_grad_(False), best_state, state.best_step, state.best_loss,
                           state.losses, state.grad_norms, state.validations, state.run, resumed_from,
                           time.perf_counter() - start)


def _update(model, trained, optimizer, images, sources, source_features, embed, size, guide, s: EncoderSettings,
            workers: Workers) -> tuple[list[float], float]:
    """One step of the coach: losses and gradients in train mode (through ``trained``: the model, or
    DDP's wrapper, which averages the gradient over the workers), then Ranger's update; the losses
    [total, similarity, consistency, l2] averaged over the workers, and the gradient's norm."""
    trained.train()
    optimizer.zero_grad(set_to_none=True)
    targets = target_features(images, size, guide)
    losses = objective_backward(trained(images), sources, source_features, targets, embed, s.lambda_consistency,
                                s.lambda_reg, s.chunk_size)
    values = workers.mean(torch.stack(list(losses)))
    require_finite(values[0], "the encoder's training loss", fix="Lower the learning rate.")
    grad_norm = float(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]).norm())
    optimizer.step()
    return [float(v) for v in values], grad_norm


def finished_training(state: TrainingState, best_state: dict[str, torch.Tensor] | None, encoder: E4EEncoder,
                      resumed_from: int = 0, seconds: float = 0.0) -> EncoderTraining:
    """What ``train_encoder`` returns, rebuilt from a complete run's last checkpoint (``state``) and
    its best encoder: how a run on several workers hands its result to the process that writes the
    file. ``encoder``: the starting e4e (a copy takes the checkpoint's weights)."""
    updates = state.run["settings"]["max_steps"] + 1
    if state.step != updates:
        raise EssenceError(f"the encoder training's last checkpoint is after {state.step} of {updates} updates: "
                           f"the run is not complete; run it again to go on.")
    model = copy.deepcopy(encoder).cpu()
    model.load_state_dict(state.encoder, strict=True)
    return EncoderTraining(model.eval().requires_grad_(False), best_state, state.best_step, state.best_loss,
                           state.losses, state.grad_norms, state.validations, state.run, resumed_from, seconds)


def validate(model: E4EEncoder, heldout: torch.Tensor, sources: torch.Tensor, source_features: torch.Tensor,
             embed, size: int, guide: ClipGuide, s: EncoderSettings,
             essences: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Each held-out picture's losses [M, 4] (total, similarity, consistency, l2) with the encoder in
    eval mode, one picture at a time as the coach's test loader (batch 1) gives them; train mode after.
    Each picture's essence is appended to ``essences`` (CPU) when a list is given."""
    model.eval()
    rows = []
    with torch.no_grad():
        for pixels in heldout.split(1):
            images = as_inputs(pixels).to(sources.device)
            essence = model(images)
            losses: EncoderLosses = objective(essence, sources, source_features,
                                              target_features(images, size, guide), embed,
                                              s.lambda_consistency, s.lambda_reg, s.chunk_size)
            rows.append(torch.stack(list(losses)).cpu())
            if essences is not None:
                essences.append(essence.detach().float().cpu())
    model.train()
    return torch.stack(rows)


def _tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def _state_sha256(state: dict[str, torch.Tensor]) -> str:
    sha = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        sha.update(f"{name}{list(tensor.shape)}{tensor.dtype}".encode())
        sha.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return sha.hexdigest()
