"""Which weight files Essence knows, where it looks for them, and whether a copy is intact.

The manifest (``essence/storage/weights_manifest.json``, shipped inside the package) is the single list of
known checkpoints: name, role, file name, download URLs, checksums and licence. Code never
hard-codes a URL or a path; it asks ``find_weight("generator")`` and either gets a path or a
``MissingWeightsError`` whose message tells the user exactly what to download, from where, under
which licence, and where to put it.

Lookup order (first hit wins):

1. an explicit path given by the caller (it must exist),
2. folders supplied by a registered provider (the ComfyUI adapter registers one that returns the
   model folders ComfyUI knows, including ``extra_model_paths.yaml`` entries; this module never
   imports ComfyUI),
3. ``$ESSENCE_WEIGHTS_DIR`` (one folder, or several separated by ``os.pathsep``),
4. Essence's own weights folder: the checkout's ``weights/`` when Essence runs from a checkout
   (also the ComfyUI pack's folder), else the per-user data folder's ``weights/`` (e.g.
   ``~/.local/share/essence/weights``); ``$ESSENCE_REPO_WEIGHTS_DIR`` replaces it,
5. for the landmarks and AlexNet files only, where other packages put them (``installed_package_dirs``).

Downloads go to the first ``$ESSENCE_WEIGHTS_DIR`` folder when it is set, else to folder 4.
This module is stdlib-only so that listing and locating weights stays cheap and never needs torch.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import CorruptFileError, EssenceError, MissingWeightsError
from .installation import checkout_root, cli_command, package_dir, user_data_dir

ROLES = ("generator", "encoder", "guide", "landmarks", "identity", "perceptual")
STATUSES = ("present", "missing", "corrupt", "unverified")

ENV_WEIGHTS_DIR = "ESSENCE_WEIGHTS_DIR"
ENV_REPO_WEIGHTS_DIR = "ESSENCE_REPO_WEIGHTS_DIR"

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_FINGERPRINT_RE = re.compile(r"^[0-9a-f]{16}$")
_HASH_CHUNK = 1 << 20

FolderProvider = Callable[[str], Sequence["str | os.PathLike[str]"]]


@dataclass(frozen=True)
class Checksum:
    """What one file (or one URL's payload) is known to be; either field may be unknown."""

    sha256: str | None = None
    size_bytes: int | None = None
    where: str = ""


@dataclass(frozen=True)
class WeightSpec:
    """One manifest entry: everything needed to find, fetch, verify and credit a weight file."""

    name: str
    role: str
    filename: str
    urls: tuple[str, ...]
    sha256: str | None
    size_bytes: int | None
    licence: str
    licence_short: str
    layout: str
    required_for: tuple[str, ...]
    comfy_folder: str
    description: str = ""
    compression: str | None = None
    optional: bool = False
    default_for_role: bool = False
    url_checksums: Mapping[str, Checksum] = field(default_factory=dict, hash=False)
    known_copies: tuple[Checksum, ...] = ()
    provenance: str = ""
    generator_fingerprint: str | None = None  # StyleGAN2Generator.fingerprint() of the generator it holds
    generator_latent_space: Mapping[str, int] | None = field(default=None, hash=False)  # its W+ space

    def url_checksum(self, url: str) -> Checksum:
        """What ``url`` is known to serve (for a compressed entry, the archive)."""
        return self.url_checksums.get(url, Checksum())

    def accepted_copies(self) -> tuple[Checksum, ...]:
        """Checksums a file on disk may match to count as intact.

        A published sha256 or size for the entry is strict: only it is accepted. Without one, any
        published copy whose checksum we saw (a mirror's payload or a listed known copy) is accepted.
        """
        if self.sha256 or self.size_bytes:
            return (Checksum(self.sha256, self.size_bytes, "manifest"),)
        copies = list(self.known_copies)
        if not self.compression:  # a compressed entry's URL checksums describe the archive
            copies += [c for c in self.url_checksums.values() if c.sha256]
        return tuple(copies)

    @property
    def is_canonical(self) -> bool:
        """True when the manifest publishes a sha256 or size for the file itself."""
        return bool(self.sha256 or self.size_bytes)

    @property
    def download_size(self) -> int | None:
        """Bytes the first URL with a known size will transfer (for printing before a fetch)."""
        for url in self.urls:
            size = self.url_checksum(url).size_bytes
            if size:
                return size
        return None if self.compression else self.size_bytes


# ---------------------------------------------------------------------------------------------
# Manifest


def manifest_path() -> Path:
    """Where the manifest is read from: the package's own copy (package data when installed)."""
    return Path(__file__).resolve().with_name("weights_manifest.json")


def fetch_command() -> str:
    """The command that downloads weight files, as the user can type it where they are."""
    return f"{cli_command()} weights fetch"


def load_manifest(path: str | os.PathLike[str] | None = None) -> tuple[WeightSpec, ...]:
    """Parse and validate the manifest; cached per path because it never changes while running."""
    return _load_manifest_cached(str(Path(path) if path else manifest_path()))


@functools.lru_cache(maxsize=8)
def _load_manifest_cached(path: str) -> tuple[WeightSpec, ...]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EssenceError(f"{path}: the weights manifest is missing; this copy of Essence is incomplete "
                           f"(reinstall it).") from None
    except (OSError, ValueError) as exc:
        raise CorruptFileError(f"{path}: the weights manifest is not valid JSON ({exc}).") from None
    entries = data.get("weights") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise CorruptFileError(f"{path}: the weights manifest has no 'weights' list.")
    specs = tuple(_spec_from_entry(entry, path) for entry in entries)
    _check_unique(specs, path)
    return specs


def _spec_from_entry(entry: Any, path: str) -> WeightSpec:
    if not isinstance(entry, dict):
        raise CorruptFileError(f"{path}: every manifest entry must be an object, found {entry!r}.")
    try:
        spec = WeightSpec(
            name=str(entry["name"]),
            role=str(entry["role"]),
            filename=str(entry["filename"]),
            urls=tuple(str(u) for u in entry["urls"]),
            sha256=_check_sha(entry["sha256"], path, entry["name"]),
            size_bytes=_check_size(entry["size_bytes"], path, entry["name"]),
            licence=str(entry["licence"]),
            licence_short=str(entry.get("licence_short") or entry["licence"]),
            layout=str(entry["layout"]),
            required_for=tuple(str(f) for f in entry["required_for"]),
            comfy_folder=str(entry["comfy_folder"]),
            description=str(entry.get("description", "")),
            compression=entry.get("compression") or None,
            optional=bool(entry.get("optional", False)),
            default_for_role=bool(entry.get("default_for_role", False)),
            url_checksums={
                url: _checksum(value, path, entry["name"])
                for url, value in (entry.get("url_checksums") or {}).items()
            },
            known_copies=tuple(_checksum(c, path, entry["name"]) for c in entry.get("known_copies") or ()),
            provenance=str(entry.get("provenance", "")),
            generator_fingerprint=_check_fingerprint(entry.get("generator_fingerprint"), path, entry["name"]),
            generator_latent_space=_check_latent_space(entry.get("generator_latent_space"), path, entry["name"]),
        )
    except KeyError as exc:
        raise CorruptFileError(f"{path}: manifest entry {entry.get('name', '?')!r} lacks field {exc}.") from None
    if spec.role not in ROLES:
        raise CorruptFileError(f"{path}: entry {spec.name!r} has role {spec.role!r}; expected one of {ROLES}.")
    if spec.compression not in (None, "bz2"):
        raise CorruptFileError(f"{path}: entry {spec.name!r}: unsupported compression {spec.compression!r}.")
    return spec


def _checksum(value: Any, path: str, name: str) -> Checksum:
    if not isinstance(value, dict):
        raise CorruptFileError(f"{path}: entry {name!r}: a checksum must be an object, found {value!r}.")
    return Checksum(
        sha256=_check_sha(value.get("sha256"), path, name),
        size_bytes=_check_size(value.get("size_bytes"), path, name),
        where=str(value.get("where", "")),
    )


def _check_sha(value: Any, path: str, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise CorruptFileError(f"{path}: entry {name!r}: sha256 must be 64 lowercase hex digits or null.")
    return value


def _check_fingerprint(value: Any, path: str, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _FINGERPRINT_RE.match(value):
        raise CorruptFileError(f"{path}: entry {name!r}: generator_fingerprint must be 16 lowercase hex digits "
                               f"or null.")
    return value


def _check_latent_space(value: Any, path: str, name: str) -> Mapping[str, int] | None:
    if value is None:
        return None
    keys = {"resolution", "n_latent", "style_dim"}
    if not isinstance(value, dict) or set(value) != keys or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value.values()):
        raise CorruptFileError(f"{path}: entry {name!r}: generator_latent_space must be null or an object with "
                               f"positive whole numbers for {', '.join(sorted(keys))}.")
    return MappingProxyType(dict(value))


def _check_size(value: Any, path: str, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise CorruptFileError(f"{path}: entry {name!r}: size_bytes must be a positive integer or null.")
    return value


def _check_unique(specs: Sequence[WeightSpec], path: str) -> None:
    for attr in ("name", "filename"):
        seen: set[str] = set()
        for spec in specs:
            value = getattr(spec, attr)
            if value in seen:
                raise CorruptFileError(f"{path}: two manifest entries share the {attr} {value!r}.")
            seen.add(value)


def get_spec(key: str) -> WeightSpec:
    """The manifest entry for a name, a file name or a role (a role gives its default entry)."""
    spec = _match_spec(key, load_manifest())
    if spec is None:
        known = ", ".join(s.name for s in load_manifest())
        raise MissingWeightsError(f"{key!r} is not a known weight (known: {known}; roles: {', '.join(ROLES)}).")
    return spec


def _match_spec(key: str, specs: Sequence[WeightSpec]) -> WeightSpec | None:
    for spec in specs:
        if key in (spec.name, spec.filename):
            return spec
    by_role = [s for s in specs if s.role == key]
    defaults = [s for s in by_role if s.default_for_role]
    return (defaults or by_role or [None])[0]


def spec_for_generator(fingerprint: str | None, latent_space: Mapping[str, Any] | None = None) -> WeightSpec | None:
    """The manifest entry whose generator this is, if any: the one with this
    ``StyleGAN2Generator.fingerprint()``, else one whose fingerprint is not measured yet and whose
    generator has this W+ ``latent_space`` (``resolution``, ``n_latent``, ``style_dim``).

    What a direction may say about its generator's licence depends on this: a direction trained
    with NVIDIA's FFHQ generator carries its licence note, one trained with another (a test model,
    a generator of other faces) does not. Matching the architecture while the fingerprint is
    unknown errs towards the note: fine-tuned copies of the FFHQ model carry NVIDIA's licence too.
    """
    specs = load_manifest()
    if fingerprint:
        exact = next((s for s in specs if s.generator_fingerprint == fingerprint), None)
        if exact is not None:
            return exact
    if not latent_space:
        return None
    wanted = {key: latent_space.get(key) for key in ("resolution", "n_latent", "style_dim")}
    return next((s for s in specs if s.generator_fingerprint is None and s.generator_latent_space is not None
                 and dict(s.generator_latent_space) == wanted), None)


def demo_specs() -> list[WeightSpec]:
    """The files the demo pipeline needs (generator, encoder, default guide)."""
    return [s for s in load_manifest() if "demo" in s.required_for]


# ---------------------------------------------------------------------------------------------
# Where files live

_folder_provider: FolderProvider | None = None


def set_folder_provider(provider: FolderProvider | None) -> None:
    """Register ``provider(comfy_folder) -> [dirs]``, searched before Essence's own folders.

    The ComfyUI adapter calls this once at import with a function backed by ``folder_paths``;
    ``None`` unregisters it (tests). This is the only hook by which a host application adds folders.
    """
    global _folder_provider
    _folder_provider = provider


def own_weights_dir() -> Path:
    """Essence's own weights folder: the checkout's ``weights/``, or the per-user data folder's
    ``weights/`` when Essence is an installed package (its ``site-packages`` folder is no place for
    gigabytes of user data, and may be read-only).

    ``$ESSENCE_REPO_WEIGHTS_DIR`` replaces it, so tests and read-only checkouts can point elsewhere.
    """
    override = os.environ.get(ENV_REPO_WEIGHTS_DIR)
    if override:
        return Path(override).expanduser()
    root = checkout_root()
    return root / "weights" if root is not None else user_data_dir() / "weights"


def default_weights_dir() -> Path:
    """Where files are fetched to outside ComfyUI: the first ``$ESSENCE_WEIGHTS_DIR`` folder when
    that is set, else Essence's own weights folder (``own_weights_dir``)."""
    env = env_weights_dirs()
    return env[0] if env else own_weights_dir()


def env_weights_dirs() -> list[Path]:
    """The folders named by ``$ESSENCE_WEIGHTS_DIR`` (``os.pathsep``-separated), in order."""
    value = os.environ.get(ENV_WEIGHTS_DIR, "")
    return [Path(p).expanduser() for p in value.split(os.pathsep) if p.strip()]


def provider_dirs(comfy_folder: str) -> list[Path]:
    """Folders the registered provider offers for ``comfy_folder`` (none without a provider)."""
    if _folder_provider is None:
        return []
    try:
        dirs = _folder_provider(comfy_folder) or []
    except Exception as exc:  # name the failing hook instead of a bare traceback from the host
        raise EssenceError(f"the registered weight-folder provider failed for {comfy_folder!r}: {exc}") from exc
    return [Path(d) for d in dirs]


def search_dirs(spec: WeightSpec | None = None) -> list[tuple[str, Path]]:
    """Every (label, folder) searched for ``spec``, in lookup order, duplicates removed."""
    folders = [spec.comfy_folder] if spec else sorted({s.comfy_folder for s in load_manifest()})
    places = [(f"host folder '{f}'", d) for f in folders for d in provider_dirs(f)]
    places += [(f"${ENV_WEIGHTS_DIR}", d) for d in env_weights_dirs()]
    places.append(("Essence weights folder", own_weights_dir()))
    if spec is not None:
        places += installed_package_dirs(spec.role)
    return _dedupe(places)


def installed_package_dirs(role: str) -> list[tuple[str, Path]]:
    """Folders where other installers put a known file, searched last.

    Two roles have any. Landmarks: PyPI's ``face-recognition-models`` and Debian's
    ``libdlib-data`` both ship ``shape_predictor_68_face_landmarks.dat``; the PyPI package is
    located without importing it (its ``__init__`` imports ``pkg_resources``). Perceptual: torch's
    hub cache, where torchvision (and the lpips package) keep ``alexnet-owt-7be5be79.pth``.
    """
    if role == "perceptual":
        return [("torch hub cache", torch_hub_dir() / "checkpoints")]
    if role != "landmarks":
        return []
    places = []
    try:
        found = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        found = None
    if found is not None and found.submodule_search_locations:
        for location in found.submodule_search_locations:
            places.append(("PyPI package face-recognition-models", Path(location) / "models"))
    places.append(("Debian package libdlib-data", Path("/usr/share/dlib")))
    return places


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` without importing torch: ``$TORCH_HOME/hub``, else
    ``$XDG_CACHE_HOME/torch/hub``, else ``~/.cache/torch/hub``."""
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        torch_home = os.path.join(cache, "torch")
    return Path(torch_home).expanduser() / "hub"


def _dedupe(places: Iterable[tuple[str, Path]]) -> list[tuple[str, Path]]:
    seen: set[str] = set()
    unique = []
    for label, folder in places:
        key = os.path.normcase(os.path.abspath(folder))
        if key not in seen:
            seen.add(key)
            unique.append((label, folder))
    return unique


def locate(spec: WeightSpec) -> Path | None:
    """The first existing copy of ``spec``'s file in the lookup folders, or None."""
    for _label, folder in search_dirs(spec):
        candidate = folder / spec.filename
        if candidate.is_file():
            return candidate
    return None


def find_weight(key: str, explicit_path: str | os.PathLike[str] | None = None) -> Path:
    """Resolve a weight by name, role or file name to an existing path, or explain how to get it.

    ``key`` may also be a file name the manifest does not know (a user's own checkpoint picked in
    a ComfyUI dropdown); it is then searched in every folder. ``explicit_path`` wins when given: a
    file is returned as is, a folder is searched for the file, a bare file name that is not in the
    current folder is searched in the lookup folders, and anything else missing is an error naming
    it (silently falling back to another file would load something the user did not ask for).
    """
    specs = load_manifest()
    spec = _match_spec(key, specs)
    if explicit_path is not None:
        return _resolve_explicit(Path(explicit_path).expanduser(), spec, key)
    if spec is None:
        return _find_unlisted(key)
    found = locate(spec)
    if found is None:
        raise MissingWeightsError(missing_message(spec))
    return found


def weight_inputs(files: Mapping[str, str | os.PathLike[str] | None]) -> list[Path]:
    """The weight files a command will read, by role (``{"generator": args.generator, ...}``): the file
    given, else the one the default lookup finds. Its outputs are checked against these, so that no
    output replaces a model it was about to load, however that model was found. A role with no file
    is left out: loading it reports what is missing."""
    found = []
    for role, given in files.items():
        try:
            found.append(find_weight(role, explicit_path=given))
        except MissingWeightsError:
            continue
    return found


def _resolve_explicit(path: Path, spec: WeightSpec | None, key: str) -> Path:
    """A given path wins; a bare file name (no folder part) not in the cwd is looked up like a key."""
    if path.is_file():
        return path
    filename = spec.filename if spec else key
    if path.is_dir() and (path / filename).is_file():
        return path / filename
    if str(path) == path.name and path.suffix:  # e.g. a ComfyUI dropdown value
        return _search_by_filename(path.name, spec)
    what = f"the {spec.role} file {spec.filename}" if spec else repr(key)
    raise MissingWeightsError(f"{path}: no such file (given explicitly for {what}).")


def _find_unlisted(key: str) -> Path:
    if not Path(key).suffix:
        known = ", ".join(s.name for s in load_manifest())
        raise MissingWeightsError(f"{key!r} is not a known weight (known: {known}; roles: {', '.join(ROLES)}).")
    return _search_by_filename(key, None)


def _search_by_filename(filename: str, spec: WeightSpec | None) -> Path:
    """``filename`` in the lookup folders (``spec``'s, or every known folder without one)."""
    places = search_dirs(spec)
    for _label, folder in places:
        if (folder / filename).is_file():
            return folder / filename
    if spec is not None and filename == spec.filename:
        raise MissingWeightsError(missing_message(spec))
    lines = [f"{filename} was not found. Looked in the current folder and:"]
    lines += [f"  - {folder} ({label})" for label, folder in places]
    raise MissingWeightsError("\n".join(lines))


def missing_message(spec: WeightSpec) -> str:
    """The full user-facing text for a missing file: places searched, source, licence, command."""
    lines = [f"{spec.filename} ({spec.role}, '{spec.name}') was not found. Looked in:"]
    lines += [f"  - {folder / spec.filename} ({label})" for label, folder in search_dirs(spec)]
    lines += get_it_lines(spec)
    return "\n".join(lines)


def get_it_lines(spec: WeightSpec) -> list[str]:
    """How to obtain ``spec``: download URL, licence, destination, and the fetch command."""
    lines = []
    if spec.urls:
        note = f" ({spec.compression}-compressed: decompress it)" if spec.compression else ""
        lines.append(f"Download: {spec.urls[0]}{note}")
    lines += [
        f"Licence: {spec.licence}",
        f"Put it in: {default_weights_dir()} (or a folder named by ${ENV_WEIGHTS_DIR}; "
        f"in ComfyUI: models/{spec.comfy_folder}/)",
        f"Or run: {fetch_command()} {spec.name}",
    ]
    return lines


# ---------------------------------------------------------------------------------------------
# Integrity

_sha_cache: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 of a file, cached by (path, size, mtime) so listing many times hashes once."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _sha_cache.get(key)
    if digest is None:
        digest = _hash_file(path)
        _sha_cache[key] = digest
    return digest


def _hash_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_HASH_CHUNK), b""):
            hasher.update(block)
    return hasher.hexdigest()


def clear_sha_cache() -> None:
    """Forget cached digests (tests, or after a file was rewritten within one mtime tick)."""
    _sha_cache.clear()


def weight_status(spec: WeightSpec, path: str | os.PathLike[str] | None = None, *, hash_files: bool = True) -> str:
    """'present', 'missing', 'corrupt' or 'unverified' for ``spec`` (at ``path``, or where found).

    present: the file matches the published sha256 (or, with only a size known, its size);
    corrupt: it contradicts a published size or checksum (truncated, damaged, or another file);
    unverified: it exists but nothing was published to check it against. ``hash_files=False``
    checks sizes only, for a quick listing.
    """
    target = Path(path) if path is not None else locate(spec)
    if target is None or not target.is_file():
        return "missing"
    mismatch = "corrupt" if spec.is_canonical else "unverified"
    copies = spec.accepted_copies()
    if not copies:
        return "unverified"
    size = target.stat().st_size
    candidates = [c for c in copies if c.size_bytes in (None, size)]
    if not candidates:
        return mismatch
    hashed = [c for c in candidates if c.sha256]
    if not hashed:
        return "present"  # only sizes are published, and one matches
    if not hash_files:
        return "present" if any(c.size_bytes == size for c in hashed) else "unverified"
    digest = file_sha256(target)
    return "present" if any(c.sha256 == digest for c in hashed) else mismatch
