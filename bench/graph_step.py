"""Experiment: how fast is a training step on a GPU without Python's dispatch cost?

The H100 measurements (docs/benchmarks.md) point at the host: a full-size `fast` step keeps the GPU
busy under 63 ms but takes 66-73 ms, and the 256 px path, which skips most of the generator's work,
still takes 43-53 ms. This script captures one step's forward and backward (render the edited
sources, embed them with CLIP, the TargetCLIP loss, gradients for the direction and the
coefficients) in a CUDA graph and times its replays against the same work run eagerly. If the
replay is far faster, capturing `essence.train`'s whole step is worth building.

    python bench/graph_step.py [--render-size 256] [--bf16] [--repeats 20]

The replayed loss and gradient are compared with the eager ones: they must agree to rounding.
Not part of the test suite and not run by CI: it needs CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import training_problem  # noqa: E402
from essence.clip_guide import to_unit  # noqa: E402
from essence.train import essence_losses  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--render-size", type=int, default=None)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    device = torch.device("cuda")
    problem = training_problem(device)
    generator, guide, sources = problem["generator"], problem["guide"], problem["sources"]
    target = to_unit(problem["target_embedding_override"].to(device))

    def embed(latents: torch.Tensor) -> torch.Tensor:
        # autocast's weight-cast cache must be off inside a CUDA graph capture
        with torch.autocast("cuda", torch.bfloat16, enabled=args.bf16, cache_enabled=False):
            images = generator.synthesize(latents, stop_at=args.render_size)
        return guide.embed_generated(images.float()).float()

    with torch.no_grad():
        e_src = embed(sources)
    direction = problem["init"].clone().requires_grad_(True)
    coefficients = torch.ones(sources.shape[0], device=device, requires_grad=True)

    def step() -> torch.Tensor:
        transfer, consistency = essence_losses(e_src, embed(sources + direction * coefficients[:, None, None]), target)
        loss = transfer + 0.5 * consistency
        loss.backward()
        return loss.detach()

    def timed(run) -> float:
        times = []
        for _ in range(args.repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            run()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def eager() -> torch.Tensor:
        direction.grad = coefficients.grad = None
        return step()

    eager()  # warm-up
    eager_seconds = timed(eager)
    eager_loss = eager()
    eager_grad = direction.grad.clone()

    # the documented recipe: warm up on a side stream, then capture with gradients allocated inside
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            direction.grad = coefficients.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    direction.grad = coefficients.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_loss = step()
    graph.replay()
    torch.cuda.synchronize()
    loss_error = abs(float(graph_loss) - float(eager_loss))
    grad_error = float((direction.grad - eager_grad).norm() / eager_grad.norm())
    graph_seconds = timed(graph.replay)

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, render size "
          f"{args.render_size or generator.size}, {'bf16' if args.bf16 else 'float32'}: forward + backward of "
          f"{sources.shape[0]} sources")
    print(f"  eager        {eager_seconds * 1000:7.1f} ms")
    print(f"  CUDA graph   {graph_seconds * 1000:7.1f} ms   (loss differs by {loss_error:.2e}, "
          f"direction gradient by {grad_error:.2e} relative)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
