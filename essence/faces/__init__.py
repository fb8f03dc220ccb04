"""Faces: pictures in, FFHQ-aligned face crops out, and edited faces back into their pictures.

- ``images``: every image input (files, PIL, ComfyUI tensors) to 8-bit upright RGB, the tensor layouts, and
  scikit-image's sample pictures (the demo's defaults);
- ``align``: dlib's face detection and 68 landmarks, the FFHQ crop and its ``CropTransform``;
- ``paste``: an edited face pasted back into its photo with a feathered mask;
- ``smoothing``: the One-Euro filter that steadies a face's crop over a clip's frames;
- ``track``: one face followed through a clip (detected now and then, its landmarks followed in between).

No network is used here: faces are found with dlib, and the layers above encode and render them.
"""

from .align import (RECIPE, AlignedFace, CropTransform, FaceLandmarker, align_face, align_faces, align_photos,
                    landmarker_from, load_landmarker, nothing_found, realign)
from .images import (FULL_DECODE_PIXELS, ImageSource, Photo, comfy_to_pil, grid_to_pil, load_image, load_photo,
                     load_photos, model_to_comfy, model_to_pil, pil_to_comfy, pil_to_model, pil_to_pixels,
                     scikit_image_picture)
from .paste import MASKS, MAX_FEATHER, face_region, paste_back, paste_mask
from .smoothing import SMOOTHING_PRESETS, Smoothing, corner_movement, smoothing_preset
from .track import (Detections, FaceTrack, Tracking, align_clip, align_clip_faces, align_tracked, as_frame, build_track,
                    clip_frames, detect_frames, join_detections, tracking_settings)

__all__ = [
    "ImageSource", "Photo", "FULL_DECODE_PIXELS", "load_image", "load_photo", "load_photos", "pil_to_model",
    "pil_to_pixels", "model_to_pil", "pil_to_comfy", "comfy_to_pil", "model_to_comfy", "grid_to_pil",
    "scikit_image_picture",
    "FaceLandmarker", "load_landmarker", "landmarker_from", "AlignedFace", "CropTransform", "align_face",
    "align_faces", "align_photos",
    "nothing_found", "RECIPE", "realign",
    "paste_back", "paste_mask", "face_region", "MASKS", "MAX_FEATHER",
    "Smoothing", "SMOOTHING_PRESETS", "smoothing_preset", "corner_movement",
    "Tracking", "tracking_settings", "Detections", "FaceTrack", "detect_frames", "join_detections", "build_track",
    "as_frame", "clip_frames", "align_tracked", "align_clip", "align_clip_faces",
]
