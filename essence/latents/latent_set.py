"""Source latents: the W+ codes of the faces a direction is trained on or applied to.

They come from two places: e4e inversions of photos (``essence.invert``) and random samples of the
generator (``sample_latents``). Either way they are worth keeping, so they have a file: a
safetensors file with one tensor, ``latents`` [N, n_latent, style_dim] float32, and string metadata:

    format          "essence.latents"        format_version  "1"
    latent_space    {"n_latent", "style_dim", "resolution"} (JSON)
    generator       {"fingerprint", "name"} of the generator the codes belong to, when known (JSON)
    encoder         {"fingerprint", "name"} for inversions (JSON)
    sources         one entry per row (JSON list): {"kind": "photo", "name", "sha256", "face", ...}
                    or {"kind": "sample", "seed", "row", "truncation"}; a photo whose generator was
                    tuned to it (pivotal tuning) also names its tuned weights: {"tuned": key}
    tuned           {"file", "set_id"} of the companion file holding those weights (JSON), when any
    created, essence_version, count

The tuned weights of a set's rows (float16 differences from the generator, about 56 MB per face at
1024 px; ``essence.networks.tuned``) live in a companion file beside the latent file,
``<name>.tuned.safetensors``, written with it and tied to it by ``set_id``: a latent file without its
companion still loads, and only drawing those faces stops, saying which file is missing. A pair
renamed together by that pattern still opens (the companion is found by either name, and matched by
``set_id``).

Files are written atomically and checked on load (header, dtype, shape, NaN/inf, metadata), so a
damaged or foreign file is refused with a reason. TargetCLIP's own source latents
(``opt_latents.pt``, CUDA tensors [4, 18, 512], or ``w_plus.npy``) can be imported.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..errors import (CorruptFileError, EssenceError, IncompatibleLatentSpaceError, LatentFileError,
                      MissingWeightsError, require_finite)
from ..networks import MissingTuned, TunedFile, TunedWeights, save_tuned
from ..storage import (COMPANION_SUFFIX, atomic_write, cli_command, companion_path, encode_metadata, load_npy_checked,
                       load_torch_file, npy_shape, read_safetensors_header, read_typed_file, save_safetensors_atomic,
                       utc_now)
from ..version import __version__

FORMAT_NAME = "essence.latents"
FORMAT_VERSION = 1
TENSOR_NAME = "latents"

PathLike = str | os.PathLike
_KIND_WORDS = {"photo": "photos", "sample": "random samples", "imported": "imported latents"}


@dataclass
class LatentSet:
    """W+ latents [N, n_latent, style_dim] with one provenance entry per row and file-level metadata.

    ``latents`` is always this set's own float32 CPU copy, made outside inference mode, so a set
    built inside ComfyUI's ``torch.inference_mode`` can still feed training (autograd) later.
    ``sources[i]`` says where row ``i`` came from, with an ``edits`` list once directions were
    applied (``edited``). ``tuned`` maps the keys rows name in ``source["tuned"]`` to the generator
    weights tuned to their photos (pivotal tuning): rendering draws those rows with them, edits keep
    them (an essence is applied to the pivot and drawn by the tuned generator). Treat a set as a
    value: ComfyUI reuses a node's output across prompts.
    """

    latents: torch.Tensor
    sources: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    tuned: Mapping[str, TunedWeights] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.latents = validated_latents(self.latents)
        if not self.sources:
            self.sources = [{"kind": "unknown", "row": i} for i in range(len(self))]
        if len(self.sources) != len(self):
            raise LatentFileError(f"{len(self.sources)} source entries for {len(self)} latents; "
                                  f"give one per row.")
        unknown = sorted({k for k in self.tuned_keys() if k is not None and k not in self.tuned})
        if unknown:
            raise LatentFileError(f"rows name tuned weights that are not given: {', '.join(unknown[:3])}.")

    def __len__(self) -> int:
        return self.latents.shape[0]

    def edited(self, latents: torch.Tensor, edit: dict[str, Any]) -> "LatentSet":
        """A new set of ``latents`` for the same rows, with ``edit`` (e.g. {"direction", "strength",
        "layers"}) appended to every row's ``edits``; this set is left unchanged."""
        sources = [{**source, "edits": [*source.get("edits", []), dict(edit)]} for source in self.sources]
        return LatentSet(latents, sources, dict(self.meta), self.tuned)

    def select(self, rows: Sequence[int]) -> "LatentSet":
        """A new set of just these rows (in this order), with their provenance and this set's metadata."""
        return LatentSet(self.latents[list(rows)], [dict(self.sources[i]) for i in rows], dict(self.meta),
                         self.tuned)

    def tuned_keys(self) -> list[str | None]:
        """Each row's key into ``tuned`` (None: drawn by the plain generator)."""
        return [source.get("tuned") if isinstance(source.get("tuned"), str) else None for source in self.sources]

    def tuned_rows(self) -> list[TunedWeights | None] | None:
        """The tuned weights of every row, for ``render(..., tuned=)``; None when no row has any.
        Reading them is when a missing companion file stops, with its reason."""
        keys = self.tuned_keys()
        if not any(keys):
            return None
        loaded = {key: self.tuned[key] for key in dict.fromkeys(k for k in keys if k)}  # each once
        return [loaded[key] if key else None for key in keys]

    def describe(self) -> str:
        """Where these faces came from, in a few words (a trained direction records it):
        e.g. "2 photos (me.jpg, you.jpg), 2 random samples (seed 1, truncation 0.7)"."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for source in self.sources:
            groups.setdefault(str(source.get("kind", "unknown")), []).append(source)
        parts = []
        for kind, rows in groups.items():
            count = f"{len(rows)} {_KIND_WORDS.get(kind, 'faces')}" if len(rows) != 1 else \
                f"1 {_KIND_WORDS.get(kind, 'faces')[:-1]}"
            if kind == "sample":
                seeds = sorted({str(r.get("seed")) for r in rows})
                truncations = sorted({str(r.get("truncation")) for r in rows})
                parts.append(f"{count} (seed {', '.join(seeds)}, truncation {', '.join(truncations)})")
            elif kind in ("photo", "imported"):
                names = list(dict.fromkeys(str(r.get("name")) for r in rows if r.get("name")))
                shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                parts.append(f"{count} ({shown})" if names else count)
            else:
                parts.append(count)
        return ", ".join(parts) if parts else "no faces"

    @property
    def space(self) -> dict[str, int | None]:
        """{"n_latent", "style_dim", "resolution"} of these latents."""
        _, n, d = self.latents.shape
        space = self.meta.get("latent_space")
        resolution = space.get("resolution") if isinstance(space, dict) else None
        return {"n_latent": n, "style_dim": d, "resolution": resolution or resolution_for(n)}

    @property
    def generator_fingerprint(self) -> str | None:
        gen = self.meta.get("generator")
        return gen.get("fingerprint") if isinstance(gen, dict) else None

    def check_fits(self, generator: Any, what: str = "these latents") -> None:
        """Refuse latents of another W+ shape than ``generator``'s, naming both."""
        mine = (self.latents.shape[1], self.latents.shape[2])
        theirs = (generator.n_latent, generator.style_dim)
        if mine != theirs:
            raise IncompatibleLatentSpaceError(
                f"{what} are {mine[0]} x {mine[1]} W+ codes, but the generator ({generator.size} px) uses "
                f"{theirs[0]} x {theirs[1]}. Invert or sample them with this generator.")

    def save(self, path: PathLike) -> Path:
        """Write the latent file atomically (a failed save leaves no partial file), with the companion
        file of its rows' tuned weights, if any: the companion is put in place just after the
        latent file, and neither when either fails."""
        base = _base_meta()
        if "imported_from" in self.meta:  # when the original was made is unknown: no date is invented
            del base["created"]
        meta = {k: v for k, v in self.meta.items() if k != "tuned"}
        fields = {**base, **meta, "latent_space": self.space, "count": len(self), "sources": self.sources}

        def write_latents() -> Path:
            return save_safetensors_atomic({TENSOR_NAME: self.latents.contiguous()},
                                           encode_metadata(FORMAT_NAME, FORMAT_VERSION, fields), path)

        keys = [key for key in dict.fromkeys(self.tuned_keys()) if key]
        if not keys:
            return write_latents()
        companion = tuned_path(path)
        set_id = uuid.uuid4().hex
        fields["tuned"] = {"file": companion.name, "set_id": set_id}
        # both written beside their targets first: a failure leaves an earlier pair as it was
        with atomic_write(companion) as pending:
            save_tuned(pending, {key: self.tuned[key] for key in keys}, set_id)
            return write_latents()

    @classmethod
    def load(cls, path: PathLike, generator: Any = None) -> "LatentSet":
        """Read an Essence latent file (or import TargetCLIP's ``.pt``/``.npy``); with ``generator``,
        also check the latents fit it."""
        path = Path(path)
        if path.suffix.lower() in (".pt", ".pth", ".npy"):
            latent_set = import_targetclip_latents(path)
        else:
            latent_set = _load_safetensors(path)
        if generator is not None:
            latent_set.check_fits(generator, f"the latents in {path}")
        return latent_set


def _load_safetensors(path: Path) -> LatentSet:
    tensors, meta = read_typed_file(path, FORMAT_NAME, FORMAT_VERSION, TENSOR_NAME, LatentFileError, "latent file",
                                    f"Create one with `{cli_command()} invert` or `sample`.")
    sources = meta.pop("sources", None)
    if sources is not None and not (isinstance(sources, list) and all(isinstance(s, dict) for s in sources)):
        raise LatentFileError(f"{path}: the 'sources' metadata is not a list of entries.")
    tuned = _tuned_for(path, meta, sources or [])
    try:
        latent_set = LatentSet(tensors[TENSOR_NAME], sources or [], meta, tuned)
    except LatentFileError as exc:
        raise LatentFileError(f"{path}: {exc}") from None
    space = meta.get("latent_space")
    shape = tuple(latent_set.latents.shape[1:])
    if isinstance(space, dict) and (space.get("n_latent"), space.get("style_dim")) != shape:
        raise LatentFileError(f"{path}: metadata says {space} but the tensor is {list(latent_set.latents.shape)}.")
    return latent_set


def tuned_path(path: PathLike) -> Path:
    """Where the tuned weights of the latent file ``path`` live: ``<name>.tuned.safetensors`` beside it."""
    return companion_path(path)


def _tuned_for(path: Path, meta: dict[str, Any], sources: list[dict[str, Any]]) -> Mapping[str, TunedWeights]:
    """The companion file of ``path``'s tuned rows, or a stand-in that says why it cannot be used.

    It is looked for under the name the latent file recorded, then under the latent file's own
    name's (``tuned_path``): a pair renamed together (x.safetensors and x.tuned.safetensors to
    y.safetensors and y.tuned.safetensors) still opens. Either way it must carry the ``set_id`` the
    latent file recorded, which is what ties the two. A record naming no plain companion file beside
    it (blank, a path, another kind of file) is damage, refused when the latent file is read."""
    keys = sorted({s["tuned"] for s in sources if isinstance(s.get("tuned"), str)})
    record = meta.get("tuned")
    if record is None and not keys:
        return {}
    name, set_id = _companion_record(path, record)
    if not keys:
        return {}
    own = tuned_path(path)
    candidates = list(dict.fromkeys([path.with_name(name), own]))
    redo = (f"Keep {path.name} and {own.name} together (rename both, keeping the pattern: a.safetensors and "
            f"a.tuned.safetensors become b.safetensors and b.tuned.safetensors), or invert the photos again with "
            f"pivotal tuning.")
    problems = []
    for companion in (candidate for candidate in candidates if candidate.is_file()):
        try:
            tuned = TunedFile(companion)
        except EssenceError as exc:
            problems.append(f"the tuned weights beside it cannot be read ({str(exc).rstrip('.')}).")
            continue
        if tuned.set_id == set_id and set(keys) <= set(tuned):
            return tuned
        problems.append(f"{companion.name} beside it holds the tuned weights of another latent file.")
    if problems:
        return MissingTuned(keys, f"{path}: {problems[0]} {redo}")
    names = " or ".join(candidate.name for candidate in candidates)
    return MissingTuned(keys, f"{path}: its faces were tuned to their photos, and their tuned weights ({names}) "
                              f"are not beside it. {redo}")


def _companion_record(path: Path, record: Any) -> tuple[str, str]:
    """The companion's file name and set id that a latent file records, or a ``LatentFileError``:
    Essence records a plain ``<name>.tuned.safetensors`` beside the file, and a set id."""
    name = record.get("file") if isinstance(record, dict) else None
    set_id = record.get("set_id") if isinstance(record, dict) else None
    problem = ""
    if record is None:
        problem = "its faces name tuned weights, but it does not say which file holds them"
    elif not isinstance(record, dict) or not isinstance(name, str):
        problem = "its record of the tuned weights (metadata 'tuned') is not a file name and a set id"
    elif not name.strip():
        problem = "its record of the tuned weights names a blank file"
    elif name != name.strip() or not name.isprintable() or Path(name).name != name or "\\" in name:
        problem = f"its record of the tuned weights names {name!r}, not a file beside it"
    elif not name.endswith(COMPANION_SUFFIX) or name == COMPANION_SUFFIX:
        problem = f"its record of the tuned weights names {name!r}, not a <name>{COMPANION_SUFFIX} file"
    elif not isinstance(set_id, str) or not set_id:
        problem = "its record of the tuned weights has no set id"
    if problem:
        raise LatentFileError(f"{path}: {problem}; the file is damaged. Invert the photos again with pivotal "
                              f"tuning.")
    return name, set_id


def validated_latents(latents: Any) -> torch.Tensor:
    """W+ latents as a new float32 CPU tensor [N, n_latent, style_dim] created outside inference mode
    (usable with autograd), or a ``LatentFileError`` saying why not."""
    if isinstance(latents, np.ndarray):
        try:
            latents = torch.from_numpy(np.array(latents, dtype=latents.dtype.newbyteorder("=")))
        except (TypeError, ValueError):
            raise LatentFileError(f"latents must hold floating-point numbers, got {latents.dtype}.") from None
    if not isinstance(latents, torch.Tensor):
        raise LatentFileError(f"latents must be a tensor, got {type(latents).__name__}.")
    if not latents.is_floating_point():
        raise LatentFileError(f"latents must hold floating-point numbers, got {latents.dtype}.")
    if latents.ndim != 3 or 0 in latents.shape:
        raise LatentFileError(f"latents must have shape [count, n_latent, style_dim] (e.g. [4, 18, 512]), "
                              f"got {list(latents.shape)}.")
    with torch.inference_mode(False):
        converted = latents.detach().to("cpu", torch.float32).clone()
    if latents.dtype != torch.float32 and torch.isfinite(latents).all() and not torch.isfinite(converted).all():
        raise LatentFileError(f"the latents hold {str(latents.dtype).removeprefix('torch.')} values beyond "
                              f"float32's range (about 3.4e38); Essence computes in float32. Invert or sample "
                              f"those faces again.")
    require_finite(converted, "the latents", LatentFileError, "Invert or sample those faces again.")
    return converted


def resolution_for(n_latent: int) -> int | None:
    """The generator resolution a W+ of ``n_latent`` rows belongs to (18 -> 1024; rosinality's layout)."""
    return 2 ** ((n_latent + 2) // 2) if n_latent >= 2 and n_latent % 2 == 0 else None


# ----------------------------------------------------------------------------- creating latent sets


def save_latents(path: PathLike, latents: torch.Tensor | LatentSet, sources: Sequence[dict[str, Any]] | None = None,
                 *, generator: Any = None, meta: dict[str, Any] | None = None) -> Path:
    """Write latents [N, n_latent, style_dim] (or a ``LatentSet``) to ``path`` (``.safetensors``).

    ``generator`` (a ``StyleGAN2Generator``) records its fingerprint and checks the shape.
    """
    if isinstance(latents, LatentSet):
        latent_set = LatentSet(latents.latents, list(sources or latents.sources), {**latents.meta, **(meta or {})},
                               latents.tuned)
    else:
        latent_set = LatentSet(latents, list(sources or []), dict(meta or {}))
    if generator is not None:
        latent_set.check_fits(generator)
        latent_set.meta["generator"] = generator_info(generator, latent_set.meta.get("generator"))
        latent_set.meta["latent_space"] = {**latent_set.space, "resolution": generator.size}
    return latent_set.save(path)


def holds_latents(shape: Sequence[int]) -> bool:
    """An official ``.npy`` of this shape is a batch of W+ latents (``w_plus.npy``, [68, 18, 512]),
    not a direction ([1, 18, 512] or [18, 512]): TargetCLIP publishes both as ``.npy``."""
    return len(shape) == 3 and shape[0] > 1


def is_latent_file(path: PathLike) -> bool:
    """Whether ``path`` holds latents rather than a direction: an Essence latent file, TargetCLIP's
    ``opt_latents.pt`` (any ``.pt``/``.pth``: TargetCLIP publishes directions only as ``.npy``), or
    an ``.npy`` with several rows (``w_plus.npy``). Reads headers only; an unreadable file is not
    latents (its loader then says what is wrong with it)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth"):
        return True
    try:
        if suffix == ".npy":
            return holds_latents(npy_shape(path, LatentFileError))
        header = read_safetensors_header(path)
    except (LatentFileError, CorruptFileError, MissingWeightsError):
        return False
    return header.get("__metadata__", {}).get("format") == FORMAT_NAME


def load_latents(path: PathLike, generator: Any = None) -> LatentSet:
    """Read a latent file (``.safetensors``; TargetCLIP's ``.pt``/``.npy`` are imported)."""
    return LatentSet.load(path, generator)


def sample_latents(generator: Any, count: int, seed: int = 0, truncation: float = 0.7) -> LatentSet:
    """``count`` random W+ latents: z ~ N(0, I) from ``seed`` -> mapping -> truncation toward the mean.

    Row ``i`` is reproducible: it is row ``i`` of ``generator.sample_wplus(count, seed, truncation)``,
    and its source entry says so. TargetCLIP's random initialisation uses truncation 0.7.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}.")
    with torch.no_grad():
        latents = generator.sample_wplus(count, seed=seed, truncation=truncation)
    sources = [{"kind": "sample", "seed": seed, "row": i, "truncation": truncation,
                "description": f"sample seed={seed} row={i} truncation={truncation}"} for i in range(count)]
    meta = {"generator": generator_info(generator),
            "latent_space": {"n_latent": generator.n_latent, "style_dim": generator.style_dim,
                             "resolution": generator.size}}
    return LatentSet(latents.detach().float().cpu().contiguous(), sources, meta)


def generator_info(generator: Any, known: Any = None) -> dict[str, Any]:
    """{"fingerprint", "size", ...} identifying a generator (keeps a ``name`` already recorded)."""
    info = dict(known) if isinstance(known, dict) else {}
    info.update({"fingerprint": generator.fingerprint(), "size": generator.size})
    return info


def import_targetclip_latents(path: PathLike) -> LatentSet:
    """TargetCLIP's source latents: ``opt_latents.pt`` (a [4, 18, 512] tensor, saved on CUDA; loaded
    safely onto the CPU) or ``w_plus.npy`` ([68, 18, 512], its evaluation set)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        data: Any = load_npy_checked(path, LatentFileError)
    else:
        try:
            data = load_torch_file(path)
        except EssenceError as exc:
            raise LatentFileError(f"not a usable latent file: {exc}") from None
    if isinstance(data, dict):
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
        data = tensors[0] if len(tensors) == 1 else data
    try:
        latents = validated_latents(data)
    except LatentFileError as exc:
        raise LatentFileError(f"{path}: {exc}") from None
    sources = [{"kind": "imported", "name": path.name, "row": i} for i in range(latents.shape[0])]
    meta = {"imported_from": f"TargetCLIP {path.name}",
            "generator": {"name": "stylegan2-ffhq-config-f (as published with TargetCLIP)"}}
    return LatentSet(latents, sources, meta)


def _base_meta() -> dict[str, Any]:
    return {"created": utc_now(), "essence_version": __version__}
