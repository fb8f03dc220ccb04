"""The only place Essence touches its host, ComfyUI: folders, devices, memory, progress, interruption.

ComfyUI's modules (``folder_paths``, ``comfy.utils``, ``comfy.model_management``,
``comfy.model_patcher``) are optional here, looked up when used, so the pack can be imported (and
its node classes registered and inspected) without ComfyUI; the functions that need ComfyUI then
fall back to plain CPU behaviour. The rest of ``nodes/`` calls these functions and never imports
ComfyUI.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import logging
import os
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

import torch

from ..essence import storage as essence_storage
from ..essence.errors import DeviceMemoryError, EssenceError, MissingWeightsError
from ..essence.runtime import describe_device, is_out_of_memory

DIRECTIONS_FOLDER = "essence_directions"
DIRECTION_EXTENSIONS = frozenset({".safetensors", ".npy"})
ENCODERS_FOLDER = "essence_encoders"  # trained essence encoders (TargetCLIP's encoder variant)
ENCODER_EXTENSIONS = frozenset({".safetensors"})
PREVIEW_MAX_SIZE = 512  # ComfyUI's default --preview-size


log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- lazy imports


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def folder_paths() -> ModuleType | None:
    """ComfyUI's ``folder_paths`` module, or None outside ComfyUI."""
    return _module("folder_paths")


def model_management() -> ModuleType | None:
    """``comfy.model_management``, or None outside ComfyUI."""
    return _module("comfy.model_management")


def comfy_utils() -> ModuleType | None:
    """``comfy.utils`` (for ``ProgressBar``), or None outside ComfyUI."""
    return _module("comfy.utils")


# ----------------------------------------------------------------------------- model folders


def model_folders() -> dict[str, frozenset[str]]:
    """Folder name -> file extensions, for every folder the pack registers.

    The weight folders come from the manifest's ``comfy_folder`` names so the loaders, the
    ``MissingWeightsError`` messages and ``python -m essence weights`` all agree on them.
    """
    fp = folder_paths()
    checkpoint_ext = frozenset(getattr(fp, "supported_pt_extensions", None) or {".pt", ".pth", ".safetensors"})
    folders: dict[str, frozenset[str]] = {}
    for spec in essence_storage.load_manifest():
        ext = frozenset({Path(spec.filename).suffix.lower()}) if spec.role == "landmarks" else checkpoint_ext
        folders[spec.comfy_folder] = folders.get(spec.comfy_folder, frozenset()) | ext
    folders[DIRECTIONS_FOLDER] = DIRECTION_EXTENSIONS
    folders[ENCODERS_FOLDER] = ENCODER_EXTENSIONS
    return folders


def register_model_folders() -> bool:
    """Add ``models/<folder>`` for every Essence folder to ComfyUI's registry; False outside ComfyUI.

    Paths a user already configured (``extra_model_paths.yaml`` is read before custom nodes load)
    are kept and stay first; the default folder under ComfyUI's models directory is appended.
    Extensions are merged, so a folder created by the yaml (which registers "any file") lists model
    files only. Also registers the folder provider through which ``essence.storage.find_weight`` searches
    these folders.
    """
    fp = folder_paths()
    if fp is None:
        return False
    for name, extensions in model_folders().items():
        fp.add_model_folder_path(name, os.path.join(fp.models_dir, name))
        paths, existing = fp.folder_names_and_paths[name]
        fp.folder_names_and_paths[name] = (paths, set(existing) | set(extensions))
    essence_storage.set_folder_provider(_comfy_folder_paths)
    return True


def _comfy_folder_paths(folder: str) -> list[str]:
    """Folder provider for ``essence.storage.weights``: the paths ComfyUI knows for ``folder``."""
    fp = folder_paths()
    if fp is None or folder not in fp.folder_names_and_paths:
        return []
    return list(fp.get_folder_paths(folder))


def folder_dirs(folder: str) -> list[str]:
    """Every directory registered for ``folder`` (first = where new files are written)."""
    return _comfy_folder_paths(folder)


def save_folder(folder: str) -> Path:
    """Where new files of ``folder`` go: its first registered path."""
    dirs = folder_dirs(folder)
    if not dirs:
        raise EssenceError(f"ComfyUI has no '{folder}' model folder registered; the Essence pack did not load "
                           f"properly (see ComfyUI's start-up log).")
    return Path(dirs[0])


def output_folder(name: str) -> Path:
    """``name`` in ComfyUI's output folder (where saved images go): for working files a user may
    want to find, such as a long training's checkpoints. Outside ComfyUI: ``output/name`` here."""
    fp = folder_paths()
    root = Path(fp.get_output_directory()) if fp is not None else Path("output")
    return root / name


def filename_list(folder: str) -> list[str]:
    """The files a loader dropdown offers (ComfyUI's cached listing), [] outside ComfyUI."""
    fp = folder_paths()
    if fp is None or folder not in fp.folder_names_and_paths:
        return []
    return list(fp.get_filename_list(folder))


def full_path(folder: str, filename: str) -> Path | None:
    """Where ``filename`` from a dropdown lives, or None when it is in none of the folder's paths."""
    fp = folder_paths()
    if fp is None or folder not in fp.folder_names_and_paths:
        return None
    found = fp.get_full_path(folder, filename)
    return Path(found) if found else None


def require_file(folder: str, filename: str, what: str) -> Path:
    """The path of a dropdown choice, or a ``MissingWeightsError`` naming the folder to put it in."""
    found = full_path(folder, filename)
    if found is not None:
        return found
    raise MissingWeightsError(missing_file_message(folder, filename, what))


def picked_file(folder: str, filename: Any, what: str) -> Path:
    """The file a loader's dropdown value names inside ``folder``: an ``EssenceError`` for a value that
    cannot name one (ComfyUI skips its own list check for a node with VALIDATE_INPUTS), a
    ``MissingWeightsError`` for one that is not there."""
    problem = folder_file_problem(folder, filename)
    if problem is not None:
        raise EssenceError(f"cannot load the {what}: {problem}.")
    return require_file(folder, filename, what)


def folder_file_problem(folder: str, filename: Any) -> str | None:
    """Why a dropdown value cannot name a file inside ``folder`` (empty, absolute, or leaving it with
    '..'), or None when it can."""
    if not isinstance(filename, str) or not filename:
        return "no file was picked"
    parts = filename.replace("\\", "/").split("/")
    if os.path.isabs(filename) or filename.startswith(("/", "\\")) or ".." in parts:
        return f"{filename!r} is not a file inside models/{folder}"
    return None


def missing_file_message(folder: str, filename: str, what: str) -> str:
    """Which folder to put ``filename`` in, and (for a file the manifest knows) where to get it."""
    places = folder_dirs(folder) or [f"models/{folder}"]
    where = places[0] + (f" (or another '{folder}' path: {', '.join(places[1:])})" if places[1:] else "")
    lines = [f"The {what} '{filename}' is not in ComfyUI's '{folder}' model folder. "
             f"Put it in {where}, then refresh ComfyUI (press R) and pick it."]
    return "\n".join(lines + _how_to_get(folder, filename))


def _how_to_get(folder: str, filename: str) -> list[str]:
    """Download, licence and fetch-command lines for a file the manifest knows; a hint for directions."""
    if folder == DIRECTIONS_FOLDER:
        return ["Directions come from Save Essence, or are TargetCLIP's published .npy files (the dirs/ "
                "folder of github.com/hila-chefer/TargetCLIP)."]
    if folder == ENCODERS_FOLDER:
        return ["Essence encoders are trained by you: Train Essence Encoder saves them there, and so can "
                "`python -m essence train-encoder --out ...` (no trained encoder is published)."]
    try:
        spec = essence_storage.get_spec(filename)
    except MissingWeightsError:
        return []
    return essence_storage.get_it_lines(spec) if spec.filename == filename else []


# ----------------------------------------------------------------------------- devices and memory


def compute_device() -> torch.device:
    """Where models run: ComfyUI's torch device (honours --cpu, --gpu-only, ...); CPU outside it."""
    mm = model_management()
    return torch.device(mm.get_torch_device()) if mm is not None else torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where IMAGE outputs live between nodes (CPU unless --gpu-only)."""
    mm = model_management()
    return torch.device(mm.intermediate_device()) if mm is not None else torch.device("cpu")


def offload_device() -> torch.device:
    """Where models wait between nodes (CPU, or the GPU in ComfyUI's high-VRAM mode)."""
    mm = model_management()
    return torch.device(mm.unet_offload_device()) if mm is not None else torch.device("cpu")


def release_memory() -> None:
    """Return cached device memory to the driver (ComfyUI's soft_empty_cache), e.g. between
    out-of-memory retries."""
    mm = model_management()
    if mm is not None:
        mm.soft_empty_cache()


def memory_retry_log(node: str) -> Callable[[int], None]:
    """A training ``on_retry`` hook for ``node``: a line in ComfyUI's log saying why its progress bar
    starts again (out of device memory, fewer faces a pass from now on, the same result)."""
    def retried(faces: int) -> None:
        log.warning("%s: out of device memory; going on with %d face(s) rendered per pass (the same result, "
                    "later; chunk_size %d skips this next time).", node, faces, faces)
    return retried


OUT_OF_MEMORY_ADVICE = ("Free GPU memory with ComfyUI's 'Unload Models' button, use fewer or smaller inputs, "
                        "or start ComfyUI with --cpu.")


@contextlib.contextmanager
def models_on_compute_device(*models: torch.nn.Module, working_memory: int = 0) -> Iterator[torch.device]:
    """Run a block with ``models`` on ComfyUI's compute device, as one of ComfyUI's loaded models.

    ComfyUI keeps one ledger of what occupies the GPU (``comfy.model_management``). Each model
    joins it through a ``ModelPatcher`` (``model_patcher``), and ``load_models_gpu`` first
    unloads other models until these fit, then moves them. They stay loaded after the block, so
    the next Essence node finds them in place, until ComfyUI needs the room or the user presses
    'Unload Models' (``POST /free``): then ComfyUI moves them back to the offload device.
    ``working_memory`` (bytes) is what the block needs besides the weights; ComfyUI frees that much
    too, unloading other models if it must. Outside ComfyUI nothing moves (the CPU). An
    out-of-memory error from the block is re-raised with advice a ComfyUI user can follow.
    """
    mm = model_management()
    device = compute_device()
    try:
        if mm is not None:
            # outside inference mode: parameters copied under it become inference tensors, which
            # can never take part in autograd, and the training node back-propagates through these
            with torch.inference_mode(False), torch.no_grad():
                mm.load_models_gpu([model_patcher(model) for model in models], memory_required=working_memory,
                                   force_full_load=True)
        log.info("Essence: %s on %s", ", ".join(type(m).__name__ for m in models), describe_device(
            device, _dtype(models), "ComfyUI's --cpu option" if getattr(getattr(mm, "args", None), "cpu", False)
            else ""))
        yield device
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        what = exc.what if isinstance(exc, DeviceMemoryError) else f"running on {device}"
        raise DeviceMemoryError(what, OUT_OF_MEMORY_ADVICE) from exc


def _dtype(models: tuple[torch.nn.Module, ...]) -> torch.dtype:
    """The models' weight type (Essence's networks are float32 unless their file says otherwise)."""
    for model in models:
        for parameter in model.parameters():
            return parameter.dtype
    return torch.float32


PATCHER_ATTRIBUTE = "comfy_model_patcher"


def model_patcher(model: torch.nn.Module) -> Any:
    """The one ModelPatcher through which ComfyUI manages ``model`` (made on first use).

    It is kept on the model itself: ComfyUI recognises a loaded model by its patcher's identity,
    and the pair then lives exactly as long as ComfyUI's node cache holds the model.
    """
    patcher = model.__dict__.get(PATCHER_ATTRIBUTE)
    if patcher is None:
        patcher = _whole_model_patcher_type()(model, compute_device(), offload_device())
        model.__dict__[PATCHER_ATTRIBUTE] = patcher
    return patcher


@functools.cache
def _whole_model_patcher_type() -> type:
    """``comfy.model_patcher.ModelPatcher`` for plain PyTorch modules, which move only as a whole.

    ComfyUI loads and unloads its own models layer by layer when memory is short ("lowvram"); only
    its own layer types can run with their weights split across devices. So a load here is always
    complete, and a request to free part of the model frees none of it, which makes ComfyUI unload
    the model whole.
    """
    base = importlib.import_module("comfy.model_patcher").ModelPatcher

    class WholeModelPatcher(base):
        def partially_load(self, device_to, extra_memory=0, *args, **kwargs):
            return super().partially_load(device_to, max(extra_memory, 2 * self.model_size()), *args, **kwargs)

        def partially_unload(self, device_to, memory_to_free=0, *args, **kwargs):
            return 0

    return WholeModelPatcher


# ----------------------------------------------------------------------------- progress


def check_interrupt() -> None:
    """Raise ComfyUI's InterruptProcessingException when the user pressed Cancel."""
    mm = model_management()
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def interrupted() -> bool:
    """A library ``should_stop`` hook: raises ComfyUI's interrupt exception on Cancel (so the graph
    stops as ComfyUI expects), else False."""
    check_interrupt()
    return False


def preview_or_none(draw: Callable[[], Any], node: str) -> Any:
    """``draw()`` (a progress preview), or None when the device has no room for it. A preview is only
    a picture: running out of memory for it must not stop training, nor count as training running
    out (which would restart it with smaller passes); the log says it was skipped."""
    try:
        return draw()
    except DeviceMemoryError as exc:
        release_memory()
        log.warning("%s: no preview this time (%s); training goes on.", node, exc.what)
        return None


class Progress:
    """ComfyUI's progress bar for one node (silent outside ComfyUI)."""

    def __init__(self, total: int):
        utils = comfy_utils()
        self._bar = utils.ProgressBar(total) if utils is not None else None
        self.total = total

    def update(self, value: int, preview: Any = None) -> None:
        """Set the bar to ``value``; ``preview`` is a PIL image shown on the node while it runs."""
        if self._bar is None:
            return
        shown = ("JPEG", preview, PREVIEW_MAX_SIZE) if preview is not None else None
        self._bar.update_absolute(value, self.total, shown)
