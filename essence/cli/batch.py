"""``essence batch train``, ``apply``, ``encode`` and ``video``: many directions, many photos, a folder of
targets, long clips, on Ray.

Each command turns its inputs into ``essence.scale.batch`` tasks (one per target; one per photo x
direction x strength) and runs them on workers that load the models once. The work of one task is
exactly what the single commands do (``essence.training.train`` is ``essence train``'s own call,
``apply_to_photo`` the photo pipeline, ``essence.encoding.encode_targets`` what ``essence encode``
does), so a batch gives the same files as a loop over them would. ``encode_folder`` is also
``essence encode --targets-dir``: the same tasks in this process.
Results go to ``--out`` with ``report.json`` and ``report.csv``; a rerun skips finished outputs.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator

from ..encoding import FOLDER_RULE, folder_targets
from ..errors import EssenceError
from ..faces import MASKS, SMOOTHING_PRESETS
from ..latents import LAYER_PRESETS, load_direction
from ..scale import (DEFAULT_CHUNK, ApplyJob, ApplyModels, BatchReport, EncodeJob, EncodeModels, TrainModels, VideoJob,
                     VideoModels, apply_tasks, encode_here, run_apply_batch, run_encode_batch, run_train_batch,
                     run_video_job, train_tasks)
from ..storage import Output, check_files, check_output, check_outputs, folder_lock
from ..video import STAGES, VIDEO_SUFFIXES
from .directions import (PASTE_MASK_HELP, SAFETENSORS, TRAIN_MEMORY_ADVICE, add_model_options, add_refine_options,
                         add_train_options, check_refine_options, model_inputs, strength_tokens, strengths_for,
                         train_job, tuning_option, whole)

Subparsers = "argparse._SubParsersAction[argparse.ArgumentParser]"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
DIRECTION_SUFFIXES = (".safetensors", ".npy")
REPORT_NAME = "report"
MAX_ERRORS_SHOWN = 10


def _add_batch(subparsers: Subparsers) -> None:
    batch = subparsers.add_parser(
        "batch", help="train, encode or apply many directions at once on Ray (resumable; a cluster with --address)",
        description="Batch jobs on Ray: one task per target (train, encode) or per photo x direction (apply), on "
                    "workers that load the models once. Without --address a local Ray uses this machine. Finished outputs "
                    "are skipped when run again; report.json / report.csv list every task.")
    actions = batch.add_subparsers(title="batch commands", metavar="ACTION")
    batch.set_defaults(handler=lambda _args: _usage(batch))

    train = actions.add_parser("train", help="one direction per target: OUT/<target stem>.safetensors",
                               description="Train one direction per target picture (as `essence train` would, "
                                           "with the same options) into OUT/<target stem>.safetensors.")
    train.add_argument("targets", nargs="+", metavar="TARGET", help="target pictures, or folders of them")
    train.add_argument("--out", "-o", type=Path, required=True, help="folder for the directions and the report")
    add_train_options(train)
    add_model_options(train, encoder=True, guide=True)
    _add_ray_options(train)
    train.set_defaults(handler=_cmd_batch_train, out_of_memory_advice=TRAIN_MEMORY_ADVICE)

    apply = actions.add_parser("apply", help="every photo x every direction: OUT/<direction>/<photo>.png",
                               description="Edit every face of every photo with every direction (align, invert, "
                                           "apply, render, paste back) into OUT/<direction stem>/<photo stem>.png.")
    apply.add_argument("directions", nargs="+", metavar="DIRECTION",
                       help="direction files (.safetensors or official .npy), or folders of them")
    apply.add_argument("--photos", nargs="+", required=True, metavar="PHOTO", help="photos, or folders of photos")
    apply.add_argument("--out", "-o", type=Path, required=True, help="folder for the edited photos and the report")
    apply.add_argument("--strength", default="1.0",
                       help="strength, or comma-separated strengths (one picture each: <photo>_s<strength>.png); "
                            "'auto' is each direction's recommended strength (1.0 when it has none)")
    apply.add_argument("--layers", choices=LAYER_PRESETS, default="all", help="which W+ rows the direction moves")
    apply.add_argument("--largest-face", action="store_true", help="edit only the largest face of each photo")
    apply.add_argument("--paste-mask", choices=MASKS, default="face", help=PASTE_MASK_HELP)
    apply.add_argument("--landmarks", default=None, help="dlib shape_predictor_68_face_landmarks.dat")
    add_model_options(apply, encoder=True)
    _add_ray_options(apply)
    apply.set_defaults(handler=_cmd_batch_apply)
    _add_batch_encode(actions)
    _add_batch_video(actions)


def _add_ray_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray on this machine); the "
                        "output folder and the input files must be reachable by every node")
    p.add_argument("--workers", type=whole(1), default=None,
                   help="workers (each loads the models once; default: one per GPU, else one per CPU core)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# ----------------------------------------------------------------------------- train


def _cmd_batch_train(args: argparse.Namespace) -> int:
    job = train_job(args)
    targets = expand_inputs(args.targets, IMAGE_SUFFIXES, "target pictures")
    _check_stems(targets, "targets")
    inputs = [*targets, args.sources, *model_inputs(args)]
    check_output(args.out, inputs, folder=True)
    check_outputs([task.output for task in train_tasks(targets, args.out)], inputs)
    models = TrainModels(args.generator, args.guide, args.encoder, args.identity, args.device)
    with folder_lock(args.out, "another batch"), _report_when_stopped(args.out):  # one run at a time
        return _finish(args.out, run_train_batch(targets, args.out, job, models, **_runner_options(args)))


# ----------------------------------------------------------------------------- apply


def _cmd_batch_apply(args: argparse.Namespace) -> int:
    job = ApplyJob(tuple(strength_tokens(args.strength)), args.layers, args.largest_face, args.paste_mask)
    models = ApplyModels(args.generator, args.encoder, args.landmarks, args.device)
    directions = expand_inputs(args.directions, DIRECTION_SUFFIXES, "direction files")
    photos = expand_inputs(args.photos, IMAGE_SUFFIXES, "photos")
    _check_stems(directions, "directions")
    _check_stems(photos, "photos")
    inputs = [*photos, *directions, *model_inputs(args)]
    check_output(args.out, inputs, folder=True)
    check_outputs([task.output for task in apply_tasks(photos, directions, args.out, job, models)], inputs)
    with folder_lock(args.out, "another batch"), _report_when_stopped(args.out):  # one run at a time
        report = run_apply_batch(photos, directions, args.out, job, models, **_runner_options(args))
        return _finish(args.out, report)


# ----------------------------------------------------------------------------- encode


ENCODE_FOLDER_HELP = f"a folder of targets: {FOLDER_RULE}"


def _add_batch_encode(actions: Subparsers) -> None:
    encode = actions.add_parser(
        "encode", help="one essence per target of a folder, with an essence encoder: OUT/<target>.safetensors",
        description="Encode every target of a folder with a trained essence encoder (train-encoder) into "
                    "OUT/<target>.safetensors, the file `essence encode` writes for that target alone; one task per "
                    "target on the workers.")
    encode.add_argument("targets_dir", metavar="TARGETS_DIR", help=ENCODE_FOLDER_HELP)
    encode.add_argument("--encoder-file", required=True, help="the essence encoder (.safetensors from train-encoder)")
    encode.add_argument("--out", "-o", type=Path, required=True, help="folder for the essences and the report")
    add_encode_options(encode)
    _add_ray_options(encode)
    encode.set_defaults(handler=_cmd_batch_encode)


def _cmd_batch_encode(args: argparse.Namespace) -> int:
    return encode_folder(args, args.out, "--out", on_ray=True)


def add_encode_options(p: argparse.ArgumentParser) -> None:
    """The options ``essence encode`` and ``essence batch encode`` share."""
    p.add_argument("--no-align", action="store_true",
                   help="use the pictures as they are (aligned crops, or pictures without a face), resized to 256 px")
    p.add_argument("--landmarks", help="dlib's 68-point landmark file")
    p.add_argument("--generator", help="when given: refuse it unless the encoder was trained against it")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default)")


def encode_folder(args: argparse.Namespace, out: Path, what: str, on_ray: bool) -> int:
    """Every target of ``args.targets_dir`` encoded into ``out`` (``<target>.safetensors`` and the report),
    on Ray or in this process; every output checked first, finished ones skipped."""
    targets = folder_targets(args.targets_dir)
    job = EncodeJob(align=not args.no_align)
    models = EncodeModels(args.encoder_file, args.generator, args.landmarks if job.align else None, args.device)
    inputs = [*(p for target in targets for p in target.pictures), args.encoder_file, *model_inputs(args)]
    check_files([Output(out, what, folder=True),
                 *(Output(out / f"{target.name}.safetensors", what, SAFETENSORS) for target in targets),
                 *(Output(out / f"{REPORT_NAME}{suffix}", what) for suffix in (".json", ".csv"))], inputs)
    with folder_lock(out, "another batch"), _report_when_stopped(out):  # one run at a time
        report = (run_encode_batch(targets, out, job, models, **_runner_options(args)) if on_ray
                  else encode_here(targets, out, job, models, progress=not args.no_progress))
        return _finish(out, report)


# ----------------------------------------------------------------------------- video


def _add_batch_video(actions: Subparsers) -> None:
    video = actions.add_parser("video", help="one clip, its frames split into chunks across the workers",
                               description="Edit the main face of every frame of a clip (as `essence apply --video` "
                                           "does) with chunks of frames on the workers; a rerun keeps finished "
                                           "chunks. The video is assembled when every chunk is done.")
    video.add_argument("direction", metavar="DIRECTION", help="direction file (.safetensors or official .npy)")
    video.add_argument("--video", required=True, help="the clip to edit")
    video.add_argument("--out", "-o", type=Path, required=True, help="the edited clip (.mp4, .mov, .mkv or .webm)")
    video.add_argument("--strength", default="1.0",
                       help="strength (default 1.0); 'auto' is the direction's recommended strength")
    video.add_argument("--layers", choices=LAYER_PRESETS, default="all", help="which W+ rows the direction moves")
    video.add_argument("--smoothing", choices=list(SMOOTHING_PRESETS), default="normal",
                       help="how much the face's crop is smoothed over time (default normal; offline: each shot "
                            "looking both ways, no lag)")
    video.add_argument("--face-tracking", choices=("on", "off"), default="on",
                       help="'on' (default): detect the face at chunk starts, scene cuts, a lost face and once a "
                            "second, and follow its landmarks in between; 'off': detect it in every frame")
    video.add_argument("--chunk-frames", type=whole(1), default=DEFAULT_CHUNK,
                       help=f"frames per task (default {DEFAULT_CHUNK}; with --face-tracking on, rounded to whole "
                            f"refresh intervals, 1 s of frames, so every chunk starts on a detection)")
    video.add_argument("--paste-mask", choices=MASKS, default="face", help=PASTE_MASK_HELP)
    video.add_argument("--keep-parts", action="store_true", help="keep the finished chunks after the video is written")
    video.add_argument("--landmarks", default=None, help="dlib shape_predictor_68_face_landmarks.dat")
    add_refine_options(video, photos=False, video=True)
    add_model_options(video, encoder=True)
    _add_ray_options(video)
    video.set_defaults(handler=_cmd_batch_video)


def _cmd_batch_video(args: argparse.Namespace) -> int:
    if len(strength_tokens(args.strength)) != 1:
        raise EssenceError(f"--strength needs one number or 'auto' for a video, got {args.strength!r}.")
    check_output(args.out, [args.video, args.direction, *model_inputs(args)], suffixes=VIDEO_SUFFIXES)
    check_refine_options(args)
    [strength] = strengths_for(args.strength, load_direction(args.direction))
    job = VideoJob(Path(args.video), args.out, Path(args.direction), strength, args.layers, args.smoothing,
                   chunk_frames=args.chunk_frames, face_tracking=args.face_tracking == "on", mask=args.paste_mask,
                   tuning=tuning_option(args, clip=True))
    models = VideoModels(args.generator, args.encoder, args.landmarks, args.device, args.lpips)
    result = run_video_job(job, models, workers=args.workers, address=args.address,
                           gpus_per_worker=_gpus_per_worker(args),
                           progress=not args.no_progress, keep_parts=args.keep_parts)
    if not result.reports:
        print(f"{result.path} is already complete ({result.info.describe()}); nothing to do.")
        return 0
    for stage, report in result.reports.items():
        print(f"{STAGES[stage]}: {report.summary()}")
    print(f"Wrote {result.path}: {result.info.frames} frames at {result.info.rate} fps.")
    return 0


# ----------------------------------------------------------------------------- shared


def expand_inputs(items: list[str], suffixes: tuple[str, ...], what: str) -> list[Path]:
    """Files as given, and the files with one of ``suffixes`` inside each folder given (sorted)."""
    found: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not inside:
                raise EssenceError(f"{path}: the folder holds no {what} ({', '.join(suffixes)}).")
            found += inside
        elif path.exists():
            found.append(path)
        else:
            raise EssenceError(f"{path}: no such file or folder.")
    return found


def _check_stems(paths: list[Path], what: str) -> None:
    """Outputs are named after their inputs, so two inputs may not share a name."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise EssenceError(f"{what} {seen[path.stem]} and {path} share the name {path.stem!r}, and outputs are "
                               f"named after their inputs: rename one, or run them in separate batches.")
        seen[path.stem] = path


def _runner_options(args: argparse.Namespace) -> dict[str, Any]:
    """How the batch runs (``run_batch``'s options), from the Ray options every batch command has."""
    return dict(workers=args.workers, address=args.address, gpus_per_worker=_gpus_per_worker(args),
                progress=not args.no_progress)


def _gpus_per_worker(args: argparse.Namespace) -> int | None:
    """0 keeps the workers off GPUs (--device cpu or mps); None: "auto" and "cuda" give each worker a
    GPU when the cluster has GPUs."""
    return 0 if args.device in ("cpu", "mps") else None


@contextlib.contextmanager
def _report_when_stopped(out: Path) -> Iterator[None]:
    """A batch stopped by Ctrl-C or SIGTERM still writes its report (what finished, the rest
    ``stopped``) before the command ends with 130 or 143: the user sees what was done, and a rerun
    does the rest."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit) as exc:
        report = BatchReport.of_stopped(exc)
        if report is not None:
            json_path, csv_path = report.write(out, REPORT_NAME)
            print(f"{report.summary()} Report: {json_path} ({csv_path.name}).", flush=True)
        raise


def _finish(out: Path, report: BatchReport) -> int:
    json_path, csv_path = report.write(out, REPORT_NAME)
    for record in report.failed[:MAX_ERRORS_SHOWN]:
        print(f"failed {record.key}: {record.error}", file=sys.stderr)
    if len(report.failed) > MAX_ERRORS_SHOWN:
        print(f"... and {len(report.failed) - MAX_ERRORS_SHOWN} more failures (see the report).", file=sys.stderr)
    print(f"{report.summary()} Report: {json_path} ({csv_path.name}).")
    if report.failed:
        print(f"error: {len(report.failed)} task(s) failed; run the same command again to retry only those.",
              file=sys.stderr)
        return 2
    return 0


SUBCOMMANDS = [_add_batch]
