"""Benchmark: TargetCLIP training speed and memory at full size (random weights), per training mode.

    .venv/bin/python bench/train.py                         # CPU: a few steps per mode
    .venv/bin/python bench/train.py --device cuda --steps 50

Full-size shapes: the 1024 px FFHQ config-f generator and CLIP ViT-B/32's image tower, randomly
initialised (no pretrained weights are needed to time them), 4 sources. Modes:
  official        the reference loop (E(G(w_i)) recomputed every step)
  fast            same results, E(G(w_i)) computed once, no per-step host syncs
  fast+chunk1     fast, rendering one source at a time (exact; bounds memory, costs an extra forward)
  fast+bf16       fast under bf16 autocast (an approximation; its quality cost is measured elsewhere)
  fast+256px      fast, CLIP fed the generator's 256 px intermediate RGB (an approximation)
Each mode runs in its own subprocess. Reported: seconds per step (median of the timed steps after
one warm-up step), the implied time for 1000 steps, and peak memory (CPU: peak RSS added by the
run; CUDA: torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = {"official": ("official", None, None, None), "fast": ("fast", None, None, None),
         "fast+chunk1": ("fast", None, 1, None), "fast+bf16": ("fast", "bf16", None, None),
         "fast+256px": ("fast", None, None, 256)}


def build_models(device):
    import torch
    from clip.model import VisionTransformer

    from essence.clip_guide import ClipGuide
    from essence.stylegan2 import GeneratorConfig, build_generator

    torch.manual_seed(0)
    generator = build_generator(GeneratorConfig.ffhq_config_f(), device=device).requires_grad_(False)
    with torch.device(device):
        visual = VisionTransformer(input_resolution=224, patch_size=32, width=768, layers=12, heads=12,
                                   output_dim=512)
    guide = ClipGuide(visual.eval(), name="ViT-B/32 (random)").requires_grad_(False).to(device)
    return generator, guide


def run_one(device: str, mode: str, steps: int, threads: int) -> dict:
    import torch

    from essence.train import TrainSettings, train_direction

    torch.set_num_threads(threads)
    dev = torch.device(device)
    generator, guide = build_models(dev)
    sources = generator.sample_wplus(4, seed=1, truncation=0.7)
    init = generator.sample_wplus(1, seed=2, truncation=0.7)
    target = torch.nn.functional.normalize(torch.randn(1, 512), dim=-1)
    path, autocast, chunk, render_size = MODES[mode]
    stamps: list[float] = []

    def progress(_):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    start = time.perf_counter()
    result = train_direction(None, sources, generator, guide, init=init, target_embedding_override=target,
                             settings=TrainSettings(steps=steps, path=path, autocast=autocast, chunk_size=chunk,
                                                    render_size=render_size, progress_every=1),
                             progress=progress)
    per_step = [b - a for a, b in zip([start] + stamps[:-1], stamps)][1:]  # drop the warm-up step
    median = statistics.median(per_step)
    row = {"device": device, "mode": mode, "steps": steps, "threads": threads,
           "seconds_per_step": median, "seconds_per_step_all": per_step,
           "projected_1000_steps_s": median * 1000, "first_loss": result.losses[0]}
    if dev.type == "cuda":
        row["peak_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
        row["device_name"] = torch.cuda.get_device_name()
    else:
        row["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss
        row["device_name"] = platform.processor() or platform.machine()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--steps", type=int, default=3, help="steps per mode (the first is a warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.device, args.one, args.steps, args.threads)))
        return 0
    rows = []
    print(f"{'device':<8}{'mode':<12}{'s/step':>9}{'1000 steps':>12}{'peak MB':>10}")
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--device", args.device, "--steps", str(args.steps),
               "--threads", str(args.threads), "--one", mode]
        row = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{args.device:<8}{mode:<12}{row['seconds_per_step']:>9.2f}{row['projected_1000_steps_s'] / 60:>10.1f} min"
              f"{row['peak_mb']:>10.0f}", flush=True)
    import torch

    print(f"torch {torch.__version__}, {rows[0]['device_name']}, {args.threads} threads, 4 sources, 1024 px")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
