"""The example workflows load in ComfyUI's frontend and run: checked statically against the node
definitions (types, links, widget values as the frontend lays them out), then executed in-process
with the tiny models standing in for the real files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from comfy_stubs import drop_pack, fake_comfyui, import_pack
from PIL import Image
from real_comfyui import overlapping
from workflow_tools import (CLIP_VIDEO, CONTROL_VALUES, CORE_NODES, DIRECTION_FILES, ENCODER_FILE, INPUT_IMAGES,
                            LANDMARKS_AUTO,
                            STAND_INS, VIDEO_PREVIEW, VIRTUAL_NODES, definitions_of, expected_init, input_images,
                            load_workflow, quick_run, random_directions, run_prompt, socket_inputs, stage_tiny_files,
                            ui_to_api, widget_slots, workflow_files)

EXPECTED = {"essence_apply", "essence_train", "essence_mix_sweep", "essence_train_photo", "essence_train_best",
            "essence_video", "essence_encode"}
FILE_VALUES = {name for _folder, name in STAND_INS} | set(DIRECTION_FILES) | set(INPUT_IMAGES) | {LANDMARKS_AUTO,
                                                                                                  CLIP_VIDEO,
                                                                                                  ENCODER_FILE}
TITLE_HEIGHT = 30  # LiteGraph's NODE_TITLE_HEIGHT
TOP_LEVEL = {"last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra", "version"}


@pytest.fixture(scope="module")
def definitions():
    pack = import_pack()
    try:
        yield definitions_of(pack), pack
    finally:
        drop_pack()


def test_the_examples_are_there():
    assert {p.stem for p in workflow_files()} == EXPECTED


def is_file_dropdown(pack, node_type: str, name: str) -> bool:
    """Dropdowns listing files (model folders, ComfyUI's input folder): their options depend on the
    user's folders, so the examples must name files the pack documents."""
    if node_type in ("LoadImage", "LoadVideo"):
        return name in ("image", "file")
    validate = getattr(pack.NODE_CLASS_MAPPINGS.get(node_type), "VALIDATE_INPUTS", None)
    return validate is not None and name in validate.__code__.co_varnames


def check_widget_values(node: dict, definition: dict, pack) -> None:
    slots = widget_slots(definition)
    values = node.get("widgets_values", [])
    where = f"node {node['id']} ({node['type']})"
    assert len(values) == len(slots), f"{where}: {len(values)} widget values for widgets {[s[0] for s in slots]}"
    for (name, kind, options), value in zip(slots, values):
        if name == "control_after_generate":
            assert value in CONTROL_VALUES, f"{where}: {value!r}"
        elif name == "upload":
            assert value == "image", where
        elif name == VIDEO_PREVIEW:
            assert value == "", where
        elif is_file_dropdown(pack, node["type"], name):
            assert value in FILE_VALUES, f"{where}.{name}: {value!r} is not a documented file"
        elif isinstance(kind, list):
            assert value in kind, f"{where}.{name}: {value!r} not in {kind}"
        elif kind == "COMBO":
            assert value in options["options"], f"{where}.{name}: {value!r} not in {options['options']}"
        elif kind == "INT":
            assert isinstance(value, int) and options["min"] <= value <= options["max"], f"{where}.{name}={value!r}"
        elif kind == "FLOAT":
            assert isinstance(value, (int, float)) and options["min"] <= value <= options["max"], f"{where}.{name}"
        elif kind == "STRING":
            assert isinstance(value, str), f"{where}.{name}"
        elif kind == "BOOLEAN":
            assert isinstance(value, bool), f"{where}.{name}"


def check_sockets(node: dict, definition: dict) -> None:
    """The sockets, in order, then any widgets fed by a link (each linked, in widget order)."""
    where = f"node {node['id']} ({node['type']})"
    expected_in = [(name, kind) for name, kind, _optional in socket_inputs(definition)]
    fed = [i for i in node["inputs"] if "widget" in i]
    assert [(i["name"], i["type"]) for i in node["inputs"] if "widget" not in i] == expected_in, where
    widgets = [(name, kind) for name, kind, _options in widget_slots(definition)]
    assert [(i["name"], i["type"]) for i in fed] == [w for w in widgets if w[0] in {i["name"] for i in fed}], where
    assert node["inputs"][len(expected_in):] == fed and all(i["widget"] == {"name": i["name"]} for i in fed), where
    assert all(i["link"] is not None for i in fed), f"{where}: a widget input without a link"
    for (name, _kind, optional), socket in zip(socket_inputs(definition), node["inputs"]):
        assert optional or socket["link"] is not None, f"{where}: required input {name} is not connected"
    expected_out = list(zip(definition["output_name"], definition["output"]))
    assert [(o["name"], o["type"]) for o in node["outputs"]] == expected_out, where


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.stem)
def test_workflow_matches_the_node_definitions(path: Path, definitions):
    defs, pack = definitions
    ui = load_workflow(path)
    assert set(ui) >= TOP_LEVEL and ui["version"] == 0.4
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]) and ui["last_node_id"] >= max(nodes)
    assert ui["last_link_id"] >= max((link[0] for link in ui["links"]), default=0)
    for node in ui["nodes"]:
        if node["type"] in VIRTUAL_NODES:
            assert len(node["widgets_values"]) == len(VIRTUAL_NODES[node["type"]])
            continue
        assert node["type"] in defs, f"unknown node type {node['type']}"
        check_sockets(node, defs[node["type"]])
        check_widget_values(node, defs[node["type"]], pack)
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        source, target = nodes[src], nodes[dst]
        assert defs[source["type"]]["output"][src_slot] == kind, f"link {link_id}: source is not {kind}"
        assert target["inputs"][dst_slot]["type"] in (kind, "*"), f"link {link_id}: target is not {kind}"
        assert target["inputs"][dst_slot]["link"] == link_id and link_id in source["outputs"][src_slot]["links"]
    linked = {i["link"] for n in ui["nodes"] for i in n["inputs"] if i["link"] is not None}
    assert linked == {link[0] for link in ui["links"]}


def check_pasted_photos(prompt: dict, outputs: dict, images: dict) -> None:
    """An image output fed by Paste Back is the loaded photo at its size, changed around the face only."""
    for sink_id, result in outputs.items():
        if "images" not in prompt[sink_id]["inputs"]:  # a video (tests/test_video.py checks its frames) or text sink
            continue
        node = prompt[prompt[sink_id]["inputs"]["images"][0]]
        if node["class_type"] != "EssencePasteBack":
            continue
        photo = images[prompt[node["inputs"]["photos"][0]]["inputs"]["image"]]
        assert result.shape == photo.shape
        changed = (result != photo).any(dim=-1).float().mean().item()
        assert 0.05 < changed < 0.95, changed


def test_core_node_layouts_match_comfyui():
    """LoadImage's widgets are [filename, 'image'] (its upload widget); a seed gets its control widget."""
    assert [s[0] for s in widget_slots(CORE_NODES["LoadImage"])] == ["image", "upload"]
    assert [s[0] for s in widget_slots(CORE_NODES["SaveImage"])] == ["filename_prefix"]
    seeded = {"input": {"required": {"seed": ["INT", {"default": 0, "min": 0, "max": 9}],
                                     "other": ["ESSENCE_LATENT", {}], "x": ["FLOAT", {}]}}}
    assert [s[0] for s in widget_slots(seeded)] == ["seed", "control_after_generate", "x"]


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.stem)
def test_thumbnail_is_a_small_square_picture(path: Path):
    """The template browser shows ``<name>.jpg`` in a square card (tests/build_workflows.py draws it)."""
    thumb = path.with_suffix(".jpg")
    assert thumb.is_file(), f"{thumb.name} is missing (run tests/build_workflows.py)"
    assert thumb.stat().st_size < 100_000
    with Image.open(thumb) as image:
        assert image.format == "JPEG" and image.width == image.height and 256 <= image.width <= 512
        extrema = image.convert("L").getextrema()
        assert extrema[1] - extrema[0] > 32  # not a blank placeholder


def saved_boxes(workflow: dict) -> list[dict]:
    """Each node's box as saved, title bar (30 px, drawn above ``pos``) included."""
    return [{"id": n["id"], "title": n.get("title", n["type"]), "x": n["pos"][0], "y": n["pos"][1] - TITLE_HEIGHT,
             "w": n["size"][0], "h": n["size"][1] + TITLE_HEIGHT} for n in workflow["nodes"]]


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.stem)
def test_layout_has_no_overlaps_and_every_node_sits_in_one_group(path: Path):
    """As saved; tests/test_comfyui_server.py checks the same boxes as the real frontend sizes them."""
    workflow = load_workflow(path)
    boxes = saved_boxes(workflow)
    assert not overlapping(boxes)
    groups = [{"title": g["title"], "x": g["bounding"][0], "y": g["bounding"][1], "w": g["bounding"][2],
               "h": g["bounding"][3]} for g in workflow["groups"]]
    assert groups and not overlapping(groups)
    for box in boxes:
        if box["title"] == "Note":
            continue
        inside = [g["title"] for g in groups if g["x"] <= box["x"] and box["x"] + box["w"] <= g["x"] + g["w"]
                  and g["y"] <= box["y"] and box["y"] + box["h"] <= g["y"] + g["h"]]
        assert len(inside) == 1, (box, inside)


SLOW_EXAMPLES = {"essence_train_best", "essence_train_photo", "essence_video", "essence_encode"}  # 2-3 s each


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if p.stem in SLOW_EXAMPLES else p
                                  for p in workflow_files()], ids=lambda p: p.stem)
def test_workflow_runs_with_the_tiny_models(path: Path, tmp_path):
    models = stage_tiny_files(tmp_path, random_directions())
    with fake_comfyui(models) as env:
        defs = definitions_of(env.pack)
        prompt = ui_to_api(load_workflow(path), defs, quick_run)
        outputs = run_prompt(prompt, env.run, input_images(tmp_path))
        texts = {k for k in outputs if prompt[k]["class_type"] == "PreviewAny"}
        assert outputs and all(isinstance(outputs[k], torch.Tensor) and outputs[k].ndim == 4
                               for k in outputs.keys() - texts)
        assert all(isinstance(outputs[k], str) and outputs[k].strip() for k in texts)
        check_pasted_photos(prompt, outputs, input_images(tmp_path))
        saves = [n for n in prompt.values() if n["class_type"] == "EssenceSave"]
        saved = sorted(p.name for p in (models / "essence_directions").glob("*.safetensors"))
        assert saved == [f"{n['inputs']['filename_prefix']}_00001.safetensors" for n in saves]
        for name in saved:
            assert env.pack.essence.Direction.load(models / "essence_directions" / name).meta["init"] == \
                expected_init(prompt)


@pytest.mark.slow
def test_train_best_example_keeps_the_best_candidate_and_applies_its_recommended_strength(tmp_path):
    """essence_train_best: Train outputs the best of its 4 candidates, Metrics records a recommended
    strength on it, and Apply (auto strength) edits the new faces at exactly that strength."""
    path = next(p for p in workflow_files() if p.stem == "essence_train_best")
    models = stage_tiny_files(tmp_path, random_directions())
    with fake_comfyui(models) as env:
        results: dict[str, tuple] = {}

        def run(kind: str, **inputs):
            results[kind] = env.run(kind, **inputs)
            return results[kind]

        prompt = ui_to_api(load_workflow(path), definitions_of(env.pack), quick_run)
        assert [n["inputs"]["candidates"] for n in prompt.values() if n["class_type"] == "EssenceTrain"] == [4]
        run_prompt(prompt, run, input_images(tmp_path))
    best = results["EssenceTrain"][0]
    assert best.meta["candidates"] == 4 and best.meta["selection"]["rank"] == 1
    recommended = results["EssenceMetrics"][0].auto_strength
    assert recommended is not None
    edits = [source["edits"][-1] for source in results["EssenceApply"][0].sources]
    assert len(edits) == 4
    assert all(e["strength"] == recommended and e["strength_from"] == "recommended (auto)" for e in edits)
