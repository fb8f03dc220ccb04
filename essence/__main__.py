"""``python -m essence``: see ``essence.cli``."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
