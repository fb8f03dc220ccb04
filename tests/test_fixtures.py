"""The repository's fixtures stand in faithfully for the golden ones: the copies are the same bytes, the
slim CLIP embeds images bit for bit as the golden file does, the traces are the golden run with only its
target picture changed (to one that may ship), and the files the tests write in
TargetCLIP's formats are in the very formats of TargetCLIP's own files. The comparisons with the golden
files run when the shared fixtures folder is beside the checkout."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import essence

REPO = Path(__file__).resolve().parents[1]
COPIED = ["stylegan2_tiny64.pt", "stylegan2_tiny64_io.safetensors", "e4e_tiny64.pt", "e4e_tiny64_io.safetensors",
          "stylegan2_ffhq_config_f_keys.json", "e4e_ffhq_encode_keys.json"]
TRACES = ["targetclip_public_trace", "targetclip_lr0.1_trace"]  # remade with a public-domain target (README)
MB = 1024 * 1024


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", COPIED)
def test_the_copied_fixtures_are_the_golden_files(name, fixtures, shared):
    assert sha256(fixtures / name) == sha256(shared(name))


@pytest.mark.parametrize("name", TRACES)
def test_the_traces_share_their_sources_and_start_and_have_a_public_domain_target(name, fixtures):
    """The golden trace's target is TargetCLIP's face_a.jpg, which may not ship; the repository's traces
    are the same run of optimization.py (same sources, start, settings) on a public-domain face."""
    from safetensors.torch import load_file

    trace = load_file(fixtures / f"{name}.safetensors")
    made = json.loads((fixtures / f"{name}.json").read_text(encoding="utf-8"))
    public = load_file(fixtures / "targetclip_public_trace.safetensors")
    assert made["target_image"] == "astronaut_face" and "public domain" in made["target_source"]
    assert torch.equal(trace["sources"], public["sources"]) and torch.equal(trace["init_direction"],
                                                                          public["init_direction"])
    assert made["official_args"]["step"] == len(trace["loss_per_step"]) == 40
    assert made["official_args"]["lr"] == {"targetclip_public_trace": 0.2, "targetclip_lr0.1_trace": 0.1}[name]


def test_the_public_trace_has_the_golden_traces_inputs_and_settings(fixtures, shared):
    from safetensors.torch import load_file

    ours, golden = (load_file(folder / "targetclip_public_trace.safetensors")
                    for folder in (fixtures, shared("targetclip_public_trace.safetensors").parent))
    assert set(ours) == set(golden)
    for key in ("sources", "init_direction"):
        assert torch.equal(ours[key], golden[key]), key
    assert not torch.allclose(ours["target_clip_input"], golden["target_clip_input"], atol=0.1)  # not face_a
    settings, golden_settings = (json.loads(path.read_text(encoding="utf-8"))["official_args"]
                                 for path in (fixtures / "targetclip_public_trace.json",
                                              shared("targetclip_public_trace.json")))
    assert {k: settings[k] for k in golden_settings} == golden_settings


def test_the_slim_clip_embeds_images_bit_for_bit_like_the_golden_file(tiny_files, guide, shared):
    golden = essence.load_guide(shared("clip_tiny.pt"), cache=False)
    pixels = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(guide.encode(pixels), golden.encode(pixels))
        generated = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
        assert torch.equal(guide.embed_generated(generated), golden.embed_generated(generated))
    slim = torch.load(tiny_files.guide, weights_only=True)
    full = torch.load(shared("clip_tiny.pt"), weights_only=True)
    assert list(slim) == list(full)  # the same tensors in the same order; only the token table is cut
    for key, value in full.items():
        expected = value[:len(slim[key])] if key == "token_embedding.weight" else value
        assert torch.equal(slim[key], expected), key
    assert tiny_files.guide.stat().st_size < 2 * MB


def test_the_slim_clip_still_loads_with_openais_clip_package(tiny_files, guide):
    import clip

    model, _ = clip.load(str(tiny_files.guide), jit=False, device="cpu")
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), guide.encode(pixels), rtol=0, atol=1e-6)


def _npy_header(path: Path) -> dict:
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read(handle)
    return {"version": version, "shape": shape, "fortran_order": fortran, "dtype": dtype}


def _storage_records(path: Path) -> list[tuple]:
    """The (storage type, location) of every tensor storage a torch.save file records."""
    import pickletools

    with zipfile.ZipFile(path) as archive:
        pickle = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    strings = [arg for op, arg, _ in pickletools.genops(pickle) if isinstance(arg, str)]
    return [(strings[i + 1], strings[i + 3]) for i, s in enumerate(strings) if s == "storage"]


def test_directions_and_latents_written_here_have_targetclips_formats(targetclip_files, shared):
    direction = _npy_header(targetclip_files["direction"])
    assert direction == _npy_header(shared("official/keanu.npy"))
    assert direction["shape"] == (1, 18, 512) and direction["dtype"] == np.float32
    w_plus = _npy_header(targetclip_files["w_plus"])
    assert w_plus == _npy_header(shared("official/w_plus.npy")) and w_plus["shape"] == (68, 18, 512)
    assert _storage_records(targetclip_files["opt_latents"]) == _storage_records(shared("official/opt_latents.pt")) \
        == [("torch FloatStorage", "cuda:0")]
    ours = torch.load(targetclip_files["opt_latents"], map_location="cpu", weights_only=True)
    theirs = torch.load(shared("official/opt_latents.pt"), map_location="cpu", weights_only=True)
    assert (type(ours), ours.shape, ours.dtype, ours.requires_grad) == (type(theirs), theirs.shape, theirs.dtype,
                                                                        theirs.requires_grad)
    # like TargetCLIP's, the 4 default sources are rows of the 68 evaluation latents
    assert torch.equal(ours, torch.from_numpy(np.load(targetclip_files["w_plus"])[[67, 4, 9, 34]]))
    official = np.load(shared("official/keanu.npy"))
    written = np.load(targetclip_files["direction"])
    assert 0.5 < written.std() / official.std() < 2  # a plausible size, as trained directions have


def test_the_fixtures_readme_describes_every_file_and_no_other(fixtures):
    readme = (fixtures / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))
    present = {p.name for p in fixtures.iterdir() if p.name != "README.md"}
    assert listed == present


def test_a_clone_stays_small(fixtures):
    """ComfyUI users clone the whole repository: its fixtures stay under 20 MB, and so does all of it."""
    assert sum(p.stat().st_size for p in fixtures.iterdir()) < 20 * MB
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the size of the tracked files is unknown")
    files = [REPO / name for name in listed.decode().split("\0") if name]
    assert sum(f.stat().st_size for f in files if f.is_file()) < 20 * MB
