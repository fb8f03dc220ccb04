"""ComfyUI nodes: thin adapters from ComfyUI's types to ``essence`` calls.

Importing this package registers the pack's model folders with ComfyUI when ComfyUI is present
(``host.register_model_folders``) and otherwise only defines the node classes, so the pack can be
imported and inspected without ComfyUI, a GPU or any weight file.
"""

from __future__ import annotations

from . import host
from .directions import EssenceLoad, EssenceMix, EssenceSave
from .encoder import EssenceEncode, EssenceTrainedEncoderLoader, EssenceTrainEncoder
from .faces import EssenceAlignFace, EssenceInvertFace, EssencePasteBack
from .latents import EssenceApply, EssenceSampleLatents
from .loaders import (EssenceEncoderLoader, EssenceGeneratorLoader, EssenceGuideLoader, EssenceIdentityLoader,
                      EssenceLandmarkLoader)
from .metrics import EssenceMetrics
from .render import EssenceRender, EssenceStrengthSweep
from .train import EssenceTrain

_NODES: list[tuple[type, str]] = [
    (EssenceGeneratorLoader, "Load Essence Generator (StyleGAN2)"),
    (EssenceEncoderLoader, "Load Essence Encoder (e4e)"),
    (EssenceGuideLoader, "Load Essence CLIP Guide"),
    (EssenceLandmarkLoader, "Load Landmark Model (dlib)"),
    (EssenceIdentityLoader, "Load Essence Identity Model (ArcFace)"),
    (EssenceAlignFace, "Align Face (FFHQ)"),
    (EssenceInvertFace, "Invert Face (e4e)"),
    (EssencePasteBack, "Paste Back Face"),
    (EssenceSampleLatents, "Sample Face Latents"),
    (EssenceApply, "Apply Essence"),
    (EssenceTrain, "Train Essence (TargetCLIP)"),
    (EssenceTrainedEncoderLoader, "Load Essence Encoder (trained)"),
    (EssenceEncode, "Encode Essence"),
    (EssenceTrainEncoder, "Train Essence Encoder"),
    (EssenceSave, "Save Essence"),
    (EssenceLoad, "Load Essence"),
    (EssenceMix, "Mix Essences"),
    (EssenceMetrics, "Essence Metrics"),
    (EssenceRender, "Render Latents"),
    (EssenceStrengthSweep, "Essence Strength Sweep"),
]

NODE_CLASS_MAPPINGS: dict[str, type] = {cls.__name__: cls for cls, _ in _NODES}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {cls.__name__: name for cls, name in _NODES}

host.register_model_folders()
