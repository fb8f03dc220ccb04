"""Nothing lost: a command never writes over one of its inputs, finds an output it cannot write before
it works, ends every write error in one ``error:`` line, and leaves no temporary file when it is
terminated. Each case runs the real command line; the models are never needed, because every check
comes before any model loads (a missing model file would otherwise be the error reported)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from essence.cli import main as cli_main
from essence.faces import scikit_image_picture
from essence.latents import Direction

REPO = Path(__file__).resolve().parents[1]
NO_MODEL = ["--generator", "/nonexistent/generator.pt", "--device", "cpu"]


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    """A photo, a direction, a clip name and a target: the inputs the commands below must not lose."""
    photo = tmp_path / "photo.png"
    shutil.copy(scikit_image_picture("astronaut.png"), photo)
    direction = Direction(torch.full((1, 18, 512), 0.01), {"name": "d"}).save(tmp_path / "d.safetensors")
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not really a video, but an input all the same")
    return {"photo": photo, "direction": direction, "clip": clip}


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.mark.parametrize("case", ["photo", "video", "evaluate-json", "relative", "hard-link", "symlink"])
def test_an_output_that_names_an_input_is_refused_before_any_work(case, inputs, tmp_path, monkeypatch, capsys):
    photo, direction, clip = inputs["photo"], inputs["direction"], inputs["clip"]
    monkeypatch.chdir(tmp_path)
    if case == "hard-link":
        os.link(photo, tmp_path / "same.png")
    if case == "symlink":
        (tmp_path / "same.png").symlink_to(photo)
    argv = {
        "photo": ["apply", direction, "--photo", photo, "--out", photo],
        "video": ["apply", direction, "--video", clip, "--out", clip],
        "evaluate-json": ["evaluate", direction, "--target", photo, "--sample", "2", "--json", direction],
        "relative": ["apply", direction, "--photo", photo, "--out", "./sub/../photo.png"],
        "hard-link": ["apply", direction, "--photo", photo, "--out", "same.png"],
        "symlink": ["apply", direction, "--photo", photo, "--out", "same.png"],
    }[case]
    before = _contents(tmp_path)
    code, err = _run(argv + NO_MODEL, capsys)
    assert code == 2
    assert err.startswith("error: ") and "writing it would replace the input" in err
    assert _contents(tmp_path) == before  # the input, and everything else, untouched


@pytest.mark.parametrize("case", ["unwritable folder", "a folder of that name", "a file in the way"])
def test_an_output_that_cannot_be_written_is_found_before_training(case, inputs, tmp_path, capsys):
    if case == "unwritable folder":
        if os.geteuid() == 0:  # root writes through permission bits; sysfs refuses even root
            if not os.path.isdir("/sys") or os.access("/sys", os.W_OK) and _can_create("/sys"):
                pytest.skip("running as root with no folder that refuses root (no /sys)")
            out = Path("/sys/essence.safetensors")
        else:
            locked = tmp_path / "locked"
            locked.mkdir(mode=0o555)
            out = locked / "essence.safetensors"
        expected = "cannot write --out"
    elif case == "a folder of that name":
        out = tmp_path / "taken.safetensors"
        out.mkdir()
        expected = "is a folder; give a file name"
    else:
        out = inputs["photo"] / "essence.safetensors"
        expected = "is a file, not a folder"
    code, err = _run(["train", inputs["photo"], "--out", out, "--steps", "1000", *NO_MODEL], capsys)
    assert code == 2 and err.startswith("error: ") and expected in err, err
    assert "generator" not in err  # refused before the (missing) model was looked for


def _can_create(folder: str) -> bool:
    try:
        with open(os.path.join(folder, f".essence-probe-{os.getpid()}"), "x"):
            pass
    except OSError:
        return False
    os.unlink(os.path.join(folder, f".essence-probe-{os.getpid()}"))
    return True


def test_a_missing_output_folder_is_made_not_refused(inputs, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "d.npy"
    code, _ = _run(["export-npy", inputs["direction"], out], capsys)
    assert code == 0 and np.load(out).shape == (1, 18, 512)


def test_a_write_error_is_one_error_line_and_leaves_nothing_behind(inputs, tmp_path, monkeypatch, capsys):
    def disk_full(file, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(file))

    monkeypatch.setattr(np, "save", disk_full)
    out = tmp_path / "out"
    code, err = _run(["export-npy", inputs["direction"], out / "d.npy"], capsys)
    assert code == 2
    assert err.startswith("error: ") and "no space left on device" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())  # no temporary file left


def test_a_batch_out_that_is_a_file_is_refused_before_any_task(inputs, tmp_path, capsys):
    taken = tmp_path / "results"
    taken.write_text("a file, not a folder")
    code, err = _run(["batch", "apply", inputs["direction"], "--photos", inputs["photo"], "--out", taken,
                      "--no-progress", *NO_MODEL], capsys)
    assert code == 2 and "is a file, not a folder" in err
    assert taken.read_text() == "a file, not a folder"


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs POSIX signals")
def test_sigterm_while_writing_removes_the_temporary_file(tmp_path):
    """``kill`` (SIGTERM) arrives while the converted direction is being written: the command ends
    with status 143 and no hidden temporary file stays, as with Ctrl-C."""
    official = tmp_path / "joker.npy"
    np.save(official, np.full((1, 18, 512), 0.01, dtype=np.float32))  # TargetCLIP's direction layout
    out = tmp_path / "converted"
    script = textwrap.dedent("""
        import os, signal, sys, time
        import essence.storage.files as files

        def write_slowly(tensors, metadata, path):
            path.write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGTERM)  # what kill or a scheduler sends, mid-write
            time.sleep(30)

        files._write_safetensors = write_slowly
        from essence.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    done = subprocess.run([sys.executable, "-c", script, "import-official", str(official), "--out-dir", str(out)],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "terminated" in done.stderr and "Traceback" not in done.stderr
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


@pytest.mark.slow
def test_a_second_batch_into_a_folder_in_use_is_refused(inputs, tmp_path, capsys):
    """Two runs into one --out would both do every task and overwrite one report: while another
    process holds the folder, a second run is refused before it starts Ray, naming that process."""
    out = tmp_path / "edited"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom essence.storage import folder_lock\n"
         "with folder_lock(sys.argv[1]):\n    print('holding', flush=True)\n    time.sleep(60)\n", str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        code, err = _run(["batch", "apply", inputs["direction"], "--photos", inputs["photo"], "--out", out,
                          "--no-progress", *NO_MODEL], capsys)
        assert code == 2 and "in use by another batch" in err and f"process {holder.pid}" in err
    finally:
        holder.kill()
        holder.wait()
    assert not any(p.suffix == ".png" for p in out.rglob("*"))


# ----------------------------------------------------------------------------- inputs


@pytest.mark.slow
@pytest.mark.parametrize("address", ["127.0.0.1:1", "not an address", "ray://:99999999"])
def test_a_ray_address_nothing_answers_at_is_a_clear_error_within_30_s(address, inputs, tmp_path):
    import time

    started = time.monotonic()  # a fresh process: Ray is not running yet, as for a user
    done = subprocess.run([sys.executable, "-m", "essence", "batch", "apply", str(inputs["direction"]), "--photos",
                           str(inputs["photo"]), "--out", str(tmp_path / "out"), "--no-progress", "--device", "cpu"],
                          env={**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": address},  # as a scheduler sets it
                          capture_output=True, text=True, timeout=60)
    assert time.monotonic() - started < 30
    code, err = done.returncode, done.stderr
    assert code == 2 and err.startswith("error: ") and "RAY_ADDRESS" in err and "Traceback" not in err, err
    assert ("no Ray cluster" in err) if address == "127.0.0.1:1" else ("is not a Ray address" in err)
    assert not (tmp_path / "out").exists()  # a refused start leaves no folder behind


def _typed(path: Path, name: str, fmt: str, tensor: torch.Tensor) -> Path:
    from safetensors.torch import save_file

    save_file({name: tensor}, str(path), metadata={"format": fmt, "format_version": "1"})
    return path


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_direction_and_latent_files_of_other_float_types_are_checked_after_conversion(dtype, inputs, tmp_path,
                                                                                      capsys):
    from essence.errors import DirectionFileError, LatentFileError
    from essence.latents import load_direction, load_latents

    big = 1e300 if dtype == torch.float64 else float("inf")  # float16 cannot hold 1e300: its overflow is inf
    direction = _typed(tmp_path / "big.safetensors", "direction", "essence.direction", torch.full((1, 18, 512), big,
                                                                                                  dtype=dtype))
    latents = _typed(tmp_path / "big_latents.safetensors", "latents", "essence.latents",
                     torch.full((2, 18, 512), big, dtype=dtype))
    with pytest.raises(DirectionFileError, match="beyond float32's range" if dtype == torch.float64 else "infinite"):
        load_direction(direction)
    with pytest.raises(LatentFileError, match="beyond float32's range" if dtype == torch.float64 else "infinite"):
        load_latents(latents)
    fine = _typed(tmp_path / "fine.safetensors", "direction", "essence.direction",
                  torch.full((1, 18, 512), 0.25, dtype=dtype))
    assert load_direction(fine).tensor.dtype == torch.float32 and float(load_direction(fine).tensor[0, 0, 0]) == 0.25
    out = tmp_path / "edited.png"
    code, err = _run(["apply", direction, "--sample", "1", "--out", out, *NO_MODEL], capsys)
    assert code == 2 and "big.safetensors" in err and not out.exists()  # no black picture, no exit 0


def _clip(path: Path, frames: int, size: int = 64, faststart: bool = True) -> Path:
    import av

    with av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"} if faststart else {}) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        noise = np.random.default_rng(0)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(noise.integers(0, 255, (size, size, 3), dtype=np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def test_a_truncated_clip_is_reported_with_both_frame_counts(tmp_path):
    from essence.errors import EssenceWarning
    from essence.video import probe_video

    whole = _clip(tmp_path / "whole.mp4", 50)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 3])  # a download that stopped a third of the way
    with pytest.warns(EssenceWarning, match=r"cut\.mp4 declares 50 frames but holds \d+"):
        info = probe_video(cut)
    assert 1 <= info.frames < 50
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", EssenceWarning)
        assert probe_video(whole).frames == 50  # a whole clip says nothing


def test_oversized_pictures_and_frames_are_refused_by_name_before_decoding(tmp_path, monkeypatch):
    """A 20000 x 20000 PNG (only its header: refusing must not need the pixels) and clip frames above
    the limit (lowered here, so that the test clip stays small) are refused by file name."""
    import struct
    import zlib

    from essence.errors import ImageInputError, VideoInputError
    from essence.faces import load_image
    from essence.video import probe_video

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    with pytest.raises(ImageInputError, match=r"huge\.png: 20000x20000 is 400 megapixels, more than the 134-megapixel"):
        load_image(huge)
    import essence.video.files as video_files

    clip = _clip(tmp_path / "clip.mp4", 2)
    monkeypatch.setattr(video_files, "FULL_DECODE_PIXELS", 64 * 64 - 1)
    with pytest.raises(VideoInputError, match=r"clip\.mp4: its frames are 64x64"):
        probe_video(clip)


def test_messages_say_what_was_found(tmp_path):
    import av

    from essence.errors import CorruptFileError, VideoInputError
    from essence.storage import read_safetensors_header
    from essence.video import probe_video

    sound = tmp_path / "sound.m4a"
    with av.open(str(sound), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 44100, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with pytest.raises(VideoInputError, match="holds no video stream, only 1 audio stream"):
        probe_video(sound)
    large = tmp_path / "large.safetensors"
    large.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    with pytest.raises(CorruptFileError, match="header is too large"):
        read_safetensors_header(large)
    deep = tmp_path / "deep.safetensors"
    header = b"[" * 100_000 + b"]" * 100_000
    deep.write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CorruptFileError, match="nested too deeply"):
        read_safetensors_header(deep)


def test_a_lock_file_that_is_a_link_to_another_file_is_refused_and_the_file_kept(inputs, tmp_path, capsys):
    """A ``.essence.lock`` planted as a symbolic link: the batch would truncate the file it leads to
    when it writes its lock. It is refused in one line that says what to remove; that file is untouched."""
    precious = tmp_path / "elsewhere" / "thesis.txt"
    precious.parent.mkdir()
    precious.write_bytes(b"three years of work\n")
    out = tmp_path / "edited"
    out.mkdir()
    (out / ".essence.lock").symlink_to(precious)
    code, err = _run(["batch", "apply", inputs["direction"], "--photos", inputs["photo"], "--out", out,
                      "--no-progress", *NO_MODEL], capsys)
    assert code == 2 and err.count("error:") == 1 and len(err.strip().splitlines()) == 1, err
    assert "symbolic link" in err and f"Remove {out / '.essence.lock'}" in err
    assert precious.read_bytes() == b"three years of work\n"
    assert (out / ".essence.lock").is_symlink() and not any(p.suffix == ".png" for p in out.rglob("*"))


@pytest.mark.parametrize("planted", ["symlink", "dangling-symlink", "hard-link", "folder", "fifo"])
def test_folder_lock_never_writes_through_what_was_planted_under_its_name(planted, tmp_path):
    from essence.errors import EssenceError
    from essence.storage import folder_lock

    if planted == "fifo" and not hasattr(os, "mkfifo"):
        pytest.skip("needs named pipes")
    precious = tmp_path / "precious.txt"
    precious.write_bytes(b"keep me")
    folder = tmp_path / "out"
    folder.mkdir()
    lock = folder / ".essence.lock"
    {"symlink": lambda: lock.symlink_to(precious), "dangling-symlink": lambda: lock.symlink_to(tmp_path / "none"),
     "hard-link": lambda: os.link(precious, lock), "folder": lock.mkdir, "fifo": lambda: os.mkfifo(lock)}[planted]()
    kind = {"symlink": "symbolic link", "dangling-symlink": "symbolic link", "hard-link": "2 names",
            "folder": "a folder", "fifo": "named pipe"}[planted]
    with pytest.raises(EssenceError, match=f"{kind}.*not a lock file.*Remove"):
        with folder_lock(folder):
            pytest.fail("the lock was taken")
    assert precious.read_bytes() == b"keep me" and not (tmp_path / "none").exists()
    assert os.path.lexists(lock)  # left for the user to look at and remove
    if planted == "folder":
        lock.rmdir()
    else:
        lock.unlink()
    with folder_lock(folder) as taken:
        assert taken.read_text().startswith(f"process {os.getpid()}")
    assert not os.path.lexists(lock) and precious.read_bytes() == b"keep me"


def test_folder_lock_takes_over_the_file_a_killed_holder_left(tmp_path):
    import socket

    from essence.storage import folder_lock

    (tmp_path / ".essence.lock").write_text("process 1 on a machine long gone, with a longer line than ours")
    with folder_lock(tmp_path) as taken:
        assert taken.read_text() == f"process {os.getpid()} on {socket.gethostname()}"
    assert not (tmp_path / ".essence.lock").exists()
