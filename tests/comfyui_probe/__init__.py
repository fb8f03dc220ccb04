"""A test-only ComfyUI custom node that reports what holds memory, from inside the server.

``tests/test_comfyui_server.py`` links this folder into the test server's ``custom_nodes/`` (never
into a user's): the probe node lists ComfyUI's loaded models (``comfy.model_management``'s
ledger, which 'Unload Models' / ``POST /free`` empties) and the models in Essence's own model
cache, so the test observes the server's real state instead of a debug route in the product.
"""

from __future__ import annotations

import gc
import json
import sys

import comfy.model_management


def _essence_runtimes() -> list:
    """The Essence pack's ``essence.runtime`` module(s), as ComfyUI imported them."""
    return [module for name, module in list(sys.modules.items()) if name.endswith(".essence.runtime")]


class EssenceTestMemoryProbe:
    CATEGORY = "testing"
    FUNCTION = "report"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"generator": ("ESSENCE_GENERATOR",)}}

    @classmethod
    def IS_CHANGED(cls, **_inputs):
        return float("nan")  # report afresh on every prompt

    def report(self, generator):
        gc.collect()
        loaded = [patcher.model for patcher in comfy.model_management.loaded_models() if patcher is not None]
        state = {
            "loaded": [f"{type(model).__module__}.{type(model).__name__}" for model in loaded],
            "generator_loaded": any(model is generator for model in loaded),
            "essence_cache": [type(model).__name__ for runtime in _essence_runtimes()
                              for model in runtime.cached_models()],
            "essence_runtimes": len(_essence_runtimes()),
        }
        return {"ui": {"text": [json.dumps(state)]}}


NODE_CLASS_MAPPINGS = {"EssenceTestMemoryProbe": EssenceTestMemoryProbe}
