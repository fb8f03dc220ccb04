"""Video: clips read and written with their exact rate and sound, and an essence applied to every frame.

- ``files``: PyAV reading and writing (``probe_video``, ``read_frames``, ``write_video``; audio copied);
- ``tuning``: the generator tuned to a clip's frames (pivotal tuning, STIT's way) before they are edited,
  around latents the edit reuses;
- ``edit``: ``apply_to_video`` and its stages (find the face, tune, edit frame ranges, assemble), which
  batch jobs run on several workers;
- ``identity``: how steady the person stays in an edited clip (STIT's TL-ID and TG-ID).
"""

from .edit import (DEFAULT_BATCH, STAGES, FaceEditor, VideoResult, apply_to_video, assemble_video, detect_video,
                   edit_video_range, video_track)
from .files import (VIDEO_SUFFIXES, VideoInfo, check_audio_fits, output_container, probe_video, read_frames,
                    video_comment, write_video)
from .identity import Consistency, TemporalIdentity, temporal_identity
from .tuning import tuned_clip

__all__ = [
    "VideoInfo", "VIDEO_SUFFIXES", "probe_video", "read_frames", "write_video", "video_comment", "output_container", "check_audio_fits",
    "apply_to_video", "VideoResult", "FaceEditor", "STAGES", "DEFAULT_BATCH", "detect_video", "video_track",
    "edit_video_range", "assemble_video",
    "tuned_clip",
    "temporal_identity", "TemporalIdentity", "Consistency",
]
