"""Video: clips read and written with their exact rate and sound, and an essence applied to every frame.

- ``files``: PyAV reading and writing (``probe_video``, ``read_frames``, ``write_video``; audio copied);
- ``edit``: ``apply_to_video`` and its stages (find the face, edit frame ranges, assemble), which batch
  jobs run on several workers.
"""

from .edit import (DEFAULT_BATCH, STAGES, FaceEditor, VideoResult, apply_to_video, assemble_video, detect_video,
                   edit_video_range, video_track)
from .files import (VideoInfo, check_audio_fits, output_container, probe_video, read_frames, video_comment,
                    write_video)

__all__ = [
    "VideoInfo", "probe_video", "read_frames", "write_video", "video_comment", "output_container", "check_audio_fits",
    "apply_to_video", "VideoResult", "FaceEditor", "STAGES", "DEFAULT_BATCH", "detect_video", "video_track",
    "edit_video_range", "assemble_video",
]
