"""Essence: TargetCLIP essence transfer in plain PyTorch.

The public API loads the networks from the files users already have::

    import essence
    G = essence.load_generator("stylegan2-ffhq-config-f.pt")   # or the e4e file (its decoder)
    E = essence.load_encoder("e4e_ffhq_encode.pt")
    clip = essence.load_guide("ViT-B-32.pt")
    arcface = essence.load_identity("model_ir_se50.pth")   # optional: identity metrics
    wplus = E.encode(faces)                  # [B, 3, 256, 256] in [-1, 1] -> [B, 18, 512]
    images = G.synthesize(wplus)             # -> [B, 3, 1024, 1024] in about [-1, 1]
    emb = clip.embed_generated(images)       # TargetCLIP's CLIP path
    ids = arcface.embed(images)              # -> [B, 512] unit vectors (ArcFace, as the paper's metric)

Paths may be omitted: the file is then looked up as described in ``essence.weights``.
This package never imports ComfyUI.
"""

from __future__ import annotations

from .align import AlignedFace, CropTransform, FaceLandmarker, align_face, align_faces, load_landmarker
from .apply import apply_direction, apply_to_photo, mix_directions, strength_sweep
from .clip_guide import ClipGuide
from .direction import Direction, load_direction
from .e4e import E4EEncoder, EncoderConfig
from .errors import (CorruptFileError, DeviceMemoryError, DirectionFileError, DownloadError, EssenceError,
                     EssenceWarning, FaceNotFoundError, ImageInputError, IncompatibleLatentSpaceError,
                     IncompatibleWeightsError, LatentFileError, MissingWeightsError, ShapeError,
                     TrainingCancelled, UnsafeFileError, VideoInputError, WeightFileError, WrongFileKindError)
from .identity import IdentityConfig, IdentityEncoder
from .images import load_image, load_photo, load_photos
from .invert import Inversion, clear_inversion_cache, invert
from .latents import LatentSet, load_latents, sample_latents, save_latents
from .metrics import (DirectionMetrics, StrengthCurve, StrengthRecommendation, evaluate_direction,
                      recommend_strength, strength_curve)
from .models import load_encoder, load_generator, load_guide, load_identity
from .modes import TRAIN_MODES, TrainMode, train_mode
from .paste import paste_back, paste_mask
from .runtime import clear_model_cache, default_device
from .smoothing import Smoothing
from .stylegan2 import GeneratorConfig, StyleGAN2Generator
from .train import (TrainResult, TrainSettings, train_candidates, train_candidates_fitting_memory, train_direction,
                    train_direction_fitting_memory)
from .candidates import (CandidateChoice, CandidateScore, candidate_starts, choose_candidate, metric_scorer,
                         objective_scorer, train_best_candidate)
from .version import __version__
from .video import VideoInfo, apply_to_video, probe_video

__all__ = [
    "ClipGuide", "E4EEncoder", "EncoderConfig", "GeneratorConfig", "StyleGAN2Generator",
    "IdentityConfig", "IdentityEncoder",
    "load_generator", "load_encoder", "load_guide", "load_identity", "default_device", "clear_model_cache",
    "EssenceError", "WeightFileError", "MissingWeightsError", "UnsafeFileError", "CorruptFileError",
    "WrongFileKindError", "IncompatibleWeightsError", "DownloadError", "ShapeError", "__version__",
    "DirectionFileError", "IncompatibleLatentSpaceError", "TrainingCancelled",
    "Direction", "load_direction", "apply_direction", "apply_to_photo", "mix_directions", "strength_sweep",
    "TrainSettings", "TrainResult", "train_direction", "train_direction_fitting_memory",
    "train_candidates", "train_candidates_fitting_memory", "candidate_starts", "choose_candidate",
    "objective_scorer", "metric_scorer", "train_best_candidate", "CandidateChoice", "CandidateScore",
    "TRAIN_MODES", "TrainMode", "train_mode",
    "align_face", "align_faces", "AlignedFace", "CropTransform", "FaceLandmarker", "load_landmarker",
    "load_image", "load_photo", "load_photos", "invert", "Inversion", "clear_inversion_cache",
    "LatentSet", "load_latents", "save_latents", "sample_latents",
    "FaceNotFoundError", "ImageInputError", "LatentFileError", "DeviceMemoryError", "EssenceWarning",
    "paste_back", "paste_mask", "apply_to_video", "probe_video", "VideoInfo", "Smoothing", "VideoInputError",
    "evaluate_direction", "strength_curve", "recommend_strength", "DirectionMetrics", "StrengthCurve",
    "StrengthRecommendation",
]
