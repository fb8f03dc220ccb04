"""The demo: the whole idea, end to end, on pictures that ship with scikit-image.

photo (scikit-image's public-domain astronaut, or ``--photo``) -> align + e4e inversion -> W+ latent;
target (scikit-image's Chelsea the cat, or ``--target``) -> TargetCLIP training over the photo's
latent plus three sampled faces -> the essence direction -> applied to the photo at several strengths
-> rendered -> pasted back into the photo -> one grid PNG, the direction file and a short report.

On a GPU the training uses the paper's settings (1000 steps in the exact "fast" mode). On a CPU that
would take hours, so the default there is a quick, approximate run (150 steps in the "fast+256px"
mode: CLIP fed the 256 px intermediate image); the report says which was used.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, ImageDraw

from ..errors import EssenceError
from ..faces import load_image, load_landmarker, model_to_pil, paste_back, scikit_image_picture
from ..latents import LatentSet, apply_direction, invert, sample_latents
from ..networks import load_encoder, load_generator, load_guide, render
from ..runtime import resolve_device
from ..storage import atomic_write, check_output, check_outputs, weight_inputs
from ..training import EssenceJob, TrainingTarget, TrainMode, TrainSettings, train, train_mode

DEFAULT_STRENGTHS = (0.5, 0.8, 1.2)
PANEL = 256  # height of each picture in the grid


@dataclass
class DemoOptions:
    out_dir: Path
    photo: Path | None = None  # default: scikit-image's astronaut
    targets: list[Path] = field(default_factory=list)  # default: scikit-image's Chelsea the cat
    steps: int | None = None  # default: 1000 on CUDA, 150 elsewhere
    mode: str | None = None  # a training mode; default: "fast" on CUDA, "fast+256px" elsewhere
    lr: float = TrainSettings.lr
    weight_decay: float = TrainSettings.weight_decay
    strengths: tuple[float, ...] = DEFAULT_STRENGTHS
    seed: int = 0
    device: str = "auto"
    generator: Path | None = None
    encoder: Path | None = None
    guide: Path | None = None
    landmarks: Path | None = None


@dataclass
class DemoReport:
    photo: str
    targets: list[str]
    device: str
    steps: int
    mode: str
    render_size: int | None
    init: str
    best_loss: float
    transfer: float
    consistency: float
    train_seconds: float
    total_seconds: float
    peak_memory_mb: float
    outputs: dict[str, str]

    def text(self) -> str:
        lines = ["Essence demo report", "", f"photo:    {self.photo}", f"target:   {', '.join(self.targets)}",
                 f"device:   {self.device}", f"training: {self.steps} steps, {self.mode} mode, "
                 f"{'full-size rendering' if self.render_size is None else f'CLIP on the {self.render_size} px intermediate image (approximate)'}",
                 f"start:    {self.init}",
                 f"losses:   total {self.best_loss:.4f} (transfer {self.transfer:.4f}, consistency {self.consistency:.4f})",
                 f"time:     training {self.train_seconds:.1f} s, whole demo {self.total_seconds:.1f} s",
                 f"memory:   peak {self.peak_memory_mb:.0f} MB ({'GPU allocated' if self.device.startswith('cuda') else 'process RSS'})",
                 "", "outputs:"]
        lines += [f"  {name}: {path}" for name, path in self.outputs.items()]
        return "\n".join(lines) + "\n"


def _default_picture(name: str) -> Path:
    """scikit-image's sample picture ``name``, the demo's default; without it the demo still runs on
    pictures of the user's own."""
    try:
        return scikit_image_picture(name)
    except EssenceError as exc:
        raise EssenceError(f"{exc} The demo takes your own pictures with --photo and --target.") from None


def _say(message: str) -> None:
    print(message, flush=True)


def run_demo(options: DemoOptions, make_progress: Callable[[int], Callable] | None = None) -> DemoReport:
    """Run the whole pipeline and write ``grid.png``, ``<target>.safetensors`` and ``report.txt``.

    ``make_progress(total_steps)`` returns the training progress callback (the CLI's progress bar).
    """
    start = time.perf_counter()
    device = resolve_device(options.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    photo_path = options.photo or _default_picture("astronaut.png")
    target_paths = options.targets or [_default_picture("chelsea.png")]
    out = options.out_dir
    models = {"generator": options.generator, "encoder": options.encoder, "guide": options.guide,
              "landmarks": options.landmarks}
    inputs = [photo_path, *target_paths, *models.values(), *weight_inputs(models)]
    check_output(out, inputs, folder=True)
    check_outputs([out / name for name in ("grid.png", f"{target_paths[0].stem}.safetensors", "report.txt",
                                           "report.json")], inputs)
    steps = options.steps or (1000 if device.type == "cuda" else 150)
    mode = train_mode(options.mode or ("fast" if device.type == "cuda" else "fast+256px"))

    _say(f"[1/5] Loading models on {device} ...")
    generator = load_generator(options.generator, device=device)
    encoder = load_encoder(options.encoder, device=device)
    guide = load_guide(options.guide, device=device)
    landmarker = load_landmarker(options.landmarks)

    _say(f"[2/5] Aligning and inverting {photo_path.name} ...")
    photo = load_image(photo_path)  # full resolution: the edits are pasted back into it
    inverted = invert([photo_path], encoder, landmarks=landmarker)
    face = inverted.faces[0]
    others = sample_latents(generator, 3, seed=options.seed + 1, truncation=0.7)
    sources = LatentSet(torch.cat([inverted.latents, others.latents]), inverted.sources + others.sources)

    settings = _demo_settings(mode, generator.size, device, steps=steps, seed=options.seed, lr=options.lr,
                              weight_decay=options.weight_decay)
    render_size = settings.render_size
    _say(f"[3/5] Training the essence of {', '.join(p.name for p in target_paths)}: {steps} steps, "
         f"{mode.name} mode" + ("" if render_size is None else f", approximate ({render_size} px CLIP path)"))
    target = TrainingTarget.read(target_paths)
    trained = train(
        target, sources, generator, guide, EssenceJob(settings, mode=mode.name, init="auto"),
        encoder=encoder, landmarks=landmarker, progress=make_progress(steps) if make_progress else None,
        on_retry=lambda chunk: _say(f"      out of device memory: starting again with {chunk} face(s) per pass "
                                    f"(the same result, less memory)"))
    result = trained.result
    _say(f"      started from the {trained.start}")

    _say(f"[4/5] Applying it at strengths {', '.join(f'{s:g}' for s in options.strengths)} and pasting back ...")
    strengths = (0.0, *options.strengths)
    with torch.no_grad():
        edits = torch.cat([apply_direction(inverted.latents, result.direction, s) for s in strengths])
    renders = model_to_pil(render(generator, edits, what="edited faces"))
    pasted = [paste_back(photo, image, face.transform) for image in renders]

    _say("[5/5] Writing the results ...")
    direction_path = trained.direction.save(out / f"{target_paths[0].stem}.safetensors")
    grid_path = _write_grid(out / "grid.png", photo, target.shown, pasted, strengths)
    terms = result.direction.meta["losses"]
    report = DemoReport(
        photo=str(photo_path), targets=[str(p) for p in target_paths], device=str(device), steps=steps,
        mode=mode.name, render_size=render_size, init=trained.start, best_loss=terms["total"], transfer=terms["transfer"],
        consistency=terms["consistency"], train_seconds=result.seconds,
        total_seconds=time.perf_counter() - start, peak_memory_mb=_peak_memory_mb(device),
        outputs={"grid": str(grid_path), "direction": str(direction_path), "report": str(out / "report.txt"),
                 "report_json": str(out / "report.json")})
    with atomic_write(out / "report.txt") as tmp:
        tmp.write_text(report.text(), encoding="utf-8")
    with atomic_write(out / "report.json") as tmp:
        tmp.write_text(json.dumps(asdict(report), indent=1), encoding="utf-8")
    return report


def _demo_settings(mode: TrainMode, generator_size: int, device: torch.device, **fields) -> TrainSettings:
    """The mode's settings, fitted to this generator and device.

    A generator no larger than a ``+256px`` mode's size has no larger layers to skip: CLIP then sees
    the full image, as in the exact mode. On a CPU, full-size rendering one source at a time is both
    faster and 3.6x smaller (measured with ``./run bench``), and the result is the same.
    """
    settings = mode.settings(**fields)
    if settings.render_size is not None and settings.render_size >= generator_size:
        settings = replace(settings, render_size=None)
    if device.type != "cuda" and settings.render_size is None:
        settings = replace(settings, chunk_size=1)
    return settings


def _fit(image: Image.Image, height: int = PANEL) -> Image.Image:
    width = max(1, round(image.width * height / image.height))
    return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


def _write_grid(path: Path, photo: Image.Image, target: Image.Image, pasted: list[Image.Image],
                strengths: tuple[float, ...]) -> Path:
    """One row: target | photo | reconstruction (strength 0) | edits at each strength, with labels."""
    panels = [("target", _fit(target)), ("photo", _fit(photo))]
    panels += [("e4e reconstruction" if s == 0 else f"strength {s:g}", _fit(img)) for s, img in zip(strengths, pasted)]
    label_h, gap = 20, 4
    width = sum(p.width for _, p in panels) + gap * (len(panels) + 1)
    canvas = Image.new("RGB", (width, PANEL + label_h + 2 * gap), "white")
    draw = ImageDraw.Draw(canvas)
    x = gap
    for label, panel in panels:
        canvas.paste(panel, (x, gap))
        draw.text((x + 4, PANEL + gap + 3), label, fill="black")
        x += panel.width + gap
    with atomic_write(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
