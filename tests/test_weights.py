"""The weights manifest, the lookup order, the missing-file message and the integrity status."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Iterator

import pytest

from essence.storage import weights
from essence.errors import EssenceError, MissingWeightsError

REPO = Path(__file__).resolve().parent.parent
MANIFEST = REPO / "essence" / "storage" / "weights_manifest.json"
REQUIRED_FIELDS = {
    "name", "role", "filename", "urls", "size_bytes", "sha256", "licence", "layout", "required_for",
    "comfy_folder",
}
HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No real weights folder, no env folders, no provider: each test builds its own."""
    empty = tmp_path / "repo-weights"
    empty.mkdir()
    monkeypatch.setenv(weights.ENV_REPO_WEIGHTS_DIR, str(empty))
    monkeypatch.delenv(weights.ENV_WEIGHTS_DIR, raising=False)
    weights.set_folder_provider(None)
    weights.clear_sha_cache()
    yield
    weights.set_folder_provider(None)


def raw_entries() -> list[dict]:
    return json.loads(MANIFEST.read_text(encoding="utf-8"))["weights"]


# ---------------------------------------------------------------------------------------------
# manifest


def test_manifest_entries_are_well_formed() -> None:
    entries = raw_entries()
    assert entries
    for entry in entries:
        assert REQUIRED_FIELDS <= entry.keys(), entry.get("name")
        assert entry["role"] in weights.ROLES
        assert entry["sha256"] is None or HEX64.match(entry["sha256"])
        assert entry["size_bytes"] is None or (isinstance(entry["size_bytes"], int) and entry["size_bytes"] > 0)
        assert entry["urls"] and all(u.startswith(("http://", "https://")) for u in entry["urls"])
        assert entry["licence"].strip() and entry["layout"].strip()
        assert isinstance(entry["required_for"], list) and entry["required_for"]
        assert entry["comfy_folder"].startswith("essence_")
        assert entry.get("compression") in (None, "bz2")


def test_manifest_checksums_are_well_formed() -> None:
    for entry in raw_entries():
        copies = list(entry.get("url_checksums", {}).values()) + entry.get("known_copies", [])
        for copy in copies:
            assert copy.get("sha256") is None or HEX64.match(copy["sha256"])
        assert set(entry.get("url_checksums", {})) <= set(entry["urls"])


def test_manifest_names_and_files_are_unique_and_load() -> None:
    specs = weights.load_manifest()
    assert len({s.name for s in specs}) == len(specs) == len({s.filename for s in specs})
    assert {s.role for s in specs} == set(weights.ROLES)


def test_openai_checksums_match_their_urls() -> None:
    """OpenAI publishes each file's sha256 as a path component; the manifest must agree."""
    for spec in weights.load_manifest():
        if "openaipublic" in spec.urls[0]:
            assert spec.urls[0].split("/")[-2] == spec.sha256


def test_demo_needs_generator_encoder_vit_b_32_and_landmarks() -> None:
    assert sorted(s.filename for s in weights.demo_specs()) == [
        "ViT-B-32.pt", "e4e_ffhq_encode.pt", "shape_predictor_68_face_landmarks.dat",
        "stylegan2-ffhq-config-f.pt"]


def test_manifest_validation_rejects_bad_entries(tmp_path: Path) -> None:
    entry = dict(raw_entries()[0], sha256="not-a-hash")
    bad = tmp_path / "manifest.json"
    bad.write_text(json.dumps({"weights": [entry]}))
    with pytest.raises(EssenceError, match="sha256"):
        weights.load_manifest(bad)
    bad.write_text(json.dumps({"weights": [dict(raw_entries()[0], role="painter")]}))
    with pytest.raises(EssenceError, match="role"):
        weights.load_manifest(bad)
    bad.write_text(json.dumps({"weights": [dict(raw_entries()[0], generator_fingerprint="ABC")]}))
    with pytest.raises(EssenceError, match="generator_fingerprint must be 16 lowercase hex digits"):
        weights.load_manifest(bad)


def test_get_spec_by_name_role_and_filename() -> None:
    by_name = weights.get_spec("clip-vit-b-32")
    assert weights.get_spec("guide") == by_name  # the role's default
    assert weights.get_spec("ViT-B-32.pt") == by_name
    assert weights.get_spec("generator").filename == "stylegan2-ffhq-config-f.pt"
    with pytest.raises(MissingWeightsError, match="not a known weight"):
        weights.get_spec("nonsense")


# ---------------------------------------------------------------------------------------------
# lookup order


def _put(folder: Path, name: str = "stylegan2-ffhq-config-f.pt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(folder.name.encode())
    return path


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo_file = _put(Path(os.environ[weights.ENV_REPO_WEIGHTS_DIR]))
    env_file = _put(tmp_path / "env")
    monkeypatch.setenv(weights.ENV_WEIGHTS_DIR, str(env_file.parent))
    provider_file = _put(tmp_path / "comfy")
    asked: list[str] = []
    weights.set_folder_provider(lambda folder: asked.append(folder) or [tmp_path / "nowhere", provider_file.parent])
    explicit = _put(tmp_path / "explicit", "my-generator.pt")

    assert weights.find_weight("generator", explicit_path=explicit) == explicit
    assert weights.find_weight("generator") == provider_file
    assert asked[-1] == "essence_stylegan2"
    provider_file.unlink()
    assert weights.find_weight("generator") == env_file  # the user's own setting beats the default
    env_file.unlink()
    assert weights.find_weight("stylegan2-ffhq-config-f") == repo_file
    repo_file.unlink()
    with pytest.raises(MissingWeightsError):
        weights.find_weight("generator")


def test_env_var_may_name_several_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    second = _put(tmp_path / "second")
    monkeypatch.setenv(weights.ENV_WEIGHTS_DIR, os.pathsep.join([str(tmp_path / "first"), str(second.parent)]))
    assert weights.find_weight("generator") == second


def test_explicit_path_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _put(Path(os.environ[weights.ENV_REPO_WEIGHTS_DIR]))  # present elsewhere, yet not used
    missing = tmp_path / "typo.pt"
    with pytest.raises(MissingWeightsError) as info:
        weights.find_weight("generator", explicit_path=missing)
    assert str(missing) in str(info.value)


def test_explicit_folder_is_searched_for_the_file(tmp_path: Path) -> None:
    path = _put(tmp_path / "mine")
    assert weights.find_weight("generator", explicit_path=tmp_path / "mine") == path


def test_explicit_bare_filename_is_looked_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_generator("stylegan2-ffhq-config-f.pt")`` or a ComfyUI dropdown value: a name, not a path."""
    monkeypatch.chdir(tmp_path)
    provider_file = _put(tmp_path / "comfy", "my-gan.pt")
    weights.set_folder_provider(lambda folder: [provider_file.parent] if folder == "essence_stylegan2" else [])
    assert weights.find_weight("generator", explicit_path="my-gan.pt") == provider_file
    with pytest.raises(MissingWeightsError, match="python -m essence weights fetch stylegan2"):
        weights.find_weight("generator", explicit_path="stylegan2-ffhq-config-f.pt")
    with pytest.raises(MissingWeightsError, match="other-gan.pt was not found"):
        weights.find_weight("generator", explicit_path="other-gan.pt")


def test_unlisted_filename_is_searched_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _put(tmp_path / "env", "my_finetune.pt")
    monkeypatch.setenv(weights.ENV_WEIGHTS_DIR, str(path.parent))
    assert weights.find_weight("my_finetune.pt") == path
    with pytest.raises(MissingWeightsError, match="other.pt was not found"):
        weights.find_weight("other.pt")


def test_missing_message_lists_places_source_licence_and_command(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.ENV_WEIGHTS_DIR, str(tmp_path / "env"))
    weights.set_folder_provider(lambda folder: [tmp_path / "comfy" / folder])
    with pytest.raises(MissingWeightsError) as info:
        weights.find_weight("encoder")
    text = str(info.value)
    spec = weights.get_spec("encoder")
    for place in (tmp_path / "comfy" / "essence_e4e", Path(os.environ[weights.ENV_REPO_WEIGHTS_DIR]), tmp_path / "env"):
        assert str(place / "e4e_ffhq_encode.pt") in text
    assert spec.urls[0] in text
    assert spec.licence in text
    assert "python -m essence weights fetch e4e-ffhq-encode" in text


def test_a_failing_provider_is_reported() -> None:
    def broken(_folder: str) -> list[str]:
        raise RuntimeError("folder_paths exploded")

    weights.set_folder_provider(broken)
    with pytest.raises(EssenceError, match="folder_paths exploded"):
        weights.find_weight("generator")


def test_default_weights_dir_is_the_checkouts_folder_unless_overridden(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(weights.ENV_REPO_WEIGHTS_DIR)
    assert weights.default_weights_dir() == REPO / "weights"
    monkeypatch.setenv(weights.ENV_WEIGHTS_DIR, os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert weights.default_weights_dir() == tmp_path / "a"  # downloads go to the first folder named


def test_an_installed_package_keeps_weights_in_the_users_data_folder(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """site-packages is no place for gigabytes of weights (and may be read-only)."""
    from essence.storage import installation

    monkeypatch.delenv(weights.ENV_REPO_WEIGHTS_DIR)
    monkeypatch.setattr(weights, "checkout_root", lambda: None)
    monkeypatch.setattr(installation.sys, "platform", "linux")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert weights.default_weights_dir() == tmp_path / "data" / "essence" / "weights"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.default_weights_dir() == tmp_path / "home" / ".local" / "share" / "essence" / "weights"
    assert weights.search_dirs(weights.get_spec("generator"))[-1][1] == weights.default_weights_dir()


# ---------------------------------------------------------------------------------------------
# status


def _spec_for(data: bytes, **changes: object) -> weights.WeightSpec:
    base = dict(filename="w.pt", sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
                known_copies=(), url_checksums={}, compression=None)
    base.update(changes)
    return dataclasses.replace(weights.get_spec("clip-vit-b-32"), **base)


def test_status_present_corrupt_missing(tmp_path: Path) -> None:
    good = b"good weights"
    spec = _spec_for(good)
    path = tmp_path / "w.pt"
    assert weights.weight_status(spec, path) == "missing"
    path.write_bytes(good)
    assert weights.weight_status(spec, path) == "present"
    path.write_bytes(b"bad weights!")  # same size, other bytes
    assert weights.weight_status(spec, path) == "corrupt"
    path.write_bytes(b"truncated")
    assert weights.weight_status(spec, path, hash_files=False) == "corrupt"


def test_status_with_only_a_size_or_nothing_published(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    path.write_bytes(b"12345")
    assert weights.weight_status(_spec_for(b"", sha256=None, size_bytes=5), path) == "present"
    assert weights.weight_status(_spec_for(b"", sha256=None, size_bytes=6), path) == "corrupt"
    assert weights.weight_status(_spec_for(b"", sha256=None, size_bytes=None), path) == "unverified"


def test_status_against_known_copies(tmp_path: Path) -> None:
    """Without a canonical file, a known copy is 'present' and anything else only 'unverified'."""
    copy = b"mirror A bytes"
    spec = _spec_for(b"", sha256=None, size_bytes=None,
                     known_copies=(weights.Checksum(hashlib.sha256(copy).hexdigest(), len(copy)),))
    path = tmp_path / "w.pt"
    path.write_bytes(copy)
    assert weights.weight_status(spec, path) == "present"
    path.write_bytes(b"another serialisation")
    assert weights.weight_status(spec, path) == "unverified"


def test_status_finds_the_file_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec_for(b"abc")
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "w.pt").write_bytes(b"abc")
    monkeypatch.setenv(weights.ENV_WEIGHTS_DIR, str(tmp_path / "env"))
    assert weights.weight_status(spec) == "present"


def test_sha256_is_cached_by_path_size_and_mtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    real = weights._hash_file
    monkeypatch.setattr(weights, "_hash_file", lambda p: calls.append(p) or real(p))
    path = tmp_path / "w.pt"
    path.write_bytes(b"abc")
    spec = _spec_for(b"abc")
    for _ in range(3):
        assert weights.weight_status(spec, path) == "present"
    assert len(calls) == 1
    path.write_bytes(b"abd")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert weights.weight_status(spec, path) == "corrupt"
    assert len(calls) == 2
