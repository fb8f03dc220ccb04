"""Training an essence encoder on several workers: Ray Train's ``TorchTrainer`` (DDP), the same training.

``run_encoder_training`` runs ``essence.encoding.train_encoder`` in every Ray Train worker; only its two
seams (``essence.encoding.workers``) differ from the single process, so there is no training loop here:

- **Models**: each worker loads the generator, CLIP and the starting e4e from ``EncoderModels`` (file
  paths every node can read; None: looked up as usual) on its own device (its GPU, or the CPU).
  The pictures and the sources travel with the job (Ray's object store), read once by the caller.
- **Each step**: the batch is ``workers x batch_size`` pictures, chosen and flipped from the seed and the
  step alone as in one process (``encoding.step_batch``); worker r takes rows r x batch_size onwards.
  The encoder is wrapped in torch's DDP (``encoding.DistributedWorkers``, as Ray Train's
  ``prepare_model`` wraps it; gloo on CPUs, NCCL on GPUs), which averages the gradient, so every
  worker makes the same Ranger update; the recorded losses are the workers' mean. One worker is the
  single-process run, step for step.
- **BatchNorm**: plain BatchNorm, as the official coach: in train mode each worker normalises with
  its own pictures' statistics (with batch 1, each picture's own, exactly as the official batch 1).
  DDP's default ``broadcast_buffers`` copies rank 0's running statistics to every worker before each
  forward, so the running statistics (used in eval mode: validation and the encoder file) are rank
  0's: moved by rank 0's share of each step, at the official momentum. SyncBatchNorm would instead
  mix the workers' pictures into one batch statistic, which is not the official per-picture
  normalisation (and has no CPU kernel).
- **Rank 0** validates on the held-out pictures, keeps the best encoder and writes each checkpoint
  (the same files as one process: ``checkpoint.safetensors`` and ``best-<step>.safetensors``) into a
  temporary folder that ``ray.train.report`` persists; the other workers report metrics only.
- **Resume**: a worker starts from ``ray.train.get_checkpoint()``: after a worker failure within the
  run (``max_failures``), or in a new run with the same checkpoint folder, whose ``ray-train/`` is Ray
  Train's storage for the run (storage path and run name). As in one process, a checkpoint of another
  run (settings, data, models, number of workers) is refused, and the same command run again after a
  kill ends where an uninterrupted run ends.
- **Stopping**: when ``should_stop`` says so on any worker, all of them end without failing (so Ray
  Train does not restart them) and the driver raises ``TrainingCancelled``; the last checkpoint stays.
  Ctrl-C in the driver does the same through a file in the checkpoint folder (``stop-requested``) that
  every worker checks before each step, and ends in ``KeyboardInterrupt``; a second Ctrl-C raises at
  once. ``fit`` runs in a thread of the driver, so Ray Train installs no Ctrl-C handler of its own
  (its handler ends the program with status 0, as if the run had succeeded).
- **Memory**: the workers render the chunk size they are given (``--chunk``); one that runs out of
  device memory fails the run with a ``DeviceMemoryError`` that says so, since a worker starting again
  alone would leave the others waiting in a collective step. One process retries smaller by itself.
- **Progress**: rank 0 writes each update's ``EncoderProgress`` (without the essences) to
  ``progress.json`` in the checkpoint folder; the driver reads it while it waits, for ``progress``.
- **The file**: the driver checks the output and the checkpoint folder before anything starts
  (``encoding.check_encoder_outputs``), and writes the encoder file from the final checkpoint only
  when the run is complete (``encoding.finished_training``, ``trained_encoder``).

On a cluster the checkpoint folder must be on storage every node sees (NFS or similar), as Ray Train
requires of a storage path.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from ..errors import EssenceError, TrainingCancelled
from ..networks import load_encoder, load_generator, load_guide
from ..encoding import (DISTRIBUTED_RUN, CheckpointFolder, EncoderData, EncoderProgress, EncoderSettings,
                        DistributedWorkers, EncoderTraining, EssenceEncoder, TrainingState, check_encoder_outputs,
                        finished_training, load_checkpoint, train_encoder, trained_encoder)
from ..storage import atomic_write
from .batch import connect, plan_workers

PathLike = str | os.PathLike
STOP_FILE = "stop-requested"  # in the checkpoint folder: the driver asks the workers to stop (Ctrl-C)
PROGRESS_FILE = "progress.json"  # in the checkpoint folder: rank 0's last EncoderProgress, for the driver
PROGRESS_POLL_S = 0.5
# Ray Train watches a cluster's nodes for preemption (spot instances) with an actor of its own; a
# cluster of one node, this machine, has none to watch: one process less to start for each run
PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


@dataclass(frozen=True)
class EncoderModels:
    """The model files every worker loads (None: looked up as usual) and the device: ``auto`` (a GPU
    per worker when the cluster has GPUs), ``cpu`` (``mps`` too: CPU workers), or ``cuda`` (a GPU per
    worker, required)."""

    generator: str | None = None
    guide: str | None = None
    encoder: str | None = None
    device: str = "auto"


def run_encoder_training(out: PathLike, data: EncoderData, sources: torch.Tensor,
                         settings: EncoderSettings = EncoderSettings(), models: EncoderModels = EncoderModels(), *,
                         workers: int, address: str | None = None, checkpoints: PathLike | None = None,
                         inputs: Iterable[PathLike | None] = (), name: str | None = None, start: str | None = None,
                         max_failures: int = 0, cpus_per_worker: float | None = None,
                         should_stop: Callable[[], bool] | None = None,
                         progress: Callable[[EncoderProgress], None] | None = None,
                         ) -> tuple[EssenceEncoder, EncoderTraining]:
    """Train (or resume) an essence encoder on ``workers`` Ray Train workers and write ``out`` when
    complete; the file's contents and the run (module docstring). ``settings.batch_size`` is each
    worker's batch: a step trains on ``workers x batch_size`` pictures. ``address``: a Ray cluster (else
    ``RAY_ADDRESS``, else a local Ray). ``max_failures``: restarts of the workers from the last checkpoint
    after a failure within the run (0: the run fails; running it again resumes). ``cpus_per_worker``: CPUs (and torch
    threads) each worker asks for (default: the cluster's CPUs shared among CPU workers, 1 beside a
    GPU). ``should_stop`` (picklable: it runs in every worker) is asked before every step; when any
    worker's says so, the run stops with ``TrainingCancelled`` and its last checkpoint stays; Ctrl-C
    stops it the same way and raises ``KeyboardInterrupt``. ``progress`` is called in this process
    after updates (``EncoderProgress`` without essences; a quick run may skip some). ``inputs``,
    ``name``, ``start``: as ``encoding.train_encoder_file``."""
    if workers < 1:
        raise EssenceError(f"the number of workers must be at least 1, got {workers}.")
    if max_failures < 0:
        raise EssenceError(f"max_failures must be at least 0, got {max_failures}.")
    models = replace(models, **{k: _absolute(getattr(models, k)) for k in ("generator", "guide", "encoder")})
    folder = check_encoder_outputs(out, checkpoints, [*inputs, models.generator, models.guide, models.encoder],
                                   distributed=True).resolve()
    if data.train.shape[0] < settings.batch_size * workers:
        raise EssenceError(f"{data.train.shape[0]} training pictures cannot fill a batch of {settings.batch_size} "
                           f"on each of {workers} workers.")
    ray = connect(address)
    train, torch_trainer = _ray_train()
    device = models.device.split(":")[0]
    gpus = 0.0 if device in ("cpu", "mps") else None if device == "auto" else 1.0  # mps: not on Ray workers
    cluster = ray.cluster_resources()
    plan = plan_workers(cluster, workers, workers, gpus)
    if cpus_per_worker is not None:
        if not cpus_per_worker > 0:
            raise EssenceError(f"cpus_per_worker must be above 0, got {cpus_per_worker}.")
        plan = replace(plan, cpus=float(cpus_per_worker))
    needed, kind = (workers * plan.gpus, "GPU") if plan.gpus else (workers * plan.cpus, "CPU")
    if needed > float(cluster.get(kind, 0)):
        raise EssenceError(f"{workers} workers need {needed:g} {kind}s together, and the Ray cluster has "
                           f"{float(cluster.get(kind, 0)):g}: use fewer workers or a bigger cluster (--address).")
    resources = {"CPU": plan.cpus, **({"GPU": plan.gpus} if plan.gpus else {})}
    files = _RunFiles(folder)
    config = {"data": data, "sources": sources.detach().cpu().float(), "settings": settings, "models": models,
              "gpu": bool(plan.gpus), "threads": max(1, int(plan.cpus)), "should_stop": should_stop,
              "files": files}
    trainer = torch_trainer(
        _worker, train_loop_config=config,
        scaling_config=train.ScalingConfig(num_workers=workers, use_gpu=bool(plan.gpus),
                                           resources_per_worker=resources),
        run_config=train.RunConfig(name=DISTRIBUTED_RUN, storage_path=str(folder),
                                   failure_config=train.FailureConfig(max_failures=max_failures),
                                   checkpoint_config=train.CheckpointConfig(num_to_keep=1)))
    started = time.perf_counter()
    one_node = sum(1 for node in ray.nodes() if node.get("Alive")) == 1
    result, interrupted = _fit(trainer, train, files, progress, {PREEMPTION_WATCHER: "0"} if one_node else {})
    try:
        training = _finished(result, models, time.perf_counter() - started)
    except TrainingCancelled:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    generator = load_generator(models.generator, device="cpu")
    encoder = trained_encoder(training, generator, training.run["clip_model"], data, sources, settings,
                              name or Path(out).stem, Path(start).name if start else None)
    encoder.save(out)
    return encoder, training


def _absolute(path: str | None) -> str | None:
    """Workers may start in another folder: model paths go to them absolute."""
    return str(Path(path).expanduser().resolve()) if path else path


def _ray_train() -> tuple[Any, Any]:
    """``ray.train`` and its V2 ``TorchTrainer`` (resuming a run from its storage folder needs V2)."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    try:
        import ray.train
        from ray.train.torch import TorchTrainer
    except ImportError as exc:
        raise EssenceError(f"training on several workers needs Ray Train ({exc}). Install it with: "
                           f'pip install "ray[train]"') from None
    if not TorchTrainer.__module__.startswith("ray.train.v2"):
        raise EssenceError("training on several workers needs Ray Train V2 (Ray 2.43 or later, with "
                           "RAY_TRAIN_V2_ENABLED=1 before Ray is imported).")
    return ray.train, TorchTrainer


def _fit(trainer: Any, train: Any, files: "_RunFiles", progress: Callable[[EncoderProgress], None] | None,
         environment: dict[str, str]) -> tuple[Any, bool]:
    """``trainer.fit()`` in a thread, and whether Ctrl-C stopped it. Meanwhile this thread feeds
    ``progress`` from rank 0's progress file and turns a first Ctrl-C into the stop file (the workers
    finish their step and stop; the last checkpoint stays); a second Ctrl-C raises at once. A worker's Essence
    error (a refused checkpoint, a non-finite loss) is raised as itself. ``environment``: Ray Train's
    settings for this run (``fit`` passes them on to its controller), unless the user set them."""
    files.clear()
    added = {name: value for name, value in environment.items() if name not in os.environ}
    os.environ.update(added)
    outcome: dict[str, Any] = {}
    ended = threading.Event()  # not Thread.join: a join that Ctrl-C interrupts can leave the thread seen as ended

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 (raised again in the calling thread)
            outcome["error"] = exc
        finally:
            ended.set()

    threading.Thread(target=fit, name="essence-ray-train", daemon=True).start()
    interrupted, shown = False, 0
    try:
        while not ended.is_set():
            try:
                ended.wait(PROGRESS_POLL_S)
                shown = files.show_progress(progress, shown)
            except KeyboardInterrupt:
                if interrupted:
                    raise
                interrupted = True
                files.ask_to_stop()
                print("Stopping the workers after their current step (Ctrl-C again to stop at once); the last "
                      "checkpoint stays and the same run started again goes on from it.", file=sys.stderr, flush=True)
        files.show_progress(progress, shown)
    finally:
        if ended.is_set():  # after a second Ctrl-C the request stays, so that the workers still stop
            files.clear()
        for name in added:
            os.environ.pop(name, None)
    error = outcome.get("error")
    if isinstance(error, train.TrainingFailedError):
        cause = _essence_error(error)
        if cause is not None:
            raise cause from None
        raise EssenceError(f"encoder training on Ray Train failed: {error}") from error
    if error is not None:
        raise error
    return outcome["result"], interrupted


@dataclass(frozen=True)
class _RunFiles:
    """The two files by which the driver and the workers talk during a run, in the checkpoint folder
    (which every worker sees, as Ray Train's storage): the driver's request to stop, rank 0's progress."""

    folder: Path

    @property
    def stop(self) -> Path:
        return self.folder / STOP_FILE

    @property
    def progress(self) -> Path:
        return self.folder / PROGRESS_FILE

    def clear(self) -> None:
        """No request and no progress left from another run (or this one, once it ended)."""
        self.stop.unlink(missing_ok=True)
        self.progress.unlink(missing_ok=True)

    def ask_to_stop(self) -> None:
        self.stop.touch()

    def stop_asked(self) -> bool:
        return self.stop.exists()

    def write_progress(self, p: EncoderProgress) -> None:
        with atomic_write(self.progress) as tmp:
            tmp.write_text(json.dumps(asdict(replace(p, essences=None))))

    def show_progress(self, progress: Callable[[EncoderProgress], None] | None, shown: int) -> int:
        """Call ``progress`` with rank 0's progress if it is newer than update ``shown``; the newest shown."""
        if progress is None:
            return shown
        try:
            p = EncoderProgress(**json.loads(self.progress.read_text()))
        except (OSError, ValueError, TypeError):  # not written yet, or removed
            return shown
        if p.done > shown:
            progress(p)
        return max(shown, p.done)


def _essence_error(exc: BaseException) -> EssenceError | None:
    """The first worker's (lowest rank's) ``EssenceError`` behind a failed run, if that is what failed."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank in sorted(failures):
        error = failures[rank]
        while error is not None and not isinstance(error, EssenceError):
            error = getattr(error, "_base_exc", None) or error.__cause__  # Ray wraps it with its traceback
        if error is not None:
            return error
    return None


def _finished(result: Any, models: EncoderModels, seconds: float) -> EncoderTraining:
    """The run's result from its last checkpoint; ``TrainingCancelled`` when the workers stopped before
    the end (a run that failed raised in ``_fit``)."""
    if result.checkpoint is None:  # ended without an error and without a checkpoint: stopped before any
        raise TrainingCancelled("encoder training stopped before its first checkpoint; nothing was saved.")
    with result.checkpoint.as_directory() as folder:
        state = load_checkpoint(folder)
        if state is None:
            raise EssenceError(f"{result.checkpoint.path}: the run's last checkpoint holds no encoder checkpoint.")
        best = CheckpointFolder(folder).load_best(state)
    updates = state.run["settings"]["max_steps"] + 1
    if state.step < updates:  # the workers stopped together (should_stop, or Ctrl-C's abort)
        raise TrainingCancelled(f"encoder training stopped; its last checkpoint is after {state.step} of {updates} "
                                f"updates, and the same run started again goes on from there.")
    metrics = result.metrics or {}
    encoder = load_encoder(models.encoder, device="cpu")
    return finished_training(state, best, encoder, int(metrics.get("resumed_from", 0)), seconds)


# ----------------------------------------------------------------------------- in each worker


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: its models, its seams, and ``train_encoder``."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(config["threads"])
    context = ray.train.get_context()
    device = ray.train.torch.get_device() if config["gpu"] else torch.device("cpu")
    models: EncoderModels = config["models"]
    generator = load_generator(models.generator, device=device)
    guide = load_guide(models.guide, device=device)
    encoder = load_encoder(models.encoder, device=device)
    workers = DistributedWorkers(context.get_world_rank(), context.get_world_size(), device)
    files: _RunFiles = config["files"]
    asked: Callable[[], bool] | None = config["should_stop"]
    try:
        train_encoder(encoder, generator, guide, config["data"], config["sources"], config["settings"],
                      checkpoints=_ReportedCheckpoints(workers.rank), workers=workers,
                      should_stop=lambda: files.stop_asked() or (asked is not None and asked()),
                      progress=files.write_progress, fit_memory=False)  # workers run the chunk size given
    except TrainingCancelled:
        return  # every worker agreed to stop: the run ends, not failed (so no restart), before its last step


class _ReportedCheckpoints:
    """Checkpoints through Ray Train: the latest reported one to start from, each new one written by
    rank 0 with the best encoder beside it and reported by every worker (``ray.train.report``)."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.where = f"the Ray Train run's checkpoint ({DISTRIBUTED_RUN}/ in the checkpoint folder)"
        self.best: dict[str, torch.Tensor] | None = None
        self.resumed_from = 0
        self.started = time.perf_counter()

    def load(self) -> TrainingState | None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            state = load_checkpoint(folder)
            self.best = CheckpointFolder(folder).load_best(state) if state is not None else None
        self.resumed_from = state.step if state is not None else 0
        return state

    def load_best(self, state: TrainingState) -> dict[str, torch.Tensor] | None:
        return self.best

    def keep_best(self, encoder: dict[str, torch.Tensor], step: int, loss: float, run: dict[str, Any]) -> None:
        """Nothing yet: the best encoder is written with the next checkpoint."""

    def save(self, state: TrainingState, best: dict[str, torch.Tensor] | None) -> None:
        import ray.train

        metrics = {"step": state.step, "loss": state.losses[-1][0], "best_loss": state.best_loss,
                   "best_step": state.best_step, "resumed_from": self.resumed_from,
                   "seconds": round(time.perf_counter() - self.started, 3)}
        if self.rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="essence-encoder-") as folder:
            CheckpointFolder(folder).save(state, None)
            if best is not None:
                CheckpointFolder(folder).keep_best(best, state.best_step, state.best_loss, state.run)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"step-{state.step:07d}")
