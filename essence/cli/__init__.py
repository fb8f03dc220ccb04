"""The command line (``essence ...``, ``python -m essence``, ``./run essence``) and the demo.

- ``app``: the parser, the weight-file commands (``weights``, ``fetch``), ``invert``, ``sample``, ``demo``,
  and the one place errors become ``error: ...`` and exit codes;
- ``directions``: ``train``, ``apply``, ``import-official``, ``export-npy``, ``info``;
- ``encoder``: ``train-encoder``, ``encode`` (TargetCLIP's encoder variant);
- ``metrics``: ``evaluate``;
- ``batch``: ``batch train``, ``batch apply``, ``batch video``;
- ``demo``: the end-to-end demo (``./run demo``).

Each command parses its arguments, calls the library and prints what it did; none holds logic of its own.
"""

from .app import build_parser, main
from .demo import DemoOptions, run_demo
from .directions import train_job

__all__ = ["main", "build_parser", "train_job", "run_demo", "DemoOptions"]
