"""Write the example workflows (``workflows/*.json``, ComfyUI UI format 0.4) and their thumbnails.

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/its/python \
        /path/to/its/python tests/build_workflows.py

(the Python running it needs Essence's requirements and ``playwright``; Chromium comes from
``apt-get install chromium``; see ``tests/real_comfyui.py``). ``--no-thumbnails`` writes the JSON
files only and needs neither ComfyUI nor a browser. Names of examples (``essence_encode ...``) after
the options write only those.

The graphs are declared below by node type and input name; node layouts (sockets, widget order)
come from the nodes' own ``INPUT_TYPES`` through ``workflow_tools.widget_slots``, the frontend's
rule. Nodes are placed in columns inside titled groups, each node at least as big as the frontend
makes it (so the frontend keeps the saved size): a node that gains an input moves its neighbours
instead of covering them.

Each thumbnail is the graph itself as ComfyUI's real frontend draws it (notes left out): a real
server with the pack is started, every example is loaded with the frontend's own
``app.loadGraphData``, checked for overlapping nodes, framed and screenshotted. It shows what the
workflow does, not a picture pretending to be its result.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # the library, for essence.storage

from comfy_stubs import fake_comfyui  # noqa: E402
from workflow_tools import (CLIP_VIDEO, ENCODER_FILE, LANDMARKS_AUTO, PHOTO_IMAGE, TARGET_IMAGE,  # noqa: E402
                            VIDEO_PREVIEW, WORKFLOWS, definitions_of, random_directions, socket_inputs,
                            stage_tiny_files, widget_slots)

THUMBNAIL_SIZE = 400   # square, like ComfyUI's own template thumbnails (the browser shows them square)
RENDER_SIZE = 1400     # the canvas is drawn this big, then scaled down: crisper than drawing at 400
NOTE_COLOUR = {"color": "#432", "bgcolor": "#653"}
GROUP_COLOUR = "#3f789e"

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
LPIPS_NOTE = (
    "- essence_lpips/alexnet-owt-7be5be79.pth (torchvision's AlexNet, BSD-3-Clause; for refine 'pti': LPIPS), "
    "with `pip install lpips` in ComfyUI's Python.")
ENCODER_NOTE = (
    "Essence encoder (ComfyUI/models/essence_encoders/): one you trained with Train Essence Encoder (saved as "
    "essence_encoder_00001.safetensors) or `python -m essence train-encoder`; none is published. It works only "
    "with the generator it was trained against.")
DIRECTIONS_NOTE = (
    "Essences (ComfyUI/models/essence_directions/): your own files from Save Essence, or TargetCLIP's "
    "published directions (keanu.npy, joker.npy, elsa.npy, ...) from the dirs/ folder of "
    "github.com/hila-chefer/TargetCLIP.")


# The frontend's geometry (LiteGraph, ComfyUI frontend 1.27): a node's title bar is drawn above its
# ``pos``; its body holds one 20 px row per socket (inputs and outputs side by side) and one 24 px row
# per widget. A saved size at least that big is kept as it is.
NODE_WIDTH = 320
TITLE_HEIGHT = 30
SLOT_HEIGHT = 20
WIDGET_HEIGHT = 24
IMAGE_NODE_HEIGHT = 340   # LoadImage shows the picture under its widgets
VIDEO_NODE_HEIGHT = 520   # LoadVideo shows the clip under its widgets (the example's portrait clip: 475 px)
GAP = 40                  # between nodes, columns and groups
GROUP_TITLE = 44          # a group's title bar (font 24) plus a margin
GROUP_PAD = 16


@dataclass
class Node:
    id: int
    type: str
    values: dict[str, Any]
    title: str | None = None
    links_in: dict[str, tuple["Node", int]] = field(default_factory=dict)
    pos: tuple[int, int] = (0, 0)
    size: tuple[int, int] = (NODE_WIDTH, 0)


@dataclass
class Note:
    id: int
    text: str
    size: tuple[int, int]
    pos: tuple[int, int] = (0, 0)

    def extent(self) -> tuple[int, int]:
        return self.size[0], self.size[1] + TITLE_HEIGHT


@dataclass
class Group:
    """Titled frame around columns of nodes (one stage of the workflow)."""
    title: str
    columns: list[list[Node]]
    pos: tuple[int, int] = (0, 0)

    def extent(self) -> tuple[int, int]:
        widths = [max(n.size[0] for n in column) for column in self.columns]
        heights = [sum(n.size[1] + TITLE_HEIGHT for n in column) + GAP * (len(column) - 1) for column in self.columns]
        return (sum(widths) + GAP * (len(widths) - 1) + 2 * GROUP_PAD,
                max(heights) + GROUP_TITLE + 2 * GROUP_PAD)

    def place(self, x: int, y: int) -> None:
        self.pos = (x, y)
        left = x + GROUP_PAD
        for column in self.columns:
            top = y + GROUP_TITLE + GROUP_PAD
            for node in column:
                node.pos = (left, top + TITLE_HEIGHT)
                top += node.size[1] + TITLE_HEIGHT + GAP
            left += max(n.size[0] for n in column) + GAP

    def to_ui(self) -> dict[str, Any]:
        width, height = self.extent()
        return {"title": self.title, "bounding": [self.pos[0], self.pos[1], width, height], "color": GROUP_COLOUR,
                "font_size": 24, "flags": {}}


class Graph:
    """Nodes and links of one workflow, written out in ComfyUI's UI format (version 0.4)."""

    def __init__(self, definitions: dict[str, dict[str, Any]]):
        self.defs = definitions
        self.nodes: list[Node] = []
        self.notes: list[Note] = []
        self.groups: list[Group] = []

    def add(self, node_type: str, title: str | None = None, **inputs: Any) -> Node:
        node = Node(len(self.nodes) + len(self.notes) + 1, node_type, {}, title)
        for name, value in inputs.items():
            (node.links_in if isinstance(value, tuple) else node.values)[name] = value
        node.size = (NODE_WIDTH, self._body_height(node_type))
        self.nodes.append(node)
        return node

    def note(self, text: str, size: tuple[int, int] = (420, 150)) -> Note:
        note = Note(len(self.nodes) + len(self.notes) + 1, text, size)
        self.notes.append(note)
        return note

    def group(self, title: str, *columns: list[Node]) -> Group:
        group = Group(title, list(columns))
        self.groups.append(group)
        return group

    def arrange(self, *columns: list[Note | Group]) -> None:
        """Place notes and groups: each argument is one column of them, top to bottom, left to right."""
        x = 0
        for column in columns:
            y = 0
            for block in column:
                if isinstance(block, Group):
                    block.place(x, y)
                else:
                    block.pos = (x, y + TITLE_HEIGHT)
                y += block.extent()[1] + GAP
            x += max(block.extent()[0] for block in column) + GAP
        placed = {id(n) for g in self.groups for column in g.columns for n in column}
        missing = [n.type for n in self.nodes if id(n) not in placed]
        if missing:
            raise ValueError(f"put every node in a group; these are in none: {missing}")

    def _body_height(self, node_type: str) -> int:
        if node_type == "LoadImage":
            return IMAGE_NODE_HEIGHT
        if node_type == "LoadVideo":
            return VIDEO_NODE_HEIGHT
        definition = self.defs[node_type]
        rows = max(len(socket_inputs(definition)), len(definition["output"]))
        widgets = len(widget_slots(definition))
        return rows * SLOT_HEIGHT + widgets * WIDGET_HEIGHT + 16

    def to_ui(self) -> dict[str, Any]:
        links, order = self._links(), self._order()
        nodes = [self._ui_node(node, links, order[node.id]) for node in self.nodes]
        notes = [{"id": n.id, "type": "Note", "pos": list(n.pos), "size": list(n.size), "flags": {}, "order": 0,
                  "mode": 0, "inputs": [], "outputs": [], "properties": {"text": ""}, "widgets_values": [n.text],
                  **NOTE_COLOUR} for n in self.notes]
        ui_links = [[i, src.id, slot, dst.id, dst_slot, kind] for i, (src, slot, dst, dst_slot, kind) in links.items()]
        all_nodes = sorted(nodes + notes, key=lambda n: n["id"])
        return {"last_node_id": max(n["id"] for n in all_nodes), "last_link_id": max(links, default=0),
                "nodes": all_nodes, "links": ui_links, "groups": [g.to_ui() for g in self.groups], "config": {},
                "extra": {"ds": {"scale": 0.7, "offset": [40, 40]}}, "version": 0.4}

    def _inputs(self, node: Node) -> list[tuple[str, str, bool, bool]]:
        """The node's input slots as the frontend saves them, (name, type, optional, is a widget): its
        sockets, then each widget that a link feeds, in widget order."""
        definition = self.defs[node.type]
        fed = [(name, kind, False, True) for name, kind, _options in widget_slots(definition) if name in node.links_in]
        return [(name, kind, optional, False) for name, kind, optional in socket_inputs(definition)] + fed

    def _links(self) -> dict[int, tuple[Node, int, Node, int, str]]:
        links = {}
        for dst in self.nodes:
            sockets = [name for name, _kind, _optional, _widget in self._inputs(dst)]
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
        inputs = [{"name": name, "type": kind, **({"widget": {"name": name}} if widget else {}),
                   "link": incoming.get((node.id, index)), **({"shape": 7} if optional else {})}
                  for index, (name, kind, optional, widget) in enumerate(self._inputs(node))]
        outputs = [{"name": name, "type": kind, "links": outgoing.get(slot, []), "slot_index": slot}
                   for slot, (name, kind) in enumerate(zip(definition["output_name"], definition["output"]))]
        widgets = [self._widget_value(node, name, kind, options) for name, kind, options in widget_slots(definition)]
        return {"id": node.id, "type": node.type, **({"title": node.title} if node.title else {}),
                "pos": list(node.pos), "size": list(node.size), "flags": {},
                "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": {"Node name for S&R": node.type}, "widgets_values": widgets}

    @staticmethod
    def _widget_value(node: Node, name: str, kind: Any, options: dict[str, Any]) -> Any:
        if name == "control_after_generate":
            return node.values.get("control_after_generate", "fixed")
        if name == "upload":
            return "image"
        if name == VIDEO_PREVIEW:
            return ""
        if name in node.values:
            return node.values[name]
        return options.get("default", kind[0] if isinstance(kind, list) and kind else None)


# ----------------------------------------------------------------------------- the examples


def apply_essence(defs: dict[str, dict[str, Any]]) -> Graph:
    """(a) Apply a saved essence to random faces and compare before / after."""
    g = Graph(defs)
    note = g.note(MODELS_NOTE + "\n\n" + DIRECTIONS_NOTE, (460, 230))
    gen = g.add("EssenceGeneratorLoader", generator_file="stylegan2-ffhq-config-f.pt")
    essence = g.add("EssenceLoad", direction_file="keanu.npy")
    faces = g.add("EssenceSampleLatents", "Random Faces", generator=(gen, 0), count=4, seed=7, truncation=0.7)
    edited = g.add("EssenceApply", latents=(faces, 0), direction=(essence, 0), strength=1.0, layers="all",
                  auto_strength=False)
    before = g.add("EssenceRender", "Render Before", generator=(gen, 0), latents=(faces, 0), resolution="full")
    after = g.add("EssenceRender", "Render After", generator=(gen, 0), latents=(edited, 0), resolution="full")
    shown = g.add("PreviewImage", "Before", images=(before, 0))
    saved = g.add("SaveImage", "After", images=(after, 0), filename_prefix="essence/applied")
    models = g.group("Models", [gen, essence])
    main = g.group("Apply the essence to random faces", [faces, edited], [before, after], [shown, saved])
    g.arrange([note], [models, main])
    return g


def train_essence(defs: dict[str, dict[str, Any]]) -> Graph:
    """(b) Train an essence from a target picture, save it, and apply it to new faces."""
    g = Graph(defs)
    note = g.note("Train an essence from a picture of the target (several pictures of the same target can be "
                  "batched). 1000 steps is the paper's setting; a GPU is recommended. The result is saved to "
                  "models/essence_directions/my_essence_00001.safetensors.\n\n" + MODELS_NOTE, (460, 270))
    gen = g.add("EssenceGeneratorLoader", generator_file="stylegan2-ffhq-config-f.pt")
    guide = g.add("EssenceGuideLoader", clip_file="ViT-B-32.pt")
    target = g.add("LoadImage", "Target Picture", image=TARGET_IMAGE)
    sources = g.add("EssenceSampleLatents", "Training Faces", generator=(gen, 0), count=4, seed=0, truncation=0.7)
    trained = g.add("EssenceTrain", target=(target, 0), sources=(sources, 0), generator=(gen, 0),
                    guide=(guide, 0), steps=1000, lambda_transfer=1.0, lambda_consistency=0.5, seed=0, mode="fast",
                    init="random", chunk_size=0, clip_preprocessing="official", preview_every=50)
    save = g.add("EssenceSave", direction=(trained, 0), filename_prefix="my_essence")
    preview = g.add("PreviewImage", "Training Preview", images=(trained, 1))
    faces = g.add("EssenceSampleLatents", "New Faces", generator=(gen, 0), count=4, seed=123, truncation=0.7)
    edited = g.add("EssenceApply", latents=(faces, 0), direction=(trained, 0), strength=1.0, layers="all",
                  auto_strength=False)
    images = g.add("EssenceRender", generator=(gen, 0), latents=(edited, 0), resolution="full")
    result = g.add("SaveImage", images=(images, 0), filename_prefix="essence/trained")
    models = g.group("Models", [gen, guide])
    train = g.group("Train an essence from a picture", [target, sources], [trained], [save, preview])
    use = g.group("Apply it to new faces", [faces, edited], [images, result])
    g.arrange([models, note], [train, use])
    return g


def mix_and_sweep(defs: dict[str, dict[str, Any]]) -> Graph:
    """(c) Mix two essences and sweep the mix's strength over two faces."""
    g = Graph(defs)
    note = g.note("Mix two essences (weights may be negative) and see the mix at five strengths, one row "
                  "per face.\n\n" + DIRECTIONS_NOTE, (460, 200))
    gen = g.add("EssenceGeneratorLoader", generator_file="stylegan2-ffhq-config-f.pt")
    first = g.add("EssenceLoad", "Load Essence 1", direction_file="keanu.npy")
    second = g.add("EssenceLoad", "Load Essence 2", direction_file="joker.npy")
    mixed = g.add("EssenceMix", direction_1=(first, 0), weight_1=0.6, direction_2=(second, 0), weight_2=0.6)
    faces = g.add("EssenceSampleLatents", "Faces", generator=(gen, 0), count=2, seed=11, truncation=0.7)
    grid = g.add("EssenceStrengthSweep", generator=(gen, 0), latents=(faces, 0), direction=(mixed, 0),
                 strength_start=0.0, strength_end=1.2, steps=5, layers="all")
    saved = g.add("SaveImage", images=(grid, 0), filename_prefix="essence/mix_sweep")
    models = g.group("Models and essences", [gen, first, second])
    main = g.group("Mix, then sweep the strength", [mixed, faces], [grid], [saved])
    g.arrange([note], [models, main])
    return g


def train_from_photo(defs: dict[str, dict[str, Any]]) -> Graph:
    """(d) Train an essence from a target picture, apply it to a photo's face and paste it back."""
    g = Graph(defs)
    note = g.note("Train an essence from a picture of the target, starting from the target's own e4e latent "
                  "(init 'auto', as TargetCLIP does), then give the face in your photo that essence: the photo "
                  "is aligned and inverted, the generator is tuned to the face (refine 'pti': pivotal tuning, "
                  "so the edit keeps the person's likeness), the face is edited, rendered by that tuned "
                  "generator and pasted back along its outline (hair and background stay the photo's).\n\n"
                  + MODELS_NOTE + "\n" + FACES_NOTE + "\n" + LPIPS_NOTE, (520, 360))
    gen = g.add("EssenceGeneratorLoader", generator_file="stylegan2-ffhq-config-f.pt")
    guide = g.add("EssenceGuideLoader", clip_file="ViT-B-32.pt")
    encoder = g.add("EssenceEncoderLoader", encoder_file="e4e_ffhq_encode.pt")
    landmarks = g.add("EssenceLandmarkLoader", landmarks_file=LANDMARKS_AUTO)
    target = g.add("LoadImage", "Target Picture", image=TARGET_IMAGE)
    sources = g.add("EssenceSampleLatents", "Training Faces", generator=(gen, 0), count=4, seed=0, truncation=0.7)
    trained = g.add("EssenceTrain", target=(target, 0), sources=(sources, 0), generator=(gen, 0),
                    guide=(guide, 0), steps=1000, lambda_transfer=1.0, lambda_consistency=0.5, seed=0, mode="fast",
                    init="auto", chunk_size=0, clip_preprocessing="official", preview_every=50,
                    encoder=(encoder, 0), landmarks=(landmarks, 0))
    save = g.add("EssenceSave", direction=(trained, 0), filename_prefix="my_photo_essence")
    photo = g.add("LoadImage", "Your Photo", image=PHOTO_IMAGE)
    face = g.add("EssenceInvertFace", encoder=(encoder, 0), landmarks=(landmarks, 0), images=(photo, 0),
                 face_index=0, no_face="error", refine="pti", generator=(gen, 0))
    aligned = g.add("PreviewImage", "Aligned Face", images=(face, 1))
    edited = g.add("EssenceApply", latents=(face, 0), direction=(trained, 0), strength=1.0, layers="all",
                  auto_strength=False)
    rendered = g.add("EssenceRender", generator=(gen, 0), latents=(edited, 0), resolution="full")
    shown = g.add("PreviewImage", "Edited Face", images=(rendered, 0))
    pasted = g.add("EssencePasteBack", photos=(photo, 0), faces=(rendered, 0), alignment=(face, 2), feather=0.1)
    result = g.add("SaveImage", images=(pasted, 0), filename_prefix="essence/photo_edit")
    models = g.group("Models", [gen, guide, encoder, landmarks])
    train = g.group("Train an essence from a picture", [target, sources], [trained], [save])
    edit = g.group("Give the face in your photo that essence", [photo], [face, aligned],
                   [edited, rendered, shown], [pasted, result])
    g.arrange([models, note], [train, edit])
    return g


def train_best_essence(defs: dict[str, dict[str, Any]]) -> Graph:
    """(e) Train several candidate essences, keep the best, measure it and apply it at its recommended strength."""
    g = Graph(defs)
    note = g.note("Train 4 candidate essences together (different starts) and keep the one that scores best on "
                  "held-out faces. Essence Metrics measures the kept essence on other held-out faces over a "
                  "strength sweep and records the strength with the best target similarity that keeps identity; "
                  "Apply Essence with auto strength uses it. Connect Load Identity Model "
                  "(essence_identity/model_ir_se50.pth, ArcFace) to Essence Metrics to judge identity with "
                  "ArcFace instead of the CLIP proxy.\n\n" + MODELS_NOTE, (460, 330))
    gen = g.add("EssenceGeneratorLoader", generator_file="stylegan2-ffhq-config-f.pt")
    guide = g.add("EssenceGuideLoader", clip_file="ViT-B-32.pt")
    target = g.add("LoadImage", "Target Picture", image=TARGET_IMAGE)
    sources = g.add("EssenceSampleLatents", "Training Faces", generator=(gen, 0), count=4, seed=0, truncation=0.7)
    trained = g.add("EssenceTrain", "Train 4 Candidates", target=(target, 0), sources=(sources, 0),
                    generator=(gen, 0), guide=(guide, 0), steps=1000, lambda_transfer=1.0, lambda_consistency=0.5,
                    seed=0, mode="fast", init="random", chunk_size=0, clip_preprocessing="official",
                    preview_every=50, candidates=4)
    preview = g.add("PreviewImage", "Best Candidate", images=(trained, 1))
    scores = g.add("PreviewAny", "Candidates' Scores", source=(trained, 2))
    held_out = g.add("EssenceSampleLatents", "Held-out Faces", generator=(gen, 0), count=4, seed=321,
                     truncation=0.7)
    measured = g.add("EssenceMetrics", "Measure and Pick Strength", generator=(gen, 0), guide=(guide, 0),
                     direction=(trained, 0), target=(target, 0), latents=(held_out, 0))
    curve = g.add("PreviewImage", "Strength Curve", images=(measured, 3))
    table = g.add("PreviewAny", "Metrics", source=(measured, 1))
    faces = g.add("EssenceSampleLatents", "New Faces", generator=(gen, 0), count=4, seed=123, truncation=0.7)
    edited = g.add("EssenceApply", "Apply at Recommended Strength", latents=(faces, 0), direction=(measured, 0),
                   strength=1.0, layers="all", auto_strength=True)
    images = g.add("EssenceRender", generator=(gen, 0), latents=(edited, 0), resolution="full")
    result = g.add("PreviewImage", "Result", images=(images, 0))
    models = g.group("Models", [gen, guide])
    train = g.group("Train candidates, keep the best", [target, sources], [trained, preview, scores])
    measure = g.group("Measure it, pick its strength", [held_out], [measured, curve, table])
    use = g.group("Apply it at that strength", [faces, edited], [images, result])
    g.arrange([models, note], [train, use], [measure])
    return g


def video_essence(defs: dict[str, dict[str, Any]]) -> Graph:
    """(f) Give the face in a video clip an essence, frame by frame, keeping its sound and frame rate."""
    g = Graph(defs)
    note = g.note("Give the face in a video clip an essence. Load Video + Get Video Components give the frames "
                  "as one IMAGE batch; Invert Face with smoothing 'normal' treats the batch as one clip and "
                  "smooths the face's crop over time at the clip's frame rate, so the edited face does not "
                  "shimmer, and with refine 'pti' tunes one generator to all the frames (STIT's way: "
                  "pti_passes passes, one step a frame), so the edited face stays the person in the clip. "
                  "Frames without a face are left as they are, and each edited face is pasted back along its "
                  "outline. Create Video puts the pasted frames back together with the clip's sound at its "
                  "frame rate. Every frame is held in memory: keep clips short here, or use `python -m essence "
                  "apply ESSENCE --video IN --out OUT --refine pti` (or `essence batch video` on Ray) for long "
                  "ones.\n\n"
                  + MODELS_NOTE + "\n" + FACES_NOTE + "\n" + LPIPS_NOTE + "\n\n" + DIRECTIONS_NOTE, (520, 440))
    gen = g.add("EssenceGeneratorLoader", generator_file="stylegan2-ffhq-config-f.pt")
    encoder = g.add("EssenceEncoderLoader", encoder_file="e4e_ffhq_encode.pt")
    landmarks = g.add("EssenceLandmarkLoader", landmarks_file=LANDMARKS_AUTO)
    essence = g.add("EssenceLoad", direction_file="keanu.npy")
    clip = g.add("LoadVideo", "Your Clip", file=CLIP_VIDEO)
    parts = g.add("GetVideoComponents", video=(clip, 0))
    faces = g.add("EssenceInvertFace", encoder=(encoder, 0), landmarks=(landmarks, 0), images=(parts, 0),
                  face_index=0, no_face="skip", smoothing="normal", frame_rate=(parts, 2), refine="pti",
                  generator=(gen, 0))
    edited = g.add("EssenceApply", latents=(faces, 0), direction=(essence, 0), strength=1.0, layers="all",
                   auto_strength=False)
    rendered = g.add("EssenceRender", generator=(gen, 0), latents=(edited, 0), resolution="full")
    pasted = g.add("EssencePasteBack", photos=(parts, 0), faces=(rendered, 0), alignment=(faces, 2), feather=0.1)
    video = g.add("CreateVideo", images=(pasted, 0), fps=(parts, 2), audio=(parts, 1))
    saved = g.add("SaveVideo", video=(video, 0), filename_prefix="video/essence", format="auto", codec="auto")
    models = g.group("Models and essence", [gen, encoder, landmarks, essence])
    load = g.group("Load the clip", [clip, parts])
    edit = g.group("Give every frame's face the essence", [faces, edited], [rendered, pasted], [video, saved])
    g.arrange([models, note], [load, edit])
    return g


def encode_essence(defs: dict[str, dict[str, Any]]) -> Graph:
    """(g) Encode a target's essence in one pass with a trained essence encoder, and give the face in a
    photo that essence, pasted back along the face's outline."""
    g = Graph(defs)
    note = g.note("Encode the essence of the target in one pass with an essence encoder (TargetCLIP's encoder "
                  "variant: no training per target), then give the face in your photo that essence: the photo is "
                  "aligned and inverted, the face is edited, rendered and pasted back along its outline (hair and "
                  "background stay the photo's). Several pictures of the same target can be batched: their "
                  "essences are averaged. Invert Face's refine 'pti' keeps more of the person's likeness.\n\n"
                  + ENCODER_NOTE + "\n\n" + MODELS_NOTE.replace("\n- essence_clip/ViT-B-32.pt (OpenAI CLIP)", "")
                  + "\n" + FACES_NOTE,
                  (520, 380))
    gen = g.add("EssenceGeneratorLoader", generator_file="stylegan2-ffhq-config-f.pt")
    encoder = g.add("EssenceEncoderLoader", encoder_file="e4e_ffhq_encode.pt")
    landmarks = g.add("EssenceLandmarkLoader", landmarks_file=LANDMARKS_AUTO)
    essence_encoder = g.add("EssenceTrainedEncoderLoader", encoder_file=ENCODER_FILE)
    target = g.add("LoadImage", "Target Picture", image=TARGET_IMAGE)
    encoded = g.add("EssenceEncode", essence_encoder=(essence_encoder, 0), images=(target, 0), align=True,
                    landmarks=(landmarks, 0), generator=(gen, 0), name="my_target")
    save = g.add("EssenceSave", direction=(encoded, 0), filename_prefix="my_encoded_essence")
    photo = g.add("LoadImage", "Your Photo", image=PHOTO_IMAGE)
    face = g.add("EssenceInvertFace", encoder=(encoder, 0), landmarks=(landmarks, 0), images=(photo, 0),
                 face_index=0, no_face="error")
    edited = g.add("EssenceApply", latents=(face, 0), direction=(encoded, 0), strength=1.0, layers="all",
                   auto_strength=False)
    rendered = g.add("EssenceRender", generator=(gen, 0), latents=(edited, 0), resolution="full")
    shown = g.add("PreviewImage", "Edited Face", images=(rendered, 0))
    pasted = g.add("EssencePasteBack", photos=(photo, 0), faces=(rendered, 0), alignment=(face, 2), feather=0.1,
                   mask="face")
    result = g.add("SaveImage", images=(pasted, 0), filename_prefix="essence/encoded_edit")
    models = g.group("Models", [gen, encoder, landmarks, essence_encoder])
    encode = g.group("Encode the target's essence in one pass", [target], [encoded, save])
    edit = g.group("Give the face in your photo that essence", [photo], [face], [edited, rendered, shown],
                   [pasted, result])
    g.arrange([models, note], [encode, edit])
    return g


EXAMPLES = {"essence_apply": apply_essence, "essence_train": train_essence, "essence_mix_sweep": mix_and_sweep,
            "essence_train_photo": train_from_photo, "essence_train_best": train_best_essence,
            "essence_video": video_essence, "essence_encode": encode_essence}


# ----------------------------------------------------------------------------- thumbnails


def without_notes(workflow: dict[str, Any]) -> dict[str, Any]:
    """The workflow's working graph: notes are for reading in the editor, unreadable in a thumbnail."""
    return {**workflow, "nodes": [n for n in workflow["nodes"] if n["type"] not in ("Note", "MarkdownNote")]}


def thumbnail(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB").resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.LANCZOS)


def write_thumbnails(workflows: dict[str, dict[str, Any]]) -> None:
    """Draw each graph in ComfyUI's real frontend (refusing overlapping nodes) and save ``<name>.jpg``."""
    from real_comfyui import frontend, frontend_unavailable, overlapping, running_server

    comfyui = os.environ.get("COMFYUI_DIR")
    reason = "COMFYUI_DIR is not set (a ComfyUI checkout)" if not comfyui else frontend_unavailable()
    if reason:
        sys.exit(f"cannot draw the thumbnails: {reason}. Use --no-thumbnails to write the JSON files only.")
    with tempfile.TemporaryDirectory() as tmp, \
            running_server(Path(tmp) / "base", random_directions(), comfyui,
                           os.environ.get("COMFYUI_PYTHON")) as server, \
            frontend(server, RENDER_SIZE, RENDER_SIZE) as page:
        for name, workflow in workflows.items():
            page.load(workflow)
            clashes = overlapping(page.boxes()) + overlapping(page.groups())
            if clashes:
                sys.exit(f"{name}: overlapping in the frontend: {clashes}")
            page.load(without_notes(workflow))
            thumbnail(page.render()).save(WORKFLOWS / f"{name}.jpg", quality=85, optimize=True)
            print(f"wrote workflows/{name}.jpg")
        if page.errors:
            sys.exit(f"the frontend reported errors: {page.errors}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-thumbnails", action="store_true", help="write the JSON files only")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"write only these examples (default: all of {', '.join(EXAMPLES)})")
    args = parser.parse_args()
    unknown = sorted(set(args.names) - set(EXAMPLES))
    if unknown:
        parser.error(f"no example called {', '.join(unknown)}; the examples: {', '.join(EXAMPLES)}")
    with tempfile.TemporaryDirectory() as tmp:
        with fake_comfyui(stage_tiny_files(Path(tmp), random_directions())) as env:
            defs = definitions_of(env.pack)
    workflows = {name: build(defs).to_ui() for name, build in EXAMPLES.items() if name in (args.names or EXAMPLES)}
    WORKFLOWS.mkdir(exist_ok=True)
    for name, workflow in workflows.items():
        (WORKFLOWS / f"{name}.json").write_text(json.dumps(workflow, indent=2) + "\n", encoding="utf-8")
        print(f"wrote workflows/{name}.json")
    if not args.no_thumbnails:
        write_thumbnails(workflows)


if __name__ == "__main__":
    main()
