"""The encoder variant's commands: ``train-encoder`` (train or resume an essence encoder) and ``encode``
(a target's pictures -> a direction file in one pass; with ``--targets-dir``, every target of a folder,
their faces through the encoder in batches, as ``essence batch encode`` does on Ray).

As every command: all options and outputs are checked before any model loads or any step runs
(``storage.check_files``), errors are one ``error:`` line, and the library does the work
(``essence.encoding``; with ``--workers``, ``essence.scale.run_encoder_training`` on Ray Train). A
``train-encoder`` killed at any point is resumed by running it again.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import EssenceError
from ..latents import load_latents, sample_latents
from ..networks import load_encoder, load_generator, load_guide
from ..encoding import (EncoderData, EncoderProgress, EncoderSettings, check_encoder_outputs,
                        encode_essence, folder_pictures, generated_data, load_essence_encoder, photo_data,
                        picture_data, train_encoder_file)
from ..runtime import resolve_device
from ..scale import EncoderModels, run_encoder_training
from ..storage import Output, check_files, save_or_rescue
from .batch import ENCODE_FOLDER_HELP, add_encode_options, encode_folder
from .directions import SAFETENSORS, add_model_options, model_inputs, number, report_memory_retry, whole

DEFAULTS = EncoderSettings()
DEFAULT_SOURCES = 5  # the official encoder_sources.pt holds 5 rows
# in one process training already went down to one face a pass before it gives up; workers do not retry
ENCODER_MEMORY_ADVICE = "Use fewer source faces (--sources), or run on the CPU (--device cpu)."
WORKERS_MEMORY_ADVICE = ("Give --chunk 1 (source faces rendered per pass: the same result with less memory), or use "
                         "fewer source faces (--sources).")
WORKERS_HELP = (
    "train on N Ray Train workers (DDP; gloo on CPUs, one GPU each when the cluster has GPUs) instead of this "
    "process. Each step trains on N x --batch-size pictures (the effective batch), chosen from --seed and the step "
    "as one process would; the gradient is averaged over the workers. The official --lr 1e-4 is for a batch of 1: "
    "for a few workers (up to about 8) we suggest keeping it, since Ranger's steps hardly grow with the batch; "
    "for more, try lr x sqrt(N). Linear scaling (lr x N) is SGD's rule and is likely too much here. This is "
    "guidance, not measured. A step sees N times the pictures, so --max-steps / N sees as many as one process. "
    "Checkpoints go to <checkpoints>/ray-train/; run the same command again to resume")


def _add_train_encoder(subparsers) -> None:
    p = subparsers.add_parser(
        "train-encoder", help="fine-tune e4e so that it gives a target's essence in one pass (TargetCLIP's encoder)",
        description="Train an essence encoder as TargetCLIP's coach does (Ranger, the README's settings); run the "
                    "same command again to resume a run that was stopped or killed.")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--photos", help="a folder of face photos: each face is aligned (cached) and used")
    data.add_argument("--pictures", help="a folder of pictures used as they are (aligned face crops), resized to 256 px")
    data.add_argument("--generated", type=whole(1), metavar="N", help="train on N faces drawn by the generator")
    p.add_argument("--heldout", type=whole(0), default=5,
                   help="pictures held out for validation: the last ones of the folder by name, or extra generated "
                        "faces (default 5)")
    p.add_argument("--sources", help="source latents file (TargetCLIP's encoder_sources.pt or a latent file); "
                                     f"default: {DEFAULT_SOURCES} seeded samples")
    p.add_argument("--out", "-o", required=True, help="the encoder file to write (.safetensors)")
    p.add_argument("--checkpoints", help="checkpoint folder (default: <out>.checkpoints beside the output)")
    p.add_argument("--max-steps", type=whole(0), default=DEFAULTS.max_steps,
                   help=f"the official max_steps: max_steps + 1 updates (default {DEFAULTS.max_steps})")
    p.add_argument("--lr", type=number(0), default=DEFAULTS.lr, help=f"Ranger's learning rate (default {DEFAULTS.lr:g})")
    p.add_argument("--lambda-consistency", type=number(0), default=DEFAULTS.lambda_consistency,
                   help=f"default {DEFAULTS.lambda_consistency:g}")
    p.add_argument("--lambda-reg", type=number(0), default=DEFAULTS.lambda_reg, help=f"default {DEFAULTS.lambda_reg:g}")
    p.add_argument("--batch-size", type=whole(1), default=DEFAULTS.batch_size,
                   help="pictures a step, on each worker with --workers (default 1, as the README)")
    p.add_argument("--flip", type=number(0), default=DEFAULTS.flip, help="chance of a left-right flip (default 0.5)")
    p.add_argument("--no-shuffle", action="store_true", help="take the pictures in order (by name) every epoch")
    p.add_argument("--validate-every", type=whole(1), default=DEFAULTS.validate_every,
                   help=f"steps between validations (default {DEFAULTS.validate_every}, as the README)")
    p.add_argument("--checkpoint-every", type=whole(1), default=DEFAULTS.checkpoint_every,
                   help=f"steps between checkpoints (default {DEFAULTS.checkpoint_every})")
    p.add_argument("--seed", type=whole(0), default=0, help="seed of the order, the flips, the sources and generated faces")
    p.add_argument("--chunk", type=whole(1), default=None,
                   help="source faces rendered per pass (less memory, same result; default: all at once, and in one "
                        "process fewer when the device runs out of memory)")
    p.add_argument("--landmarks", help="dlib's 68-point landmark file (for --photos)")
    p.add_argument("--workers", type=whole(1), default=None, metavar="N", help=WORKERS_HELP)
    p.add_argument("--address", default=None,
                   help="with --workers: the Ray cluster to run on (default: $RAY_ADDRESS, else a local Ray on this "
                        "machine); the model files and the checkpoint folder must be reachable by every node")
    add_model_options(p, encoder=True, guide=True)
    p.set_defaults(handler=_cmd_train_encoder, out_of_memory_advice=ENCODER_MEMORY_ADVICE)


def _settings(args: argparse.Namespace) -> EncoderSettings:
    return EncoderSettings(max_steps=args.max_steps, lr=args.lr, lambda_consistency=args.lambda_consistency,
                           lambda_reg=args.lambda_reg, batch_size=args.batch_size, flip=args.flip,
                           shuffle=not args.no_shuffle, validate_every=args.validate_every,
                           checkpoint_every=args.checkpoint_every, seed=args.seed, chunk_size=args.chunk)


def _cmd_train_encoder(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.address is not None and args.workers is None:
        raise EssenceError("--address runs the training on a Ray cluster: give --workers N too.")
    folder = args.photos or args.pictures
    if folder is not None:
        folder_pictures(folder)  # refused now when it holds no picture
    inputs = [folder, args.sources, *model_inputs(args)]
    checkpoints = check_encoder_outputs(args.out, args.checkpoints, inputs, distributed=args.workers is not None)
    generator = load_generator(args.generator, device=args.device)
    sources = (load_latents(args.sources, generator) if args.sources
               else sample_latents(generator, DEFAULT_SOURCES, seed=args.seed)).latents
    data = _data(args, generator, checkpoints)
    where = (f"on {args.workers} Ray Train worker(s), {args.workers} x {settings.batch_size} picture(s) a step"
             if args.workers is not None else "in this process")
    print(f"Training an essence encoder {where}: {data.train.shape[0]} training and {data.heldout.shape[0]} "
          f"held-out picture(s) ({data.kind}), {sources.shape[0]} sources, {settings.updates} updates; checkpoints "
          f"in {checkpoints}.", flush=True)
    if args.workers is not None:
        args.out_of_memory_advice = WORKERS_MEMORY_ADVICE
        models = EncoderModels(args.generator, args.guide, args.encoder, args.device)
        file, training = run_encoder_training(args.out, data, sources, settings, models, workers=args.workers,
                                              address=args.address, checkpoints=checkpoints, inputs=inputs,
                                              start=args.encoder, progress=_progress_bar())
    else:
        guide = load_guide(args.guide, device=args.device)
        encoder = load_encoder(args.encoder, device=args.device)
        file, training = train_encoder_file(args.out, encoder, generator, guide, data, sources, settings,
                                            checkpoints=checkpoints, start=args.encoder, progress=_progress_bar(),
                                            on_retry=report_memory_retry)
    if training.resumed_from:
        print(f"Resumed from step {training.resumed_from}.")
    best = f"best validation loss {training.best_loss:.4f} at step {training.best_step}" \
        if training.best_loss is not None else "no held-out pictures: the last update kept"
    print(f"Saved {args.out} ({best}).")
    return 0


def _data(args: argparse.Namespace, generator, checkpoints: Path) -> EncoderData:
    if args.generated is not None:
        return generated_data(generator, args.generated, args.heldout, seed=args.seed)
    if args.photos:
        return photo_data(args.photos, args.heldout, landmarks=args.landmarks, cache=checkpoints)
    files = folder_pictures(args.pictures)
    if args.heldout >= len(files):
        raise EssenceError(f"{args.pictures}: {len(files)} pictures cannot keep {args.heldout} held out and still "
                           f"train on one.")
    split = len(files) - args.heldout
    return picture_data([str(f) for f in files[:split]], [str(f) for f in files[split:]],
                        names=[f.name for f in files])


def _progress_bar():
    from tqdm import tqdm

    bars: list = []

    def report(p: EncoderProgress) -> None:
        if not bars:
            bars.append(tqdm(total=p.updates, initial=p.done - 1, unit="step", dynamic_ncols=True))
        bar = bars[0]
        bar.update(p.done - bar.n)
        shown = {"loss": f"{p.losses[0]:.4f}"}
        if p.best_loss is not None:
            shown["best_val"] = f"{p.best_loss:.4f}"
        bar.set_postfix(shown)
        if p.done == p.updates:
            bar.close()

    return report


def _add_encode(subparsers) -> None:
    p = subparsers.add_parser("encode", help="a target's essence in one pass with a trained encoder -> direction file",
                              description="Encode pictures of one target with an essence encoder (train-encoder) "
                                          "into a standard direction file; several pictures are averaged. With "
                                          "--targets-dir, every target of a folder (see below) into --out-dir/"
                                          "<target>.safetensors, their faces through the encoder in batches. "
                                          "Finished outputs are skipped when run again; report.json / report.csv "
                                          "list every target (`essence batch encode` does the same on Ray).")
    p.add_argument("targets", nargs="*", metavar="TARGET", help="picture(s) of the target")
    p.add_argument("--targets-dir", help=f"instead of TARGET...: {ENCODE_FOLDER_HELP}")
    p.add_argument("--encoder-file", required=True, help="the essence encoder (.safetensors from train-encoder)")
    p.add_argument("--out", "-o", help="the direction file to write (.safetensors)")
    p.add_argument("--out-dir", type=Path, help="with --targets-dir: the folder for the directions and the report")
    p.add_argument("--name", help="the direction's name (default: the first picture's)")
    add_encode_options(p)
    p.add_argument("--no-progress", action="store_true", help="with --targets-dir: no progress bar")
    p.set_defaults(handler=_cmd_encode)


def _cmd_encode(args: argparse.Namespace) -> int:
    if args.targets_dir is not None:
        given = [option for option, value in (("TARGET", args.targets), ("--out", args.out), ("--name", args.name))
                 if value]
        if given:
            raise EssenceError(f"--targets-dir encodes every target of a folder into --out-dir, each named after "
                               f"its target: leave out {', '.join(given)}.")
        if args.out_dir is None:
            raise EssenceError("--targets-dir needs --out-dir, the folder its directions go to.")
        return encode_folder(args, args.out_dir, "--out-dir", on_ray=False)
    if not args.targets:
        raise EssenceError("give the target's picture(s), or --targets-dir for a folder of targets.")
    if args.out is None or args.out_dir is not None:
        raise EssenceError("one target is written to --out (a .safetensors file); --out-dir goes with --targets-dir.")
    check_files([Output(Path(args.out), "--out", SAFETENSORS)],
                [*args.targets, args.encoder_file, args.generator, args.landmarks])
    generator = load_generator(args.generator, device=args.device) if args.generator else None
    encoder = load_essence_encoder(args.encoder_file, generator, device=resolve_device(args.device))
    direction = encode_essence(encoder, args.targets, align=not args.no_align, landmarks=args.landmarks,
                               generator=generator, name=args.name, encoder_file=args.encoder_file)
    save_or_rescue(direction.save, args.out, "encoded direction")
    print(f"Saved {args.out} ({len(args.targets)} picture(s) encoded with {Path(args.encoder_file).name}).")
    return 0


SUBCOMMANDS = [_add_train_encoder, _add_encode]
