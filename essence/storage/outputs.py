"""Where a command writes, checked before it works: an output never replaces one of its inputs, and an
output that cannot be written is found while nothing has been computed yet.

A training that runs for an hour and then cannot save, or an edit that writes its result over the
photo it was made from, loses the user's time or the user's file. The checks here run first, for
every output of a command; the writers (``files.atomic_write``) then only ever replace a previous
output, never an input, and leave nothing half-written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import EssenceError

PathLike = str | os.PathLike


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name the same file: the same spelling once resolved (relative or absolute,
    through symbolic links), or, when both exist, the same file on disk (a hard link)."""
    return _Inputs([b]).holds(Path(a)) is not None


def check_output(path: PathLike, inputs: Iterable[PathLike | None] = (), *, what: str = "--out",
                 folder: bool = False) -> Path:
    """``path`` as an output (a file, or with ``folder=True`` a folder that will hold files), refused
    with an ``EssenceError`` saying why when it names one of ``inputs`` (under any spelling or link),
    when a file output is an existing folder or a folder output an existing file, or when nothing can
    be written where it would go (no such place, not a folder, no permission, a read-only disk)."""
    check_outputs([path], inputs, what=what, folders=folder)
    return Path(path)


def check_outputs(outputs: Iterable[PathLike], inputs: Iterable[PathLike | None], *, what: str = "--out",
                  folders: bool = False) -> None:
    """``check_output`` for many outputs against the same inputs (one per converted file, one per
    task of a batch): each input is resolved once and each folder tried once."""
    sources = _Inputs(inputs)
    tried: set[Path] = set()
    for output in map(Path, outputs):
        source = sources.holds(output)
        if source is not None:
            raise EssenceError(f"{what} {output} is the input {source}: writing it would replace the input. "
                               f"Choose another name for the output.")
        if folders and output.exists() and not output.is_dir():
            raise EssenceError(f"{what} {output} is a file, not a folder; give a folder for the outputs.")
        if not folders and output.is_dir():
            raise EssenceError(f"{what} {output} is a folder; give a file name (for example "
                               f"{output / 'out'}{output.suffix or ''}).")
        place = _nearest_existing(output if folders else output.parent)
        if place not in tried:
            _check_writable(place, output, what)
            tried.add(place)


class _Inputs:
    """A command's input files, by resolved path and, for those that exist, by file identity."""

    def __init__(self, paths: Iterable[PathLike | None]) -> None:
        self.by_path: dict[str, PathLike] = {}
        self.by_identity: dict[tuple[int, int], PathLike] = {}
        for path in paths:
            if path is None:
                continue
            self.by_path.setdefault(os.path.realpath(path), path)
            try:
                info = os.stat(path)
            except OSError:
                continue
            self.by_identity.setdefault((info.st_dev, info.st_ino), path)

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
