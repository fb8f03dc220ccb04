"""Interrupted work: processes killed with SIGKILL (no cleanup code runs) during a download, a
direction or latent save, and a training run. On restart nothing looks complete that is not, the
earlier good files are intact, and leftovers are never taken for real files.

Each test runs the work in a child Python process and kills it at a controlled moment: after a
given number of downloaded bytes reached the disk, or at a hook (a function the child script
replaces so that it calls ``os.kill(os.getpid(), SIGKILL)``), or while training is under way.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
from comfy_stubs import comfy_env, extra_model_paths  # noqa: F401 (fixtures)

import essence
from essence.errors import MissingWeightsError
from essence.latents import LatentSet, load_latents
from essence.storage.downloads import download, part_path

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}"}


def _child(script: str, *args: object, **popen: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], env=_env(),
                            **popen)


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the child exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def _sigkill(proc: subprocess.Popen) -> None:
    assert proc.poll() is None, "the child finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


# ----------------------------------------------------------------------------- downloads

PAYLOAD = hashlib.sha256(b"seed").digest() * (3 * 2**20 // 32) + b"odd tail"  # 3 MiB + 8 bytes
SLICE = 16 * 1024


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD with Range support; while ``server.slow`` is set, 16 KiB every 5 ms."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *_args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self.server.ranges.append(self.headers.get("Range"))  # type: ignore[attr-defined]
        start = int((self.headers.get("Range") or "bytes=0-")[len("bytes="):].rstrip("-"))
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            for i in range(0, len(body), SLICE):
                self.wfile.write(body[i:i + SLICE])
                if self.server.slow:  # type: ignore[attr-defined]
                    time.sleep(0.005)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client was killed


@pytest.fixture
def slow_server() -> Iterator[http.server.ThreadingHTTPServer]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    httpd.slow, httpd.ranges, httpd.daemon_threads = True, [], True  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


DOWNLOADER = """
    import sys
    from essence.storage import download
    url, dest, sha = sys.argv[1:4]
    download(url, dest, sha256=sha or None, progress=False)
"""


@pytest.mark.slow
@pytest.mark.parametrize("checksum", [True, False], ids=["with-sha256", "without-checksum"])
def test_download_killed_midway_resumes_to_identical_bytes(slow_server, tmp_path: Path, checksum: bool) -> None:
    url = f"http://127.0.0.1:{slow_server.server_address[1]}/w.pt"
    dest = tmp_path / "w.pt"
    sha = hashlib.sha256(PAYLOAD).hexdigest() if checksum else ""
    proc = _child(DOWNLOADER, url, dest, sha)
    part = part_path(dest)
    # the downloader appends 1 MiB blocks: kill once the first one is on disk (about 1/3 through)
    _wait_for(lambda: part.is_file() and part.stat().st_size >= 2**20, proc, "1 MiB had arrived")
    _sigkill(proc)

    kept = part.read_bytes()
    assert not dest.exists(), "a killed download left a file under its final name"
    assert 2**20 <= len(kept) < len(PAYLOAD) and PAYLOAD.startswith(kept)
    with pytest.raises(MissingWeightsError):  # the .part is not a weight file for the lookup
        essence.load_generator(tmp_path)

    slow_server.slow = False
    download(url, dest, sha256=sha or None, progress=False)
    assert slow_server.ranges[-1] == f"bytes={len(kept)}-", "the next run did not resume"
    assert dest.read_bytes() == PAYLOAD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pt"]


# ----------------------------------------------------------------------------- direction and latent saves

SAVER = """
    import os, signal, sys
    import torch
    kind, path, kill_at = sys.argv[1:4]

    def die(*_args, **_kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

    if kill_at == "mid-write":      # the temporary file holds half of the new bytes
        import safetensors.torch as st
        real_save = st.save_file
        def torn_save(tensors, filename, metadata=None):
            real_save(tensors, filename, metadata=metadata)
            with open(filename, "r+b") as handle:
                handle.truncate(os.path.getsize(filename) // 2)
            die()
        st.save_file = torn_save
    elif kill_at == "before-rename":  # the temporary file is complete and on disk, not yet renamed
        os.replace = die
    import essence
    from essence.latents import LatentSet
    if kind == "direction":
        essence.Direction(torch.full((1, 18, 512), 2.0), {"name": "new"}).save(path)
    else:
        LatentSet(torch.full((256, 18, 512), 2.0)).save(path)
    print("finished without being killed")
"""


def _good_file(kind: str, path: Path) -> Callable[[], torch.Tensor]:
    """Write the earlier good file; return a function that loads the file's tensor again."""
    if kind == "direction":
        essence.Direction(torch.full((1, 18, 512), 1.0), {"name": "old"}).save(path)
        return lambda: essence.Direction.load(path).tensor
    LatentSet(torch.full((8, 18, 512), 1.0)).save(path)
    return lambda: load_latents(path).latents


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["mid-write", "before-rename"])
@pytest.mark.parametrize("kind", ["direction", "latents"])
def test_save_killed_leaves_the_earlier_file_intact(comfy_env, kind: str, kill_at: str) -> None:
    folder = comfy_env.dir("essence_directions")
    dest = folder / f"{kind}.safetensors"
    load = _good_file(kind, dest)
    before = load().clone()

    proc = _child(SAVER, kind, dest, kill_at, stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, out

    assert torch.equal(load(), before), "the earlier good file was damaged"
    strays = sorted(p.name for p in folder.iterdir() if p.name != dest.name)
    assert strays and all(s.startswith(f".{dest.name}.") and s.endswith(".tmp") for s in strays), strays
    # the leftover temporary file is never offered as a direction, nor loadable as one by mistake
    host = comfy_env.pack.nodes.host
    assert host.filename_list(host.DIRECTIONS_FOLDER) == [dest.name]
    assert comfy_env.node("EssenceLoad").INPUT_TYPES()["required"]["direction_file"][0] == [dest.name]


@pytest.mark.slow
def test_save_killed_at_a_random_moment_leaves_old_or_new_file(tmp_path: Path) -> None:
    """No hook: a 75 MB latent file is written over a good one and the child is killed as soon as the
    temporary file appears. Whatever the moment, the destination is the old or the new file, whole."""
    dest = tmp_path / "big.safetensors"
    load = _good_file("latents", dest)
    script = """
        import sys, torch
        from essence.latents import LatentSet
        latents = LatentSet(torch.full((2000, 18, 512), 2.0))
        print("ready", flush=True)
        sys.stdin.readline()
        latents.save(sys.argv[1])
    """
    proc = _child(script, dest, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.stdin.write("go\n")
    proc.stdin.flush()
    _wait_for(lambda: proc.poll() is not None or any(p.suffix == ".tmp" for p in tmp_path.iterdir()), proc,
              "the temporary file appeared")
    if proc.poll() is None:  # almost always: the write takes far longer than one 2 ms poll
        _sigkill(proc)
    else:  # a very fast disk finished first: then the new file must be complete
        assert proc.wait() == 0
    latents = load()
    assert latents.shape in ((8, 18, 512), (2000, 18, 512))
    assert torch.equal(latents, torch.full_like(latents, 1.0 if len(latents) == 8 else 2.0))
    # leftovers are hidden temporary files: Essence's ``.big.safetensors.*.tmp`` and, when the kill
    # lands inside safetensors' own writer (0.8 writes a ``.tmpXXXXXX`` beside the file first), that
    leftovers = [p.name for p in tmp_path.iterdir() if p != dest]
    assert all(name.startswith(".") and not name.endswith(".safetensors") for name in leftovers), leftovers


def test_leftovers_are_not_weight_files(comfy_env, tmp_path: Path, monkeypatch) -> None:
    """A killed download's ``.part`` / ``.part.json`` and a killed save's ``.*.tmp`` in a weights folder
    are neither found by the weight lookup nor offered by the ComfyUI loader dropdowns."""
    weights = tmp_path / "weights"
    weights.mkdir()
    monkeypatch.setenv("ESSENCE_WEIGHTS_DIR", str(weights))
    for name in ("stylegan2-ffhq-config-f.pt.part", "stylegan2-ffhq-config-f.pt.part.json",
                 ".stylegan2-ffhq-config-f.pt.a1b2c3.tmp"):
        (weights / name).write_bytes(b"partial")
    with pytest.raises(MissingWeightsError):
        essence.load_generator()
    folder = comfy_env.dir("essence_stylegan2")
    for name in ("big.pt.part", "big.pt.part.json", ".big.pt.x1y2.tmp"):
        (folder / name).write_bytes(b"partial")
    host = comfy_env.pack.nodes.host
    assert host.filename_list("essence_stylegan2") == ["stylegan2_tiny64.pt"]


# ----------------------------------------------------------------------------- training


@pytest.mark.slow
def test_training_killed_midway_writes_nothing_and_keeps_the_earlier_file(tiny_files, pictures, tmp_path: Path) -> None:
    out = tmp_path / "joker.safetensors"
    essence.Direction(torch.full((1, 10, 64), 1.0), {"name": "earlier"}).save(out)
    before = out.read_bytes()
    log = tmp_path / "train.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "essence", "train", str(pictures.portrait), "--out", str(out),
             "--generator", str(tiny_files.generator), "--guide", str(tiny_files.guide),
             "--sample", "2", "--steps", "100000", "--init", "random", "--device", "cpu"],
            cwd=tmp_path, env=_env(), stdout=sink, stderr=subprocess.STDOUT)
        _wait_for(lambda: b"Training 'portrait'" in log.read_bytes(), proc, "training started")
        time.sleep(1.0)  # well inside the optimisation loop
        _sigkill(proc)
    assert out.read_bytes() == before
    assert essence.Direction.load(out).meta["name"] == "earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["joker.safetensors", "train.log"]
