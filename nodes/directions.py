"""Direction nodes: save, load and mix essences.

Directions are files in ComfyUI's ``models/essence_directions`` folder: Essence's own
``.safetensors`` (self-describing, written atomically) and TargetCLIP's official ``.npy`` files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import essence
from ..essence.latents import mix_directions
from ..essence.storage import checked_stem
from . import host
from . import types as T
from .inputs import choice, link, number, text

CATEGORY = "essence/directions"


def directions_dir() -> Path:
    """Where new direction files go: the first registered ``essence_directions`` path."""
    return host.save_folder(host.DIRECTIONS_FOLDER)


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
        stem = checked_stem(filename_prefix, ".safetensors", f"the '{host.DIRECTIONS_FOLDER}' model folder",
                            "the essence")
        meta = {**direction.meta, "name": direction.meta.get("name") or stem}
        path = essence.Direction(direction.tensor, meta, direction.thumbnail).save_numbered(directions_dir(), stem)
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
        problem = host.folder_file_problem(host.DIRECTIONS_FOLDER, direction_file)
        return True if problem is None else problem

    def load(self, direction_file: str) -> tuple[essence.Direction]:
        return (essence.Direction.load(host.picked_file(host.DIRECTIONS_FOLDER, direction_file, "essence")),)


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
