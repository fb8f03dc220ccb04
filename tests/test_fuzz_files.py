"""Property-based fuzzing of every reader of untrusted files (SECURITY.md lists them).

Random bytes, truncations of valid files at every cut point, byte flips, and hand-built headers
(wrong dtypes, negative and huge shapes, offsets past the end, malformed metadata, NaN/inf payloads)
are fed to the direction and latent loaders, the safetensors header check, ``load_torch_file`` and
``weight_status``. The properties: only Essence's documented exception for that reader comes out
(anything else fails the test), a successful load returns a valid object, nothing is written next to
the file, and memory stays bounded (a header claiming terabytes is refused without allocating).

CI runs a fast profile (``ESSENCE_FUZZ_EXAMPLES``, default 120 examples per property, derandomized
so runs are repeatable). A long run: ``ESSENCE_FUZZ_EXAMPLES=20000 pytest tests/test_fuzz_files.py``.
Hypothesis' example database is off and its cache lives in the temp folder, so the suite writes
nothing into the repository.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import resource
import struct
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from essence.storage import weights as W
from essence.errors import CorruptFileError, DirectionFileError, LatentFileError, WeightFileError
from essence.latents import Direction, LatentSet, load_latents
from essence.storage import load_torch_file, read_safetensors_header

# Hypothesis keeps caches in ./.hypothesis; the fuzz run must write nothing into the repository.
set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "essence-hypothesis"))
EXAMPLES = int(os.environ.get("ESSENCE_FUZZ_EXAMPLES", "120"))
LONG_RUN = "ESSENCE_FUZZ_EXAMPLES" in os.environ
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=not LONG_RUN,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
MEMORY_HEADROOM = 256 * 2**20  # more than any small file needs; far less than any absurd claim


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory) -> dict[str, bytes]:
    """Small valid files of every kind, as bytes: the seeds for truncation and mutation."""
    where = tmp_path_factory.mktemp("valid")
    gen = torch.Generator().manual_seed(0)
    Direction(torch.randn(1, 4, 8, generator=gen), {"name": "d", "latent_space": {"n_latent": 4, "style_dim": 8}},
              torch.zeros(2, 2, 3, dtype=torch.uint8)).save(where / "d.safetensors")
    LatentSet(torch.randn(2, 4, 8, generator=gen)).save(where / "l.safetensors")
    np.save(where / "d.npy", torch.randn(1, 4, 8, generator=gen).numpy())
    torch.save({"w": torch.randn(4, generator=gen), "n": 3, "s": "x"}, where / "w.pt")
    return _Seeds({name: (where / name).read_bytes() for name in ("d.safetensors", "l.safetensors", "d.npy", "w.pt")})


class _Seeds(dict):
    def __repr__(self) -> str:  # keep Hypothesis' failure reports short
        return f"<valid files {sorted(self)}>"


def _vm_bytes() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@contextlib.contextmanager
def bounded_memory(headroom: int = MEMORY_HEADROOM):
    """Cap the address space at its current size + ``headroom`` (Linux): any attempt to allocate
    what a hostile header claims fails with MemoryError, which no loader may let out."""
    current = _vm_bytes()
    if current is None or not sys.platform.startswith("linux"):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = current + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def attempt(load, folder: Path, name: str, data: bytes, allowed: type[BaseException] | tuple, *,
            bound: bool = True):
    """Write ``data`` as ``folder/name``, run ``load(path)``; only ``allowed`` may come out, and the
    folder must hold exactly the same files afterwards. Returns the result or the exception."""
    path = folder / name
    path.write_bytes(data)
    before = listing(folder)
    try:
        with bounded_memory() if bound else contextlib.nullcontext():
            try:
                result = load(path)
            except allowed as exc:
                result = exc
        assert listing(folder) == before, "a loader wrote into the folder"
        return result
    finally:
        path.unlink()


def safetensors_bytes(header: object, data: bytes = b"", declared_len: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if declared_len is None else declared_len) + raw + data


def check_direction(result) -> None:
    if isinstance(result, Direction):
        t = result.tensor
        assert t.dtype == torch.float32 and t.ndim == 3 and t.shape[0] == 1 and torch.isfinite(t).all()
        result.space  # metadata of any shape must not break the accessors
        result.name


def check_latents(result) -> None:
    if isinstance(result, LatentSet):
        t = result.latents
        assert t.dtype == torch.float32 and t.ndim == 3 and torch.isfinite(t).all()
        assert len(result.sources) == len(result)
        result.space
        result.generator_fingerprint


# ----------------------------------------------------------------------------- strategies

DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "f32", "", "complex", 7, None,
          ["F32"]]
DIMS = st.one_of(st.integers(0, 9), st.integers(-3, -1), st.sampled_from([2**31, 2**32 + 1, 2**40, 2**63, 2**64 + 5]),
                 st.booleans(), st.floats(allow_nan=True), st.text(max_size=3), st.none())
SHAPES = st.one_of(st.lists(DIMS, max_size=4), st.just([2**40, 2**40]), st.just([1, 2**40, 2**40]),
                   st.integers(), st.text(max_size=4), st.none())
OFFSETS = st.one_of(st.lists(st.one_of(st.integers(-5, 200), st.sampled_from([2**40, 2**64])), max_size=3),
                    st.none(), st.text(max_size=3))
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
META_VALUES = st.one_of(
    st.sampled_from(["essence.direction", "essence.latents", "1", "2", "0", "-1", "\u00b2", "1.0", "", "x",
                     '{"n_latent": 4, "style_dim": 8}', '{"n_latent": 2**40}', "[1, 2]", "[" * 3000,
                     "9" * 5000, "NaN", "Infinity", '[{"kind": "photo"}]', '"text"', "null"]),
    st.text(max_size=20))
METADATA = st.one_of(
    st.dictionaries(st.sampled_from(["format", "format_version", "latent_space", "sources", "name", "generator",
                                     "count", "recommended_strength", "x"]), META_VALUES, max_size=6),
    st.dictionaries(st.text(max_size=5), JSON_SCALARS, max_size=3),
    JSON_SCALARS, st.lists(JSON_SCALARS, max_size=3))
FLOAT_PAYLOAD = st.lists(st.sampled_from([0.0, 1.0, -2.5, math.nan, math.inf, -math.inf, 3e38, 1e-45]),
                         min_size=0, max_size=64).map(lambda xs: np.array(xs, np.float32).tobytes())


@st.composite
def safetensors_files(draw, tensor_name: str, fmt: str) -> bytes:
    """A safetensors file whose header is plausible but may be wrong in any field."""
    shape = draw(st.one_of(SHAPES, st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    dtype = draw(st.one_of(st.sampled_from(DTYPES), st.just("F32")))
    payload = draw(st.one_of(FLOAT_PAYLOAD, st.binary(max_size=256)))
    honest = [0, len(payload)]
    offsets = draw(st.one_of(st.just(honest), OFFSETS))
    entry: object = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
    entry = draw(st.one_of(st.just(entry), JSON_SCALARS, st.just({"dtype": dtype})))
    meta = draw(st.one_of(METADATA, st.just({"format": fmt, "format_version": "1"})))
    header = {draw(st.sampled_from([tensor_name, "thumbnail", "other"])): entry}
    if draw(st.booleans()):
        header["__metadata__"] = meta
    if draw(st.booleans()):
        header = draw(st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=2))) if draw(st.booleans()) else header
    raw = json.dumps(header).encode()
    declared = draw(st.one_of(st.just(None), st.integers(0, 2**64 - 1), st.sampled_from([len(raw) + 1, len(raw) - 1])))
    if declared is not None and declared < 0:
        declared = None
    return safetensors_bytes(raw, payload, declared)


@st.composite
def npy_files(draw) -> bytes:
    """A .npy file whose header may lie about dtype, order or shape."""
    descr = draw(st.sampled_from(["<f4", ">f4", "<f2", "<f8", "<f16", "<i8", "|u1", "|b1", "<c8", "|O", "<U3", "|V4",
                                  "<M8[s]", "[('x', '<f4')]", "'bogus'", "<f4"]))
    shape = draw(st.one_of(st.lists(st.integers(0, 5), max_size=4),
                           st.lists(st.sampled_from([2**20, 2**31, 2**40, 2**62, -1]), min_size=1, max_size=3)))
    fortran = draw(st.sampled_from(["False", "True", "1", "'x'"]))
    shape_text = "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
    descr_text = descr if descr.startswith(("[", "'")) else repr(descr)
    text = f"{{'descr': {descr_text}, 'fortran_order': {fortran}, 'shape': {shape_text}, }}"
    if draw(st.booleans()):
        text = draw(st.text(max_size=60))
    header = text.encode("utf-8", "replace")
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    version = draw(st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00", b"\x09\x09"]))
    length = struct.pack("<H", len(header)) if version == b"\x01\x00" else struct.pack("<I", len(header))
    data = draw(st.one_of(FLOAT_PAYLOAD, st.binary(max_size=128)))
    return b"\x93NUMPY" + version + length + header + data


def mutated(seed: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(seed)
    for index, value in edits:
        if data:
            data[index % len(data)] = value
    return bytes(data)


EDITS = st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), min_size=1, max_size=8)


# ----------------------------------------------------------------------------- directions


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".safetensors", ".npy"]))
def test_direction_load_on_random_bytes(folder, data, suffix):
    check_direction(attempt(Direction.load, folder, "random" + suffix, data, DirectionFileError))


@FUZZ
@given(data=safetensors_files("direction", "essence.direction"))
def test_direction_load_on_hostile_headers(folder, data):
    check_direction(attempt(Direction.load, folder, "hostile.safetensors", data, DirectionFileError))


@FUZZ
@given(data=npy_files())
def test_direction_load_on_hostile_npy(folder, data):
    check_direction(attempt(Direction.load, folder, "hostile.npy", data, DirectionFileError))


@FUZZ
@given(edits=EDITS, which=st.sampled_from(["d.safetensors", "d.npy"]))
def test_direction_load_on_flipped_bytes(folder, valid_files, edits, which):
    data = mutated(valid_files[which], edits)
    check_direction(attempt(Direction.load, folder, "flipped" + Path(which).suffix, data, DirectionFileError))


@pytest.mark.parametrize("which", ["d.safetensors", "d.npy"])
def test_direction_truncated_at_every_byte_is_refused(folder, valid_files, which):
    seed = valid_files[which]
    for cut in range(len(seed)):
        result = attempt(Direction.load, folder, "cut" + Path(which).suffix, seed[:cut], DirectionFileError,
                         bound=False)
        assert isinstance(result, DirectionFileError), f"{which} cut at {cut} of {len(seed)} loaded"


# ----------------------------------------------------------------------------- latents


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from([".safetensors", ".npy", ".pt"]))
def test_latent_load_on_random_bytes(folder, data, suffix):
    check_latents(attempt(load_latents, folder, "random" + suffix, data, LatentFileError))


@FUZZ
@given(data=safetensors_files("latents", "essence.latents"))
def test_latent_load_on_hostile_headers(folder, data):
    check_latents(attempt(load_latents, folder, "hostile.safetensors", data, LatentFileError))


@FUZZ
@given(data=npy_files())
def test_latent_load_on_hostile_npy(folder, data):
    check_latents(attempt(load_latents, folder, "hostile.npy", data, LatentFileError))


@FUZZ
@given(edits=EDITS, which=st.sampled_from(["l.safetensors", "d.npy", "w.pt"]))
def test_latent_load_on_flipped_bytes(folder, valid_files, edits, which):
    data = mutated(valid_files[which], edits)
    check_latents(attempt(load_latents, folder, "flipped" + Path(which).suffix, data, LatentFileError))


def test_latents_truncated_at_every_byte_are_refused(folder, valid_files):
    seed = valid_files["l.safetensors"]
    for cut in range(len(seed)):
        result = attempt(load_latents, folder, "cut.safetensors", seed[:cut], LatentFileError, bound=False)
        assert isinstance(result, LatentFileError), f"cut at {cut} of {len(seed)} loaded"


@FUZZ
@given(meta=st.dictionaries(st.sampled_from(["sources", "latent_space", "generator", "count", "name", "x"]),
                            META_VALUES, max_size=4))
def test_latent_metadata_of_any_shape_loads_or_is_refused(folder, meta):
    """A well-formed latent file whose metadata fields hold anything at all."""
    from safetensors.torch import save

    data = save({"latents": torch.zeros(2, 4, 8)}, {"format": "essence.latents", "format_version": "1", **meta})
    check_latents(attempt(load_latents, folder, "meta.safetensors", data, LatentFileError))


# ----------------------------------------------------------------------------- safetensors header check


@FUZZ
@given(data=st.one_of(st.binary(max_size=512), safetensors_files("direction", "essence.direction")))
def test_header_check_refuses_with_corrupt_file_error_only(folder, data):
    result = attempt(read_safetensors_header, folder, "h.safetensors", data, CorruptFileError)
    if isinstance(result, dict):  # accepted: every tensor lies inside the file
        size = len(data) - 8 - struct.unpack("<Q", data[:8])[0]
        for name, info in result.items():
            if name != "__metadata__":
                assert 0 <= info["data_offsets"][0] <= info["data_offsets"][1] <= size


# ----------------------------------------------------------------------------- .pt files and weight status


@FUZZ
@given(data=st.one_of(st.binary(max_size=2048), st.binary(max_size=64).map(lambda b: b"PK\x03\x04" + b)))
def test_load_torch_file_on_random_bytes(folder, data):
    attempt(load_torch_file, folder, "random.pt", data, WeightFileError)


@FUZZ
@given(edits=EDITS)
def test_load_torch_file_on_flipped_bytes(folder, valid_files, edits):
    attempt(load_torch_file, folder, "flipped.pt", mutated(valid_files["w.pt"], edits), WeightFileError)


def test_load_torch_file_truncated_at_every_byte_is_refused(folder, valid_files):
    seed = valid_files["w.pt"]
    for cut in range(len(seed)):
        result = attempt(load_torch_file, folder, "cut.pt", seed[:cut], WeightFileError, bound=False)
        assert isinstance(result, WeightFileError), f"cut at {cut} of {len(seed)} loaded"


@FUZZ
@given(members=st.lists(st.tuples(st.sampled_from(["w/data.pkl", "w/data/0", "w/version", "w/byteorder",
                                                   "w/.format_version", "x", "w/constants.pkl", "w/code/a.py"]),
                                  st.binary(max_size=200), st.booleans()), max_size=6))
def test_load_torch_file_on_hostile_zips(folder, members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, content, compress in members:
            archive.writestr(name, content, compress_type=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED)
    attempt(load_torch_file, folder, "zip.pt", buffer.getvalue(), WeightFileError)


@FUZZ
@given(data=st.binary(max_size=256), size=st.one_of(st.none(), st.integers(1, 300)),
       sha=st.one_of(st.none(), st.just("0" * 64)), canonical=st.booleans())
def test_weight_status_on_damaged_files(folder, data, size, sha, canonical):
    import hashlib

    good = hashlib.sha256(b"the real file").hexdigest()
    spec = W.WeightSpec(name="t", role="generator", filename="t.pt", urls=(), sha256=good if canonical else sha,
                        size_bytes=len(b"the real file") if canonical else size, licence="x", licence_short="x",
                        layout="x", required_for=(), comfy_folder="x")
    W.clear_sha_cache()
    status = attempt(lambda p: W.weight_status(spec, p), folder, "t.pt", data, ())
    assert status in W.STATUSES
    if canonical:
        assert status == ("present" if data == b"the real file" else "corrupt")



# ----------------------------------------------------------------------------- regressions found by fuzzing

_NPY_V1 = b"\x93NUMPY\x01\x00"


def _npy(header: str, data: bytes) -> bytes:
    raw = header.encode()
    raw += b" " * (117 - len(raw)) + b"\n"
    return _NPY_V1 + struct.pack("<H", len(raw)) + raw + data


def _npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, a=np.zeros((1, 4, 8), np.float32))
    return buffer.getvalue()


REGRESSIONS = {  # each once escaped as a non-Essence exception (or crashed a caller)
    "npy negative dims": ("x.npy", _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, -1), }", bytes(4))),
    "npy one-dimensional": ("x.npy", _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (0,), }", b"")),
    "npy of strings": ("x.npy", _npy("{'descr': '<U1', 'fortran_order': False, 'shape': (1, 2, 3), }", bytes(24))),
    "npy datetime": ("x.npy", _npy("{'descr': '<M8[s]', 'fortran_order': False, 'shape': (1, 1, 1), }", bytes(8))),
    "npy unparsable header": ("x.npy", _npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,", bytes(4))),
    "npz named .npy": ("x.npy", _npz()),
    "json nested 100000 deep": ("x.safetensors", safetensors_bytes(b"[" * 100000 + b"]" * 100000)),
    "json 5000-digit number": ("x.safetensors", safetensors_bytes(b'{"x": ' + b"1" * 5000 + b"}")),
    "unhashable dtype": ("x.safetensors", safetensors_bytes({"t": {"dtype": ["F32"], "shape": [], "data_offsets": [0, 0]}})),
    "dim of 2**63 times 0": ("x.safetensors",
                             safetensors_bytes({"direction": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]},
                                                "latents": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}})),
}


def _typed_file(tensor_name: str, fmt: str, **meta: str) -> bytes:
    from safetensors.torch import save

    shape = (1, 4, 8)
    return save({tensor_name: torch.zeros(shape)}, {"format": fmt, "format_version": "1", **meta})


for _name, _meta in {"version '\u00b2'": {"format_version": "\u00b2"}, "metadata nested deep": {"x": "[" * 100000},
                     "metadata 5000-digit number": {"x": "9" * 5000}, "latent_space a list": {"latent_space": "[1]"}}.items():
    REGRESSIONS[f"direction {_name}"] = ("x.safetensors", _typed_file("direction", "essence.direction", **_meta))
    REGRESSIONS[f"latents {_name}"] = ("x.safetensors", _typed_file("latents", "essence.latents", **_meta))


@pytest.mark.parametrize("case", sorted(REGRESSIONS))
def test_fuzz_findings_stay_fixed(folder, case):
    name, data = REGRESSIONS[case]
    check_direction(attempt(Direction.load, folder, name, data, DirectionFileError))
    check_latents(attempt(load_latents, folder, name, data, LatentFileError))


def test_big_endian_npy_loads_like_little_endian(folder):
    values = np.arange(32, dtype=np.float32).reshape(1, 4, 8)
    buffer = io.BytesIO()
    np.save(buffer, values.astype(">f4"))
    direction = attempt(Direction.load, folder, "be.npy", buffer.getvalue(), ())
    assert torch.equal(direction.tensor, torch.from_numpy(values))
