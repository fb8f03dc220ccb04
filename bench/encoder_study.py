"""The encoder variant measured on the tiny models: warm start, quality and training data (issue 28, §4-§5).

    python -m bench.encoder_study [--full] [--json output/encoder_study.json]
    ./run bench --only encoder_study [--study-full]

Everything runs on the CPU with the tiny fixture models (tests/fixtures: ``stylegan2_tiny64.pt``,
``e4e_tiny64.pt``, ``clip_tiny.pt``; other files with ``--generator``, ``--guide``, ``--encoder``):

1. **Two essence encoders** are trained (``essence.encoding.train_encoder``, the official settings, a
   short run): one on faces the generator draws (``generated_data``), one on pictures used as they are
   (scikit-image's sample pictures, ``picture_data``). Neither sees a held-out target: they train with
   no held-out pictures (the last update is kept), so no target is used for choosing a checkpoint.
2. **Held-out targets**: generated faces drawn after the training ones (same seed) and scikit-image
   pictures left out of the pictures encoder's training. Each target reaches every network as the same
   256 px picture: the e4e start is e4e's W+ latent of that picture (what ``init inversion`` gives,
   without the alignment, which the tiny random generator's faces cannot pass), the encoder start the
   essence encoder's raw output (``essences_of``: what ``init encoder`` gives).
3. **Data**: every start's TargetCLIP objective (the optimiser's: transfer + 0.5 consistency, before
   any step) on every held-out target.
4. **Warm start**: for the sweep's targets, every learning rate and every step count, one run of
   ``essence.train`` per step count with the starts trained together (candidates share nothing, so each
   ends where it would alone) on the official schedule (cosine ramp-down over the last 75 % of *that*
   run's steps, so an N-step run is its own run, not the first N steps of a longer one): the best
   objective each start reaches, and within the longest run, the first step at which the encoder start
   reaches the objective the e4e start reaches in the whole run.
5. **Quality**: at the first learning rate, the encoder's essence as it comes (0 steps) against the
   longest optimisation from the e4e start: objective terms, and ``evaluate_direction``'s CLIP target
   similarity on held-out source faces (identity needs ArcFace's weights: ``--identity FILE``, else absent).

It prints Markdown tables (docs/benchmarks.md, "Encoder variant") and writes the results as JSON:
``--json`` (with every run's loss curve) and a summary without the curves under
``bench/results/encoder_study/`` (a sub-folder: these are not timing records, so ``bench.tables``,
which reads ``bench/results/*.json``, does not table them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from bench import FIXTURES, REPO

RESULTS = REPO / "bench" / "results" / "encoder_study"
GOAL_STEPS = 200  # §4's goal: the encoder start reaches the e4e start's longest-run objective within this many steps
# scikit-image's sample pictures (essence.faces.scikit_image_picture): held out first, then the pictures
# encoder's training pictures. The astronaut is the only human face photo among them.
HELDOUT_PICTURES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
TRAIN_PICTURES = ("brick.png", "camera.png", "cell.png", "coins.png", "color.png", "grass.png", "gravel.png",
                  "hubble_deep_field.jpg", "ihc.png", "logo.png", "microaneurysms.png", "moon.png",
                  "motorcycle_left.png", "page.png", "phantom.png", "retina.jpg", "text.png", "clock_motion.png",
                  "chessboard_RGB.png", "horse.png")


@dataclass(frozen=True)
class StudyPlan:
    """What one run of the study measures (``DEFAULT``: ~20 minutes on a shared 2-core CPU; ``FULL``: the sweep)."""

    updates: int = 100               # encoder training updates (the official loop's max_steps + 1)
    train_faces: int = 20            # generated training faces (as many as TRAIN_PICTURES)
    generated_targets: int = 2       # held-out generated faces (Data table)
    picture_targets: int = 2         # held-out pictures (Data table)
    sweep_targets: int = 1           # per kind, the first ones: the warm-start sweep's targets
    lrs: tuple[float, ...] = (0.02, 0.2)
    step_counts: tuple[int, ...] = (200, 1000)
    sweep_encoders: tuple[str, ...] = ("generated",)  # which encoders' essences start the sweep's runs
    sources: int = 4                 # the optimiser's source faces (EssenceJob's default: seed 1, truncation 0.7)
    encoder_sources: int = 5         # the encoder's sources (train-encoder's default: seed 0)
    eval_faces: int = 4              # held-out faces evaluate_direction measures on
    seed: int = 0


DEFAULT = StudyPlan()
FULL = StudyPlan(updates=300, generated_targets=4, picture_targets=4, sweep_targets=2,
                 lrs=(0.02, 0.05, 0.1, 0.2), step_counts=(100, 200, 500, 1000), sweep_encoders=("generated", "pictures"))


# ----------------------------------------------------------------------------- the logic (unit-tested)


def best_within(losses: Sequence[float], steps: int) -> float:
    """The best objective a run has seen within its first ``steps`` steps: ``losses[i]`` is the objective
    before step i's update, so ``steps`` steps evaluate ``losses[0..steps-1]`` (as a ``TrainResult``
    keeps the best of them). Only meaningful as "a run of ``steps`` steps" when the schedule does not
    depend on the run's length; the official one does, which is why the study runs every step count."""
    if steps < 1 or steps > len(losses):
        raise ValueError(f"{steps} steps: the run has {len(losses)} losses.")
    return min(losses[:steps])


def steps_to_reach(losses: Sequence[float], objective: float) -> int | None:
    """How many updates a run made before its objective first reached ``objective`` (``losses[i]`` is
    the objective after i updates: 0 means the start already does); None when it never does."""
    for index, value in enumerate(losses):
        if value <= objective:
            return index
    return None


def fewest_steps(best_by_steps: dict[int, float], objective: float) -> int | None:
    """The smallest step count whose own run's best reached ``objective`` (None: none did)."""
    reached = [steps for steps, best in best_by_steps.items() if best <= objective]
    return min(reached) if reached else None


def warm_start_rows(runs: list[dict]) -> list[dict]:
    """One row per (target, learning rate, encoder start) from the sweep's runs (each ``{"target",
    "lr", "steps", "best": {start: objective}, "curves": {start: losses}}``): each step count's best
    for the e4e start and the encoder start, the e4e start's longest-run objective, the fewest swept
    steps after which the encoder start's own run reached it, and the first step it was reached within
    the longest run (same schedule)."""
    rows = []
    keys = sorted({(r["target"], r["lr"]) for r in runs}, key=lambda k: (k[0], k[1]))
    for target, lr in keys:
        group = sorted((r for r in runs if r["target"] == target and r["lr"] == lr), key=lambda r: r["steps"])
        longest = group[-1]
        goal = longest["best"]["e4e"]
        for start in [name for name in longest["best"] if name != "e4e"]:
            encoder_best = {r["steps"]: r["best"][start] for r in group}
            curve = longest.get("curves", {}).get(start)
            rows.append({
                "target": target, "lr": lr, "start": start, "longest": longest["steps"],
                "e4e": {r["steps"]: r["best"]["e4e"] for r in group}, "encoder": encoder_best,
                "e4e_goal": goal, "fewest_swept_steps": fewest_steps(encoder_best, goal),
                "steps_in_longest_run": steps_to_reach(curve, goal) if curve is not None else None,
            })
    return rows


def meets_goal(rows: list[dict], goal_steps: int = GOAL_STEPS) -> bool:
    """§4's rule for making the warm start the default: on every target and learning rate measured, the
    encoder start's own run of at most ``goal_steps`` steps reached the e4e start's longest-run objective."""
    return bool(rows) and all(r["fewest_swept_steps"] is not None and r["fewest_swept_steps"] <= goal_steps
                              for r in rows)


def _f(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def markdown(study: dict) -> str:
    """The study's tables (Data, Warm start, Quality) as Markdown."""
    out = []
    starts = study["data_starts"]
    out.append("**Data: the objective before any step, per start** (lower is better)\n")
    out.append("| target | kind | " + " | ".join(starts) + " |")
    out.append("| --- | --- |" + " ---: |" * len(starts))
    for row in study["data"]:
        out.append(f"| {row['target']} | {row['kind']} | " + " | ".join(_f(row["objective"][s]) for s in starts) + " |")
    for kind in ("generated", "picture"):
        rows = [r for r in study["data"] if r["kind"] == kind]
        if rows:
            means = [sum(r["objective"][s] for r in rows) / len(rows) for s in starts]
            out.append(f"| mean of {len(rows)} | {kind} | " + " | ".join(_f(m) for m in means) + " |")
    out.append("")
    rows = study["warm_start"]
    if rows:
        counts = sorted(rows[0]["e4e"])
        out.append("**Warm start: best objective of a run of N steps, e4e start / encoder start**, and the steps "
                   "the encoder start needed to reach the e4e start's longest-run objective\n")
        out.append("| target | lr | encoder | " + " | ".join(f"{n} steps" for n in counts)
                   + " | fewest swept steps | first step, in the longest run |")
        out.append("| --- | ---: | --- |" + " ---: |" * len(counts) + " ---: | ---: |")
        for r in rows:
            cells = [f"{_f(r['e4e'][n])} / {_f(r['encoder'][n])}" for n in counts]
            fewest = r["fewest_swept_steps"]
            first = r["steps_in_longest_run"]
            out.append(f"| {r['target']} | {r['lr']:g} | {r['start']} | " + " | ".join(cells)
                       + f" | {_reach(fewest, r['longest'])} | {_reach(first, r['longest'])} |")
        verdict = "yes" if study["meets_goal"] else "no"
        out.append(f"\nGoal (encoder start within {GOAL_STEPS} steps on every target and rate): **{verdict}**.\n")
    quality = study["quality"]
    if quality:
        out.append(f"**Quality: the encoder's essence (0 steps) against {quality[0]['steps']} steps from the e4e "
                   f"start** (lr {quality[0]['lr']:g}; objective terms lower is better; CLIP target similarity "
                   f"x100 on {study['plan']['eval_faces']} held-out faces at strength 1, higher is better)\n")
        out.append("| target | direction | objective | transfer | consistency | CLIP target similarity | identity |")
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for q in quality:
            for name, m in q["directions"].items():
                identity = _f(m["identity"], 1) if m["identity"] is not None else "n/a"
                out.append(f"| {q['target']} | {name} | {_f(m['objective'])} | {_f(m['transfer'])} | "
                           f"{_f(m['consistency'])} | {_f(m['target_similarity'], 1)} | {identity} |")
        out.append("")
    return "\n".join(out)


def _reach(steps: int | None, longest: int) -> str:
    return f"not within {longest}" if steps is None else str(steps)


# ----------------------------------------------------------------------------- the measurements


@dataclass
class _Models:
    generator: Any
    guide: Any
    e4e: Any
    identity: Any = None
    names: dict[str, str] = field(default_factory=dict)


def _models(args: argparse.Namespace) -> _Models:
    import essence

    files = {"generator": args.generator or FIXTURES / "stylegan2_tiny64.pt",
             "guide": args.guide or FIXTURES / "clip_tiny.pt", "encoder": args.encoder or FIXTURES / "e4e_tiny64.pt"}
    identity = essence.load_identity(args.identity, device="cpu") if args.identity else None
    return _Models(essence.load_generator(files["generator"], device="cpu"),
                   essence.load_guide(files["guide"], device="cpu"),
                   essence.load_encoder(files["encoder"], device="cpu"), identity,
                   {k: Path(v).name for k, v in files.items()})


def _train_encoders(models: _Models, plan: StudyPlan, log) -> tuple[dict[str, Any], dict, dict[str, torch.Tensor]]:
    """The two essence encoders (trained with nothing held out), what they were trained on and the
    held-out targets' pixels by name (generated ones first)."""
    from essence.encoding import EncoderData, EncoderSettings, generated_data, picture_data, train_encoder
    from essence.faces import scikit_image_picture
    from essence.latents import sample_latents

    generated = generated_data(models.generator, plan.train_faces, plan.generated_targets, seed=plan.seed)
    empty = generated.heldout[:0]
    pictures = picture_data([scikit_image_picture(n) for n in TRAIN_PICTURES],
                            [scikit_image_picture(n) for n in HELDOUT_PICTURES[:plan.picture_targets]],
                            names=TRAIN_PICTURES)
    datasets = {"generated": EncoderData(generated.train, empty, "generated", generated.detail),
                "pictures": EncoderData(pictures.train, empty, "pictures", pictures.detail)}
    targets = {f"gen{plan.train_faces + i}": generated.heldout[i] for i in range(plan.generated_targets)}
    targets.update({Path(n).stem: pictures.heldout[i] for i, n in enumerate(HELDOUT_PICTURES[:plan.picture_targets])})
    sources = sample_latents(models.generator, plan.encoder_sources, seed=plan.seed).latents
    settings = EncoderSettings(max_steps=plan.updates - 1, validate_every=10 ** 9, checkpoint_every=10 ** 9,
                               seed=plan.seed)
    encoders, record = {}, {}
    for name, data in datasets.items():
        began = time.perf_counter()
        training = train_encoder(models.e4e, models.generator, models.guide, data, sources, settings)
        encoders[name] = training.encoder.eval()
        record[name] = {"pictures": int(data.train.shape[0]), "updates": len(training.losses),
                        "seconds": round(time.perf_counter() - began, 1),
                        "first_loss": training.losses[0][0], "last_loss": training.losses[-1][0]}
        log(f"encoder '{name}': {record[name]['updates']} updates on {record[name]['pictures']} pictures in "
            f"{record[name]['seconds']} s; loss {record[name]['first_loss']:.4f} -> {record[name]['last_loss']:.4f}")
    return encoders, record, targets


def _starts(models: _Models, encoders: dict[str, Any], pixels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every start of one target: ``e4e`` (e4e's W+ latent of the picture) and each encoder's essence."""
    from essence.encoding import as_inputs, essences_of

    with torch.no_grad():
        starts = {"e4e": models.e4e.encode(as_inputs(pixels[None])).float().cpu()}
    for name, model in encoders.items():
        starts[name] = essences_of(model, pixels[None])
    return starts


def _target(pixels: torch.Tensor):
    from PIL import Image

    from essence.training import TrainingTarget

    return TrainingTarget.read(Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy()))


def _run(models: _Models, target, sources, starts: dict[str, torch.Tensor], lr: float, steps: int, seed: int):
    """``essence.train`` from every start together (one candidate each, none chosen): the recorded results by start."""
    from essence.training import EssenceJob, TrainSettings, train

    job = EssenceJob(settings=TrainSettings(steps=steps, lr=lr, seed=seed, loop="fast"))
    trained = train(target, sources, models.generator, models.guide, job, start=[(s, n) for n, s in starts.items()],
                    choose=None)
    return dict(zip(starts, trained.results))


def _measured(models: _Models, direction, target, faces) -> dict:
    from essence.training import evaluate_direction

    metrics = evaluate_direction(direction, models.generator, models.guide, target, faces, strength=1.0,
                                 identity=models.identity)
    return {"target_similarity": metrics.mean("target_similarity"), "identity": metrics.mean("identity"),
            "notes": metrics.notes}


def run_study(models: _Models, plan: StudyPlan, log=print) -> dict:
    from essence.latents import sample_latents
    from essence.training import EssenceJob

    began = time.perf_counter()
    encoders, encoder_record, targets = _train_encoders(models, plan, log)
    sources = EssenceJob(sample=plan.sources).source_faces(models.generator).latents
    faces = sample_latents(models.generator, plan.eval_faces, seed=plan.seed + 100, truncation=0.7).latents
    study: dict[str, Any] = {"plan": plan.__dict__, "models": models.names, "encoders": encoder_record,
                             "data_starts": ["e4e", *encoders], "data": [], "runs": [], "quality": []}
    sweep = [f"gen{plan.train_faces + i}" for i in range(min(plan.sweep_targets, plan.generated_targets))]
    sweep += [Path(n).stem for n in HELDOUT_PICTURES[:min(plan.sweep_targets, plan.picture_targets)]]
    for name, pixels in targets.items():
        target, starts = _target(pixels), _starts(models, encoders, pixels)
        first = _run(models, target, sources, starts, plan.lrs[0], 1, plan.seed)
        study["data"].append({"target": name, "kind": "generated" if name.startswith("gen") else "picture",
                              "objective": {s: r.losses[0] for s, r in first.items()},
                              "norm": {s: float(t.norm()) for s, t in starts.items()}})
        log(f"{name}: objective before any step " + ", ".join(f"{s} {r.losses[0]:.4f}" for s, r in first.items()))
        if name not in sweep:
            continue
        swept = {s: starts[s] for s in ("e4e", *plan.sweep_encoders)}
        for lr in plan.lrs:
            for steps in plan.step_counts:
                t0 = time.perf_counter()
                results = _run(models, target, sources, swept, lr, steps, plan.seed)
                run = {"target": name, "lr": lr, "steps": steps, "seconds": round(time.perf_counter() - t0, 1),
                       "best": {s: r.best_loss for s, r in results.items()},
                       "best_step": {s: r.best_step for s, r in results.items()},
                       "curves": {s: [round(v, 6) for v in r.losses] for s, r in results.items()}}
                study["runs"].append(run)
                log(f"{name} lr {lr:g} {steps} steps ({run['seconds']} s): best "
                    + ", ".join(f"{s} {b:.4f}" for s, b in run["best"].items()))
                if lr == plan.lrs[0] and steps == max(plan.step_counts):
                    study["quality"].append(_quality(models, target, faces, first, results, name, lr, steps))
    study["warm_start"] = warm_start_rows(study["runs"])
    study["meets_goal"] = meets_goal(study["warm_start"])
    study["seconds"] = round(time.perf_counter() - began, 1)
    return study


def _quality(models: _Models, target, faces, first: dict, results: dict, name: str, lr: float, steps: int) -> dict:
    directions = {f"{s} essence (0 steps)": first[s] for s in first if s != "e4e"}
    directions[f"e4e start, {steps} steps"] = results["e4e"]
    out = {}
    for label, result in directions.items():
        terms = result.terms()
        out[label] = {"objective": terms["total"], "transfer": terms["transfer"], "consistency": terms["consistency"],
                      **_measured(models, result.direction, target, faces)}
    return {"target": name, "lr": lr, "steps": steps, "directions": out}


# ----------------------------------------------------------------------------- the command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.encoder_study",
                                description="The encoder variant on the tiny models: warm start, quality, data.")
    add_options(p)
    p.add_argument("--json", type=Path, default=Path("output/encoder_study.json"),
                   help="the whole study, every run's loss curve included (default output/encoder_study.json)")
    return p


def add_options(p: argparse.ArgumentParser, prefix: str = "") -> None:
    """The study's own options; ``prefix`` ("study-") for ``python -m bench``, whose --generator etc. and
    --json mean other things there (the study then uses the tiny fixtures and output/encoder_study.json)."""
    p.add_argument(f"--{prefix}full", action="store_true",
                   help="the encoder study's full sweep (lr 0.02 0.05 0.1 0.2, 100 200 500 1000 steps, 2+2 sweep "
                        "targets, both encoders as starts, 300 encoder updates): hours on a 2-core CPU")
    p.add_argument(f"--{prefix}identity", type=Path, default=None,
                   help="encoder study: ArcFace model_ir_se50.pth for the identity kept (default: not measured)")
    p.add_argument(f"--{prefix}results", type=Path, default=RESULTS,
                   help="encoder study: folder for its summary JSON (default bench/results/encoder_study)")
    if not prefix:
        p.add_argument("--generator", type=Path, default=None, help="default: tests/fixtures/stylegan2_tiny64.pt")
        p.add_argument("--guide", type=Path, default=None, help="default: tests/fixtures/clip_tiny.pt")
        p.add_argument("--encoder", type=Path, default=None, help="e4e file (default: tests/fixtures/e4e_tiny64.pt)")
        p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")


def save(study: dict, json_path: Path | None, results: Path | None) -> list[Path]:
    """Write the study (``json_path``: all of it; ``results``: without the loss curves, one file per run)."""
    from essence.storage import atomic_write

    written = []
    summary = {**study, "runs": [{k: v for k, v in r.items() if k != "curves"} for r in study["runs"]],
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
               "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    for path, data in ((json_path, {**summary, "runs": study["runs"]}),
                       (results / f"cpu_encoder-study_{time.strftime('%Y-%m-%d_%H%M%S')}.json" if results else None,
                        summary)):
        if path is None:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        written.append(path)
    return written


def study_main(full: bool = False, identity: Path | None = None, results: Path | None = RESULTS,
               json_path: Path | None = Path("output/encoder_study.json"), generator: Path | None = None,
               guide: Path | None = None, encoder: Path | None = None) -> int:
    """Run the study (``full``: the whole sweep), print its tables and write its JSON; 0."""
    plan = FULL if full else DEFAULT
    models = _models(argparse.Namespace(generator=generator, guide=guide, encoder=encoder, identity=identity))
    print(f"Encoder study ({'full' if full else 'default'} plan) on {', '.join(models.names.values())}", flush=True)
    study = run_study(models, plan, log=lambda line: print(line, flush=True))
    print(markdown(study))
    for path in save(study, json_path, results):
        print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    return study_main(args.full, args.identity, args.results, args.json, args.generator, args.guide, args.encoder)


if __name__ == "__main__":
    sys.exit(main())
