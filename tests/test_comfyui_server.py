"""The pack on a real ComfyUI server: it imports, registers its folders and nodes, lists its
templates, runs every example workflow with the tiny models, and stops cleanly on Cancel. With
Chromium and playwright at hand, every example is also loaded in the server's real frontend: no
overlapping nodes, the frontend's own ``app.graphToPrompt()`` gives the expected prompt, and it runs;
and a node's help page (``web/docs/<NodeName>.md``) is served and opens in the frontend's node docs panel.

Runs only when ``COMFYUI_DIR`` points at a ComfyUI checkout whose requirements (and Essence's
``requirements.txt``) are installed in the Python named by ``COMFYUI_PYTHON`` (default: the one
running pytest); the frontend checks also need ``playwright`` in the Python running pytest and
Chromium (``apt-get install chromium``), else they are skipped with the reason. E.g.::

    COMFYUI_DIR=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python \
        ~/ComfyUI/venv/bin/python -m pytest tests/test_comfyui_server.py

How the server is set up (tiny stand-in models, the real dlib landmark model from
face-recognition-models, an ``extra_model_paths.yaml`` for the directions): ``tests/real_comfyui.py``.
A test-only probe node (``tests/comfyui_probe``) is linked in beside the pack to report ComfyUI's
loaded models and Essence's model cache from inside the server.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from comfy_stubs import LANDMARKS_NAME
from PIL import Image
from real_comfyui import PACK_DIR_NAME, Server, frontend, frontend_unavailable, overlapping, running_server
from workflow_tools import (REPO, STAND_INS, TARGET_IMAGE, expected_init, load_workflow, quick_run, random_directions,
                            ui_to_api, workflow_files)

from essence import Direction

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not COMFYUI_DIR,
    reason="COMFYUI_DIR is not set: point it at a ComfyUI checkout (requirements installed in COMFYUI_PYTHON, "
           "default this Python) to run the nodes on a real ComfyUI server")]

PROBE_DIR = Path(__file__).resolve().parent / "comfyui_probe"
NODE_IDS = {"EssenceGeneratorLoader", "EssenceEncoderLoader", "EssenceGuideLoader", "EssenceLandmarkLoader",
            "EssenceIdentityLoader", "EssenceAlignFace", "EssenceInvertFace", "EssencePasteBack",
            "EssenceSampleLatents", "EssenceApply", "EssenceTrain", "EssenceSave", "EssenceLoad", "EssenceMix",
            "EssenceRender", "EssenceStrengthSweep", "EssenceMetrics", "EssenceTrainedEncoderLoader", "EssenceEncode",
            "EssenceTrainEncoder"}
DOCS = REPO / "web" / "docs"
HELP_TIMEOUT = 30_000  # ms


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    python = os.environ.get("COMFYUI_PYTHON")
    with running_server(tmp_path_factory.mktemp("comfyui-base"), random_directions(), COMFYUI_DIR,
                        python,
                        extra_node_packs=[PROBE_DIR]) as started:
        yield started


@pytest.fixture(scope="module")
def page(server):
    reason = frontend_unavailable()
    if reason:
        pytest.skip(f"the real frontend cannot be driven: {reason}")
    with frontend(server) as opened:
        yield opened


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
    """Images saved from Paste Back have the size of the photo that was loaded; a saved video has the
    loaded clip's size, frame count and frame rate."""
    for node_id, output in outputs.items():
        if prompt[node_id]["class_type"] == "SaveVideo":
            check_saved_video(server, prompt, output)
            continue
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


def check_saved_video(server: Server, prompt: dict[str, Any], output: dict[str, Any]) -> None:
    from essence.video import probe_video

    (clip,) = [n["inputs"]["file"] for n in prompt.values() if n["class_type"] == "LoadVideo"]
    loaded = probe_video(server.base / "input" / clip)
    for saved in output["images"]:
        saved_path = server.base / "output" / saved["subfolder"] / saved["filename"]
        info = probe_video(saved_path)
        assert (info.width, info.height, info.frames, info.rate) == \
            (loaded.width, loaded.height, loaded.frames, loaded.rate), (saved, info, loaded)


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


def test_metrics_node_measures_and_apply_uses_the_recommended_strength(server):
    prompt = {"1": {"class_type": "EssenceGeneratorLoader", "inputs": {"generator_file": "stylegan2-ffhq-config-f.pt"}},
              "2": {"class_type": "EssenceGuideLoader", "inputs": {"clip_file": "ViT-B-32.pt"}},
              "3": {"class_type": "EssenceLoad", "inputs": {"direction_file": "keanu.npy"}},
              "4": {"class_type": "LoadImage", "inputs": {"image": TARGET_IMAGE}},
              "5": {"class_type": "EssenceSampleLatents",
                    "inputs": {"generator": ["1", 0], "count": 3, "seed": 100, "truncation": 0.7}},
              "6": {"class_type": "EssenceMetrics",
                    "inputs": {"generator": ["1", 0], "guide": ["2", 0], "direction": ["3", 0], "target": ["4", 0],
                               "latents": ["5", 0], "strengths": "0,0.5,1", "protocol": "corrected",
                               "min_identity": 50.0}},
              "7": {"class_type": "EssenceApply", "inputs": {"latents": ["5", 0], "direction": ["6", 0],
                                                             "strength": 0.0, "layers": "all", "auto_strength": True}},
              "8": {"class_type": "EssenceRender", "inputs": {"generator": ["1", 0], "latents": ["7", 0]}},
              "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
              "10": {"class_type": "PreviewImage", "inputs": {"images": ["6", 3]}}}
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-4000:]
    assert len(entry["outputs"]["9"]["images"]) == 3 and len(entry["outputs"]["10"]["images"]) == 1


def cancelled_while_running(server: Server, prompt: dict[str, Any]) -> str:
    """Queue ``prompt``, press Cancel a few seconds into its run (ComfyUI's ``POST /interrupt``), and
    the type of the node that ComfyUI says was interrupted."""
    prompt_id = server.queue(prompt)
    deadline = time.monotonic() + 60
    while not server.get("/queue")["queue_running"]:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(3)  # well inside the training loop
    server.post("/interrupt", {})
    entry = server.wait(prompt_id)
    interrupted = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_interrupted"]
    assert interrupted, entry["status"]
    return interrupted[0]["node_type"]


def test_cancel_stops_training_and_saves_nothing(server):
    workflow = next(p for p in workflow_files() if p.stem == "essence_train")
    definitions = server.get("/object_info")
    prompt = ui_to_api(load_workflow(workflow), definitions,
                       lambda t, n, v: 20000 if (t, n) == ("EssenceTrain", "steps") else
                       ("cancelled" if (t, n) == ("EssenceSave", "filename_prefix") else v))
    assert cancelled_while_running(server, prompt) == "EssenceTrain"
    assert not [f for f in os.listdir(server.directions) if f.startswith("cancelled")]


def encoder_training(prefix: str, max_steps: int) -> dict[str, Any]:
    """Train Essence Encoder on generated faces, then Encode Essence with its output, applied to faces."""
    return {"1": {"class_type": "EssenceGeneratorLoader", "inputs": {"generator_file": "stylegan2-ffhq-config-f.pt"}},
            "2": {"class_type": "EssenceGuideLoader", "inputs": {"clip_file": "ViT-B-32.pt"}},
            "3": {"class_type": "EssenceEncoderLoader", "inputs": {"encoder_file": "e4e_ffhq_encode.pt"}},
            "4": {"class_type": "EssenceSampleLatents",
                  "inputs": {"generator": ["1", 0], "count": 2, "seed": 0, "truncation": 0.7}},
            "5": {"class_type": "EssenceTrainEncoder",
                  "inputs": {"encoder": ["3", 0], "generator": ["1", 0], "guide": ["2", 0], "sources": ["4", 0],
                             "data": "generated", "generated_count": 2, "heldout": 1, "max_steps": max_steps,
                             "lr": 1e-4, "lambda_consistency": 0.5, "lambda_reg": 3e-3, "seed": 0,
                             "filename_prefix": prefix, "validate_every": 1}},
            "6": {"class_type": "LoadImage", "inputs": {"image": TARGET_IMAGE}},
            "7": {"class_type": "EssenceEncode", "inputs": {"essence_encoder": ["5", 0], "images": ["6", 0],
                                                            "align": False, "generator": ["1", 0]}},
            "8": {"class_type": "EssenceApply", "inputs": {"latents": ["4", 0], "direction": ["7", 0],
                                                           "strength": 1.0, "layers": "all"}},
            "9": {"class_type": "EssenceRender", "inputs": {"generator": ["1", 0], "latents": ["8", 0]}},
            "10": {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}},
            "11": {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}}}


def test_train_encoder_saves_an_encoder_that_encodes_and_cancel_saves_nothing(server):
    folder = server.base / "models" / "essence_encoders"
    before = set(os.listdir(folder))
    entry = server.wait(server.queue(encoder_training("server_encoder", 1)))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-4000:]
    assert set(os.listdir(folder)) - before == {"server_encoder_00001.safetensors"}
    assert entry["outputs"]["5"]["text"] == ["server_encoder_00001.safetensors"]
    assert len(entry["outputs"]["10"]["images"]) == 2 and len(entry["outputs"]["11"]["images"]) == 1
    names = server.get("/object_info/EssenceTrainedEncoderLoader")["EssenceTrainedEncoderLoader"]["input"]
    assert "server_encoder_00001.safetensors" in names["required"]["encoder_file"][0]

    assert cancelled_while_running(server, encoder_training("cancelled_encoder", 20000)) == "EssenceTrainEncoder"
    assert not [f for f in os.listdir(folder) if f.startswith("cancelled")]


def probe(server: Server, generator_file: str = "stylegan2-ffhq-config-f.pt") -> dict[str, Any]:
    """The probe node's report (ComfyUI's loaded models, Essence's cache) from a prompt that also holds
    the generator's loader, so ComfyUI's node cache keeps the generator (its output is reused, not
    loaded again) and only an unload can take it off ComfyUI's list."""
    prompt = {"1": {"class_type": "EssenceGeneratorLoader", "inputs": {"generator_file": generator_file}},
              "2": {"class_type": "EssenceTestMemoryProbe", "inputs": {"generator": ["1", 0]}}}
    entry = server.wait(server.queue(prompt))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-4000:]
    return json.loads(entry["outputs"]["2"]["text"][0])


def test_unload_models_releases_essence_models(server):
    render = {"1": {"class_type": "EssenceGeneratorLoader", "inputs": {"generator_file": "stylegan2-ffhq-config-f.pt"}},
              "2": {"class_type": "EssenceSampleLatents",
                    "inputs": {"generator": ["1", 0], "count": 2, "seed": 0, "truncation": 0.7}},
              "3": {"class_type": "EssenceRender", "inputs": {"generator": ["1", 0], "latents": ["2", 0]}},
              "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}}
    assert server.wait(server.queue(render))["status"]["status_str"] == "success"
    before = probe(server)
    assert before["essence_runtimes"] == 1 and before["essence_cache"] == []  # ComfyUI owns the models
    assert before["generator_loaded"], before  # on ComfyUI's list of loaded models, after the node ran

    server.post("/free", {"unload_models": True})  # what the frontend's 'Unload Models' sends
    deadline = time.monotonic() + 30
    after = probe(server)
    while after["generator_loaded"] and time.monotonic() < deadline:  # the worker applies /free between prompts
        time.sleep(0.5)
        after = probe(server)
    assert not after["generator_loaded"] and not [m for m in after["loaded"] if ".essence." in m], after
    assert after["essence_cache"] == []


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.stem)
def test_example_workflow_in_the_real_frontend(server, page, path):
    """Loaded as the template browser loads it: no node or group overlaps another, the frontend's own
    graphToPrompt gives the prompt the pack's tests assume, and that prompt runs."""
    workflow = load_workflow(path)
    page.load(workflow)
    boxes = page.boxes()
    assert {b["id"] for b in boxes} == {n["id"] for n in workflow["nodes"]}
    assert not overlapping(boxes), overlapping(boxes)
    assert not overlapping(page.groups()), overlapping(page.groups())
    prompt = page.graph_to_prompt()
    assert not page.errors, page.errors
    definitions = server.get("/object_info")
    assert {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()} == \
        ui_to_api(workflow, definitions)
    quick = {node_id: {**node, "inputs": {name: value if isinstance(value, list) else
                                          quick_run(node["class_type"], name, value)
                                          for name, value in node["inputs"].items()}}
             for node_id, node in prompt.items()}
    entry = server.wait(server.queue(quick))
    assert entry["status"]["status_str"] == "success", json.dumps(entry["status"], indent=1)[-4000:]


def test_help_pages_are_served_where_the_frontend_looks(server):
    """ComfyUI serves the pack's WEB_DIRECTORY at /extensions/<folder>/; the frontend finds the folder from
    the node's python_module and asks for docs/<NodeName>/<locale>.md, then docs/<NodeName>.md."""
    info = server.get("/object_info")
    assert sorted(p.stem for p in DOCS.glob("*.md")) == sorted(NODE_IDS)
    for node_id in sorted(NODE_IDS):
        assert info[node_id]["python_module"] == f"custom_nodes.{PACK_DIR_NAME}"
        served = server.get(f"/extensions/{PACK_DIR_NAME}/docs/{node_id}.md")
        assert served == (DOCS / f"{node_id}.md").read_bytes(), node_id


def close_node_library(page) -> None:
    """Back out of an open help page and close the node library sidebar, as a user would."""
    help_page = page.locator(".node-help-content")
    if help_page.is_visible():
        help_page.locator("xpath=..").locator("button:has(.pi-arrow-left)").click()
        help_page.wait_for(state="detached", timeout=HELP_TIMEOUT)
    if page.locator(".node-lib-search-box").is_visible():
        page.click(".node-library-tab-button")
        page.locator(".node-lib-search-box").wait_for(state="detached", timeout=HELP_TIMEOUT)


def check_help_page_shown(server: Server, page, node_id: str) -> None:
    """The docs panel shows ``web/docs/<node_id>.md`` rendered: its title, its sections, an entry per input
    and output, and its last line, which neither the node's description nor its tooltips hold. (When the
    page cannot be fetched, the panel shows a ``.fallback-content`` built from those instead.)"""
    markdown = (DOCS / f"{node_id}.md").read_text(encoding="utf-8")
    lines = markdown.strip().splitlines()
    content = page.locator(".node-help-content .markdown-content")
    fallback = page.locator(".node-help-content .fallback-content")
    page.locator(".node-help-content .markdown-content h1, .node-help-content .fallback-content").first.wait_for(
        timeout=HELP_TIMEOUT)
    assert not fallback.count(), f"the frontend could not fetch the page and shows: {fallback.inner_text()[:300]}"
    assert content.locator("h1").inner_text() == lines[0].removeprefix("# ")
    assert content.locator("h2").all_inner_texts() == [line[3:] for line in lines if line.startswith("## ")]
    assert content.locator("li > strong").all_inner_texts() == re.findall(r"^- \*\*(\w+)\*\*", markdown, re.M)
    only_in_page = lines[-1]
    definition = server.get(f"/object_info/{node_id}")[node_id]
    assert only_in_page not in json.dumps(definition)
    assert only_in_page in content.inner_text()


def test_help_page_opens_from_the_node_library(server, page):
    """Node library sidebar: search for the node, hover its entry, click its "?" (help) button."""
    close_node_library(page.page)
    page.page.click(".node-library-tab-button")
    page.page.fill(".node-lib-search-box input", "Train Essence")
    entry = page.page.locator(".node-lib-tree-explorer .tree-leaf", has_text="Train Essence (TargetCLIP)")
    entry.hover(timeout=HELP_TIMEOUT)
    entry.locator(".help-button").click(timeout=HELP_TIMEOUT)
    check_help_page_shown(server, page.page, "EssenceTrain")
    assert not page.errors, page.errors
    close_node_library(page.page)


# Where on the page to click to select a node: the middle of its title bar, in the canvas's coordinates.
TITLE_POINT_JS = """(id) => {
    const canvas = window.app.canvas, node = window.app.graph.getNodeById(id);
    const [x, y] = canvas.ds.convertOffsetToCanvas([node.pos[0] + node.size[0] / 2,
                                                    node.pos[1] - window.LiteGraph.NODE_TITLE_HEIGHT / 2]);
    const box = canvas.canvas.getBoundingClientRect();
    return [box.left + x, box.top + y];
}"""


def test_help_page_opens_from_the_selection_toolbox(server, page):
    """On the canvas: click a Train Essence node's title to select it, then the info button of the
    selection toolbox above it."""
    close_node_library(page.page)
    workflow = {"last_node_id": 1, "last_link_id": 0, "nodes": [], "links": [], "groups": [], "config": {},
                "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4}
    page.load(workflow)
    node_id = page.page.evaluate("""() => { const node = window.LiteGraph.createNode('EssenceTrain');
        node.pos = [300, 200]; window.app.graph.add(node); window.app.canvas.setDirty(true, true);
        return node.id; }""")
    info = page.page.locator('[data-testid="info-button"]')
    for _attempt in range(3):  # a click before the canvas has drawn the new node selects nothing: click again
        page.page.mouse.click(*page.page.evaluate(TITLE_POINT_JS, node_id))
        deadline = time.monotonic() + HELP_TIMEOUT / 3000
        while not info.is_visible() and time.monotonic() < deadline:
            page.page.wait_for_timeout(200)
        if info.is_visible():
            break
    info.click(timeout=HELP_TIMEOUT)
    check_help_page_shown(server, page.page, "EssenceTrain")
    assert not page.errors, page.errors
    close_node_library(page.page)
