"""Batch jobs on Ray: many independent tasks, each writing one file, on workers that keep their models.

A studio trains hundreds of essences and applies them to thousands of photos; a video is thousands
of frames. Both are lists of independent tasks. ``run_batch`` (or a ``BatchRunner``) runs such a
list on Ray (https://docs.ray.io), which schedules the work, restarts dead workers and runs on one
machine or a cluster without changes:

- **Tasks** (``BatchTask``): a unique ``key`` (its row in the report), the ``output`` file it writes
  and its ``inputs`` (anything picklable). A task writes only its output, atomically
  (``essence.storage.files.atomic_write``): the file appears complete or not at all.
- **Workers**: a class, given to the runner, that loads its models once in ``__init__(config)`` and
  does one task per ``run(task) -> dict`` (the dict goes into the report). The runner wraps it in a
  Ray actor: one per GPU when the cluster has GPUs (``num_gpus``), else CPU actors, each using
  ``torch`` threads for the CPUs it was given.
- **Independent failures**: an exception in a task becomes that task's ``failed`` row, with the
  message; the other tasks go on.
- **Resume**: a task whose output exists and passes ``validate`` (e.g. the direction file loads with
  Essence's own reader) is ``skipped`` without running. A damaged or partial output is done again,
  and so is one whose recorded ``options`` (``validate`` returns them under ``"options"``) are not
  the task's: a rerun with another strength redoes the pictures, never reports the old ones as done.
- **One run per folder**: with ``lock``, a second run into the same folder is refused while the
  first holds it (``essence.storage.folder_lock``).
- **Killed workers**: Ray restarts a dead actor (``max_restarts``) and runs its task again
  (``max_task_retries``). The killed attempt never renamed its temporary file into place, so there is
  no partial output; its leftover temporary file is removed when the batch ends. When the retries
  are spent the task is reported failed and a new worker takes its place; a rerun does it.
- **Stopped**: Ctrl-C, or SIGTERM in a program that handles it (the command line does), stops the
  workers; the exception carries the report of what finished, the other tasks ``stopped``
  (``BatchReport.of_stopped``), and a rerun does them.
- **Where**: with ``address`` (or the ``RAY_ADDRESS`` variable) the runner joins that cluster;
  otherwise it starts a local Ray sized to the machine (no dashboard). If Ray is already running in
  this process (``ray.init`` was called), that one is used.

Ray is an optional dependency (``pip install "ray>=2.9"``); the rest of Essence never imports it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence

from ..errors import EssenceError
from ..storage import atomic_write, folder_lock, remove_temp_files

RAY_REQUIREMENT = "ray>=2.9"
INSTALL_HINT = f'pip install "{RAY_REQUIREMENT}"'
DEFAULT_RETRIES = 2  # restarts of a dead worker, and retries of the task it was running
Status = Literal["done", "skipped", "failed", "stopped"]
STOPPED_ERROR = "the batch was stopped before this task finished; run the same command again to do it"
_STOPPED_REPORT = "essence_batch_report"  # the attribute of the exception that stopped a batch
BASE_COLUMNS = ("key", "status", "seconds", "output", "error", "worker")


@dataclass(frozen=True)
class BatchTask:
    """One unit of work: ``key`` names it in the report (unique in a batch), ``output`` is the one
    file it writes, ``inputs`` is what the worker needs (picklable: paths, numbers, small dicts).
    ``options`` are the choices that define the output (JSON values): the worker records them with
    it, and an existing output made with other options is not taken as this task's."""

    key: str
    output: Path
    inputs: Any = None
    options: dict[str, Any] = field(default_factory=dict)


class BatchWorker(Protocol):
    """What a worker class provides. ``__init__(config)`` loads the models (once per worker);
    ``run(task)`` does one task, writes ``task.output`` atomically and returns the details for the
    report (plain JSON values: numbers, strings). It raises to fail the task; the message is reported."""

    def __init__(self, config: Any) -> None: ...

    def run(self, task: BatchTask) -> dict[str, Any]: ...


@dataclass
class TaskRecord:
    """One row of the report."""

    key: str
    status: Status
    output: str
    seconds: float = 0.0
    error: str | None = None
    worker: str | None = None  # host:pid of the worker process that did it
    details: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """Flat: the fixed columns, then the details (which cannot override them)."""
        base = asdict(self)
        base.pop("details")
        return {**base, **{k: v for k, v in self.details.items() if k not in base}}


@dataclass
class BatchReport:
    """Every task's record (in task order), and how the batch ran."""

    records: list[TaskRecord]
    seconds: float
    workers: int
    resources: str  # e.g. "2 CPU workers (1 CPU each)" or "4 GPU workers"

    def count(self, status: Status) -> int:
        return sum(1 for r in self.records if r.status == status)

    @property
    def failed(self) -> list[TaskRecord]:
        return [r for r in self.records if r.status == "failed"]

    def tasks_per_hour(self) -> float | None:
        """Tasks done (not skipped) per hour of wall time, or None when none was done."""
        done = self.count("done")
        return done * 3600.0 / self.seconds if done and self.seconds > 0 else None

    def summary(self) -> str:
        """The one line printed at the end."""
        rate = self.tasks_per_hour()
        speed = f", {rate:.1f} tasks/hour" if rate is not None else ""
        stopped = f", {self.count('stopped')} stopped" if self.count("stopped") else ""
        return (f"{len(self.records)} task(s): {self.count('done')} done, {self.count('skipped')} skipped, "
                f"{self.count('failed')} failed{stopped} in {_duration(self.seconds)} on {self.resources}{speed}.")

    @staticmethod
    def of_stopped(exc: BaseException) -> "BatchReport | None":
        """The report of the batch that ``exc`` stopped (Ctrl-C's ``KeyboardInterrupt``, or the
        ``SystemExit`` a SIGTERM handler raises): the finished tasks' records and the others
        ``stopped``, so the caller can still write what was done. None when ``exc`` stopped no batch."""
        return getattr(exc, _STOPPED_REPORT, None)

    def to_dict(self) -> dict[str, Any]:
        return {"summary": {"tasks": len(self.records), "done": self.count("done"),
                            "skipped": self.count("skipped"), "failed": self.count("failed"),
                            "stopped": self.count("stopped"),
                            "seconds": round(self.seconds, 3), "workers": self.workers,
                            "resources": self.resources, "tasks_per_hour": self.tasks_per_hour()},
                "tasks": [r.row() for r in self.records]}

    def write(self, folder: str | os.PathLike, name: str = "report") -> tuple[Path, Path]:
        """``<folder>/<name>.json`` and ``<name>.csv`` (one row per task), each written atomically."""
        folder = Path(folder)
        rows = [r.row() for r in self.records]
        columns = list(BASE_COLUMNS) + sorted({k for row in rows for k in row} - set(BASE_COLUMNS))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(v) for k, v in row.items()})
        json_path, csv_path = folder / f"{name}.json", folder / f"{name}.csv"
        with atomic_write(json_path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=1, default=str), encoding="utf-8")
        with atomic_write(csv_path) as tmp:
            tmp.write_text(text.getvalue(), encoding="utf-8", newline="")
        return json_path, csv_path


def _csv_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


# ----------------------------------------------------------------------------- Ray


def import_ray() -> Any:
    """The ``ray`` module, or an ``EssenceError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise EssenceError(f"batch jobs run on Ray, which is not installed. Install it with: {INSTALL_HINT}") from None
    return ray


ADDRESS_TIMEOUT = 10.0  # seconds to wait for a cluster's port to answer before saying it is unreachable
_ADDRESS = re.compile(r"(?P<client>ray://)?(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>\d{1,5}))?")


def check_address(address: str, given: str = "--address") -> None:
    """Refuse a Ray address that is malformed or that nothing answers at, within ``ADDRESS_TIMEOUT``
    seconds: Ray itself would retry such an address for ever. ``auto`` (the cluster started on this
    machine with ``ray start``) is left to Ray, which says at once when there is none."""
    if address == "auto":
        return
    match = _ADDRESS.fullmatch(address.strip())
    port = int(match["port"]) if match and match["port"] else (10001 if match and match["client"] else None)
    if match is None or port is None or not 0 < port < 65536:
        raise EssenceError(f"{given} {address!r} is not a Ray address: give host:port (the cluster's GCS port, "
                           f"6379 by default), ray://host:port (Ray Client, 10001 by default) or 'auto'.")
    host = match["host"].strip("[]")
    try:
        socket.create_connection((host, port), timeout=ADDRESS_TIMEOUT).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc)).lower()
        raise EssenceError(f"no Ray cluster at {given} {address} ({reason} from {host}:{port}). Check the "
                           f"address (`ray status` on the cluster's head node prints it), or leave {given} "
                           f"unset to run on this machine.") from None


def connect(address: str | None = None, num_cpus: int | None = None) -> Any:
    """Ray, ready: the running one in this process, else the cluster at ``address`` (or
    ``RAY_ADDRESS``), else a new local one with ``num_cpus`` CPUs (default: all), without dashboard."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine unasked
    given = "--address" if address else "RAY_ADDRESS"
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        check_address(address, given)
        _init_keeping_sigterm(ray, address=address, log_to_driver=False)
        return ray
    # Local workers inherit this process's environment: they import essence from where it runs
    # (a checkout too). Cheaper than a Ray runtime_env, which costs seconds per worker start.
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
    _init_keeping_sigterm(ray, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                          logging_level=logging.ERROR)
    return ray


def _init_keeping_sigterm(ray: Any, **options: Any) -> None:
    """``ray.init``, after which a SIGTERM handler the program had is in place again.

    ``ray.init`` installs its own, and its C++ core a crash dump on SIGTERM: with them a ``kill``
    during ``essence batch`` killed the local Ray from inside the handler and the command aborted
    (SIGABRT, 134 in a shell; Ray 2.60) with no report. A program that handles SIGTERM itself, as the
    command line does (ending like Ctrl-C: the workers stopped, the report written, status 143),
    keeps its handler, and Ray stops at exit. A program that left SIGTERM alone gets Ray's, as before.
    """
    keep = _own_sigterm_handler()
    ray.init(**options)
    if keep is not None:
        signal.signal(signal.SIGTERM, keep)


def _own_sigterm_handler() -> Any:
    """The program's SIGTERM handler (a function, or ignoring it), or None: the default, or not the
    main thread (only it may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    handler = signal.getsignal(signal.SIGTERM)
    return None if handler in (signal.SIG_DFL, None) else handler


class _Actor:
    """The Ray actor around a worker: builds it once, runs tasks, turns exceptions into records.

    It answers ``status`` while a task runs (two threads), so a caller can see which task each
    worker process is on, e.g. to watch a batch or to test that killing one loses nothing.
    """

    def __init__(self, worker_class: type, config: Any, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.where = f"{socket.gethostname()}:{os.getpid()}"
        self.current: str | None = None
        self.startup_error: str | None = None
        try:
            self.worker = worker_class(config)
        except Exception as exc:  # reported by ready(): a worker that cannot start fails the batch
            self.startup_error = _message(exc)

    def ready(self) -> str | None:
        """None when the worker started, else why it could not."""
        return self.startup_error

    def status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "where": self.where, "task": self.current}

    def run(self, task: BatchTask) -> TaskRecord:
        start = time.perf_counter()
        self.current = task.key
        try:
            if self.startup_error is not None:
                raise EssenceError(f"the worker could not start: {self.startup_error}")
            details = self.worker.run(task) or {}
            return TaskRecord(task.key, "done", str(task.output), time.perf_counter() - start,
                              worker=self.where, details=details)
        except Exception as exc:  # an independent failure: reported, the batch goes on
            return TaskRecord(task.key, "failed", str(task.output), time.perf_counter() - start,
                              error=_message(exc), worker=self.where)
        finally:
            self.current = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _message(exc: BaseException) -> str:
    """Essence's own errors are written for users; others get their type name too."""
    return str(exc) if isinstance(exc, EssenceError) else f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class WorkerPlan:
    """How many actors, and what each asks Ray for."""

    workers: int
    cpus: float
    gpus: float

    def describe(self) -> str:
        if self.gpus:
            return f"{self.workers} GPU worker(s) ({self.gpus:g} GPU each)"
        return f"{self.workers} CPU worker(s) ({self.cpus:g} CPU each)"


def plan_workers(resources: dict[str, float], tasks: int, workers: int | None = None,
                 gpus_per_worker: float | None = None, max_node_cpus: float | None = None) -> WorkerPlan:
    """Fit the workers to the cluster's ``resources`` (``ray.cluster_resources()``).

    GPUs (``gpus_per_worker`` None = 1 when the cluster has any, 0 = CPU only): one worker per GPU.
    CPU only: by default one worker per CPU; with ``workers`` given, the CPUs are shared among them
    (each worker's torch uses that many threads), at most one node's CPUs each. Never more workers
    than tasks.
    """
    total_gpus = float(resources.get("GPU", 0))
    total_cpus = max(1.0, float(resources.get("CPU", 1)))
    gpus = (1.0 if total_gpus >= 1 else 0.0) if gpus_per_worker is None else float(gpus_per_worker)
    if gpus > total_gpus:
        raise EssenceError(f"each worker asks for {gpus:g} GPU(s) but the Ray cluster has {total_gpus:g}. "
                           f"Run on the CPU (--device cpu) or join a cluster with GPUs (--address).")
    if workers is not None and workers < 1:
        raise EssenceError(f"--workers must be at least 1, got {workers}.")
    if gpus:
        count = workers or max(1, int(total_gpus // gpus))
        cpus = 1.0
    else:
        count = workers or int(total_cpus)
        cpus = max(1.0, math.floor(total_cpus / count))
        if max_node_cpus:
            cpus = min(cpus, max(1.0, math.floor(max_node_cpus)))
    return WorkerPlan(max(1, min(count, tasks)), cpus, gpus)


class BatchRunner:
    """Runs batches of tasks on Ray actors built from one worker class and config (see module doc).

    ``workers``: how many actors (default: see ``plan_workers``); ``gpus_per_worker``: None = one GPU
    each when the cluster has GPUs, 0 = CPU workers; ``retries``: restarts of a dead worker and
    retries of its task. Actors start on the first ``run`` and stay (models loaded) until ``close``.
    """

    def __init__(self, worker_class: type, config: Any = None, *, workers: int | None = None,
                 address: str | None = None, gpus_per_worker: float | None = None,
                 retries: int = DEFAULT_RETRIES) -> None:
        self.worker_class = worker_class
        self.config = config
        self.workers = workers
        self.address = address
        self.gpus_per_worker = gpus_per_worker
        self.retries = retries
        self.plan: WorkerPlan | None = None
        self._actors: list[Any] = []
        self._ray: Any = None
        self._sigterm = _SigtermBetweenWaits()

    def __enter__(self) -> "BatchRunner":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def worker_status(self) -> list[dict[str, Any]]:
        """For each worker: its ``pid``, ``where`` (host:pid) and the ``task`` key it is on (or None).
        Answers while the workers work; a worker that is restarting is left out."""
        if self._ray is None:
            return []
        found = []
        for actor in list(self._actors):
            try:
                found.append(self._ray.get(actor.status.remote(), timeout=10))
            except Exception:  # dead or restarting: nothing to say about it now
                continue
        return found

    def close(self) -> None:
        """Stop the workers (their models go with them)."""
        if self._ray is not None:
            for actor in self._actors:
                with contextlib.suppress(Exception):
                    self._ray.kill(actor, no_restart=True)
        self._actors = []

    # -- running

    def run(self, tasks: Sequence[BatchTask], validate: Callable[[Path], dict[str, Any] | None] | None = None,
            progress: bool = True, description: str = "batch", lock: Path | None = None) -> BatchReport:
        """Run ``tasks`` and return the report (records in task order).

        ``validate(output)`` decides whether an existing output counts as finished: it returns the
        details for the report (e.g. the loss stored in a direction file, and the ``options`` it was
        made with), or raises when the file is unusable (then the task runs again). Without
        ``validate`` every task runs. ``lock``: a folder no other run may write into meanwhile.
        """
        _check_unique(tasks)
        with folder_lock(lock, "another batch") if lock is not None else contextlib.nullcontext():
            return self._run_all(tasks, validate, progress, description)

    def _run_all(self, tasks: Sequence[BatchTask], validate: Callable[[Path], dict[str, Any] | None] | None,
                 progress: bool, description: str) -> BatchReport:
        start = time.perf_counter()
        records: dict[str, TaskRecord] = {}
        remove_temp_files(task.output for task in tasks)  # left by a worker killed in an earlier run
        todo = _unfinished(tasks, validate, records)
        bar: Any = _NoBar()
        with self._sigterm:
            try:
                if todo:
                    self._start(len(todo))  # before the bar, so its ETA does not count Ray's start-up
                bar = _progress_bar(len(tasks), len(tasks) - len(todo), description, progress)
                if todo:
                    self._run(todo, records, bar)
            except BaseException as exc:  # Ctrl-C, SIGTERM, lost cluster: stop the writers before their files go
                self.close()
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    setattr(exc, _STOPPED_REPORT, self._report(tasks, records, start, validate))
                raise
            finally:
                bar.close()
                remove_temp_files(task.output for task in tasks)  # a retried task's killed attempt may have left one
        return self._report(tasks, records, start)

    def _report(self, tasks: Sequence[BatchTask], records: dict[str, TaskRecord], start: float,
                validate: Callable[[Path], dict[str, Any] | None] | None = None) -> BatchReport:
        plan = self.plan or WorkerPlan(0, 0, 0)
        return tasks_report(tasks, records, start, plan.workers,
                            plan.describe() if self.plan else "no workers (nothing to do)", validate)

    def _run(self, todo: deque[BatchTask], records: dict[str, TaskRecord], bar: Any) -> None:
        in_flight: dict[Any, tuple[int, BatchTask]] = {}

        def submit(index: int) -> None:
            if todo:
                task = todo.popleft()
                in_flight[self._actors[index].run.remote(task)] = (index, task)

        total = len(todo)
        for index in range(len(self._actors)):
            submit(index)
        replacements = 0
        while in_flight:
            ready = self._wait(list(in_flight), 1)
            index, task = in_flight.pop(ready[0])
            try:
                record = self._ray.get(ready[0])
            except self._ray.exceptions.RayActorError as exc:  # died more often than it may restart
                record = TaskRecord(task.key, "failed", str(task.output),
                                    error=f"the worker running it died {self.retries + 1} time(s) ({_first_line(exc)}); "
                                          f"run the batch again to retry it")
                if replacements < total:  # a new worker takes its place (at most one per task)
                    replacements += 1
                    self._actors[index] = self._new_actor()
            except self._ray.exceptions.RayError as exc:  # e.g. a result that could not be sent back
                record = TaskRecord(task.key, "failed", str(task.output), error=_first_line(exc))
            records[task.key] = record
            bar.update(1)
            if record.status == "failed":
                bar.set_postfix(failed=sum(1 for r in records.values() if r.status == "failed"))
            submit(index)

    def _start(self, tasks: int) -> None:
        """Connect to Ray and start the actors (once; later runs reuse them)."""
        if self._actors:
            return
        self._ray = connect(self.address)
        nodes = [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive")]
        max_node_cpus = max((n.get("CPU", 0) for n in nodes), default=None)
        self.plan = plan_workers(self._ray.cluster_resources(), tasks, self.workers, self.gpus_per_worker,
                                 max_node_cpus)
        self._actors = [self._new_actor() for _ in range(self.plan.workers)]
        started = [a.ready.remote() for a in self._actors]
        self._wait(started, len(started))
        problems = {p for p in self._ray.get(started) if p}
        if problems:
            self.close()
            raise EssenceError(f"the batch workers could not start: {'; '.join(sorted(problems))}")

    def _wait(self, refs: list[Any], count: int) -> list[Any]:
        """``ray.wait`` for ``count`` of ``refs``, in slices between which a SIGTERM is acted on (see
        ``_SigtermBetweenWaits``); the ready ones."""
        while True:
            ready, _ = self._ray.wait(refs, num_returns=count, timeout=SIGNAL_CHECK_SECONDS)
            self._sigterm.check()
            if len(ready) >= count:
                return ready

    def _new_actor(self) -> Any:
        plan = self.plan
        assert plan is not None
        actor_class = self._ray.remote(num_cpus=plan.cpus, num_gpus=plan.gpus, max_restarts=self.retries,
                                       max_task_retries=self.retries, max_concurrency=2)(_Actor)
        return actor_class.remote(self.worker_class, self.config, int(plan.cpus))


def tasks_report(tasks: Sequence[BatchTask], records: dict[str, TaskRecord], start: float, workers: int,
                 resources: str, validate: Callable[[Path], dict[str, Any] | None] | None = None) -> BatchReport:
    """Every task's record in task order, timed from ``start``. A task without one was stopped before
    it finished, unless its output is there and ``validate`` accepts it: its worker wrote it while the
    batch was being stopped, before the stop reached the code keeping the records."""
    rows = [records.get(t.key) or _finished(t, validate, "done")
            or TaskRecord(t.key, "stopped", str(t.output), error=STOPPED_ERROR) for t in tasks]
    return BatchReport(rows, time.perf_counter() - start, workers, resources)


def run_batch(tasks: Sequence[BatchTask], worker_class: type, config: Any = None, *,
              validate: Callable[[Path], dict[str, Any] | None] | None = None, workers: int | None = None,
              address: str | None = None, gpus_per_worker: float | None = None, retries: int = DEFAULT_RETRIES,
              progress: bool = True, description: str = "batch", lock: Path | None = None) -> BatchReport:
    """Run ``tasks`` on fresh workers of ``worker_class(config)`` and stop them; see ``BatchRunner``."""
    with BatchRunner(worker_class, config, workers=workers, address=address, gpus_per_worker=gpus_per_worker,
                     retries=retries) as runner:
        return runner.run(tasks, validate=validate, progress=progress, description=description, lock=lock)


SIGNAL_CHECK_SECONDS = 0.5  # the longest a batch waits on Ray before acting on a SIGTERM


class _SigtermBetweenWaits:
    """While a batch runs, a SIGTERM is noted and the program's own handler runs between two waits on
    Ray, in plain Python.

    Ray catches a ``SystemExit`` raised inside its waits (where a handler that raises runs) and
    raises ``SystemExit(1)`` instead: the command line's handler, which ends with status 143 after
    the workers are stopped and the report is written, would end with 1. Only a handler that is a
    function is deferred, and only in the main thread (the one that runs handlers).
    """

    def __init__(self) -> None:
        self.handler: Callable[[int, Any], Any] | None = None
        self.received = False

    def __enter__(self) -> "_SigtermBetweenWaits":
        handler = _own_sigterm_handler()
        if callable(handler):
            self.handler, self.received = handler, False
            signal.signal(signal.SIGTERM, self._note)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.handler is not None:
            signal.signal(signal.SIGTERM, self.handler)
            self.handler = None

    def _note(self, _signum: int, _frame: Any) -> None:
        self.received = True

    def check(self) -> None:
        """Run the program's handler now if a SIGTERM came (it raises to end the batch)."""
        if self.received and self.handler is not None:
            self.received = False
            self.handler(signal.SIGTERM, None)


def _unfinished(tasks: Sequence[BatchTask], validate: Callable[[Path], dict[str, Any] | None] | None,
                records: dict[str, TaskRecord]) -> deque[BatchTask]:
    """The tasks to run; the others' ``skipped`` records go into ``records``."""
    todo: deque[BatchTask] = deque()
    for task in tasks:
        skipped = _finished(task, validate)
        if skipped is not None:
            records[task.key] = skipped
        else:
            todo.append(task)
    return todo


def _check_unique(tasks: Sequence[BatchTask]) -> None:
    keys: dict[str, BatchTask] = {}
    outputs: dict[Path, BatchTask] = {}
    for task in tasks:
        if task.key in keys:
            raise EssenceError(f"two tasks are both named {task.key!r}; rename one of their inputs.")
        resolved = Path(task.output).resolve()
        if resolved in outputs:
            raise EssenceError(f"tasks {outputs[resolved].key!r} and {task.key!r} would both write {task.output}; "
                               f"rename one of their inputs.")
        keys[task.key] = task
        outputs[resolved] = task


def _finished(task: BatchTask, validate: Callable[[Path], dict[str, Any] | None] | None,
              status: Status = "skipped") -> TaskRecord | None:
    """A record (``skipped`` unless ``status`` says) when the task's output exists, validates and was
    made with the task's options, else None (run it)."""
    if validate is None or not Path(task.output).exists():
        return None
    try:
        details = dict(validate(Path(task.output)) or {})
    except Exception:  # damaged or partial: do it again
        return None
    if _comparable(details.pop("options", None)) != _comparable(task.options or None):
        return None  # made by another job (other options, or unknown ones): done again, as asked now
    return TaskRecord(task.key, status, str(task.output), details=details)


def _comparable(options: Any) -> Any:
    """Options as recorded in a file (JSON) and as given (tuples, paths) compare alike."""
    return None if not options else json.loads(json.dumps(options, default=str, sort_keys=True))


class _NoBar:
    def update(self, _n: int) -> None: ...

    def set_postfix(self, **_kwargs: Any) -> None: ...

    def close(self) -> None: ...


def _progress_bar(total: int, done: int, description: str, enabled: bool) -> Any:
    """tqdm over finished tasks (skipped ones count at once), with its ETA."""
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=description, unit="task", dynamic_ncols=True, file=sys.stderr)


@contextlib.contextmanager
def captured_output() -> Iterator[io.StringIO]:
    """Collect what a task prints (notes, warnings) for its report row instead of the console."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield buffer
