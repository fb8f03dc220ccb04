"""Encoding: TargetCLIP's encoder variant, an e4e fine-tuned to give a target's essence in one pass.

- ``ranger``: the official optimiser (RAdam + Lookahead + gradient centralisation), from ``pytorch-optimizer``;
- ``objective``: the coach's loss (transfer, consistency of raw CLIP differences, plain L2) and its chunked gradient;
- ``data``: the training pictures (pictures as they are, aligned face photos cached, pictures given together, or
  generated faces), batched;
- ``settings``: ``EncoderSettings``, the README command's values;
- ``state``: the resumable checkpoint (encoder, optimiser, step, history, random state) and the best encoder;
- ``trainer``: ``train_encoder``, the coach's loop step for step, resumable at any point;
- ``workers``: the loop's two seams, one process or one of several workers (``Workers``, ``DistributedWorkers``: DDP)
  and where checkpoints go
  (``CheckpointStore``, ``CheckpointFolder``), which ``essence.scale`` fills in for Ray Train;
- ``encoder_file``: the trained encoder's file (``EssenceEncoder``), its metadata, strict loading;
- ``job``: ``train_encoder_file``: the checks before any step, the training, the file when complete;
- ``encode``: ``encode_essence``: a target's pictures -> a standard direction in one pass; ``encode_targets``:
  many targets (``folder_targets``: a folder of them) with their faces in batches.
"""

from .data import (EncoderData, aligned_pixels, as_inputs, batch_data, folder_pictures, generated_data, photo_data,
                   picture_data, resized_pixels, step_batch)
from .encode import (FOLDER_RULE, EncodedTarget, EncodeTarget, encode_essence, encode_targets, encoder_start,
                     essences_of, folder_targets, target_pixels)
from .encoder_file import EssenceEncoder, encoder_metadata, load_essence_encoder, trained_encoder
from .job import DISTRIBUTED_RUN, check_encoder_outputs, checkpoint_folder, train_encoder_file
from .objective import EncoderLosses, generated_features, loss_terms, objective, objective_backward, target_features
from .ranger import RANGER_OPTIONS, official_ranger
from .settings import EncoderSettings
from .state import TrainingState, load_checkpoint, save_checkpoint
from .trainer import (EncoderProgress, EncoderTraining, finished_training, run_id, run_record, train_encoder,
                      validate)
from .workers import CheckpointFolder, CheckpointStore, DistributedWorkers, Workers, checkpoint_store

__all__ = [
    "official_ranger", "RANGER_OPTIONS",
    "EncoderLosses", "generated_features", "target_features", "loss_terms", "objective", "objective_backward",
    "EncoderData", "as_inputs", "step_batch", "resized_pixels", "aligned_pixels", "picture_data", "batch_data",
    "photo_data", "generated_data", "folder_pictures",
    "EncoderSettings", "TrainingState", "save_checkpoint", "load_checkpoint",
    "train_encoder", "EncoderTraining", "EncoderProgress", "run_record", "run_id", "validate", "finished_training",
    "Workers", "DistributedWorkers", "CheckpointStore", "CheckpointFolder", "checkpoint_store",
    "EssenceEncoder", "load_essence_encoder", "encoder_metadata", "trained_encoder",
    "train_encoder_file", "check_encoder_outputs", "checkpoint_folder", "DISTRIBUTED_RUN",
    "encode_essence", "target_pixels", "essences_of", "encoder_start",
    "EncodeTarget", "EncodedTarget", "encode_targets", "folder_targets", "FOLDER_RULE",
]
