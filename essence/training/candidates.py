"""Several candidate directions per target: where they start, and how the best one is chosen.

TargetCLIP's authors note that some starts fail and train several directions per target, keeping the best
by hand. Here the candidates train together (``essence.train`` with ``EssenceJob.candidates`` or several
starts: one batched optimisation, each candidate exactly as it would train alone), start from the
target's inversion, perturbations of it and seeded random latents (``candidate_starts``), and are ranked
by a score on held-out faces that were not trained on (``choose_candidate``). The score is a parameter:
any ``Scorer`` (a direction -> a number or a ``CandidateScore``, higher is better) can replace the
default.

The default score, ``metric_scorer``, is the paper's measure (``essence.training.metrics``) on
``HELDOUT_FACES`` seeded held-out faces: each candidate's strength curve over
``SELECTION_STRENGTHS`` gives its recommended strength (``StrengthCurve.recommend``: the highest
target similarity whose identity preservation stays at or above the threshold). A candidate that
meets the threshold there scores its target similarity (CLIP cosine x100, in [-100, 100]); one that
meets it at no strength scores ``BELOW_THRESHOLD`` (-1000) plus its preservation at the smallest
strength, so every candidate that keeps identity outranks every one that does not, and those that
do not are ordered by how much identity they keep. Identity preservation is ArcFace's (threshold
``DEFAULT_MIN_IDENTITY``, 50) when an identity model is given, else the metrics module's CLIP proxy
(similarity to the unedited face, with its own threshold); the method in the metadata says which.
The chosen direction keeps its recommended strength (``auto_strength``), so ``--strength auto``
works right after training.

The older proxy, ``objective_scorer``, needs neither an identity model nor a strength sweep: the
training objective itself, ``lambda_transfer * L_transfer + lambda_consistency * L_consistency``, on seeded
held-out faces with every per-source coefficient 1 (the direction at strength 1), negated so that
higher is better. It rewards looking like the target and changing every face the same way; it does
not measure whether a face keeps its identity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from ..errors import EssenceError
from ..latents import Direction
from ..networks import ClipGuide, StyleGAN2Generator
from .loop import TrainSettings, embed_faces, essence_losses
from .metrics import LABELS, mean_std, strength_curve
from .start import INVERTED_NOTE, random_initial_direction
from .target import TrainingTarget


@dataclass
class CandidateScore:
    """A score with what it was measured from: ``metrics`` goes to the ``selection`` metadata,
    ``auto_strength`` (a ``StrengthRecommendation.metadata()``) becomes the recommended strength."""

    value: float
    metrics: dict[str, Any] = field(default_factory=dict)
    auto_strength: dict[str, Any] | None = None


Scorer = Callable[[Direction], "float | CandidateScore"]  # higher is better

PERTURBATION = 0.5  # how far a perturbed start moves from the inversion, as a share of a random face's offset
HELDOUT_SEED = 1_000_003  # held-out faces: a seed no CLI or node default trains on
HELDOUT_FACES = 4
SELECTION_STRENGTHS = (0.5, 0.75, 1.0, 1.25)  # few: each costs one render of the held-out faces per candidate
BELOW_THRESHOLD = -1000.0  # added to the preservation of a candidate that keeps identity at no strength
METRIC_METHOD = ("target similarity (CLIP cosine x100) at the recommended strength among {strengths} on {faces} "
                 "held-out random faces (seed {seed}), subject to {basis} at least the threshold; a candidate "
                 "below it at every strength scores {penalty:g} + its preservation; higher is better")
OBJECTIVE_METHOD = ("proxy: minus the training objective (lambda_transfer * transfer + lambda_consistency * "
                    "consistency) on {faces} held-out random faces (seed {seed}), coefficients 1; higher is "
                    "better; no identity model")


def candidate_starts(count: int, generator: StyleGAN2Generator, inversion: torch.Tensor | None = None, *,
                     seed: int = 0, truncation: float = 0.7,
                     perturbation: float = PERTURBATION) -> list[tuple[torch.Tensor, str]]:
    """``count`` starting directions [1, n_latent, D], each with a note for its metadata.

    With the target's ``inversion`` (TargetCLIP's start): start 0 is the inversion itself; after it,
    in turn, a perturbation of the inversion, ``inversion + perturbation * (w_i - w_avg)`` with
    ``w_i`` the seeded random start of seed ``seed + i`` (the inversion nudged toward another face),
    and that random start itself. Without an inversion (cartoons, no encoder): random starts of seeds
    ``seed, seed + 1, ...``; the first is the start ``train`` uses for ``init="random"``
    with ``TrainSettings(seed=seed)``. Random starts are truncated toward the mean face by
    ``truncation``, as TargetCLIP's fallback.
    """
    if count < 1:
        raise EssenceError(f"the number of candidates must be at least 1, got {count}.")
    if not (math.isfinite(perturbation) and perturbation >= 0):
        raise EssenceError(f"perturbation must be a finite number of at least 0, got {perturbation}.")
    starts: list[tuple[torch.Tensor, str]] = []
    if inversion is not None:
        starts.append((inversion.detach().clone(), INVERTED_NOTE))
    for i in range(len(starts), count):
        random = random_initial_direction(generator, seed + i, truncation)
        if inversion is not None and i % 2 == 1:
            offset = random - generator.latent_avg
            starts.append((inversion.detach().to(random.device) + perturbation * offset,
                           f"e4e inversion + {perturbation:g} x random offset (seed {seed + i})"))
        else:
            starts.append((random, f"random (seed {seed + i})"))
    return starts


def training_starts(count: int, generator: StyleGAN2Generator, init: torch.Tensor | str,
                    settings: TrainSettings) -> list[tuple[torch.Tensor, str]]:
    """``candidate_starts`` for a training that would start from ``init`` (the target's inversion,
    or ``"random"`` as ``initial_direction`` gives it), seeded and truncated as ``settings`` trains."""
    return candidate_starts(count, generator, None if isinstance(init, str) else init, seed=settings.seed,
                            truncation=settings.random_init_truncation)


def heldout_faces(generator: StyleGAN2Generator, count: int = HELDOUT_FACES, seed: int = HELDOUT_SEED,
                  truncation: float = 0.7) -> torch.Tensor:
    """Seeded random W+ faces [count, n_latent, D] to judge candidates on, apart from the training sources."""
    with torch.no_grad():
        return generator.sample_wplus(count, seed=seed, truncation=truncation).clone()


def objective_scorer(generator: StyleGAN2Generator, guide: ClipGuide, target: TrainingTarget, faces: torch.Tensor,
                     settings: TrainSettings = TrainSettings()) -> Scorer:
    """The proxy score (module docstring): minus the training objective on ``faces``, with every
    coefficient 1, seen as ``settings`` trains (CLIP preprocessing, render size, autocast). The
    faces are rendered once; each direction costs one pass over them (``chunk_size`` at a time)."""
    device = generator.latent_avg.device
    with torch.no_grad():
        unit_target = target.embedding(guide).to(device)
        faces = faces.detach().to(device, torch.float32)
        step = settings.chunk_size or faces.shape[0]
        e_src = torch.cat([embed_faces(part, generator, guide, settings) for part in faces.split(step)])

    def score(direction: Direction) -> float:
        with torch.no_grad():
            edited = faces + direction.tensor.to(device, torch.float32)
            e_amp = torch.cat([embed_faces(part, generator, guide, settings) for part in edited.split(step)])
            transfer, consistency = essence_losses(e_src, e_amp, unit_target)
            return -float(settings.lambda_transfer * transfer + settings.lambda_consistency * consistency)

    return score


def metric_scorer(generator: StyleGAN2Generator, guide: ClipGuide, target: TrainingTarget, faces: torch.Tensor,
                  identity: Any = None, strengths: Sequence[float] = SELECTION_STRENGTHS,
                  min_identity: float | None = None, *, landmarks: Any = None) -> Scorer:
    """The default score (module docstring): target similarity at the recommended strength,
    subject to identity preservation (ArcFace with ``identity``, else the CLIP proxy)."""

    def score(direction: Direction) -> CandidateScore:
        curve = strength_curve(direction, generator, guide, target, faces, strengths, identity,
                               landmarks=landmarks)
        recommendation = curve.recommend(min_identity)
        point = next(p for p in curve.points if p.strength == recommendation.strength)
        value = (recommendation.target_similarity if recommendation.met_threshold
                 else BELOW_THRESHOLD + recommendation.preservation)
        metrics = {"strength": recommendation.strength, "basis": recommendation.basis,
                   "threshold": round(recommendation.threshold, 3), "met_threshold": recommendation.met_threshold,
                   "summary": point.summary()}
        return CandidateScore(float(value), metrics, recommendation.metadata())

    return score


def metric_method(identity: Any, faces: int = HELDOUT_FACES, seed: int = HELDOUT_SEED,
                  strengths: Sequence[float] = SELECTION_STRENGTHS) -> str:
    """The sentence ``metric_scorer`` records as its method, naming the preservation measure used."""
    basis = ("ArcFace identity preservation" if identity is not None else
             "the CLIP proxy for identity preservation (similarity to the unedited face; no identity model)")
    return METRIC_METHOD.format(strengths=", ".join(f"{s:g}" for s in strengths), faces=faces, seed=seed,
                                basis=basis, penalty=BELOW_THRESHOLD)


@dataclass(frozen=True)
class Selection:
    """What to do with candidates trained together: rank them with ``scorer`` and keep the best.

    ``scorer`` defaults to ``metric_scorer`` on ``heldout_faces`` (ArcFace preservation with an
    ``identity`` model, else the CLIP proxy), or ``objective_scorer`` for a target known only by its
    embedding (no picture to measure target identity on); give ``method`` (a sentence for the
    metadata) with your own scorer (e.g. ``objective_scorer`` with ``OBJECTIVE_METHOD``).
    """

    scorer: Scorer | None = None
    method: str | None = None
    identity: Any = None

    def __post_init__(self) -> None:
        if self.scorer is not None and not self.method:
            raise EssenceError("a custom scorer needs a method: a sentence saying how it scores, for the metadata.")

    def ranker(self, generator: StyleGAN2Generator, guide: ClipGuide, target: TrainingTarget) -> tuple[Scorer, str]:
        """The scorer and the method sentence the candidates of ``target`` are ranked with."""
        if self.scorer is not None:
            return self.scorer, str(self.method)
        if target.pictures is None:
            return (objective_scorer(generator, guide, target, heldout_faces(generator)),
                    OBJECTIVE_METHOD.format(faces=HELDOUT_FACES, seed=HELDOUT_SEED))
        return metric_scorer(generator, guide, target, heldout_faces(generator), self.identity), \
            metric_method(self.identity)


@dataclass
class CandidateChoice:
    """How every candidate (in start order) scored, the ranking, and what each one's metadata records."""

    scores: list[float]
    ranking: list[int]  # candidate indices, best first
    method: str
    details: list[CandidateScore] = field(default_factory=list)

    @property
    def chosen(self) -> int:
        return self.ranking[0]

    def selection(self, index: int, starts: Sequence[str]) -> dict[str, Any]:
        """Candidate ``index``'s ``selection`` metadata: how it was chosen, its rank (1 = chosen),
        every candidate's score and start, and the scorer's metrics when it gave some."""
        record = {"method": self.method, "rank": self.ranking.index(index) + 1, "candidate": index,
                  "chosen": self.chosen, "scores": [round(s, 6) if math.isfinite(s) else None for s in self.scores],
                  "starts": list(starts)}
        if self.details[index].metrics:
            record["metrics"] = self.details[index].metrics
        return record

    def report(self, directions: Sequence[Direction]) -> list[str]:
        """How the candidates (their recorded ``directions``) scored, one line each (the chosen one
        marked), and the chosen one's metrics and recommended strength: what the CLI prints and the
        Train node outputs."""
        best = directions[self.chosen]
        lines = [f"Candidates, scored by {self.method}:"]
        for index, direction in enumerate(directions):
            mark = "  <- chosen" if index == self.chosen else ""
            lines.append(f"  {index}: score {self.scores[index]:.4f}, rank {self.ranking.index(index) + 1}, "
                         f"training loss {direction.meta['losses']['total']:.4f} ({direction.meta['init']}){mark}")
        metrics = self.details[self.chosen].metrics
        if metrics.get("summary"):
            lines.append(f"Chosen candidate at strength {metrics['strength']:g} (x100, mean ± std): " + ", ".join(
                f"{LABELS[name]} {mean_std(value['mean'], value['std'])}"
                for name, value in metrics["summary"].items() if value))
        if best.auto_strength is not None:
            lines.append(f"Recommended strength {best.auto_strength:g} stored (apply with strength 'auto'): "
                         f"{best.meta['auto_strength']['note']}.")
        return lines


def choose_candidate(directions: Sequence[Direction], scorer: Scorer, method: str) -> CandidateChoice:
    """Score every candidate and rank them (higher first; a score that is not a number ranks last;
    ties keep start order). A scorer returning ``CandidateScore`` adds each candidate's ``metrics``
    to its ``selection`` metadata and its recommended strength (``auto_strength``)."""
    if not directions:
        raise EssenceError("there are no candidates to choose from.")
    details = [s if isinstance(s, CandidateScore) else CandidateScore(float(s)) for s in map(scorer, directions)]
    scores = [float(d.value) for d in details]
    ranking = sorted(range(len(scores)), key=lambda i: (-scores[i] if math.isfinite(scores[i]) else math.inf, i))
    return CandidateChoice(scores, ranking, method, details)
