"""``pip install .``: the wheel holds the library (with its weights manifest) and the ``essence``
command, and works away from the checkout; the checkout stays a ComfyUI node pack."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel pip builds from a copy of the project files (the build writes beside its sources)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "essence", src / "essence", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                           "--wheel-dir", str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = dist.glob("*.whl")
    return built


def test_the_wheel_holds_the_library_its_manifest_and_the_command(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(info).decode()
        metadata = archive.read(info.replace("entry_points.txt", "METADATA")).decode()
    packages = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert packages == {"essence"}  # not the nodes, tests or benchmark
    assert "essence/storage/weights_manifest.json" in names and "essence/cli/app.py" in names
    sub_packages = {p.parent.name for p in (Path(__file__).resolve().parents[1] / "essence").glob("*/__init__.py")}
    assert {f"essence/{name}/__init__.py" for name in sub_packages} <= set(names)  # every sub-package ships
    assert "essence = essence.cli:main" in entry_points
    assert "Requires-Dist: torch" in metadata and "License-Expression: MIT" in metadata


@pytest.mark.slow
def test_the_installed_package_runs_from_any_folder(wheel: Path, tmp_path: Path) -> None:
    """Unpacked as pip installs it, away from the checkout: the command runs, reads the packaged
    manifest, keeps weights in the user's data folder (not the checkout's weights/, so this is the
    installed copy), and its messages name the ``essence`` command."""
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    elsewhere.mkdir()
    script = tmp_path / "bin" / "essence"  # what pip writes for [project.scripts]
    script.parent.mkdir()
    script.write_text("import sys\nfrom essence.cli import main\nsys.exit(main())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESSENCE_")}
    env.update(PYTHONPATH=str(site), XDG_DATA_HOME=str(tmp_path / "data"))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), *args], cwd=elsewhere, env=env,
                              capture_output=True, text=True, timeout=120)

    usage = run("--help")
    assert usage.returncode == 0 and usage.stdout.startswith("usage: essence "), usage.stderr
    listing = run("weights", "list", "--quick")
    assert listing.returncode == 0, listing.stderr
    assert f"(would go to) {tmp_path / 'data' / 'essence' / 'weights' / 'e4e_ffhq_encode.pt'}" in listing.stdout
    assert "Download missing files with: essence weights fetch" in listing.stdout


def test_the_project_file_meets_the_comfy_registry_specification() -> None:
    """What the Comfy Registry reads from pyproject.toml: a node id without "ComfyUI", a static
    X.Y.Z version equal to the library's, a licence, and [tool.comfy] with the publisher, display
    name and the ComfyUI versions the pack works with; an icon only as a URL (an empty one would be
    published as the pack's icon)."""
    import re
    import tomllib

    import essence

    project_file = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    project, comfy = project_file["project"], project_file["tool"]["comfy"]
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,99}", project["name"]) and "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]) and project["version"] == essence.__version__
    assert project["license"] == "MIT" and (REPO / "LICENSE").is_file()
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert "Icon" not in comfy or comfy["Icon"].startswith("https://"), comfy.get("Icon")
    assert re.fullmatch(r"(>=|==|~=)\d+\.\d+\.\d+", comfy["requires-comfyui"])
