"""Benchmark: full-size (1024 px, FFHQ config-f shapes, random weights) generator speed and memory.

    .venv/bin/python bench/generator.py                      # CPU, float32, batch 1 and 4
    .venv/bin/python bench/generator.py --device cuda --dtypes float32 bfloat16

Each (batch, dtype, pass) runs in its own subprocess, so the CPU figure "peak RSS added" is that
run's own high-water mark above the process's size after building the model; on CUDA it is
``torch.cuda.max_memory_allocated``. Times are the median of ``--repeats`` runs after one warm-up.
Writes the table to stdout and JSON to ``--json``.
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


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_one(device: str, dtype: str, batch: int, mode: str, repeats: int, threads: int) -> dict:
    import torch

    from essence.stylegan2 import GeneratorConfig, build_generator

    torch.set_num_threads(threads)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_generator(GeneratorConfig.ffhq_config_f(), device=dev).requires_grad_(False)
    wplus = torch.randn(batch, model.n_latent, model.style_dim, device=dev) * 0.5

    def step() -> None:
        latent = wplus.clone().requires_grad_(mode == "forward+backward")
        context = torch.autocast(dev.type, dtype=torch.bfloat16) if dtype == "bfloat16" else _null()
        with context, torch.set_grad_enabled(mode == "forward+backward"):
            image = model.synthesize(latent)
        if mode == "forward+backward":
            image.float().square().mean().backward()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    base_rss = _rss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result = {"device": device, "dtype": dtype, "batch": batch, "pass": mode, "threads": threads,
              "seconds_median": statistics.median(times), "seconds_all": times,
              "images_per_second": batch / statistics.median(times)}
    if dev.type == "cuda":
        result["peak_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
        result["device_name"] = torch.cuda.get_device_name()
    else:
        result["peak_mb"] = _rss_mb() - base_rss
        result["device_name"] = platform.processor() or platform.machine()
    return result


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--passes", nargs="+", default=["forward", "forward+backward"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config, print JSON
    args = parser.parse_args()

    if args.one:
        dtype, batch, mode = args.one.split(",")
        print(json.dumps(run_one(args.device, dtype, int(batch), mode, args.repeats, args.threads)))
        return 0

    rows = []
    print(f"{'device':<8}{'dtype':<10}{'batch':>6}  {'pass':<18}{'s/iter':>9}{'img/s':>8}{'peak MB':>10}")
    for dtype in args.dtypes:
        for batch in args.batches:
            for mode in args.passes:
                cmd = [sys.executable, __file__, "--device", args.device, "--repeats", str(args.repeats),
                       "--threads", str(args.threads), "--one", f"{dtype},{batch},{mode}"]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                row = json.loads(out.strip().splitlines()[-1])
                rows.append(row)
                print(f"{args.device:<8}{dtype:<10}{batch:>6}  {mode:<18}{row['seconds_median']:>9.3f}"
                      f"{row['images_per_second']:>8.2f}{row['peak_mb']:>10.0f}", flush=True)
    import torch

    meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": __import__("os").cpu_count(), "device_name": rows[0]["device_name"] if rows else None}
    print(f"torch {meta['torch']}, {meta['device_name']}, {meta['cpu_count']} CPUs, {args.threads} threads")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
