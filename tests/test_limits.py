"""Resource limits: tiny, huge and deep photos; batches larger than the device's memory.

Photos (``tests/test_images.py`` covers the other input forms, the decompression-bomb refusal and
JPEG reduction at decode time on a small file):
- a 1x1 photo is a clear ``FaceNotFoundError`` from alignment, not a crash;
- a real 20000 x 20000 JPEG (400 megapixels, built directly as a 4.7 MB file) is decoded at reduced
  scale with bounded memory, measured in a child process;
- a 4-channel 16-bit PNG loads exactly like its 8-bit RGBA / RGB counterparts.

Out of memory (no GPU needed: the failure is simulated by raising what CUDA raises,
``torch.OutOfMemoryError``, or what other backends raise, ``RuntimeError("... out of memory")``):
- the library's batched inference paths (e4e ``encode``, ``strength_sweep``, ``render``) retry
  smaller and give identical results, and only at one image at a time raise a ``DeviceMemoryError``
  (an ``EssenceError`` and still a ``torch.OutOfMemoryError``) saying what ran out;
- ``train(fit_memory=False)`` raises a ``DeviceMemoryError`` naming ``chunk_size``;
- the encoder's training starts again from its last checkpoint with fewer faces a pass, ending where a
  run that fitted ends (``tests/test_cli_encoder.py``: and the command line says so);
- the caller adds its own advice: the CLI names its flags, the ComfyUI nodes name ComfyUI's remedies
  and never a CLI flag (``tests/test_nodes.py`` checks the exact batch sizes a node tries).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_stubs import comfy_env, extra_model_paths  # noqa: F401 (fixtures)
from encoder_trace import data, sources  # noqa: F401 (fixtures)
from PIL import Image

import essence
from essence import cli
from essence.cli import directions as cli_directions
from essence.cli import encoder as cli_encoder
from essence.faces import images
from essence.encoding import EncoderSettings, train_encoder
from essence.errors import DeviceMemoryError, EssenceError, FaceNotFoundError
from essence.faces import load_landmarker
from essence.latents import strength_sweep
from essence.networks import render
from essence.runtime import is_out_of_memory, retry_smaller_on_oom, run_in_chunks_on_oom
from essence.training import EssenceJob, TrainingTarget, TrainSettings, train

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- photos


def test_a_1x1_photo_is_a_clear_face_not_found_error(tmp_path: Path) -> None:
    Image.new("RGB", (1, 1), (200, 150, 120)).save(tmp_path / "dot.png")
    assert images.load_photo(tmp_path / "dot.png").image.size == (1, 1)  # a valid, if useless, photo
    with pytest.raises(FaceNotFoundError, match=r"no face found in dot.png \(1x1\)"):
        essence.faces.align_faces(tmp_path / "dot.png", 256, landmarks=load_landmarker())


def grey_jpeg(width: int, height: int) -> bytes:
    """A valid baseline greyscale JPEG of any size, every pixel 128, without encoding its pixels.

    With Pillow's standard Huffman tables a uniform mid-grey 8x8 block is 6 bits (DC difference 0,
    end of block), so four blocks are the 3 bytes 28 a2 8a; the headers come from a small image
    encoded by Pillow, with the frame size patched.
    """
    assert width % 32 == 0 and height % 8 == 0, "whole groups of four blocks"
    small = io.BytesIO()
    Image.new("L", (32, 8), 128).save(small, "JPEG", quality=90)
    data = small.getvalue()
    sos = data.index(b"\xff\xda")
    headers = data[:sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")]
    assert data[len(headers):] == b"\x28\xa2\x8a" + b"\xff\xd9", "Pillow's encoder changed"
    sof = headers.index(b"\xff\xc0")
    headers = headers[:sof + 5] + struct.pack(">HH", height, width) + headers[sof + 9:]
    return headers + b"\x28\xa2\x8a" * (width // 8 * height // 8 // 4) + b"\xff\xd9"


HUGE_PHOTO = """
    import json, resource, sys
    import essence
    from essence import cli
    from essence.cli import directions as cli_directions
    from essence.faces import images
    from essence.faces import load_landmarker
    from essence.errors import FaceNotFoundError

    landmarks = load_landmarker()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    photo = images.load_photo(sys.argv[1])
    loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = {"size": photo.size, "work": photo.image.size, "scale": photo.scale, "pixel": photo.image.getpixel((0, 0))}
    del photo
    try:
        essence.faces.align_faces(sys.argv[1], 256, landmarks=landmarks)
        error = None
    except FaceNotFoundError as exc:
        error = str(exc)
    aligned = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({**report, "error": error, "load_mib": (loaded - before) / 1024,
                      "align_mib": (aligned - before) / 1024}))
"""


@pytest.mark.slow
def test_a_20000x20000_jpeg_is_decoded_at_reduced_scale_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "huge.jpg"
    path.write_bytes(grey_jpeg(20000, 20000))
    assert path.stat().st_size < 5 * 2**20
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(HUGE_PHOTO), str(path)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["size"] == [20000, 20000] and report["scale"] == 4 and report["work"] == [5000, 5000]
    assert report["pixel"] == [128, 128, 128]
    assert report["error"] and "no face found in huge.jpg (20000x20000, reduced 1/4)" in report["error"]
    # decoded at full size the photo alone would be 381 MiB (greyscale) or 1144 MiB (RGB); at 1/4 scale
    # it is 24 + 72 MiB (measured: peak +157 MiB to load; +288 MiB to load again and look for faces)
    assert report["load_mib"] < 300 and report["align_mib"] < 600, report


def _png(values: np.ndarray, color_type: int) -> bytes:
    """A minimal 16-bit PNG (Pillow cannot write 16-bit RGBA): colour type 6 = RGBA, 2 = RGB."""
    height, width, _ = values.shape
    raw = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_a_16_bit_rgba_png_loads_like_its_8_bit_counterparts(pictures, tmp_path: Path) -> None:
    rgb = np.asarray(Image.open(pictures.portrait).convert("RGB"))[:96, :80]
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    alpha[:, :40] = 128  # the left half is half transparent
    rgba = np.concatenate([rgb, alpha], axis=2)
    (tmp_path / "deep.png").write_bytes(_png(rgba.astype(np.uint16) * 257, 6))
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba8.png")

    deep = images.load_photo(tmp_path / "deep.png")
    assert deep.image.mode == "RGB" and deep.image.size == (80, 96)
    assert np.array_equal(np.asarray(deep.image), np.asarray(images.load_photo(tmp_path / "rgba8.png").image))
    assert np.array_equal(np.asarray(deep.image)[:, 40:], rgb[:, 40:])  # opaque: exactly the RGB pixels


# ----------------------------------------------------------------------------- out of memory


def _failing_above(fn, limit: int, error: type[Exception] = torch.OutOfMemoryError,
                   message: str = "CUDA out of memory. Tried to allocate 2.00 GiB"):
    """``fn``, except that a batch of more than ``limit`` rows raises what the device would."""
    sizes: list[int] = []

    def wrapper(batch, *args, **kwargs):
        sizes.append(len(batch))
        if len(batch) > limit:
            raise error(message)
        return fn(batch, *args, **kwargs)

    wrapper.sizes = sizes  # type: ignore[attr-defined]
    return wrapper


def test_out_of_memory_is_recognised_on_every_backend() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                                         "allocate memory: you tried to allocate 80000000000 bytes."))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert issubclass(DeviceMemoryError, EssenceError) and issubclass(DeviceMemoryError, torch.OutOfMemoryError)


def test_a_device_memory_error_from_a_worker_reads_as_it_was_raised() -> None:
    import pickle

    raised = DeviceMemoryError("training the encoder (5 source faces, 5 rendered per pass)", "Lower chunk_size.")
    received = pickle.loads(pickle.dumps(raised))  # how a Ray worker's error reaches the driver
    assert str(received) == str(raised) == ("out of device memory while training the encoder (5 source faces, "
                                            "5 rendered per pass). Lower chunk_size.")
    assert (received.what, received.advice) == (raised.what, raised.advice)


def test_chunks_are_split_on_out_of_memory_keeping_order() -> None:
    fn = _failing_above(lambda rows: rows * 10, 3, RuntimeError, "MPS backend out of memory")
    outputs = run_in_chunks_on_oom(fn, torch.arange(10), 8, "testing")
    assert torch.equal(torch.cat(outputs), torch.arange(10) * 10)
    assert fn.sizes == [8, 4, 2, 2, 2, 2, 2]  # once halved, the rest continue at the smaller size
    with pytest.raises(RuntimeError, match="shapes"):  # anything else is not retried
        run_in_chunks_on_oom(_failing_above(lambda r: r, 0, RuntimeError, "shapes differ"), torch.arange(4), 2,
                             "testing")
    with pytest.raises(DeviceMemoryError, match="^out of device memory while testing, even one at a time.$"):
        run_in_chunks_on_oom(_failing_above(lambda r: r, 0), torch.arange(4), 4, "testing")


def test_e4e_encode_splits_a_batch_that_does_not_fit(tiny_files) -> None:
    encoder = essence.load_encoder(tiny_files.encoder, cache=False)  # its own: forward is replaced below
    faces = torch.rand(6, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    expected = encoder.encode(faces, batch_size=6)
    encoder.forward = _failing_above(encoder.forward, 2)
    assert torch.allclose(encoder.encode(faces, batch_size=6), expected, atol=1e-5)
    assert encoder.forward.sizes == [6, 3, 1, 1, 1, 1, 1, 1]
    encoder.forward = _failing_above(encoder.forward, 0)
    with pytest.raises(DeviceMemoryError, match="while e4e-encoding 6 faces, even one at a time"):
        encoder.encode(faces)


def test_strength_sweep_and_reconstruction_split_a_batch_that_does_not_fit(tiny_files) -> None:
    generator = essence.load_generator(tiny_files.generator, cache=False)  # its own: synthesize is replaced below
    latents = generator.sample_wplus(3, seed=0)
    direction = essence.Direction(torch.randn(1, generator.n_latent, generator.style_dim) * 0.1)
    with torch.no_grad():
        expected_sweep = strength_sweep(generator, latents, direction, [0.0, 0.5, 1.0], batch_size=9)
        expected_images = render(generator, latents, batch_size=3)
    generator.synthesize = _failing_above(generator.synthesize, 2, RuntimeError, "MPS backend out of memory")
    with torch.no_grad():
        assert torch.allclose(strength_sweep(generator, latents, direction, [0.0, 0.5, 1.0], batch_size=9),
                              expected_sweep, atol=1e-5)
        assert torch.allclose(render(generator, latents, batch_size=3), expected_images, atol=1e-5)
    generator.synthesize = _failing_above(generator.synthesize, 0)
    with pytest.raises(DeviceMemoryError, match="strength-sweep images, even one at a time.$"):
        strength_sweep(generator, latents, direction, [1.0])


def test_training_out_of_memory_says_to_lower_the_chunk_size(tiny_files, guide) -> None:
    generator = essence.load_generator(tiny_files.generator, cache=False)  # its own: synthesize is replaced below
    sources = generator.sample_wplus(4, seed=1)
    target = torch.nn.functional.normalize(torch.randn(1, guide.embed_dim, generator=torch.Generator().manual_seed(0)))
    generator.synthesize = _failing_above(generator.synthesize, 1)
    settings = TrainSettings(steps=2, progress_every=1)
    with pytest.raises(DeviceMemoryError, match=r"training \(4 source faces, 4 rendered per pass\)\. Lower "
                                                r"chunk_size \(it is 4\)"):
        train(TrainingTarget.from_embedding(target), sources, generator, guide, EssenceJob(settings), start="random",
              fit_memory=False).result
    result = train(TrainingTarget.from_embedding(target), sources, generator, guide,
                   EssenceJob(TrainSettings(steps=2, chunk_size=1)), start="random").result
    assert torch.isfinite(result.direction.tensor).all()


def test_whole_runs_retry_smaller_on_any_backend_out_of_memory() -> None:
    tried: list[int] = []

    def run(size: int) -> str:
        tried.append(size)
        if size > 2:
            raise RuntimeError("MPS backend out of memory")
        return "done"

    assert retry_smaller_on_oom(run, 8, "testing", on_retry=tried.append) == "done" and tried == [8, 4, 4, 2, 2]
    with pytest.raises(RuntimeError, match="shapes"):
        retry_smaller_on_oom(lambda size: (_ for _ in ()).throw(RuntimeError("shapes differ")), 8, "testing")
    with pytest.raises(DeviceMemoryError, match="^out of device memory while testing, even one at a time.$"):
        retry_smaller_on_oom(lambda size: run(8), 1, "testing")


ENCODER_RUN = EncoderSettings(max_steps=2, validate_every=1, checkpoint_every=1, seed=3)


def test_encoder_training_out_of_memory_goes_on_from_its_checkpoint_with_fewer_faces_a_pass(
        tiny_files, encoder, guide, data, sources, tmp_path) -> None:
    generator = essence.load_generator(tiny_files.generator, cache=False)  # its own: synthesize is replaced below
    fitted = train_encoder(encoder, generator, guide, data, sources, ENCODER_RUN)
    real, steps = generator.synthesize, []

    def out_of_memory_from_step_1(batch, *args, **kwargs):  # CUDA's error for more than one face a pass
        if len(steps) > 1 and len(batch) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(batch, *args, **kwargs)

    def count_steps() -> bool:  # asked before every step
        steps.append(1)
        return False

    generator.synthesize = out_of_memory_from_step_1
    heard: list[int] = []
    again = train_encoder(encoder, generator, guide, data, sources, ENCODER_RUN, checkpoints=tmp_path / "run",
                          should_stop=count_steps, on_retry=heard.append)
    # 3 faces a pass -> 1, going on from step 0's checkpoint (step 1 asked twice, step 0 once)
    assert heard == [1] and len(steps) == 4 and again.resumed_from == 0
    assert torch.allclose(torch.tensor(again.losses), torch.tensor(fitted.losses), rtol=0, atol=1e-5)
    assert torch.allclose(torch.tensor(again.validations), torch.tensor(fitted.validations), rtol=0, atol=1e-5)
    theirs = fitted.encoder.state_dict()
    for key, value in again.encoder.state_dict().items():
        assert torch.allclose(value.float(), theirs[key].float(), rtol=0, atol=1e-5), key


def test_encoder_training_that_cannot_fit_says_what_ran_out(tiny_files, encoder, guide, data, sources) -> None:
    generator = essence.load_generator(tiny_files.generator, cache=False)  # its own: synthesize is replaced below
    generator.synthesize = _failing_above(generator.synthesize, 1)
    with pytest.raises(DeviceMemoryError, match=r"^out of device memory while training the encoder \(3 source faces, "
                                                r"3 rendered per pass\)\. Lower chunk_size \(it is 3\)"):
        train_encoder(encoder, generator, guide, data, sources, ENCODER_RUN, fit_memory=False)
    generator.synthesize = _failing_above(generator.synthesize, 0)
    with pytest.raises(DeviceMemoryError, match=r"training the encoder \(3 source faces\), even one at a time"):
        train_encoder(encoder, generator, guide, data, sources, ENCODER_RUN)


@pytest.mark.parametrize(("command", "module", "handler", "advice"), [
    (["sample", "--out", "x.safetensors"], cli.app, "_cmd_sample", "Run on the CPU (--device cpu)"),
    (["train", "t.jpg", "--out", "x.safetensors"], cli_directions, "_cmd_train", "--render-size 256, a +bf16 --mode"),
    (["train-encoder", "--generated", "4", "--out", "x.safetensors"], cli_encoder, "_cmd_train_encoder",
     "Use fewer source faces (--sources), or run on the CPU"),
])
def test_the_cli_gives_its_own_out_of_memory_advice(command, module, handler, advice, monkeypatch, capsys) -> None:
    def out_of_memory(_args):
        raise DeviceMemoryError("testing, even one at a time", "Lower chunk_size.")

    monkeypatch.setattr(module, handler, out_of_memory)
    assert cli.main(command) == cli.app.EXIT_USER_ERROR
    message = capsys.readouterr().err
    assert message.startswith("error: out of device memory while testing, even one at a time. ") and advice in message
    assert "chunk_size" not in message  # the library's words for Python callers are replaced


def test_render_and_train_nodes_split_batches_that_do_not_fit(comfy_env, pictures, caplog) -> None:
    (generator,) = comfy_env.run("EssenceGeneratorLoader", generator_file="stylegan2_tiny64.pt")
    (guide,) = comfy_env.run("EssenceGuideLoader", clip_file="clip_tiny.pt")
    (latents,) = comfy_env.run("EssenceSampleLatents", generator=generator, count=4, seed=0, truncation=0.7)
    (expected,) = comfy_env.run("EssenceRender", generator=generator, latents=latents)
    real = generator.synthesize
    generator.synthesize = _failing_above(real, 1)  # CUDA's error for more than one face at a time
    (images_,) = comfy_env.run("EssenceRender", generator=generator, latents=latents)
    assert torch.allclose(images_, expected, atol=1e-5)

    target = torch.from_numpy(np.asarray(Image.open(pictures.headshot).convert("RGB").resize((64, 64)),
                                         dtype=np.float32) / 255.0)[None]
    inputs = dict(target=target, sources=latents, generator=generator, guide=guide, steps=2, lambda_transfer=1.0,
                  lambda_consistency=0.5, seed=3, mode="fast", init="random", chunk_size=0, preview_every=5)
    direction, _preview, _report = comfy_env.run("EssenceTrain", **inputs)
    assert direction.meta["hyperparameters"]["chunk_size"] == 1  # 4 -> 2 -> 1 source per pass
    assert "Train Essence: out of device memory; going on with 2 face(s) rendered per pass" in caplog.text
    assert "going on with 1 face(s) rendered per pass (the same result, later; chunk_size 1 skips" in caplog.text
    generator.synthesize = real
    reference, _, _ = comfy_env.run("EssenceTrain", **{**inputs, "chunk_size": 1})
    assert torch.allclose(direction.tensor, reference.tensor, atol=1e-5)


def test_train_node_that_cannot_fit_one_face_gives_comfyui_advice(comfy_env) -> None:
    (generator,) = comfy_env.run("EssenceGeneratorLoader", generator_file="stylegan2_tiny64.pt")
    (guide,) = comfy_env.run("EssenceGuideLoader", clip_file="clip_tiny.pt")
    (latents,) = comfy_env.run("EssenceSampleLatents", generator=generator, count=2, seed=0, truncation=0.7)
    real = generator.synthesize
    generator.synthesize = _failing_above(real, 0)
    target = torch.rand(1, 64, 64, 3)
    try:
        with pytest.raises(torch.OutOfMemoryError, match=r"while training \(2 source faces\), even one at a time\. "
                                                         r"Free GPU memory with ComfyUI's 'Unload Models'"):
            comfy_env.run("EssenceTrain", target=target, sources=latents, generator=generator, guide=guide, steps=2,
                          lambda_transfer=1.0, lambda_consistency=0.5, seed=3, mode="fast", init="random",
                          chunk_size=0, preview_every=5)
    finally:
        generator.synthesize = real
