"""Loader nodes: the networks and the face landmark model, from ComfyUI's Essence model folders.

Models are loaded through ``essence.load_*``, which builds them outside inference mode (so the
training node can back-propagate through them), onto ComfyUI's offload device. ComfyUI owns their
lifetime: they live in its node cache like its own models (not in Essence's model cache, which
ComfyUI could not free), and compute nodes hand them to ComfyUI's model manager to move them to the
GPU (``host.models_on_compute_device``).

Dropdown values are validated by the node itself (``VALIDATE_INPUTS``) instead of ComfyUI's "value
not in list" check, so a workflow that names a file the user does not have yet fails with Essence's
message: which folder to put the file in, where to download it, and its licence.
"""

from __future__ import annotations

from typing import Any

from .. import essence
from ..essence import storage as essence_storage
from . import host
from . import types as T
from .inputs import choice

CATEGORY = "essence/loaders"
E4E_PREFIX = "[e4e] "  # generator dropdown entries that load the decoder embedded in an e4e file
LANDMARKS_AUTO = "auto"  # landmark dropdown entry: Essence's own lookup (model folder, then installed packages)


def _folder(role: str) -> str:
    return essence_storage.get_spec(role).comfy_folder


def _default(options: list[str], role: str) -> str | None:
    wanted = essence_storage.get_spec(role).filename
    return wanted if wanted in options else None


def _options(role: str) -> list[str]:
    """The folder's files; when it is empty, the manifest's file name, so the node shows what it
    wants (running it then says where to get that file)."""
    return host.filename_list(_folder(role)) or [essence_storage.get_spec(role).filename]


class EssenceGeneratorLoader:
    """Load a StyleGAN2 generator."""

    DESCRIPTION = ("Loads a StyleGAN2 generator (rosinality format, e.g. stylegan2-ffhq-config-f.pt) from "
                   "models/essence_stylegan2, or the generator embedded in an e4e file from models/essence_e4e.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (T.GENERATOR,)
    RETURN_NAMES = ("generator",)
    OUTPUT_TOOLTIPS = ("The StyleGAN2 generator: turns W+ latents into faces.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        options = _options("generator") + [E4E_PREFIX + f for f in host.filename_list(_folder("encoder"))]
        return {"required": {"generator_file": choice(
            options, "StyleGAN2 checkpoint in models/essence_stylegan2 (e.g. stylegan2-ffhq-config-f.pt), or "
            "'[e4e] ...' for the decoder inside an e4e file in models/essence_e4e.",
            _default(options, "generator"))}}

    @classmethod
    def VALIDATE_INPUTS(cls, generator_file: str) -> bool | str:
        return True if isinstance(generator_file, str) and generator_file else "pick a generator file"

    def load(self, generator_file: str) -> tuple[essence.networks.StyleGAN2Generator]:
        if generator_file.startswith(E4E_PREFIX):
            path = host.require_file(_folder("encoder"), generator_file[len(E4E_PREFIX):], "e4e file")
        else:
            path = host.require_file(_folder("generator"), generator_file, "generator file")
        return (essence.load_generator(path, device=host.offload_device(), cache=False),)


class EssenceEncoderLoader:
    """Load an e4e encoder."""

    DESCRIPTION = ("Loads the e4e (encoder4editing) encoder, e.g. e4e_ffhq_encode.pt, from models/essence_e4e. "
                   "It turns aligned face photos into W+ latents.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (T.ENCODER,)
    RETURN_NAMES = ("encoder",)
    OUTPUT_TOOLTIPS = ("The e4e encoder: aligned 256 px faces -> W+ latents.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        options = _options("encoder")
        return {"required": {"encoder_file": choice(
            options, "e4e checkpoint in models/essence_e4e (e4e_ffhq_encode.pt).", _default(options, "encoder"))}}

    @classmethod
    def VALIDATE_INPUTS(cls, encoder_file: str) -> bool | str:
        return True if isinstance(encoder_file, str) and encoder_file else "pick an encoder file"

    def load(self, encoder_file: str) -> tuple[essence.networks.E4EEncoder]:
        path = host.require_file(_folder("encoder"), encoder_file, "e4e encoder file")
        return (essence.load_encoder(path, device=host.offload_device(), cache=False),)


class EssenceGuideLoader:
    """Load OpenAI CLIP's image tower."""

    DESCRIPTION = ("Loads OpenAI CLIP (ViT-B-32.pt; ViT-B-16.pt and ViT-L-14.pt also work) from models/essence_clip. "
                   "Only the image tower is kept: it scores how much an edited face looks like the target.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (T.GUIDE,)
    RETURN_NAMES = ("guide",)
    OUTPUT_TOOLTIPS = ("The CLIP image embedder that steers training.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        options = _options("guide")
        return {"required": {"clip_file": choice(
            options, "OpenAI CLIP file in models/essence_clip (ViT-B-32.pt is what TargetCLIP used).",
            _default(options, "guide"))}}

    @classmethod
    def VALIDATE_INPUTS(cls, clip_file: str) -> bool | str:
        return True if isinstance(clip_file, str) and clip_file else "pick a CLIP file"

    def load(self, clip_file: str) -> tuple[essence.networks.ClipGuide]:
        path = host.require_file(_folder("guide"), clip_file, "CLIP file")
        return (essence.load_guide(path, device=host.offload_device(), cache=False),)


class EssenceIdentityLoader:
    """Load the ArcFace identity network."""

    DESCRIPTION = ("Loads ArcFace IR-SE-50 (model_ir_se50.pth), the face recognition network pSp, e4e and TargetCLIP "
                   "measure identity with, from models/essence_identity. Only identity metrics need it.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (T.IDENTITY,)
    RETURN_NAMES = ("identity",)
    OUTPUT_TOOLTIPS = ("The ArcFace identity network: aligned faces -> 512-d unit vectors whose cosine says how "
                       "alike two faces' identities are.",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        options = _options("identity")
        return {"required": {"identity_file": choice(
            options, "ArcFace IR-SE-50 file in models/essence_identity (model_ir_se50.pth).",
            _default(options, "identity"))}}

    @classmethod
    def VALIDATE_INPUTS(cls, identity_file: str) -> bool | str:
        return True if isinstance(identity_file, str) and identity_file else "pick an identity model file"

    def load(self, identity_file: str) -> tuple[essence.networks.IdentityEncoder]:
        path = host.require_file(_folder("identity"), identity_file, "ArcFace identity file")
        return (essence.load_identity(path, device=host.offload_device(), cache=False),)


class EssenceLandmarkLoader:
    """Load dlib's face detector and 68-point landmark model."""

    DESCRIPTION = ("Loads dlib's face detector and 68-point landmark model (shape_predictor_68_face_landmarks.dat), "
                   "which Align Face and Invert Face use to find and frame faces the way FFHQ was framed. 'auto' "
                   "takes the file from models/essence_landmarks or, when installed, from the "
                   "face-recognition-models Python package.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (T.LANDMARKS,)
    RETURN_NAMES = ("landmarks",)
    OUTPUT_TOOLTIPS = ("The face detector and landmark model (for Align Face, Invert Face and Train Essence).",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        options = [LANDMARKS_AUTO] + host.filename_list(_folder("landmarks"))
        return {"required": {"landmarks_file": choice(
            options, "dlib 68-point model in models/essence_landmarks; 'auto' finds "
            "shape_predictor_68_face_landmarks.dat there or in the face-recognition-models package.",
            LANDMARKS_AUTO)}}

    @classmethod
    def VALIDATE_INPUTS(cls, landmarks_file: str) -> bool | str:
        return True if isinstance(landmarks_file, str) and landmarks_file else "pick a landmark model"

    def load(self, landmarks_file: str) -> tuple[essence.faces.FaceLandmarker]:
        if landmarks_file != LANDMARKS_AUTO:
            path = host.require_file(_folder("landmarks"), landmarks_file, "landmark model")
            return (essence.faces.load_landmarker(path, cache=False),)
        try:
            return (essence.faces.load_landmarker(cache=False),)
        except essence.errors.MissingWeightsError:
            spec = essence_storage.get_spec("landmarks")
            message = host.missing_file_message(spec.comfy_folder, spec.filename, "landmark model")
            raise essence.errors.MissingWeightsError(
                message + "\nOr install it with the face-recognition-models package in ComfyUI's Python "
                "environment (`pip install face-recognition-models`); 'auto' finds it there.") from None
