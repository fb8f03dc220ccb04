"""Training: TargetCLIP's optimisation of an essence direction, its modes, candidates and metrics.

- ``target``: ``TrainingTarget``, a target's pictures read once and its CLIP embedding computed once per guide;
- ``start``: where training starts (``initial_direction``: the e4e inversion of the target, else random);
- ``loop``: the optimisation (``TrainSettings``, ``TrainResult``; the ``official``, ``fast``, ``graph`` loops);
- ``job``: ``train``, the one training call every front end makes (``EssenceJob``), and what its directions record;
- ``adam``: Adam's updates with no host value, for the ``graph`` loop;
- ``modes``: ``TRAIN_MODES``, the named trade-offs between exactness, speed and memory;
- ``candidates``: several directions per target, trained together, and the best one chosen;
- ``metrics``: a direction measured on held-out faces, strength curves and the recommended strength.
"""

from .candidates import (CandidateChoice, CandidateScore, Selection, candidate_starts, choose_candidate, metric_scorer,
                         objective_scorer, training_starts)
from .job import EssenceJob, TrainedEssence, train, trained_direction
from .loop import TrainProgress, TrainResult, TrainSettings, autocast_for, embed_faces, essence_losses, training_memory
from .metrics import (DEFAULT_MIN_IDENTITY, DEFAULT_STRENGTH, DEFAULT_STRENGTHS, PROTOCOLS, DirectionMetrics,
                      StrengthCurve, StrengthRecommendation, evaluate_direction, mean_std, metrics_table,
                      official_summary, parse_strengths, paste_seams, plot_curves, recommend_strength, seam_energy,
                      strength_curve)
from .modes import DEFAULT_MODE, TRAIN_MODES, TrainMode, modes_help, train_mode
from .start import INIT_CHOICES, NamedStart, Start, encoder_for_start, initial_direction, random_initial_direction
from .target import TargetLike, TrainingTarget

__all__ = [
    "train", "EssenceJob", "TrainedEssence", "NamedStart", "trained_direction", "encoder_for_start",
    "TrainingTarget", "TargetLike",
    "TrainSettings", "TrainResult", "TrainProgress", "Start", "INIT_CHOICES", "initial_direction",
    "random_initial_direction", "training_memory", "embed_faces", "essence_losses", "autocast_for",
    "TRAIN_MODES", "TrainMode", "train_mode", "DEFAULT_MODE", "modes_help",
    "CandidateChoice", "CandidateScore", "Selection", "candidate_starts", "training_starts", "choose_candidate",
    "metric_scorer", "objective_scorer",
    "DirectionMetrics", "StrengthCurve", "StrengthRecommendation", "evaluate_direction", "strength_curve",
    "recommend_strength", "parse_strengths", "seam_energy", "paste_seams", "mean_std", "metrics_table", "plot_curves", "official_summary",
    "DEFAULT_MIN_IDENTITY", "DEFAULT_STRENGTH", "DEFAULT_STRENGTHS", "PROTOCOLS",
]
