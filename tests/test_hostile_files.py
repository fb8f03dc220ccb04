"""Files made to attack Essence: code hidden in pickles and TorchScript, headers claiming huge
tensors, zip bombs, path tricks in node inputs, and symlinks in the model folders.

Related tests elsewhere (not repeated here): a pickled callable or plain pickle in a ``.pt``
(test_checkpoints.py), an object ``.npy`` direction (test_direction.py), traversal names for Save
Essence (test_nodes.py::test_save_refuses_names_that_leave_the_folder), decompression-bomb photos
(test_images.py::test_decompression_bomb_is_refused_before_decoding). SECURITY.md has the policy.
"""

from __future__ import annotations

import io
import os
import pickle
import resource
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from comfy_stubs import comfy_env, extra_model_paths  # noqa: F401
from test_fuzz_files import attempt, bounded_memory, safetensors_bytes

import essence
from essence.errors import DirectionFileError, LatentFileError, UnsafeFileError, WeightFileError, WrongFileKindError
from essence.latents import Direction, load_latents
from essence.networks.clip_guide import clip_state_from_file, load_guide_file
from essence.storage import load_torch_file


class _Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ----------------------------------------------------------------------------- code in files


def test_pickled_payload_in_an_npy_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npy"
    np.save(path, np.array([_Payload(str(marker))], dtype=object), allow_pickle=True)
    with pytest.raises(DirectionFileError, match=r"evil\.npy"):
        Direction.load(path)
    with pytest.raises(LatentFileError, match=r"evil\.npy"):
        load_latents(path)
    assert not marker.exists()


def test_pickled_payload_in_a_pt_never_runs_through_any_loader(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"latents": torch.zeros(1, 4, 8), "x": _Payload(str(marker))}, path)
    with pytest.raises(LatentFileError, match="refused"):
        load_latents(path)
    with pytest.raises(UnsafeFileError):
        clip_state_from_file(path)
    with pytest.raises(UnsafeFileError):
        essence.load_encoder(path, cache=False)
    assert not marker.exists()


def test_a_pickle_disguised_as_a_direction_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.safetensors"
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(DirectionFileError):
        Direction.load(path)
    assert not marker.exists()


class _NotClip(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_file_that_is_not_clip_is_refused(tmp_path):
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.script(_NotClip()).save(str(path))
    with pytest.raises(WrongFileKindError, match="not an OpenAI CLIP model"):
        load_guide_file(path)


class _SetstateWrites(torch.nn.Module):
    """A TorchScript module whose ``__setstate__`` (run by torch.jit.load) writes a file."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.w = torch.zeros(2)

    @torch.jit.export
    def __getstate__(self):
        return (self.w, self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]):
        self.marker = state[1]
        written = torch.from_file(self.marker, True, 4, dtype=torch.uint8)
        written.fill_(65)
        self.w = state[0] + written[:2].float()
        self.training = state[2]

    def forward(self, x):
        return x + self.w


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_code_that_would_run_on_load_is_refused_unrun(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.script(_SetstateWrites(str(marker))).save(str(path))
    marker.unlink(missing_ok=True)  # saving may have touched it; loading must not
    with pytest.raises(UnsafeFileError, match="__setstate__"):
        load_guide_file(path)
    assert not marker.exists()
    with pytest.raises(WeightFileError):  # the plain .pt loader refuses TorchScript outright
        load_torch_file(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------- size claims


def test_safetensors_header_claiming_huge_tensors_is_refused_in_bounded_memory(tmp_path):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for shape in ([2**40, 2**40], [1, 2**40, 2**40], [1, 2**20, 2**20], [2**63, 2]):
        entry = {"dtype": "F32", "shape": shape, "data_offsets": [0, 2**62]}
        data = safetensors_bytes({"direction": entry, "__metadata__": {"format": "essence.direction"}}, bytes(64))
        assert isinstance(attempt(Direction.load, tmp_path, "huge.safetensors", data, DirectionFileError),
                          DirectionFileError)
        latents = safetensors_bytes({"latents": entry}, bytes(64))
        assert isinstance(attempt(load_latents, tmp_path, "huge.safetensors", latents, LatentFileError),
                          LatentFileError)
    # a header length of 2**63, and a 1 GB header on a small file
    for declared in (2**63, 2**30):
        data = safetensors_bytes(b"{}", b"", declared_len=declared)
        assert isinstance(attempt(Direction.load, tmp_path, "huge.safetensors", data, DirectionFileError),
                          DirectionFileError)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024  # KiB on Linux


def test_npy_header_claiming_a_huge_array_is_refused_in_bounded_memory(tmp_path):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for shape in ("(1, 100000, 100000)", "(1099511627776, 1099511627776)"):
        header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".encode()
        header += b" " * (117 - len(header)) + b"\n"
        data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(64)
        assert isinstance(attempt(Direction.load, tmp_path, "huge.npy", data, DirectionFileError), DirectionFileError)
        assert isinstance(attempt(load_latents, tmp_path, "huge.npy", data, LatentFileError), LatentFileError)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024


def _pt_with_deflated_tensor(path: Path, numel: int) -> None:
    """A torch.save file whose tensor data is stored deflated: a few hundred KB that unpack to numel*4 bytes."""
    plain = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, plain)
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(path, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("data.pkl"):  # declare the storage as numel floats
                data = data.replace(b"K\x04tq", b"J" + struct.pack("<i", numel) + b"tq")
            if info.filename.endswith("data/0"):
                out.writestr(info.filename, bytes(numel * 4), compress_type=zipfile.ZIP_DEFLATED)
            else:
                out.writestr(info.filename, data)


def test_zip_bomb_pt_is_refused_without_unpacking(tmp_path):
    path = tmp_path / "bomb.pt"
    _pt_with_deflated_tensor(path, 2**26)  # 256 MB of zeros in ~250 KB
    assert path.stat().st_size < 2**20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with bounded_memory(), pytest.raises(UnsafeFileError, match="zip bomb"):
        load_torch_file(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024
    with pytest.raises(LatentFileError, match="zip bomb"):
        load_latents(path)


def test_zip_declaring_huge_member_sizes_fails_cleanly(tmp_path):
    """Central-directory sizes rewritten to ~4 GB on a stored (uncompressed) checkpoint."""
    source = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, source)
    data = bytearray(source.getvalue())
    at = data.find(b"PK\x01\x02")
    while at != -1:
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if bytes(data[at + 46:at + 46 + name_len]).endswith(b"data/0"):
            struct.pack_into("<II", data, at + 20, 0xFFFFFFF0, 0xFFFFFFF0)
        at = data.find(b"PK\x01\x02", at + 4)
    with bounded_memory():
        result = attempt(load_torch_file, tmp_path, "lying.pt", bytes(data), WeightFileError, bound=False)
    assert isinstance(result, WeightFileError)


# ----------------------------------------------------------------------------- folders and symlinks


def test_symlinked_model_files_are_followed_for_reading(tmp_path):
    """Policy: users link big model files from elsewhere on purpose; a symlinked file is read."""
    outside = tmp_path / "elsewhere" / "shared.safetensors"
    outside.parent.mkdir()
    Direction(torch.ones(1, 4, 8)).save(outside)
    folder = tmp_path / "essence_directions"
    folder.mkdir()
    (folder / "linked.safetensors").symlink_to(outside)
    assert torch.equal(Direction.load(folder / "linked.safetensors").tensor, torch.ones(1, 4, 8))


def test_saving_never_writes_through_a_symlink(tmp_path):
    """``atomic_write`` renames over a symlink destination: the link is replaced, its target untouched."""
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"precious")
    folder = tmp_path / "out"
    folder.mkdir()
    link = folder / "d.safetensors"
    link.symlink_to(outside)
    Direction(torch.ones(1, 4, 8)).save(link)
    assert outside.read_bytes() == b"precious"
    assert not link.is_symlink() and Direction.load(link).tensor.shape == (1, 4, 8)


def test_save_essence_skips_symlinks_named_like_its_next_file(comfy_env, tmp_path):
    folder = comfy_env.dir("essence_directions")
    folder.mkdir(parents=True, exist_ok=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "target.safetensors").write_bytes(b"precious")
    (folder / "keanu_00001.safetensors").symlink_to(outside / "target.safetensors")
    (folder / "keanu_00002.safetensors").symlink_to(outside / "dangling.safetensors")  # target absent
    (folder / "sub").symlink_to(outside, target_is_directory=True)
    before = sorted(os.listdir(outside))
    direction = comfy_env.pack.essence.Direction(torch.zeros(1, 10, 64))
    (name,) = comfy_env.run("EssenceSave", direction=direction, filename_prefix="keanu")
    assert name == "keanu_00003.safetensors"
    assert (folder / name).is_file() and not (folder / name).is_symlink()
    assert sorted(os.listdir(outside)) == before and (outside / "target.safetensors").read_bytes() == b"precious"
    for prefix in ("sub/keanu", "sub\\keanu", str(outside / "keanu")):
        with pytest.raises(comfy_env.pack.essence.EssenceError, match="cannot save"):
            comfy_env.run("EssenceSave", direction=direction, filename_prefix=prefix)
    assert sorted(os.listdir(outside)) == before


@pytest.mark.parametrize("name", ["../outside.safetensors", "../../outside.safetensors", "sub/../../outside.safetensors",
                                  "/abs/outside.safetensors", "..\\outside.safetensors"])
def test_load_essence_refuses_names_outside_its_folder(comfy_env, tmp_path, name):
    """ComfyUI skips its own dropdown check for inputs a node validates itself, so Load Essence does."""
    Direction(torch.zeros(1, 10, 64)).save(comfy_env.models_dir / "outside.safetensors")
    Direction(torch.zeros(1, 10, 64)).save(comfy_env.models_dir.parent / "outside.safetensors")
    cls = comfy_env.node("EssenceLoad")
    assert cls.VALIDATE_INPUTS(name) is not True
    with pytest.raises(comfy_env.pack.essence.EssenceError, match="not a file inside"):
        cls().load(name)


def test_load_essence_reads_a_listed_file_in_a_symlinked_subfolder(comfy_env, tmp_path):
    outside = tmp_path / "shared_dirs"
    outside.mkdir()
    Direction(torch.ones(1, 10, 64)).save(outside / "kept.safetensors")
    folder = comfy_env.dir("essence_directions")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "shared").symlink_to(outside, target_is_directory=True)
    assert "shared/kept.safetensors" in comfy_env.node("EssenceLoad").INPUT_TYPES()["required"]["direction_file"][0]
    (direction,) = comfy_env.run("EssenceLoad", direction_file="shared/kept.safetensors")
    assert torch.equal(direction.tensor, torch.ones(1, 10, 64))
