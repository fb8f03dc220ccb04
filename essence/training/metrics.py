"""Measuring a direction: how much of the target it carries, and what it costs the face.

TargetCLIP's users cannot tell a good essence from a failed one by its loss; the paper measured
its directions on held-out faces, and this module does the same, on any faces the caller gives
(W+ latents: seeded samples or inversions of the user's photos, not the training sources unless
asked). Every score is a cosine similarity x100, per face, with its mean and (population, as
numpy's) standard deviation over the faces:

* **target similarity**: CLIP cosine between the edited face and the target, both through CLIP's
  own preprocessing (bicubic resize, centre crop, mean/std) as the paper's
  ``experiments/calc_metrics.py`` does; the edited face is the 8-bit image a user would save.
* **identity preservation**: ArcFace (IR-SE-50) cosine between each edited face and its unedited
  source. Needs an identity model (``essence.load_identity``); without one it is absent.
* **target identity**: ArcFace cosine between the edited faces and the target's face, when the
  target has one (found and FFHQ-aligned with ``essence.faces.align``; a cartoon or a failed detection
  leaves it absent, with a note saying why).
* **consistency**: how similarly the direction moves different faces in CLIP space, the training's
  consistency term (``essence.training.essence_losses``) read as a score: for face i, the mean cosine
  between its CLIP move ``n(n(e_src_i) - n(e_edit_i))`` and every other face's, so the mean over
  faces is ``100 * (1 - L_consistency)``. Undefined (absent) for fewer than two faces or when the
  direction does not move the faces (strength 0).
* **source similarity**: CLIP cosine between the edited face and its source: the documented proxy
  for identity preservation when no identity model is given (see ``StrengthCurve.recommend``).

Two protocols:

* ``"corrected"`` (default): both faces reach ArcFace in [-1, 1], the range it was trained on;
  identity is measured against the unedited rendering of the same latent, so strength 0 scores 100
  and only the edit's cost is counted; the default strength is 1.0.
* ``"official"`` reproduces ``experiments/calc_metrics.py`` for comparing with the paper, quirks
  included: the edited image reaches ArcFace in [0, 1] (it is read back with ``ToTensor``) while the
  source and the target are in [-1, 1]; identity is measured against the source *photos* when the
  caller gives them (``source_images``: the paper compared with the real photos, so inversion error
  counts too), else against the unedited rendering; the default strength is 1.2, the coefficient the
  authors used for new faces. (The paper's standard deviations are over targets, not faces: the CLI
  prints that row when it evaluates several directions.)

Everything renders through ``essence.render`` (batched, out-of-memory safe) a chunk of faces
at a time, so memory stays bounded however many faces are measured.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import EssenceError, FaceNotFoundError, MissingWeightsError, ShapeError, require_finite
from ..faces import MASKS, align_face, load_image, model_to_pil, paste_back, paste_mask, pil_to_model
from ..latents import Direction, LatentSet, apply_direction
from ..networks import DEFAULT_BATCH, ClipGuide, StyleGAN2Generator, render, to_unit
from ..storage import utc_now
from ..version import __version__
from .target import TargetLike, TrainingTarget

Protocol = Literal["corrected", "official"]
PROTOCOLS: dict[str, str] = {
    "corrected": "ArcFace sees both faces in [-1, 1]; identity against the unedited rendering; strength 1.0",
    "official": "as TargetCLIP's calc_metrics.py: edited face to ArcFace in [0, 1], source in [-1, 1]; "
                "identity against the source photos when given; strength 1.2",
}
DEFAULT_STRENGTH = {"corrected": 1.0, "official": 1.2}
DEFAULT_STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
# Identity preservation must stay at least halfway between "another person" and "the same face".
# ArcFace embeds different people near-orthogonally (cosine about 0; verification thresholds sit at
# about 0.3-0.4), so halfway is 50: a face still recognised as its source by a wide margin.
DEFAULT_MIN_IDENTITY = 50.0
FACES_PER_CHUNK = 8  # faces rendered and embedded before their images are dropped (1024 px: 100 MB)
METRICS = ("target_similarity", "identity", "target_identity", "consistency", "source_similarity")
LABELS = {"target_similarity": "target similarity", "identity": "identity preservation",
          "target_identity": "target identity", "consistency": "consistency",
          "source_similarity": "source similarity (CLIP)"}


@dataclass
class DirectionMetrics:
    """The scores of one direction at one strength: per-face lists (x100), None where not measured."""

    strength: float
    protocol: str
    faces: int
    target_similarity: list[float]
    source_similarity: list[float]
    identity: list[float] | None = None
    target_identity: list[float] | None = None
    consistency: list[float] | None = None
    notes: list[str] = field(default_factory=list)

    def values(self, metric: str) -> list[float] | None:
        if metric not in METRICS:
            raise EssenceError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}.")
        return getattr(self, metric)

    def mean(self, metric: str) -> float | None:
        values = self.values(metric)
        return float(np.mean(values)) if values else None

    def std(self, metric: str) -> float | None:
        values = self.values(metric)
        return float(np.std(values)) if values else None

    def summary(self) -> dict[str, dict[str, float] | None]:
        """{metric: {"mean", "std"}} (None for the metrics not measured)."""
        return {m: ({"mean": self.mean(m), "std": self.std(m)} if self.values(m) else None) for m in METRICS}

    def to_dict(self) -> dict[str, Any]:
        return {"strength": self.strength, "protocol": self.protocol, "faces": self.faces,
                "summary": self.summary(), "per_face": {m: self.values(m) for m in METRICS}, "notes": self.notes}


@dataclass
class StrengthRecommendation:
    """The strength ``recommend`` chose, and why (what ``Direction.with_auto_strength`` stores)."""

    strength: float
    basis: Literal["identity", "clip-proxy"]
    threshold: float
    met_threshold: bool
    target_similarity: float
    preservation: float
    protocol: str
    faces: int
    strengths: list[float]
    note: str

    def metadata(self) -> dict[str, Any]:
        """The direction file's ``auto_strength`` entry."""
        return {"value": self.strength, "basis": self.basis, "threshold": round(self.threshold, 3),
                "met_threshold": self.met_threshold, "target_similarity": round(self.target_similarity, 3),
                "preservation": round(self.preservation, 3), "protocol": self.protocol, "faces": self.faces,
                "strengths": self.strengths, "note": self.note, "evaluated": utc_now(),
                "essence_version": __version__}


@dataclass
class StrengthCurve:
    """One direction measured over a strength sweep (``points`` in ascending strength)."""

    name: str
    points: list[DirectionMetrics]
    clip_baseline: float | None  # mean CLIP cosine x100 between different unedited faces
    has_identity: bool
    notes: list[str] = field(default_factory=list)

    @property
    def strengths(self) -> list[float]:
        return [p.strength for p in self.points]

    @property
    def protocol(self) -> str:
        return self.points[0].protocol

    def preservation_metric(self) -> str:
        """``identity`` with an identity model, else the proxy ``source_similarity``."""
        return "identity" if self.has_identity else "source_similarity"

    def default_threshold(self) -> float:
        """50 for ArcFace identity (``DEFAULT_MIN_IDENTITY``). For the CLIP proxy the same rule,
        halfway between another person and the same face, with "another person" measured on the
        held-out faces themselves (CLIP embeds all faces close together, so a fixed number would
        not transfer between CLIP models)."""
        if self.has_identity:
            return DEFAULT_MIN_IDENTITY
        if self.clip_baseline is None:
            raise EssenceError("the identity proxy needs at least two faces to measure how alike different "
                               "faces are in CLIP space; evaluate on more faces, or give an identity model.")
        return (self.clip_baseline + 100.0) / 2

    def recommend(self, min_identity: float | None = None) -> StrengthRecommendation:
        """The strength with the highest mean target similarity among those (> 0) whose mean identity
        preservation (or its proxy) is at least ``min_identity`` (default ``default_threshold()``);
        ties go to the smaller strength. When no strength qualifies, the smallest positive one, with
        ``met_threshold`` False and a note."""
        metric = self.preservation_metric()
        threshold = self.default_threshold() if min_identity is None else float(min_identity)
        require_finite(threshold, "the identity threshold")
        candidates = [p for p in self.points if p.strength > 0]
        if not candidates:
            raise EssenceError("choosing a strength needs at least one strength above 0 in the sweep.")
        allowed = [p for p in candidates if p.mean(metric) >= threshold]
        basis = "identity" if self.has_identity else "clip-proxy"
        what = ("ArcFace identity preservation" if self.has_identity else
                "CLIP similarity to the unedited face (a proxy for identity: no identity model was given)")
        if allowed:
            best = max(allowed, key=lambda p: (p.mean("target_similarity"), -p.strength))
            note = (f"highest target similarity with {what} at least {threshold:.1f} "
                    f"({len(allowed)} of {len(candidates)} strengths qualified)")
        else:
            best = min(candidates, key=lambda p: p.strength)
            note = (f"{what} falls below {threshold:.1f} at every strength tried; this is the smallest one. "
                    f"Try smaller strengths, or a lower threshold")
        return StrengthRecommendation(
            strength=best.strength, basis=basis, threshold=threshold, met_threshold=bool(allowed),
            target_similarity=best.mean("target_similarity"), preservation=best.mean(metric),
            protocol=self.protocol, faces=best.faces, strengths=self.strengths, note=note)

    def to_dict(self) -> dict[str, Any]:
        return {"direction": self.name, "protocol": self.protocol, "identity_model": self.has_identity,
                "clip_baseline": self.clip_baseline, "notes": self.notes,
                "points": [p.to_dict() for p in self.points]}

    def plot(self, recommendation: StrengthRecommendation | None = None) -> Image.Image:
        return plot_curves([self], [recommendation] if recommendation else None)


# ----------------------------------------------------------------------------- measuring


def evaluate_direction(direction: Direction, generator: StyleGAN2Generator, guide: ClipGuide, target: TargetLike,
                       faces: LatentSet | torch.Tensor, strength: float | None = None, identity: Any = None,
                       protocol: Protocol = "corrected", *, landmarks: Any = None,
                       source_images: Sequence[Any] | None = None, batch_size: int = DEFAULT_BATCH,
                       between_batches: Any = None) -> DirectionMetrics:
    """The metrics of ``direction`` at one ``strength`` (default: the protocol's, 1.0 or 1.2).

    target: the target picture(s) (PIL, path, or ComfyUI IMAGE [B, H, W, C]) or a ``TrainingTarget``;
        several pictures of one target are averaged in CLIP space as training does; the first is used
        for target identity.
    faces: W+ latents [N, n_latent, D] (a tensor or ``LatentSet``): held-out faces.
    identity: an identity model (``essence.load_identity``) or None (identity metrics absent).
    landmarks: the dlib landmark model (or its file) used to align the target's face for target
        identity (default: looked up; without it target identity is absent, with a note).
    source_images: the photos ``faces`` were inverted from (aligned crops), one per face: only the
        official protocol uses them (see the module docstring).
    """
    chosen = DEFAULT_STRENGTH[_checked_protocol(protocol)] if strength is None else strength
    return strength_curve(direction, generator, guide, target, faces, [chosen], identity, protocol,
                          landmarks=landmarks, source_images=source_images, batch_size=batch_size,
                          between_batches=between_batches).points[0]


def strength_curve(direction: Direction, generator: StyleGAN2Generator, guide: ClipGuide, target: TargetLike,
                   faces: LatentSet | torch.Tensor, strengths: Sequence[float] = DEFAULT_STRENGTHS,
                   identity: Any = None, protocol: Protocol = "corrected", *, landmarks: Any = None,
                   source_images: Sequence[Any] | None = None, batch_size: int = DEFAULT_BATCH,
                   between_batches: Any = None) -> StrengthCurve:
    """``evaluate_direction`` at every strength (sorted ascending); the unedited faces are rendered
    and embedded once for the whole sweep. Arguments as ``evaluate_direction``."""
    _checked_protocol(protocol)
    values = sorted({float(s) for s in strengths})
    if not values:
        raise EssenceError("give at least one strength to evaluate.")
    require_finite(values, "the strengths")
    direction.check_fits(generator)
    latents = _face_latents(faces, generator)
    if source_images is not None and len(source_images) != len(latents):
        raise ShapeError(f"source_images must hold one photo per face ({len(latents)}), got {len(source_images)}.")
    target = TrainingTarget.read(target)
    measure = _Measure(generator, guide, identity, protocol, batch_size, between_batches)
    notes: list[str] = []
    with torch.no_grad():
        target_clip = target.embedding(guide).float().cpu()
        target_face = measure.target_face(target.shown, landmarks, notes) if identity is not None else None
        if identity is None:
            notes.append("identity metrics absent: no identity model (ArcFace model_ir_se50.pth) was given")
        photos = source_images if protocol == "official" else None
        source = measure.embed(latents, reference_photos=photos)
        points = [measure.score(latents, direction, s, source, target_clip, target_face, notes) for s in values]
    return StrengthCurve(direction.name, points, _clip_baseline(source["clip"]), identity is not None, notes)


def recommend_strength(direction: Direction, generator: StyleGAN2Generator, guide: ClipGuide, target: TargetLike,
                       faces: LatentSet | torch.Tensor, strengths: Sequence[float] = DEFAULT_STRENGTHS,
                       identity: Any = None, min_identity: float | None = None,
                       protocol: Protocol = "corrected", **kwargs: Any) -> StrengthRecommendation:
    """The strength that maximises target similarity while identity preservation stays at least
    ``min_identity`` (default 50 with an identity model; without one, the CLIP proxy and its own
    threshold, see ``StrengthCurve.recommend``). Other arguments as ``strength_curve``."""
    curve = strength_curve(direction, generator, guide, target, faces, strengths, identity, protocol, **kwargs)
    return curve.recommend(min_identity)


def parse_strengths(text: str, what: str = "strengths") -> list[float]:
    """"0, 0.5, 1.2" -> [0.0, 0.5, 1.2] (finite numbers, at least one): strengths typed as text, in a
    node's field or after a command's option (``what`` names it in the message)."""
    try:
        values = [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise EssenceError(f"{what} must be comma-separated numbers, e.g. 0,0.5,1; got {text!r}.") from None
    if not values:
        raise EssenceError(f"{what} needs at least one number, e.g. 0,0.5,1.")
    require_finite(values, what)
    return values


def _checked_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise EssenceError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}.")
    return protocol


def _face_latents(faces: LatentSet | torch.Tensor, generator: StyleGAN2Generator) -> torch.Tensor:
    latents = faces.latents if isinstance(faces, LatentSet) else faces
    if not isinstance(latents, torch.Tensor):
        raise EssenceError(f"faces must be W+ latents (a tensor or LatentSet), got {type(faces).__name__}.")
    latents = generator.to_wplus(latents.detach().float().cpu())
    require_finite(latents, "the faces' latents", fix="Invert or sample those faces again.")
    return latents




def _clip_baseline(clip_units: torch.Tensor) -> float | None:
    """Mean CLIP cosine x100 between different faces (None for a single face)."""
    count = clip_units.shape[0]
    if count < 2:
        return None
    sims = clip_units @ clip_units.t()
    return float((sims.sum() - sims.diagonal().sum()) / (count * count - count) * 100)


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    return to_unit(x.float()).cpu()


class _Measure:
    """Renders faces a chunk at a time and embeds the 8-bit images with CLIP (and ArcFace)."""

    def __init__(self, generator, guide, identity, protocol: str, batch_size: int, between_batches) -> None:
        self.generator, self.guide, self.identity = generator, guide, identity
        self.protocol, self.batch_size, self.between_batches = protocol, batch_size, between_batches

    def _identity_embed(self, pixels: torch.Tensor) -> torch.Tensor:
        device = next(self.identity.parameters()).device
        return _unit_rows(self.identity.embed(pixels.to(device)))

    def _edited_identity(self, images: list[Image.Image]) -> torch.Tensor:
        """ArcFace of edited faces: [-1, 1], or [0, 1] in the official protocol (its quirk)."""
        pixels = pil_to_model(images)
        return self._identity_embed((pixels + 1) / 2 if self.protocol == "official" else pixels)

    def _images(self, latents: torch.Tensor) -> list[Image.Image]:
        rendered = render(self.generator, latents, self.batch_size, what="faces to measure",
                          between_batches=self.between_batches)
        return model_to_pil(rendered)  # the 8-bit pictures a user would save (and the paper read back)

    def embed(self, latents: torch.Tensor, reference_photos: Sequence[Any] | None = None) -> dict[str, Any]:
        """The unedited faces: CLIP units, ArcFace units as a reference (source) and as an edit (what
        strength 0 scores), all [N, C] on the CPU."""
        clip, ref, as_edit = [], [], []
        for start in range(0, len(latents), FACES_PER_CHUNK):
            images = self._images(latents[start:start + FACES_PER_CHUNK])
            clip.append(_unit_rows(self.guide.embed_target(images)))
            if self.identity is not None:
                photos = reference_photos[start:start + FACES_PER_CHUNK] if reference_photos is not None else None
                as_edit.append(self._edited_identity(images))
                if photos is None and self.protocol != "official":  # the same pixels: ArcFace once
                    ref.append(as_edit[-1])
                else:
                    ref.append(self._identity_embed(pil_to_model([load_image(p) for p in photos]) if photos is not None
                                                    else pil_to_model(images)))
        out: dict[str, Any] = {"clip": torch.cat(clip)}
        if self.identity is not None:
            out["identity"], out["identity_as_edit"] = torch.cat(ref), torch.cat(as_edit)
        return out

    def _edited(self, latents: torch.Tensor, direction: Direction, strength: float) -> dict[str, torch.Tensor]:
        clip, ids = [], []
        for start in range(0, len(latents), FACES_PER_CHUNK):
            edited = apply_direction(latents[start:start + FACES_PER_CHUNK], direction, strength)
            images = self._images(edited)
            clip.append(_unit_rows(self.guide.embed_target(images)))
            if self.identity is not None:
                ids.append(self._edited_identity(images))
        return {"clip": torch.cat(clip), "identity": torch.cat(ids) if ids else None}

    def score(self, latents, direction, strength: float, source, target_clip, target_face,
              notes: list[str]) -> DirectionMetrics:
        if strength == 0:  # the unedited faces themselves: no second rendering
            edited = {"clip": source["clip"], "identity": source.get("identity_as_edit")}
        else:
            edited = self._edited(latents, direction, strength)
        point = DirectionMetrics(
            strength=strength, protocol=self.protocol, faces=len(latents),
            target_similarity=_x100(edited["clip"] @ target_clip.t()),
            source_similarity=_x100((edited["clip"] * source["clip"]).sum(-1)),
            consistency=_consistency(source["clip"], edited["clip"], strength, notes),
            notes=list(notes))
        if edited["identity"] is not None:
            point.identity = _x100((edited["identity"] * source["identity"]).sum(-1))
            if target_face is not None:
                point.target_identity = _x100(edited["identity"] @ target_face.t())
        return point

    def target_face(self, picture: Any, landmarks: Any, notes: list[str]) -> torch.Tensor | None:
        """ArcFace unit embedding [1, 512] of the largest face in the target's ``picture``
        (``TrainingTarget.shown``), FFHQ-aligned; None (and a note) when the target has no face a
        detector finds, no picture, or no landmark model installed."""
        if picture is None:
            notes.append("target identity absent: the target was given as a CLIP embedding, without a picture")
            return None
        try:
            face = align_face(picture, 256, landmarks=landmarks)
        except FaceNotFoundError:
            notes.append("target identity absent: no face found in the target (a cartoon or a painting?)")
            return None
        except MissingWeightsError:
            notes.append("target identity absent: the dlib landmark model needed to align the target's "
                         "face is not installed")
            return None
        return self._identity_embed(pil_to_model(face.crop))


def _x100(values: torch.Tensor) -> list[float]:
    return [float(v) * 100 for v in values.flatten()]


def _consistency(src: torch.Tensor, edited: torch.Tensor, strength: float, notes: list[str]) -> list[float] | None:
    """Per face: mean cosine x100 between its CLIP move and every other face's (the training's
    consistency term as a score); None for one face or when the faces do not move."""
    count = src.shape[0]
    if count < 2:
        _note(notes, "consistency absent: it compares the moves of at least two faces")
        return None
    moves = src - edited
    norms = moves.norm(dim=-1, keepdim=True)
    if strength == 0 or bool((norms <= 1e-6).any()):
        return None  # nothing moved: "how alike are the moves" has no answer
    deltas = moves / norms
    sims = deltas @ deltas.t()
    per_face = (sims.sum(-1) - sims.diagonal()) / (count - 1)
    return _x100(per_face)


def _note(notes: list[str], text: str) -> None:
    if text not in notes:
        notes.append(text)


# ----------------------------------------------------------------------------- presenting


# ----------------------------------------------------------------------------- seams

SEAM_BAND = (0.02, 0.98)  # the blend weights that make the band where an edit meets its photo


def seam_energy(original: Any, pasted: Any, weights: torch.Tensor) -> float:
    """How much a paste changes the picture where the edit meets the photo: over the blend's
    transition band (weights between ``SEAM_BAND``), the mean squared luminance gradient of the
    change (pasted minus original), over that of the original itself. 0 means the band is
    untouched; a box edge through a background the generator redrew gives far more than an edge
    that follows the face. ``weights`` is ``paste_mask``'s [H, W] for the paste."""
    band = (weights > SEAM_BAND[0]) & (weights < SEAM_BAND[1])
    if not band.any():
        raise EssenceError("the paste has no soft edge to measure (feather 0, or no overlap with the photo).")
    before = _luminance(original)
    change = _gradient_energy(_luminance(pasted) - before)
    return float(change[band].mean() / _gradient_energy(before)[band].mean().clamp_min(1e-8))


def paste_seams(direction: Direction, generator: StyleGAN2Generator, photos: Sequence[Any], faces: Sequence[Any],
                latents: torch.Tensor, strength: float, feather: float = 0.1) -> dict[str, float]:
    """The mean ``seam_energy`` of ``direction`` at ``strength`` pasted into ``photos`` (one per face
    of ``faces``, their ``AlignedFace``s, whose ``latents`` these are) with each mask kind."""
    with torch.no_grad():
        renders = model_to_pil(render(generator, apply_direction(latents, direction, strength)))
    seams: dict[str, list[float]] = {kind: [] for kind in MASKS}
    for photo, face, image in zip(photos, faces, renders):
        original = load_image(photo)
        for kind in MASKS:
            pasted = paste_back(original, image, face.transform, feather, kind)
            seams[kind].append(seam_energy(original, pasted, paste_mask(face.transform, feather, kind)))
    return {kind: float(np.mean(values)) for kind, values in seams.items()}


def _luminance(image: Any) -> torch.Tensor:
    """An RGB picture's luminance [H, W] in 0..1."""
    pixels = torch.from_numpy(np.asarray(load_image(image), dtype=np.float32) / 255.0)
    return pixels @ torch.tensor([0.299, 0.587, 0.114])


def _gradient_energy(luma: torch.Tensor) -> torch.Tensor:
    """Squared gradient [H, W] (forward differences) of a luminance image."""
    dx = torch.zeros_like(luma)
    dy = torch.zeros_like(luma)
    dx[:, :-1] = luma[:, 1:] - luma[:, :-1]
    dy[:-1, :] = luma[1:, :] - luma[:-1, :]
    return dx.square() + dy.square()


def mean_std(mean: float, std: float) -> str:
    """How every report writes a metric over faces (x100): ``mean ± std``."""
    return f"{mean:.2f} ± {std:.2f}"


def metrics_table(curves: Sequence[StrengthCurve], recommendations: Sequence[StrengthRecommendation | None] = ()
                  ) -> str:
    """A plain-text table: one row per direction and strength, ``mean ± std`` per metric (x100)."""
    shown = [m for m in METRICS if any(p.values(m) for c in curves for p in c.points)]
    header = ["direction", "strength", *(LABELS[m] for m in shown)]
    rows = [header]
    for curve in curves:
        for point in curve.points:
            cells = [mean_std(point.mean(m), point.std(m)) if point.values(m) else "-" for m in shown]
            rows.append([curve.name, f"{point.strength:g}", *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    for curve, rec in zip(curves, recommendations):
        if rec is not None:
            lines.append(f"{curve.name}: recommended strength {rec.strength:g} ({rec.note})")
    notes = sorted({n for c in curves for n in c.notes})
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def plot_curves(curves: Sequence[StrengthCurve], recommendations: Sequence[StrengthRecommendation | None] | None = None,
                size: tuple[float, float] = (7.0, 4.5), dpi: int = 100) -> Image.Image:
    """Target similarity (solid, left axis) and identity preservation or its CLIP proxy (dashed,
    right axis) against strength, one colour per direction, mean ± std bands; the threshold and the
    recommended strength when given. An RGB PIL image, drawn off-screen (matplotlib's Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(figure)
    left = figure.add_subplot(1, 1, 1)
    right = left.twinx()
    colours = [f"C{i % 10}" for i in range(len(curves))]
    recommendations = list(recommendations or [None] * len(curves))
    for curve, colour, rec in zip(curves, colours, recommendations):
        x = np.array(curve.strengths)
        for axis, metric, style in ((left, "target_similarity", "-"), (right, curve.preservation_metric(), "--")):
            mean = np.array([p.mean(metric) for p in curve.points], dtype=float)
            std = np.array([p.std(metric) for p in curve.points], dtype=float)
            axis.plot(x, mean, style, color=colour, marker="o", markersize=3,
                      label=f"{curve.name}: {LABELS[metric]}")
            axis.fill_between(x, mean - std, np.minimum(mean + std, 100.0), color=colour, alpha=0.12)  # cosines <= 1
        if rec is not None:
            right.axhline(rec.threshold, color=colour, linestyle=":", linewidth=1)
            left.axvline(rec.strength, color=colour, linestyle=":", linewidth=1.5,
                         label=f"{curve.name}: recommended {rec.strength:g}")
    left.set_xlabel("strength")
    left.set_ylabel("target similarity (CLIP cosine x100)")
    proxy = any(not c.has_identity for c in curves)
    right.set_ylabel("source similarity (CLIP, identity proxy) x100" if proxy else "identity preservation (ArcFace x100)")
    handles = left.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    left.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="best")
    left.set_title(f"Essence strength curve ({curves[0].protocol} protocol)" if curves else "Essence strength curve")
    left.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def official_summary(curves: Sequence[StrengthCurve], strength: float) -> dict[str, dict[str, float]] | None:
    """The paper's table row: for each metric, the mean over directions of their mean at ``strength``
    and the standard deviation of those means (the paper's std is over targets)."""
    rows = [p for c in curves for p in c.points if math.isclose(p.strength, strength)]
    if len(rows) < 2:
        return None
    out = {}
    for metric in METRICS:
        means = [p.mean(metric) for p in rows if p.values(metric)]
        if len(means) == len(rows):
            out[metric] = {"mean": float(np.mean(means)), "std": float(np.std(means))}
    return out
