"""The measured-records tables of docs/benchmarks.md, generated from ``bench/results/*.json``.

    python -m bench.tables [--results bench/results] [--doc docs/benchmarks.md] [--check]

Replaces everything between the two marker comments (``BEGIN`` and ``END`` below) in the document
with one table per device, GPUs first, so re-running after new results arrive updates the page and
hand edits never drift from the data. ``--check`` changes nothing and exits 1 when the page is stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .records import RECORD_FIELDS, RESULTS_DIR, load_records

BEGIN = "<!-- bench.tables: generated from bench/results/*.json by `python -m bench.tables`; do not edit by hand -->"
END = "<!-- bench.tables: end -->"
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
_NOTE_SKIP = {"file"}


def _number(value, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _notes(rec: dict) -> str:
    extras = [(k, v) for k, v in rec.items() if k not in RECORD_FIELDS and k not in _NOTE_SKIP]
    return "; ".join(f"{k}={_number(v)}" for k, v in extras if not isinstance(v, (list, dict)))


def render(records: list[dict]) -> str:
    """Markdown: a heading and a table per device (GPUs first, then CPUs), rows in file order."""
    if not records:
        return "No results recorded yet (bench/results/ holds no *.json run files).\n"
    devices: dict[str, list[dict]] = {}
    for rec in records:
        devices.setdefault(rec["device"], []).append(rec)
    order = sorted(devices, key=lambda d: (d.lower().startswith("cpu"), d))
    parts = []
    for device in order:
        rows = devices[device]
        versions = sorted({r["torch"] for r in rows})
        dates = sorted({r["date"] for r in rows})
        parts.append(f"#### {device}\n\ntorch {', '.join(versions)}; {', '.join(dates)}; "
                     f"{len({r['file'] for r in rows})} run file(s)\n")
        parts.append("| what | mode | exact | batch | steps | s / step | 1000 steps | peak GB | notes |\n"
                     "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
        for r in rows:
            per_step = r["seconds_per_step"]
            # a 1000-step projection means something for training runs only (not for a breakdown's parts)
            thousand = "" if per_step is None or not r["what"].startswith("train") else f"{per_step * 1000:.0f} s"
            parts.append(f"| {r['what']} | {r['mode']} | {_number(r['exact'])} | {r['batch']} | {r['steps']} | "
                         f"{_number(per_step)} | {thousand} | {_number(r['peak_gb'], 3)} | {_notes(r)} |")
        parts.append("")
    return "\n".join(parts)


def replace_between_markers(document: str, body: str) -> str:
    """``document`` with the text between BEGIN and END replaced by ``body``; ValueError without markers."""
    start, stop = document.find(BEGIN), document.find(END)
    if start < 0 or stop < start:
        raise ValueError(f"the document has no generated-tables markers; add the two lines\n{BEGIN}\n{END}\n"
                         f"where the tables belong.")
    return document[:start + len(BEGIN)] + "\n\n" + body.rstrip("\n") + "\n\n" + document[stop:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tables", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of run files (*.json)")
    parser.add_argument("--doc", type=Path, default=DOC, help="document with the marker comments")
    parser.add_argument("--check", action="store_true", help="exit 1 if the document is not up to date")
    args = parser.parse_args(argv)
    try:
        old = args.doc.read_text(encoding="utf-8")
        new = replace_between_markers(old, render(load_records(args.results)))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print("up to date" if new == old else f"{args.doc} is stale: run python -m bench.tables")
        return 0 if new == old else 1
    if new != old:
        args.doc.write_text(new, encoding="utf-8")
    print(f"wrote {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
