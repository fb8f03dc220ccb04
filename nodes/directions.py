"""Direction nodes: save, load and mix essences.

Directions are files in ComfyUI's ``models/essence_directions`` folder: Essence's own
``.safetensors`` (self-describing, written atomically) and TargetCLIP's official ``.npy`` files.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .. import essence
from ..essence.apply import mix_directions
from ..essence.errors import EssenceError
from . import host
from . import types as T
from .inputs import choice, link, number, text

CATEGORY = "essence/directions"
COUNTER_DIGITS = 5
MAX_NAME_BYTES = 200  # room for _00001.safetensors and the temporary-file affixes
_FORBIDDEN_NAME_CHARS = re.compile(r'[\x00-\x1f<>:"|?*]')


def check_save_name(name: str) -> str:
    """A file name for a new direction that cannot leave the directions folder.

    Refused: empty names, ``..``, absolute paths, path separators (of any platform), drive letters,
    control characters and hidden names. A trailing ``.safetensors`` is dropped (it is added back).
    """
    stem = name.strip()
    if stem.lower().endswith(".safetensors"):
        stem = stem[: -len(".safetensors")]
    problem = None
    if not stem:
        problem = "it is empty"
    elif ".." in stem:
        problem = "it contains '..'"
    elif os.path.isabs(stem) or stem.startswith(("/", "\\")):
        problem = "it is an absolute path"
    elif any(sep in stem for sep in ("/", "\\", os.sep, os.altsep or "/")):
        problem = "it contains a path separator"
    elif _FORBIDDEN_NAME_CHARS.search(stem):
        problem = "it contains a character file systems refuse (< > : \" | ? * or a control character)"
    elif stem.startswith("."):
        problem = "it starts with '.' (a hidden file)"
    elif len(stem.encode("utf-8")) > MAX_NAME_BYTES:
        problem = f"it is longer than {MAX_NAME_BYTES} bytes (file systems allow 255 for a whole file name)"
    if problem:
        raise EssenceError(f"cannot save the essence as {name!r}: {problem}. Use a plain name such as "
                           f"'keanu'; files always go into the '{host.DIRECTIONS_FOLDER}' model folder.")
    return stem


def next_free_path(folder: Path, stem: str) -> Path:
    """``<stem>_00001.safetensors``, counting up past existing files (never overwrite a trained essence)."""
    pattern = re.compile(rf"^{re.escape(stem)}_(\d{{{COUNTER_DIGITS},}})\.safetensors$")
    taken = [int(m.group(1)) for f in (os.listdir(folder) if folder.is_dir() else []) if (m := pattern.match(f))]
    return folder / f"{stem}_{max(taken, default=0) + 1:0{COUNTER_DIGITS}d}.safetensors"


def save_with_next_free_name(direction: essence.Direction, folder: Path, stem: str) -> Path:
    """Save ``direction`` as the next free ``<stem>_NNNNN.safetensors`` without ever replacing a file,
    even one that another prompt or another ComfyUI process saves at the same moment.

    The file is written completely under a hidden temporary name (``.<stem>.*.tmp``, which no
    dropdown lists), then given its final name with ``os.link``, which fails instead of replacing
    when the name was taken in the meantime (then the next number is tried). Where hard links are
    unsupported, the name is reserved with an exclusive create and the file renamed over it.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{stem}.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        direction.save(tmp)
        while True:
            path = next_free_path(folder, stem)
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue  # another save took this number first
            except OSError:  # no hard links on this file system: reserve the name, then move in
                try:
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    continue
                os.replace(tmp, path)
                return path
    finally:
        tmp.unlink(missing_ok=True)


def directions_dir() -> Path:
    """Where new direction files go: the first registered ``essence_directions`` path."""
    dirs = host.folder_dirs(host.DIRECTIONS_FOLDER)
    if not dirs:
        raise EssenceError(f"ComfyUI has no '{host.DIRECTIONS_FOLDER}' model folder registered; "
                           f"the Essence pack did not load properly (see ComfyUI's start-up log).")
    return Path(dirs[0])


class EssenceSave:
    """Save a direction file."""

    DESCRIPTION = ("Saves an essence to models/essence_directions as <name>_00001.safetensors (counting up, "
                   "never overwriting). The file records how it was made; load it with Load Essence.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("filename",)
    OUTPUT_TOOLTIPS = ("The saved file's name inside models/essence_directions.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "direction": link(T.DIRECTION, "The essence to save."),
            "filename_prefix": text("essence", "File name (no folders): saved as <name>_00001.safetensors "
                                    "in models/essence_directions."),
        }}

    def save(self, direction: essence.Direction, filename_prefix: str) -> dict[str, Any]:
        stem = check_save_name(filename_prefix)
        folder = directions_dir()
        folder.mkdir(parents=True, exist_ok=True)
        meta = {**direction.meta, "name": direction.meta.get("name") or stem}
        path = save_with_next_free_name(essence.Direction(direction.tensor, meta, direction.thumbnail), folder, stem)
        return {"ui": {"text": [path.name]}, "result": (path.name,)}


class EssenceLoad:
    """Load a direction file."""

    DESCRIPTION = ("Loads an essence from models/essence_directions: a .safetensors file saved by Essence, "
                   "or one of TargetCLIP's published .npy directions (for the FFHQ 1024 px generator).")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (T.DIRECTION,)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("The essence direction.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        options = host.filename_list(host.DIRECTIONS_FOLDER) or ["essence_00001.safetensors"]
        return {"required": {"direction_file": choice(
            options, "Direction file in models/essence_directions (.safetensors from Save Essence, "
            "or TargetCLIP's official .npy).")}}

    @classmethod
    def VALIDATE_INPUTS(cls, direction_file: str) -> bool | str:
        if not isinstance(direction_file, str) or not direction_file:
            return "pick a direction file"
        parts = direction_file.replace("\\", "/").split("/")
        if os.path.isabs(direction_file) or direction_file.startswith(("/", "\\")) or ".." in parts:
            return f"{direction_file!r} is not a file inside models/{host.DIRECTIONS_FOLDER}"
        return True

    def load(self, direction_file: str) -> tuple[essence.Direction]:
        verdict = self.VALIDATE_INPUTS(direction_file)  # ComfyUI skips its list check when this exists
        if verdict is not True:
            raise EssenceError(f"cannot load the essence: {verdict}.")
        path = host.require_file(host.DIRECTIONS_FOLDER, direction_file, "essence")
        return (essence.Direction.load(path),)


class EssenceMix:
    """Weighted sum of 2-4 directions."""

    DESCRIPTION = ("Mixes two to four essences into one: weight_1 * d1 + weight_2 * d2 (+ ...). "
                   "All must belong to the same generator. Negative weights subtract.")
    CATEGORY = CATEGORY
    FUNCTION = "mix"
    RETURN_TYPES = (T.DIRECTION,)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("The mixed essence.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        def slot(i: int) -> dict[str, Any]:
            return {f"direction_{i}": link(T.DIRECTION, f"Essence {i}."),
                    f"weight_{i}": number(1.0, -5.0, 5.0, f"How much of essence {i} goes into the mix.", 0.05)}
        return {"required": {**slot(1), **slot(2)}, "optional": {**slot(3), **slot(4)}}

    def mix(self, direction_1: essence.Direction, weight_1: float, direction_2: essence.Direction,
            weight_2: float, direction_3: essence.Direction | None = None, weight_3: float = 1.0,
            direction_4: essence.Direction | None = None, weight_4: float = 1.0) -> tuple[essence.Direction]:
        pairs = [(direction_1, weight_1), (direction_2, weight_2), (direction_3, weight_3), (direction_4, weight_4)]
        used = [(d, w) for d, w in pairs if d is not None]
        return (mix_directions([d for d, _ in used], [w for _, w in used]),)
