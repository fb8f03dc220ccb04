"""``python -m bench`` from the repository root (or ``./run bench``): see ``bench.cli``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
