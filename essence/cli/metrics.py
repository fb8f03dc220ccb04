"""``essence evaluate``: measure directions on held-out faces, print a table, optionally write JSON,
a strength-curve plot, and (``--recommend``) the recommended strength into each direction file.
Registered by ``essence.cli``; the measuring itself is ``essence.training.metrics``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import EssenceError
from ..faces import load_landmarker
from ..latents import invert, load_direction, load_latents
from ..networks import load_encoder, load_generator, load_guide, load_identity
from ..storage import Output, atomic_write, check_files
from ..training import (DEFAULT_MIN_IDENTITY, DEFAULT_STRENGTH, DEFAULT_STRENGTHS, PROTOCOLS, TrainingTarget, mean_std,
                        metrics_table, official_summary, parse_strengths, paste_seams, plot_curves, strength_curve)
from ..video import temporal_identity
from .directions import add_model_options, identity_model, model_inputs, number, whole

Subparsers = "argparse._SubParsersAction[argparse.ArgumentParser]"
HELD_OUT_SEED = 100  # --sample's default seed: other faces than training's samples (seed + 1)


def _add_evaluate(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="measure directions on held-out faces: target similarity, identity, consistency",
        description="Measure essence directions the way the TargetCLIP paper did, over a strength sweep: CLIP "
                    "similarity to the target, ArcFace identity preservation and target identity (with the "
                    "identity model), and consistency. Prints a table; --recommend stores the strength with "
                    "the best target similarity that keeps identity in each direction file (for --strength auto). "
                    "--video ORIGINAL EDITED... instead measures how steady the person stays in edited clips: "
                    "STIT's TL-ID and TG-ID (ArcFace similarity of neighbouring frames and of all pairs of frames, "
                    "edited over original; 1 is as steady as the footage).")
    p.add_argument("directions", nargs="*", metavar="DIRECTION", help="direction file(s) (.safetensors or .npy)")
    p.add_argument("--target", nargs="+", help="the target picture(s) the directions were trained on")
    faces = p.add_mutually_exclusive_group()
    faces.add_argument("--sample", type=whole(1), default=None,
                       help="measure on this many random faces (default 8, seed --seed)")
    faces.add_argument("--latents", help="measure on these latents (a latent file, opt_latents.pt or w_plus.npy)")
    faces.add_argument("--photo", nargs="+", help="measure on these photos (aligned and inverted with e4e)")
    faces.add_argument("--video", nargs="+", metavar="CLIP",
                       help="ORIGINAL EDITED...: the temporal identity (TL-ID, TG-ID) of each edited clip against "
                            "the original it was made from (e.g. by essence apply --video); needs the identity model")
    p.add_argument("--seed", type=whole(0), default=HELD_OUT_SEED,
                   help=f"seed for --sample (default {HELD_OUT_SEED}: other faces than training's samples)")
    p.add_argument("--strengths", default=None,
                   help="comma-separated strengths (default " + ",".join(f"{s:g}" for s in DEFAULT_STRENGTHS) +
                        f"; the official protocol adds {DEFAULT_STRENGTH['official']:g})")
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="corrected",
                   help="; ".join(f"{name}: {text}" for name, text in PROTOCOLS.items()))
    p.add_argument("--identity", help="ArcFace file model_ir_se50.pth (default: looked up; without it identity "
                                      "metrics are absent and --recommend uses a CLIP proxy)")
    p.add_argument("--landmarks", help="dlib landmark file, to align the target's face for target identity")
    p.add_argument("--min-identity", type=number(), default=None,
                   help=f"--recommend keeps identity preservation at least this (default {DEFAULT_MIN_IDENTITY:g} "
                        f"with the identity model; the CLIP proxy's own threshold without it)")
    p.add_argument("--recommend", action="store_true",
                   help="write the recommended strength into each direction file (for --strength auto)")
    p.add_argument("--json", help="write every number as JSON to this file")
    p.add_argument("--plot", help="write the strength curve(s) as an image (.png)")
    add_model_options(p, encoder=True, guide=True)
    p.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.video:
        return _evaluate_clips(args)
    if not args.directions or not args.target:
        raise EssenceError("evaluate needs direction file(s) and --target picture(s) (or --video ORIGINAL EDITED "
                           "to measure edited clips).")
    directions = [load_direction(path) for path in args.directions]
    if args.recommend:
        unwritable = [path for path in args.directions if Path(path).suffix.lower() != ".safetensors"]
        if unwritable:
            raise EssenceError(f"--recommend writes into the direction file, which must be .safetensors: "
                               f"{', '.join(unwritable)}. Convert it first with import-official.")
    inputs = [*args.directions, *args.target, args.latents, *(args.photo or []), *model_inputs(args)]
    check_files(_report_outputs(args), inputs)
    strengths = _strengths(args)
    generator = load_generator(args.generator, device=args.device)
    guide = load_guide(args.guide, device=args.device)
    identity = identity_model(args)
    faces, photos, what, inversion = _faces(args, generator)
    target = TrainingTarget.read(args.target)  # read and embedded once for every direction
    print(f"Measuring {len(directions)} direction(s) on {len(faces)} face(s) ({what}), {args.protocol} protocol, "
          f"strengths {', '.join(f'{s:g}' for s in strengths)}.", flush=True)
    curves = [strength_curve(d, generator, guide, target, faces, strengths, identity, args.protocol,
                             landmarks=args.landmarks, source_images=photos) for d in directions]
    recommendations = [curve.recommend(args.min_identity) if any(s > 0 for s in strengths) else None
                       for curve in curves]
    print(metrics_table(curves, recommendations))
    seams = _seams(args, directions, generator, faces, inversion)
    paper = official_summary(curves, DEFAULT_STRENGTH["official"]) if args.protocol == "official" else None
    if paper:
        cells = ", ".join(f"{name} {mean_std(v['mean'], v['std'])}" for name, v in paper.items())
        print(f"paper-style, over the {len(curves)} directions at strength {DEFAULT_STRENGTH['official']:g} "
              f"(std over directions): {cells}")
    if args.json:
        report = {"faces": what, "protocol": args.protocol, "curves": [c.to_dict() for c in curves],
                  "recommended": [r.metadata() if r else None for r in recommendations], "paper_style": paper,
                  "seams": seams}
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(report, indent=1), encoding="utf-8")
        print(f"Wrote {args.json}")
    if args.plot:
        with atomic_write(args.plot) as tmp:
            plot_curves(curves, recommendations).save(tmp, format="PNG")
        print(f"Wrote {args.plot}")
    if args.recommend:
        _record(args.directions, directions, recommendations)
    return 0


def _evaluate_clips(args: argparse.Namespace) -> int:
    """``evaluate --video ORIGINAL EDITED...``: each edited clip's TL-ID and TG-ID (``temporal_identity``)."""
    if args.directions or args.target or args.recommend or args.plot:
        raise EssenceError("--video measures clips that are already edited: give ORIGINAL EDITED... alone, without "
                           "direction files, --target, --recommend or --plot.")
    if len(args.video) < 2:
        raise EssenceError("--video needs the original clip and at least one edited clip made from it.")
    original, *edited = args.video
    check_files(_report_outputs(args), [*args.video, *model_inputs(args)])
    model = load_identity(args.identity, device=args.device)  # needed here: a clear error when it is missing
    landmarks = load_landmarker(args.landmarks)
    print(f"Measuring the temporal identity of {len(edited)} edited clip(s) of {Path(original).name}.", flush=True)
    results = []
    for clip in edited:
        result = temporal_identity(original, clip, model, landmarks)
        print(f"  {result.edited}: {result.describe()}")
        results.append(result.to_dict())
    if args.json:
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps({"original": Path(original).name, "clips": results}, indent=1), encoding="utf-8")
        print(f"Wrote {args.json}")
    return 0


def _report_outputs(args: argparse.Namespace) -> list[Output]:
    """``--json`` and ``--plot``, as the outputs they are."""
    given = (("--json", args.json, ".json"), ("--plot", args.plot, ".png"))
    return [Output(Path(path), option, (suffix,)) for option, path, suffix in given if path]


def _strengths(args: argparse.Namespace) -> list[float]:
    if args.strengths is not None:
        values = parse_strengths(args.strengths, "--strengths")
    else:
        values = list(DEFAULT_STRENGTHS)
        if args.protocol == "official":
            values.append(DEFAULT_STRENGTH["official"])
    if args.recommend and not any(v > 0 for v in values):
        raise EssenceError("--recommend needs at least one strength above 0 in --strengths.")
    return sorted(set(values))


def _faces(args: argparse.Namespace, generator):
    """(latents, source photos or None, description, the inversion of --photo or None)."""
    if args.latents:
        return load_latents(args.latents, generator).latents, None, Path(args.latents).name, None
    if args.photo:
        encoder = load_encoder(args.encoder, device=args.device)
        inversion = invert(args.photo, encoder, landmarks=args.landmarks)
        return inversion.latents, inversion.crops, f"{len(args.photo)} photo(s), inverted", inversion
    count = 8 if args.sample is None else args.sample
    latents = generator.sample_wplus(count, seed=args.seed, truncation=0.7)
    return latents, None, f"{count} random samples, seed {args.seed}", None


def _seams(args: argparse.Namespace, directions, generator, latents, inversion) -> list[dict] | None:
    """With --photo: each direction pasted back into the photos at the protocol's strength, and how
    much it changes the pictures across the paste's edge with each mask (``seam_energy``)."""
    if inversion is None:
        return None
    strength = DEFAULT_STRENGTH[args.protocol]
    photos = [args.photo[source["photo_index"]] for source in inversion.sources]
    rows = []
    print(f"Seams at strength {strength:g}, pasted back into the photos (the change across the paste's edge over "
          f"the photo's own edges there; lower shows less):")
    for direction in directions:
        seams = paste_seams(direction, generator, photos, inversion.faces, latents, strength)
        print(f"  {direction.name}: " + ", ".join(f"{kind} mask {value:.3f}" for kind, value in seams.items()))
        rows.append({"direction": direction.name, "strength": strength, **seams})
    return rows


def _record(paths, directions, recommendations) -> None:
    """Store each recommendation in its file (atomically: the old file stays until the new one is whole)."""
    for path, direction, rec in zip(paths, directions, recommendations):
        direction.with_auto_strength(rec.metadata()).save(path)
        print(f"{path}: recommended strength {rec.strength:g} recorded ({rec.basis}, threshold {rec.threshold:.1f}"
              f"{'' if rec.met_threshold else ', not met at any strength'}); apply it with --strength auto.")


SUBCOMMANDS = [_add_evaluate]
