"""A generator tuned to one photo or clip, kept as its difference from the generator it came from.

Pivotal tuning changes every synthesis weight of the generator (about 28 M of the 30 M parameters
at 1024 px; the mapping network is never used, so never changed). A full copy per photo would be
120 MB of float32; the difference, in float16, is half that and loses nothing that shows: Adam
moves a weight by about the learning rate per step, so a difference is at most a few tenths, where
float16 keeps about 1e-4 (tests/test_tuning.py measures the rendering it changes). The tuned
generator is never built as a second module: rendering passes ``base + difference`` as the
weights of the base generator for that call (``torch.func.functional_call``), so the base stays as
loaded and shared.

A ``TunedWeights`` knows the generator it belongs to by fingerprint and refuses any other, and a
file's differences are refused when they are far larger than tuning makes (``MAX_TUNED_DELTA``).
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from ..errors import CorruptFileError, EssenceError, IncompatibleWeightsError, MissingWeightsError, require_finite
from ..storage import encode_metadata, read_safetensors_header, save_safetensors_atomic, utc_now
from ..version import __version__
from .stylegan2 import StyleGAN2Generator

DELTA_DTYPE = torch.float16
# The largest |tuned - base| a file may hold; beyond it a file is damaged or forged, not tuned.
# Measured (bench/tuning_deltas.py; docs/metrics.md, "Tuned weights"): PTI's 350 steps at 3e-4
# moved no weight by more than 0.128 (photo) / 0.142 (noise), STIT's 200 updates at 3e-5 by 0.0063;
# Adam moves a weight by about its learning rate per update (at most 3.2 times it), so STIT's
# defaults (50 passes over up to 300 frames) stay below 0.45. Random differences of 5 draw a white
# picture, with no error. 1.0: 7 times the measured maximum, twice STIT's worst case, 5 times below white.
MAX_TUNED_DELTA = 1.0
MEASURED_DELTA = 0.15  # the most PTI's 350 steps moved a weight, rounded up (measured above)


def synthesis_parameters(generator: StyleGAN2Generator) -> dict[str, torch.nn.Parameter]:
    """The parameters that draw an image from W+: every one but the mapping network's (``style.*``)."""
    return {name: param for name, param in generator.named_parameters() if not name.startswith("style.")}


SAMPLES_PER_PARAMETER = 257  # values hashed per synthesis parameter, evenly spaced, with its sum
_HASH_ATTRIBUTE = "_essence_synthesis_hash"


def synthesis_fingerprint(generator: StyleGAN2Generator) -> str:
    """The sha256 of every synthesis weight (names, shapes and float32 values), which tuned weights
    are added to. ``generator.fingerprint()`` covers only the mapping network and the constant
    input, which a fine-tuned generator (another domain, or another tuning) may share with the one
    the differences were taken from; a hash of samples would accept a generator that differs only
    in weights it skips.

    Hashing 28 M weights takes a fraction of a second (docs/metrics.md, "Tuned weights"), so the
    digest is kept on the generator and reused while its parameters are unchanged: the same
    tensors (their storage objects, offsets, shapes and dtypes) at the same version counters. Any
    in-place change through a parameter (an optimiser step, ``copy_``, ``load_state_dict``) and any
    move (``.to``, ``.half``) computes it again; changes made behind autograd's back
    (``param.data.mul_()``, a numpy view) are not seen, so make them through the parameter, or
    ``del generator._essence_synthesis_hash``. Parameters made under ``torch.inference_mode`` keep
    no version counter: those are hashed every time."""
    state = _parameter_state(generator)
    cached = generator.__dict__.get(_HASH_ATTRIBUTE)
    if state is not None and isinstance(cached, _SynthesisHash) and cached.matches(state):
        return cached.digest
    digest = hashlib.sha256()
    for name, param in sorted(synthesis_parameters(generator).items()):
        digest.update(f"{name}{list(param.shape)}".encode())
        digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().data)
    if state is not None:
        setattr(generator, _HASH_ATTRIBUTE, _SynthesisHash(state, digest.hexdigest()))
    return digest.hexdigest()


def _parameter_state(generator: StyleGAN2Generator) -> list[tuple] | None:
    """What identifies the synthesis parameters' current values without reading them, or None
    when a parameter keeps no version counter."""
    state = []
    for name, param in sorted(synthesis_parameters(generator).items()):
        if param.is_inference():
            return None
        state.append((name, param.untyped_storage(), param.storage_offset(), tuple(param.shape), param.stride(),
                      param.dtype, param._version))
    return state


class _SynthesisHash:
    """A generator's full synthesis hash and the parameter state it was taken from. Storages are
    held by weak reference (a moved generator's old weights are freed as before) and compared by
    identity, so a new storage at a freed one's address is never taken for it. A copy or a pickle
    of the generator starts without one."""

    def __init__(self, state: list[tuple], digest: str):
        self.digest = digest
        self._storages = [weakref.ref(entry[1]) for entry in state]
        self._rest = [entry[:1] + entry[2:] for entry in state]

    def matches(self, state: list[tuple]) -> bool:
        return len(state) == len(self._storages) and all(
            ref() is entry[1] for ref, entry in zip(self._storages, state)) and \
            self._rest == [entry[:1] + entry[2:] for entry in state]

    def __reduce__(self) -> tuple:
        return _SynthesisHash, ([], "")


def sampled_synthesis_fingerprint(generator: StyleGAN2Generator) -> str:
    """The fingerprint files written before the full hash carry (``synthesis``): each synthesis
    parameter's shape, its sum and 257 evenly spaced values. Still written beside the full hash, so
    an older Essence reads new files; checked only for a file that has nothing better."""
    digest = hashlib.sha256()
    for name, param in sorted(synthesis_parameters(generator).items()):
        flat = param.detach().reshape(-1)
        step = max(1, flat.numel() // SAMPLES_PER_PARAMETER)
        picked = torch.cat([flat[::step], flat.double().sum().reshape(1).to(flat.dtype)])
        digest.update(f"{name}{list(param.shape)}".encode())
        digest.update(picked.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class TunedWeights:
    """``deltas[name]`` = tuned - base for each synthesis parameter (float16, CPU); ``base`` the
    fingerprint of the generator they apply to; ``info`` what was tuned, how, and how well
    (JSON-able: settings, steps, losses, the rows' sources). ``synthesis_sha256`` is the full hash
    of the base's synthesis weights (``synthesis_fingerprint``); ``synthesis`` the sampled one
    (``sampled_synthesis_fingerprint``), all that files written before the full hash carry."""

    deltas: dict[str, torch.Tensor]
    base: str
    info: dict[str, Any] = field(default_factory=dict)
    synthesis: str = ""
    synthesis_sha256: str = ""

    @classmethod
    def between(cls, generator: StyleGAN2Generator, tuned: Mapping[str, torch.Tensor],
                info: dict[str, Any] | None = None) -> "TunedWeights":
        """The difference between ``tuned`` parameter values and ``generator``'s own."""
        own = synthesis_parameters(generator)
        deltas = {name: (tuned[name].detach().float() - own[name].detach().float()).to("cpu", DELTA_DTYPE)
                  for name in own}
        return cls(deltas, generator.fingerprint(), dict(info or {}), sampled_synthesis_fingerprint(generator),
                   synthesis_fingerprint(generator))

    @property
    def nbytes(self) -> int:
        return sum(delta.numel() * delta.element_size() for delta in self.deltas.values())

    def largest(self) -> float:
        """The largest |difference| of any weight (NaN when one is NaN)."""
        values = [delta.abs().max().float() for delta in self.deltas.values() if delta.numel()]
        return float(torch.stack(values).max()) if values else 0.0

    def check_sensible(self, what: str, error: type[EssenceError] = CorruptFileError,
                       fix: str = "The file is damaged: tune the photos again.") -> None:
        """Refuse differences tuning cannot have made: NaN, infinite, or beyond ``MAX_TUNED_DELTA``
        (finite ones far beyond it draw a white or garbled picture with no error)."""
        for name, delta in self.deltas.items():
            require_finite(delta, f"the tuned weight {name} of {what}", error, fix)
        largest = self.largest()
        if largest > MAX_TUNED_DELTA:
            raise error(f"{what}: a weight differs from its generator's by {largest:g}, far beyond what tuning makes "
                        f"(PTI's 350 steps move one by at most about {MEASURED_DELTA:g}; the limit is "
                        f"{MAX_TUNED_DELTA:g}). {fix}")

    def check_fits(self, generator: StyleGAN2Generator) -> None:
        """Refuse a generator other than the one these weights were tuned from: by the full hash of its
        synthesis weights, or for files written before it, by the sampled fingerprint."""
        fingerprint = generator.fingerprint()
        if self.synthesis_sha256:
            theirs, ours = self.synthesis_sha256, synthesis_fingerprint(generator)
        else:
            theirs, ours = self.synthesis or "none", sampled_synthesis_fingerprint(generator)
        if fingerprint != self.base or ours != theirs:
            raise IncompatibleWeightsError(
                f"these tuned weights belong to another generator (fingerprint {self.base}, synthesis "
                f"{theirs[:16]}) than this one ({fingerprint}, {ours[:16]}). Use the generator the photos were tuned "
                f"with, or tune them again.")
        own = synthesis_parameters(generator)
        wrong = [name for name in own if name not in self.deltas or self.deltas[name].shape != own[name].shape]
        if wrong or len(self.deltas) != len(own):
            raise IncompatibleWeightsError(f"the tuned weights do not fit this generator ({len(wrong)} parameters "
                                           f"missing or of another shape, e.g. {', '.join(wrong[:3])}).")

    def parameters_for(self, generator: StyleGAN2Generator) -> dict[str, torch.Tensor]:
        """base + difference for every synthesis parameter, on the generator's device and dtype."""
        self.check_fits(generator)
        return {name: param.detach() + self.deltas[name].to(param.device, param.dtype)
                for name, param in synthesis_parameters(generator).items()}


def synthesize_with(generator: StyleGAN2Generator, parameters: Mapping[str, torch.Tensor] | None,
                    latent: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``generator.synthesize(latent, **kwargs)`` with ``parameters`` in place of its own (the
    others, buffers included, stay the generator's); gradients flow to ``parameters``."""
    if parameters is None:
        return generator.synthesize(latent, **kwargs)
    return torch.func.functional_call(generator, dict(parameters), (latent,), kwargs, strict=False)


# ----------------------------------------------------------------------------- the file

TUNED_FORMAT = "essence.tuned"
TUNED_VERSION = 1


def save_tuned(path: str | os.PathLike, tunings: Mapping[str, TunedWeights], set_id: str) -> Path:
    """Write ``tunings`` (key -> tuned weights) atomically: one float16 tensor ``<key>/<parameter>``
    per tuned parameter, and for each key its generator's fingerprint and what was tuned.
    ``set_id`` ties the file to the latent file that refers to it. Weights that could not be read
    back (``TunedWeights.check_sensible``) are refused before anything is written."""
    for key, weights in tunings.items():
        weights.check_sensible(f"the tuned weights of {key}", EssenceError,
                               "Nothing was saved: tune with a lower learning rate.")
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, weights in tunings.items():
        for name, delta in weights.deltas.items():  # safetensors refuses tensors that share memory
            shared = delta.untyped_storage().data_ptr() in seen
            seen.add(delta.untyped_storage().data_ptr())
            tensors[f"{key}/{name}"] = delta.clone() if shared else delta
    entries = {key: {"base": weights.base, "synthesis": weights.synthesis,
                     "synthesis_sha256": weights.synthesis_sha256, "info": weights.info}
               for key, weights in tunings.items()}
    fields = {"set_id": set_id, "entries": entries, "created": utc_now(), "essence_version": __version__}
    return save_safetensors_atomic(tensors, encode_metadata(TUNED_FORMAT, TUNED_VERSION, fields), path)


class TunedFile(Mapping[str, TunedWeights]):
    """The tuned weights in a file, read one key at a time: a batch of photos tuned at 1024 px holds
    about 56 MB per face, and rendering needs one face's weights at a time.

    The header is checked when the file is opened (format, version, every entry's tensors present
    as float16 and inside the file). Reading an entry checks the header again, as it is now (the
    file may have been replaced since it was opened, and safetensors reads it anew), and then the
    entry's values (finite, within ``MAX_TUNED_DELTA``): every read goes through both checks."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._header = read_safetensors_header(self.path)
        meta = self._header.get("__metadata__", {})
        if meta.get("format") != TUNED_FORMAT:
            raise CorruptFileError(f"{self.path}: not a file of tuned weights (format {meta.get('format')!r}).")
        version = meta.get("format_version", "?")
        if not (version.isascii() and version.isdigit()) or int(version) > TUNED_VERSION:
            raise CorruptFileError(f"{self.path}: tuned-weights format version {version} is newer than this Essence "
                                   f"understands ({TUNED_VERSION}); update Essence.")
        self._entries = self._read_entries(meta.get("entries", ""))
        self.set_id = meta.get("set_id", "")
        self._names: dict[str, list[str]] = {key: [] for key in self._entries}
        for tensor, info in self._header.items():
            key, _, name = tensor.partition("/")
            if tensor == "__metadata__":
                continue
            if key not in self._names or info.get("dtype") != "F16":
                raise CorruptFileError(f"{self.path}: unexpected tensor {tensor!r} ({info.get('dtype')}).")
            self._names[key].append(name)
        empty = [key for key, names in self._names.items() if not names]
        if empty:
            raise CorruptFileError(f"{self.path}: no weights for {', '.join(empty[:3])}; the file is damaged.")

    def _read_entries(self, text: str) -> dict[str, dict[str, Any]]:
        try:
            entries = json.loads(text)
        except (ValueError, RecursionError):
            entries = None
        fields = ("synthesis", "synthesis_sha256")
        if not isinstance(entries, dict) or not all(
                isinstance(e, dict) and isinstance(e.get("base"), str) and isinstance(e.get("info", {}), dict)
                and all(isinstance(e.get(f, ""), str) for f in fields) for e in entries.values()):
            raise CorruptFileError(f"{self.path}: the file's list of tuned faces is damaged.")
        return entries

    @staticmethod
    def holds(path: str | os.PathLike) -> bool:
        """Whether ``path`` is a safetensors file that says it holds tuned weights (its header only;
        a damaged file is not one: opening it says what is wrong)."""
        try:
            header = read_safetensors_header(path)
        except EssenceError:
            return False
        return header.get("__metadata__", {}).get("format") == TUNED_FORMAT

    def __getitem__(self, key: str) -> TunedWeights:
        if key not in self._entries:
            raise KeyError(key)
        if read_safetensors_header(self.path) != self._header:
            raise CorruptFileError(f"{self.path}: the file changed after it was opened (another tuning saved over "
                                   f"it?); load the latent file again.")
        deltas = self._read_tensors(key)
        entry = self._entries[key]
        weights = TunedWeights(deltas, entry["base"], dict(entry.get("info") or {}), entry.get("synthesis", ""),
                               entry.get("synthesis_sha256", ""))
        weights.check_sensible(f"the tuned weights of {key} in {self.path}")
        return weights

    def _read_tensors(self, key: str) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), framework="pt", device="cpu") as handle:
                return {name: handle.get_tensor(f"{key}/{name}") for name in self._names[key]}
        except (SafetensorError, OSError, RuntimeError, TypeError, ValueError, OverflowError) as exc:
            raise CorruptFileError(f"{self.path}: the tuned weights of {key} cannot be read ({exc}).") from None

    def summary(self) -> dict[str, Any]:
        """What ``essence info`` shows of the file, from its header alone: the faces, the size, the
        generators they belong to and how they were tuned."""
        entries = self._entries.values()
        infos = [entry.get("info") or {} for entry in entries]
        steps = [info["steps"] for info in infos if type(info.get("steps")) is int]
        recipes = {json.dumps({"method": info.get("method"), "settings": info.get("settings")}, sort_keys=True)
                   for info in infos}
        meta = self._header.get("__metadata__", {})
        return {"faces": len(self), "size_mb": round(self.path.stat().st_size / 1e6, 1),
                "generator": sorted({entry["base"] for entry in entries}),
                "synthesis": sorted({(entry.get("synthesis_sha256") or "")[:16] or entry.get("synthesis") or "?"
                                     for entry in entries}),
                "tuning": [json.loads(recipe) for recipe in sorted(recipes)],
                "steps": [min(steps), max(steps)] if steps else None,
                "set_id": self.set_id, "created": meta.get("created"), "essence_version": meta.get("essence_version")}

    def __contains__(self, key: object) -> bool:  # without reading the weights
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


class MissingTuned(Mapping[str, TunedWeights]):
    """Stands for the tuned weights of a latent file whose companion file is missing or not its own:
    only rendering those faces needs them, and that then stops with ``reason``."""

    def __init__(self, keys: list[str], reason: str):
        self._keys, self.reason = keys, reason

    def __getitem__(self, key: str) -> TunedWeights:
        raise MissingWeightsError(self.reason)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)
