"""A generator tuned to one photo or clip, kept as its difference from the generator it came from.

Pivotal tuning changes every synthesis weight of the generator (about 28 M of the 30 M parameters
at 1024 px; the mapping network is never used, so never changed). A full copy per photo would be
120 MB of float32; the difference, in float16, is half that and loses nothing that shows: Adam
moves a weight by about the learning rate per step, so a difference is at most a few tenths, where
float16 keeps about 1e-4 (tests/test_tuning.py measures the rendering it changes). The tuned
generator is never built as a second module: rendering passes ``base + difference`` as the
weights of the base generator for that call (``torch.func.functional_call``), so the base stays as
loaded and shared.

A ``TunedWeights`` knows the generator it belongs to by fingerprint and refuses any other.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from ..errors import CorruptFileError, IncompatibleWeightsError, MissingWeightsError, require_finite
from ..storage import encode_metadata, read_safetensors_header, save_safetensors_atomic, utc_now
from ..version import __version__
from .stylegan2 import StyleGAN2Generator

DELTA_DTYPE = torch.float16


def synthesis_parameters(generator: StyleGAN2Generator) -> dict[str, torch.nn.Parameter]:
    """The parameters that draw an image from W+: every one but the mapping network's (``style.*``)."""
    return {name: param for name, param in generator.named_parameters() if not name.startswith("style.")}


SAMPLES_PER_PARAMETER = 257  # values hashed per synthesis parameter, evenly spaced, with its sum


def synthesis_fingerprint(generator: StyleGAN2Generator) -> str:
    """A short hash of the synthesis weights tuned weights are added to. ``generator.fingerprint()``
    covers only the mapping network and the constant input, which a fine-tuned generator (another
    domain, or another tuning) may share with the one the differences were taken from. Hashing every
    value of 28 M weights each time a face is drawn would cost more than drawing it, so each
    parameter gives its shape, its sum and 257 evenly spaced values."""
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
    (JSON-able: settings, steps, losses, the rows' sources)."""

    deltas: dict[str, torch.Tensor]
    base: str
    info: dict[str, Any] = field(default_factory=dict)
    synthesis: str = ""  # ``synthesis_fingerprint`` of the base generator

    @classmethod
    def between(cls, generator: StyleGAN2Generator, tuned: Mapping[str, torch.Tensor],
                info: dict[str, Any] | None = None) -> "TunedWeights":
        """The difference between ``tuned`` parameter values and ``generator``'s own."""
        own = synthesis_parameters(generator)
        deltas = {name: (tuned[name].detach().float() - own[name].detach().float()).to("cpu", DELTA_DTYPE)
                  for name in own}
        return cls(deltas, generator.fingerprint(), dict(info or {}), synthesis_fingerprint(generator))

    @property
    def nbytes(self) -> int:
        return sum(delta.numel() * delta.element_size() for delta in self.deltas.values())

    def check_fits(self, generator: StyleGAN2Generator) -> None:
        """Refuse a generator other than the one these weights were tuned from."""
        fingerprint = generator.fingerprint()
        if fingerprint != self.base or synthesis_fingerprint(generator) != self.synthesis:
            raise IncompatibleWeightsError(
                f"these tuned weights belong to another generator (fingerprint {self.base}, synthesis "
                f"{self.synthesis}) than this one ({fingerprint}, {synthesis_fingerprint(generator)}). Use the "
                f"generator the photos were tuned with, or tune them again.")
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
    ``set_id`` ties the file to the latent file that refers to it."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, weights in tunings.items():
        for name, delta in weights.deltas.items():  # safetensors refuses tensors that share memory
            shared = delta.untyped_storage().data_ptr() in seen
            seen.add(delta.untyped_storage().data_ptr())
            tensors[f"{key}/{name}"] = delta.clone() if shared else delta
    entries = {key: {"base": weights.base, "synthesis": weights.synthesis, "info": weights.info}
               for key, weights in tunings.items()}
    fields = {"set_id": set_id, "entries": entries, "created": utc_now(), "essence_version": __version__}
    return save_safetensors_atomic(tensors, encode_metadata(TUNED_FORMAT, TUNED_VERSION, fields), path)


class TunedFile(Mapping[str, TunedWeights]):
    """The tuned weights in a file, read one key at a time: a batch of photos tuned at 1024 px holds
    about 56 MB per face, and rendering needs one face's weights at a time.

    The header is checked when the file is opened (format, version, every entry's tensors present
    as float16 and inside the file); each entry's values are checked when it is read."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        header = read_safetensors_header(self.path)
        meta = header.get("__metadata__", {})
        if meta.get("format") != TUNED_FORMAT:
            raise CorruptFileError(f"{self.path}: not a file of tuned weights (format {meta.get('format')!r}).")
        version = meta.get("format_version", "?")
        if not (version.isascii() and version.isdigit()) or int(version) > TUNED_VERSION:
            raise CorruptFileError(f"{self.path}: tuned-weights format version {version} is newer than this Essence "
                                   f"understands ({TUNED_VERSION}); update Essence.")
        try:
            entries = json.loads(meta.get("entries", ""))
        except (ValueError, RecursionError):
            entries = None
        if not isinstance(entries, dict) or not all(isinstance(e, dict) and isinstance(e.get("base"), str)
                                                    for e in entries.values()):
            raise CorruptFileError(f"{self.path}: the file's list of tuned faces is damaged.")
        self.set_id = meta.get("set_id", "")
        self._entries = entries
        self._names: dict[str, list[str]] = {key: [] for key in entries}
        for tensor, info in header.items():
            key, _, name = tensor.partition("/")
            if tensor == "__metadata__":
                continue
            if key not in self._names or info.get("dtype") != "F16":
                raise CorruptFileError(f"{self.path}: unexpected tensor {tensor!r} ({info.get('dtype')}).")
            self._names[key].append(name)
        empty = [key for key, names in self._names.items() if not names]
        if empty:
            raise CorruptFileError(f"{self.path}: no weights for {', '.join(empty[:3])}; the file is damaged.")

    def __getitem__(self, key: str) -> TunedWeights:
        from safetensors import safe_open

        if key not in self._entries:
            raise KeyError(key)
        with safe_open(str(self.path), framework="pt", device="cpu") as handle:
            deltas = {name: handle.get_tensor(f"{key}/{name}") for name in self._names[key]}
        for name, delta in deltas.items():
            require_finite(delta, f"the tuned weight {name} of {key} in {self.path}", CorruptFileError)
        entry = self._entries[key]
        return TunedWeights(deltas, entry["base"], dict(entry.get("info") or {}), str(entry.get("synthesis", "")))

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
