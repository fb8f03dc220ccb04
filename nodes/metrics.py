"""Essence Metrics: measure an essence on faces over a strength sweep (``essence.training.metrics``)."""

from __future__ import annotations

import json
from typing import Any

import torch

from .. import essence
from ..essence.faces import pil_to_comfy
from ..essence.training import (DEFAULT_MIN_IDENTITY, DEFAULT_STRENGTHS, PROTOCOLS, metrics_table, parse_strengths,
                                strength_curve)
from . import host
from . import types as T
from .inputs import choice, link, number, text

CATEGORY = "essence/directions"


class EssenceMetrics:
    """Measure an essence and pick its strength."""

    DESCRIPTION = ("Measures an essence on the given faces at several strengths, as the TargetCLIP paper did: CLIP "
                   "similarity to the target, ArcFace identity preservation and target identity (with an identity "
                   "model), and how consistently it moves different faces. Picks the strength with the best target "
                   "similarity that keeps identity, and records it in the essence (Apply Essence's auto strength).")
    CATEGORY = CATEGORY
    FUNCTION = "measure"
    RETURN_TYPES = (T.DIRECTION, "STRING", "STRING", "IMAGE")
    RETURN_NAMES = ("direction", "report", "json", "plot")
    OUTPUT_TOOLTIPS = (
        "The same essence with its recommended strength recorded (Apply Essence with auto strength uses it; "
        "Save Essence keeps it).",
        "The metrics as a table (mean ± std over the faces, x100) and the recommended strength.",
        "Every number as JSON: per face, per strength, and the recommendation.",
        "Target similarity and identity preservation (or its CLIP proxy) against strength.",
    )

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "generator": link(T.GENERATOR, "The generator the essence and the faces belong to."),
                "guide": link(T.GUIDE, "CLIP, to compare the edited faces with the target."),
                "direction": link(T.DIRECTION, "The essence to measure."),
                "target": link("IMAGE", "The target picture(s) the essence was trained on."),
                "latents": link(T.LATENT, "Held-out faces to measure on (not the training sources): samples or "
                                          "inverted photos; at least 2 for consistency and the identity proxy."),
                "strengths": text(",".join(f"{s:g}" for s in DEFAULT_STRENGTHS),
                                  "Comma-separated strengths to measure at (0 = the unedited faces)."),
                "protocol": choice(list(PROTOCOLS), "; ".join(f"{k}: {v}" for k, v in PROTOCOLS.items()), "corrected"),
                "min_identity": number(DEFAULT_MIN_IDENTITY, 0.0, 100.0,
                                       "Identity preservation (ArcFace cosine x100) the recommended strength must "
                                       "keep. Without an identity model the CLIP proxy uses its own threshold "
                                       "(halfway between the faces' mutual similarity and 100) and this is ignored.",
                                       0.5),
            },
            "optional": {
                "identity": link(T.IDENTITY, "ArcFace (Load Identity Model): enables identity preservation and "
                                             "target identity; without it a CLIP proxy picks the strength."),
                "landmarks": link(T.LANDMARKS, "Face landmarks, to align the target's face for target identity "
                                               "(default: found automatically when installed)."),
            },
        }

    def measure(self, generator: essence.networks.StyleGAN2Generator, guide: essence.networks.ClipGuide, direction: essence.Direction,
                target: torch.Tensor, latents: essence.LatentSet, strengths: str, protocol: str, min_identity: float,
                identity: Any = None, landmarks: Any = None) -> tuple[Any, str, str, torch.Tensor]:
        values = parse_strengths(strengths)
        models = [generator, guide] + ([identity] if identity is not None else [])
        with host.models_on_compute_device(*models):
            curve = strength_curve(direction, generator, guide, target, latents, values, identity, protocol,
                                   landmarks=landmarks, between_batches=host.check_interrupt)
        rec = curve.recommend(min_identity if identity is not None else None)
        report = metrics_table([curve], [rec])
        data = json.dumps({**curve.to_dict(), "recommended": rec.metadata()}, indent=1)
        plot = pil_to_comfy(curve.plot(rec)).to(host.intermediate_device())
        return direction.with_auto_strength(rec.metadata()), report, data, plot
