"""Tuned-weight files (``<name>.tuned.safetensors``) that lie, overflow, are misnamed or renamed, as a
user meets them: through the command line (one ``error:`` line, exit 2, the inputs unchanged) or
the library. The tuned weights here are small random differences from the tiny generator, written
the way pivotal tuning writes them (tests/test_tuned_latents.py tunes for real)."""

from __future__ import annotations

import copy
import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

import essence
from essence.cli import main as cli_main
from essence.errors import (CorruptFileError, EssenceError, IncompatibleWeightsError, LatentFileError,
                            MissingWeightsError)
from essence.latents import tuned_path
from essence.networks import (MAX_TUNED_DELTA, TunedFile, TunedWeights, render, sampled_synthesis_fingerprint,
                              save_tuned, synthesis_fingerprint, synthesis_parameters)
from essence.storage import read_safetensors_header

DELTA = 0.01  # the random differences' scale: what a short tuning makes


def tuned_weights(generator, seed: int, scale: float = DELTA) -> TunedWeights:
    rng = torch.Generator().manual_seed(seed)
    tuned = {name: param.detach() + scale * torch.randn(param.shape, generator=rng)
             for name, param in synthesis_parameters(generator).items()}
    return TunedWeights.between(generator, tuned, {"method": "pivotal tuning (PTI)", "steps": 7,
                                                   "settings": {"learning_rate": 3e-4, "steps": 350}})


@pytest.fixture()
def pair(generator, tmp_path) -> Path:
    """faces.safetensors (2 rows, each tuned) and faces.tuned.safetensors beside it."""
    faces = essence.LatentSet(generator.sample_wplus(2, seed=0),
                              [{"kind": "photo", "name": "a.jpg", "tuned": "a"},
                               {"kind": "photo", "name": "b.jpg", "tuned": "b"}],
                              {}, {"a": tuned_weights(generator, 1), "b": tuned_weights(generator, 2)})
    return faces.save(tmp_path / "faces.safetensors")


@pytest.fixture()
def direction(tmp_path) -> Path:
    return essence.Direction(torch.zeros(1, 10, 64)).save(tmp_path / "d.safetensors")


def run(argv: list, capsys) -> tuple[int, str, str]:
    code = cli_main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def refused(code: int, err: str) -> str:
    """The one error line of a refused command."""
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def apply_args(tiny_files, direction: Path, latents: Path, out: Path) -> list:
    return ["apply", direction, "--latents", latents, "--generator", tiny_files.generator, "--strength", "0",
            "--device", "cpu", "--out", out]


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def header_of(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def write_header(path: Path, header: dict | bytes, data: bytes) -> None:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def set_metadata(path: Path, **fields: str) -> None:
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
    save_file(load_file(str(path)), str(path), metadata={**meta, **fields})


# ----------------------------------------------------------------------------- headers that lie


def _two_of_a_shape(header: dict) -> tuple[str, str]:
    seen: dict[str, str] = {}
    for name, info in header.items():
        if name != "__metadata__":
            key = json.dumps([info["dtype"], info["shape"]])
            if key in seen:
                return seen[key], name
            seen[key] = name
    raise AssertionError("no two tensors of one shape")


def _overlapping(path: Path) -> None:
    header, data = header_of(path)
    first, second = _two_of_a_shape(header)
    header[second]["data_offsets"] = header[first]["data_offsets"]
    write_header(path, header, data)


@pytest.mark.parametrize("lie, header, data, message", [
    ("overlap", {"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
                 "b": {"dtype": "U8", "shape": [8], "data_offsets": [4, 12]}}, 12, "claim the same bytes"),
    ("same bytes", {"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
                    "b": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}, 8, "claim the same bytes"),
    ("gap", {"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
             "b": {"dtype": "U8", "shape": [8], "data_offsets": [8, 16]}}, 16, "bytes 4-8 of its data belong to no"),
    ("leading gap", {"a": {"dtype": "U8", "shape": [8], "data_offsets": [8, 16]}}, 16, "bytes 0-8"),
    ("trailing bytes", {"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}, 16, "bytes 8-16"),
    ("duplicate tensor", b'{"a": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}, "b": {"dtype": "U8", '
                         b'"shape": [8], "data_offsets": [8, 16]}, "a": {"dtype": "U8", "shape": [8], '
                         b'"data_offsets": [0, 8]}}', 16, "names 'a' twice"),
    ("duplicate field", b'{"a": {"dtype": "U8", "dtype": "I8", "shape": [16], "data_offsets": [0, 16]}}', 16,
     "names 'dtype' twice"),
])
def test_headers_that_lie_about_their_bytes_are_refused(tmp_path, lie, header, data, message):
    """Each lie is a CorruptFileError from the header alone; safetensors' own reader refuses all
    but the duplicate tensor name, which it reads as the last one (two readers, two contents)."""
    path = tmp_path / "lie.safetensors"
    write_header(path, header, bytes(range(data)))
    with pytest.raises(CorruptFileError, match=message):
        read_safetensors_header(path)
    if lie != "duplicate tensor":
        with pytest.raises(SafetensorError), safe_open(str(path), "pt") as handle:
            [handle.get_tensor(name) for name in handle.keys()]


@pytest.mark.parametrize("header, data", [
    ({"b": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]},
      "a": {"dtype": "U8", "shape": [2, 4], "data_offsets": [8, 16]}}, 16),
    ({"a": {"dtype": "U8", "shape": [8], "data_offsets": [8, 16]},
      "b": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}}, 16),
    ({"empty": {"dtype": "F16", "shape": [0, 3], "data_offsets": [0, 0]},
      "a": {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}}, 8),
    ({}, 0),
])
def test_headers_safetensors_reads_are_accepted(tmp_path, header, data):
    """Tensors listed in another order than their bytes, and empty tensors, are valid safetensors."""
    path = tmp_path / "fine.safetensors"
    write_header(path, header, bytes(range(data)))
    assert set(read_safetensors_header(path)) == set(header)
    with safe_open(str(path), "pt") as handle:
        assert set(handle.keys()) == set(header)


def test_overlapping_tuned_weights_are_refused_by_every_command(pair, direction, tiny_files, tmp_path, capsys):
    _overlapping(tuned_path(pair))
    before = files_in(tmp_path)
    with pytest.raises(CorruptFileError, match="claim the same bytes"):
        TunedFile(tuned_path(pair))
    err = refused(*run(apply_args(tiny_files, direction, pair, tmp_path / "out.png"), capsys)[::2])
    assert "faces.tuned.safetensors" in err and "claim the same bytes" in err
    err = refused(*run(["info", tuned_path(pair)], capsys)[::2])
    assert "claim the same bytes" in err
    assert files_in(tmp_path) == before


def test_a_tuned_file_replaced_after_it_was_opened_is_checked_again_when_read(pair, generator, tmp_path):
    """The file is read when a face is drawn, long after it was opened: that read checks the header
    as it is then (here: overlapping, which safetensors itself would report as a bare error)."""
    opened = TunedFile(tuned_path(pair))
    _overlapping(tuned_path(pair))
    with pytest.raises(CorruptFileError, match="claim the same bytes"):
        opened["a"]
    save_tuned(tuned_path(pair), {"a": tuned_weights(generator, 3), "b": tuned_weights(generator, 4)}, "other")
    with pytest.raises(CorruptFileError, match="changed after it was opened"):
        opened["a"]


# ----------------------------------------------------------------------------- differences no tuning makes


def _set_tensor(path: Path, name: str, value: float) -> None:
    header, data = header_of(path)
    start, end = header[name]["data_offsets"]
    filled = torch.full(((end - start) // 2,), value, dtype=torch.float16).numpy().tobytes()
    write_header(path, header, data[:start] + filled + data[end:])


def test_finite_differences_far_beyond_tuning_are_refused_with_the_limit(pair, direction, tiny_files, tmp_path,
                                                                        capsys):
    """float16 differences of 5 drew a white picture with exit 0."""
    _set_tensor(tuned_path(pair), "b/to_rgb1.bias", 5.0)
    before = files_in(tmp_path)
    err = refused(*run(apply_args(tiny_files, direction, pair, tmp_path / "out.png"), capsys)[::2])
    assert "tuned weights of b" in err and "differs from its generator's by 5" in err
    assert f"the limit is {MAX_TUNED_DELTA:g}" in err
    assert files_in(tmp_path) == before
    tuned = TunedFile(tuned_path(pair))
    assert tuned["a"].largest() < 10 * DELTA  # the other face is fine
    with pytest.raises(CorruptFileError, match="far beyond what tuning makes"):
        tuned["b"]


def test_differences_up_to_the_limit_are_read(pair):
    _set_tensor(tuned_path(pair), "b/to_rgb1.bias", MAX_TUNED_DELTA)
    assert TunedFile(tuned_path(pair))["b"].largest() == pytest.approx(MAX_TUNED_DELTA, rel=1e-3)


def test_weights_that_could_not_be_read_back_are_not_saved(generator, tmp_path):
    weights = tuned_weights(generator, 1, scale=3 * MAX_TUNED_DELTA)
    with pytest.raises(EssenceError, match="Nothing was saved: tune with a lower learning rate"):
        save_tuned(tmp_path / "x.tuned.safetensors", {"a": weights}, "set")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- rendering that overflows


def test_a_render_with_non_finite_output_names_the_row_and_its_tuned_weights(generator):
    latents = generator.sample_wplus(3, seed=0)
    broken = tuned_weights(generator, 1)
    broken.deltas["to_rgb1.bias"] = torch.full_like(broken.deltas["to_rgb1.bias"], float("inf"))
    with pytest.raises(EssenceError, match=r"drawing faces: row 2 came out as NaN or infinite values; the tuned "
                                           r"weights they are drawn with are the likely cause"):
        render(generator, latents, tuned=[None, tuned_weights(generator, 2), broken], batch_size=2)


def test_a_generator_that_overflows_is_an_error_not_a_picture(generator):
    overflowing = copy.deepcopy(generator)
    with torch.no_grad():
        overflowing.to_rgb1.conv.weight.fill_(3e38)
    with pytest.raises(EssenceError, match=r"rows 0, 1 came out as NaN or infinite values; the generator's weights"):
        render(overflowing, generator.sample_wplus(2, seed=0))


# ----------------------------------------------------------------------------- the companion's name


@pytest.mark.parametrize("name", ["", "   ", "../faces.tuned.safetensors", "sub/faces.tuned.safetensors",
                                  "sub\\faces.tuned.safetensors", "faces.safetensors", ".tuned.safetensors",
                                  "faces.tuned.safetensors\n", 7, None])
def test_an_odd_companion_name_is_one_clear_error_in_every_command(pair, direction, tiny_files, tmp_path, capsys,
                                                                   name):
    record = json.loads(load_metadata(pair)["tuned"])
    set_metadata(pair, tuned=json.dumps({**record, "file": name}))
    before = files_in(tmp_path)
    for argv in (["info", pair], ["info", "--json", pair], apply_args(tiny_files, direction, pair,
                                                                        tmp_path / "out.png")):
        err = refused(*run(argv, capsys)[::2])
        assert "faces.safetensors: its record of the tuned weights" in err and "the file is damaged" in err
    with pytest.raises(LatentFileError, match="its record of the tuned weights"):
        essence.load_latents(pair)
    assert files_in(tmp_path) == before


def load_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def test_info_on_a_latent_file_notes_its_tuned_weights_or_why_they_cannot_be_used(pair, capsys):
    code, out, _ = run(["info", pair], capsys)
    assert code == 0 and "tuned_weights: 2 row(s) drawn with the weights tuned to them (2 face(s)) from " \
                         "faces.tuned.safetensors" in out
    tuned_path(pair).unlink()
    code, out, _ = run(["info", pair], capsys)
    assert code == 0 and "tuned_weights: 2 row(s), not usable:" in out and "are not beside it" in out
    code, out, _ = run(["info", "--json", pair], capsys)
    assert code == 0 and "not usable" in json.loads(out)["metadata"]["tuned_weights"]


# ----------------------------------------------------------------------------- info on a tuned file


def test_info_on_a_tuned_file_is_a_short_summary(pair, generator, capsys):
    code, out, _ = run(["info", tuned_path(pair)], capsys)
    assert code == 0 and out.startswith(f"{tuned_path(pair)}: tuned weights of 2 face(s), ")
    assert len(out.splitlines()) < 15 and "conv1.conv.weight" not in out
    assert generator.fingerprint() in out and synthesis_fingerprint(generator)[:16] in out
    code, out, _ = run(["info", "--json", tuned_path(pair)], capsys)
    summary = json.loads(out)
    assert code == 0 and summary["kind"] == "tuned weights" and len(out) < 2000
    meta = summary["metadata"]
    assert meta["faces"] == 2 and meta["steps"] == [7, 7] and meta["generator"] == [generator.fingerprint()]
    assert meta["size_mb"] == pytest.approx(tuned_path(pair).stat().st_size / 1e6, abs=0.06)
    assert meta["tuning"] == [{"method": "pivotal tuning (PTI)", "settings": {"learning_rate": 3e-4, "steps": 350}}]


def test_a_tuned_file_given_as_a_direction_names_a_few_of_its_tensors(pair, tiny_files, tmp_path, capsys):
    err = refused(*run(["apply", tuned_path(pair), "--sample", "1", "--generator", tiny_files.generator,
                        "--device", "cpu", "--out", tmp_path / "out.png"], capsys)[::2])
    assert "not an Essence direction file (format 'essence.tuned'" in err and "in all)" in err and len(err) < 600


# ----------------------------------------------------------------------------- the generator's fingerprint


def test_a_generator_differing_only_in_unsampled_weights_is_refused(pair, generator):
    """The sampled fingerprint (every 1/257th value and the sum) missed this; the full hash does not."""
    other = copy.deepcopy(generator)
    weight = other.convs[0].conv.weight  # 32 x 32 x 3 x 3: sampled every 36th value
    with torch.no_grad():
        weight.view(-1)[1] += 0.5
        weight.view(-1)[2] -= 0.5
    assert sampled_synthesis_fingerprint(other) == sampled_synthesis_fingerprint(generator)
    assert synthesis_fingerprint(other) != synthesis_fingerprint(generator)
    faces = essence.load_latents(pair)
    with pytest.raises(IncompatibleWeightsError, match="belong to another generator"):
        render(other, faces.latents, tuned=faces.tuned_rows())
    render(generator, faces.latents, tuned=faces.tuned_rows())


def test_the_full_hash_is_computed_once_per_state_of_the_weights(generator, monkeypatch):
    import essence.networks.tuned as tuned

    model = copy.deepcopy(generator)  # starts without the original's hash
    calls = []
    real = tuned.hashlib.sha256
    monkeypatch.setattr(tuned.hashlib, "sha256", lambda *a: calls.append(1) or real(*a))
    first = synthesis_fingerprint(model)
    assert synthesis_fingerprint(model) == first and len(calls) == 1
    original = model.to_rgb1.bias.detach().clone()
    with torch.no_grad():
        model.to_rgb1.bias.add_(1.0)  # in place, through the parameter
    assert synthesis_fingerprint(model) != first and len(calls) == 2
    model.to_rgb1.bias.data = original  # new storage, same version counter
    assert synthesis_fingerprint(model) == first and len(calls) == 3
    assert synthesis_fingerprint(copy.deepcopy(model)) == first and len(calls) == 4


def test_files_written_before_the_full_hash_still_open_and_are_checked_by_their_fingerprint(pair, generator):
    companion = tuned_path(pair)
    meta = load_metadata(companion)
    entries = json.loads(meta["entries"])
    for entry in entries.values():
        del entry["synthesis_sha256"]
    set_metadata(companion, entries=json.dumps(entries))
    faces = essence.load_latents(pair)
    assert faces.tuned["a"].synthesis_sha256 == "" and faces.tuned["a"].synthesis
    render(generator, faces.latents, tuned=faces.tuned_rows())
    other = copy.deepcopy(generator)
    with torch.no_grad():
        other.to_rgb1.conv.weight.mul_(-1)
    with pytest.raises(IncompatibleWeightsError, match="belong to another generator"):
        render(other, faces.latents, tuned=faces.tuned_rows())


# ----------------------------------------------------------------------------- a pair renamed together


def test_a_pair_renamed_together_still_opens(pair, generator, direction, tiny_files, tmp_path, capsys):
    faces = essence.load_latents(pair)
    expected = render(generator, faces.latents, tuned=faces.tuned_rows())
    renamed = pair.rename(tmp_path / "me.safetensors")
    tuned_path(pair).rename(tuned_path(renamed))
    again = essence.load_latents(renamed)
    torch.testing.assert_close(render(generator, again.latents, tuned=again.tuned_rows()), expected)
    code, _, err = run(apply_args(tiny_files, direction, renamed, tmp_path / "out.png"), capsys)
    assert code == 0, err


def test_a_renamed_pair_whose_name_holds_another_set_is_not_used(pair, generator, tmp_path):
    renamed = pair.rename(tmp_path / "me.safetensors")
    tuned_path(pair).rename(tuned_path(renamed))
    save_tuned(tuned_path(renamed), {"a": tuned_weights(generator, 3), "b": tuned_weights(generator, 4)}, "other")
    with pytest.raises(MissingWeightsError, match="me.tuned.safetensors beside it holds the tuned weights of another"):
        essence.load_latents(renamed).tuned_rows()


def test_a_companion_found_under_neither_name_says_how_to_rename_a_pair(pair, direction, tiny_files, tmp_path,
                                                                        capsys):
    renamed = pair.rename(tmp_path / "me.safetensors")
    tuned_path(pair).rename(tmp_path / "me-tuned.safetensors")
    err = refused(*run(apply_args(tiny_files, direction, renamed, tmp_path / "out.png"), capsys)[::2])
    assert "(faces.tuned.safetensors or me.tuned.safetensors) are not beside it" in err
    assert "Keep me.safetensors and me.tuned.safetensors together (rename both, keeping the pattern" in err
