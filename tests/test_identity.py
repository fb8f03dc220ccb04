"""The ArcFace identity network: equal to the reference's embeddings, found like every weight file,
loadable from ComfyUI, and refusing files that are not it."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from comfy_stubs import comfy_env, extra_model_paths  # noqa: F401
from identity_weights import describe_state, face_like_inputs, fill_state, save_identity_file
from safetensors.torch import load_file

import essence
from essence.storage import weights
from essence.networks import IdentityConfig, IdentityEncoder, build_identity

REFERENCE = Path(__file__).parent / "fixtures" / "identity_reference"
FILENAME = "model_ir_se50.pth"
TINY = IdentityConfig.ir_se50(widths=(8, 16, 24, 32), embed_dim=24)  # every layer of the real one, narrow


def tiny_identity_file(path: Path, seed: int = 7) -> Path:
    """A small IR-SE backbone in the real file layout (plain state dict)."""
    return save_identity_file(path, fill_state(describe_state(build_identity(TINY, "meta").state_dict()), seed))


@pytest.fixture(scope="module")
def reference() -> dict:
    return json.loads(REFERENCE.with_suffix(".json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def full_size_file(reference, tmp_path_factory) -> Path:
    """The reference's deterministic weights written as model_ir_se50.pth (175 MB, in a temp folder)."""
    shapes = {key: (shape, dtype) for key, (shape, dtype) in reference["state"].items()}
    return save_identity_file(tmp_path_factory.mktemp("arcface") / FILENAME,
                              fill_state(shapes, reference["weight_seed"]))


# ----------------------------------------------------------------------------- the reference


def test_keys_and_shapes_are_the_reference_backbones(reference):
    ours = describe_state(build_identity(IdentityConfig.ir_se50(), "meta").state_dict())
    theirs = {key: (shape, dtype) for key, (shape, dtype) in reference["state"].items()}
    assert list(ours) == list(theirs)  # same keys, same order
    assert ours == {key: (list(shape), dtype) for key, (shape, dtype) in theirs.items()}


@pytest.mark.slow
def test_embeddings_equal_the_reference_at_256_and_1024_px(reference, full_size_file):
    model = essence.load_identity(full_size_file, cache=False)
    expected = load_file(str(REFERENCE.with_suffix(".safetensors")))
    assert [spec["size"] for spec in reference["inputs"]] == [256, 1024]
    for spec in reference["inputs"]:
        faces = face_like_inputs(spec["seed"], spec["count"], spec["size"])
        with torch.inference_mode():  # as ComfyUI runs nodes
            got = model.embed(faces, batch_size=2)
        assert got.shape == (spec["count"], 512)
        torch.testing.assert_close(got, expected[spec["name"]], atol=1e-4, rtol=0)
        torch.testing.assert_close(got.norm(dim=1), torch.ones(spec["count"]), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- embedding


def test_embed_gives_unit_vectors_and_passes_gradients_to_faces_only(tmp_path):
    model = essence.load_identity(tiny_identity_file(tmp_path / FILENAME), cache=False)
    faces = face_like_inputs(3, 2, 256).requires_grad_(True)
    emb = model.embed(faces)
    assert emb.shape == (2, 24) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    (emb[0] @ emb[1]).backward()
    assert faces.grad is not None and faces.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_embed_of_a_resized_face_matches_its_pooled_256_px_version(tmp_path):
    """Any square size goes through the pooling to 256 first (TargetCLIP's extract_feats)."""
    model = essence.load_identity(tiny_identity_file(tmp_path / FILENAME), cache=False)
    big = face_like_inputs(4, 2, 512)
    small = torch.nn.functional.adaptive_avg_pool2d(big, 256)
    torch.testing.assert_close(model.embed(big), model.embed(small), atol=1e-5, rtol=0)


@pytest.mark.parametrize("faces, why", [
    (torch.zeros(2, 256, 256), r"\[batch, 3, height, width\]"),
    (torch.zeros(1, 1, 256, 256), r"\[batch, 3, height, width\]"),
    (torch.zeros(1, 3, 256, 200), r"square"),
    (torch.zeros(0, 3, 256, 256), r"non-empty"),
    (torch.zeros(1, 3, 256, 256, dtype=torch.uint8), r"floating-point"),
])
def test_bad_face_tensors_are_refused(tmp_path, faces, why):
    model = essence.load_identity(tiny_identity_file(tmp_path / FILENAME), cache=False)
    with pytest.raises(essence.errors.ShapeError, match=why):
        model.embed(faces)


# ----------------------------------------------------------------------------- finding the file


def test_manifest_knows_the_file_its_source_and_licence():
    spec = weights.get_spec("identity")
    assert (spec.name, spec.filename, spec.comfy_folder) == ("arcface-ir-se50", FILENAME, "essence_identity")
    assert spec.optional and spec not in weights.demo_specs()  # the demo never asks for it
    assert "MS-Celeb-1M" in spec.licence and "TreB1eN" in spec.provenance
    assert spec.sha256 and spec.size_bytes == 175367323
    assert spec.url_checksum(spec.urls[0]).sha256 == spec.sha256  # the pinned download serves exactly it
    assert weights.get_spec(FILENAME) is spec and weights.get_spec("arcface-ir-se50") is spec


def test_load_identity_finds_the_file_in_the_comfyui_folder(tmp_path):
    folder = tmp_path / "ComfyUI" / "models" / "essence_identity"
    tiny_identity_file(folder / FILENAME)
    weights.set_folder_provider(lambda name: [folder] if name == "essence_identity" else [])
    try:
        assert weights.find_weight("identity") == folder / FILENAME
        model = essence.load_identity()
        assert isinstance(model, IdentityEncoder) and model.embed_dim == 24
        assert essence.load_identity() is model  # cached per file and device
    finally:
        weights.set_folder_provider(None)


def test_load_identity_finds_the_file_in_the_weights_folder_env(tmp_path, monkeypatch):
    tiny_identity_file(tmp_path / "mine" / FILENAME)
    monkeypatch.setenv(weights.ENV_WEIGHTS_DIR, str(tmp_path / "mine"))
    assert essence.load_identity(cache=False).embed_dim == 24


def test_missing_file_says_where_to_get_it_and_under_which_terms():
    with pytest.raises(essence.errors.MissingWeightsError) as info:
        essence.load_identity()
    message = str(info.value)
    spec = weights.get_spec("identity")
    assert FILENAME in message and "models/essence_identity/" in message
    assert spec.urls[0] in message and spec.licence in message and "weights fetch arcface-ir-se50" in message


# ----------------------------------------------------------------------------- refusing other files


def test_other_model_files_given_as_the_identity_network_are_refused(tiny_files):
    with pytest.raises(essence.errors.WrongFileKindError, match=r"e4e_tiny64\.pt.*not the ArcFace.*e4e/pSp checkpoint"):
        essence.load_identity(tiny_files.encoder, cache=False)
    with pytest.raises(essence.errors.WrongFileKindError, match=r"stylegan2_tiny64\.pt.*not the ArcFace.*StyleGAN2"):
        essence.load_identity(tiny_files.generator, cache=False)


def test_a_state_dict_that_does_not_fit_names_the_tensors(tmp_path):
    state = torch.load(tiny_identity_file(tmp_path / "good.pth"), weights_only=True)
    missing = dict(state)
    del missing["body.3.res_layer.4.running_var"]
    save_identity_file(tmp_path / "missing.pth", missing)
    with pytest.raises(essence.errors.IncompatibleWeightsError,
                       match=r"missing\.pth.*1 missing: body\.3\.res_layer\.4\.running_var"):
        essence.load_identity(tmp_path / "missing.pth", cache=False)
    wrong = dict(state, **{"output_layer.3.weight": torch.zeros(24, 99)})
    save_identity_file(tmp_path / "wrong.pth", wrong)
    with pytest.raises(essence.errors.IncompatibleWeightsError, match=r"wrong\.pth.*output_layer\.3\.weight.*\[24, 99\]"):
        essence.load_identity(tmp_path / "wrong.pth", cache=False)


class _Payload:
    """Unpickling this would create a marker file: proof that code from the file ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_file_carrying_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / FILENAME
    state = fill_state(describe_state(build_identity(TINY, "meta").state_dict()), 1)
    torch.save({**state, "extra": _Payload(str(marker))}, path)
    with pytest.raises(essence.errors.UnsafeFileError, match=r"model_ir_se50\.pth.*refused"):
        essence.load_identity(path, cache=False)
    path.write_bytes(pickle.dumps(_Payload(str(marker))))
    with pytest.raises(essence.errors.UnsafeFileError, match=r"model_ir_se50\.pth.*refused"):
        essence.load_identity(path, cache=False)
    assert not marker.exists()


# ----------------------------------------------------------------------------- the ComfyUI node


def test_identity_loader_node_under_inference_mode(comfy_env):
    tiny_identity_file(comfy_env.dir("essence_identity") / FILENAME)
    node = comfy_env.node("EssenceIdentityLoader")
    options = node.INPUT_TYPES()["required"]["identity_file"]
    assert options[0] == [FILENAME] and options[1]["default"] == FILENAME
    (identity,) = comfy_env.run("EssenceIdentityLoader", identity_file=FILENAME)
    assert node.RETURN_TYPES == ("ESSENCE_IDENTITY",)
    assert not any(p.is_inference() for p in identity.parameters())  # built outside ComfyUI's inference mode
    assert comfy_env.pack.essence.runtime.cached_models() == []  # ComfyUI's node cache owns it
    with torch.inference_mode():
        emb = identity.embed(face_like_inputs(5, 2, 1024))
    assert emb.shape == (2, 24) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)


def test_identity_loader_node_names_the_folder_when_the_file_is_missing(comfy_env):
    node = comfy_env.node("EssenceIdentityLoader")
    assert node.INPUT_TYPES()["required"]["identity_file"][0] == [FILENAME]  # shows what it wants
    with pytest.raises(comfy_env.pack.essence.errors.MissingWeightsError,
                       match=r"(?s)'model_ir_se50\.pth' is not in ComfyUI's 'essence_identity'.*Licence"):
        comfy_env.run("EssenceIdentityLoader", identity_file=FILENAME)
