"""Essence: TargetCLIP essence transfer in plain PyTorch.

The public API loads the networks from the files users already have, trains an essence and applies it::

    import essence
    G = essence.load_generator("stylegan2-ffhq-config-f.pt")   # or the e4e file (its decoder)
    E = essence.load_encoder("e4e_ffhq_encode.pt")
    clip = essence.load_guide("ViT-B-32.pt")
    faces = essence.invert(["me.jpg", "friend.jpg"], E)          # aligned, encoded: a LatentSet [N, 18, 512]
    job = essence.EssenceJob(essence.TrainSettings(steps=1000), init="auto")  # TargetCLIP's defaults
    trained = essence.train("joker.jpg", faces, G, clip, job, encoder=E)      # starts from the target's inversion
    trained.direction.save("joker.safetensors")                               # with its metadata and thumbnail
    edited = essence.apply_direction(faces.latents, trained.direction, strength=1.0)
    images = essence.render(G, edited)                            # [N, 3, 1024, 1024] in about [-1, 1]

Paths may be omitted: the file is then looked up as described in ``essence.storage.weights``.
Everything else is public in the sub-packages, which are the architecture (lowest first):
``storage`` (files, weights, downloads), ``networks`` (StyleGAN2, e4e, CLIP, ArcFace), ``faces``
(images, alignment, paste, tracking), ``latents`` (latents, directions, inversion, applying),
``training`` (the optimisation, candidates, metrics), ``video``, ``scale`` (Ray batch jobs) and ``cli``.
Errors are in ``essence.errors``. This package never imports ComfyUI.
"""

from __future__ import annotations

from . import errors, faces, latents, networks, runtime, scale, storage, training, video
from .errors import EssenceError
from .latents import (Direction, LatentSet, apply_direction, apply_to_photo, invert, load_direction, load_latents,
                      sample_latents)
from .networks import load_encoder, load_generator, load_guide, load_identity, render
from .runtime import clear_model_cache
from .training import EssenceJob, TrainSettings, evaluate_direction, train
from .version import __version__
from .video import apply_to_video

__all__ = [
    "load_generator", "load_encoder", "load_guide", "load_identity", "clear_model_cache",
    "invert", "sample_latents", "load_latents", "LatentSet",
    "train", "EssenceJob", "TrainSettings", "Direction", "load_direction",
    "apply_direction", "apply_to_photo", "apply_to_video", "render", "evaluate_direction",
    "EssenceError",
]
