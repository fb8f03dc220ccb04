"""Maintainers' benchmark of Essence: speed and memory of the full-size models (``python -m bench``).

A tool beside the library, not part of it: it is not installed with ``pip install .`` and the
library never imports it. ``bench.measure`` holds the measurements, ``bench.cli`` the command.
"""
