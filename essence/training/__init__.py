"""Training: TargetCLIP's optimisation of an essence direction, its modes, candidates and metrics.

- ``loop``: the optimisation, ``train`` (``TrainSettings``; the ``official``, ``fast`` and ``graph`` loops; the start);
- ``job``: ``train_essence``, a whole training as every front end runs it, and what its direction records;
- ``adam``: Adam's updates with no host value, for the ``graph`` loop;
- ``modes``: ``TRAIN_MODES``, the named trade-offs between exactness, speed and memory;
- ``candidates``: several directions per target, trained together, and the best one chosen;
- ``metrics``: a direction measured on held-out faces, strength curves and the recommended strength.
"""

from .candidates import (CandidateChoice, CandidateScore, candidate_starts, choose_candidate, metric_scorer,
                         objective_scorer, train_best_candidate, training_starts)
from .job import EssenceJob, TrainedEssence, encoder_for_start, train_essence, trained_direction
from .loop import (INIT_CHOICES, Start, Target, TrainProgress, TrainResult, TrainSettings, autocast_for, embed_faces,
                   essence_losses, first_picture, initial_direction, random_initial_direction, target_embedding,
                   target_pictures, train, training_memory)
from .metrics import (DEFAULT_MIN_IDENTITY, DEFAULT_STRENGTH, DEFAULT_STRENGTHS, PROTOCOLS, DirectionMetrics,
                      StrengthCurve, StrengthRecommendation, evaluate_direction, mean_std, metrics_table,
                      official_summary, parse_strengths, paste_seams, plot_curves, recommend_strength, seam_energy,
                      strength_curve)
from .modes import DEFAULT_MODE, TRAIN_MODES, TrainMode, modes_help, train_mode

__all__ = [
    "train", "TrainSettings", "TrainResult", "TrainProgress", "Start", "Target", "INIT_CHOICES", "initial_direction",
    "random_initial_direction", "training_memory", "target_pictures", "first_picture", "target_embedding",
    "embed_faces", "essence_losses", "autocast_for",
    "train_essence", "EssenceJob", "TrainedEssence", "trained_direction", "encoder_for_start",
    "TRAIN_MODES", "TrainMode", "train_mode", "DEFAULT_MODE", "modes_help",
    "CandidateChoice", "CandidateScore", "candidate_starts", "training_starts", "choose_candidate", "metric_scorer",
    "objective_scorer", "train_best_candidate",
    "DirectionMetrics", "StrengthCurve", "StrengthRecommendation", "evaluate_direction", "strength_curve",
    "recommend_strength", "parse_strengths", "seam_energy", "paste_seams", "mean_std", "metrics_table", "plot_curves", "official_summary",
    "DEFAULT_MIN_IDENTITY", "DEFAULT_STRENGTH", "DEFAULT_STRENGTHS", "PROTOCOLS",
]
