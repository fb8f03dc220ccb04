"""Benchmark results as data: one JSON record per measurement, one file per run under ``bench/results/``.

Every section of ``python -m bench`` can save what it measured as records with the same fields
(``RECORD_FIELDS``), so results from different machines, dates and versions can be put side by side
and the tables in docs/benchmarks.md are generated from them (``python -m bench.tables``) instead of
being copied by hand. A record may carry more fields than these (a section's own numbers, e.g. the
compile time or an objective ratio); the table shows them as notes.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path
from typing import Any, Iterable

import torch

from essence.storage import atomic_write

RECORD_FIELDS = ("device", "what", "mode", "exact", "batch", "steps", "seconds_per_step", "peak_gb", "torch", "date")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def device_label(device: torch.device) -> str:
    """What the numbers were measured on: the GPU's name, or "cpu (...)" with the cores and threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def record(device: str, what: str, mode: str, exact: bool, batch: int, steps: int, seconds_per_step: float | None,
           peak_gb: float | None, **extra: Any) -> dict:
    """One measurement in the common schema (the torch version and today's date filled in), plus ``extra``.

    CPU records also carry the 1-minute load average when written: other jobs on the same cores
    slow a CPU measurement down, so a reader must be able to tell a quiet run from a shared one.
    """
    if device.startswith("cpu") and hasattr(os, "getloadavg"):
        extra = {"load_average": round(os.getloadavg()[0], 2), **extra}
    return {"device": device, "what": what, "mode": mode, "exact": bool(exact), "batch": int(batch),
            "steps": int(steps), "seconds_per_step": None if seconds_per_step is None else float(seconds_per_step),
            "peak_gb": None if peak_gb is None else round(float(peak_gb), 3), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"), **extra}


def check_record(rec: dict) -> None:
    """Raise ValueError naming the fields a record lacks (a file with them missing cannot be tabled)."""
    missing = [field for field in RECORD_FIELDS if field not in rec]
    if missing:
        raise ValueError(f"benchmark record {rec.get('what', rec)!r} lacks {', '.join(missing)}.")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower().split("(")[0]).strip("-") or "device"


def write_records(records: Iterable[dict], directory: Path, run: str = "bench") -> Path:
    """Write one run's records to ``directory/<device>_<run>_<date>_<time>.json`` (atomically); its path."""
    records = list(records)
    for rec in records:
        check_record(rec)
    device = records[0]["device"] if records else "none"
    path = Path(directory) / f"{_slug(device)}_{_slug(run)}_{time.strftime('%Y-%m-%d_%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps({"records": records}, indent=1) + "\n", encoding="utf-8")
    return path


def load_records(directory: Path) -> list[dict]:
    """Every record of every ``*.json`` run file in ``directory`` (sorted by file name), schema-checked."""
    records = []
    for path in sorted(Path(directory).glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        for rec in data.get("records", []) if isinstance(data, dict) else []:
            check_record(rec)
            records.append({**rec, "file": path.name})
    return records


def gb(mb: float | None) -> float | None:
    return None if mb is None else mb / 1024


def records_from_rows(rows: list[dict], device: str, exact_modes: set[str]) -> list[dict]:
    """The timing rows of ``run_all`` (generator, encoder, train, candidates) as records."""
    out = []
    for row in rows:
        kind = row.get("kind")
        if kind == "generator":
            out.append(record(device, f"generator 1024px {row['pass']}", row["dtype"], row["dtype"] == "float32",
                              row["batch"], 1, row["seconds"], gb(row["peak_mb"]),
                              images_per_second=round(row["images_per_second"], 3)))
        elif kind == "encoder":
            out.append(record(device, "e4e encode 256px", row["dtype"], row["dtype"] == "float32", row["batch"], 1,
                              row["seconds"], gb(row["peak_mb"]), images_per_second=round(row["images_per_second"], 3)))
        elif kind == "train":
            variant = {k: row[k] for k in ("upsample", "cudnn_benchmark") if k in row}
            exact = row["mode"] in exact_modes
            out.append(record(device, f"train 4 sources {row.get('size', 1024)}px", row["mode"], exact, 1,
                              row["steps_timed"], row["seconds_per_step"], gb(row["peak_mb"]),
                              seconds_per_1000_steps=round(row["projected_1000_steps_s"], 1), **variant))
        elif kind == "candidates":
            exact = row["mode"] in exact_modes
            out.append(record(device, f"train candidates x 4 sources {row.get('size', 1024)}px", row["mode"], exact,
                              row["candidates"], row["steps_timed"], row["seconds_per_step"], gb(row["peak_mb"]),
                              seconds_per_direction_step=round(row["seconds_per_direction_step"], 5),
                              seconds_per_1000_step_essence=round(row["seconds_per_direction_step"] * 1000, 1),
                              **({"chunk": row["chunk"]} if row.get("chunk") else {})))
    return out
