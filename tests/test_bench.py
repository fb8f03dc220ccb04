"""``python -m bench`` (the maintainers' benchmark): what it measures and how it reports (numbers themselves are not asserted)."""

from __future__ import annotations

import os

import pytest
import torch

import essence
from bench import cli
from bench.encoder_variant import bench_encoder_train
from bench.measure import TRAIN_MODES, format_row, plan


def test_plan_covers_every_section_and_training_mode():
    jobs = plan(torch.device("cpu"), ["generator", "encoder", "train"], train_steps=3)
    kinds = {job["kind"] for job in jobs}
    assert kinds == {"generator", "encoder", "train"}
    assert [j["mode"] for j in jobs if j["kind"] == "train"] == list(TRAIN_MODES)
    assert set(essence.training.TRAIN_MODES) <= set(TRAIN_MODES)  # every training mode users can choose is timed
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


@pytest.mark.slow
def test_a_measurement_that_fails_is_reported_and_the_rest_still_run(capsys, tiny_files):
    from bench.measure import run_all

    tiny = {"generator": str(tiny_files.generator), "guide": str(tiny_files.guide)}  # a quick measurement
    report = run_all(torch.device("cpu"), [{"kind": "train", "mode": "no-such-mode", "steps": 1},
                                           {"kind": "train", "mode": "fast", "steps": 2, **tiny}],
                     repeats=1, threads=1)
    out = capsys.readouterr().out
    assert "failed: {'kind': 'train', 'mode': 'no-such-mode'" in out
    assert [(row["kind"], row["mode"]) for row in report["rows"]] == [("train", "fast")]


@pytest.mark.slow
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


def test_quality_section_compares_modes_with_the_exact_direction(models, target, capsys):
    """A short run with the tiny models: the exact modes agree, and the table has every mode asked for."""
    from bench.measure import bench_quality, format_quality_row
    from essence.training import TrainingTarget

    generator, guide = models
    target = TrainingTarget.read(target)
    sources = generator.sample_wplus(3, seed=1, truncation=0.7)
    rows = bench_quality(generator, guide, target, sources, steps=3,
                         modes=["fast", "official", "fast+32px"])
    assert [r["mode"] for r in rows] == ["fast", "official", "fast+32px"]
    assert rows[0]["cosine_to_exact"] == pytest.approx(1.0, abs=1e-6) and rows[1]["cosine_to_exact"] > 0.99999
    assert rows[2]["exact_loss"] > 0 and "cosine" in format_quality_row(rows[2])


@pytest.mark.slow
def test_the_gpu_fixture_check_passes_on_the_cpu(fixtures, capsys, tmp_path):
    """bench/cuda_check.py only runs on GPU machines; running it here keeps it working."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("cuda_check", Path(__file__).resolve().parents[1] / "bench" / "cuda_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(fixtures, "cpu", tf32=False, records=tmp_path) == 0
    out = capsys.readouterr().out
    assert "strict float32" in out and "FAIL" not in out and out.count("ok ") == 9
    from bench.records import load_records

    checks = load_records(tmp_path)
    assert len(checks) == 9 and all(r["ok"] and r["mode"] == "strict float32" for r in checks)


def test_the_candidates_section_times_each_k_in_one_mode_and_reports_per_direction():
    jobs = plan(torch.device("cpu"), ["candidates"], train_steps=3, modes=["fast+256px"], candidate_chunk=4)
    assert [(j["candidates"], j["mode"], j["chunk"]) for j in jobs] == [(k, "fast+256px", 4) for k in (1, 2, 4, 8)]
    assert [j["candidates"] for j in plan(torch.device("cpu"), ["candidates"], 3, candidates=[2])] == [2]
    row = {"kind": "candidates", "candidates": 4, "mode": "fast", "chunk": None, "seconds_per_step": 2.0,
           "seconds_per_direction_step": 0.5, "peak_mb": 10.0}
    assert "train 4 candidates x 4 sources fast" in format_row(row) and "0.500 s/step per direction" in format_row(row)


def _record(**changes):
    from bench.records import record

    return {**record("NVIDIA H200", "train 4 sources 1024px", "fast", True, 1, 29, 0.0651, 7.4,
                     seconds_per_1000_steps=65.1), **changes}


def test_records_are_written_in_the_common_schema_and_read_back(tmp_path):
    from bench.records import RECORD_FIELDS, load_records, records_from_rows, write_records

    row = {"kind": "train", "mode": "fast+bf16", "steps_timed": 2, "seconds_per_step": 17.3,
           "projected_1000_steps_s": 17300.0, "peak_mb": 5120.0, "size": 1024}
    cpu = records_from_rows([row], "cpu (x86_64, 2 cores, 2 threads)", exact_modes={"fast"})
    path = write_records([_record()] + cpu, tmp_path, run="train")
    assert path.parent == tmp_path and path.name.startswith("nvidia-h200_train_") and path.suffix == ".json"
    loaded = load_records(tmp_path)
    assert [r["mode"] for r in loaded] == ["fast", "fast+bf16"]
    assert all(set(RECORD_FIELDS) <= set(r) for r in loaded)
    assert loaded[1]["exact"] is False and loaded[1]["peak_gb"] == 5.0 and loaded[1]["seconds_per_step"] == 17.3
    assert "load_average" in loaded[1]  # a CPU measurement says how busy the machine was
    with pytest.raises(ValueError, match="lacks seconds_per_step"):
        write_records([{k: v for k, v in _record().items() if k != "seconds_per_step"}], tmp_path)


def test_the_tables_are_generated_between_the_markers_and_regenerating_changes_nothing(tmp_path, capsys):
    from bench import tables
    from bench.records import write_records

    results = tmp_path / "results"
    write_records([_record(), _record(mode="official", seconds_per_step=0.09)], results, run="train")
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Benchmarks\n\nintro\n\n{tables.BEGIN}\nold table\n{tables.END}\n\nafter\n", encoding="utf-8")
    argv = ["--results", str(results), "--doc", str(doc)]
    assert tables.main(argv + ["--check"]) == 1  # stale before generation
    assert tables.main(argv) == 0
    text = doc.read_text(encoding="utf-8")
    assert "old table" not in text and text.startswith("# Benchmarks\n\nintro") and text.endswith("after\n")
    assert "#### NVIDIA H200" in text and "| train 4 sources 1024px | fast | yes | 1 | 29 | 0.0651 | 65 s | 7.4 |" in text
    assert "| official |" in text and "seconds_per_1000_steps=65.1" in text
    assert tables.main(argv + ["--check"]) == 0 and tables.main(argv) == 0
    assert doc.read_text(encoding="utf-8") == text
    doc.write_text("no markers\n", encoding="utf-8")
    assert tables.main(argv) == 2 and "markers" in capsys.readouterr().err


def test_the_documents_tables_are_up_to_date_with_the_committed_results():
    from bench import tables

    assert tables.main(["--check"]) == 0


def test_convolution_roofline_from_recorded_shapes():
    from bench.breakdown import roofline

    # 3x3, padding 1: 2 x (1 x 2 x 8 x 8 outputs) x (4 x 3 x 3) multiply-adds
    flops, moved = roofline("aten::conv2d", [[1, 4, 8, 8], [2, 4, 3, 3], []], ["float", "float", ""],
                            ["", "", "", [1, 1], [1, 1], [1, 1], 1])
    assert flops == 2 * 2 * 64 * 36 and moved == (256 + 72 + 128) * 4
    # stride-2 transposed 3x3: every input pixel meets every kernel tap
    flops, _ = roofline("aten::conv_transpose2d", [[1, 4, 8, 8], [4, 2, 3, 3], []], ["float"] * 2 + [""],
                        ["", "", "", [2, 2], [0, 0], [0, 0], 1, [1, 1]])
    assert flops == 2 * 4 * 64 * 2 * 9
    flops, moved = roofline("aten::mm", [[3, 5], [5, 7]], ["c10::BFloat16"] * 2, None)
    assert flops == 2 * 3 * 5 * 7 and moved == (15 + 35 + 21) * 2


@pytest.mark.slow
def test_breakdown_attributes_a_training_step_to_categories_and_resolutions(tiny_files):
    from bench.breakdown import CATEGORIES, markdown, profile_breakdown, totals
    from bench.measure import files_problem
    from essence.training import TrainSettings

    problem = files_problem(torch.device("cpu"), tiny_files.generator, tiny_files.guide)
    result = profile_breakdown(problem, TrainSettings(), steps=1, device=torch.device("cpu"))
    by_category = {r["category"]: r for r in totals(result["rows"], "category")}
    assert set(by_category) <= set(CATEGORIES)
    for category in ("conv", "modulation/demodulation", "noise/bias/activation", "resampling", "CLIP resize",
                     "CLIP transformer", "optimiser"):
        assert by_category[category]["seconds_per_step"] > 0, category
    assert by_category["conv"]["gflop_per_step"] > 0 and by_category["CLIP transformer"]["gflop_per_step"] > 0
    resolutions = {r["resolution"] for r in result["rows"]}
    assert {"4", "8", "16", "32", "64", "clip"} <= resolutions
    assert {("conv", "64", "forward"), ("conv", "64", "backward")} <= {
        (r["category"], r["resolution"], r["pass"]) for r in result["rows"]}
    assert "## By category" in markdown(result, "tiny") and "FLOP / byte" in markdown(result, "tiny")


@pytest.mark.slow
def test_precision_study_reports_the_exact_objective_ratio_per_seed_and_target(models, pictures):
    from PIL import Image

    from bench.measure import bench_precision, format_precision
    from essence.training import TrainingTarget

    generator, guide = models
    targets = {name: TrainingTarget.read(Image.open(getattr(pictures, name))) for name in ("portrait", "cat")}
    sources = generator.sample_wplus(3, seed=1, truncation=0.7)
    study = bench_precision(generator, guide, targets, sources, steps=2, seeds=[0, 1])
    assert [(r["target"], r["seed"]) for r in study["runs"]] == [("portrait", 0), ("portrait", 1), ("cat", 0),
                                                                 ("cat", 1)]
    ratios = [r["approx_objective"] / r["exact_objective"] for r in study["runs"]]
    assert study["ratio_worst"] == pytest.approx(max(ratios)) and study["within_5_percent"] == (max(ratios) <= 1.05)
    assert "worst" in format_precision(study)


@pytest.mark.slow
def test_the_compile_experiment_compares_compiled_losses_and_gradients_with_eager(tiny_files):
    """Graph capture only (backend "eager": seconds, not minutes); the real compiler runs in the GPU script."""
    from bench.compiled import compile_step, format_compile_row
    from bench.measure import files_problem
    from essence.training import TrainSettings

    problem = files_problem(torch.device("cpu"), tiny_files.generator, tiny_files.guide)
    row = compile_step(problem, TrainSettings(steps=3), torch.device("cpu"), backend="eager")
    assert row["loss_relative_difference"] < 1e-6 and row["gradient_relative_difference"] < 1e-5
    assert row["trajectory_loss_max_relative_difference"] < 1e-5 and row["loss_steps_compared"] == 3
    assert "synthesize" not in vars(problem["generator"])  # the experiment leaves the generator as it was
    assert "compile" in format_compile_row({**row, "cache": "cold"})


def test_the_gpu_script_is_valid_bash_and_measures_the_graph_loop():
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_session.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text(encoding="utf-8")
    assert "bench/graph_step.py --device cuda" in text and "tests/test_graph_step.py" in text
    assert "--cpu-dry-run" in text


def test_the_encoder_variant_sections_time_encoding_and_training_with_and_without_chunks():
    jobs = plan(torch.device("cpu"), ["encode", "encoder_train"], train_steps=3)
    assert jobs == [{"kind": "encode"}, {"kind": "encoder_train", "steps": 3, "chunk": None},
                    {"kind": "encoder_train", "steps": 3, "chunk": 1}]
    encode = {"kind": "encode", "seconds": 0.5, "targets_per_second": 2.0, "peak_mb": 100.0}
    assert "encode one target" in format_row(encode) and "2.00 targets/s" in format_row(encode)
    step = {"kind": "encoder_train", "seconds_per_step": 4.0, "steps_per_second": 0.25, "chunk": 1, "sources": 5,
            "peak_mb": 7000.0}
    assert "5 sources chunk 1" in format_row(step) and "0.250 steps/s" in format_row(step)
    # on CUDA also the default run within a 12 GB card's memory, which says the chunk size it ended with
    assert plan(torch.device("cuda"), ["encoder_train"], train_steps=10)[-1] == {
        "kind": "encoder_train", "steps": 10, "chunk": None, "memory_gib": 11.5}
    small_card = {**step, "chunk": None, "memory_gib": 11.5, "chunk_used": 2}
    assert "5 sources in 11.5 GiB (chunk 2)" in format_row(small_card)
    with pytest.raises(ValueError, match="CUDA"):
        bench_encoder_train(torch.device("cpu"), 2, None, memory_gib=11.5)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_the_suite_cpu_plugin_charges_each_test_the_busy_time_around_it(tmp_path, capsys):
    """``./run test -n 0 -p bench.suite_cpu``: a test that computes for 0.3 s of CPU is charged at least
    that (machine-wide, so never less), and the summary lists it under its file."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from bench import suite_cpu

    (tmp_path / "test_work.py").write_text("import time\n\ndef test_busy():\n    end = time.process_time() + 0.3\n"
                                           "    while time.process_time() < end:\n        pass\n")
    out = tmp_path / "cpu.json"
    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, suite_cpu.OUT_ENV: str(out), "PYTHONPATH": repo}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "bench.suite_cpu", "-p", "no:xdist",
                           "-p", "no:cacheprovider", "test_work.py"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads(out.read_text())["tests"]["test_work.py::test_busy"]
    assert record["core_seconds"] >= 0.25 and record["seconds"] >= 0.25
    assert suite_cpu.main([str(out), "--top", "1"]) == 0
    assert "test_work.py" in capsys.readouterr().out
