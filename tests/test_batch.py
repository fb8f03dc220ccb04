"""Batch jobs on a local Ray with 2 CPUs and the tiny models: complete reports, the same directions as
single runs, resume, independent failures, and a worker killed mid-task losing nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import essence
from essence import cli
from essence.scale import batch
from essence.scale import TrainModels, TrainWorker
from essence.training import EssenceJob, TrainSettings
from essence.errors import EssenceError
from essence.scale import BatchRunner, BatchTask, plan_workers

ray = pytest.importorskip("ray", reason="batch jobs need Ray: pip install -r requirements-dev.txt")
REPO = Path(__file__).resolve().parents[1]
STEPS = "4"
TARGETS = ("portrait", "headshot", "aligned")


def _train_options() -> list[str]:
    return ["--steps", STEPS, "--sample", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def targets(pictures, aligned_face: Path, tmp_path_factory) -> Path:
    """A folder of targets: three faces (the aligned one at 512 px: quicker to find than at 1024) and one
    damaged picture."""
    folder = tmp_path_factory.mktemp("targets")
    shutil.copy(pictures.portrait, folder / "portrait.jpg")
    shutil.copy(pictures.headshot, folder / "headshot.jpg")
    Image.open(aligned_face).reduce(2).save(folder / "aligned.jpg", quality=95)
    (folder / "broken.jpg").write_bytes(pictures.portrait.read_bytes()[:600])  # a truncated download
    return folder


@pytest.fixture(scope="module")
def trained(local_ray, tiny_files, targets: Path, tmp_path_factory) -> tuple[int, Path]:
    """``essence batch train`` over the targets folder: (exit code, output folder)."""
    out = tmp_path_factory.mktemp("batch-train")
    code = cli.main(["batch", "train", str(targets), "--out", str(out), *_train_options(), *tiny_files.cli,
                     "--no-progress"])
    return code, out


def _rows(out: Path) -> dict[str, dict]:
    return {row["key"]: row for row in json.loads((out / "report.json").read_text())["tasks"]}


@pytest.mark.slow
def test_batch_train_writes_a_direction_per_target_and_a_complete_report(trained):
    code, out = trained
    assert code == 2  # one target failed: the command says so, the others are done
    rows = _rows(out)
    assert set(rows) == {*TARGETS, "broken"}
    for key in TARGETS:
        row = rows[key]
        assert row["status"] == "done" and row["error"] is None and row["seconds"] > 0
        assert row["loss"] == pytest.approx(row["transfer"] + 0.5 * row["consistency"], abs=1e-5)
        assert row["init"] == "e4e inversion of the target"
        direction = essence.load_direction(out / f"{key}.safetensors")
        assert direction.meta["losses"]["total"] == pytest.approx(row["loss"])
    broken = rows["broken"]
    assert broken["status"] == "failed" and "broken.jpg" in broken["error"]
    assert not (out / "broken.safetensors").exists()
    summary = json.loads((out / "report.json").read_text())["summary"]
    assert (summary["done"], summary["failed"], summary["skipped"]) == (3, 1, 0)
    csv_lines = (out / "report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("key,status,seconds,output,error,worker") and len(csv_lines) == 5
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_batch_train_gives_the_directions_of_single_train_runs(trained, targets, tiny_files, tmp_path):
    _, out = trained
    for name in TARGETS:
        single = tmp_path / f"{name}.safetensors"
        assert cli.main(["train", str(targets / f"{name}.jpg"), "--out", str(single), *_train_options(),
                         *tiny_files.cli]) == 0
        expected = essence.load_direction(single)
        got = essence.load_direction(out / f"{name}.safetensors")
        torch.testing.assert_close(got.tensor, expected.tensor, rtol=1e-4, atol=1e-5)
        assert got.meta["losses"]["best_step"] == expected.meta["losses"]["best_step"]


@pytest.mark.slow
def test_a_rerun_skips_finished_work_and_redoes_damaged_outputs(trained, targets, tiny_files, tmp_path, capsys):
    _, first = trained
    out = tmp_path / "out"
    shutil.copytree(first, out)
    kept = out / "portrait.safetensors"
    before = kept.stat().st_mtime_ns
    damaged = out / "headshot.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:1000])  # a partial copy
    leftover = out / ".aligned.safetensors.0123456789ab.tmp"  # what a killed writer leaves
    leftover.write_bytes(b"partial")
    capsys.readouterr()
    code = cli.main(["batch", "train", str(targets), "--out", str(out), *_train_options(), *tiny_files.cli,
                     "--workers", "1", "--no-progress"])  # (what a rerun skips is the point here, not parallelism)
    assert code == 2  # the damaged picture still fails
    rows = _rows(out)
    assert rows["portrait"]["status"] == "skipped" and kept.stat().st_mtime_ns == before
    assert rows["portrait"]["loss"] == pytest.approx(_rows(first)["portrait"]["loss"])  # read from the file
    assert rows["aligned"]["status"] == "skipped"
    assert rows["headshot"]["status"] == "done"
    torch.testing.assert_close(essence.load_direction(damaged).tensor,
                               essence.load_direction(first / "headshot.safetensors").tensor, rtol=1e-4, atol=1e-5)
    assert rows["broken"]["status"] == "failed"
    assert not leftover.exists()
    assert "2 skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_batch_apply_edits_every_photo_with_every_direction(trained, tiny_files, generator, encoder, pictures,
                                                          tmp_path):
    _, directions = trained
    photos = []
    for name, picture in (("photo", pictures.portrait), ("cat", pictures.cat)):  # the cat: no face to find
        Image.open(picture).save(tmp_path / f"{name}.png")
        photos.append(tmp_path / f"{name}.png")
    out = tmp_path / "edited"
    chosen = [str(directions / "portrait.safetensors"), str(directions / "headshot.safetensors")]
    models = ["--generator", str(tiny_files.generator), "--encoder", str(tiny_files.encoder), "--device", "cpu"]
    code = cli.main(["batch", "apply", *chosen, "--photos", *map(str, photos), "--out", str(out),
                     "--strength", "0.8", *models, "--no-progress"])
    assert code == 2
    rows = _rows(out)
    assert {k: r["status"] for k, r in rows.items()} == {"portrait/photo": "done", "headshot/photo": "done",
                                                          "portrait/cat": "failed", "headshot/cat": "failed"}
    assert "no face found in cat.png" in rows["portrait/cat"]["error"]
    assert rows["portrait/photo"]["strength"] == 0.8
    # the same picture the single-process photo pipeline makes
    expected = essence.apply_to_photo(photos[0], essence.load_direction(chosen[1]), generator, encoder, 0.8)
    got = Image.open(out / "headshot" / "photo.png")
    assert got.size == Image.open(photos[0]).size
    difference = np.abs(np.asarray(got, dtype=np.int16) - np.asarray(expected, dtype=np.int16))
    assert difference.max() <= 2
    original = np.asarray(Image.open(photos[0]).convert("RGB"), dtype=np.int16)
    assert np.abs(np.asarray(got, dtype=np.int16) - original).max() > 50  # the face was edited
    # a rerun with another strength is another job: its pictures are made again, never reported as done
    made_at_08 = (out / "headshot" / "photo.png").read_bytes()
    again = ["batch", "apply", *chosen, "--photos", str(photos[0]), "--out", str(out), "--strength", "1.5", *models,
             "--workers", "1", "--no-progress"]
    assert cli.main(again) == 0
    assert {(r["status"], r["strength"]) for r in _rows(out).values()} == {("done", 1.5)}
    assert (out / "headshot" / "photo.png").read_bytes() != made_at_08
    # the same job again has nothing to do
    before = (out / "headshot" / "photo.png").stat().st_mtime_ns
    assert cli.main(again) == 0
    assert {r["status"] for r in _rows(out).values()} == {"skipped"}
    assert (out / "headshot" / "photo.png").stat().st_mtime_ns == before


@pytest.mark.slow
def test_a_worker_killed_mid_task_loses_nothing(local_ray, tiny_files, pictures, tmp_path):
    config = (EssenceJob(TrainSettings(steps=20), init="random", sample=2),
              TrainModels(str(tiny_files.generator), str(tiny_files.guide), device="cpu"))
    task = BatchTask("portrait", tmp_path / "portrait.safetensors", str(pictures.portrait))
    outcome: dict = {}
    with BatchRunner(TrainWorker, config, workers=1, gpus_per_worker=0, retries=1) as runner:
        thread = threading.Thread(target=lambda: outcome.update(
            report=runner.run([task], validate=lambda p: {"ok": essence.load_direction(p).name}, progress=False)))
        thread.start()
        busy = _wait_for_busy_worker(runner)
        os.kill(busy["pid"], signal.SIGKILL)
        thread.join(timeout=120)
    assert not thread.is_alive()
    record = outcome["report"].records[0]
    assert record.status == "done", record.error
    assert not record.worker.endswith(f":{busy['pid']}")  # done again by the restarted worker
    assert essence.load_direction(task.output).meta["hyperparameters"]["steps"] == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["portrait.safetensors"]  # no partial or temporary file


@pytest.mark.slow
def test_a_task_its_worker_finished_as_ctrl_c_came_is_reported_done(local_ray, ctrl_c_raises, tmp_path):
    """The worker writes its output, then Ctrl-C reaches this process before the task's result does:
    the report says what is on the disk (done), not stopped."""
    driver = os.getpid()

    class WritesThenCtrlC:  # defined here, so Ray's workers receive the class itself
        def __init__(self, config) -> None:
            pass

        def run(self, task) -> dict:
            Path(task.output).write_text("made")
            os.kill(driver, signal.SIGINT)
            time.sleep(5)  # the result comes after the interrupt
            return {}

    tasks = [BatchTask("a", tmp_path / "a.txt"), BatchTask("b", tmp_path / "b.txt")]
    with pytest.raises(KeyboardInterrupt) as stopped:
        with BatchRunner(WritesThenCtrlC, workers=1, gpus_per_worker=0) as runner:
            runner.run(tasks, validate=lambda path: {"text": path.read_text()}, progress=False)
    report = batch.BatchReport.of_stopped(stopped.value)
    assert [(r.key, r.status, r.details) for r in report.records] == [("a", "done", {"text": "made"}),
                                                                     ("b", "stopped", {})]


def _wait_for_busy_worker(runner: BatchRunner, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [s for s in runner.worker_status() if s["task"] is not None]
        if busy:
            return busy[0]
        time.sleep(0.05)
    raise AssertionError("no worker started the task")


def test_workers_fit_the_cluster():
    assert plan_workers({"CPU": 8.0}, tasks=100) == batch.WorkerPlan(8, 1.0, 0.0)
    assert plan_workers({"CPU": 8.0}, tasks=3) == batch.WorkerPlan(3, 1.0, 0.0)  # never more than the tasks
    assert plan_workers({"CPU": 8.0}, tasks=100, workers=2) == batch.WorkerPlan(2, 4.0, 0.0)
    assert plan_workers({"CPU": 16.0, "GPU": 4.0}, tasks=100) == batch.WorkerPlan(4, 1.0, 1.0)
    assert plan_workers({"CPU": 16.0, "GPU": 4.0}, tasks=100, gpus_per_worker=0).gpus == 0
    with pytest.raises(EssenceError, match="GPU"):
        plan_workers({"CPU": 8.0}, tasks=1, gpus_per_worker=1)


def test_tasks_must_not_share_a_name_or_an_output(tmp_path):
    runner = BatchRunner(TrainWorker)
    with pytest.raises(EssenceError, match="both named 'a'"):
        runner.run([BatchTask("a", tmp_path / "1"), BatchTask("a", tmp_path / "2")], progress=False)
    with pytest.raises(EssenceError, match="both write"):
        runner.run([BatchTask("a", tmp_path / "1"), BatchTask("b", tmp_path / "1")], progress=False)


@pytest.mark.slow
def test_without_ray_batch_says_how_to_install_it_and_the_rest_imports(monkeypatch, tmp_path, tiny_files, pictures,
                                                                       capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    code = cli.main(["batch", "train", str(pictures.portrait), "--out", str(tmp_path), *tiny_files.cli])
    assert code == 2
    assert 'pip install "ray>=' in capsys.readouterr().err
    probe = "import sys, essence, essence.cli, essence.scale, essence.cli.batch; print('ray' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_benchmark_times_the_commands_own_options(tmp_path):
    from bench.batch_rate import batch_config
    from bench.cli import build_parser as bench_parser

    full, models = batch_config("full", 3, "cpu")
    assert (full.settings.steps, full.sample, full.init, full.settings.chunk_size, full.mode) == (3, 4, "random", 1,
                                                                                                 "fast")
    assert models.device == "cpu" and models.generator is None  # the full-size models are built, not loaded
    tiny, models = batch_config("tiny", 3, "cpu")
    assert models.generator.endswith("stylegan2_tiny64.pt") and tiny.init == "auto"
    args = bench_parser().parse_args(["--only", "batch", "--batch-workers", "1", "2", "--batch-sizes", "tiny"])
    assert (args.only, args.batch_workers, args.batch_sizes) == (["batch"], [1, 2], ["tiny"])


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals")
@pytest.mark.parametrize("sent, status, line", [("SIGTERM", 143, "terminated"), ("SIGINT", 130, "interrupted")])
def test_kill_or_ctrl_c_ends_a_batch_with_the_report_of_what_finished(sent, status, line, pictures, tiny_files,
                                                                      ctrl_c_raises, tmp_path):
    """``kill`` (SIGTERM) once a task is done: the command stops its workers, writes the report (the
    finished task done, the others stopped) and ends with 143 in one line, without Ray's abort (134) or
    crash dump; Ctrl-C (SIGINT) the same way, with 130. ``essence batch`` starts its own local Ray, as a
    user's does."""
    targets = tmp_path / "targets"
    targets.mkdir()
    for name in ("a", "b", "c", "d"):
        shutil.copy(pictures.cat, targets / f"{name}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "essence", "batch", "train", str(targets), "--out", str(out), "--steps", "20",
               "--sample", "2", "--init", "random", "--workers", "1", "--no-progress", *tiny_files.cli]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    batch = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: list(out.glob("*.safetensors")) or batch.poll() is not None, timeout=240)
        batch.send_signal(getattr(signal, sent))
        stdout, stderr = batch.communicate(timeout=120)
    finally:
        batch.kill()
    assert batch.returncode == status, stderr
    assert stderr.strip().splitlines()[-1] == line
    assert "Traceback" not in stderr and f"{sent} received" not in stderr, stderr  # Ray's crash dump
    rows = _rows(out)
    done = sorted(key for key, row in rows.items() if row["status"] == "done")
    stopped = sorted(key for key, row in rows.items() if row["status"] == "stopped")
    assert done and stopped and sorted(done + stopped) == ["a", "b", "c", "d"], rows
    assert all("run the same command again" in rows[key]["error"] for key in stopped)
    assert sorted(p.name for p in out.iterdir()) == sorted([*(f"{k}.safetensors" for k in done), "report.csv",
                                                            "report.json"])  # no lock, no temporary file
    assert f"{len(stopped)} stopped" in stdout


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(0.05)
