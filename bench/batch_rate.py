"""The ``batch`` section of ``python -m bench``: tasks per hour of ``essence batch train`` on Ray.

Runs the real batch path (``essence.scale.run_batch`` with ``essence.scale.TrainWorker``, whose
task is ``essence train``'s own call, ``essence.training.train``) on a fresh local Ray per measurement,
with 1, 2, ... workers sharing this machine's CPUs (or one GPU each):

  tiny   the tiny fixture models (``tests/fixtures``): each task aligns and inverts its target (e4e)
         and trains from that start: per-task overhead, Ray and scheduling costs. The targets are
         TargetCLIP's aligned photos (``../shared/fixtures``, or ``$ESSENCE_FIXTURES``; the
         repository may not hold them)
  full   the full-size generator (1024 px) and CLIP ViT-B/32 with random weights, as the other
         sections build them, 4 sources; random start (the e4e inversion of a target costs about a
         second, see the encoder section, against minutes of training)

Each row gives the batch's wall time from the start of Ray to the last file (start-up and model
loading included), the median seconds of one task inside a worker, and two rates: tasks per hour
over the whole batch, and in steady state (workers x 3600 / median task seconds).
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from essence.scale import TrainModels, TrainWorker, connect, run_batch, train_tasks
from essence.training import DEFAULT_MODE, EssenceJob, train_mode

from bench import FIXTURES, SHARED_FIXTURES

TARGETS = ("face_a.jpg", "face_b.jpg", "photos/aligned_0.jpg", "photos/aligned_3.jpg")
SIZES = ("tiny", "full")
TASKS_PER_WORKER = {"tiny": 8, "full": 1}


class FullSizeRandomTrainWorker(TrainWorker):
    """``TrainWorker`` with the full-size models built with random weights instead of loaded from
    files: the same task code, the same shapes, no weight file needed."""

    def __init__(self, config: tuple[EssenceJob, TrainModels]) -> None:
        from .measure import training_problem

        self.job, self.models = config
        problem = training_problem(torch.device(self.models.device))
        self.generator = problem["generator"]
        self.guide = problem["guide"]


def batch_config(size: str, steps: int, device: str) -> tuple[EssenceJob, TrainModels]:
    """The job and models ``essence batch train --steps STEPS --device DEVICE`` runs for this measurement
    (``--sample 2`` and the tiny model files; ``--sample 4 --init random``, and ``--chunk 1`` on the CPU)."""
    if size == "tiny":
        settings = train_mode(DEFAULT_MODE).settings(steps=steps)
        models = TrainModels(str(FIXTURES / "stylegan2_tiny64.pt"), str(FIXTURES / "clip_tiny.pt"),
                             str(FIXTURES / "e4e_tiny64.pt"), device=device)
        return EssenceJob(settings, mode=DEFAULT_MODE, sample=2), models
    # TargetCLIP's 4 sources; one at a time on the CPU (the same result, faster and 3.6x smaller there)
    settings = train_mode(DEFAULT_MODE).settings(steps=steps, chunk_size=1 if device == "cpu" else None)
    return EssenceJob(settings, mode=DEFAULT_MODE, init="random", sample=4), TrainModels(device=device)


def bench_batch(size: str, workers: int, tasks: int, steps: int, device: str = "cpu") -> dict:
    """One measurement on a fresh local Ray; the row for the table."""
    import ray

    missing = [name for name in TARGETS if not (SHARED_FIXTURES / name).is_file()]
    if size == "tiny" and missing:
        raise FileNotFoundError(f"the tiny batch's target photos ({', '.join(missing)}) are not in {SHARED_FIXTURES}; "
                                f"set ESSENCE_FIXTURES to the shared fixtures folder")
    folder = Path(tempfile.mkdtemp(prefix="essence-bench-batch-"))
    try:
        targets = []
        for i in range(tasks):  # distinct names, the same few pictures
            source = SHARED_FIXTURES / TARGETS[i % len(TARGETS)]
            targets.append(folder / f"target{i:03d}{source.suffix}")
            shutil.copy(source, targets[-1])
        out = folder / "out"
        config = batch_config(size, steps, device)
        worker = TrainWorker if size == "tiny" else FullSizeRandomTrainWorker
        batch_tasks = train_tasks(targets, out, *config)
        start = time.perf_counter()
        connect()
        report = run_batch(batch_tasks, worker, config, workers=workers, progress=False,
                           gpus_per_worker=0 if device == "cpu" else None)
        wall = time.perf_counter() - start
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(folder, ignore_errors=True)
    if report.failed:
        raise RuntimeError(f"{len(report.failed)} task(s) failed: {report.failed[0].error}")
    task_seconds = statistics.median(r.seconds for r in report.records)
    return {"kind": "batch", "size": size, "workers": workers, "tasks": tasks, "steps": steps,
            "resources": report.resources, "wall_s": wall, "task_s": task_seconds,
            "tasks_per_hour": tasks * 3600 / wall, "steady_tasks_per_hour": workers * 3600 / task_seconds,
            "load_average": os.getloadavg()[0]}


def format_batch_row(row: dict) -> str:
    what = f"batch train {row['size']:<4} {row['steps']} steps, {row['workers']} worker(s), {row['tasks']} tasks"
    return (f"{what:<48}{row['wall_s']:>8.1f} s wall {row['task_s']:>7.1f} s/task {row['tasks_per_hour']:>8.1f} "
            f"tasks/h ({row['steady_tasks_per_hour']:.1f} steady)  load {row['load_average']:.1f}")


def batch_rows(sizes: list[str], workers: list[int], tasks_per_worker: int | None, steps: int,
               device: str) -> list[dict]:
    """Every measurement of the section, printed as it comes (default tasks per worker: ``TASKS_PER_WORKER``)."""
    print(f"Batch train on a local Ray ({os.cpu_count()} CPUs): {steps} steps per task; wall time includes Ray's "
          f"start and model loading")
    rows = []
    for size in sizes:
        for count in workers:
            row = bench_batch(size, count, count * (tasks_per_worker or TASKS_PER_WORKER[size]), steps, device)
            rows.append(row)
            print("  " + format_batch_row(row), flush=True)
    return rows
