"""Essence, a ComfyUI node pack for TargetCLIP essence transfer.

ComfyUI imports this file when the repository sits in ``custom_nodes/``. Importing it needs neither
ComfyUI, a GPU nor any weight file; the library itself lives in ``essence/``.
"""

# ComfyUI imports the folder as a package. pytest imports this file as a plain module named
# ``__init__`` when the folder's name is not a Python identifier (``ComfyUI-Essence``); there is no
# package to register nodes from then, and the relative import below would fail.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    # ComfyUI serves this folder at /extensions/<pack>/; its frontend reads each node's help page
    # from docs/<NodeName>.md there (written by tests/build_node_docs.py)
    WEB_DIRECTORY = "./web"

    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
