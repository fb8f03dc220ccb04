"""Many targets trained as a batch job: one task per target, each ``essence.training.train`` on a worker that
loads the generator and CLIP once, so a batch writes the same files as ``essence train`` run once
per target with the same options."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..latents import Direction, load_direction
from ..networks import load_generator, load_guide, optional_identity
from ..training import EssenceJob, Selection, encoder_for_start, train
from .batch import BatchReport, BatchTask, captured_output, run_batch


@dataclass(frozen=True)
class TrainModels:
    """The model files every worker loads (None: looked up as usual) and the device."""

    generator: str | None = None
    guide: str | None = None
    encoder: str | None = None
    identity: str | None = None
    device: str = "auto"


class TrainWorker:
    """A batch worker that trains directions: the generator and CLIP load once, the e4e encoder and
    the identity model when the job needs them; each task is ``train`` on one target."""

    def __init__(self, config: tuple[EssenceJob, TrainModels]) -> None:
        self.job, self.models = config
        self.generator = load_generator(self.models.generator, device=self.models.device)
        self.guide = load_guide(self.models.guide, device=self.models.device)

    def run(self, task: BatchTask) -> dict[str, Any]:
        with captured_output() as log:
            encoder = encoder_for_start(self.job.init, self.models.encoder, device=self.models.device)
            trained = train(str(task.inputs), None, self.generator, self.guide, self.job, encoder=encoder,
                            choose=Selection(identity=self._identity()),
                            metadata={"batch_options": task.options})  # what a rerun compares
            if trained.note:
                print(f"note: {trained.note}")
            trained.direction.save(task.output)
        return {**direction_details(trained.direction), "train_seconds": round(trained.result.seconds, 3),
                "log": log.getvalue().strip()}

    def _identity(self) -> Any:
        """The ArcFace model candidates are ranked with (none for one candidate, or when not
        installed: the ranking then uses the CLIP proxy, with a note in the task's log)."""
        if self.job.candidates < 2:
            return None
        model, missing = optional_identity(self.models.identity, device=self.models.device)
        if missing:
            print(f"note: {missing}. Candidates are ranked with a CLIP proxy.")
        return model


def direction_details(direction: Direction) -> dict[str, Any]:
    """A direction file's report columns: its final loss terms, start and, when candidates were
    ranked, its score and recommended strength."""
    losses = direction.meta.get("losses") if isinstance(direction.meta.get("losses"), dict) else {}
    details: dict[str, Any] = {key if key != "total" else "loss": losses[key]
                               for key in ("total", "transfer", "consistency", "best_step", "steps") if key in losses}
    details["init"] = direction.meta.get("init")
    selection = direction.meta.get("selection")
    if isinstance(selection, dict):
        details["score"] = selection.get("scores", [None])[selection.get("candidate", 0)] \
            if isinstance(selection.get("scores"), list) else None
        details["candidates"] = len(selection.get("scores") or [])
    if direction.auto_strength is not None:
        details["auto_strength"] = direction.auto_strength
    return details


def train_tasks(targets: list[Path], out: Path, job: EssenceJob = EssenceJob(),
                models: TrainModels = TrainModels()) -> list[BatchTask]:
    """One task per target picture, writing ``out/<target stem>.safetensors``; its options are the
    job's and the model files' (the device changes no result), and the target's own path."""
    shared = {"job": asdict(job), "models": {k: v for k, v in asdict(models).items() if k != "device"}}
    return [BatchTask(path.stem, out / f"{path.stem}.safetensors", str(path),
                      {**shared, "target": str(Path(path).resolve())}) for path in targets]


def finished_direction(path: Path) -> dict[str, Any]:
    """A finished ``batch train`` output: a direction file Essence reads (its report columns and the
    options it was trained with), else raises."""
    direction = load_direction(path)
    return {**direction_details(direction), "options": direction.meta.get("batch_options")}


def run_train_batch(targets: list[Path], out: Path, job: EssenceJob, models: TrainModels = TrainModels(),
                    **runner: Any) -> BatchReport:
    """Train ``job`` for every target into ``out`` (finished directions of the same job are kept and
    skipped); ``runner`` options go to ``run_batch`` (workers, address, gpus_per_worker, progress, lock)."""
    return run_batch(train_tasks(targets, out, job, models), TrainWorker, (job, models), validate=finished_direction,
                     description="training", **runner)
