"""Writing files so that no reader ever sees half of one, and reading Essence's safetensors files.

Direction and latent files are written by long jobs that users cancel and by processes that get
killed. Every write goes to a temporary file in the destination folder, is flushed to disk, and is
then renamed over the destination with ``os.replace`` (atomic on one filesystem): the destination
is either the old complete file or the new complete file, never a torn one. Numbered files
(``<name>_00001.safetensors``, as ComfyUI names outputs) never replace one at all.

Reading: Essence's own files are safetensors (no code can hide in them). Before loading any tensor
the header is parsed and checked, so a damaged or hostile header (truncated, absurd shapes, a
declared size larger than the file) is refused with a clear message instead of a huge allocation.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import secrets
import socket
import stat
import struct
import tokenize
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch

from ..errors import CorruptFileError, EssenceError, MissingWeightsError

MAX_HEADER_BYTES = 16 * 2**20  # safetensors' own limit is 100 MB; Essence's headers are tiny
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1}


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it vanishes.

    The new file gets the permissions the umask gives new files (as every other tool's output), even
    when the writer recreated the temporary file owner-only, as safetensors' ``save_file`` does.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(path.parent, path.name)
    mode = stat.S_IMODE(tmp.stat().st_mode)  # 0o666 less the umask, applied by the kernel
    try:
        yield tmp
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename in (str(tmp), tmp):
            exc.filename = str(path)  # the user knows the file by its name, not by its temporary one
        raise


TEMP_TOKEN_BYTES = 6  # a temporary file is .<name>.<12 hex digits>.tmp beside its target
TEMP_NAME = re.compile(rf"\.(?P<name>.+)\.[0-9a-f]{{{2 * TEMP_TOKEN_BYTES}}}\.tmp")


def _new_temp_file(folder: Path, name: str) -> Path:
    """A new empty ``.<name>.<random>.tmp`` in ``folder`` with the permissions the umask gives
    (``tempfile.mkstemp``'s are owner-only, which would hide saved files from a ComfyUI server or a
    teammate reading the folder)."""
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(TEMP_TOKEN_BYTES)}.tmp"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"{folder}: could not create a temporary file for {name}.")


def remove_temp_files(paths: Iterable[str | os.PathLike]) -> int:
    """Delete the temporary files ``atomic_write`` left beside ``paths`` when their writer was killed
    (a killed process runs no cleanup); returns how many. Only for a caller that knows no writer of
    those paths is running now (a batch, before and after its run). One listing per folder."""
    names: dict[Path, set[str]] = {}
    for path in map(Path, paths):
        names.setdefault(path.parent, set()).add(path.name)
    removed = 0
    for folder, wanted in names.items():
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            match = TEMP_NAME.fullmatch(entry.name)
            if match and match["name"] in wanted and entry.is_file():
                entry.unlink(missing_ok=True)
                removed += 1
    return removed


def save_safetensors_atomic(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                            path: str | os.PathLike) -> Path:
    """safetensors ``save_file`` through ``atomic_write``; metadata values must be strings."""
    with atomic_write(path) as tmp:
        _write_safetensors(tensors, metadata, tmp)
    return Path(path)


def save_safetensors_numbered(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str],
                              folder: str | os.PathLike, stem: str) -> Path:
    """safetensors ``save_file`` through ``write_numbered``: a new ``<stem>_00001.safetensors``."""
    return write_numbered(folder, stem, ".safetensors", lambda tmp: _write_safetensors(tensors, metadata, tmp))


def _write_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], path: Path) -> None:
    from safetensors.torch import save_file

    bad = [k for k, v in metadata.items() if not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata values must be strings: {bad}")
    from safetensors import SafetensorError

    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path), metadata=dict(metadata))
    except SafetensorError as exc:  # the disk's refusal, wrapped: give it back as the OSError it was
        raise _os_error(str(exc), path) from None


# how safetensors words the operating system's error: "I/O error: File too large (os error 27)", or in
# older versions Rust's debug form, 'Os { code: 28, kind: StorageFull, message: "No space left on device" }'
_RUST_IO_ERRORS = (re.compile(r"(?P<message>[^:(]+) \(os error (?P<code>\d+)\)"),
                   re.compile(r"Os \{ code: (?P<code>\d+), kind: \w+, message: \"(?P<message>[^\"]*)\""))


def _os_error(text: str, path: Path) -> OSError:
    """safetensors reports a failed write (a full disk, a quota, an I/O error) as a ``SafetensorError``
    whose text holds the operating system's error; this is that error, so every writer's failure
    reaches the user the same way (one ``error:`` line, nothing half-written)."""
    for pattern in _RUST_IO_ERRORS:
        found = pattern.search(text)
        if found is not None:
            return OSError(int(found["code"]), found["message"].strip(), str(path))
    return OSError(errno.EIO, f"could not write the file ({text})", str(path))


LOCK_NAME = ".essence.lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "a batch", name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold ``folder``'s lock (a hidden ``.essence.lock`` in it, or ``name``) while the block runs,
    so that two jobs writing into one folder do not both do every task and overwrite each other's
    report; a second one is refused at once, naming the process that holds it.

    The lock is the operating system's (``flock``), released when its holder ends, even when
    killed; the lock file is removed when the block ends. A process that opened the file just before
    it was removed finds, once it holds the lock, that the name no longer leads to its file, and
    opens the new one instead, so the removal never lets two holders in.

    The lock file is written, so only a regular file of one name is taken as it: a symbolic link,
    hard link, folder or pipe planted under its name is refused (``_open_lock_file``), never written
    through.
    """
    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    while True:
        handle = _open_lock_file(path)
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            _remove_if_empty(folder, made)
            raise EssenceError(f"{folder} is in use by {what} ({holder}): two jobs must not write into one "
                               f"folder at once. Wait for it to finish, or choose another output folder.")
        if _still_named(handle, path):
            break
        handle.close()  # removed by the holder before us: lock the file that has the name now
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()}")
        handle.flush()
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        handle.close()  # releases the lock
        _remove_if_empty(folder, made)


def _remove_if_empty(folder: Path, made: bool) -> None:
    """A folder the lock made and nothing was written into (the job was refused or found nothing to
    do) is removed again, so a failed start leaves no trace."""
    if made:
        with contextlib.suppress(OSError):
            folder.rmdir()


def _open_lock_file(path: Path) -> Any:
    """``path`` opened for reading and writing, created if missing, never truncated here, and only
    when it is a regular file with no other name: the lock writes its holder into it, and following
    a link planted under its name would overwrite the file the link leads to. ``O_NOFOLLOW`` refuses
    a symbolic link; ``O_NONBLOCK`` keeps a named pipe from blocking the open (it is cleared again)."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        found = _not_a_lock_file(path)
        if found is None:
            raise
        raise _unusable_lock(path, found) from exc
    found = _not_a_lock_file(path, os.fstat(fd))
    if found is not None:
        os.close(fd)
        raise _unusable_lock(path, found)
    _clear_nonblocking(fd)
    return os.fdopen(fd, "r+", encoding="utf-8")


def _not_a_lock_file(path: Path, opened: os.stat_result | None = None) -> str | None:
    """What is at ``path`` (``opened``: the file as opened) when it may not serve as a lock file, else None."""
    try:
        info = opened or os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(info.st_mode):
        with contextlib.suppress(OSError):
            return f"a symbolic link to {os.readlink(path)}"
        return "a symbolic link"
    if stat.S_ISREG(info.st_mode):
        return f"a file with {info.st_nlink} names (a hard link)" if info.st_nlink > 1 else None
    kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a named pipe (FIFO)", stat.S_ISSOCK: "a socket",
             stat.S_ISCHR: "a device", stat.S_ISBLK: "a device"}
    return next((kind for test, kind in kinds.items() if test(info.st_mode)), "not a regular file")


def _unusable_lock(path: Path, found: str) -> EssenceError:
    spared = " (removing a link leaves the file it leads to as it is)" if "link" in found else ""
    return EssenceError(f"{path} is {found}, not a lock file, and Essence will not write its lock through it. "
                        f"Remove {path}{spared} and run again.")


def _clear_nonblocking(fd: int) -> None:
    """Back to ordinary blocking reads and writes after the non-blocking open (POSIX only)."""
    try:
        import fcntl
    except ImportError:
        return
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)


def _still_named(handle: Any, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.lstat(path))
    except OSError:
        return False


def _try_lock(handle: Any) -> bool:
    """An exclusive lock on an open file without waiting: POSIX ``flock``, or Windows' ``msvcrt``."""
    try:
        import fcntl
    except ImportError:
        import msvcrt

        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


COUNTER_DIGITS = 5  # <stem>_00001.safetensors, as ComfyUI numbers its own outputs
MAX_NAME_BYTES = 200  # a stem short enough for the counter and suffix within file systems' 255 bytes
_FORBIDDEN_NAME_CHARS = re.compile(r'[\x00-\x1f<>:"|?*]')


def checked_stem(name: str, suffix: str, folder_label: str, what: str = "the file") -> str:
    """A file name for a new file that cannot leave its folder (``folder_label`` names it in the
    message). Refused: empty names, ``..``, absolute paths, path separators (of any platform),
    drive letters, control characters and hidden names. A trailing ``suffix`` is dropped (the
    writer adds it back)."""
    stem = name.strip()
    if stem.lower().endswith(suffix):
        stem = stem[: -len(suffix)]
    problem = None
    if not stem:
        problem = "it is empty"
    elif ".." in stem:
        problem = "it contains '..'"
    elif os.path.isabs(stem) or stem.startswith(("/", "\\")):
        problem = "it is an absolute path"
    elif any(sep in stem for sep in ("/", "\\", os.sep, os.altsep or "/")):
        problem = "it contains a path separator"
    elif _FORBIDDEN_NAME_CHARS.search(stem):
        problem = "it contains a character file systems refuse (< > : \" | ? * or a control character)"
    elif stem.startswith("."):
        problem = "it starts with '.' (a hidden file)"
    elif len(stem.encode("utf-8")) > MAX_NAME_BYTES:
        problem = f"it is longer than {MAX_NAME_BYTES} bytes (file systems allow 255 for a whole file name)"
    if problem:
        raise EssenceError(f"cannot save {what} as {name!r}: {problem}. Use a plain name such as 'keanu'; files "
                           f"always go into {folder_label}.")
    return stem


def next_numbered_path(folder: str | os.PathLike, stem: str, suffix: str) -> Path:
    """``<stem>_00001<suffix>``, counting up past existing files."""
    folder = Path(folder)
    pattern = re.compile(rf"^{re.escape(stem)}_(\d{{{COUNTER_DIGITS},}}){re.escape(suffix)}$")
    taken = [int(m.group(1)) for f in (os.listdir(folder) if folder.is_dir() else []) if (m := pattern.match(f))]
    return folder / f"{stem}_{max(taken, default=0) + 1:0{COUNTER_DIGITS}d}{suffix}"


def write_numbered(folder: str | os.PathLike, stem: str, suffix: str, write: Callable[[Path], None]) -> Path:
    """Write a new file as the next free ``<stem>_NNNNN<suffix>`` in ``folder`` without ever replacing a
    file, even one another process saves at the same moment; its path.

    ``write(path)`` fills a temporary file of ``atomic_write``'s kind (hidden, cleaned up by
    ``remove_temp_files``), which then takes its final name with ``os.link``: that fails instead of
    replacing when the name was taken meanwhile, and the next number is tried. Where hard links
    are unsupported, the name is reserved with an exclusive create and the file renamed over it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(folder, f"{stem}{suffix}")
    mode = stat.S_IMODE(tmp.stat().st_mode)
    try:
        write(tmp)
        os.chmod(tmp, mode)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        while True:
            path = next_numbered_path(folder, stem, suffix)
            try:
                os.link(tmp, path)
                return path
            except FileExistsError:
                continue  # another save took this number first
            except OSError:  # no hard links on this file system: reserve the name, then move in
                try:
                    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    continue
                os.replace(tmp, path)
                return path
    finally:
        tmp.unlink(missing_ok=True)


def read_safetensors_header(path: str | os.PathLike) -> dict:
    """Parse and validate a safetensors header without loading any tensor data.

    Checks: the 8-byte length prefix, a JSON header within bounds that names nothing twice, every
    tensor's dtype, shape and byte range agreeing with each other and lying inside the file, and
    the ranges together tiling the data section as safetensors' own reader demands.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"{path}: no such file.")
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CorruptFileError(f"{path}: not a safetensors file (only {len(prefix)} bytes).")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > MAX_HEADER_BYTES:
            raise CorruptFileError(f"{path}: its header is too large ({header_len:,} bytes declared; Essence reads "
                                   f"safetensors headers up to {MAX_HEADER_BYTES:,}): not one of Essence's files, "
                                   f"or a damaged one.")
        if header_len + 8 > size:
            raise CorruptFileError(f"{path}: not a safetensors file, or truncated (header claims "
                                   f"{header_len} bytes, file has {size}).")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw, object_pairs_hook=_unique_keys(path))
    except RecursionError:  # brackets nested thousands deep: no real header is
        raise CorruptFileError(f"{path}: not a safetensors file (its JSON header is nested too deeply to "
                               f"read).") from None
    except ValueError:  # not JSON, not UTF-8, or a 5000-digit number
        raise CorruptFileError(f"{path}: not a safetensors file (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{path}: not a safetensors file (its header is not a JSON object).")
    data_len = size - 8 - header_len
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                raise CorruptFileError(f"{path}: malformed metadata block.")
            continue
        spans.append((*_check_tensor_entry(path, name, info, data_len), name))
    _check_tiling(path, spans, data_len)
    return header


def _unique_keys(path: Path) -> Callable[[list[tuple[str, Any]]], dict]:
    """``json.loads``' ``object_pairs_hook``: an object naming a key twice is refused. JSON readers
    keep one of the two (Python the last, others the first or an error), so a header with a
    duplicate tensor can show one reader other tensors than another: the file is lying."""
    def build(pairs: list[tuple[str, Any]]) -> dict:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                shown = key if len(key) <= 80 else key[:80] + "..."
                raise CorruptFileError(f"{path}: its header names {shown!r} twice; the file is damaged, or made to "
                                       f"show different readers different contents.")
            seen.add(key)
        return dict(pairs)

    return build


def _check_tiling(path: Path, spans: list[tuple[int, int, str]], data_len: int) -> None:
    """The tensors' byte ranges, in order, must tile the data section: each starts where the one
    before it ends, and the last ends where the file does. safetensors (0.x) refuses any other file
    when a tensor is read ("invalid offset", "not fully covered"); refusing it here, with the
    header, says what is wrong before any read, on every path that reads the file."""
    expected, before = 0, ""
    for start, end, name in sorted(spans):
        if start < expected:
            raise CorruptFileError(f"{path}: tensors {before!r} and {name!r} claim the same bytes ({start}-"
                                   f"{min(end, expected)} of its data); the file is damaged.")
        if start > expected:
            raise CorruptFileError(f"{path}: bytes {expected}-{start} of its data belong to no tensor (the next "
                                   f"is {name!r}); the file is damaged.")
        expected, before = end, name
    if expected != data_len:
        raise CorruptFileError(f"{path}: bytes {expected}-{data_len} of its data belong to no tensor; the file is "
                               f"damaged.")


def _check_tensor_entry(path: Path, name: str, info: object, data_len: int) -> tuple[int, int]:
    """The tensor's byte range [start, end) in the data section, once its dtype, shape and range agree."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise CorruptFileError(f"{path}: malformed entry for tensor {name!r}.")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in _DTYPE_BYTES:
        raise CorruptFileError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}.")
    if not (isinstance(shape, list) and all(type(d) is int and 0 <= d < 2**62 for d in shape)):
        raise CorruptFileError(f"{path}: tensor {name!r} has an invalid shape {shape!r}.")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise CorruptFileError(f"{path}: tensor {name!r} has invalid data offsets.")
    numel = 1
    for d in shape:
        numel *= d
    start, end = offsets
    if not (0 <= start <= end <= data_len) or end - start != numel * _DTYPE_BYTES[dtype]:
        raise CorruptFileError(f"{path}: tensor {name!r} ({dtype} {shape}) does not fit the file's data "
                               f"(bytes {start}-{end} of {data_len}); the file is truncated or damaged.")
    return start, end


def load_safetensors_checked(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Validated header, then the tensors (on the CPU) and the metadata."""
    header = read_safetensors_header(path)
    return _load_tensors(path), dict(header.get("__metadata__", {}))


def _load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a file whose header was checked (on the CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, RuntimeError, TypeError, ValueError, OverflowError) as exc:
        raise CorruptFileError(f"{path}: unreadable safetensors file ({exc}).") from None



def utc_now() -> str:
    """Creation timestamps in Essence's files: UTC, seconds, ISO 8601."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def encode_metadata(format_name: str, format_version: int, fields: Mapping[str, object]) -> dict[str, str]:
    """safetensors metadata (strings only): the format tag, then every field, JSON-encoded unless a string."""
    meta = {"format": format_name, "format_version": str(format_version)}
    for key, value in fields.items():
        if key not in meta:
            meta[key] = value if isinstance(value, str) else json.dumps(value)
    return meta


MAX_NAMES_SHOWN = 5  # tensors a "not an Essence file" message names


def read_typed_file(path: str | os.PathLike, format_name: str, format_version: int, tensor_name: str,
                    error: type[Exception], what: str, hint: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """Load one of Essence's own safetensors files (directions, latents) and check it is one.

    Returns the tensors and the decoded metadata (JSON fields parsed, format tags removed). Any
    problem (damaged file, another kind of file, a newer format) raises ``error`` naming the file.
    The kind of file is judged from its header, before any tensor is read: another kind (a file of
    tuned weights holds thousands of tensors, 56 MB a face) is refused without loading it, naming
    a few of its tensors.
    """
    try:
        header = read_safetensors_header(path)
    except (CorruptFileError, MissingWeightsError) as exc:
        raise error(f"not a usable {what}: {exc}") from None
    raw = header.get("__metadata__", {})
    names = sorted(name for name in header if name != "__metadata__")
    if raw.get("format") != format_name or tensor_name not in names:
        shown = ", ".join(map(repr, names[:MAX_NAMES_SHOWN])) + (f", ... ({len(names)} in all)"
                                                                  if len(names) > MAX_NAMES_SHOWN else "")
        raise error(f"{path}: not an Essence {what} (format {raw.get('format')!r}, tensors "
                    f"[{shown}]).{' ' + hint if hint else ''}")
    version = raw.get("format_version", "?")
    if not (version.isascii() and version.isdigit()) or int(version) > format_version:
        raise error(f"{path}: {what} format version {version} is newer than this Essence understands "
                    f"({format_version}); update Essence.")
    try:
        tensors = _load_tensors(path)
    except (CorruptFileError, MissingWeightsError) as exc:
        raise error(f"not a usable {what}: {exc}") from None
    if tensor_name not in tensors:
        raise error(f"{path}: the file changed while it was read; try again.")
    return tensors, {k: _json_or_text(v) for k, v in raw.items() if k not in ("format", "format_version")}


def _json_or_text(value: str) -> object:
    try:
        return json.loads(value)
    except (ValueError, RecursionError):  # not JSON (plain text), absurdly nested, or a huge number
        return value


MAX_NPY_HEADER_BYTES = 10_000  # numpy's own default limit for a .npy header


def load_npy_checked(path: str | os.PathLike, error: type[Exception]) -> "np.ndarray":
    """A numeric ``.npy`` array (native byte order), or ``error`` naming the file.

    The header is read and checked before any data: no pickles (``allow_pickle`` is never on), only
    numeric dtypes torch can hold, and a shape whose size equals the bytes actually in the file, so
    a header claiming a huge array is refused without allocating it. ``.npz`` archives and other
    files are refused too.
    """
    path = Path(path)
    try:
        with _open_npy(path, error) as (handle, shape, fortran, dtype):
            count = 1
            for dim in shape:
                count *= dim
            array = np.fromfile(handle, dtype=dtype, count=count).reshape(shape, order="F" if fortran else "C")
    except (ValueError, OSError, EOFError, MemoryError) as exc:
        raise error(f"{path}: not a readable .npy array ({exc}).") from None
    return np.ascontiguousarray(array.astype(dtype.newbyteorder("="), copy=False))


def npy_shape(path: str | os.PathLike, error: type[Exception]) -> tuple[int, ...]:
    """The shape a checked ``.npy`` file holds (its header only; the same checks as ``load_npy_checked``)."""
    with _open_npy(Path(path), error) as (_handle, shape, _fortran, _dtype):
        return tuple(shape)


@contextlib.contextmanager
def _open_npy(path: Path, error: type[Exception]) -> Iterator[tuple]:
    """The open file positioned at its data, with the checked header: (handle, shape, fortran, dtype)."""
    if not path.is_file():
        raise error(f"{path}: no such file.")
    size = path.stat().st_size
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise error(f"{path}: not a readable .npy array ({exc}).") from None
    with handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle, max_header_size=MAX_NPY_HEADER_BYTES)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle, max_header_size=MAX_NPY_HEADER_BYTES)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or \
                    dtype.kind not in "fiubc" or dtype.itemsize > (16 if dtype.kind == "c" else 8):
                raise ValueError(f"it holds {dtype}, not plain numbers")
            if not all(type(dim) is int and dim >= 0 for dim in shape):
                raise ValueError(f"its header declares an invalid shape {shape!r}")
            count = 1
            for dim in shape:
                count *= dim
            data_bytes = size - handle.tell()
            if count * dtype.itemsize != data_bytes:
                raise ValueError(f"its header declares {dtype} {list(shape)} ({count * dtype.itemsize} bytes) "
                                 f"but the file holds {data_bytes} bytes of data; it is truncated or damaged")
        except (ValueError, OSError, EOFError, SyntaxError, TypeError, RecursionError, MemoryError,
                tokenize.TokenError) as exc:  # numpy parses the header with tokenize and ast
            raise error(f"{path}: not a readable .npy array ({exc}).") from None
        yield handle, shape, fortran, dtype
