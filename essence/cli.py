"""The command line: ``python -m essence <command> ...``.

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its arguments and
binds ``_cmd_<name>(args) -> int`` as its handler. Adding a command (align, invert, train, apply,
info, bench) means writing that pair and listing the adder in ``SUBCOMMANDS``. Every error a user
can cause is an ``EssenceError``; ``main`` prints it as ``error: <message>`` and returns 2, so no
user ever sees a traceback for a missing file or a failed download.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from .download import fetch_weight
from .errors import EssenceError
from .weights import (
    FETCH_COMMAND,
    WeightSpec,
    default_weights_dir,
    demo_specs,
    file_sha256,
    get_it_lines,
    get_spec,
    load_manifest,
    locate,
    weight_status,
)

PROG = "python -m essence"
EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

SubcommandAdder = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit status (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error (already printed)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USER_ERROR
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    try:
        return handler(args)
    except EssenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; one sub-parser per entry of ``SUBCOMMANDS``."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Essence: TargetCLIP essence transfer with StyleGAN2 (library, CLI, ComfyUI nodes).",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


# ---------------------------------------------------------------------------------------------
# weights list / weights fetch


def _add_weights(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    weights = subparsers.add_parser("weights", help="list or download the weight files")
    actions = weights.add_subparsers(title="weights commands", metavar="ACTION")
    weights.set_defaults(handler=lambda _args: _usage(weights))

    listing = actions.add_parser("list", help="show every known weight file and whether it is installed")
    listing.add_argument("--quick", action="store_true", help="check sizes only, skip sha256 hashing")
    listing.set_defaults(handler=_cmd_weights_list)

    fetch = actions.add_parser("fetch", help="download weight files (default: those the demo needs)")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="manifest name, role or file name")
    fetch.add_argument("--dir", type=Path, default=None,
                       help=f"destination folder (default: {_display(default_weights_dir())})")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch.set_defaults(handler=_cmd_weights_fetch)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USER_ERROR


def _cmd_weights_list(args: argparse.Namespace) -> int:
    rows = [_list_row(spec, hash_files=not args.quick) for spec in load_manifest()]
    header = ("NAME", "ROLE", "STATUS", "SIZE", "LICENCE", "PATH")
    print(_table([header, *rows]))
    print(f"\nDownload missing files with: {FETCH_COMMAND} [NAME ...]  (no NAME: the demo's files)")
    return EXIT_OK


def _list_row(spec: WeightSpec, hash_files: bool) -> tuple[str, ...]:
    found = locate(spec)
    status = weight_status(spec, found, hash_files=hash_files) if found else "missing"
    if found:
        size, where = found.stat().st_size, str(found)
    else:
        size, where = spec.size_bytes or spec.download_size, f"(would go to) {default_weights_dir() / spec.filename}"
    return (spec.name, spec.role, status, _human_size(size), spec.licence_short, where)


def _cmd_weights_fetch(args: argparse.Namespace) -> int:
    specs = [get_spec(name) for name in args.names] if args.names else demo_specs()
    folder = args.dir.expanduser() if args.dir else default_weights_dir()
    _print_fetch_plan(specs, folder)
    failures = [spec.name for spec in specs if not _fetch_one(spec, folder, progress=not args.no_progress)]
    if failures:
        print(f"\nerror: could not fetch {', '.join(failures)} (see above).", file=sys.stderr)
        return EXIT_USER_ERROR
    return EXIT_OK


def _print_fetch_plan(specs: Sequence[WeightSpec], folder: Path) -> None:
    """Sizes and licences before any byte moves, so users agree to terms they have seen."""
    print(f"Fetching into {folder}:")
    for spec in specs:
        print(f"  {spec.filename}  ({spec.role}, {_human_size(spec.download_size)} to download)")
        print(f"    licence: {spec.licence}")
    print()


def _fetch_one(spec: WeightSpec, folder: Path, progress: bool) -> bool:
    try:
        path = fetch_weight(spec, folder, progress=progress)
    except EssenceError as exc:
        print(f"error: {spec.filename}: {exc}", file=sys.stderr)
        return False
    status = weight_status(spec, path)
    note = "" if status == "present" else f"  (sha256 {file_sha256(path)}; nothing published to compare it with)"
    print(f"{status}: {path}{note}")
    return status in ("present", "unverified")


# ---------------------------------------------------------------------------------------------
# demo


def _add_demo(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    demo = subparsers.add_parser("demo", help="run the end-to-end demo (checks its weight files first)")
    demo.set_defaults(handler=_cmd_demo)


def _cmd_demo(_args: argparse.Namespace) -> int:
    problems = [(spec, _demo_problem(spec)) for spec in demo_specs()]
    problems = [(spec, why) for spec, why in problems if why]
    if problems:
        _print_missing(problems)
        return EXIT_USER_ERROR
    print("All demo weight files are present. The demo pipeline is not built yet; nothing to run.")
    return EXIT_OK


def _demo_problem(spec: WeightSpec) -> str | None:
    """Why ``spec`` cannot be used now ('missing' / 'damaged'), or None when it can."""
    found = locate(spec)
    if found is None:
        return "missing"
    return "damaged (wrong size)" if weight_status(spec, found, hash_files=False) == "corrupt" else None


def _print_missing(problems: Sequence[tuple[WeightSpec, str]]) -> None:
    print(f"The demo needs {len(problems)} weight file(s) that are not usable:\n", file=sys.stderr)
    for spec, why in problems:
        print(f"  {spec.filename}  ({spec.role}, '{spec.name}'): {why}", file=sys.stderr)
        for line in get_it_lines(spec):
            print(f"    {line}", file=sys.stderr)
        print(file=sys.stderr)
    print(f"Fetch them all with: {FETCH_COMMAND}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# formatting


def _human_size(size: int | None) -> str:
    """Decimal units, as Hugging Face and most download pages print them."""
    if not size:
        return "?"
    if size < 1000:
        return f"{size} B"
    value, unit = float(size), "B"
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000:
            break
    return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


SUBCOMMANDS: list[SubcommandAdder] = [_add_weights, _add_demo]
