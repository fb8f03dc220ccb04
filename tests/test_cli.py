"""``python -m essence``: weights list / fetch and the demo's weight check."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from test_download import PAYLOAD, FileServer

from essence import cli
from essence.storage import weights

REPO = Path(__file__).resolve().parent.parent
DEMO_FILES = ("stylegan2-ffhq-config-f.pt", "e4e_ffhq_encode.pt", "ViT-B-32.pt")


@pytest.fixture(autouse=True)
def empty_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every folder Essence searches is an empty temporary one (the real weights/ is never read)."""
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv(weights.ENV_REPO_WEIGHTS_DIR, str(folder))
    monkeypatch.setenv(weights.ENV_WEIGHTS_DIR, str(tmp_path / "env-weights"))
    monkeypatch.setattr(weights, "installed_package_dirs", lambda role: [])  # e.g. face-recognition-models
    weights.set_folder_provider(None)
    weights.clear_sha_cache()
    yield folder
    weights.set_folder_provider(None)


def test_weights_list_shows_every_entry(capsys: pytest.CaptureFixture[str], empty_weights: Path) -> None:
    assert cli.main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for spec in weights.load_manifest():
        row = next(line for line in out.splitlines() if line.startswith(spec.name + " "))
        assert spec.role in row and "missing" in row and spec.licence_short in row
        assert str(empty_weights.parent / "env-weights" / spec.filename) in row  # where a fetch would put it
    assert "python -m essence weights fetch" in out


def test_weights_list_reports_found_files(capsys: pytest.CaptureFixture[str], empty_weights: Path) -> None:
    (empty_weights / "ViT-B-32.pt").write_bytes(b"not the real CLIP")
    (empty_weights / "stylegan2-ffhq-config-f.pt").write_bytes(b"someone's own conversion")
    assert cli.main(["weights", "list"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "corrupt" in rows["clip-vit-b-32"] and str(empty_weights / "ViT-B-32.pt") in rows["clip-vit-b-32"]
    assert "unverified" in rows["stylegan2-ffhq-config-f"]


def test_demo_without_weights_names_each_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo"]) == 2
    captured = capsys.readouterr()
    err = captured.err
    for spec in weights.demo_specs():
        assert spec.filename in err and spec.urls[0] in err and spec.licence in err
        assert f"python -m essence weights fetch {spec.name}" in err
    assert "Traceback" not in captured.out + err


def test_demo_looks_in_provider_folders(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    comfy = tmp_path / "comfy-models"
    weights.set_folder_provider(lambda folder: [comfy / folder])
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in DEMO_FILES)


def test_demo_with_unloadable_weights_fails_with_a_clear_error(capsys: pytest.CaptureFixture[str],
                                                               empty_weights: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Files that pass the quick size check but are not loadable stop the demo with a message."""
    small = [dataclasses.replace(s, size_bytes=10 if s.size_bytes else None) for s in weights.demo_specs()]
    monkeypatch.setattr(cli.app, "demo_specs", lambda: small)
    for spec in small:
        (empty_weights / spec.filename).write_bytes(b"0123456789")
    assert cli.main(["demo", "--out", str(empty_weights / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_demo_reports_a_damaged_file(capsys: pytest.CaptureFixture[str], empty_weights: Path) -> None:
    (empty_weights / "e4e_ffhq_encode.pt").write_bytes(b"truncated")
    assert cli.main(["demo"]) == 2
    assert "e4e_ffhq_encode.pt" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_as_a_subprocess_exits_2_without_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    env = dict(os.environ, ESSENCE_WEIGHTS_DIR=str(empty), ESSENCE_REPO_WEIGHTS_DIR=str(empty),
               PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-m", "essence", "demo"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert all(name in result.stderr for name in DEMO_FILES)


def test_user_errors_print_error_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["weights", "fetch", "no-such-weight"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and "no-such-weight" in captured.err
    assert "Traceback" not in captured.err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert cli.main(["weights"]) == 2
    assert cli.main(["no-such-command"]) == 2
    assert cli.main(["--help"]) == 0
    capsys.readouterr()


def test_weights_fetch_prints_licence_then_downloads(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with FileServer() as server:
        server.files["/g.pt"] = PAYLOAD
        spec = dataclasses.replace(
            weights.get_spec("generator"), urls=(server.url("/g.pt"),), url_checksums={}, known_copies=(),
            sha256=hashlib.sha256(PAYLOAD).hexdigest(), size_bytes=len(PAYLOAD))
        monkeypatch.setattr(cli.app, "demo_specs", lambda: [spec])
        dest = tmp_path / "chosen"
        assert cli.main(["weights", "fetch", "--dir", str(dest), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.index(spec.licence) < out.index("present:")
    assert "307 kB" in out
    assert (dest / spec.filename).read_bytes() == PAYLOAD


def test_weights_fetch_failure_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with FileServer() as server:
        spec = dataclasses.replace(weights.get_spec("generator"), urls=(server.url("/gone.pt"),), url_checksums={})
        monkeypatch.setattr(cli.app, "get_spec", lambda _name: spec)
        assert cli.main(["weights", "fetch", "generator", "--dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "HTTP 404" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# ./run, the checkout's entry point, and the commands messages suggest


@pytest.fixture()
def run_script(tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment for ``./run`` with a ready environment standing in for its .venv (this one)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    (venv / ".essence-installed").touch()
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    yield dict(os.environ, ESSENCE_VENV=str(venv), ESSENCE_WEIGHTS_DIR=str(empty),
               ESSENCE_REPO_WEIGHTS_DIR=str(empty), PYTHONPATH=str(REPO))


@pytest.mark.slow
@pytest.mark.parametrize("stdin", ["closed", "/dev/null"])
def test_run_demo_without_weights_or_stdin_exits_2_and_names_the_run_command(run_script: dict[str, str],
                                                                              stdin: str) -> None:
    """``./run demo <&-`` and ``./run demo </dev/null``: the missing-weights message, no traceback, and
    the fetch command as the user can type it there (``python -m essence`` lacks torch outside .venv)."""
    redirect = "<&-" if stdin == "closed" else "</dev/null"
    result = subprocess.run(["bash", "-c", f'./run demo {redirect}'], cwd=REPO, env=run_script,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert all(name in result.stderr for name in DEMO_FILES)
    assert "Fetch them all with: ./run essence weights fetch" in result.stderr
    assert "python -m essence" not in result.stderr


@pytest.mark.slow
def test_run_started_from_another_folder_reads_files_relative_to_that_folder(run_script: dict[str, str],
                                                                             tmp_path: Path) -> None:
    """``~/comfyui-essence/run essence info my.safetensors`` from the folder holding the file: its name
    means that folder's file, while the environment and the code are the checkout's."""
    import torch

    from essence.latents import Direction

    work = tmp_path / "work"
    work.mkdir()
    Direction(torch.zeros(1, 10, 64), {"name": "mine"}).save(work / "my.safetensors")
    env = {k: v for k, v in run_script.items() if k != "PYTHONPATH"}  # ./run finds the checkout's code itself
    result = subprocess.run(["bash", os.path.relpath(REPO / "run", work), "essence", "info", "my.safetensors"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "my.safetensors: direction [1, 10, 64]" in result.stdout
    (work / "essence").mkdir()  # a folder named like the package, in the caller's folder: not imported
    assert subprocess.run(["bash", str(REPO / "run"), "essence", "info", "my.safetensors"], cwd=work, env=env,
                          capture_output=True, timeout=120).returncode == 0


@pytest.mark.slow
def test_run_test_from_another_folder_takes_test_paths_relative_to_it(run_script: dict[str, str],
                                                                     tmp_path: Path) -> None:
    test_file = os.path.relpath(REPO / "tests" / "test_packaging.py", tmp_path)
    result = subprocess.run(["bash", str(REPO / "run"), "test", "--collect-only", "-q", "-m", "not slow", test_file],
                            cwd=tmp_path, env=run_script, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tests/test_packaging.py::" in result.stdout


def test_suggested_commands_fit_how_essence_was_started(monkeypatch: pytest.MonkeyPatch) -> None:
    from essence.storage import installation

    monkeypatch.setattr(installation.sys, "argv", [str(REPO / "essence" / "__main__.py")])  # python -m essence
    monkeypatch.chdir(REPO)
    assert weights.fetch_command() == "python -m essence weights fetch"  # a checkout, run with python
    monkeypatch.chdir(REPO / "tests")  # python -m essence finds a checkout's package from its folder only
    assert weights.fetch_command() == f"cd {REPO} && python -m essence weights fetch"
    assert installation.cli_command(from_anywhere=False) == "python -m essence"  # the running CLI's usage line
    monkeypatch.setattr(installation.sys, "argv", ["/opt/ComfyUI/main.py"])  # inside another program: its Python
    assert weights.fetch_command() == f"cd {REPO} && {sys.executable} -m essence weights fetch"
    monkeypatch.setenv(installation.ENV_CLI, "../essence/run essence")
    assert weights.fetch_command() == "../essence/run essence weights fetch"
    assert "Or run: ../essence/run essence weights fetch e4e-ffhq-encode" in weights.missing_message(
        weights.get_spec("encoder"))
    monkeypatch.delenv(installation.ENV_CLI)
    monkeypatch.setattr(installation.sys, "argv", ["/home/me/.local/bin/essence", "demo"])
    assert weights.fetch_command() == "essence weights fetch"
    monkeypatch.setattr(installation.sys, "argv", ["-c"])
    monkeypatch.setattr(installation, "checkout_root", lambda: None)  # installed with pip
    monkeypatch.setattr(installation.shutil, "which", lambda name: f"/venv/bin/{name}")
    assert weights.fetch_command() == "essence weights fetch"
    monkeypatch.setattr(installation.shutil, "which", lambda name: None)  # installed, script not on PATH
    assert weights.fetch_command() == f"{sys.executable} -m essence weights fetch"
