"""How this copy of Essence is installed, and what that means for the user's next command.

Essence runs from a checkout (a ``git clone``, which is also how ComfyUI holds the node pack in
``custom_nodes/``) or as an installed package (``pip install``). Messages that tell the user to run
something (fetch weights, make a latent file) must name a command that works where they are, and
weight files need a home that does not assume a checkout. Stdlib only, so it stays cheap to import.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ENV_CLI = "ESSENCE_CLI"  # set by the checkout's ./run script to the command it was started as
CONSOLE_SCRIPT = "essence"  # [project.scripts] in pyproject.toml


def package_dir() -> Path:
    """The folder of the ``essence`` package itself (where ``python -m essence`` starts)."""
    return Path(__file__).resolve().parents[1]


def checkout_root() -> Path | None:
    """The repository folder when Essence runs from a checkout, None when it is an installed package.

    A checkout holds the project file and the ComfyUI nodes beside the library; an installed package
    sits alone in ``site-packages``. An editable install (``pip install -e .``) counts as a checkout.
    """
    root = package_dir().parent
    return root if (root / "pyproject.toml").is_file() and (root / "nodes").is_dir() else None


def user_data_dir() -> Path:
    """The per-user data folder for Essence: ``$XDG_DATA_HOME/essence`` (default
    ``~/.local/share/essence``) on Linux, ``~/Library/Application Support/essence`` on macOS,
    ``%LOCALAPPDATA%\\essence`` on Windows."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = str(Path.home() / "Library" / "Application Support")
    else:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / "essence"


def cli_command(from_anywhere: bool = True) -> str:
    """The command that runs Essence's command line for this user, as they would type it.

    ``./run essence`` (or however the checkout's script was called) when started through it; the
    ``essence`` console script when that is what runs, or when the package is installed and the
    script is on ``PATH``; otherwise ``python -m essence`` with the Python that runs Essence now:
    plain ``python`` when that is how the user started it, else this interpreter's path (inside
    ComfyUI, "python" may well be another Python, without torch). ``python -m essence`` finds a
    checkout's package only from the checkout's folder, so with ``from_anywhere`` the command
    starts with ``cd <checkout> &&`` when the current folder is another.
    """
    from_run = os.environ.get(ENV_CLI, "").strip()
    if from_run:
        return from_run
    if sys.argv and Path(sys.argv[0]).name in (CONSOLE_SCRIPT, CONSOLE_SCRIPT + ".exe"):
        return CONSOLE_SCRIPT
    root = checkout_root()
    if root is None and shutil.which(CONSOLE_SCRIPT):
        return CONSOLE_SCRIPT
    started_as_module = bool(sys.argv) and Path(sys.argv[0]).resolve() == package_dir() / "__main__.py"
    command = f"{'python' if started_as_module else _quoted(sys.executable)} -m essence"
    if from_anywhere and root is not None and Path.cwd().resolve() != root:
        return f"cd {_quoted(str(root))} && {command}"
    return command


def _quoted(path: str) -> str:
    return f'"{path}"' if " " in path else path
