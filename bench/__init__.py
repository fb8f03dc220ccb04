"""Maintainers' benchmark of Essence: speed and memory of the full-size models (``python -m bench``).

A tool beside the library, not part of it: it is not installed with ``pip install .`` and the
library never imports it. ``bench.measure`` holds the measurements, ``bench.cli`` the command.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"  # the tiny models and reference traces the repository holds
# TargetCLIP's own files (photos, the golden traces): beside the checkout, as for the tests
SHARED_FIXTURES = Path(os.environ.get("ESSENCE_FIXTURES") or REPO.parent / "shared" / "fixtures")
