"""The command line: ``essence <command> ...`` (also ``python -m essence`` and, in a checkout, ``./run essence``).

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its arguments and
binds ``_cmd_<name>(args) -> int`` as its handler. Adding a command (align, invert, train, apply,
info) means writing that pair and listing the adder in ``SUBCOMMANDS``. Every error a user
can cause is an ``EssenceError``; ``main`` prints it as ``error: <message>`` and returns 2, so no
user ever sees a traceback for a missing file or a failed download.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterator, NoReturn, Sequence

from ..errors import DeviceMemoryError, EssenceError, EssenceWarning
from ..faces import align_faces, load_landmarker, model_to_pil
from ..latents import invert, sample_latents
from ..networks import load_encoder, load_generator
from ..runtime import describe_device, resolve_device
from ..storage import (Output, WeightSpec, atomic_write, check_files, check_output, check_outputs, cli_command,
                       companion_path, default_weights_dir, demo_specs, fetch_command, fetch_weight, file_sha256,
                       find_weight, get_it_lines, get_spec, load_manifest, locate, save_or_rescue, weight_status)
from ..training import parse_strengths
from .batch import SUBCOMMANDS as BATCH_COMMANDS
from .demo import DemoOptions, run_demo
from .directions import SUBCOMMANDS as DIRECTION_COMMANDS
from .encoder import SUBCOMMANDS as ENCODER_COMMANDS
from .directions import (SAFETENSORS, add_refine_options, add_training_options, check_refine_options, model_inputs, number,
                         training_progress_bar, tuning_option, whole)
from .metrics import SUBCOMMANDS as METRICS_COMMANDS

PathLike = str | os.PathLike

EXIT_OK = 0
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process ended by it
# what a CLI user can do when even the smallest batch does not fit (commands may set their own)
OUT_OF_MEMORY_ADVICE = "Run on the CPU (--device cpu), or close other programs that use the GPU."

SubcommandAdder = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit status (0 ok, 2 user error, 130 interrupted, 143 terminated)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or argparse's own usage error (already printed)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USER_ERROR
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    try:
        device = getattr(args, "device", None)
        if device is not None:  # the commands that run a network: say once where they run, and why not the GPU
            print(f"Device: {_device_line(device)}.", flush=True)
        with warnings.catch_warnings(), _terminate_cleanly():
            warnings.simplefilter("always", EssenceWarning)
            warnings.showwarning = _warning_printer(warnings.showwarning)
            return handler(args)
    except DeviceMemoryError as exc:
        advice = getattr(args, "out_of_memory_advice", OUT_OF_MEMORY_ADVICE)
        print(f"error: {exc.advised(advice)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except EssenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # what no check could foresee: a full disk, a folder removed while working
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"error: {where}{(exc.strerror or str(exc)).lower()}; nothing was left half-written.",
              file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """SIGTERM (what ``kill`` and schedulers send) ends the command the way Ctrl-C does: by an
    exception, so every writer removes its temporary file on the way out, then exit status 143."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, _frame: object) -> None:
        print("terminated", file=sys.stderr)
        raise SystemExit(EXIT_TERMINATED)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _device_line(device: str) -> str:
    """``--device`` as the line ``main`` prints (an ``EssenceError`` when this machine cannot use it)."""
    return describe_device(resolve_device(device), chosen_by=f"--device {device}" if device != "auto" else "")


def _warning_printer(others: Callable[..., None]) -> Callable[..., None]:
    """Show Essence's own warnings as ``warning: <message>`` (no file and line: they are about the
    user's input); other warnings as before."""
    def show(message, category, *args, **kwargs) -> None:
        if issubclass(category, EssenceWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            others(message, category, *args, **kwargs)

    return show


class _Parser(argparse.ArgumentParser):
    """argparse, with its refusals in the form of every other: one ``error:`` line and exit 2 (the
    whole usage block buries the one line that says what was wrong; ``--help`` still shows it)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message}. See: {self.prog} --help", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser; one sub-parser per entry of ``SUBCOMMANDS``."""
    parser = _Parser(
        prog=cli_command(from_anywhere=False),  # the usage line: already running, wherever it is
        description="Essence: TargetCLIP essence transfer with StyleGAN2 (library, CLI, ComfyUI nodes).",
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


# ---------------------------------------------------------------------------------------------
# weights list / weights fetch


def _add_weights(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    weights = subparsers.add_parser("weights", help="list or download the weight files")
    actions = weights.add_subparsers(title="weights commands", metavar="ACTION")
    weights.set_defaults(handler=lambda _args: _usage(weights))

    listing = actions.add_parser("list", help="show every known weight file and whether it is installed")
    listing.add_argument("--quick", action="store_true", help="check sizes only, skip sha256 hashing")
    listing.set_defaults(handler=_cmd_weights_list)

    fetch = actions.add_parser("fetch", help="download weight files (default: those the demo needs)")
    fetch.add_argument("names", nargs="*", metavar="NAME", help="manifest name, role or file name")
    fetch.add_argument("--dir", type=Path, default=None,
                       help=f"destination folder (default: {_display(default_weights_dir())})")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch.set_defaults(handler=_cmd_weights_fetch)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USER_ERROR


def _cmd_weights_list(args: argparse.Namespace) -> int:
    rows = [_list_row(spec, hash_files=not args.quick) for spec in load_manifest()]
    header = ("NAME", "ROLE", "STATUS", "SIZE", "LICENCE", "PATH")
    print(_table([header, *rows]))
    print(f"\nDownload missing files with: {fetch_command()} [NAME ...]  (no NAME: the demo's files)")
    return EXIT_OK


def _list_row(spec: WeightSpec, hash_files: bool) -> tuple[str, ...]:
    found = locate(spec)
    status = weight_status(spec, found, hash_files=hash_files) if found else "missing"
    if found:
        size, where = found.stat().st_size, str(found)
    else:
        size, where = spec.size_bytes or spec.download_size, f"(would go to) {default_weights_dir() / spec.filename}"
    return (spec.name, spec.role, status, _human_size(size), spec.licence_short, where)


def _cmd_weights_fetch(args: argparse.Namespace) -> int:
    specs = [get_spec(name) for name in args.names] if args.names else demo_specs()
    folder = args.dir.expanduser() if args.dir else default_weights_dir()
    check_output(folder, what="--dir" if args.dir else "the weights folder", folder=True)
    _print_fetch_plan(specs, folder)
    failures = [spec.name for spec in specs if not _fetch_one(spec, folder, progress=not args.no_progress)]
    if failures:
        print(f"\nerror: could not fetch {', '.join(failures)} (see above).", file=sys.stderr)
        return EXIT_USER_ERROR
    return EXIT_OK


def _print_fetch_plan(specs: Sequence[WeightSpec], folder: Path) -> None:
    """Sizes and licences before any byte moves, so users agree to terms they have seen."""
    print(f"Fetching into {folder}:")
    for spec in specs:
        print(f"  {spec.filename}  ({spec.role}, {_human_size(spec.download_size)} to download)")
        print(f"    licence: {spec.licence}")
    print()


def _fetch_one(spec: WeightSpec, folder: Path, progress: bool) -> bool:
    try:
        path = fetch_weight(spec, folder, progress=progress)
    except EssenceError as exc:
        print(f"error: {spec.filename}: {exc}", file=sys.stderr)
        return False
    status = weight_status(spec, path)
    note = "" if status == "present" else f"  (sha256 {file_sha256(path)}; nothing published to compare it with)"
    print(f"{status}: {path}{note}")
    return status in ("present", "unverified")


# ---------------------------------------------------------------------------------------------
# demo


def _add_demo(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    demo = subparsers.add_parser(
        "demo", help="the whole idea end to end: invert a photo, train an essence, apply it, paste back",
        description="Invert a photo (default: scikit-image's astronaut), train the essence of a target "
                    "(default: scikit-image's Chelsea the cat), apply it at several strengths, paste the "
                    "edits back into the photo, and write grid.png, the direction file and a report.")
    demo.add_argument("--photo", type=Path, help="the face photo to edit (default: scikit-image's astronaut)")
    demo.add_argument("--target", type=Path, nargs="+", default=[],
                      help="target picture(s) (default: scikit-image's Chelsea the cat)")
    demo.add_argument("--out", type=Path, default=Path("output/demo"), help="output folder (default output/demo)")
    demo.add_argument("--steps", type=whole(1), default=None, help="training steps (default 1000 on CUDA, 150 otherwise)")
    add_training_options(demo, default_mode=None, default_text="fast on CUDA, fast+256px otherwise")
    demo.add_argument("--strengths", default="0.5,0.8,1.2", help="comma-separated strengths to show")
    demo.add_argument("--seed", type=whole(0), default=0)
    demo.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    demo.add_argument("--download", action="store_true",
                      help="download missing weight files without asking (sizes and licences are printed)")
    for role, name in (("generator", "StyleGAN2"), ("encoder", "e4e"), ("guide", "CLIP"), ("landmarks", "dlib 68-point")):
        demo.add_argument(f"--{role}", type=Path, default=None, help=f"{name} file (default: looked up)")
    demo.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    given = {role for role in ("generator", "encoder", "guide", "landmarks") if getattr(args, role) is not None}
    problems = [(spec, _demo_problem(spec)) for spec in demo_specs() if spec.role not in given]
    problems = [(spec, why) for spec, why in problems if why]
    if problems and not _offer_download([spec for spec, _ in problems], args.download):
        _print_missing(problems)
        return EXIT_USER_ERROR
    strengths = tuple(parse_strengths(args.strengths, "--strengths"))
    options = DemoOptions(out_dir=args.out, photo=args.photo, targets=list(args.target), steps=args.steps,
                          mode=args.mode, lr=args.lr, weight_decay=args.weight_decay, strengths=strengths,
                          seed=args.seed, device=args.device, generator=args.generator, encoder=args.encoder,
                          guide=args.guide, landmarks=args.landmarks)
    report = run_demo(options, make_progress=training_progress_bar)
    print()
    print(report.text(), end="")
    return EXIT_OK


def _offer_download(specs: Sequence[WeightSpec], assume_yes: bool) -> bool:
    """Download the missing files when told to, or when a person at a terminal agrees."""
    if not assume_yes and not _interactive():
        return False
    _print_fetch_plan(specs, default_weights_dir())
    if not assume_yes and input("Download these files now? [y/N] ").strip().lower() not in ("y", "yes"):
        return False
    return all(_fetch_one(spec, default_weights_dir(), progress=True) for spec in specs)


def _interactive() -> bool:
    """A person can answer on stdin (it is a terminal; it may also be closed, then ``sys.stdin`` is None)."""
    return sys.stdin is not None and sys.stdin.isatty()


def _demo_problem(spec: WeightSpec) -> str | None:
    """Why ``spec`` cannot be used now ('missing' / 'damaged'), or None when it can."""
    found = locate(spec)
    if found is None:
        return "missing"
    return "damaged (wrong size)" if weight_status(spec, found, hash_files=False) == "corrupt" else None


def _print_missing(problems: Sequence[tuple[WeightSpec, str]]) -> None:
    print(f"The demo needs {len(problems)} weight file(s) that are not usable:\n", file=sys.stderr)
    for spec, why in problems:
        print(f"  {spec.filename}  ({spec.role}, '{spec.name}'): {why}", file=sys.stderr)
        for line in get_it_lines(spec):
            print(f"    {line}", file=sys.stderr)
        print(file=sys.stderr)
    print(f"Fetch them all with: {fetch_command()}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# align / invert / sample (photos -> aligned faces -> W+ latents; random latents)


def _add_align(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    align = subparsers.add_parser("align", help="detect and FFHQ-align the faces in photos (PNG crops + JSON)")
    align.add_argument("photos", nargs="+", type=Path, metavar="PHOTO")
    align.add_argument("--out", type=Path, required=True, help="folder for the crops")
    align.add_argument("--size", type=int, choices=(256, 1024), default=1024, help="crop size in pixels")
    align.add_argument("--all-faces", action="store_true", help="every face, not only the largest")
    align.add_argument("--landmarks", type=Path, default=None, help="dlib shape_predictor_68_face_landmarks.dat")
    align.set_defaults(handler=_cmd_align)


def _cmd_align(args: argparse.Namespace) -> int:
    """Write ``<stem>.png`` (``<stem>_face<i>.png`` with --all-faces) and a ``.json`` beside each
    crop with its crop-to-photo transform, landmarks and quad; print the transform."""

    inputs = [*args.photos, args.landmarks]
    check_output(args.out, inputs, folder=True)
    landmarker = load_landmarker(args.landmarks)
    failed, used = 0, set()
    for photo in args.photos:
        try:
            faces = align_faces(photo, args.size, landmarks=landmarker, all_faces=args.all_faces)
        except EssenceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        for face in faces:
            stem = _unique_stem(f"{photo.stem}_face{face.index}" if args.all_faces else photo.stem, used)
            crop, record_file = args.out / f"{stem}.png", args.out / f"{stem}.json"
            check_outputs([crop, record_file], inputs)
            with atomic_write(crop) as tmp:
                face.crop.save(tmp, format="PNG")
            record = {"photo": str(photo), "face": face.index, "transform": face.transform.to_dict(),
                      "quad": face.quad.tolist(), "box": list(face.box), "landmarks": face.landmarks.tolist()}
            with atomic_write(record_file) as tmp:
                tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
            matrix = [[round(v, 4) for v in row] for row in face.transform.matrix[:2].tolist()]
            print(f"{photo.name} face {face.index} -> {args.out / (stem + '.png')}  crop->photo {matrix}")
    return EXIT_USER_ERROR if failed else EXIT_OK


def _unique_stem(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... when two photos share a name (a/me.jpg, b/me.jpg)."""
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


def _add_invert(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    invert = subparsers.add_parser("invert", help="align photos and e4e-encode them into a W+ latent file")
    invert.add_argument("photos", nargs="+", type=Path, metavar="PHOTO")
    invert.add_argument("--out", type=Path, required=True, help="latent file to write (.safetensors)")
    invert.add_argument("--encoder", type=Path, default=None, help="e4e checkpoint (default: looked up)")
    invert.add_argument("--generator", type=Path, default=None,
                        help="generator for --reconstruction and the file's fingerprint (default: the e4e "
                             "file's own decoder)")
    invert.add_argument("--landmarks", type=Path, default=None, help="dlib shape_predictor_68_face_landmarks.dat")
    invert.add_argument("--reconstruction", type=Path, default=None, metavar="DIR",
                        help="also write G(latent) for each face as PNG into DIR (with --refine pti: drawn by the "
                             "generator tuned to that face)")
    invert.add_argument("--all-faces", action="store_true", help="every face, not only the largest")
    invert.add_argument("--skip-missing", action="store_true", help="skip photos without a face")
    invert.add_argument("--batch-size", type=whole(1), default=4)
    invert.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    add_refine_options(invert)
    invert.set_defaults(handler=_cmd_invert)


def _cmd_invert(args: argparse.Namespace) -> int:
    check_refine_options(args)
    inputs = [*args.photos, *model_inputs(args)]
    outputs = [Output(args.out, suffixes=SAFETENSORS)]
    if args.refine != "none":
        outputs.append(Output(companion_path(args.out), "the tuned weights beside --out", companion=True))
    if args.reconstruction is not None:
        outputs.append(Output(args.reconstruction, "--reconstruction", folder=True))
        _check_reconstruction_names(args.reconstruction, args.photos, inputs)
    check_files(outputs, inputs)
    inputs.append(args.out)
    encoder_file = find_weight("encoder", explicit_path=args.encoder)
    encoder = load_encoder(encoder_file, device=args.device)
    generator = None
    if args.generator is not None or args.reconstruction is not None or args.refine != "none":
        generator = load_generator(args.generator or encoder_file, device=args.device)
    tuning = tuning_option(args, device=generator.latent_avg.device) if generator is not None else None
    result = invert(args.photos, encoder, landmarks=args.landmarks, batch_size=args.batch_size,
                    return_reconstruction=args.reconstruction is not None, generator=generator,
                    all_faces=args.all_faces, skip_missing=args.skip_missing, tuning=tuning)
    for name, reason in result.failures:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    path = save_or_rescue(result.latent_set(generator, encoder_name=encoder_file.name).save, args.out,
                          "inverted faces" + (" and their tuned weights" if result.tunings else ""))
    if result.reconstructions is not None:
        used: set[str] = set()
        for face, image in zip(result.faces, model_to_pil(result.reconstructions)):
            picture = args.reconstruction / f"{_unique_stem(f'{Path(face.source).stem}_face{face.index}', used)}.png"
            check_output(picture, inputs, what="--reconstruction")
            with atomic_write(picture) as tmp:
                image.save(tmp, format="PNG")
    _, n, d = result.latents.shape
    print(f"wrote {len(result.faces)} latent(s) ({n} x {d} W+) to {path}")
    if result.tunings:
        size = sum(t.nbytes for t in result.tunings.values()) / 2**20
        print(f"wrote the generator tuned to each face ({len(result.tunings)} x float16 differences, {size:.1f} MB) "
              f"to {companion_path(path)}; keep it beside {path.name}")
    for source in result.sources:
        print(f"  {source['name']} face {source['face']}  sha256 {source['sha256'][:12]}")
    return EXIT_OK  # photos without a face were skipped on request (--skip-missing) and reported


def _check_reconstruction_names(folder: Path, photos: Sequence[Path], inputs: Sequence[PathLike | None]) -> None:
    """The pictures ``--reconstruction`` will write are ``<photo>_face<i>[-n].png``; which faces a photo
    has is known only once it is aligned, so any input in that folder named so is refused now."""
    names = re.compile("|".join(rf"{re.escape(Path(p).stem)}_face\d+(-\d+)?\.png" for p in photos))
    where = os.path.realpath(folder)
    for given in inputs:
        if given is not None and os.path.dirname(os.path.realpath(given)) == where and names.fullmatch(Path(given).name):
            raise EssenceError(f"--reconstruction {folder} would write {Path(given).name}, which is the input "
                               f"{given}. Choose another folder for the reconstructions.")


def _add_sample(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    sample = subparsers.add_parser("sample", help="random W+ latents from the generator into a latent file")
    sample.add_argument("--count", type=whole(1), default=4)
    sample.add_argument("--seed", type=whole(0), default=0)
    sample.add_argument("--truncation", type=number(0), default=0.7, help="1 = none; TargetCLIP uses 0.7")
    sample.add_argument("--out", type=Path, required=True, help="latent file to write (.safetensors)")
    sample.add_argument("--generator", type=Path, default=None, help="StyleGAN2 checkpoint (default: looked up)")
    sample.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    sample.set_defaults(handler=_cmd_sample)


def _cmd_sample(args: argparse.Namespace) -> int:
    check_output(args.out, model_inputs(args), suffixes=SAFETENSORS)
    generator_file = find_weight("generator", explicit_path=args.generator)
    generator = load_generator(generator_file, device=args.device)
    latent_set = sample_latents(generator, args.count, seed=args.seed, truncation=args.truncation)
    latent_set.meta["generator"]["name"] = generator_file.name
    path = latent_set.save(args.out)
    _, n, d = latent_set.latents.shape
    print(f"wrote {args.count} sampled latent(s) ({n} x {d} W+, seed {args.seed}, truncation "
          f"{args.truncation}) to {path}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# formatting


def _human_size(size: int | None) -> str:
    """Decimal units, as Hugging Face and most download pages print them."""
    if not size:
        return "?"
    if size < 1000:
        return f"{size} B"
    value, unit = float(size), "B"
    for unit in ("kB", "MB", "GB"):
        value /= 1000
        if value < 1000:
            break
    return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


SUBCOMMANDS: list[SubcommandAdder] = [_add_weights, _add_demo, _add_align, _add_invert, _add_sample,
                                      *DIRECTION_COMMANDS, *ENCODER_COMMANDS, *METRICS_COMMANDS,
                                      *BATCH_COMMANDS]
