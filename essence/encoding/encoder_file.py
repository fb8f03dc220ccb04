"""The trained encoder's file: a safetensors file that says what it was trained for, loaded strictly.

Tensors: the encoder's state (``encoder.*``, its BatchNorm statistics included), e4e's ``latent_avg``
and the ``sources`` the essences were trained on. Metadata (JSON): the generator it was trained against
(``fingerprint``, as direction files record it, and the sha256 of its synthesis weights), the CLIP
model, the sources, the settings, the updates made, the best validation loss and its step, the data
(its kind, counts and pixel hash: a folder's or "generated N"), and when and by which Essence it was
made. An essence is only meaningful for the generator it moves through, so loading refuses another
generator. The file is written atomically when training is complete, never before.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import IncompatibleWeightsError, WeightFileError
from ..latents import LatentSpace
from ..networks import E4EEncoder, EncoderConfig, StyleGAN2Generator, synthesis_fingerprint
from ..storage import (build_loaded, encode_metadata, read_typed_file, save_safetensors_atomic,
                       save_safetensors_numbered, utc_now)
from ..version import __version__

FORMAT_NAME = "essence.encoder"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"


@dataclass
class EssenceEncoder:
    """An encoder trained to give essences (eval mode), the sources it was trained on, and its record."""

    model: E4EEncoder
    sources: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.meta.get("name", "encoder"))

    def check_generator(self, generator: StyleGAN2Generator, source: str = "the encoder") -> None:
        """Refuse a generator other than the one the encoder was trained against."""
        recorded = self.meta.get("generator", {})
        mine = (recorded.get("fingerprint"), recorded.get("synthesis_sha256"))
        theirs = (generator.fingerprint(), synthesis_fingerprint(generator))
        if mine != theirs:
            raise IncompatibleWeightsError(
                f"{source} was trained against another generator (fingerprint {mine[0]}, this one is {theirs[0]}): "
                f"its essences only mean something for that generator. Use that generator, or train an encoder "
                f"for this one.")

    def save(self, path: str | os.PathLike) -> Path:
        """Write the file atomically (a failed or cancelled save leaves the previous file or none)."""
        return save_safetensors_atomic(*self._contents(), path)

    def save_numbered(self, folder: str | os.PathLike, stem: str) -> Path:
        """Write the file as the next free ``<stem>_00001.safetensors`` in ``folder``, never replacing
        a file (``storage.write_numbered``); its path."""
        return save_safetensors_numbered(*self._contents(), folder, stem)

    def _contents(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        tensors = {f"encoder.{k}": v.detach().float().cpu().contiguous() if v.is_floating_point()
                   else v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        tensors["latent_avg"] = self.model.latent_avg.detach().float().cpu().contiguous()
        tensors["sources"] = self.sources.detach().float().cpu().contiguous()
        return tensors, encode_metadata(FORMAT_NAME, FORMAT_VERSION, self.meta)


def encoder_metadata(generator: StyleGAN2Generator, clip_model: str, run: dict[str, Any],
                     **fields: Any) -> dict[str, Any]:
    """The metadata every trained encoder file records (``fields`` adds the run's results)."""
    return {"generator": {**run["generator"], "size": generator.size},
            "latent_space": asdict(LatentSpace.of_generator(generator)), "clip_model": clip_model,
            "created": utc_now(), "essence_version": __version__, **fields}


def load_essence_encoder(path: str | os.PathLike, generator: StyleGAN2Generator | None = None,
                         device: str | torch.device = "cpu") -> EssenceEncoder:
    """Read an encoder file strictly (every tensor of the architecture, nothing else), refusing it when
    ``generator`` is not the one it was trained against. Built outside ``torch.inference_mode`` (which
    ComfyUI runs every node under), as every Essence loader builds its models."""
    with torch.inference_mode(False):
        return _load_essence_encoder(path, generator, device)


def _load_essence_encoder(path: str | os.PathLike, generator: StyleGAN2Generator | None,
                          device: str | torch.device) -> EssenceEncoder:
    tensors, meta = read_typed_file(path, FORMAT_NAME, FORMAT_VERSION, "latent_avg", WeightFileError,
                                    "essence encoder file",
                                    "Train one with `essence train-encoder`; an e4e file goes to --encoder.")
    state = {k[len("encoder."):]: v for k, v in tensors.items() if k.startswith("encoder.")}
    extra = sorted(k for k in tensors if not k.startswith("encoder.") and k not in ("latent_avg", "sources"))
    if extra or "sources" not in tensors:
        raise IncompatibleWeightsError(f"{path}: unexpected tensors {extra} or no 'sources' in an encoder file.")
    config = EncoderConfig.from_state_dict(state, str(path))
    model = build_loaded(E4EEncoder, config, state, str(path), "essence encoder")
    if tuple(tensors["latent_avg"].shape) != (config.n_styles, config.style_dim):
        raise IncompatibleWeightsError(f"{path}: latent_avg has shape {list(tensors['latent_avg'].shape)}, expected "
                                       f"[{config.n_styles}, {config.style_dim}].")
    model.latent_avg = tensors["latent_avg"].float().clone()
    encoder = EssenceEncoder(model.eval().requires_grad_(False).to(device), tensors["sources"], meta)
    if generator is not None:
        encoder.check_generator(generator, str(path))
    return encoder


def trained_encoder(training: Any, generator: StyleGAN2Generator, clip_model: str, data: Any, sources: torch.Tensor,
                    settings: Any, name: str | None = None, start: str | None = None) -> EssenceEncoder:
    """The file's contents for a finished ``train_encoder`` run: the best validated encoder (the last
    one when nothing was held out) with everything its metadata records; the one place they are written."""
    fields: dict[str, Any] = {
        "sources": {"count": int(sources.shape[0]), "sha256": training.run["sources_sha256"]},
        "settings": settings.record(), "updates": len(training.losses),
        "best_validation_loss": training.best_loss, "best_step": training.best_step,
        "kept": "best validation" if training.best_state is not None else "last update",
        "data": data.describe(), "final_losses": dict(zip(("total", "similarity", "consistency", "l2"),
                                                         training.losses[-1])),
        "start_encoder": {"sha256": training.run["start_encoder_sha256"], **({"file": start} if start else {})},
    }
    if name:
        fields["name"] = name
    if "workers" in training.run:  # a run on several workers: each step's batch was workers x batch_size
        fields["workers"] = training.run["workers"]
        fields["effective_batch"] = training.run["workers"] * settings.batch_size
    meta = encoder_metadata(generator, clip_model, training.run, **fields)
    return EssenceEncoder(training.best_encoder(), sources.detach().cpu(), meta)
