"""``python -m bench`` (the maintainers' benchmark): what it measures and how it reports (numbers themselves are not asserted)."""

from __future__ import annotations

import pytest
import torch

import essence
from bench import cli
from bench.measure import TRAIN_MODES, format_row, plan


def test_plan_covers_every_section_and_training_mode():
    jobs = plan(torch.device("cpu"), ["generator", "encoder", "train"], train_steps=3)
    kinds = {job["kind"] for job in jobs}
    assert kinds == {"generator", "encoder", "train"}
    assert [j["mode"] for j in jobs if j["kind"] == "train"] == list(TRAIN_MODES)
    assert set(essence.TRAIN_MODES) <= set(TRAIN_MODES)  # every training mode users can choose is timed
    assert [j["mode"] for j in plan(torch.device("cuda"), ["train"], train_steps=30)] == list(TRAIN_MODES)
    assert {(j["batch"], j["backward"]) for j in jobs if j["kind"] == "generator"} == {
        (1, False), (1, True), (4, False), (4, True)}
    gpu = plan(torch.device("cuda"), ["generator", "encoder"], train_steps=30)
    assert {j["dtype"] for j in gpu} == {"float32", "bfloat16"}


def test_plan_takes_the_modes_and_batch_sizes_asked_for():
    jobs = plan(torch.device("cpu"), ["generator", "encoder", "train"], train_steps=3,
                modes=["fast", "fast+chunk2"], batches=[2])
    assert [j["mode"] for j in jobs if j["kind"] == "train"] == ["fast", "fast+chunk2"]
    assert {j["batch"] for j in jobs if j["kind"] != "train"} == {2}


def test_a_measurement_that_fails_is_reported_and_the_rest_still_run(capsys):
    from bench.measure import run_all

    report = run_all(torch.device("cpu"), [{"kind": "train", "mode": "no-such-mode", "steps": 1},
                                           {"kind": "encoder", "batch": 1, "dtype": "float32"}],
                     repeats=1, threads=1)
    out = capsys.readouterr().out
    assert "failed: {'kind': 'train', 'mode': 'no-such-mode'" in out
    assert [row["kind"] for row in report["rows"]] == ["encoder"]


def test_one_measurement_reports_time_throughput_and_memory(capsys):
    assert cli.main(["--device", "cpu", "--repeats", "1", "--threads", "1",
                     "--one", '{"kind": "encoder", "batch": 1, "dtype": "float32"}']) == 0
    import json

    row = json.loads(capsys.readouterr().out)
    assert row["kind"] == "encoder" and row["seconds"] > 0 and row["images_per_second"] == 1 / row["seconds"]
    assert "e4e encode" in format_row(row) and "img/s" in format_row(row)


def test_training_rows_project_a_1000_step_run():
    row = {"kind": "train", "mode": "fast", "seconds_per_step": 0.5, "projected_1000_steps_s": 500.0, "peak_mb": 10.0}
    assert "fast" in format_row(row) and "500 s/1000" in format_row(row)
    slow = {**row, "seconds_per_step": 25.0, "projected_1000_steps_s": 25000.0}
    assert "416.7 min/1000" in format_row(slow)


def test_quality_section_compares_modes_with_the_exact_direction(fixtures, capsys):
    """A short run with the tiny models: the exact modes agree, and the table has every mode asked for."""
    import essence
    from bench.measure import bench_quality, format_quality_row
    from essence.train import target_embedding
    from PIL import Image

    generator = essence.load_generator(fixtures / "stylegan2_tiny64.pt")
    guide = essence.load_guide(fixtures / "clip_tiny.pt")
    target = target_embedding(guide, Image.open(fixtures / "face_a.jpg"))
    sources = generator.sample_wplus(3, seed=1, truncation=0.7)
    rows = bench_quality(generator, guide, target, sources, steps=3,
                         modes=["fast", "official", "fast+32px"])
    assert [r["mode"] for r in rows] == ["fast", "official", "fast+32px"]
    assert rows[0]["cosine_to_exact"] == pytest.approx(1.0, abs=1e-6) and rows[1]["cosine_to_exact"] > 0.99999
    assert rows[2]["exact_loss"] > 0 and "cosine" in format_quality_row(rows[2])


def test_the_gpu_fixture_check_passes_on_the_cpu(fixtures, capsys):
    """bench/cuda_check.py only runs on GPU machines; running it here keeps it working."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("cuda_check", Path(__file__).resolve().parents[1] / "bench" / "cuda_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(fixtures, "cpu", tf32=False) == 0
    out = capsys.readouterr().out
    assert "strict float32" in out and "FAIL" not in out and out.count("ok ") == 9


def test_the_candidates_section_times_each_k_in_one_mode_and_reports_per_direction():
    jobs = plan(torch.device("cpu"), ["candidates"], train_steps=3, modes=["fast+256px"], candidate_chunk=4)
    assert [(j["candidates"], j["mode"], j["chunk"]) for j in jobs] == [(k, "fast+256px", 4) for k in (1, 2, 4, 8)]
    assert [j["candidates"] for j in plan(torch.device("cpu"), ["candidates"], 3, candidates=[2])] == [2]
    row = {"kind": "candidates", "candidates": 4, "mode": "fast", "chunk": None, "seconds_per_step": 2.0,
           "seconds_per_direction_step": 0.5, "peak_mb": 10.0}
    assert "train 4 candidates x 4 sources fast" in format_row(row) and "0.500 s/step per direction" in format_row(row)
