"""Every node has a help page where ComfyUI's frontend looks for one (``WEB_DIRECTORY/docs/<NodeName>.md``),
and each page says what its node declares today."""

from __future__ import annotations

import build_node_docs
import pytest

PAGES = build_node_docs.pages()


def test_the_pack_serves_its_web_folder_and_every_node_has_a_page():
    from comfy_stubs import import_pack

    pack = import_pack()
    assert (build_node_docs.REPO / pack.WEB_DIRECTORY / "docs") == build_node_docs.DOCS
    assert "WEB_DIRECTORY" in pack.__all__
    assert sorted(PAGES) == sorted(f"{name}.md" for name in pack.NODE_CLASS_MAPPINGS)
    assert sorted(p.name for p in build_node_docs.DOCS.glob("*.md")) == sorted(PAGES)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_each_page_matches_its_node(page):
    written = (build_node_docs.DOCS / page).read_text(encoding="utf-8")
    assert written == PAGES[page], f"web/docs/{page} is out of date: run python tests/build_node_docs.py"
    assert written.startswith("# ") and "## Outputs" in written
