"""Write each node's help page (``web/docs/<NodeName>.md``), which ComfyUI's frontend shows in its node
docs panel (the node library's "?" and the selection toolbox's info button).

    python tests/build_node_docs.py

A page is made from the node's own declaration (its description, every input and output with its
tooltip, type, default and range), so it says what the node does today: ``tests/test_node_docs.py``
fails when a page and its node disagree, and running this again brings them back together.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from comfy_stubs import REPO, import_pack  # noqa: E402

DOCS = REPO / "web" / "docs"
README = "the pack's README"


def node_page(cls: type, display_name: str) -> str:
    """The help page of one node class, in Markdown."""
    spec = cls.INPUT_TYPES()
    lines = [f"# {display_name}", "", cls.DESCRIPTION.strip(), ""]
    required, optional = spec.get("required", {}), spec.get("optional", {})
    files = getattr(cls, "ROLE", None) is not None  # a loader: its dropdown lists the files the user has
    if required or optional:
        lines += ["## Inputs", ""]
        lines += [_input_line(name, declaration, files=files) for name, declaration in required.items()]
        lines += [_input_line(name, declaration, optional=True) for name, declaration in optional.items()]
        lines.append("")
    lines += ["## Outputs", ""]
    lines += [f"- **{name}** ({kind}): {tooltip}"
              for name, kind, tooltip in zip(cls.RETURN_NAMES, cls.RETURN_TYPES, cls.OUTPUT_TOOLTIPS)]
    lines += ["", f"Category: {cls.CATEGORY}. Weight files, the other nodes and the example workflows: see {README}.",
              ""]
    return "\n".join(lines)


def _input_line(name: str, declaration: tuple, optional: bool = False, files: bool = False) -> str:
    kind, options = declaration[0], (declaration[1] if len(declaration) > 1 else {})
    facts = []
    if isinstance(kind, list) and files:
        kind, options = "file", {"tooltip": options.get("tooltip", "")}  # the user's own files, listed by ComfyUI
    if isinstance(kind, list):
        shown = kind if len(kind) <= 8 else kind[:8] + ["..."]
        facts.append("one of " + ", ".join(f"`{v}`" for v in shown))
        kind = "choice"
    if "default" in options:
        facts.append(f"default `{options['default']}`")
    if "min" in options and "max" in options:
        facts.append(f"{options['min']} to {options['max']}")
    if optional:
        facts.append("optional")
    detail = f" ({kind}{'; ' + '; '.join(facts) if facts else ''})"
    return f"- **{name}**{detail}: {options.get('tooltip', '')}"


def pages() -> dict[str, str]:
    """Every node's page, by file name, from the pack as ComfyUI imports it (without ComfyUI)."""
    package = import_pack()  # the checkout's folder as a package, whatever the folder is called
    return {f"{name}.md": node_page(cls, package.NODE_DISPLAY_NAME_MAPPINGS[name])
            for name, cls in package.NODE_CLASS_MAPPINGS.items()}


def main() -> int:
    DOCS.mkdir(parents=True, exist_ok=True)
    written = pages()
    for name, text in written.items():
        (DOCS / name).write_text(text, encoding="utf-8")
    for stale in set(p.name for p in DOCS.glob("*.md")) - set(written):
        (DOCS / stale).unlink()
    print(f"wrote {len(written)} pages to {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
