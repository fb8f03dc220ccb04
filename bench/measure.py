"""``python -m bench``: speed and memory of the full-size models on whatever device is here.

Models are built at full size with random weights (FFHQ config-f generator, IR-SE-50 e4e encoder,
CLIP ViT-B/32 image tower): timing needs the shapes, not the trained values, so the benchmark runs
without any weight file. Three sections:

  generator   synthesis at 1024 px, forward and forward+backward, per batch size and dtype
  encoder     e4e encoding of aligned 256 px faces (the network only; alignment is dlib on the CPU)
  train       TargetCLIP seconds per step with 4 sources, per training mode
  candidates  K directions trained together (4 sources each): seconds per step and per direction
  encode      the encoder variant: one target's essence in one pass (bench/encoder_variant.py)
  encoder_train  the encoder variant's training: seconds per update, 5 sources at 1024 px, peak memory

Each measurement runs in its own subprocess, so "peak MB" is that run's own high-water mark: on the
CPU the resident memory added after the models were built, on CUDA ``torch.cuda.max_memory_allocated``.
Times are medians after one warm-up.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import torch

from essence.training import TRAIN_MODES as LIBRARY_MODES

from .encoder_variant import SMALL_CARD_GIB, bench_encode, bench_encoder_train, format_encoder_row
from .records import device_label

TRAIN_MODES = {  # name: TrainSettings overrides; the library's training modes, then memory options of "fast"
    **{name: dict(mode.overrides) for name, mode in LIBRARY_MODES.items()},
    "fast+chunk1": {"chunk_size": 1},
    "fast+chunk2": {"chunk_size": 2},
    "fast+recompute512": {"recompute_from": 512},
}
DEFAULT_BATCHES = {"generator": {"cpu": [1, 4], "cuda": [1, 4, 16]}, "encoder": {"cpu": [1, 8], "cuda": [1, 32, 128]}}


# ----------------------------------------------------------------------------- measurements


def _peak_tracker(device: torch.device) -> Callable[[], float]:
    """Start measuring; the returned function gives the peak MB added since."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        return lambda: (torch.cuda.max_memory_allocated(device) - base) / 2**20
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base


class StepClock:
    """A training ``progress`` callback recording when each reported step ended (after the device has
    finished its work), from the moment the clock is made: how the benchmarks time training."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.started = time.perf_counter()
        self.stamps: list[float] = []

    def __call__(self, _progress: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stamps.append(time.perf_counter())

    def intervals(self) -> list[float]:
        """Seconds between consecutive reports: every reported step after the first (a warm-up)."""
        return [b - a for a, b in zip(self.stamps, self.stamps[1:])]


def _timed(step: Callable[[], None], device: torch.device, repeats: int) -> list[float]:
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def _autocast(device: torch.device, dtype: str):
    from essence.training import autocast_for

    return autocast_for(device, {"float32": None, "bfloat16": "bf16", "float16": "fp16"}[dtype])


def bench_generator(device: torch.device, batch: int, dtype: str, backward: bool, repeats: int,
                    upsample: str = "auto") -> dict:
    from essence.networks import GeneratorConfig, build_generator

    torch.manual_seed(0)
    model = build_generator(GeneratorConfig.ffhq_config_f(), device=device).requires_grad_(False)
    model.set_upsample_method(upsample)
    wplus = torch.randn(batch, model.n_latent, model.style_dim, device=device) * 0.5
    peak = _peak_tracker(device)

    def step() -> None:
        latent = wplus.clone().requires_grad_(backward)
        with _autocast(device, dtype), torch.set_grad_enabled(backward):
            image = model.synthesize(latent)
        if backward:
            image.float().square().mean().backward()

    times = _timed(step, device, repeats)
    seconds = statistics.median(times)
    return {"pass": "forward+backward" if backward else "forward", "batch": batch, "dtype": dtype,
            "seconds": seconds, "images_per_second": batch / seconds, "peak_mb": peak()}


def bench_encoder(device: torch.device, batch: int, dtype: str, repeats: int) -> dict:
    from essence.networks import EncoderConfig, build_encoder

    torch.manual_seed(0)
    model = build_encoder(EncoderConfig.ir_se50(), device=device).requires_grad_(False)
    faces = torch.rand(batch, 3, 256, 256, device=device) * 2 - 1
    peak = _peak_tracker(device)

    def step() -> None:
        with _autocast(device, dtype), torch.no_grad():
            model.encode(faces, batch_size=batch)

    seconds = statistics.median(_timed(step, device, repeats))
    return {"batch": batch, "dtype": dtype, "seconds": seconds,
            "images_per_second": batch / seconds, "peak_mb": peak()}


def training_problem(device: torch.device, upsample: str = "auto") -> dict:
    """Full-size random generator and CLIP ViT-B/32, 4 sources, a start and a target: the arguments
    ``train`` needs."""
    from essence.networks import ClipGuide, GeneratorConfig, build_generator, import_clip_model

    torch.manual_seed(0)
    generator = build_generator(GeneratorConfig.ffhq_config_f(), device=device).requires_grad_(False)
    generator.set_upsample_method(upsample)
    with torch.device(device):
        visual = import_clip_model().VisionTransformer(input_resolution=224, patch_size=32, width=768, layers=12,
                                                       heads=12, output_dim=512)
    guide = ClipGuide(visual.eval(), name="ViT-B/32 (random)").requires_grad_(False).to(device)  # its buffers too
    return problem_for(generator, guide, torch.nn.functional.normalize(torch.randn(1, 512), dim=-1))


def problem_for(generator, guide, target_embedding: torch.Tensor) -> dict:
    """``train``'s arguments for given models: a target known by its embedding, 4 sources (seed 1) and a
    start (seed 2)."""
    from essence.training import TrainingTarget

    return {"target": TrainingTarget.from_embedding(target_embedding),
            "sources": generator.sample_wplus(4, seed=1, truncation=0.7), "generator": generator,
            "guide": guide, "start": generator.sample_wplus(1, seed=2, truncation=0.7)}


def files_problem(device: torch.device, generator_file: str, guide_file: str) -> dict:
    """``problem_for`` with models loaded from files (the tiny fixtures, for quick checks) and a random
    target embedding (seed 0)."""
    from essence import load_generator, load_guide

    generator = load_generator(generator_file, device=device, cache=False).requires_grad_(False)
    guide = load_guide(guide_file, device=device, cache=False).requires_grad_(False)
    generator_seed = torch.Generator().manual_seed(0)
    target = torch.nn.functional.normalize(torch.randn(1, guide.embed_dim, generator=generator_seed), dim=-1)
    return problem_for(generator, guide, target)


def job_problem(device: torch.device, job: dict, upsample: str = "auto") -> dict:
    """A job's training problem: the model files it names (quick checks), else full size, random weights."""
    if job.get("generator"):
        problem = files_problem(device, job["generator"], job["guide"])
        problem["generator"].set_upsample_method(upsample)
        return problem
    return training_problem(device, upsample)


def bench_train(device: torch.device, mode: str, steps: int, upsample: str = "auto", files: dict | None = None) -> dict:
    from essence.training import TrainSettings

    problem = job_problem(device, files or {}, upsample)
    init = problem.pop("start")
    per_step, peak_mb = _timed_training(device, problem, [init], TrainSettings(steps=steps, **TRAIN_MODES[mode]))
    seconds = statistics.median(per_step)
    return {"mode": mode, "steps_timed": len(per_step), "seconds_per_step": seconds,
            "projected_1000_steps_s": seconds * 1000, "peak_mb": peak_mb, "size": problem["generator"].size}


def bench_candidates(device: torch.device, candidates: int, mode: str, steps: int, chunk: int | None = None,
                     files: dict | None = None) -> dict:
    """K candidates from K random starts trained in one batched optimisation, timed per step like
    ``bench_train``; per direction = per step / K, to set against one ``train`` run (K = 1)."""
    from essence.training import TrainSettings, candidate_starts

    problem = job_problem(device, files or {})
    problem.pop("start")  # the problem's start (seed 2) is the first of the candidates' seeded starts
    inits = [start for start, _ in candidate_starts(candidates, problem["generator"], seed=2)]
    overrides = {**TRAIN_MODES[mode], **({"chunk_size": chunk} if chunk else {})}
    per_step, peak_mb = _timed_training(device, problem, inits, TrainSettings(steps=steps, **overrides))
    seconds = statistics.median(per_step)
    return {"mode": mode, "candidates": candidates, "chunk": chunk, "steps_timed": len(per_step),
            "seconds_per_step": seconds, "seconds_per_direction_step": seconds / candidates, "peak_mb": peak_mb,
            "size": problem["generator"].size}


def _timed_training(device: torch.device, problem: dict, inits: list[torch.Tensor],
                    settings) -> tuple[list[float], float]:
    """Train ``inits`` together on ``problem`` (``train``'s arguments but the starts);
    the seconds of every step after the first (a warm-up) and the peak MB."""
    from essence.training import EssenceJob, train

    peak = _peak_tracker(device)
    clock = StepClock(device)
    train(**problem, job=EssenceJob(replace(settings, progress_every=1)), start=inits, choose=None, fit_memory=False,
          progress=clock)
    return clock.intervals(), peak()


def bench_compile(device: torch.device, job: dict) -> dict:
    """``bench.compiled.compile_step`` on the full-size random models, or on the files the job names."""
    from essence.training import TrainSettings

    from .compiled import compile_step

    problem = job_problem(device, job)
    settings = TrainSettings(steps=job["steps"], **TRAIN_MODES[job.get("mode", "fast")])
    return {"mode": job.get("mode", "fast"), "size": problem["generator"].size,
            **compile_step(problem, settings, device, _peak_tracker(device), job.get("backend", "inductor"))}


def profile_train(device: torch.device, mode: str, steps: int = 3, top: int = 30) -> str:
    """The operators that take a training step's time, as torch.profiler's table: where to optimise.

    A 2-step run first warms up (kernel selection, compilation), then ``steps`` steps are profiled.
    """
    from torch.profiler import ProfilerActivity, profile

    from essence.training import EssenceJob, TrainSettings, train

    problem = training_problem(device)
    settings = TrainSettings(steps=steps, progress_every=steps, **TRAIN_MODES[mode])
    train(**problem, job=EssenceJob(replace(settings, steps=2)))
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        train(**problem, job=EssenceJob(settings))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=top)


# ----------------------------------------------------------------------------- the table


def plan(device: torch.device, sections: list[str], train_steps: int, modes: list[str] | None = None,
         batches: list[int] | None = None, candidates: list[int] | None = None,
         candidate_chunk: int | None = None, files: dict | None = None) -> list[dict]:
    """Every measurement to run, as the arguments of one ``--one`` subprocess each.

    ``modes`` picks training modes (default: all that suit the device; the candidates section: the
    first of them, else ``fast``); ``batches`` replaces the default batch sizes of the generator and
    encoder sections; ``candidates`` the K of the candidates section (default 1 2 4 8), whose passes
    hold ``candidate_chunk`` faces (default: all K x 4). ``files`` ({"generator": path, "guide": path})
    makes the training sections use those models instead of the full-size random ones.
    """
    files = dict(files or {})
    cuda = device.type == "cuda"
    dtypes = ["float32", "bfloat16"] if cuda else ["float32"]
    kind = "cuda" if cuda else "cpu"
    jobs: list[dict] = []
    if "generator" in sections:
        jobs += [{"kind": "generator", "batch": b, "dtype": d, "backward": bw}
                 for d in dtypes for b in (batches or DEFAULT_BATCHES["generator"][kind]) for bw in (False, True)]
    if "encoder" in sections:
        jobs += [{"kind": "encoder", "batch": b, "dtype": d}
                 for d in dtypes for b in (batches or DEFAULT_BATCHES["encoder"][kind])]
    if "train" in sections:
        chosen = modes or list(TRAIN_MODES)
        jobs += [{"kind": "train", "mode": m, "steps": train_steps, **files} for m in chosen]
    if "candidates" in sections:
        mode = (modes or ["fast"])[0]
        jobs += [{"kind": "candidates", "candidates": k, "mode": mode, "steps": train_steps, "chunk": candidate_chunk,
                  **files} for k in (candidates or [1, 2, 4, 8])]
    if "encode" in sections:
        jobs.append({"kind": "encode"})
    if "encoder_train" in sections:  # every source at once, then one at a time (the least memory); on CUDA also
        # the default run on a 12 GB card, which goes down to fewer faces a pass by itself as users' runs do
        steps = max(train_steps, 2)
        jobs += [{"kind": "encoder_train", "steps": steps, "chunk": chunk} for chunk in (None, 1)]
        if cuda:
            jobs.append({"kind": "encoder_train", "steps": steps, "chunk": None, "memory_gib": SMALL_CARD_GIB})
    return jobs


def run_one(device: torch.device, job: dict, repeats: int) -> dict:
    kind = job["kind"]
    # cuDNN's autotuner: off by default in PyTorch; a job may ask for it to see what it is worth
    torch.backends.cudnn.benchmark = bool(job.get("cudnn_benchmark", False))
    if kind == "generator":
        result = bench_generator(device, job["batch"], job["dtype"], job["backward"], repeats,
                                 job.get("upsample", "auto"))
    elif kind == "encoder":
        result = bench_encoder(device, job["batch"], job["dtype"], repeats)
    elif kind == "candidates":
        result = bench_candidates(device, job["candidates"], job["mode"], job["steps"], job.get("chunk"), job)
    elif kind == "compile":
        result = bench_compile(device, job)
    elif kind == "encode":
        result = bench_encode(device, repeats)
    elif kind == "encoder_train":
        result = bench_encoder_train(device, job["steps"], job.get("chunk"), job.get("memory_gib"))
    else:
        result = bench_train(device, job["mode"], job["steps"], job.get("upsample", "auto"), job)
    extras = {key: job[key] for key in ("cudnn_benchmark", "upsample") if key in job}
    return {"kind": kind, **result, **extras}


def _variant(row: dict) -> str:
    return "".join([" cudnn.benchmark" if row.get("cudnn_benchmark") else "",
                    f" up={row['upsample']}" if row.get("upsample") else ""])


def format_row(row: dict) -> str:
    if row["kind"] in ("encode", "encoder_train"):
        return format_encoder_row(row)
    if row["kind"] == "generator":
        what = f"generator {row['pass']:<16} batch {row['batch']:<3} {row['dtype']:<8}{_variant(row)}"
        return f"{what:<54}{row['seconds']:>9.3f} s {row['images_per_second']:>9.2f} img/s {row['peak_mb']:>9.0f} MB"
    if row["kind"] == "encoder":
        what = f"e4e encode                  batch {row['batch']:<3} {row['dtype']:<8}"
        return f"{what:<54}{row['seconds']:>9.3f} s {row['images_per_second']:>9.2f} img/s {row['peak_mb']:>9.0f} MB"
    if row["kind"] == "candidates":
        chunk = f" chunk {row['chunk']}" if row.get("chunk") else ""
        what = f"train {row['candidates']} candidates x 4 sources {row['mode']}{chunk}"
        return (f"{what:<54}{row['seconds_per_step']:>9.3f} s/step {row['seconds_per_direction_step']:>9.3f} "
                f"s/step per direction {row['peak_mb']:>7.0f} MB")
    what = f"train 4 sources             {row['mode']}{_variant(row)}"
    total = row["projected_1000_steps_s"]
    per_1000 = f"{total:.0f} s" if total < 600 else f"{total / 60:.1f} min"
    return f"{what:<54}{row['seconds_per_step']:>9.3f} s/step {per_1000:>9}/1000 {row['peak_mb']:>7.0f} MB"


def run_all(device: torch.device, jobs: list[dict], repeats: int, threads: int, timeout: float | None = None) -> dict:
    """Run each measurement in its own process, printing rows as they come; the report.

    A measurement that fails or outlasts ``timeout`` seconds is reported and skipped.
    """
    models = ("models " + ", ".join(sorted({Path(j[k]).name for j in jobs for k in ("generator", "guide") if j.get(k)}))
              if any(j.get("generator") for j in jobs) else "full-size models, random weights")
    print(f"Essence benchmark on {device_label(device)} (torch {torch.__version__}); {models}")
    rows = []
    for job in jobs:
        cmd = [sys.executable, "-m", "bench", "--device", str(device), "--repeats", str(repeats),
               "--threads", str(threads), "--one", json.dumps(job)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env={**os.environ, "PYTHONPATH": _package_root()})
        except subprocess.TimeoutExpired:
            print(f"  skipped: {job}: still running after {timeout:.0f} s", flush=True)
            continue
        if done.returncode != 0:
            print(f"  failed: {job}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}",
                  flush=True)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print("  " + format_row(row), flush=True)
    return {"device": device_label(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": threads, "date": time.strftime("%Y-%m-%d"), "rows": rows}


def _package_root() -> str:
    root = str(Path(__file__).resolve().parents[1])
    existing = os.environ.get("PYTHONPATH")
    return root if not existing else root + os.pathsep + existing


# ----------------------------------------------------------------------------- quality of the approximations


def quality_modes(generator) -> dict[str, dict]:
    """TrainSettings overrides per training mode, then chunk 1 (exact, in another order); the
    +256px modes use half the size of a generator no larger than 256 px."""
    low = _low_size(generator)
    modes = {name.replace("256px", f"{low}px"): {**mode.overrides, **({"render_size": low} if "render_size" in
                                                                      mode.overrides else {})}
             for name, mode in LIBRARY_MODES.items()}
    return {**modes, "fast+chunk1": {"chunk_size": 1}}


def _low_size(generator) -> int:
    return 256 if generator.size > 256 else generator.size // 2


def bench_quality(generator, guide, target, sources: torch.Tensor, steps: int,
                  seed: int = 0, modes: list[str] | None = None) -> list[dict]:
    """Train on ``target`` (a ``TrainingTarget``) with every mode from the same random start; compare each
    direction with the exact one."""
    from essence.training import EssenceJob, TrainSettings, objective_scorer, random_initial_direction, train

    init = random_initial_direction(generator, seed)
    # the exact objective of a trained direction (full-size float32 rendering, every coefficient 1):
    # minus the library's objective score, the sources rendered once for every mode
    exact_score = objective_scorer(generator, guide, target, sources)
    rows, reference = [], None
    for name, overrides in quality_modes(generator).items():
        if modes and name not in modes:
            continue
        start = time.perf_counter()
        job = EssenceJob(TrainSettings(steps=steps, seed=seed, **overrides))
        result = train(target, sources, generator, guide, job, start=init).result
        seconds = time.perf_counter() - start
        d = result.direction.tensor
        reference = d if reference is None else reference
        update = (reference - init.cpu()).norm()
        rows.append({"kind": "quality", "mode": name, "steps": steps, "seconds": seconds,
                     "own_best_loss": result.best_loss,
                     "exact_loss": -exact_score(result.direction),
                     "cosine_to_exact": float(torch.nn.functional.cosine_similarity(d.flatten(), reference.flatten(), dim=0)),
                     "distance_over_exact_update": float((d - reference).norm() / update) if update > 0 else 0.0})
    return rows


def format_quality_row(row: dict) -> str:
    return (f"{row['mode']:<22}{row['seconds']:>8.1f} s  loss {row['own_best_loss']:.4f}  exact-objective "
            f"{row['exact_loss']:.4f}  cosine {row['cosine_to_exact']:.5f}  distance {row['distance_over_exact_update']:.3f}")


def bench_precision(generator, guide, targets: dict[str, Any], sources: torch.Tensor, steps: int,
                    seeds: list[int], mode: str = "fast+bf16") -> dict:
    """Is ``mode`` a close enough approximation? ``bench_quality`` with the exact ``fast`` mode and
    ``mode`` from each seed's random start, for every target: the exact objective (the quality rows' ``exact_loss``)
    each reaches, and their ratio (above 1: the approximation ends worse).

    The bar: recommend the approximation only if the objective stays within 5 % of exact.
    """
    mode = mode.replace("256px", f"{_low_size(generator)}px")  # quality_modes' name for a small generator
    runs = []
    for name, target in targets.items():
        for seed in seeds:
            exact, approx = bench_quality(generator, guide, target, sources, steps, seed=seed, modes=["fast", mode])
            runs.append({"target": name, "seed": seed, "exact_objective": exact["exact_loss"],
                         "approx_objective": approx["exact_loss"], "ratio": approx["exact_loss"] / exact["exact_loss"],
                         "cosine_to_exact": approx["cosine_to_exact"], "seconds_exact": exact["seconds"],
                         "seconds_approx": approx["seconds"]})
    ratios = [run["ratio"] for run in runs]
    return {"mode": mode, "steps": steps, "seeds": list(seeds), "targets": list(targets), "runs": runs,
            "ratio_mean": statistics.fmean(ratios), "ratio_worst": max(ratios),
            "within_5_percent": max(ratios) <= 1.05}


def format_precision(study: dict) -> str:
    lines = [f"  target {r['target']:<12} seed {r['seed']:<3} exact-objective: exact {r['exact_objective']:.4f}, "
             f"{study['mode']} {r['approx_objective']:.4f} (ratio {r['ratio']:.4f}, cosine {r['cosine_to_exact']:.4f})"
             for r in study["runs"]]
    verdict = "within" if study["within_5_percent"] else "NOT within"
    lines.append(f"  {study['mode']} vs exact over {len(study['runs'])} runs of {study['steps']} steps: objective "
                 f"ratio mean {study['ratio_mean']:.4f}, worst {study['ratio_worst']:.4f}: {verdict} 5 %")
    return "\n".join(lines)
