"""A folder of targets encoded with a trained essence encoder: one task per target
(``essence.encoding.folder_targets``), each writing ``<out>/<target>.safetensors``, the file ``essence encode``
writes for that target alone.

On Ray (``run_encode_batch``, ``essence batch encode``) the tasks go to workers that load the encoder
once, as every batch job. ``encode_here`` runs the same tasks in this process with the faces of several
targets in each pass of the encoder (``essence.encoding.encode_targets``), for ``essence encode
--targets-dir``. Both skip a target whose output exists and was made with the same options (the
encoder file's content, alignment, the landmark model, the target's pictures), and both report every
target.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..encoding import EncodeTarget, encode_targets, load_essence_encoder
from ..errors import EssenceError
from ..faces import load_landmarker
from ..latents import load_direction
from ..networks import load_generator
from ..runtime import resolve_device
from ..storage import file_sha256, remove_temp_files
from .batch import (_STOPPED_REPORT, BatchReport, BatchTask, TaskRecord, _check_unique, _message, _NoBar,
                    _progress_bar, _unfinished, run_batch, tasks_report)

OPTIONS_KEY = "batch_options"  # where a direction records the options it was encoded with (what a rerun compares)


@dataclass(frozen=True)
class EncodeJob:
    """How every target is encoded: ``align`` its faces the FFHQ way (else each picture is used as it
    is, resized to 256 px)."""

    align: bool = True


@dataclass(frozen=True)
class EncodeModels:
    """The files every worker loads once: the essence encoder, the generator it is checked against
    (None: not checked), dlib's landmarks (None: looked up as usual; only when aligning), and the device."""

    encoder_file: str
    generator: str | None = None
    landmarks: str | None = None
    device: str = "auto"


class EncodeWorker:
    """A worker that encodes targets: the essence encoder (checked against the generator when one is
    given) and the landmark model load once. ``run`` does one task; ``encode`` many, their faces
    through the encoder together."""

    def __init__(self, config: tuple[EncodeJob, EncodeModels]) -> None:
        self.job, self.models = config
        self.device = resolve_device(self.models.device)
        generator = load_generator(self.models.generator, device=self.models.device) if self.models.generator else None
        self.encoder = load_essence_encoder(self.models.encoder_file, generator, device=self.device)
        self.landmarks = load_landmarker(self.models.landmarks) if self.job.align else None

    def run(self, task: BatchTask) -> dict[str, Any]:
        [(_, result)] = list(self.encode([task]))
        if isinstance(result, Exception):
            raise result
        return result

    def encode(self, tasks: Sequence[BatchTask]) -> Iterator[tuple[BatchTask, dict[str, Any] | Exception]]:
        """Each task, in order, with its report details once its output is written, or the exception
        that failed it (the others go on)."""
        targets = [task.inputs for task in tasks]
        encoded = encode_targets(self.encoder, targets, align=self.job.align, landmarks=self.landmarks,
                                 encoder_file=self.models.encoder_file)
        for task, result in zip(tasks, encoded):
            if result.error is not None:
                yield task, result.error
                continue
            result.direction.meta[OPTIONS_KEY] = task.options
            try:
                result.direction.save(task.output)
            except Exception as exc:  # e.g. a full disk: this target fails
                yield task, exc
                continue
            yield task, {"pictures": len(result.target.pictures), "name": result.direction.name}


def encode_tasks(targets: Sequence[EncodeTarget], out: Path, job: EncodeJob, models: EncodeModels) -> list[BatchTask]:
    """One task per target, writing ``out/<target name>.safetensors``. Its options are the job's, the
    encoder file's content (a file replaced under the same name is another job), the landmark file
    (when aligning) and the target's pictures (resolved paths); the device and the generator, which
    only checks, change no result."""
    if not Path(models.encoder_file).is_file():
        raise EssenceError(f"{models.encoder_file}: no such essence encoder file. Train one with `essence "
                           f"train-encoder`.")
    shared = {"aligned": job.align, "encoder": file_sha256(models.encoder_file),
              "landmarks": models.landmarks if job.align else None}
    return [BatchTask(target.name, Path(out) / f"{target.name}.safetensors", target,
                      {**shared, "pictures": [str(Path(p).resolve()) for p in target.pictures]})
            for target in targets]


def finished_essence(path: Path) -> dict[str, Any]:
    """A finished output: a direction file Essence reads (its pictures and the options it was encoded
    with), else raises."""
    direction = load_direction(path)
    return {"pictures": direction.meta.get("targets"), "options": direction.meta.get(OPTIONS_KEY)}


def run_encode_batch(targets: Sequence[EncodeTarget], out: Path, job: EncodeJob, models: EncodeModels,
                     **runner: Any) -> BatchReport:
    """Encode every target into ``out`` on Ray workers (finished outputs of the same job are kept and
    skipped); ``runner`` options go to ``run_batch`` (workers, address, gpus_per_worker, progress, lock)."""
    return run_batch(encode_tasks(targets, out, job, models), EncodeWorker, (job, models),
                     validate=finished_essence, description="encoding", **runner)


def encode_here(targets: Sequence[EncodeTarget], out: Path, job: EncodeJob, models: EncodeModels, *,
                progress: bool = True) -> BatchReport:
    """The same tasks as ``run_encode_batch`` in this process, without Ray: finished outputs skipped,
    the rest encoded with the faces of several targets in each pass (``EncodeWorker.encode``), and a
    report of every target (a task's seconds: from the previous output to its own). Stopped by Ctrl-C
    or SIGTERM, the exception carries the report of what finished (``BatchReport.of_stopped``)."""
    tasks = encode_tasks(targets, out, job, models)
    _check_unique(tasks)
    start = time.perf_counter()
    records: dict[str, TaskRecord] = {}
    remove_temp_files(task.output for task in tasks)  # left by an earlier run that was killed
    todo = list(_unfinished(tasks, finished_essence, records))
    where = f"{socket.gethostname()}:{os.getpid()}"
    worker = EncodeWorker((job, models)) if todo else None  # a bad encoder file is refused before any target
    resources = f"this process ({worker.device})" if worker is not None else "no workers (nothing to do)"
    workers = 1 if worker is not None else 0
    bar: Any = _NoBar()
    try:
        bar = _progress_bar(len(tasks), len(tasks) - len(todo), "encoding", progress)
        last = time.perf_counter()
        for task, result in worker.encode(todo) if worker is not None else ():
            now = time.perf_counter()
            records[task.key] = (TaskRecord(task.key, "failed", str(task.output), now - last, error=_message(result),
                                            worker=where) if isinstance(result, Exception)
                                 else TaskRecord(task.key, "done", str(task.output), now - last, worker=where,
                                                 details=result))
            last = now
            bar.update(1)
    except (KeyboardInterrupt, SystemExit) as exc:
        setattr(exc, _STOPPED_REPORT, tasks_report(tasks, records, start, workers, resources, finished_essence))
        raise
    finally:
        bar.close()
        remove_temp_files(task.output for task in tasks)
    return tasks_report(tasks, records, start, workers, resources)

