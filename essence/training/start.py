"""Where training starts: TargetCLIP's e4e inversion of the target's picture, or its seeded random start.

The optimisation (``loop``) takes a start as a direction [1, n_latent, D] or ``"random"``; this module
makes the start a target asks for (``initial_direction``, with the note its direction records as
``init``), and finds the e4e encoder that needs (``encoder_for_start``). The starts of several
candidates, built around this one, are ``candidates.candidate_starts``.

A warm start from a trained essence encoder (``essence.encoding``, on this layer and independent of
it) is a start already made: the front end computes the target's essence (``encoding.encode_essence``)
and passes it to ``train`` as ``start=(tensor, note)``, the note naming the encoder's file, with
``metadata={"init_option": "encoder"}`` (``essence train --init encoder --encoder-file F`` does). It is
not one of ``INIT_CHOICES``, which are the starts ``train`` makes itself.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import torch
from PIL import Image

from ..errors import EssenceError, FaceNotFoundError, IncompatibleLatentSpaceError, MissingWeightsError
from ..latents import invert
from ..networks import E4EEncoder, StyleGAN2Generator, encoder_from

Start = torch.Tensor | Literal["random"]  # a starting direction [1, n_latent, D], or TargetCLIP's random start
NamedStart = tuple[Start, str]  # a start and the note its direction records as ``init``
StartLike = Start | NamedStart | list[Start | NamedStart] | None  # what ``train`` takes as ``start``
INIT_CHOICES: dict[str, str] = {  # how training may start, and what each choice means
    "auto": "the e4e inversion of the target when it has a face (TargetCLIP's behaviour), else a random latent",
    "inversion": "the e4e inversion of the (first) target picture; an error if it has no face",
    "random": "a random face latent (TargetCLIP's fallback, e.g. for cartoons)",
}
INVERTED_NOTE = "e4e inversion of the target"


def random_initial_direction(generator: StyleGAN2Generator, seed: int, truncation: float = 0.7) -> torch.Tensor:
    """The official fallback initialisation: z -> w -> truncation toward the mean -> W+ [1, n, D]."""
    with torch.no_grad():
        return generator.sample_wplus(1, seed=seed, truncation=truncation).clone()


def initial_direction(choice: str, picture: Image.Image | torch.Tensor | None, generator: StyleGAN2Generator,
                      encoder: Any = None, landmarks: Any = None) -> NamedStart:
    """TargetCLIP's starting direction and a note saying which start was used, for the metadata.

    picture: the target's picture whose face is inverted (``TrainingTarget.shown``: its first picture);
        None for a target known only by its CLIP embedding.
    ``"inversion"``: the e4e W+ latent [1, n_latent, D] of the largest face in ``picture`` (as the
    paper); it raises when that is impossible (no encoder, no face, no landmark model). ``"auto"``:
    the same, falling back to a random start in those cases (as the official code does for
    cartoons). ``"random"``: always the seeded random start.
    """
    if choice not in INIT_CHOICES:
        raise EssenceError(f"unknown initialisation {choice!r}; choose one of {', '.join(INIT_CHOICES)}.")
    if choice == "random":
        return "random", "random"
    if encoder is None:
        if choice == "inversion":
            raise EssenceError("init 'inversion' starts from the e4e inversion of the target, but no e4e "
                               "encoder was given (e4e_ffhq_encode.pt). Give one, or use init 'auto' or 'random'.")
        return "random", "random (no encoder)"
    if picture is None:
        if choice == "inversion":
            raise EssenceError("init 'inversion' inverts the target's picture, but the target was given as a CLIP "
                               "embedding. Give its picture, or use init 'auto' or 'random'.")
        return "random", "random (no target picture)"
    try:
        latent = invert(picture, encoder, landmarks=landmarks).latents[:1]
    except (FaceNotFoundError, MissingWeightsError) as exc:
        if choice == "inversion":
            raise type(exc)(f"init 'inversion' could not invert the target: {exc}\nUse init 'auto' to start "
                            f"from a random latent when the target has no face.") from None
        reason = "no face found in the target" if isinstance(exc, FaceNotFoundError) else "no landmark model"
        return "random", f"random ({reason})"
    if latent.shape[1:] != (generator.n_latent, generator.style_dim):
        raise IncompatibleLatentSpaceError(
            f"the encoder makes {latent.shape[1]} x {latent.shape[2]} W+ latents but the generator uses "
            f"{generator.n_latent} x {generator.style_dim}; use the e4e encoder made for this generator.")
    return latent.to(generator.latent_avg.device), INVERTED_NOTE


def named_start(start: Start | NamedStart) -> NamedStart:
    """A start with the note its direction records: its own, else "random" or "given"."""
    if isinstance(start, tuple):
        return start
    return start, ("random" if isinstance(start, str) else "given")


def encoder_for_start(init: str, encoder: E4EEncoder | str | os.PathLike | None = None,
                      device: str | torch.device = "auto") -> E4EEncoder | None:
    """The e4e encoder a start needs (loaded from ``encoder``, or looked up): none for ``"random"``,
    and none for ``"auto"`` when no encoder file is installed (training then starts randomly, as
    TargetCLIP does for a target without a face); ``"inversion"`` raises ``MissingWeightsError``."""
    if init == "random":
        return None
    try:
        return encoder_from(encoder, device)
    except MissingWeightsError:
        if init == "inversion":
            raise
        return None
