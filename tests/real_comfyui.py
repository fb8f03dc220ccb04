"""A real ComfyUI server with the pack and the tiny models, and its real frontend in headless Chromium.

Used by ``tests/test_comfyui_server.py`` and by ``tests/build_workflows.py`` (the thumbnails).

* ``COMFYUI_DIR``: a ComfyUI checkout; ``COMFYUI_PYTHON``: the Python with its requirements and
  Essence's (default: the running one).
* The frontend needs Chromium (``apt-get install chromium``; ``CHROMIUM`` names another binary) and
  the ``playwright`` package in the Python that drives it (its own browsers are not used).

The server runs on the CPU from a temporary base directory: this repository is linked into its
``custom_nodes/``, the tiny fixtures stand in for the real model files under the examples' names
(and an essence encoder trained from them for one update, ``workflow_tools.tiny_essence_encoder``),
dlib's real landmark model is linked in from the package that installed it (face-recognition-models),
the example pictures are in its ``input/`` folder, and the directions folder comes from an
``extra_model_paths.yaml``.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

from workflow_tools import REPO, stage_tiny_files

PACK_DIR_NAME = "comfyui-essence"
START_TIMEOUT = 180
RUN_TIMEOUT = 300
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"]


class Server:
    def __init__(self, url: str, log: Path, base: Path, directions: Path, process: subprocess.Popen):
        self.url, self.log, self.base, self.directions, self.process = url, log, base, directions, process

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            body = response.read()
            return json.loads(body) if response.headers.get_content_type() == "application/json" else body

    def post(self, path: str, data: dict[str, Any]) -> Any:
        request = urllib.request.Request(self.url + path, data=json.dumps(data).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            raise AssertionError(f"POST {path}: {error.code} {error.read().decode()}") from None
        return json.loads(body) if body else None

    def queue(self, prompt: dict[str, Any]) -> str:
        answer = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        assert not answer.get("node_errors"), answer
        return answer["prompt_id"]

    def wait(self, prompt_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"]["status_str"] in ("success", "error"):
                    return entry
            assert self.process.poll() is None, f"ComfyUI exited; log:\n{self.log.read_text()[-4000:]}"
            time.sleep(0.5)
        raise AssertionError(f"prompt {prompt_id} did not finish in {RUN_TIMEOUT} s")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(base: Path, directions: dict[str, Any], comfyui_dir: str,
                   python: str | None = None, extra_node_packs: Sequence[Path] = ()) -> Iterator[Server]:
    """ComfyUI serving ``base`` (staged here) on a free local port until the block ends.
    ``directions`` (file name -> array) live only in the extra model path, as a user's shared folder would;
    ``extra_node_packs`` (folders) are linked into ``custom_nodes/`` beside the pack."""
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / PACK_DIR_NAME).symlink_to(REPO, target_is_directory=True)
    for pack in extra_node_packs:
        (base / "custom_nodes" / pack.name).symlink_to(pack, target_is_directory=True)
    stage_tiny_files(base, {})
    extra = base / "shared-models"
    stage_tiny_files(extra, directions)
    (base / "extra_model_paths.yaml").write_text(
        f"essence_test:\n    base_path: {extra / 'models'}\n    essence_directions: essence_directions\n")
    port, log = free_port(), base / "comfyui.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ESSENCE_WEIGHTS_DIR": str(base / "no-weights")}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [python or sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
             "--base-directory", str(base), "--extra-model-paths-config", str(base / "extra_model_paths.yaml"),
             "--disable-auto-launch", "--database-url", "sqlite:///:memory:"],
            cwd=comfyui_dir, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(f"http://127.0.0.1:{port}", log, base, extra / "models" / "essence_directions", process)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, f"ComfyUI did not start; log:\n{server.log_text()[-4000:]}"
            try:
                server.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, f"ComfyUI not up after {START_TIMEOUT} s"
                time.sleep(1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


# ----------------------------------------------------------------------------- the frontend

def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def frontend_unavailable() -> str | None:
    """Why the real frontend cannot be driven here, or None when it can."""
    if importlib.util.find_spec("playwright") is None:
        return f"the playwright package is not installed in {sys.executable} (pip install playwright)"
    if chromium_path() is None:
        return "no Chromium found (apt-get install chromium, or set CHROMIUM)"
    return None


# Each node's box as the canvas draws it: LiteGraph keeps ``pos`` at the top-left of the body and draws
# the title bar above it, so the box starts ``NODE_TITLE_HEIGHT`` higher.
BOXES_JS = """() => {
    const title = window.LiteGraph.NODE_TITLE_HEIGHT;
    return window.app.graph._nodes.map(n => ({id: n.id, type: n.type, title: n.title,
        x: n.pos[0], y: n.pos[1] - title, w: n.size[0], h: n.size[1] + title}));
}"""
GROUPS_JS = """() => window.app.graph._groups.map(g => ({title: g.title, x: g._bounding[0], y: g._bounding[1],
                                                    w: g._bounding[2], h: g._bounding[3]}))"""
# Frame nodes and groups in the canvas (scale and offset of LiteGraph's DragAndScale: screen = (p + offset) * scale).
FIT_JS = """(margin) => {
    const canvas = window.app.canvas, el = canvas.canvas, t = window.LiteGraph.NODE_TITLE_HEIGHT;
    const boxes = window.app.graph._nodes.map(n => [n.pos[0], n.pos[1] - t, n.size[0], n.size[1] + t])
        .concat(window.app.graph._groups.map(g => Array.from(g._bounding)));
    const x0 = Math.min(...boxes.map(b => b[0])), y0 = Math.min(...boxes.map(b => b[1]));
    const x1 = Math.max(...boxes.map(b => b[0] + b[2])), y1 = Math.max(...boxes.map(b => b[1] + b[3]));
    const scale = Math.min(el.width / (x1 - x0 + 2 * margin), el.height / (y1 - y0 + 2 * margin));
    canvas.ds.scale = scale;
    canvas.ds.offset = [el.width / (2 * scale) - (x0 + x1) / 2, el.height / (2 * scale) - (y0 + y1) / 2];
    canvas.setDirty(true, true);
    canvas.draw(true, true);
    return scale;
}"""
# A clean canvas for pictures and checks: no first-run template dialog, minimap or stats, and every
# node drawn in full detail at any zoom.
QUIET_SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
                  "LiteGraph.Canvas.MinFontSizeForLOD": 0, "Comfy.Workflow.Persist": False}


def overlapping(boxes: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of boxes (x, y, w, h) that share any area, named by title."""
    pairs = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and \
                    b["y"] < a["y"] + a["h"]:
                pairs.append((f"{a['title']} ({a.get('id', 'group')})", f"{b['title']} ({b.get('id', 'group')})"))
    return pairs


class Frontend:
    """ComfyUI's own web page in headless Chromium, driven through its ``app`` object."""

    def __init__(self, page: Any, errors: list[str]):
        self.page, self.errors = page, errors

    def load(self, workflow: dict[str, Any]) -> None:
        """Load a UI workflow as the template browser does, then let the canvas settle."""
        self.page.evaluate("async (w) => { await window.app.loadGraphData(w, true, true, null); }", workflow)
        self.page.wait_for_timeout(300)

    def boxes(self) -> list[dict[str, Any]]:
        return self.page.evaluate(BOXES_JS)

    def groups(self) -> list[dict[str, Any]]:
        return self.page.evaluate(GROUPS_JS)

    def graph_to_prompt(self) -> dict[str, Any]:
        """The API prompt the frontend itself would queue."""
        return self.page.evaluate("async () => (await window.app.graphToPrompt()).output")

    def render(self, margin: int = 24) -> bytes:
        """The whole graph framed in the canvas, as PNG bytes of the canvas alone (no menus over it)."""
        self.page.evaluate(FIT_JS, margin)
        self.page.wait_for_timeout(300)
        self.page.evaluate(FIT_JS, margin)  # once more: images in LoadImage nodes may have loaded since
        url = self.page.evaluate("() => window.app.canvas.canvas.toDataURL('image/png')")
        return base64.b64decode(url.split(",", 1)[1])


@contextlib.contextmanager
def frontend(server: Server, width: int = 1600, height: int = 1000) -> Iterator[Frontend]:
    """The server's page in a fresh headless Chromium profile, ready once ``app.graph`` exists."""
    from playwright.sync_api import sync_playwright

    server.post("/settings", QUIET_SETTINGS)
    with tempfile.TemporaryDirectory(prefix="essence-chromium-") as profile, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height}, device_scale_factor=1)
        try:
            # Only the local server is reached: the page's calls to outside services fail at once.
            context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(server.url)
                          else route.abort())
            page = context.pages[0] if context.pages else context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.url, wait_until="load", timeout=120_000)
            page.wait_for_function("() => window.app && window.app.graph && window.app.canvas && window.LiteGraph",
                                   timeout=120_000)
            page.wait_for_timeout(1000)
            # Frontend 1.27.10 itself throws once while applying its settings at start-up ("Cannot read
            # properties of undefined (reading 'id')", with or without this pack): only later errors count.
            errors.clear()
            yield Frontend(page, errors)
        finally:
            context.close()
