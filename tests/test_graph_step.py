"""The ``graph`` training loop: one static step with no host value, replayed as a CUDA graph on CUDA.

On the CPU the same step runs eagerly, so its arithmetic is checked here: the optimisers' updates
against ``torch.optim.Adam`` and the whole loop against the ``fast`` loop, step for step. The
replay itself needs CUDA (the last tests; they are skipped elsewhere).
"""

from __future__ import annotations

import json

import pytest
import torch
from test_train import assert_follows_reference

import essence
import essence.training.loop as loop
from essence.training.adam import ScheduledAdam, fresh_adam_step_
from essence.training import EssenceJob, TrainSettings, train
from essence.training.loop import learning_rate

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")


def awkward_gradients(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Random gradients over many magnitudes, with exact zeros (also -0.0) and values near Adam's eps."""
    generator = torch.Generator().manual_seed(seed)
    grad = torch.randn(shape, generator=generator) * 10.0 ** torch.randint(-12, 4, shape, generator=generator)
    flat = grad.view(-1)
    flat[:5] = 0.0
    flat[5:8] = -0.0
    flat[8:12] = torch.tensor([1e-8, -1e-8, 3e-9, -2e-7])
    return grad


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
@pytest.mark.parametrize("lr", [0.2, 0.05])
def test_a_fresh_adams_first_step_in_closed_form_equals_torchs(lr, weight_decay):
    """The reference creates a new Adam for the coefficients every step: each update is a first step."""
    for seed in range(5):
        start = torch.randn(6, 40, generator=torch.Generator().manual_seed(100 + seed)) * 3
        grad = awkward_gradients((6, 40), seed)
        reference = start.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([reference], lr=lr, weight_decay=weight_decay)
        reference.grad = grad.clone()
        optimizer.step()
        mine = start.clone()
        fresh_adam_step_(mine, grad, lr, weight_decay)
        torch.testing.assert_close(mine, reference.detach(), rtol=1e-6, atol=1e-12)
        # the derivation (in float64, where float32's rounding of the sum cannot hide it): the update
        # is -lr * g / (|g| + eps), g with the coupled decay
        start64, grad64 = start.double(), grad.double()
        moved = start64.clone()
        fresh_adam_step_(moved, grad64, lr, weight_decay)
        g = grad64 + weight_decay * start64
        torch.testing.assert_close(moved - start64, -lr * g / (g.abs() + 1e-8), rtol=1e-9, atol=1e-14)
    unmoved = torch.ones(3)
    fresh_adam_step_(unmoved, torch.zeros(3), lr)  # no gradient and no decay: no update at all
    assert torch.equal(unmoved, torch.ones(3))


def test_scheduled_adam_equals_torchs_adam_with_the_learning_rate_set_each_step():
    """The direction's Adam, its rate from the official schedule (0 at the first step), read from the
    device at a device step counter instead of from the host."""
    steps = 40
    start = torch.randn(2, 10, 64, generator=torch.Generator().manual_seed(1))
    reference = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([reference], lr=0.2, weight_decay=3e-3)
    mine = start.clone().requires_grad_(True)
    adam = ScheduledAdam(mine, [learning_rate(i, steps, 0.2) for i in range(steps)], weight_decay=3e-3)
    for step in range(steps):
        grad = awkward_gradients(tuple(start.shape), 50 + step)
        optimizer.param_groups[0]["lr"] = learning_rate(step, steps, 0.2)
        reference.grad, mine.grad = grad.clone(), grad.clone()
        optimizer.step()
        adam.step_(torch.tensor(step))
        torch.testing.assert_close(mine.detach(), reference.detach(), rtol=1e-6, atol=1e-9)
    assert not torch.equal(mine, start)


def _run(models, trace, target, inits, **settings):
    generator, guide = models
    return train(target, trace["sources"], generator, guide, EssenceJob(TrainSettings(**settings)), start=inits,
                 choose=None).results


def assert_same_runs(graph_runs, eager_runs, rel: float = 1e-5) -> None:
    """Step for step: the same losses, coefficients, best step and kept direction."""
    assert len(graph_runs) == len(eager_runs)
    for graph, eager in zip(graph_runs, eager_runs):
        assert graph.losses == pytest.approx(eager.losses, rel=rel, abs=1e-7)
        assert graph.transfer == pytest.approx(eager.transfer, rel=rel, abs=1e-7)
        assert graph.consistency == pytest.approx(eager.consistency, rel=rel, abs=1e-7)
        assert graph.coefficients == pytest.approx(eager.coefficients, rel=rel, abs=1e-6)
        assert graph.best_step == eager.best_step
        torch.testing.assert_close(graph.direction.tensor, eager.direction.tensor, rtol=rel, atol=1e-6)


@pytest.mark.parametrize("candidates, chunk_size", [(1, None), pytest.param(2, 4, marks=pytest.mark.slow)],
                         ids=["one", "two-chunked"])
def test_graph_loop_steps_like_the_fast_loop(models, trace, target, candidates, chunk_size):
    """Same losses, coefficients, best step and direction for a dozen steps, for one candidate and for
    two candidates rendered one per pass (the chunked path: render, loss, then back-propagate per pass)."""
    generator, _ = models
    inits = [trace["init_direction"], generator.sample_wplus(1, seed=3, truncation=0.7).cpu()][:candidates]
    fast = _run(models, trace, target, inits, steps=12, loop="fast", chunk_size=chunk_size)
    graph = _run(models, trace, target, inits, steps=12, loop="graph", chunk_size=chunk_size)
    assert_same_runs(graph, fast)
    assert graph[0].direction.meta["hyperparameters"]["loop"] == "graph"
    assert min(graph[0].losses) < graph[0].losses[0]  # it trains


def test_graph_loop_without_the_consistency_loss_has_no_coefficients_to_update(models, trace, target):
    fast = _run(models, trace, target, [trace["init_direction"]], steps=4, loop="fast", lambda_consistency=0.0)
    graph = _run(models, trace, target, [trace["init_direction"]], steps=4, loop="graph", lambda_consistency=0.0)
    assert_same_runs(graph, fast)
    assert graph[0].coefficients == [1.0] * 4


@pytest.mark.slow
def test_graph_loop_reproduces_the_reference_trace(models, trace, target):
    run = _run(models, trace, target, [trace["init_direction"]], steps=40, loop="graph")[0]
    assert_follows_reference(run, trace)


def test_the_default_loop_is_the_graph_loop_on_cuda_and_the_fast_loop_elsewhere(models, trace, target):
    """Measured on an H200: the replayed step is 1.2-1.4x faster at full size (docs/benchmarks.md)."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert TrainSettings().loop == "auto"
    assert loop.resolved_loop(TrainSettings(), cuda) == "graph"
    assert loop.resolved_loop(TrainSettings(), cpu) == "fast"
    assert loop.resolved_loop(TrainSettings(recompute_from=64), cuda) == "fast"  # cannot be captured
    assert loop.resolved_loop(TrainSettings(loop="official"), cuda) == "official"
    assert loop.resolved_loop(TrainSettings(loop="graph"), cpu) == "graph"
    result = _run(models, trace, target, [trace["init_direction"]], steps=2)[0]
    assert result.direction.meta["hyperparameters"]["loop"] == "fast"  # what ran, not "auto"


def test_graph_loop_refuses_recomputation_and_unknown_loops_are_named():
    with pytest.raises(essence.EssenceError, match="recompute_from does not work with loop 'graph'"):
        TrainSettings(loop="graph", recompute_from=64)
    with pytest.raises(essence.EssenceError, match="'auto', 'official', 'fast' or 'graph'"):
        TrainSettings(loop="compiled")


@pytest.mark.slow
def test_graph_step_benchmark_writes_records_and_checks_replay(fixtures, tmp_path, capsys):
    """``bench/graph_step.py`` (run on a GPU later) works end to end; on the CPU nothing is captured."""
    from bench import graph_step

    out = tmp_path / "graph.json"
    assert graph_step.main(["--device", "cpu", "--fixtures", str(fixtures), "--modes", "fast", "--steps", "4",
                            "--window", "2", "--check-steps", "2", "--json", str(out)]) == 0
    records = json.loads(out.read_text())["records"]
    assert [r["loop"] for r in records] == ["fast", "graph", "graph"]
    for r in records:
        assert {"device", "what", "mode", "exact", "batch", "steps", "seconds_per_step", "peak_gb", "torch",
                "date"} <= set(r)
        assert r["mode"] == "fast" and r["exact"] and r["batch"] == 4 and r["steps"] == 2
        assert r["seconds_per_step"] > 0 and r["checks_passed"] and not r["captured"]
    assert records[1]["replay_vs_eager_max_rel_loss"] <= 1e-5
    assert len(capsys.readouterr().out.splitlines()) == 3 + 2  # the records, then where the runs part


# ----------------------------------------------------------------------------- on CUDA


@pytest.fixture(scope="module")
def cuda_models(tiny_files):
    generator = essence.load_generator(tiny_files.generator, device="cuda", cache=False)
    guide = essence.load_guide(tiny_files.guide, device="cuda", cache=False)
    return generator, guide


PRE_CHAOS_STEPS = 7  # the reference loop amplifies a rounding difference from about step 7 on (fixtures README)


@pytest.fixture
def strict_float32():
    """No TF32 for the test, then the flags as they were. Set directly rather than with monkeypatch:
    torch 2.11's ``matmul.allow_tf32`` is a property of a module proxy, which monkeypatch's undo
    tries to delete."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture
def deterministic_kernels(strict_float32):
    """Kernels that give the same sums every run (cuDNN's deterministic algorithms, cuBLAS's fixed
    workspace from conftest): without them two eager runs of the same step already differ by about
    1e-7 on an H200, which the loop's chaos grows to percent by step 8."""
    saved = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic, \
        torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]


class _CountingGraph(torch.cuda.CUDAGraph):
    replays = 0

    def replay(self):
        _CountingGraph.replays += 1
        super().replay()


def _replay_and_eager(cuda_models, trace, target, inits, monkeypatch, **settings):
    """The graph loop twice: captured after the warm-up and replayed, then every step run eagerly."""
    monkeypatch.setattr(torch.cuda, "CUDAGraph", _CountingGraph)
    _CountingGraph.replays = 0
    replayed = _run(cuda_models, trace, target, inits, loop="graph", **settings)
    replays = _CountingGraph.replays
    assert replays == settings["steps"] - loop.GRAPH_WARMUP_STEPS  # every step after the warm-up
    monkeypatch.setattr(loop, "GRAPH_WARMUP_STEPS", 1000)  # the same step, never captured
    eager = _run(cuda_models, trace, target, inits, loop="graph", **settings)
    assert _CountingGraph.replays == replays
    return replayed, eager


@cuda
@pytest.mark.parametrize("overrides", [{}, {"chunk_size": 3}, {"autocast": "bf16", "render_size": 32}],
                         ids=["float32", "chunked", "bf16-32px"])
@pytest.mark.parametrize("candidates", [1, 2])
def test_cuda_graph_replay_equals_the_same_step_run_eagerly(cuda_models, trace, target, monkeypatch, overrides,
                                                            candidates, deterministic_kernels):
    """With deterministic kernels, capture changes no number: a dozen steps equal, chaos and all."""
    generator, _ = cuda_models
    inits = [trace["init_direction"], generator.sample_wplus(1, seed=3, truncation=0.7).cpu()][:candidates]
    settings = dict(steps=12, **overrides)
    replayed, eager = _replay_and_eager(cuda_models, trace, target, inits, monkeypatch, **settings)
    assert_same_runs(replayed, eager)


@cuda
@pytest.mark.parametrize("overrides", [{}, {"autocast": "bf16", "render_size": 32}], ids=["float32", "bf16-32px"])
def test_cuda_graph_loop_with_default_kernels_steps_like_eager_and_fast_until_the_chaos(
        cuda_models, trace, target, monkeypatch, overrides, strict_float32):
    """With cuDNN's default (fastest, not deterministic) kernels, what a user runs: replay, the same
    step run eagerly and the fast loop (torch's optimisers, other rounding) agree before the loop's
    chaos sets in. In bf16 a slightly different latent may round differently one step sooner."""
    inits = [trace["init_direction"]]
    settings = dict(steps=12, **overrides)
    replayed, eager = _replay_and_eager(cuda_models, trace, target, inits, monkeypatch, **settings)
    fast = _run(cuda_models, trace, target, inits, loop="fast", **settings)
    bf16 = "autocast" in overrides
    window = PRE_CHAOS_STEPS - 1 if bf16 else PRE_CHAOS_STEPS
    assert replayed[0].losses[:window] == pytest.approx(eager[0].losses[:window], rel=1e-5, abs=1e-7)
    assert replayed[0].losses[:window] == pytest.approx(fast[0].losses[:window], abs=1e-3 if bf16 else 1e-4)


@cuda
def test_cuda_graph_loop_reproduces_the_reference_trace_in_strict_float32(cuda_models, trace, target,
                                                                          strict_float32):
    run = _run(cuda_models, trace, target, [trace["init_direction"]], steps=40, loop="graph")[0]
    assert_follows_reference(run, trace)

