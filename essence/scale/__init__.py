"""Scale: batch jobs on Ray, locally or on a cluster (``pip install "essence-targetclip[scale]"``).

- ``batch``: tasks with one output each, workers that keep their models loaded, reports and resume;
- ``train_batch``: one training per target picture (``essence.training.train`` on each);
- ``apply_batch``: every photo edited with every direction (``apply_to_photo`` on each pair and strength);
- ``video_batch``: one long clip as chunks of frames on the workers, resumable, assembled when complete;
- ``encode_batch``: a folder of targets encoded with an essence encoder, one task per target (or in this
  process, the faces of several targets in each pass);
- ``encoder_train``: an essence encoder trained on several workers with Ray Train (DDP), resumable.

Ray is imported only when a job starts.
"""

from .batch import BatchReport, BatchRunner, BatchTask, captured_output, connect, plan_workers, run_batch
from .train_batch import TrainModels, TrainWorker, direction_details, run_train_batch, train_tasks
from .apply_batch import ApplyJob, ApplyModels, ApplyWorker, apply_tasks, run_apply_batch
from .video_batch import DEFAULT_CHUNK, VideoJob, VideoModels, run_video_job
from .encode_batch import EncodeJob, EncodeModels, EncodeWorker, encode_here, encode_tasks, run_encode_batch
from .encoder_train import EncoderModels, run_encoder_training

__all__ = [
    "BatchTask", "BatchReport", "BatchRunner", "run_batch", "captured_output", "connect", "plan_workers",
    "TrainModels", "TrainWorker", "run_train_batch", "train_tasks", "direction_details",
    "ApplyJob", "ApplyModels", "ApplyWorker", "run_apply_batch", "apply_tasks",
    "VideoJob", "VideoModels", "run_video_job", "DEFAULT_CHUNK",
    "EncodeJob", "EncodeModels", "EncodeWorker", "run_encode_batch", "encode_tasks", "encode_here",
    "EncoderModels", "run_encoder_training",
]
