"""Where a command writes, checked before it works: an output never replaces one of its inputs, and an
output that cannot be written is found while nothing has been computed yet.

A training that runs for an hour and then cannot save, or an edit that writes its result over the
photo it was made from, loses the user's time or the user's file. The checks here run first, for
every output of a command; the writers (``files.atomic_write``) then only ever replace a previous
output, never an input, and leave nothing half-written.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import EssenceError

PathLike = str | os.PathLike
COMPANION_SUFFIX = ".tuned.safetensors"  # a latent file's tuned weights: <name>.tuned.safetensors beside it


def companion_path(path: PathLike) -> Path:
    """Where the tuned weights of the latent file ``path`` live: ``<name>.tuned.safetensors`` beside it.
    The name belongs to that latent file, so no other output may take it."""
    path = Path(path)
    return path.with_name(f"{path.name.removesuffix('.safetensors')}{COMPANION_SUFFIX}")


@dataclass(frozen=True)
class Output:
    """One file (or, with ``folder``, one folder of files) a command will write. ``suffixes`` are the
    endings it may have (any, when empty); ``companion`` marks the tuned-weights file written beside a
    latent file, the one output allowed a name ending in ``.tuned.safetensors``."""

    path: Path
    what: str = "--out"
    suffixes: tuple[str, ...] = ()
    folder: bool = False
    companion: bool = False


def check_output(path: PathLike, inputs: Iterable[PathLike | None] = (), *, what: str = "--out",
                 folder: bool = False, suffixes: Sequence[str] = ()) -> Path:
    """``path`` as an output (a file, or with ``folder=True`` a folder that will hold files), refused
    with an ``EssenceError`` saying why when it names one of ``inputs`` (under any spelling or link),
    when a file output is an existing folder or a folder output an existing file, or when nothing can
    be written where it would go (no such place, not a folder, no permission, a read-only disk)."""
    check_outputs([path], inputs, what=what, folders=folder, suffixes=suffixes)
    return Path(path)


def check_outputs(outputs: Iterable[PathLike], inputs: Iterable[PathLike | None], *, what: str = "--out",
                  folders: bool = False, suffixes: Sequence[str] = ()) -> None:
    """``check_output`` for many outputs of one kind against the same inputs (one per converted file,
    one per task of a batch)."""
    check_files([Output(Path(p), what, tuple(suffixes), folders) for p in outputs], inputs)


def check_files(outputs: Sequence[Output], inputs: Iterable[PathLike | None]) -> None:
    """Every output of a command, checked together before it works: against every file it reads
    (given or found by the default lookup, and the tuned weights beside an input latent file), against
    each other, for its ending, for a name that belongs to another file, and for a place that can be
    written. Each input is resolved once and each folder tried once."""
    sources = _Inputs(_with_companions(inputs))
    written = _Inputs([])
    tried: set[Path] = set()
    for output in outputs:
        _check_against(output, sources, written)
        _check_name(output)
        written.add(output.path, output.what)
        place = _nearest_existing(output.path if output.folder else output.path.parent)
        if place not in tried:
            _check_writable(place, output.path, output.what)
            tried.add(place)


def _with_companions(inputs: Iterable[PathLike | None]) -> list[PathLike]:
    """The inputs, and beside each latent file the tuned weights it may read."""
    paths = [path for path in inputs if path is not None]
    return paths + [companion_path(p) for p in paths if str(p).lower().endswith(".safetensors")
                    and not str(p).lower().endswith(COMPANION_SUFFIX)]


def _check_name(output: Output) -> None:
    """The ending an output must have, and the companion names that belong to latent files."""
    name = output.path.name
    if output.suffixes and not output.folder and output.path.suffix.lower() not in output.suffixes:
        raise EssenceError(f"{output.what} must end in {_either(output.suffixes)}, got {name!r}.")
    if not output.companion and name.lower().endswith(COMPANION_SUFFIX):
        owner = name[: -len(COMPANION_SUFFIX)] + ".safetensors"
        raise EssenceError(f"{output.what} {output.path}: names ending in {COMPANION_SUFFIX} belong to the tuned "
                           f"weights of a latent file ({owner}); choose another name.")


def _check_against(output: Output, sources: "_Inputs", written: "_Inputs") -> None:
    source = sources.holds(output.path)
    if source is not None:
        raise EssenceError(f"{output.what} {output.path} is the input {source}: writing it would replace the "
                           f"input. Choose another name for the output.")
    other = written.holds(output.path)
    if other is not None:
        raise EssenceError(f"{output.what} {output.path} is also {other}: each output needs its own name.")
    if output.folder and output.path.exists() and not output.path.is_dir():
        raise EssenceError(f"{output.what} {output.path} is a file, not a folder; give a folder for the outputs.")
    if not output.folder and output.path.is_dir():
        raise EssenceError(f"{output.what} {output.path} is a folder; give a file name (for example "
                           f"{output.path / 'out'}{output.path.suffix or ''}).")


def _either(suffixes: Sequence[str]) -> str:
    return suffixes[0] if len(suffixes) == 1 else f"{', '.join(suffixes[:-1])} or {suffixes[-1]}"


class _Inputs:
    """A command's input files, by resolved path and, for those that exist, by file identity."""

    def __init__(self, paths: Iterable[PathLike | None]) -> None:
        self.by_path: dict[str, PathLike] = {}
        self.by_identity: dict[tuple[int, int], PathLike] = {}
        for path in paths:
            if path is not None:
                self.add(path, path)

    def add(self, path: PathLike, label: PathLike) -> None:
        """``path``, named ``label`` in messages."""
        self.by_path.setdefault(os.path.realpath(path), label)
        try:
            info = os.stat(path)
        except OSError:
            return
        self.by_identity.setdefault((info.st_dev, info.st_ino), label)

    def holds(self, path: Path) -> PathLike | None:
        """The input ``path`` would replace, if any."""
        found = self.by_path.get(os.path.realpath(path))
        if found is not None:
            return found
        try:
            info = os.stat(path)
        except OSError:  # it does not exist (yet)
            return None
        return self.by_identity.get((info.st_dev, info.st_ino))


def _nearest_existing(folder: Path) -> Path:
    """``folder``, or the nearest folder above it that exists (the missing ones will be created)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def _check_writable(existing: Path, path: Path, what: str) -> None:
    """Can a new file be created in ``existing``? Tried for real with an empty file, removed at once:
    permission bits alone do not tell a read-only disk or a root-owned folder apart."""
    if not existing.is_dir():
        raise EssenceError(f"cannot write {what} {path}: {existing} is a file, not a folder.")
    probe = existing / f".essence-write-check-{os.getpid()}"
    try:
        with open(probe, "x"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise EssenceError(f"cannot write {what} {path}: {existing}: {reason.lower()}. Choose a folder you "
                           f"can write to.") from None
    probe.unlink(missing_ok=True)


def save_or_rescue(save: Callable[[Path], Path], path: PathLike, what: str) -> Path:
    """``save(path)``; when the disk refuses it (full, over quota, an I/O error), ``save`` again in the
    first place that takes it (beside the output's folder, then the temporary folder, then the home
    folder) and raise an ``EssenceError`` saying where the work went. Work that took minutes or hours
    (a trained direction, tuned faces) is never lost to a failed write at its very end."""
    path = Path(path)
    try:
        return save(path)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
    tried = []
    for folder in _rescue_folders(path):
        rescue = _unused_name(folder / path.name)
        try:
            saved = save(rescue)
        except OSError:
            tried.append(str(folder))
            continue
        raise EssenceError(f"cannot write {path}: {reason}. The {what} is saved as {saved} instead; move it "
                           f"where you want it.")
    raise EssenceError(f"cannot write {path}: {reason}; nor could it be saved in {', '.join(tried) or 'any other'} "
                       f"folder, so the {what} is lost. Free some space and run again.")


def _rescue_folders(path: Path) -> list[Path]:
    """Where a file that could not be written may go instead, nearest first, never its own folder."""
    seen, folders = {os.path.realpath(path.parent)}, []
    for place in (path.parent.parent, Path(tempfile.gettempdir()), Path.home()):
        real = os.path.realpath(place)
        if place.is_dir() and real not in seen:
            seen.add(real)
            folders.append(place)
    return folders


def _unused_name(path: Path) -> Path:
    """``path``, or ``<stem>-2<suffix>``, ``-3``... when a file has that name (a rescue replaces nothing)."""
    stem, suffix = path.name.split(".", 1) if "." in path.name else (path.name, "")
    suffix = f".{suffix}" if suffix else ""
    candidate, n = path, 1
    while candidate.exists() or companion_path(candidate).exists():
        n += 1
        candidate = path.with_name(f"{stem}-{n}{suffix}")
    return candidate
