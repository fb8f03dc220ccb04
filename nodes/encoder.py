"""The encoder variant's nodes: load a trained essence encoder, encode a target with it, train one.

TargetCLIP's encoder variant fine-tunes e4e so that its raw output is the essence of its input
picture (``essence.encoding``): once trained, a target's essence takes one pass instead of an
optimisation. Encoders travel between nodes as ``essence.encoding.EssenceEncoder`` (socket type
``ESSENCE_TRAINED_ENCODER``, not the plain e4e's ``ESSENCE_ENCODER``) and live as files in
``models/essence_encoders``; no trained encoder is published, so users train their own (Train
Essence Encoder, or ``essence train-encoder``).

Train Essence Encoder runs ``essence.encoding.train_encoder`` with ComfyUI's progress bar (a preview
of the held-out pictures' essences, each applied to a source face, at every validation) and Cancel
(checked before every step and on every progress report). Every ``checkpoint_every`` steps it keeps a
checkpoint in ComfyUI's ``output/essence_encoder_checkpoints/<prefix>-<run>/``, ``<run>`` naming the
run (``essence.encoding.run_id``: the settings, pictures, sources and models): the same run queued
again after Cancel, or after ComfyUI was closed, goes on from there, and any other starts afresh.
When training is complete it writes ``<prefix>_00001.safetensors`` (counting up, never overwriting)
into ``models/essence_encoders``, where Load Essence Encoder finds it, and removes the checkpoints.
"""

from __future__ import annotations

import shutil
from typing import Any

import torch
import torch.nn.functional as F

from .. import essence
from ..essence.encoding import (EncoderData, EncoderProgress, EncoderSettings, EssenceEncoder, as_inputs, batch_data,
                                encode_essence, essences_of, generated_data, load_essence_encoder, run_id, run_record,
                                train_encoder, trained_encoder)
from ..essence.errors import EssenceError
from ..essence.faces import grid_to_pil
from ..essence.latents import image_grid
from ..essence.networks import render
from ..essence.storage import checked_stem
from . import host
from . import types as T
from .convert import grid_to_comfy_image
from .inputs import boolean, choice, integer, link, number, seed, text

DEFAULTS = EncoderSettings()  # TargetCLIP's README command: the inputs' defaults
DATA_CHOICES = {"generated": "faces drawn by the generator (generated_count of them, and heldout more), so no "
                             "pictures are needed",
                "photos": "the images input: each photo's face is aligned as Encode Essence aligns it",
                "pictures": "the images input used as it is (face crops aligned already), resized to 256 px"}
PREVIEW_FACES = 4         # held-out essences shown in the preview, each on a source face
PREVIEW_RESOLUTION = 256  # previews of big generators stop early at this size (cheap)
# what training holds besides the generator and CLIP: the encoder's copy, its gradients, and Ranger's
# two moments and slow weights (activations, small at batch 1, are not counted)
ENCODER_COPIES = 5
CHECKPOINTS_FOLDER = "essence_encoder_checkpoints"  # in ComfyUI's output folder


class EssenceTrainedEncoderLoader:
    """Load an essence encoder file."""

    DESCRIPTION = ("Loads an essence encoder from models/essence_encoders: an e4e fine-tuned (TargetCLIP's encoder "
                   "variant) so that it gives a target's essence in one pass. Train one with Train Essence Encoder "
                   "or `essence train-encoder`; no trained encoder is published. Encode Essence uses it.")
    CATEGORY = "essence/loaders"
    FUNCTION = "load"
    RETURN_TYPES = (T.TRAINED_ENCODER,)
    RETURN_NAMES = ("essence_encoder",)
    OUTPUT_TOOLTIPS = ("The trained essence encoder (it only works with the generator it was trained against).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        options = host.filename_list(host.ENCODERS_FOLDER) or ["essence_encoder_00001.safetensors"]
        return {"required": {"encoder_file": choice(
            options, "Essence encoder file in models/essence_encoders (.safetensors from Train Essence Encoder or "
            "`essence train-encoder`).")}}

    @classmethod
    def VALIDATE_INPUTS(cls, encoder_file: str) -> bool | str:
        problem = host.folder_file_problem(host.ENCODERS_FOLDER, encoder_file)
        return True if problem is None else problem

    def load(self, encoder_file: str) -> tuple[EssenceEncoder]:
        path = host.picked_file(host.ENCODERS_FOLDER, encoder_file, "essence encoder")
        return (load_essence_encoder(path, device=host.offload_device()),)


class EssenceEncode:
    """A target's essence in one pass of a trained essence encoder."""

    DESCRIPTION = ("TargetCLIP's encoder variant: the essence of the target in the pictures, in one pass of a "
                   "trained essence encoder instead of an optimisation. A batch of several pictures of the same "
                   "target gives one essence, the mean of theirs. Faces are aligned as the encoder's training "
                   "aligned them (or used as they are when they are aligned crops already). The essence works "
                   "like a trained one: apply, mix or save it.")
    CATEGORY = "essence/train"
    FUNCTION = "encode"
    RETURN_TYPES = (T.DIRECTION,)
    RETURN_NAMES = ("direction",)
    OUTPUT_TOOLTIPS = ("The encoded essence (its file records the encoder it came from).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "essence_encoder": link(T.TRAINED_ENCODER, "The trained essence encoder (Load Essence Encoder "
                                        "(trained) or Train Essence Encoder)."),
                "images": link("IMAGE", "Picture(s) of the target; a batch of several pictures of the same target "
                               "is averaged."),
                "align": boolean(True, "align faces: find the face in each picture and crop it the FFHQ way "
                                 "(a picture without a face stops with a message naming it); as they are: the "
                                 "pictures are aligned face crops already, only resized to 256 px.",
                                 on="align faces", off="as they are"),
            },
            "optional": {
                "landmarks": link(T.LANDMARKS, "dlib's landmark model, to align the faces (default: found "
                                  "automatically, as Load Landmark Model's 'auto')."),
                "generator": link(T.GENERATOR, "When connected: refuse an encoder trained against another "
                                  "generator (its essences only mean something for that one)."),
                "name": text("", "The essence's name (kept in its file); empty: none."),
            },
        }

    def encode(self, essence_encoder: EssenceEncoder, images: torch.Tensor, align: bool,
               landmarks: essence.faces.FaceLandmarker | None = None,
               generator: essence.networks.StyleGAN2Generator | None = None,
               name: str = "") -> tuple[essence.Direction]:
        with host.models_on_compute_device(essence_encoder.model):
            return (encode_essence(essence_encoder, images, align=align, landmarks=landmarks, generator=generator,
                                   name=name.strip() or None),)


class EssenceTrainEncoder:
    """Train an essence encoder (TargetCLIP's encoder variant)."""

    DESCRIPTION = ("TargetCLIP's encoder variant: fine-tunes the e4e encoder so that it gives any target's essence "
                   "in one pass (then Encode Essence takes a moment instead of an optimisation). It trains on many "
                   "targets: faces the generator draws, or your photos. The defaults are the paper's (3000 steps, "
                   "hours on a CPU; a GPU is recommended). The preview shows held-out pictures over the source "
                   "faces given their essence, at each validation. When complete, the encoder is saved to "
                   "models/essence_encoders/<prefix>_00001.safetensors. Cancel stops it; queued again unchanged "
                   "(even after a restart of ComfyUI) it goes on from its last checkpoint, kept every "
                   "checkpoint_every steps in output/essence_encoder_checkpoints until the encoder is saved.")
    CATEGORY = "essence/train"
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = (T.TRAINED_ENCODER, "IMAGE", "STRING")
    RETURN_NAMES = ("essence_encoder", "preview", "report")
    OUTPUT_TOOLTIPS = ("The trained essence encoder (the one that validated best), also saved to "
                       "models/essence_encoders.",
                       "Top row: held-out pictures (training pictures when none are held out); bottom row: a "
                       "source face given each one's essence by the kept encoder.",
                       "How training went: updates, time, the kept encoder's validation loss, the saved file.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "encoder": link(T.ENCODER, "The e4e encoder to start from (Load Essence Encoder (e4e): "
                                "e4e_ffhq_encode.pt)."),
                "generator": link(T.GENERATOR, "The StyleGAN2 generator (frozen); the encoder only works with it."),
                "guide": link(T.GUIDE, "The CLIP model that compares edited faces with the targets."),
                "sources": link(T.LATENT, "Source faces every essence must work on (TargetCLIP's encoder uses 5: "
                                "Sample Face Latents with count 5)."),
                "data": choice(list(DATA_CHOICES), "Training pictures: " + "; ".join(
                    f"{k} = {v}" for k, v in DATA_CHOICES.items()) + ".", "generated"),
                "generated_count": integer(100, 1, 100000, "With data 'generated': how many faces to train on."),
                "heldout": integer(5, 0, 1000, "Pictures held out to validate on (the best encoder is kept): "
                                   "generated faces besides the training ones, or the last images of the batch."),
                "max_steps": integer(DEFAULTS.max_steps, 0, 1000000, "TargetCLIP's max_steps: it makes max_steps + "
                                     "1 updates (official: 3000)."),
                "lr": number(DEFAULTS.lr, 1e-5, 1.0, "Ranger's learning rate (official: 0.0001).", 1e-5),
                "lambda_consistency": number(DEFAULTS.lambda_consistency, 0.0, 10.0, "Weight of 'change every "
                                             "source face the same way' (official: 0.5).", 0.05),
                "lambda_reg": number(DEFAULTS.lambda_reg, 0.0, 1.0, "Weight of the essences' L2 norm (official: "
                                     "0.003).", 0.0001),
                "seed": seed("Seed of the pictures' order and flips, and of the generated faces."),
                "filename_prefix": text("essence_encoder", "File name (no folders): saved as "
                                        "<name>_00001.safetensors in models/essence_encoders."),
            },
            "optional": {
                "images": link("IMAGE", "With data 'photos' or 'pictures': the training pictures, one target "
                               "each (the last 'heldout' of them validate)."),
                "landmarks": link(T.LANDMARKS, "With data 'photos': dlib's landmark model (default: found "
                                  "automatically, as Load Landmark Model's 'auto')."),
                "batch_size": integer(DEFAULTS.batch_size, 1, 64, "Pictures per update (official: 1)."),
                "flip": number(DEFAULTS.flip, 0.0, 1.0, "Chance of a left-right flip of each picture (official: "
                               "0.5).", 0.05),
                "shuffle": boolean(DEFAULTS.shuffle, "Reshuffle the pictures every epoch (official), or take them "
                                   "in order.", on="shuffle", off="in order"),
                "validate_every": integer(DEFAULTS.validate_every, 1, 100000, "Steps between validations (and "
                                          "previews); the last step always validates (official: 31)."),
                "chunk_size": integer(0, 0, 64, "Source faces rendered per pass: 0 = all at once; smaller uses "
                                      "less memory with the same result (halved automatically on out-of-memory)."),
                "checkpoint_every": integer(DEFAULTS.checkpoint_every, 1, 100000, "Steps between checkpoints "
                                            "(output/essence_encoder_checkpoints): the same run queued again goes "
                                            "on from the last one."),
            },
        }

    def train(self, encoder: essence.networks.E4EEncoder, generator: essence.networks.StyleGAN2Generator,
              guide: essence.networks.ClipGuide, sources: essence.LatentSet, data: str, generated_count: int,
              heldout: int, max_steps: int, lr: float, lambda_consistency: float, lambda_reg: float, seed: int,
              filename_prefix: str, images: torch.Tensor | None = None,
              landmarks: essence.faces.FaceLandmarker | None = None, batch_size: int = DEFAULTS.batch_size,
              flip: float = DEFAULTS.flip, shuffle: bool = DEFAULTS.shuffle,
              validate_every: int = DEFAULTS.validate_every, chunk_size: int = 0,
              checkpoint_every: int = DEFAULTS.checkpoint_every) -> dict[str, Any]:
        settings = EncoderSettings(max_steps=max_steps, lr=lr, lambda_consistency=lambda_consistency,
                                   lambda_reg=lambda_reg, batch_size=batch_size, flip=flip, shuffle=shuffle,
                                   validate_every=validate_every, checkpoint_every=checkpoint_every, seed=seed,
                                   chunk_size=chunk_size or None)
        stem = checked_stem(filename_prefix, ".safetensors", f"the '{host.ENCODERS_FOLDER}' model folder",
                            "the essence encoder")
        folder = host.save_folder(host.ENCODERS_FOLDER)
        room = ENCODER_COPIES * sum(t.nelement() * t.element_size() for t in encoder.state_dict().values())
        with host.models_on_compute_device(generator, guide, working_memory=room):
            pictures = _training_data(data, images, generated_count, heldout, seed, generator, landmarks)
            latents = sources.latents
            run = run_id(run_record(encoder, generator, guide, pictures, latents, settings))
            checkpoints = host.output_folder(CHECKPOINTS_FOLDER) / f"{stem}-{run}"
            training = train_encoder(encoder, generator, guide, pictures, latents, settings, checkpoints=checkpoints,
                                     progress=_progress_reporter(generator, latents, pictures, settings.updates),
                                     should_stop=host.interrupted, release=host.release_memory,
                                     on_retry=host.memory_retry_log("Train Essence Encoder"))
            result = trained_encoder(training, generator, guide.name, pictures, latents, settings, stem)
            shown = pictures.heldout if len(pictures.heldout) else pictures.train
            with host.models_on_compute_device(result.model):
                essences = essences_of(result.model, shown[:PREVIEW_FACES])
            preview = _preview_grid(generator, latents, essences, shown, None)
        path = result.save_numbered(folder, stem)
        shutil.rmtree(checkpoints, ignore_errors=True)  # the run is complete: its file holds what they did
        report = _report(training, pictures, path.name)
        return {"ui": {"text": [path.name]},
                "result": (result, grid_to_comfy_image(preview, host.intermediate_device()), report)}


def _training_data(data: str, images: torch.Tensor | None, generated_count: int, heldout: int, seed: int,
                   generator: essence.networks.StyleGAN2Generator,
                   landmarks: essence.faces.FaceLandmarker | None) -> EncoderData:
    """The training and held-out pictures the ``data`` choice names; a mismatched images input is refused."""
    if data == "generated":
        if images is not None:
            raise EssenceError("Train Essence Encoder: data is 'generated' but the images input is connected; "
                               "choose data 'photos' or 'pictures' to train on those images, or disconnect them.")
        return generated_data(generator, generated_count, heldout, seed=seed)
    if images is None:
        raise EssenceError(f"Train Essence Encoder: data '{data}' trains on the images input, which is not "
                           f"connected; connect a batch of pictures (one target each), or choose data 'generated'.")
    return batch_data(images, heldout, align=data == "photos", landmarks=landmarks)


def _progress_reporter(generator: essence.networks.StyleGAN2Generator, sources: torch.Tensor, data: EncoderData,
                       updates: int):
    """A ``train_encoder`` progress hook driving ComfyUI's bar (stopping on Cancel), with a preview of
    the held-out essences at every validation."""
    bar = host.Progress(updates)
    stop = PREVIEW_RESOLUTION if generator.size > PREVIEW_RESOLUTION else None

    def report(progress: EncoderProgress) -> None:
        host.check_interrupt()
        image = None
        if progress.essences is not None:
            image = host.preview_or_none(lambda: grid_to_pil(_preview_grid(
                generator, sources, progress.essences[:PREVIEW_FACES], data.heldout, stop)), "Train Essence Encoder")
        bar.update(progress.done, image)

    return report


def _preview_grid(generator: essence.networks.StyleGAN2Generator, sources: torch.Tensor, essences: torch.Tensor,
                  pictures: torch.Tensor, stop: int | None) -> torch.Tensor:
    """Two rows, [3, H, W] in 0..1: the pictures (uint8 [N, 3, 256, 256]) above source face i (cycling
    through the sources) given picture i's essence."""
    count = len(essences)
    faces = sources[torch.arange(count) % len(sources)].to(essences) + essences
    drawn = render(generator, faces, stop_at=stop, between_batches=host.check_interrupt)
    shown = F.interpolate(as_inputs(pictures[:count]), size=tuple(drawn.shape[-2:]), mode="bilinear",
                          antialias=True, align_corners=False)
    return image_grid(torch.cat([shown, drawn]), columns=count, padding=0)


def _report(training: Any, data: EncoderData, filename: str) -> str:
    kept = (f"best validation loss {training.best_loss:.4f} at step {training.best_step} (kept)"
            if training.best_loss is not None else "no held-out pictures: the last update kept")
    resumed = f" (resumed from its checkpoint after update {training.resumed_from})" if training.resumed_from else ""
    return (f"Trained an essence encoder: {len(training.losses)} updates{resumed} in {training.seconds:.1f} s on "
            f"{data.train.shape[0]} {data.kind} (+{data.heldout.shape[0]} held out); {kept}; final loss "
            f"{training.losses[-1][0]:.4f}.\nSaved models/{host.ENCODERS_FOLDER}/{filename}.")
