"""Reading the example workflows the way ComfyUI's frontend does, and running them.

A UI-format workflow stores each node's widget values as one positional list, ``widgets_values``.
The frontend builds widgets from the node definition (``/object_info``, i.e. ``INPUT_TYPES``):

* INT, FLOAT, STRING, BOOLEAN and dropdowns (a list, or "COMBO") get a widget, in input order,
  required inputs first, then optional ones; every other type (IMAGE, ESSENCE_*) is a socket only;
* an INT named ``seed`` or ``noise_seed`` (or with ``control_after_generate``) is followed by a
  "control after generate" widget ("fixed", "increment", "decrement", "randomize");
* an input with ``image_upload`` or ``video_upload`` (core LoadImage, LoadVideo) is followed by its
  upload widget, whose saved value is "image" (the frontend uses one upload widget for both);
* a ``video_upload`` input (core LoadVideo) also gets a "video-preview" widget after the upload
  widget; its value is "" and the frontend sends it to the server, which ignores it;
* a widget input fed by a link (e.g. Create Video's fps from Get Video Components) keeps its widget
  value and also appears in the node's ``inputs`` with ``"widget": {"name": ...}``.

``widget_slots`` encodes exactly that; the static test, the API conversion for the real server and
the in-process runner all use it.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import perceptual_weights
import pictures
import torch
from comfy_stubs import LANDMARKS_FOLDER, LANDMARKS_NAME, installed_landmarks
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # the tiny models (tests/fixtures/README.md)
WORKFLOWS = REPO / "workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = ["fixed", "increment", "decrement", "randomize"]
SEED_NAMES = {"seed", "noise_seed"}
VIDEO_PREVIEW = "video-preview"
# Frontend-only nodes: saved in UI workflows, never sent to the server.
VIRTUAL_NODES = {"Note": ["text"], "MarkdownNote": ["text"]}

# Widgets the frontend adds to core nodes by itself (not in /object_info, not saved in workflows) and
# sends with the prompt: Preview Any's read-only text box, empty until the node has run.
FRONTEND_WIDGETS: dict[str, dict[str, Any]] = {"PreviewAny": {"preview": ""}}

# Core ComfyUI nodes the examples use, as ComfyUI's nodes.py defines them (object_info layout).
CORE_NODES: dict[str, dict[str, Any]] = {
    "LoadImage": {"input": {"required": {"image": [[], {"image_upload": True}]}},
                  "output": ["IMAGE", "MASK"], "output_name": ["IMAGE", "MASK"]},
    "PreviewImage": {"input": {"required": {"images": ["IMAGE", {}]}}, "output": [], "output_name": []},
    # comfy_extras/nodes_preview_any.py: shows any value (here the text reports) on the node
    "PreviewAny": {"input": {"required": {"source": ["*", {}]}}, "output": [], "output_name": []},
    "SaveImage": {"input": {"required": {"images": ["IMAGE", {}],
                                         "filename_prefix": ["STRING", {"default": "ComfyUI"}]}},
                  "output": [], "output_name": []},
    # comfy_extras/nodes_video.py
    "LoadVideo": {"input": {"required": {"file": ["COMBO", {"options": [], "video_upload": True}]}},
                  "output": ["VIDEO"], "output_name": ["VIDEO"]},
    "GetVideoComponents": {"input": {"required": {"video": ["VIDEO", {}]}},
                           "output": ["IMAGE", "AUDIO", "FLOAT"], "output_name": ["images", "audio", "fps"]},
    "CreateVideo": {"input": {"required": {"images": ["IMAGE", {}],
                                           "fps": ["FLOAT", {"default": 30.0, "min": 1.0, "max": 120.0, "step": 1.0}]},
                              "optional": {"audio": ["AUDIO", {}]}},
                    "output": ["VIDEO"], "output_name": ["VIDEO"]},
    "SaveVideo": {"input": {"required": {"video": ["VIDEO", {}],
                                         "filename_prefix": ["STRING", {"default": "video/ComfyUI"}],
                                         "format": ["COMBO", {"default": "auto", "options": ["auto", "mp4"]}],
                                         "codec": ["COMBO", {"default": "auto", "options": ["auto", "h264"]}]}},
                  "output": [], "output_name": []},
}


def workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def load_workflow(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def definitions_of(pack: Any) -> dict[str, dict[str, Any]]:
    """The pack's nodes in ``/object_info`` layout, plus the core nodes the examples use."""
    defs = dict(CORE_NODES)
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        defs[node_id] = {
            "input": {section: {k: list(v) for k, v in spec.get(section, {}).items()} for section in ("required", "optional")},
            "output": list(cls.RETURN_TYPES), "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
        }
    return defs


def ordered_inputs(definition: dict[str, Any]) -> Iterator[tuple[str, Any, dict[str, Any], bool]]:
    """(name, type, options, optional) in the frontend's order: required, then optional."""
    for section in ("required", "optional"):
        for name, declaration in definition["input"].get(section, {}).items():
            options = declaration[1] if len(declaration) > 1 else {}
            yield name, declaration[0], options, section == "optional"


def is_widget(kind: Any) -> bool:
    return isinstance(kind, list) or kind in WIDGET_TYPES


def widget_slots(definition: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
    """Each entry of ``widgets_values``: (input name or helper widget name, type, options)."""
    slots = []
    for name, kind, options, _optional in ordered_inputs(definition):
        if not is_widget(kind):
            continue
        slots.append((name, kind, options))
        if (kind == "INT" and name in SEED_NAMES) or options.get("control_after_generate"):
            slots.append(("control_after_generate", CONTROL_VALUES, {}))
        if options.get("image_upload") or options.get("video_upload"):
            slots.append(("upload", ["image"], {}))
        if options.get("video_upload"):
            slots.append((VIDEO_PREVIEW, [""], {}))
    return slots


def socket_inputs(definition: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Link-only inputs: (name, type, optional)."""
    return [(n, k, o) for n, k, _opts, o in ordered_inputs(definition) if not is_widget(k)]


def ui_to_api(workflow: dict[str, Any], definitions: dict[str, dict[str, Any]],
              override: Callable[[str, str, Any], Any] | None = None) -> dict[str, dict[str, Any]]:
    """The API-format prompt ComfyUI's frontend would queue for this UI workflow.

    ``override(node_type, input_name, value)`` may replace widget values (e.g. fewer training
    steps for a smoke run).
    """
    links = {link[0]: link for link in workflow["links"]}
    prompt: dict[str, dict[str, Any]] = {}
    for node in workflow["nodes"]:
        if node["type"] in VIRTUAL_NODES or node.get("mode", 0) != 0:
            continue
        definition = definitions[node["type"]]
        inputs: dict[str, Any] = dict(FRONTEND_WIDGETS.get(node["type"], {}))
        for (name, _kind, _opts), value in zip(widget_slots(definition), node.get("widgets_values", [])):
            if name in ("control_after_generate", "upload"):
                continue
            inputs[name] = override(node["type"], name, value) if override else value
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _id, from_node, from_slot, *_ = links[socket["link"]]
                inputs[socket["name"]] = [str(from_node), from_slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def execution_order(prompt: dict[str, dict[str, Any]]) -> list[str]:
    """Node ids so that every node comes after the nodes it takes inputs from."""
    done: list[str] = []

    def visit(node_id: str, stack: tuple[str, ...] = ()) -> None:
        if node_id in done:
            return
        assert node_id not in stack, f"cycle through node {node_id}"
        for value in prompt[node_id]["inputs"].values():
            if isinstance(value, list):
                visit(value[0], stack + (node_id,))
        done.append(node_id)

    for node_id in prompt:
        visit(node_id)
    return done


def run_prompt(prompt: dict[str, dict[str, Any]], run_node: Callable[..., tuple],
               images: dict[str, Any]) -> dict[str, list[Any]]:
    """Execute an API prompt in-process: ``run_node(class_type, **inputs)`` runs pack nodes,
    LoadImage reads ``images[filename]``, SaveImage/PreviewImage collect their images, PreviewAny
    its value. Returns {node id: images or value} for the sinks."""
    outputs: dict[str, tuple] = {}
    collected: dict[str, list[Any]] = {}
    for node_id in execution_order(prompt):
        node = prompt[node_id]
        inputs = {k: outputs[v[0]][v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
        kind = node["class_type"]
        if kind == "LoadImage":
            outputs[node_id] = (images[inputs["image"]], None)
        elif kind in ("SaveImage", "PreviewImage"):
            collected[node_id] = inputs["images"]
            outputs[node_id] = ()
        elif kind == "PreviewAny":
            collected[node_id] = inputs["source"]
            outputs[node_id] = ()
        elif kind in VIDEO_NODES:
            outputs[node_id] = VIDEO_NODES[kind](images, **inputs)
            if kind == "SaveVideo":
                collected[node_id] = inputs["video"]["images"]
        else:
            outputs[node_id] = run_node(kind, **inputs)
    return collected


def _video_components(_inputs: dict[str, Any], video: Path) -> tuple:
    from essence.video import probe_video, read_frames

    frames = np.stack(list(read_frames(video))).astype(np.float32) / 255.0
    return torch.from_numpy(frames), None, float(probe_video(video).rate)


# Core video nodes run in-process: Load Video gives the staged file, Get Video Components decodes it
# as ComfyUI does (frames [F, H, W, 3] in 0..1, no audio here, fps), Create/Save Video pass the frames on.
VIDEO_NODES: dict[str, Callable[..., tuple]] = {
    "LoadVideo": lambda staged, file, **_preview: (staged[file],),
    "GetVideoComponents": _video_components,
    "CreateVideo": lambda _staged, **video: (video,),
    "SaveVideo": lambda _staged, **inputs: (),
}


def write_clip(path: Path, frames: list[np.ndarray], rate: Any = 25, audio: str | None = "aac") -> Path:
    """An H.264 clip (lossless, 4:4:4 so odd sizes work) of RGB ``frames``, with a 440 Hz tone
    encoded as ``audio`` (None: silent)."""
    import av

    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=rate)
        video.width, video.height, video.pix_fmt = width, height, "yuv444p"
        video.options = {"qp": "0"}
        sound = out.add_stream(audio, rate=16000) if audio else None
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            t = np.arange(int(16000 * len(frames) / rate)) / 16000
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for start in range(0, tone.shape[1], 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[:, start:start + 1024]), format="fltp",
                                                   layout="mono")
                frame.sample_rate, frame.pts = 16000, start
                out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return path


def example_clip(path: Path, frames: int = 4) -> Path:
    """The clip the video example edits: the photo example's picture, still, with a little noise per
    frame (so the crop's smoothing has jitter to remove), 25 fps, with sound."""
    base = np.asarray(INPUT_IMAGES[PHOTO_IMAGE](), dtype=np.float32)
    rng = np.random.default_rng(0)
    noisy = [np.clip(np.rint(base + rng.normal(0, 2.0, base.shape)), 0, 255).astype(np.uint8) for _ in range(frames)]
    return write_clip(path, noisy, rate=25)


# ----------------------------------------------------------------------------- tiny stand-ins

# The examples name the real files; runs with the tiny fixtures put a tiny file (tests/fixtures) under each name.
STAND_INS = {
    ("essence_stylegan2", "stylegan2-ffhq-config-f.pt"): "stylegan2_tiny64.pt",
    ("essence_e4e", "e4e_ffhq_encode.pt"): "e4e_tiny64.pt",
    ("essence_clip", "ViT-B-32.pt"): "clip_tiny.pt",
}
DIRECTION_FILES = ("keanu.npy", "joker.npy")  # official TargetCLIP directions the examples load
ENCODERS_FOLDER = "essence_encoders"
ENCODER_FILE = "essence_encoder_00001.safetensors"  # the trained essence encoder the encode example loads
TARGET_IMAGE = "target.jpg"                   # the picture the training examples load (a face: they invert it)
PHOTO_IMAGE = "photo.jpg"                     # the photo the train-from-photo example edits
# ComfyUI's input folder: name -> the picture staged under it (tests/pictures.py)
INPUT_IMAGES: dict[str, Callable[[], Image.Image]] = {TARGET_IMAGE: pictures.headshot, PHOTO_IMAGE: pictures.portrait}
CLIP_VIDEO = "clip.mp4"                       # the clip the video example edits (made by ``example_clip``)
LANDMARKS_AUTO = "auto"                       # the landmark loader's automatic lookup (no file name)


def stage_tiny_files(base: Path, directions: dict[str, Any]) -> Path:
    """A ComfyUI-like base folder (``models/``, ``input/``) holding tiny stand-ins under the names
    the examples use, dlib's landmark model (the real one, from an installed package) and the input
    pictures; ``directions`` maps file names to float32 arrays [1, n_latent, D]. Returns the models
    folder."""
    models = base / "models"
    files = {(folder, name): FIXTURES / fixture for (folder, name), fixture in STAND_INS.items()}
    landmarks = installed_landmarks()
    if landmarks is not None:
        files[(LANDMARKS_FOLDER, LANDMARKS_NAME)] = landmarks
    for (folder, name), source in files.items():
        (models / folder).mkdir(parents=True, exist_ok=True)
        target = models / folder / name
        if not target.exists():
            target.symlink_to(source)
    lpips = models / "essence_lpips" / perceptual_weights.FILENAME  # LPIPS's backbone, for refine 'pti'
    if not lpips.exists():
        perceptual_weights.write_alexnet(lpips)
    (models / ENCODERS_FOLDER).mkdir(parents=True, exist_ok=True)
    if not (models / ENCODERS_FOLDER / ENCODER_FILE).exists():
        (models / ENCODERS_FOLDER / ENCODER_FILE).write_bytes(tiny_essence_encoder())
    (models / "essence_directions").mkdir(parents=True, exist_ok=True)
    for name, array in directions.items():
        np.save(models / "essence_directions" / name, np.asarray(array, dtype=np.float32))
    (base / "input").mkdir(parents=True, exist_ok=True)
    for name, picture in INPUT_IMAGES.items():
        picture().save(base / "input" / name, quality=95)
    if not (base / "input" / CLIP_VIDEO).exists():
        example_clip(base / "input" / CLIP_VIDEO)
    return models


@functools.cache
def tiny_essence_encoder() -> bytes:
    """The bytes of an essence encoder file for the tiny generator (the fixtures hold no trained one):
    the tiny e4e trained by ``essence.encoding`` for one update on 2 generated faces (1 held out) with
    2 sources, in about a second; made once per process."""
    import tempfile

    from essence.encoding import EncoderSettings, generated_data, train_encoder, trained_encoder
    from essence.latents import sample_latents
    from essence.networks import load_encoder, load_generator, load_guide

    tiny = {folder: FIXTURES / fixture for (folder, _name), fixture in STAND_INS.items()}
    generator = load_generator(tiny["essence_stylegan2"], cache=False)
    guide = load_guide(tiny["essence_clip"], cache=False)
    encoder = load_encoder(tiny["essence_e4e"], cache=False)
    settings, data = EncoderSettings(max_steps=0), generated_data(generator, 2, 1)
    sources = sample_latents(generator, 2, seed=0).latents
    training = train_encoder(encoder, generator, guide, data, sources, settings)
    with tempfile.TemporaryDirectory() as tmp:
        path = trained_encoder(training, generator, guide.name, data, sources, settings, "tiny").save(
            Path(tmp) / ENCODER_FILE)
        return path.read_bytes()


def expected_init(prompt: dict[str, dict[str, Any]]) -> str:
    """How the essences the examples make start, as their files record it: encoded by an essence
    encoder (Encode Essence); trained from the target's e4e inversion when an encoder is connected
    (init 'auto', targets with a face), else randomly."""
    if any(n["class_type"] == "EssenceEncode" for n in prompt.values()):
        return "encoder"
    trains = [n for n in prompt.values() if n["class_type"] == "EssenceTrain"]
    return "e4e inversion of the target" if any("encoder" in t["inputs"] for t in trains) else "random"


def input_images(base: Path) -> dict[str, Any]:
    """The staged input pictures as LoadImage outputs them, and the staged clip's path, by file name
    (for ``run_prompt``)."""
    return {**{name: load_image(base / "input" / name) for name in INPUT_IMAGES}, CLIP_VIDEO: base / "input" / CLIP_VIDEO}


def random_directions(n_latent: int = 10, style_dim: int = 64, scale: float = 0.5) -> dict[str, Any]:
    """Small seeded directions for the tiny generator, under the examples' direction names."""
    rng = np.random.default_rng(0)
    return {name: (rng.standard_normal((1, n_latent, style_dim)) * scale).astype(np.float32)
            for name in DIRECTION_FILES}


def quick_run(node_type: str, name: str, value: Any) -> Any:
    """Overrides for smoke runs with the tiny models: a few training and tuning steps instead of
    hundreds (tests/test_video_tuning.py and test_tuning.py check what tuning achieves)."""
    if node_type == "EssenceTrain" and name == "steps":
        return min(value, 6)
    if node_type == "EssenceInvertFace" and name in ("pti_steps", "pti_passes"):
        return min(value, 2)
    if node_type == "EssenceTrain" and name == "preview_every":
        return 2
    return value


def load_image(path: Path) -> Any:
    """A picture as ComfyUI's LoadImage outputs it: IMAGE [1, H, W, 3] float32 in 0..1."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array)[None]
