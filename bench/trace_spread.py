"""``python -m bench.trace_spread``: which parts of a reference trace another CPU can reproduce.

TargetCLIP's loop is chaotic once a per-source coefficient reaches zero up to rounding (about step
7): from there the sign of its gradient, and so the path, is decided by rounding. Another CPU (AVX-512
or not, another thread count) rounds differently, so a test may only assert what every such
perturbation leaves in place. This trains each trace again with the target's embedding moved by
``--epsilon`` (1e-7: below the rounding differences between CPUs) for ``--runs`` seeds, and prints per
run: the first step whose loss is more than 1e-4 from the trace's, the minimum loss relative to the
trace's, the kept step and how far the kept direction is from the trace's (relative L2).

Traces: the repository's astronaut trace (lr 0.2), its lr 0.1 trace, and, where the shared fixtures
are present, TargetCLIP's golden ``face_a.jpg`` trace. Tiny models, CPU, one thread: a few seconds a run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file

import essence
from essence.networks import to_unit
from essence.training import EssenceJob, TrainingTarget, TrainSettings, train

from bench import FIXTURES, SHARED_FIXTURES



def traces() -> dict[str, tuple[Path, Path, float]]:
    """name: (trace file, file holding its target picture, learning rate)."""
    astronaut = FIXTURES / "targetclip_public_trace.safetensors"
    found = {"astronaut lr 0.2": (astronaut, astronaut, 0.2),
             "astronaut lr 0.1": (FIXTURES / "targetclip_lr0.1_trace.safetensors", astronaut, 0.1)}
    golden = SHARED_FIXTURES / "targetclip_public_trace.safetensors"
    if golden.is_file():
        found["face_a.jpg lr 0.2"] = (golden, golden, 0.2)
    return found


def spread(trace: dict[str, torch.Tensor], target: torch.Tensor, lr: float, generator, guide, epsilon: float,
           seed: int) -> str:
    """One run with the target moved by ``epsilon`` (seed 0: not moved), summarised against the trace."""
    if seed:
        target = target + epsilon * torch.randn(target.shape, generator=torch.Generator().manual_seed(seed))
    run = train(TrainingTarget.from_embedding(target), trace["sources"], generator, guide,
                EssenceJob(TrainSettings(steps=len(trace["loss_per_step"]), lr=lr)),
                start=trace["init_direction"]).result
    losses, reference = torch.tensor(run.losses), trace["loss_per_step"]
    parted = next((step for step, gap in enumerate((losses - reference).abs().tolist()) if gap > 1e-4), None)
    best = trace["best_direction"]
    moved = float((run.direction.tensor - best).norm() / best.norm())
    minimum = float(losses.min() / reference.min() - 1)
    return f"parts at step {parted}, minimum loss {minimum:+.1%}, kept step {run.best_step}, direction {moved:.0%}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="runs per trace, the first unmoved (default 8)")
    parser.add_argument("--epsilon", type=float, default=1e-7, help="how far to move the target (default 1e-7)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    generator = essence.load_generator(FIXTURES / "stylegan2_tiny64.pt", cache=False)
    guide = essence.load_guide(FIXTURES / "clip_tiny.pt", cache=False)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for name, (path, picture, lr) in traces().items():
        trace = load_file(path)
        with torch.no_grad():
            target = to_unit(guide.encode(load_file(picture)["target_clip_input"]))
        print(f"{name} (trace: minimum loss at step {int(trace['loss_per_step'].argmin())})", flush=True)
        for seed in range(args.runs):
            print(f"  {'unmoved' if seed == 0 else f'seed {seed}':8s} "
                  f"{spread(trace, target, lr, generator, guide, args.epsilon, seed)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
