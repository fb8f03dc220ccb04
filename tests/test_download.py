"""Downloads against a local HTTP server: complete, resumed, refused, damaged, compressed.

The server (stdlib http.server on 127.0.0.1, port 0) serves byte strings by path, honours Range
requests, and can be told to misbehave once per path: drop the connection halfway while having
announced the full Content-Length, answer 500, or ignore Range and send the whole file.
"""

from __future__ import annotations

import bz2
import dataclasses
import hashlib
import http.server
import re
import threading
from pathlib import Path
from typing import Iterator

import pytest

from essence.storage import weights
from essence.errors import DownloadError
from essence.storage.downloads import decompress_bz2, download, fetch_weight, part_path

PAYLOAD = bytes(range(256)) * 1200 + b"tail"  # 307,204 bytes: several read chunks, not a round number


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        server: FileServer = self.server.owner  # type: ignore[attr-defined]
        server.requests.append({"path": self.path, "range": self.headers.get("Range")})
        mode = server.take_mode(self.path)
        data = server.files.get(self.path)
        if mode == "error" or data is None:
            self._send_plain(500 if mode == "error" else 404)
            return
        start = self._range_start(len(data)) if mode != "ignore_range" else 0
        if start is None:
            return  # 416 already sent
        self._send_body(data, start, drop_half=(mode == "drop"))

    def _range_start(self, total: int) -> int | None:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if not match:
            return 0
        start = int(match.group(1))
        if start >= total:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{total}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return start

    def _send_body(self, data: bytes, start: int, drop_half: bool) -> None:
        body = data[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))  # always the full length
        self.send_header("ETag", f'"{sha(data)[:16]}"')
        self.end_headers()
        if drop_half:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True  # hang up with half the announced bytes unsent
            return
        self.wfile.write(body)

    def _send_plain(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


class FileServer:
    """A tiny threaded HTTP server; ``files`` maps a path to its bytes, ``modes`` arms misbehaviour."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, list[str]] = {}
        self.requests: list[dict[str, str | None]] = []
        self._lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01},
                                        daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}{path}"

    def arm(self, path: str, *modes: str) -> None:
        """Misbehave on the next requests for ``path``, one mode per request."""
        self.modes.setdefault(path, []).extend(modes)

    def take_mode(self, path: str) -> str | None:
        with self._lock:
            queue = self.modes.get(path)
            return queue.pop(0) if queue else None

    def __enter__(self) -> "FileServer":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer() as srv:
        srv.files["/w.pt"] = PAYLOAD
        yield srv


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_complete_download(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "w.pt"
    result = download(server.url("/w.pt"), dest, sha256=sha(PAYLOAD), size=len(PAYLOAD), progress=False)
    assert result == dest
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == ["w.pt"]
    assert server.requests[0]["range"] is None


def test_interrupted_download_resumes_with_range(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "w.pt"
    server.arm("/w.pt", "drop")
    with pytest.raises(DownloadError, match="interrupted.*resume"):
        download(server.url("/w.pt"), dest, sha256=sha(PAYLOAD), progress=False)
    half = part_path(dest).stat().st_size
    assert not dest.exists()
    assert 0 < half < len(PAYLOAD)

    download(server.url("/w.pt"), dest, sha256=sha(PAYLOAD), progress=False)
    assert server.requests[-1]["range"] == f"bytes={half}-"
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == ["w.pt"]


def test_resume_without_checksum_from_same_url(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "w.pt"
    server.arm("/w.pt", "drop")
    with pytest.raises(DownloadError):
        download(server.url("/w.pt"), dest, progress=False)
    download(server.url("/w.pt"), dest, progress=False)
    assert server.requests[-1]["range"] is not None
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "w.pt"
    server.arm("/w.pt", "drop", "ignore_range")
    with pytest.raises(DownloadError):
        download(server.url("/w.pt"), dest, sha256=sha(PAYLOAD), progress=False)
    download(server.url("/w.pt"), dest, sha256=sha(PAYLOAD), progress=False)
    assert server.requests[-1]["range"] is not None  # we asked to resume; it sent everything
    assert dest.read_bytes() == PAYLOAD


def test_partial_file_from_another_mirror_is_not_spliced(server: FileServer, tmp_path: Path) -> None:
    """Without a checksum, bytes from mirror A must never be continued with bytes from mirror B."""
    server.files["/mirror-b.pt"] = PAYLOAD
    dest = tmp_path / "w.pt"
    server.arm("/w.pt", "drop")
    with pytest.raises(DownloadError):
        download(server.url("/w.pt"), dest, progress=False)
    download(server.url("/mirror-b.pt"), dest, progress=False)
    assert server.requests[-1] == {"path": "/mirror-b.pt", "range": None}
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_is_finished_without_refetching(server: FileServer, tmp_path: Path) -> None:
    """A .part that already holds every byte (crash before the rename) gets a 416 and is verified."""
    dest = tmp_path / "w.pt"
    server.arm("/w.pt", "drop")
    with pytest.raises(DownloadError):
        download(server.url("/w.pt"), dest, progress=False)
    part_path(dest).write_bytes(PAYLOAD)
    download(server.url("/w.pt"), dest, sha256=sha(PAYLOAD), progress=False)
    assert server.requests[-1]["range"] == f"bytes={len(PAYLOAD)}-"
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "w.pt"
    with pytest.raises(DownloadError, match="checksum") as info:
        download(server.url("/w.pt"), dest, sha256=sha(b"something else"), progress=False)
    assert sha(b"something else") in str(info.value) and sha(PAYLOAD) in str(info.value)
    assert leftovers(tmp_path) == []


def test_size_mismatch_is_refused_before_downloading(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "w.pt"
    with pytest.raises(DownloadError, match="size mismatch"):
        download(server.url("/w.pt"), dest, size=len(PAYLOAD) + 1, progress=False)
    assert leftovers(tmp_path) == []


def test_server_error_is_a_download_error(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "w.pt"
    server.arm("/w.pt", "error")
    with pytest.raises(DownloadError, match="HTTP 500"):
        download(server.url("/w.pt"), dest, progress=False)
    assert not dest.exists()


def test_unreachable_server_is_a_download_error(tmp_path: Path) -> None:
    with FileServer() as srv:
        url = srv.url("/w.pt")
    with pytest.raises(DownloadError, match="could not connect"):
        download(url, tmp_path / "w.pt", progress=False, timeout=5)
    assert not (tmp_path / "w.pt").exists()


def test_next_url_is_tried_after_a_failure(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "w.pt"
    download([server.url("/gone.pt"), server.url("/w.pt")], dest, sha256=sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r["path"] for r in server.requests] == ["/gone.pt", "/w.pt"]


def test_every_url_failing_lists_each(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as info:
        download([server.url("/a.pt"), server.url("/b.pt")], tmp_path / "w.pt", progress=False)
    assert "/a.pt" in str(info.value) and "/b.pt" in str(info.value)


def test_progress_bar_does_not_break_download(server: FileServer, tmp_path: Path) -> None:
    dest = tmp_path / "w.pt"
    download(server.url("/w.pt"), dest, sha256=sha(PAYLOAD), progress=True)
    assert dest.read_bytes() == PAYLOAD


# ---------------------------------------------------------------------------------------------
# bz2 and manifest-driven fetching


def test_decompress_bz2_verifies_and_replaces(tmp_path: Path) -> None:
    archive = tmp_path / "x.dat.bz2"
    archive.write_bytes(bz2.compress(PAYLOAD))
    out = decompress_bz2(archive, tmp_path / "x.dat", sha256=sha(PAYLOAD), size=len(PAYLOAD))
    assert out.read_bytes() == PAYLOAD
    with pytest.raises(DownloadError, match="checksum"):
        decompress_bz2(archive, tmp_path / "y.dat", sha256=sha(b"other"))
    assert not (tmp_path / "y.dat").exists()
    archive.write_bytes(b"not bz2 at all")
    with pytest.raises(DownloadError, match="bz2"):
        decompress_bz2(archive, tmp_path / "z.dat")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.dat", "x.dat.bz2"]


def _spec(**changes: object) -> weights.WeightSpec:
    return dataclasses.replace(weights.get_spec("clip-vit-b-32"), **changes)


def test_fetch_weight_with_bz2(server: FileServer, tmp_path: Path) -> None:
    archive = bz2.compress(PAYLOAD)
    server.files["/pred.dat.bz2"] = archive
    url = server.url("/pred.dat.bz2")
    spec = _spec(filename="pred.dat", urls=(url,), sha256=sha(PAYLOAD), size_bytes=len(PAYLOAD), compression="bz2",
                 url_checksums={url: weights.Checksum(sha(archive), len(archive))})
    path = fetch_weight(spec, tmp_path, progress=False)
    assert path == tmp_path / "pred.dat" and path.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == ["pred.dat"]


def test_fetch_weight_uses_per_url_checksums(server: FileServer, tmp_path: Path) -> None:
    server.files["/bad.pt"] = b"a different serialisation"
    bad, good = server.url("/bad.pt"), server.url("/w.pt")
    spec = _spec(filename="w.pt", urls=(bad, good), sha256=None, size_bytes=None,
                 url_checksums={bad: weights.Checksum(sha(PAYLOAD)), good: weights.Checksum(sha(PAYLOAD))})
    path = fetch_weight(spec, tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert weights.weight_status(spec, path) == "present"


def test_fetch_weight_keeps_a_good_copy(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / "w.pt").write_bytes(PAYLOAD)
    spec = _spec(filename="w.pt", urls=(server.url("/w.pt"),), sha256=sha(PAYLOAD), size_bytes=None)
    fetch_weight(spec, tmp_path, progress=False)
    assert server.requests == []


def test_fetch_weight_replaces_a_damaged_copy(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / "w.pt").write_bytes(PAYLOAD[:100])
    spec = _spec(filename="w.pt", urls=(server.url("/w.pt"),), sha256=sha(PAYLOAD), size_bytes=None)
    fetch_weight(spec, tmp_path, progress=False)
    assert (tmp_path / "w.pt").read_bytes() == PAYLOAD


def test_fetch_weight_failure_names_urls_and_destination(server: FileServer, tmp_path: Path) -> None:
    server.arm("/w.pt", "error")
    spec = _spec(filename="w.pt", urls=(server.url("/w.pt"),), sha256=None, size_bytes=None)
    with pytest.raises(DownloadError) as info:
        fetch_weight(spec, tmp_path, progress=False)
    text = str(info.value)
    assert "/w.pt" in text and "HTTP 500" in text and str(tmp_path / "w.pt") in text
    assert not (tmp_path / "w.pt").exists()


def test_empty_file_downloads(server: FileServer, tmp_path: Path) -> None:
    server.files["/empty.pt"] = b""
    dest = download(server.url("/empty.pt"), tmp_path / "empty.pt", sha256=sha(b""), progress=False)
    assert dest.read_bytes() == b""


def test_unwritable_destination_is_a_download_error(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(DownloadError, match="could not write"):
        download(server.url("/w.pt"), tmp_path / "a-file" / "w.pt", progress=False)
