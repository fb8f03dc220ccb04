"""Face nodes: align photos the FFHQ way, invert them to W+ latents, and paste edited faces back.

A graph goes photo -> Invert Face (latents + aligned crops + alignment) -> Apply Essence -> Render
Latents -> Paste Back (into the original photo). The ``ESSENCE_ALIGNMENT`` output carries, for each
aligned face, the crop-to-photo transform and the photo's original size, so Paste Back needs
nothing else.

Photos without a face: by default the node stops with an error naming the batch image (a silent
gap would shift every later face against its photo). With ``no_face = skip`` such photos are left
out of the aligned batch instead; Paste Back then returns them unchanged, because the alignment
records which photo each face belongs to.

Video frames (an IMAGE batch [F, H, W, 3], e.g. from Get Video Components or VideoHelperSuite's Load
Video): with ``smoothing`` other than 'off' the batch is one clip, and each frame's face crop is
smoothed over time (``essence.faces.track``) so the edited face does not shimmer. It is 'off' by default
because a batch of unrelated photos must not be smoothed together. Such a clip is face-tracked as
``essence apply --video`` tracks it: detected at the first frame, scene cuts and once a second, followed
in between.

Pivotal tuning (``refine = pti`` on Invert Face) tunes the connected generator to each photo's face,
or, for the frames of a clip (smoothing on), one generator to all of them (STIT's way); the tuned
weights travel inside the latents output, so Apply Essence, Render Latents and Strength Sweep draw
those faces with them, and Paste Back puts back a face that keeps the photo's likeness.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from .. import essence
from ..essence.errors import EssenceError, FaceIndexError, FaceNotFoundError
from ..essence.faces import (MASKS, MAX_FEATHER, SMOOTHING_PRESETS, AlignedFace, Tracking, align_clip_faces,
                             align_photos, clip_frames, paste_back, pil_to_comfy, smoothing_preset)
from ..essence.latents import PTI, REFINEMENTS, STIT, PivotalTuning, invert, invert_clip, pivotal_tuning
from ..essence.networks import INPUT_SIZE, load_perceptual
from . import host
from . import types as T
from .inputs import choice, integer, link, number

CATEGORY = "essence/faces"
ALIGN_SIZES = ("1024", "512", "256")
MAX_FACE_INDEX = 31
NO_FACE = ("error", "skip")
SKIP_HINT = "Set no_face to 'skip' to leave such photos out."
# bytes pivotal tuning needs besides the weights: 3.0 GB measured for a 1024 px face on an H200
# (bench/tuning.py), with room to spare
TUNING_MEMORY = int(3.5 * 2**30)


def images_input(tooltip: str) -> tuple:
    return link("IMAGE", tooltip)


def face_index_input() -> tuple:
    return integer(0, 0, MAX_FACE_INDEX, "Which face of each photo: 0 = the largest, 1 = the second largest, ...")


def no_face_input() -> tuple:
    return choice(NO_FACE, "A photo without a (findable) face: 'error' stops with a message naming it; 'skip' "
                  "leaves it out (Paste Back returns it unchanged).", "error")


def smoothing_inputs() -> dict[str, tuple]:
    return {
        "smoothing": choice(tuple(SMOOTHING_PRESETS), "For video frames: the batch is one clip, and each frame's face "
                            "crop is smoothed over time so the edited face does not shimmer (scene cuts restart "
                            "it; 'offline' looks both ways in each shot, so a moving face is followed without "
                            "lag). Keep 'off' for a batch of separate photos.", "off"),
        "frame_rate": number(30.0, 1.0, 240.0, "Frames per second of the clip (with smoothing; Get Video "
                             "Components shows it as fps).", 0.001),
    }


def photo_progress(count: int) -> Callable[[int, int], None]:
    """A per-photo progress callback for ComfyUI's bar that also stops on Cancel."""
    bar = host.Progress(count)

    def report(done: int, _total: int) -> None:
        host.check_interrupt()
        bar.update(done)

    return report


def align_batch(images: torch.Tensor | list[essence.faces.Photo], size: int,
                landmarks: essence.faces.FaceLandmarker, face_index: int, no_face: str, smoothing: str = "off",
                frame_rate: float = 30.0) -> list[tuple[int, AlignedFace]]:
    """(photo index, aligned face) for every photo of a ComfyUI IMAGE batch (or its frames, already
    read with ``clip_frames``): ``align_photos``, or with ``smoothing`` ``align_clip_faces`` for the
    frames of one clip (see the module's docstring)."""
    count = len(images)
    report = photo_progress(count)
    with skip_hint(no_face):
        if smoothing == "off":
            return align_photos(images, size, landmarks=landmarks, face_index=face_index,
                                skip_missing=no_face == "skip", progress=report)
        return align_clip_faces(images, landmarks, size, frame_rate, smoothing_preset(smoothing), face_index,
                                skip_missing=no_face == "skip", progress=lambda done: report(done, count),
                                tracking=Tracking())


@contextlib.contextmanager
def skip_hint(no_face: str) -> Iterator[None]:
    """A photo without a face that stops the graph: the library's message plus the node input that
    would skip it instead (not for a photo with too few faces, which skipping would not help)."""
    try:
        yield
    except FaceNotFoundError as exc:
        if no_face == "skip" or isinstance(exc, FaceIndexError):
            raise
        raise FaceNotFoundError(f"{exc} {SKIP_HINT}") from None


def placement(index: int, face: AlignedFace) -> T.FacePlacement:
    return T.FacePlacement(face.transform, index, face.index, face.photo_sha256)


class EssenceAlignFace:
    """Photos -> FFHQ-aligned face crops, and where they came from."""

    DESCRIPTION = ("Finds a face in each photo (dlib) and crops it the way the FFHQ faces StyleGAN2 was trained on "
                   "are framed: eyes level, centred, fixed scale. The alignment output lets Paste Back put an "
                   "edited face back into the photo. A photo without a face stops the graph with a message naming "
                   "it, unless no_face is 'skip'.")
    CATEGORY = CATEGORY
    FUNCTION = "align"
    RETURN_TYPES = ("IMAGE", T.ALIGNMENT)
    RETURN_NAMES = ("aligned", "alignment")
    OUTPUT_TOOLTIPS = ("The aligned faces, size x size, one per photo with a face.",
                       "Where each face came from (for Paste Back).")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": images_input("Photo(s) with a face; each image of a batch is one photo."),
                "landmarks": link(T.LANDMARKS, "dlib's face landmark model (Load Landmark Model)."),
                "size": choice(ALIGN_SIZES, "Side of the aligned crop in pixels: 1024 = FFHQ (StyleGAN2's size), "
                               "256 = what the e4e encoder reads.", "1024"),
                "face_index": face_index_input(),
            },
            "optional": {"no_face": no_face_input(), **smoothing_inputs()},
        }

    def align(self, images: torch.Tensor, landmarks: essence.faces.FaceLandmarker, size: str, face_index: int,
              no_face: str = "error", smoothing: str = "off",
              frame_rate: float = 30.0) -> tuple[torch.Tensor, T.EssenceAlignment]:
        chosen = align_batch(images, int(size), landmarks, face_index, no_face, smoothing, frame_rate)
        return crops_and_alignment(chosen, images)


def crops_and_alignment(chosen: list[tuple[int, AlignedFace]],
                        images: torch.Tensor) -> tuple[torch.Tensor, T.EssenceAlignment]:
    """The outputs every face node gives for its chosen faces (photo index, aligned face): their
    crops as an IMAGE batch, and where each came from (for Paste Back)."""
    aligned = pil_to_comfy([face.crop for _, face in chosen]).to(host.intermediate_device())
    return aligned, T.EssenceAlignment(tuple(placement(i, face) for i, face in chosen), int(images.shape[0]))


class EssenceInvertFace:
    """Photos -> W+ latents (e4e), with the aligned crops and their alignment."""

    DESCRIPTION = ("Aligns a face in each photo and encodes it with e4e into a W+ latent that the generator "
                   "renders back as (nearly) that face. Edit the latents (Apply Essence), render them, and paste "
                   "the result back into the photo with Paste Back using the alignment output. A photo without a "
                   "face stops the graph with a message naming it, unless no_face is 'skip'. With refine 'pti' the "
                   "connected generator is also tuned to each face (pivotal tuning), so that it draws the photo's "
                   "own face; the tuned weights travel with the latents to Render Latents and Strength Sweep.")
    CATEGORY = CATEGORY
    FUNCTION = "invert"
    RETURN_TYPES = (T.LATENT, "IMAGE", T.ALIGNMENT)
    RETURN_NAMES = ("latents", "aligned", "alignment")
    OUTPUT_TOOLTIPS = ("One W+ latent per photo with a face (each records the photo's sha256).",
                       "The aligned 256 px faces the encoder read.",
                       "Where each face came from (for Paste Back).")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "encoder": link(T.ENCODER, "The e4e encoder (Load Essence Encoder)."),
                "landmarks": link(T.LANDMARKS, "dlib's face landmark model (Load Landmark Model)."),
                "images": images_input("Photo(s) with a face; each image of a batch is one photo."),
                "face_index": face_index_input(),
            },
            "optional": {
                "no_face": no_face_input(), **smoothing_inputs(),
                "refine": choice(REFINEMENTS, "pti: after e4e, tune the generator to each face (pivotal tuning, "
                                 "PTI's settings) so that it draws the photo's own face; slower (up to pti_steps "
                                 "steps a face) and about 56 MB of memory a face at 1024 px. Needs the generator "
                                 "input and LPIPS's AlexNet file (alexnet-owt-7be5be79.pth in models/essence_lpips).",
                                 "none"),
                "generator": link(T.GENERATOR, "With refine 'pti': the generator to tune (the one that will "
                                  "render these latents)."),
                "pti_steps": integer(PTI.steps, 1, 2000, f"With refine 'pti': at most this many tuning steps a "
                                     f"face (PTI stops a face earlier once its LPIPS is {PTI.lpips_stop})."),
                "pti_passes": integer(STIT.steps, 1, 500, "With refine 'pti' and smoothing on (a clip): one "
                                      "generator is tuned to all the frames (STIT's way), this many passes over "
                                      "them, one step a frame."),
            },
        }

    def invert(self, encoder: essence.networks.E4EEncoder, landmarks: essence.faces.FaceLandmarker,
               images: torch.Tensor, face_index: int, no_face: str = "error", smoothing: str = "off",
               frame_rate: float = 30.0, refine: str = "none", generator: Any = None,
               pti_steps: int = PTI.steps,
               pti_passes: int = STIT.steps) -> tuple[essence.LatentSet, torch.Tensor, T.EssenceAlignment]:
        tuned = refine == "pti"
        if tuned and generator is None:
            raise EssenceError("refine 'pti' tunes a generator to each face: connect the generator input (Load "
                               "Essence Generator), or set refine to 'none'.")
        clip = smoothing != "off"  # the frames of one clip: aligned with the smoothed track, then inverted
        frames = clip_frames(images) if clip else []
        chosen = align_batch(frames, INPUT_SIZE, landmarks, face_index, no_face, smoothing, frame_rate) if clip else []
        models = (encoder, generator) if tuned else (encoder,)
        with skip_hint(no_face), host.models_on_compute_device(*models, working_memory=TUNING_MEMORY if tuned else 0):
            tuning = _tuning(generator, clip, pti_passes if clip else pti_steps) if tuned else None
            if clip:
                inversion = invert_clip([(i, frames[i], face) for i, face in chosen], encoder, generator, tuning)
            else:
                inversion = invert(images, encoder, landmarks=landmarks, face_index=face_index,
                                   skip_missing=no_face == "skip", progress=photo_progress(int(images.shape[0])),
                                   generator=generator, tuning=tuning)
                chosen = [(source["photo_index"], face) for source, face in zip(inversion.sources, inversion.faces)]
        latent_set = inversion.latent_set(generator) if generator is not None else inversion.latent_set()
        return (latent_set, *crops_and_alignment(chosen, images))


def _tuning(generator: essence.networks.StyleGAN2Generator, clip: bool, steps: int) -> PivotalTuning:
    """The node's pivotal tuning: PTI's settings a photo, or STIT's over every frame of a clip (the
    frames are in memory already), LPIPS on the generator's device, and a progress bar over every
    step that stops on Cancel. Made where the generator is on its compute device."""
    bar: list[host.Progress] = []

    def progress(done: int, total: int) -> None:
        host.check_interrupt()
        if not bar:
            bar.append(host.Progress(total))
        bar[0].update(done)

    # not kept in Essence's model cache: ComfyUI owns the memory between runs (244 MB, read again each run)
    perceptual = load_perceptual(device=generator.latent_avg.device, cache=False)
    return pivotal_tuning(clip, steps, frames=None, perceptual=perceptual, progress=progress)


class EssencePasteBack:
    """Edited faces back into their original photos."""

    DESCRIPTION = ("Puts edited faces (e.g. rendered from inverted, essence-edited latents; any size) back into "
                   "the photos they were aligned from. By default only the face itself (jaw line, brows and "
                   "forehead, from the landmarks the alignment found) is blended in, with a soft edge: hair, "
                   "neck and background stay the photo's, so no box shows. The result has the original "
                   "photo's size.")
    CATEGORY = CATEGORY
    FUNCTION = "paste"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The photos with the edited faces in place (photos without a face unchanged).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {
            "photos": images_input("The original photo(s): the batch that went into Align Face / Invert Face."),
            "faces": images_input("The edited faces, one per aligned face, in the same order (any square size)."),
            "alignment": link(T.ALIGNMENT, "The alignment output of the Align Face / Invert Face node that "
                              "aligned these photos."),
            "feather": number(0.1, 0.0, MAX_FEATHER, "Width of the soft edge, as a fraction of the face crop "
                              "(0 = hard edge).", 0.01),
        }, "optional": {
            "mask": choice(MASKS, "face: blend only the face (jaw line, brows, forehead), keeping the photo's hair, "
                           "neck and background exactly; square: the whole aligned crop, with soft edges.", "face"),
        }}

    def paste(self, photos: torch.Tensor, faces: torch.Tensor, alignment: T.EssenceAlignment,
              feather: float, mask: str = "face") -> tuple[torch.Tensor]:
        _check_batches(photos, faces, alignment)
        out = photos[..., :3].float().clone()
        for face, place in zip(faces, alignment.faces):
            host.check_interrupt()
            out[place.photo_index] = paste_back(out[place.photo_index], face[..., :3], place.transform, feather, mask)
        return (out.to(host.intermediate_device()),)


def _check_batches(photos: torch.Tensor, faces: torch.Tensor, alignment: T.EssenceAlignment) -> None:
    """The photos are the batch that was aligned, and there is one edited face per aligned face."""
    if photos.shape[0] != alignment.photo_count:
        raise essence.errors.ShapeError(f"Paste Back got {photos.shape[0]} photo(s), but the alignment was made from "
                                 f"{alignment.photo_count}; connect the same photos that went into Align/Invert Face.")
    if faces.shape[0] != len(alignment):
        raise essence.errors.ShapeError(f"Paste Back got {faces.shape[0]} edited face(s) for {len(alignment)} aligned "
                                 f"face(s); render exactly the latents of that Invert Face node (one image each).")
    width, height = int(photos.shape[2]), int(photos.shape[1])
    for place in alignment.faces:
        if place.photo_size != (width, height):
            w, h = place.photo_size
            raise essence.errors.ShapeError(f"Paste Back got {width}x{height} photos, but face {place.photo_index + 1} "
                                     f"was aligned from a {w}x{h} photo; connect the original, unresized photos.")
