"""Essence, a ComfyUI node pack for TargetCLIP essence transfer.

ComfyUI imports this file when the repository sits in ``custom_nodes/``. Importing it needs neither
ComfyUI, a GPU nor any weight file; the library itself lives in ``essence/``.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
