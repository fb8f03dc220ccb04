"""Two ComfyUI prompts, or two CLI processes, using the same model cache and the same folders at once.

- Threads: two threads asking the library for the same model at the same moment get one object,
  loaded once (``essence.runtime``'s cache lock).
- Processes: two ComfyUI servers (or two prompts) saving with Save Essence's counter naming into
  one directions folder never overwrite each other, and every file loads.
- Processes: two ``python -m essence sample --out same.safetensors`` at once leave one complete file.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import essence
import essence.networks.loaders
from essence.latents import load_latents

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}"}


def test_two_threads_loading_one_model_share_one_load(tiny_files, monkeypatch) -> None:
    calls = []
    real = essence.networks.loaders.load_generator_file

    def slow_loader(path, device):
        calls.append(threading.get_ident())
        time.sleep(0.3)  # a big file: the second thread arrives while the first is still loading
        return real(path, device)

    monkeypatch.setattr(essence.networks.loaders, "load_generator_file", slow_loader)
    barrier = threading.Barrier(2)
    results: list[object] = [None, None]

    def prompt(i: int) -> None:
        barrier.wait()
        results[i] = essence.load_generator(tiny_files.generator)

    threads = [threading.Thread(target=prompt, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(calls) == 1, "the same file was loaded twice"
    assert results[0] is not None and results[0] is results[1]


SAVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import torch
    from comfy_stubs import fake_comfyui

    models, who, count, go = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
    with fake_comfyui(models) as env:
        lib = env.pack.essence
        while not go.exists():          # start both writers at the same moment
            time.sleep(0.005)
        for i in range(count):
            tensor = torch.zeros(1, 10, 64)
            tensor[0, 0, 0] = (who * 1000 + i) / 1000  # each save's tag, at a plausible direction size
            (name,) = env.run("EssenceSave", direction=lib.Direction(tensor), filename_prefix="race")
            print(name, flush=True)
""")


@pytest.mark.slow
def test_two_processes_saving_with_counter_names_never_overwrite(tmp_path: Path) -> None:
    models, go = tmp_path / "models", tmp_path / "go"
    script = tmp_path / "saver.py"
    script.write_text(SAVER)
    count = 25
    procs = [subprocess.Popen([sys.executable, str(script), str(models), str(who), str(count), str(go)],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for who in (1, 2)]
    time.sleep(0.5)
    go.touch()
    outputs = [p.communicate(timeout=120) for p in procs]
    for p, (_out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    names = [line for out, _ in outputs for line in out.split()]
    folder = models / "essence_directions"
    files = sorted(p.name for p in folder.iterdir())
    assert len(names) == len(set(names)) == 2 * count, "two saves reported the same file name"
    assert files == sorted(names), f"stray or missing files: {sorted(set(files) ^ set(names))}"
    values = sorted(round(float(essence.Direction.load(folder / name).tensor[0, 0, 0]) * 1000) for name in files)
    assert values == sorted(who * 1000 + i for who in (1, 2) for i in range(count)), "a save was overwritten"


@pytest.mark.slow
def test_two_cli_samples_to_one_file_leave_one_complete_file(tiny_files, tmp_path: Path) -> None:
    out = tmp_path / "same.safetensors"
    generator = tiny_files.generator
    procs = [subprocess.Popen([sys.executable, "-m", "essence", "sample", "--count", "64", "--seed", str(seed),
                               "--out", str(out), "--generator", str(generator), "--device", "cpu"],
                              cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (1, 2)]
    for p in procs:
        _out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.safetensors"]  # no temporary files left
    latents = load_latents(out)
    seeds = {source["seed"] for source in latents.sources}
    assert len(latents) == 64 and len(seeds) == 1  # one writer's complete file, not a mix
    expected = essence.sample_latents(essence.load_generator(generator), 64, seed=seeds.pop())
    # computed again in this process: equal up to rounding; another seed's latents differ by whole units
    torch.testing.assert_close(latents.latents, expected.latents, rtol=0, atol=1e-6)
