"""ComfyUI nodes: thin adapters from ComfyUI's types to ``essence`` calls.

The node classes arrive with the ComfyUI-nodes work; until then the pack registers no nodes, and
ComfyUI loads it without error.
"""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
