"""Downloading weight files so that nothing half-written ever looks complete.

Weight files are large (the e4e encoder is 1.2 GB) and come from mirrors that fail, stall and
change. So a download streams into ``<dest>.part``, resumes an interrupted ``.part`` with an HTTP
Range request, checks the size and sha256 at the end, and only then moves the file into place with
``os.replace`` (atomic on one filesystem). A file at ``dest`` is therefore always complete and
verified; a failure leaves at most a ``.part`` (kept after a network interruption, so the next run
resumes; deleted after a checksum mismatch, since its bytes are wrong). stdlib only (urllib), with
tqdm for progress when it is installed.
"""

from __future__ import annotations

import bz2
import http.client
import json
import os
import re
import shutil
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

from ..errors import DownloadError
from .files import atomic_write
from .weights import WeightSpec, default_weights_dir, file_sha256, weight_status

USER_AGENT = "essence-weights/1 (+python urllib)"
CHUNK_BYTES = 1 << 20
_CONTENT_RANGE_RE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIABLE_RE = re.compile(r"bytes\s+\*/(\d+)")


def part_path(dest: Path) -> Path:
    """Where an unfinished download of ``dest`` is kept (never a name a loader would pick up)."""
    return dest.with_suffix(dest.suffix + ".part")


def _meta_path(dest: Path) -> Path:
    """Sidecar recording which URL (and ETag) a ``.part`` came from, so resumes never mix files."""
    return dest.with_suffix(dest.suffix + ".part.json")


@dataclass
class _Attempt:
    """One HTTP exchange: where the bytes will be appended and how many are expected in total."""

    offset: int
    total: int | None


def download(
    url: str | Sequence[str],
    dest: str | os.PathLike[str],
    sha256: str | None = None,
    size: int | None = None,
    progress: bool = True,
    *,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` (or the first of several URLs that works) to ``dest``, verified.

    Raises ``DownloadError`` naming each URL's failure. ``sha256``/``size`` are what the file must
    be; when given, a mismatch deletes the bytes and fails rather than leaving a damaged file.
    """
    dest = Path(dest)
    urls = [url] if isinstance(url, str) else list(url)
    if not urls:
        raise DownloadError(f"no URL to download {dest.name} from.")
    failures = []
    for candidate in urls:
        try:
            return _download_one(candidate, dest, sha256, size, progress, timeout)
        except DownloadError as exc:
            failures.append(f"{candidate}: {exc}")
    if len(failures) == 1:
        raise DownloadError(failures[0])
    raise DownloadError(f"every source for {dest.name} failed:\n" + "\n".join(f"  - {f}" for f in failures))


def _download_one(url: str, dest: Path, sha256: str | None, size: int | None, progress: bool, timeout: float) -> Path:
    part = part_path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        offset = _resume_offset(part, dest, url, sha256, size)
        if not (size and offset == size):
            _fetch_into(url, dest, offset, size, progress, timeout)
        _verify_or_discard(part, dest, sha256, size)
        os.replace(part, dest)
        _meta_path(dest).unlink(missing_ok=True)
    except OSError as exc:  # the folder is not writable, the disk is full, ...
        raise DownloadError(f"could not write {dest}: {exc}") from None
    return dest


def _resume_offset(part: Path, dest: Path, url: str, sha256: str | None, size: int | None) -> int:
    """Bytes of ``part`` to keep: all of them when they provably belong to this download, else 0.

    Without a checksum, a ``.part`` is only resumed from the URL that produced it, since mirrors
    may serve different serialisations of "the same" file and splicing two would go undetected.
    """
    if not part.is_file():
        return 0
    have = part.stat().st_size
    same_source = _read_meta(dest).get("url") == url
    if (sha256 or same_source) and not (size and have > size):
        return have
    _discard(part, dest)
    return 0


class _Restart(Exception):
    """The server will not continue our ``.part``: drop it and ask for the whole file."""


def _fetch_into(url: str, dest: Path, offset: int, size: int | None, progress: bool, timeout: float) -> None:
    """Append the rest of ``url`` to the ``.part`` file, restarting from zero when resuming is refused."""
    try:
        _fetch_attempt(url, dest, offset, size, progress, timeout)
        return
    except _Restart:
        _discard(part_path(dest), dest)
    try:
        _fetch_attempt(url, dest, 0, size, progress, timeout)
    except _Restart:
        raise DownloadError("the server sent a partial answer to a request for the whole file.") from None


def _fetch_attempt(url: str, dest: Path, offset: int, size: int | None, progress: bool, timeout: float) -> None:
    etag = _read_meta(dest).get("etag") if offset else None
    with _open(url, offset, etag, timeout) as response:
        attempt = _plan(response, offset)
        if size and attempt.total and attempt.total != size:
            _discard(part_path(dest), dest)
            raise DownloadError(f"size mismatch: expected {size} bytes, the server offers {attempt.total}.")
        if attempt.offset and attempt.total is not None and attempt.offset >= attempt.total:
            return  # the .part already holds every byte (answer to a Range at the end)
        _write_meta(dest, url, response.headers.get("ETag"))
        _stream(response, dest, attempt, progress)


@contextmanager
def _open(url: str, offset: int, etag: str | None, timeout: float) -> Iterator[Any]:
    """urlopen with Range/If-Range; HTTP and network failures become ``DownloadError``."""
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if etag:
            headers["If-Range"] = etag
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            yield _RangePastEnd(exc)
            return
        raise DownloadError(f"the server answered HTTP {exc.code} {exc.reason}.") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"could not connect ({reason}).") from None
    with response:
        yield response


class _RangePastEnd:
    """Stands in for a 416 answer: the requested offset is at or past the end of the file."""

    status = 416

    def __init__(self, error: urllib.error.HTTPError) -> None:
        self.headers = error.headers
        error.close()


def _plan(response: Any, offset: int) -> _Attempt:
    """Decide where writing starts from the server's answer to our (possibly ranged) request."""
    if response.status == 416:  # our offset is at or past the end of the file
        match = _UNSATISFIABLE_RE.search(response.headers.get("Content-Range", "") or "")
        if match and int(match.group(1)) == offset:
            return _Attempt(offset, offset)  # the .part is complete; verification decides
        raise _Restart()
    if response.status == 206:
        match = _CONTENT_RANGE_RE.search(response.headers.get("Content-Range", "") or "")
        if not (offset and match and int(match.group(1)) == offset):
            raise _Restart()  # a range we did not ask for
        return _Attempt(offset, None if match.group(3) == "*" else int(match.group(3)))
    # 200: no Range sent, or the server ignored it; the body is the whole file.
    return _Attempt(0, _int_header(response.headers.get("Content-Length")))


def _stream(response: Any, dest: Path, attempt: _Attempt, progress: bool) -> None:
    """Copy the body into the ``.part``; a short body or a dropped connection keeps it for resuming."""
    part = part_path(dest)
    received = attempt.offset
    with part.open("ab" if attempt.offset else "wb") as handle, _progress_bar(attempt, dest.name, progress) as bar:
        try:
            received = _copy(response, handle, bar, received)
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadError(_interrupted(received, attempt.total, part, exc)) from None
    if attempt.total is not None and received < attempt.total:
        raise DownloadError(_interrupted(received, attempt.total, part, "connection closed early"))


def _copy(response: Any, handle: BinaryIO, bar: Any, received: int) -> int:
    while True:
        block = response.read(CHUNK_BYTES)
        if not block:
            return received
        handle.write(block)
        received += len(block)
        bar.update(len(block))


def _interrupted(received: int, total: int | None, part: Path, reason: object) -> str:
    of_total = f" of {total}" if total else ""
    return (f"download interrupted after {received}{of_total} bytes ({reason}). "
            f"The partial file {part} was kept; run the same command again to resume.")


def _verify_or_discard(part: Path, dest: Path, sha256: str | None, size: int | None) -> None:
    """Check the finished ``.part``; wrong bytes are deleted (resuming them could never succeed)."""
    problem = verify_file(part, sha256, size)
    if problem:
        _discard(part, dest)
        raise DownloadError(f"{problem} The download was discarded; nothing was written to {dest}.")


def verify_file(path: Path, sha256: str | None, size: int | None) -> str | None:
    """None when ``path`` has the expected size and sha256 (each if given), else what differs."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size mismatch: expected {size} bytes, got {actual_size}."
    if sha256:
        digest = file_sha256(path)
        if digest != sha256:
            return f"checksum mismatch: expected sha256 {sha256}, got {digest}."
    return None


def _discard(part: Path, dest: Path) -> None:
    part.unlink(missing_ok=True)
    _meta_path(dest).unlink(missing_ok=True)


def _read_meta(dest: Path) -> dict[str, Any]:
    try:
        data = json.loads(_meta_path(dest).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_meta(dest: Path, url: str, etag: str | None) -> None:
    """Atomically: a sidecar torn by a kill would make the next run restart a resumable download."""
    with atomic_write(_meta_path(dest)) as tmp:
        tmp.write_text(json.dumps({"url": url, "etag": etag}), encoding="utf-8")


def _int_header(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@contextmanager
def _progress_bar(attempt: _Attempt, name: str, enabled: bool) -> Iterator[Any]:
    """A tqdm bar when tqdm is installed and wanted, else an object that ignores updates."""
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        yield _NoBar()
        return
    with tqdm(total=attempt.total, initial=attempt.offset, unit="B", unit_scale=True,
              unit_divisor=1024, desc=name, dynamic_ncols=True) as bar:
        yield bar


class _NoBar:
    def update(self, _n: int) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# Decompression and manifest-driven fetching


def decompress_bz2(src: str | os.PathLike[str], dest: str | os.PathLike[str], sha256: str | None = None,
                   size: int | None = None) -> Path:
    """Decompress ``src`` into ``dest`` through a temporary file, verified, then ``os.replace``."""
    src, dest = Path(src), Path(dest)
    tmp = dest.with_suffix(dest.suffix + ".unpack.part")
    try:
        with bz2.open(src, "rb") as reader, tmp.open("wb") as writer:
            shutil.copyfileobj(reader, writer, CHUNK_BYTES)
    except (OSError, EOFError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{src.name} is not a valid bz2 archive ({exc}).") from None
    problem = verify_file(tmp, sha256, size)
    if problem:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"after decompressing {src.name}: {problem}")
    os.replace(tmp, dest)
    return dest


def fetch_weight(spec: WeightSpec, dest_dir: str | os.PathLike[str] | None = None, progress: bool = True) -> Path:
    """Make sure ``spec``'s file is in ``dest_dir`` (default: the weights folder); return its path.

    A copy already there that checks out (or that nothing published can check) is kept. Otherwise
    each manifest URL is tried in order, each verified against what that URL is known to serve.
    """
    folder = Path(dest_dir).expanduser() if dest_dir else default_weights_dir()
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / spec.filename
    if dest.is_file() and weight_status(spec, dest) in ("present", "unverified"):
        return dest
    failures = []
    for url in spec.urls:
        try:
            return _fetch_from(spec, url, dest, progress)
        except DownloadError as exc:  # its message already starts with the URL
            failures.append(f"  - {exc}")
    raise DownloadError(f"could not download {spec.filename} ('{spec.name}'):\n" + "\n".join(failures)
                        + f"\nYou can download it yourself and put it at {dest}.")


def _fetch_from(spec: WeightSpec, url: str, dest: Path, progress: bool) -> Path:
    served = spec.url_checksum(url)
    if not spec.compression:
        return download(url, dest, served.sha256 or spec.sha256, served.size_bytes or spec.size_bytes, progress)
    archive = dest.with_name(f"{dest.name}.{spec.compression}")
    download(url, archive, served.sha256, served.size_bytes, progress)
    try:
        decompress_bz2(archive, dest, spec.sha256, spec.size_bytes)
    except DownloadError as exc:
        raise DownloadError(f"{url}: {exc}") from None
    finally:
        archive.unlink(missing_ok=True)  # verified or not, the archive is no longer needed
    return dest
