"""Command-line commands for essence directions: ``train``, ``apply``, ``import-official``, ``info``,
``export-npy``. Registered by ``essence.cli``; each ``_add_*`` declares arguments, each ``_cmd_*`` runs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from ..encoding import encoder_start, load_essence_encoder
from ..errors import EssenceError
from ..faces import MASKS, SMOOTHING_PRESETS, grid_to_pil
from ..latents import (AUTO_STRENGTH_KEY, DEFAULT_TUNING_FRAMES, FALLBACK_STRENGTH, PTI, REFINEMENTS, STIT, Direction,
                       PivotalTuning, image_grid, import_targetclip_latents, invert, is_latent_file, load_direction,
                       load_latents, mix_directions, pivotal_tuning, strength_sweep)
from ..networks import (MissingTuned, TunedFile, load_encoder, load_generator, load_guide, load_perceptual,
                        optional_identity)
from ..storage import Output, atomic_write, check_files, check_output, cli_command, save_or_rescue, weight_inputs
from ..training import (DEFAULT_MODE, INIT_CHOICES, TRAIN_MODES, EssenceJob, Selection, TrainingTarget, TrainSettings,
                        encoder_for_start, modes_help, parse_strengths, train, train_mode)
from ..video import STAGES, VIDEO_SUFFIXES, apply_to_video

Subparsers = "argparse._SubParsersAction[argparse.ArgumentParser]"
SAFETENSORS = (".safetensors",)  # directions, latent files: what --out of train, invert and sample must end in
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}  # apply's pictures, by ending
PASTE_MASK_HELP = ("how an edited face goes back into its picture: face (default) blends only the face (jaw line, "
                   "brows, forehead) and keeps the hair, neck and background exactly; square blends the whole "
                   "aligned crop")


# ----------------------------------------------------------------------------- shared helpers


def identity_model(args: argparse.Namespace):
    """The ArcFace model of ``--identity`` (or looked up); None, with a note saying what that costs,
    when there is none: the metrics then use their CLIP proxy."""
    model, missing = optional_identity(args.identity, device=args.device)
    if missing:
        print(f"note: {missing}. Identity metrics are absent and the recommended strength uses a CLIP proxy.",
              file=sys.stderr)
    return model


MODEL_OPTIONS = {"generator": "generator", "guide": "guide", "encoder": "encoder", "identity": "identity",
                 "landmarks": "landmarks", "lpips": "perceptual"}  # option -> the role it names


def model_inputs(args: argparse.Namespace) -> list[str | Path]:
    """Every model file a command may read, given with an option or found by the default lookup
    (inputs no output may replace, however they were found)."""
    given = {role: getattr(args, option, None) for option, role in MODEL_OPTIONS.items()}
    return [path for path in given.values() if path] + weight_inputs(given)


PHOTO_TUNING_HELP = ("pti: after e4e, tune the generator to each face (pivotal tuning, PTI's settings) so that it "
                     "draws the photo's own face; slower (up to 350 steps a face) and the latent file gets a "
                     "companion <name>.tuned.safetensors (about 56 MB a face at 1024 px).")
CLIP_TUNING_HELP = ("one generator is tuned to the clip's frames around their e4e latents (STIT's settings) before "
                    "they are edited, so the edited face stays the person in the clip.")


def add_refine_options(parser: argparse.ArgumentParser, photos: bool = True, video: bool = False) -> None:
    """``--refine``, ``--pti-steps`` and ``--lpips``: pivotal tuning after e4e, of photos (``invert``,
    ``apply``) and/or of a clip (``apply --video``, ``batch video``: STIT's way, with ``--pti-frames``)."""
    clip = ("With --video, " if photos else "pti: ") + CLIP_TUNING_HELP
    parser.add_argument("--refine", choices=REFINEMENTS, default="none",
                        help=" ".join([PHOTO_TUNING_HELP] * photos + [clip] * video + ["Default none"]))
    steps = [f"at most this many tuning steps a face (default {PTI.steps}; PTI stops a face earlier once its LPIPS "
             f"is {PTI.lpips_stop})"] * photos
    steps += [("with --video, " if photos else "") + f"passes over the frames, one step a frame (default "
              f"{STIT.steps}, STIT's)"] * video
    parser.add_argument("--pti-steps", type=whole(1), default=None, help="with --refine pti: " + "; ".join(steps))
    parser.add_argument("--lpips", default=None,
                        help="with --refine pti: torchvision's AlexNet file for LPIPS (default: looked up as "
                             "alexnet-owt-7be5be79.pth)")
    if video:
        parser.add_argument("--pti-frames", type=whole(1), default=None,
                            help=f"with --refine pti{' and --video' if photos else ''}: tune on at most this many "
                                 f"frames, spread over the clip (default {DEFAULT_TUNING_FRAMES}; each pass costs "
                                 f"one step a frame)")


def check_refine_options(args: argparse.Namespace) -> None:
    """Refuse ``add_refine_options``' options that contradict each other, before any work."""
    given = [name for name in ("pti_steps", "lpips", "pti_frames") if getattr(args, name, None) is not None]
    if args.refine == "none" and given:
        raise EssenceError(f"{', '.join('--' + name.replace('_', '-') for name in given)} need(s) --refine pti.")


def tuning_option(args: argparse.Namespace, clip: bool = False, device: Any = None) -> PivotalTuning | None:
    """``add_refine_options``' options (already through ``check_refine_options``) as the one tuning
    value the library takes: None for ``--refine none``; PTI's settings for photos (with a progress
    bar), STIT's for a ``clip``. With ``device``, ``--lpips``'s network is loaded there now, before
    any work; without it (batch video) the worker that tunes loads the file."""
    if args.refine == "none":
        return None
    frames = getattr(args, "pti_frames", None)
    return pivotal_tuning(clip, args.pti_steps, frames=DEFAULT_TUNING_FRAMES if frames is None else frames,
                          perceptual=None if device is None else load_perceptual(args.lpips, device=device),
                          progress=None if clip else _tuning_bar())


def _tuning_bar() -> Callable[[int, int], None]:
    """A progress bar over every tuning step of every face."""
    from tqdm import tqdm

    bars: list = []

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="step", desc="pivotal tuning", dynamic_ncols=True))
        bars[0].update(done - bars[0].n)
        if done == total:
            bars[0].close()

    return progress


def add_model_options(parser: argparse.ArgumentParser, encoder: bool = False, guide: bool = False) -> None:
    parser.add_argument("--generator", help="StyleGAN2 file (default: looked up as stylegan2-ffhq-config-f.pt)")
    if guide:
        parser.add_argument("--guide", help="CLIP file (default: ViT-B-32.pt)")
    if encoder:
        parser.add_argument("--encoder", help="e4e file (default: e4e_ffhq_encode.pt)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default)")


def add_training_options(parser: argparse.ArgumentParser, default_mode: str | None = DEFAULT_MODE,
                         default_text: str = DEFAULT_MODE) -> None:
    """``--mode``, ``--lr`` and ``--weight-decay``: the options ``train`` and ``demo`` share."""
    defaults = TrainSettings()
    parser.add_argument("--mode", choices=list(TRAIN_MODES), default=default_mode,
                        help=f"training mode (default: {default_text}). {modes_help()}")
    parser.add_argument("--lr", type=number(0), default=defaults.lr,
                        help=f"learning rate of the direction and of the per-source coefficients (default "
                             f"{defaults.lr:g}, as the official script)")
    parser.add_argument("--weight-decay", type=number(0), default=defaults.weight_decay,
                        help=f"the direction's L2 weight decay inside Adam (default {defaults.weight_decay:g}, "
                             f"as the official script)")


def whole(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``. Impossible counts (no faces, no
    steps, no workers) are refused by the parser, before anything loads."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def number(minimum: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number (of at least ``minimum`` when given); ``nan`` and ``inf``
    parse as floats but mean nothing as a rate, a weight or a threshold."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {value:g}")
        return value

    return parse


def strength_tokens(text: str) -> list[str]:
    """``--strength``'s comma-separated values as given (numbers or ``auto``), refused now when a
    number is not one or there is none, before any direction is read."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise EssenceError("--strength needs a number or 'auto'.")
    _numbers(parts)
    return parts


def _numbers(parts: list[str]) -> list[float]:
    """The numbers among ``--strength``'s values (``auto`` left out)."""
    numbers = [p for p in parts if p.lower() != "auto"]
    return parse_strengths(",".join(numbers), "--strength") if numbers else []


def strengths_for(text: str, direction: Direction) -> list[float]:
    """``--strength`` for one direction: its numbers, with ``auto`` as the direction's recommended
    strength (1.0, with a note on stderr, when its file has none)."""
    parts = strength_tokens(text)
    numbers = iter(_numbers(parts))
    values = []
    for part in parts:
        if part.lower() != "auto":
            values.append(next(numbers))
            continue
        value, note = direction.resolve_strength("auto")
        if note:
            print(f"note: {note}", file=sys.stderr)
        else:
            print(f"Strength auto = {value:g}, recommended for {direction.name!r}.")
        values.append(value)
    return values


# ----------------------------------------------------------------------------- train


def _add_train(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("train", help="train an essence direction from target image(s)",
                              description="Train a TargetCLIP direction: the essence of the target picture(s), "
                                          "applicable to any face.")
    p.add_argument("targets", nargs="+", help="target image(s); several pictures of the same target are averaged")
    p.add_argument("--out", "-o", required=True, help="direction file to write (.safetensors)")
    add_train_options(p, encoder_start=True)
    p.add_argument("--name", help="name stored in the file (default: the first target's file name)")
    p.add_argument("--keep-all", action="store_true",
                   help="with --candidates: also write every candidate as OUT_STEM.cand<i>.safetensors")
    p.add_argument("--encoder-file", default=None, metavar="F",
                   help="with --init encoder: the essence encoder (.safetensors from `essence train-encoder`, "
                        "trained against --generator) whose essence of the target's face(s) training starts from")
    add_model_options(p, encoder=True, guide=True)
    p.set_defaults(handler=_cmd_train, out_of_memory_advice=TRAIN_MEMORY_ADVICE)


TRAIN_MEMORY_ADVICE = ("Use fewer source faces (--sample or a smaller --sources file), --render-size 256, a +bf16 "
                       "--mode, or --device cpu.")


ENCODER_INIT = "encoder"  # --init's warm start from an essence encoder (with --encoder-file; `train` only)
ENCODER_INIT_HELP = ("encoder: the essence a trained essence encoder (--encoder-file, from train-encoder) gives the "
                     "target's face(s) in one pass, then optimised as usual")


def add_train_options(p: argparse.ArgumentParser, encoder_start: bool = False) -> None:
    """Everything about how one direction trains (sources, steps, seed, start, mode, losses,
    candidates): the options ``train`` and ``batch train`` share; ``encoder_start``: ``--init`` also
    offers ``encoder`` (the command then has ``--encoder-file``)."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--sources", help="source latents: a latent file (.safetensors) or TargetCLIP's opt_latents.pt")
    src.add_argument("--sample", type=whole(1), default=4, help="without --sources: sample this many random faces (default 4)")
    p.add_argument("--steps", type=whole(1), default=1000, help="optimisation steps (default 1000, as the paper)")
    p.add_argument("--seed", type=whole(0), default=0)
    p.add_argument("--init", choices=list(INIT_CHOICES) + [ENCODER_INIT] * encoder_start, default="auto",
                   help="where training starts: " + "; ".join([f"{name}: {text}" for name, text in INIT_CHOICES.items()]
                                                              + [ENCODER_INIT_HELP] * encoder_start))
    add_training_options(p)
    p.add_argument("--clip-mode", choices=["official", "normalized"], default="official",
                   help="official: TargetCLIP's preprocessing of generated images (no CLIP mean/std)")
    p.add_argument("--chunk", type=whole(1), default=None, help="render this many sources at a time (less memory, same result)")
    p.add_argument("--recompute-from", type=whole(1), default=None, metavar="RES",
                   help="re-run the generator's layers from this resolution up in the backward pass instead of "
                        "keeping them (e.g. 512: less memory, same result)")
    p.add_argument("--render-size", type=whole(1), default=None,
                   help="approximate: let CLIP see the generator's intermediate image at this size (e.g. 256); "
                        "a mode's own size (+256px) cannot be changed")
    p.add_argument("--lambda-transfer", type=number(0), default=1.0)
    p.add_argument("--lambda-consistency", type=number(0), default=0.5)
    p.add_argument("--candidates", type=whole(1), default=1, metavar="K",
                   help="train K directions together (from the target's inversion, perturbations of it and "
                        "random latents) and write the one that scores best on held-out faces (default 1)")
    p.add_argument("--identity", help="with --candidates: ArcFace file model_ir_se50.pth for the identity "
                   "preservation the candidates are ranked under (default: looked up; without it a CLIP proxy)")


def _train_settings(args: argparse.Namespace) -> TrainSettings:
    options = {"render_size": args.render_size} if args.render_size is not None else {}
    return train_mode(args.mode).settings(
        steps=args.steps, seed=args.seed, lr=args.lr, weight_decay=args.weight_decay, clip_mode=args.clip_mode,
        chunk_size=args.chunk, recompute_from=args.recompute_from, lambda_transfer=args.lambda_transfer,
        lambda_consistency=args.lambda_consistency, **options)


def _cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    job = train_job(args)
    outputs = [Output(out, suffixes=SAFETENSORS)]
    if args.keep_all:
        outputs += [Output(_candidate_path(out, i), "--keep-all", SAFETENSORS) for i in range(job.candidates)]
    check_files(outputs, [*args.targets, args.sources, args.encoder_file, *model_inputs(args)])
    generator = load_generator(args.generator, device=args.device)
    start = _warm_start(args, generator)
    guide = load_guide(args.guide, device=args.device)
    encoder = None if start is not None else encoder_for_start(job.init, args.encoder, device=args.device)
    identity = identity_model(args) if job.candidates > 1 else None
    sources = job.source_faces(generator)
    target = TrainingTarget.read(args.targets)
    print(f"Training '{job.name or target.name}': {target.count} target picture(s), "
          f"{len(sources)} sources ({sources.describe()}), {args.steps} steps, {args.mode} mode"
          + (f", {job.candidates} candidates." if job.candidates > 1 else "."))
    trained = train(target, sources, generator, guide, job, start=start, encoder=encoder,
                    choose=Selection(identity=identity), metadata={"init_option": ENCODER_INIT} if start else None,
                    progress=training_progress_bar(args.steps), on_retry=report_memory_retry)
    if trained.note:
        print(f"note: {trained.note}", file=sys.stderr)
    if trained.choice is not None:
        print("\n".join(trained.choice.report(trained.candidates)))
    save_or_rescue(trained.direction.save, out, "trained direction")
    if args.keep_all:
        for index, direction in enumerate(trained.candidates):
            saved = save_or_rescue(direction.save, _candidate_path(out, index), f"candidate {index}")
            print(f"Saved candidate {index}: {saved}")
    print(f"Saved {out} (start: {trained.start}; {trained.result.summary()}).")
    return 0


def _warm_start(args: argparse.Namespace, generator) -> tuple[torch.Tensor, str] | None:
    """``--init encoder``'s start (None for the other starts): ``encoding.encoder_start`` of the
    ``--encoder-file`` encoder (read strictly, refused when trained against another generator) for the
    target picture(s). (``training`` cannot import ``encoding``, its neighbour on the same layer, so
    the front end makes this start and hands it to ``train`` as a start already made.)"""
    if args.init != ENCODER_INIT:
        return None
    encoder = load_essence_encoder(args.encoder_file, generator, device=generator.latent_avg.device)
    return encoder_start(encoder, args.targets, generator, encoder_file=args.encoder_file)


def _candidate_path(out: Path, index: int) -> Path:
    """Where ``--keep-all`` writes candidate ``index`` of the direction ``out``."""
    return out.with_name(f"{out.stem}.cand{index}{out.suffix}")


def train_job(args: argparse.Namespace) -> EssenceJob:
    """The ``add_train_options`` in ``args`` as the library's ``EssenceJob``, refused before any
    model loads when a value or a combination is wrong."""
    if getattr(args, "keep_all", False) and args.candidates < 2:
        raise EssenceError("--keep-all writes every candidate: use it with --candidates 2 or more.")
    _check_encoder_start(args)
    if args.identity and args.candidates < 2:
        raise EssenceError("--identity ranks candidates: use it with --candidates 2 or more (to measure one "
                           "direction, use `evaluate --identity`).")
    init = "auto" if args.init == ENCODER_INIT else args.init  # the start is made by the command (_warm_start)
    return EssenceJob(settings=_train_settings(args), mode=args.mode, init=init, candidates=args.candidates,
                      name=getattr(args, "name", None), sources=args.sources, sample=args.sample)


def _check_encoder_start(args: argparse.Namespace) -> None:
    """``--init encoder`` and ``--encoder-file`` go together (``batch train`` offers neither yet)."""
    if not hasattr(args, "encoder_file"):
        return
    if args.init == ENCODER_INIT and not args.encoder_file:
        raise EssenceError("--init encoder starts from an essence encoder's output for the target: give the "
                           "encoder's file with --encoder-file F (made by `essence train-encoder`).")
    if args.encoder_file and args.init != ENCODER_INIT:
        raise EssenceError(f"--encoder-file is the essence encoder that --init encoder starts from, but --init is "
                           f"{args.init!r}: add --init encoder, or leave --encoder-file out.")


def report_memory_retry(chunk: int) -> None:
    print(f"Out of device memory: starting again with {chunk} source face(s) per pass "
          f"(the same result, less memory; --chunk {chunk} skips this next time).", flush=True)


def training_progress_bar(total: int):
    """A tqdm bar for ``train``'s progress, opened at the first report with the steps done so far
    as its start, so that its rate and ETA count training steps only (not the target's inversion
    before them)."""
    from tqdm import tqdm

    bars: list = []

    def report(p) -> None:
        if not bars:
            bars.append(tqdm(total=total, initial=p.step, unit="step", dynamic_ncols=True))
        bar = bars[0]
        bar.update(p.step - bar.n)
        bar.set_postfix(loss=f"{p.loss:.4f}", transfer=f"{p.transfer:.4f}", consistency=f"{p.consistency:.4f}",
                        best=f"{p.best_loss:.4f}")
        if p.step == p.total:
            bar.close()

    return report


# ----------------------------------------------------------------------------- apply


def _add_apply(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("apply", help="apply direction(s) to latents, sampled faces or photos -> image",
                              description="Render faces with an essence applied: w + strength * direction.")
    p.add_argument("directions", nargs="+",
                   help="direction file(s) (.safetensors or official .npy); NAME:WEIGHT mixes several")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--latents", help="latent file (.safetensors), or TargetCLIP's opt_latents.pt / w_plus.npy")
    where.add_argument("--photo", nargs="+", help="photo(s) to align and invert with e4e")
    where.add_argument("--sample", type=whole(1), default=None, help="render this many random faces (default 4)")
    where.add_argument("--video", help="a video clip: edit the main face of every frame, keep the sound (--out: "
                       ".mp4, .mov, .mkv or .webm)")
    p.add_argument("--seed", type=whole(0), default=None, help="seed for --sample (default 0)")
    p.add_argument("--strength", default="1.0",
                   help="strength, or comma-separated strengths for a sweep grid (e.g. 0,0.5,1,1.2); 'auto' is the "
                        "direction's recommended strength (essence evaluate --recommend), 1.0 when it has none")
    p.add_argument("--layers", default="all", help="all, coarse, middle, fine, coarse+middle, middle+fine")
    p.add_argument("--out", "-o", required=True, help="output image (.png/.jpg): one row per face; with --video "
                   "the output video")
    p.add_argument("--smoothing", choices=list(SMOOTHING_PRESETS), default=None,
                   help="with --video: how much the face's crop is smoothed over time against landmark jitter "
                        "(default normal; scene cuts restart it); offline smooths each shot looking both ways, "
                        "with no lag on a moving face")
    p.add_argument("--paste-mask", choices=MASKS, default=None,
                   help="with --video: " + PASTE_MASK_HELP)
    p.add_argument("--face-tracking", choices=("on", "off"), default=None,
                   help="with --video: 'on' (default) runs the face detector only at the first frame, scene cuts, "
                        "a lost or doubtful face and once a second, and follows the face's landmarks in between "
                        "(about 10x less CPU per frame); 'off' detects the face in every frame")
    add_refine_options(p, video=True)
    add_model_options(p, encoder=True)
    p.set_defaults(handler=_cmd_apply)


def _cmd_apply(args: argparse.Namespace) -> int:
    _refuse_unused(args, VIDEO_OPTIONS, bool(args.video), "--video")
    _refuse_unused(args, {"seed": None}, args.sample is not None, "--sample")
    loaded = [_weighted(spec) for spec in args.directions]
    check_output(args.out, [_split_weight(spec)[0] for spec in args.directions]
                 + [args.latents, args.video, *(args.photo or []), *model_inputs(args)],
                 suffixes=VIDEO_SUFFIXES if args.video else tuple(IMAGE_FORMATS))
    if len(loaded) == 1 and loaded[0][1] == 1.0:
        direction = loaded[0][0]
    else:
        direction = mix_directions([d for d, _ in loaded], [w for _, w in loaded])
    strengths = strengths_for(args.strength, direction)
    check_refine_options(args)
    if args.refine != "none" and not (args.photo or args.video):
        raise EssenceError("--refine pti tunes the generator to photos or a clip: use it with --photo or --video "
                           "(latents from `invert --refine pti` carry their tuning with them).")
    if args.video:
        return _apply_video(args, direction, strengths)
    generator = load_generator(args.generator, device=args.device)
    direction.check_fits(generator, what=", ".join(args.directions))
    tuned = None
    if args.latents:
        latent_set = load_latents(args.latents, generator)
        latents, tuned = latent_set.latents, latent_set.tuned_rows()  # a missing companion file stops here
    elif args.photo:
        encoder = load_encoder(args.encoder, device=args.device)
        inversion = invert(args.photo, encoder, generator=generator,
                           tuning=tuning_option(args, device=generator.latent_avg.device))
        latents, tuned = inversion.latents, inversion.tuned_rows()
    else:
        latents = generator.sample_wplus(args.sample or 4, seed=args.seed or 0, truncation=0.7)
    images = strength_sweep(generator, latents, direction, strengths, layers=args.layers, tuned=tuned)
    _save_image(image_grid(images, columns=len(strengths)), Path(args.out))
    print(f"Wrote {args.out}: {latents.shape[0]} face(s) x strengths {strengths}.")
    return 0


def _apply_video(args: argparse.Namespace, direction: Direction, strengths: list[float]) -> int:
    """``apply --video``: one strength, every frame; the work is ``essence.video.apply_to_video``'s."""
    from tqdm import tqdm

    if len(strengths) != 1:
        raise EssenceError(f"--video takes one strength, got {len(strengths)} ({args.strength}).")
    bars: dict[str, Any] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            for bar in bars.values():
                bar.close()
            label = STAGES.get(stage, stage)
            bars[stage] = tqdm(total=total, unit="pass" if stage == "tune" else "frame", desc=label,
                               dynamic_ncols=True)
        bars[stage].update(done - bars[stage].n)

    try:
        generator = load_generator(args.generator, device=args.device)
        result = apply_to_video(args.video, args.out, direction, encoder=load_encoder(args.encoder, device=args.device),
                                generator=generator, strength=strengths[0], layers=args.layers,
                                smoothing=args.smoothing, face_tracking=args.face_tracking == "on",
                                mask=args.paste_mask, progress=progress,
                                tuning=tuning_option(args, clip=True, device=generator.latent_avg.device))
    finally:
        for bar in bars.values():
            bar.close()
    track = result.track
    missing = len(track) - track.found
    print(f"Wrote {result.path}: {result.info.frames} frames at {result.info.rate} fps, strength {strengths[0]:g}, "
          f"smoothing {args.smoothing}" + (f"; {missing} frame(s) without a face left unedited" if missing else "")
          + (f"; generator tuned on {len(result.tuned.info['source']['frames'])} frame(s), "
             f"{result.tuned.info['steps']} pass(es)" if result.tuned else "")
          + f" ({result.seconds:.1f} s).")
    return 0


def _split_weight(spec: str) -> tuple[str, str]:
    """``FILE`` or ``FILE:WEIGHT`` -> (file, weight as written)."""
    if ":" in spec and not Path(spec).exists():
        path, _, weight = spec.rpartition(":")
        return path, weight
    return spec, "1"


def _weighted(spec: str):
    """``FILE`` or ``FILE:WEIGHT`` -> (direction, weight)."""
    path, weight = _split_weight(spec)
    try:
        value = float(weight)
    except ValueError:
        raise EssenceError(f"{spec!r}: the weight after ':' must be a number.") from None
    if not math.isfinite(value):
        raise EssenceError(f"{spec!r}: the weight after ':' must be a finite number.")
    return load_direction(path), value


def _save_image(grid: torch.Tensor, path: Path) -> None:
    with atomic_write(path) as tmp:
        grid_to_pil(grid).save(tmp, format=IMAGE_FORMATS[path.suffix.lower()])


VIDEO_OPTIONS = {"smoothing": "normal", "paste_mask": "face", "face_tracking": "on", "pti_frames": None}


def _refuse_unused(args: argparse.Namespace, options: dict[str, Any], used: bool, needs: str) -> None:
    """Options that do something only with ``needs`` are refused without it (a user who set them
    expects them to act); with it, those not given take their defaults (``options``)."""
    given = [name for name in options if getattr(args, name) is not None]
    if not used and given:
        names = " and ".join("--" + name.replace("_", "-") for name in given)
        them, acts = ("them", "act") if len(given) > 1 else ("it", "acts")
        raise EssenceError(f"{names} only {acts} with {needs}; without it nothing would use {them}. Remove {them}, "
                           f"or add {needs}.")
    for name, default in options.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


# ----------------------------------------------------------------------------- import / export / info


def _add_import_official(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("import-official", help="convert TargetCLIP's .npy directions and latents",
                              description="Convert the directions (.npy, [1, 18, 512]) and source latents "
                                          "(opt_latents.pt, w_plus.npy) published with TargetCLIP into "
                                          "Essence files.")
    p.add_argument("files", nargs="+", help=".npy directions, and/or latents: opt_latents.pt, w_plus.npy")
    p.add_argument("--out-dir", "-o", required=True, help="folder for the converted .safetensors files")
    p.set_defaults(handler=_cmd_import_official)


def _cmd_import_official(args: argparse.Namespace) -> int:
    out_dir = Path(args.out_dir)
    check_files([Output(out_dir, "--out-dir", folder=True)]
                + [Output(out_dir / f"{Path(name).stem}.safetensors", "--out-dir", SAFETENSORS) for name in args.files],
                args.files)
    for name in args.files:
        path = Path(name)
        target = out_dir / f"{path.stem}.safetensors"
        if path.suffix.lower() not in (".npy", ".pt", ".pth"):
            raise EssenceError(f"{path}: expected a TargetCLIP .npy direction, or latents (.pt, w_plus.npy).")
        if is_latent_file(path):
            latent_set = import_targetclip_latents(path)
            latent_set.save(target)
            print(f"{path} -> {target}  ({len(latent_set)} latents)")
        else:
            Direction.from_official_npy(path).save(target)
            print(f"{path} -> {target}  (direction)")
    return 0


def _add_export_npy(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("export-npy", help="export a direction as TargetCLIP's .npy layout")
    p.add_argument("direction", help="direction file")
    p.add_argument("out", help="output .npy")
    p.set_defaults(handler=_cmd_export_npy)


def _cmd_export_npy(args: argparse.Namespace) -> int:
    check_output(args.out, [args.direction], what="the output", suffixes=(".npy",))
    load_direction(args.direction).to_npy(args.out)
    print(f"Wrote {args.out}")
    return 0


def _add_info(subparsers: Subparsers) -> None:
    p = subparsers.add_parser("info", help="show what a direction or latent file holds")
    p.add_argument("files", nargs="+")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    p.set_defaults(handler=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    for name in args.files:
        kind, shape, meta = _describe_file(Path(name))
        if args.json:
            print(json.dumps({"file": name, "kind": kind, "shape": shape, "metadata": meta}, indent=1))
            continue
        if kind == "tuned weights":
            print(f"{name}: tuned weights of {meta['faces']} face(s), {meta['size_mb']:g} MB")
        else:
            print(f"{name}: {kind} {shape}")
        if kind == "direction":
            print(f"  {_strength_line(meta)}")
        for key, value in meta.items():
            text = value if isinstance(value, str) else json.dumps(value)
            print(f"  {key}: {text}")
    return 0


def _strength_line(meta: dict) -> str:
    """What ``--strength auto`` will use for a direction with this metadata."""
    record = meta.get(AUTO_STRENGTH_KEY)
    value = record.get("value") if isinstance(record, dict) else None
    if isinstance(value, (int, float)):
        return (f"recommended strength (auto): {value:g}, {record.get('basis', '?')} basis, "
                f"threshold {record.get('threshold', '?')}, {record.get('faces', '?')} faces")
    return (f"recommended strength (auto): none measured, 'auto' uses {FALLBACK_STRENGTH:g} "
            f"(measure it with: {cli_command()} evaluate ... --recommend)")


def _describe_file(path: Path) -> tuple[str, list[int] | None, dict]:
    """Latent files (Essence's, TargetCLIP's opt_latents.pt and w_plus.npy), directions, or the
    tuned weights beside a latent file (a summary of its header: it holds thousands of tensors)."""
    if TunedFile.holds(path):
        return "tuned weights", None, TunedFile(path).summary()
    if is_latent_file(path):
        latents = load_latents(path)
        return "latents", list(latents.latents.shape), {**latents.meta, **_tuned_note(latents)}
    direction = Direction.load(path)
    return "direction", list(direction.tensor.shape), direction.meta


def _tuned_note(latents: Any) -> dict[str, str]:
    """``tuned_weights``: which rows are drawn with tuned weights and from which file, or why they
    cannot be (the companion is missing, unreadable or another set's); nothing when no row is."""
    rows = sum(key is not None for key in latents.tuned_keys())
    if not rows:
        return {}
    if isinstance(latents.tuned, MissingTuned):
        return {"tuned_weights": f"{rows} row(s), not usable: {latents.tuned.reason}"}
    where = f" from {latents.tuned.path.name}" if isinstance(latents.tuned, TunedFile) else ""
    faces = len(latents.tuned)
    return {"tuned_weights": f"{rows} row(s) drawn with the weights tuned to them ({faces} face(s)){where}"}


SUBCOMMANDS = [_add_train, _add_apply, _add_import_official, _add_export_npy, _add_info]
