"""Many photos edited with many directions as a batch job: one task per photo x direction x strength,
each ``apply_to_photo`` on a worker that loads the generator, e4e and the landmark model once, so a
batch writes the same pictures as ``essence apply --photo`` run once per pair with the same options."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..errors import EssenceError
from ..faces import MASKS, load_landmarker
from ..latents import LAYER_PRESETS, Direction, apply_to_photo, load_direction
from ..networks import load_encoder, load_generator
from ..storage import atomic_write, file_sha256
from .batch import BatchReport, BatchTask, run_batch

OPTIONS_KEY = "essence-options"  # the PNG text chunk that records the options an edited photo was made with


def _finite(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@dataclass(frozen=True)
class ApplyJob:
    """How every photo is edited (``apply_to_photo``'s settings). ``strengths`` are kept as text, as
    written (numbers or ``auto``: each direction's recommended strength), because they name the
    pictures (``<photo>_s<strength>.png`` when there are several) and are recorded in them."""

    strengths: tuple[str, ...] = ("1.0",)
    layers: str = "all"
    largest_face: bool = False
    mask: str = "face"

    def __post_init__(self) -> None:
        object.__setattr__(self, "strengths", tuple(str(token) for token in self.strengths))
        if not self.strengths:
            raise EssenceError("a batch needs at least one strength (a number or 'auto').")
        for token in self.strengths:
            if token.lower() != "auto" and not _finite(token):
                raise EssenceError(f"strength {token!r} is neither a finite number nor 'auto'.")
        if self.layers not in LAYER_PRESETS:
            raise EssenceError(f"unknown layers {self.layers!r}; choose one of {', '.join(LAYER_PRESETS)}.")
        if self.mask not in MASKS:
            raise EssenceError(f"unknown paste mask {self.mask!r}; choose one of {', '.join(MASKS)}.")


@dataclass(frozen=True)
class ApplyModels:
    """The model files every worker loads once (None: looked up as usual) and the device."""

    generator: str | None = None
    encoder: str | None = None
    landmarks: str | None = None
    device: str = "auto"


class ApplyWorker:
    """A batch worker that edits photos: the generator, e4e and the landmark model load once, each
    direction on first use; ``invert``'s cache spares a worker inverting a photo again for the next
    direction."""

    def __init__(self, config: tuple[ApplyJob, ApplyModels]) -> None:
        self.job, self.models = config
        self.generator = load_generator(self.models.generator, device=self.models.device)
        self.encoder = load_encoder(self.models.encoder, device=self.models.device)
        self.landmarks = load_landmarker(self.models.landmarks)
        self.directions: dict[str, Direction] = {}

    def run(self, task: BatchTask) -> dict[str, Any]:
        photo, direction_file, token = task.inputs
        if direction_file not in self.directions:
            self.directions[direction_file] = load_direction(direction_file)
        direction = self.directions[direction_file]
        strength, note = direction.resolve_strength(token if token.lower() == "auto" else float(token))
        image = apply_to_photo(photo, direction, self.generator, self.encoder, strength, landmarks=self.landmarks,
                               layers=self.job.layers, all_faces=not self.job.largest_face, mask=self.job.mask)
        record = PngInfo()
        record.add_text(OPTIONS_KEY, json.dumps(task.options, sort_keys=True))  # what a rerun compares
        with atomic_write(task.output) as tmp:
            image.save(tmp, format="PNG", pnginfo=record)
        return {"photo": photo, "direction": direction_file, "strength": strength, "log": note or ""}


def apply_tasks(photos: list[Path], directions: list[Path], out: Path, job: ApplyJob = ApplyJob(),
                models: ApplyModels = ApplyModels()) -> list[BatchTask]:
    """One task per direction x photo x strength, writing ``out/<direction stem>/<photo stem>.png``
    (``<photo stem>_s<strength>.png`` with several strengths). Its options are the job's, the model
    files' (the device changes no result), the photo's path and the direction's content: a direction
    file replaced under the same name is another job."""
    shared = {"layers": job.layers, "largest_face": job.largest_face, "mask": job.mask,
              "models": {role: getattr(models, role) for role in ("generator", "encoder", "landmarks")}}
    tasks = []
    for direction in directions:
        content = file_sha256(direction)
        for photo in photos:
            for token in job.strengths:
                stem = photo.stem if len(job.strengths) == 1 else f"{photo.stem}_s{token}"
                options = {**shared, "photo": str(Path(photo).resolve()), "direction": content, "strength": token}
                tasks.append(BatchTask(f"{direction.stem}/{stem}", out / direction.stem / f"{stem}.png",
                                       (str(photo), str(direction), token), options))
    return tasks


def finished_picture(path: Path) -> dict[str, Any]:
    """A finished ``batch apply`` output: a picture that decodes completely (its size and the options
    it was made with), else raises."""
    with Image.open(path) as image:
        image.load()
        recorded = getattr(image, "text", {}).get(OPTIONS_KEY)
        return {"size": f"{image.width}x{image.height}", "options": json.loads(recorded) if recorded else None}


def run_apply_batch(photos: list[Path], directions: list[Path], out: Path, job: ApplyJob = ApplyJob(),
                    models: ApplyModels = ApplyModels(), **runner: Any) -> BatchReport:
    """Edit every photo with every direction at every strength into ``out`` (finished pictures of the
    same job are kept and skipped); ``runner`` options go to ``run_batch`` (workers, address,
    gpus_per_worker, progress, lock)."""
    return run_batch(apply_tasks(photos, directions, out, job, models), ApplyWorker, (job, models),
                     validate=finished_picture, description="applying", **runner)
