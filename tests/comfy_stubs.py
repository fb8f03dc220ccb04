"""Small stand-ins for the few ComfyUI functions the Essence nodes use, and the pack imported as
ComfyUI imports it.

ComfyUI cannot be installed from a package registry, so these fakes reproduce just the behaviour
the nodes rely on (read from ComfyUI's ``folder_paths.py``, ``comfy/utils.py`` and
``comfy/model_management.py``): the model-folder registry with its extension filter, the progress
bar's ``update_absolute(value, total, preview)``, and the interrupt flag that
``throw_exception_if_processing_interrupted`` turns into ``InterruptProcessingException``.
``tests/test_comfyui_server.py`` checks the same nodes against a real ComfyUI server.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import shutil
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PACK = "essence_pack"
SUPPORTED_PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
TINY_MODELS = {"essence_stylegan2": "stylegan2_tiny64.pt", "essence_e4e": "e4e_tiny64.pt",
               "essence_clip": "clip_tiny.pt"}
LANDMARKS_FOLDER = "essence_landmarks"
LANDMARKS_NAME = "shape_predictor_68_face_landmarks.dat"


def installed_landmarks() -> Path | None:
    """dlib's real 68-point model (there is no tiny one), where an installed package put it
    (PyPI's face-recognition-models, Debian's libdlib-data), or None."""
    from essence.weights import installed_package_dirs

    for _label, folder in installed_package_dirs("landmarks"):
        if (folder / LANDMARKS_NAME).is_file():
            return folder / LANDMARKS_NAME
    return None


# ----------------------------------------------------------------------------- fake modules


def make_folder_paths(models_dir: Path) -> types.ModuleType:
    """``folder_paths`` with ComfyUI's registry semantics (an empty extension set lists every file)."""
    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(models_dir)
    fp.supported_pt_extensions = set(SUPPORTED_PT_EXTENSIONS)
    fp.folder_names_and_paths = {}

    def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
        if folder_name not in fp.folder_names_and_paths:
            fp.folder_names_and_paths[folder_name] = ([full_folder_path], set())
            return
        paths = fp.folder_names_and_paths[folder_name][0]
        if full_folder_path in paths:
            if is_default:
                paths.remove(full_folder_path)
                paths.insert(0, full_folder_path)
        elif is_default:
            paths.insert(0, full_folder_path)
        else:
            paths.append(full_folder_path)

    def get_folder_paths(folder_name: str) -> list[str]:
        return fp.folder_names_and_paths[folder_name][0][:]

    def get_filename_list(folder_name: str) -> list[str]:
        paths, extensions = fp.folder_names_and_paths[folder_name]
        found = set()
        for folder in paths:
            for root, _dirs, files in os.walk(folder, followlinks=True):
                for name in files:
                    if not extensions or os.path.splitext(name)[1].lower() in extensions:
                        found.add(os.path.relpath(os.path.join(root, name), folder))
        return sorted(found)

    def get_full_path(folder_name: str, filename: str) -> str | None:
        if folder_name not in fp.folder_names_and_paths:
            return None
        filename = os.path.relpath(os.path.join("/", filename), "/")  # ComfyUI's own traversal guard
        for folder in fp.folder_names_and_paths[folder_name][0]:
            candidate = os.path.join(folder, filename)
            if os.path.isfile(candidate):
                return candidate
        return None

    fp.add_model_folder_path = add_model_folder_path
    fp.get_folder_paths = get_folder_paths
    fp.get_filename_list = get_filename_list
    fp.get_full_path = get_full_path
    return fp


class InterruptProcessingException(Exception):
    """ComfyUI's cancel exception."""


def make_model_management() -> types.ModuleType:
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException
    mm.OOM_EXCEPTION = torch.OutOfMemoryError
    mm.interrupt_processing = False
    mm.empty_cache_calls = 0
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")

    def soft_empty_cache(force: bool = False) -> None:
        mm.empty_cache_calls += 1

    def interrupt_current_processing(value: bool = True) -> None:
        mm.interrupt_processing = value

    def throw_exception_if_processing_interrupted() -> None:
        if mm.interrupt_processing:
            mm.interrupt_processing = False
            raise InterruptProcessingException()

    mm.soft_empty_cache = soft_empty_cache
    mm.interrupt_current_processing = interrupt_current_processing
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    return mm


@dataclass
class ProgressLog:
    """Every ``update_absolute`` call, and an optional hook run on each (as ComfyUI's server hook is)."""

    updates: list[tuple[int, int, Any]] = field(default_factory=list)
    hook: Callable[[int, int, Any], None] | None = None


def make_comfy_utils(log: ProgressLog) -> types.ModuleType:
    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total: int, node_id: Any = None):
            self.total, self.current = total, 0

        def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
            if total is not None:
                self.total = total
            self.current = min(value, self.total)
            log.updates.append((self.current, self.total, preview))
            if log.hook is not None:
                log.hook(self.current, self.total, preview)

        def update(self, value: int) -> None:
            self.update_absolute(self.current + value)

    utils.ProgressBar = ProgressBar
    return utils


# ----------------------------------------------------------------------------- the pack


def import_pack(name: str = PACK) -> types.ModuleType:
    """Import the repository root as a package, the way ComfyUI imports a custom-node folder."""
    drop_pack(name)
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def drop_pack(name: str = PACK) -> None:
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]


@dataclass
class ComfyEnv:
    """A fake ComfyUI with a real models folder, and the pack imported into it."""

    pack: types.ModuleType
    models_dir: Path
    folder_paths: types.ModuleType
    model_management: types.ModuleType
    progress: ProgressLog

    def node(self, node_id: str) -> type:
        return self.pack.NODE_CLASS_MAPPINGS[node_id]

    def run(self, node_id: str, **inputs: Any) -> tuple:
        """Execute a node as ComfyUI does: check the inputs against INPUT_TYPES (and the node's own
        VALIDATE_INPUTS), instantiate it, call its FUNCTION under inference mode, and check the
        outputs against RETURN_TYPES."""
        cls = self.node(node_id)
        validate_inputs(cls, inputs)
        with torch.inference_mode():
            result = getattr(cls(), cls.FUNCTION)(**inputs)
        outputs = result["result"] if isinstance(result, dict) else result
        check_outputs(self.pack, cls, outputs)
        return tuple(outputs)

    def dir(self, folder: str) -> Path:
        return self.models_dir / folder


def validate_inputs(cls: type, inputs: dict[str, Any]) -> None:
    """ComfyUI's checks before running a node (execution.validate_inputs), for direct values."""
    spec = cls.INPUT_TYPES()
    declared = {**spec.get("required", {}), **spec.get("optional", {})}
    missing = set(spec.get("required", {})) - set(inputs)
    assert not missing, f"{cls.__name__}: required inputs missing: {missing}"
    assert set(inputs) <= set(declared), f"{cls.__name__}: unknown inputs {set(inputs) - set(declared)}"
    custom = getattr(cls, "VALIDATE_INPUTS", None)
    custom_args = inspect.getfullargspec(custom).args if custom else []
    for name, value in inputs.items():
        kind, options = declared[name][0], (declared[name][1] if len(declared[name]) > 1 else {})
        if name in custom_args:
            continue
        if isinstance(kind, list):
            assert value in kind, f"{cls.__name__}.{name}: {value!r} not in {kind}"
        elif kind in ("INT", "FLOAT"):
            assert options.get("min", value) <= value <= options.get("max", value), f"{cls.__name__}.{name}={value}"
    if custom:
        verdict = custom(**{k: v for k, v in inputs.items() if k in custom_args})
        assert verdict is True, f"{cls.__name__}.VALIDATE_INPUTS: {verdict}"


def check_outputs(pack: types.ModuleType, cls: type, outputs: Any) -> None:
    """Each output has the Python type its declared socket type promises; IMAGEs are ComfyUI images."""
    lib = pack.essence  # the pack's own copy of the library (ComfyUI imports it under the pack)
    assert isinstance(outputs, (tuple, list)) and len(outputs) == len(cls.RETURN_TYPES), cls.__name__
    expected = {"ESSENCE_GENERATOR": lib.StyleGAN2Generator, "ESSENCE_ENCODER": lib.E4EEncoder,
                "ESSENCE_GUIDE": lib.ClipGuide, "ESSENCE_DIRECTION": lib.Direction,
                "ESSENCE_LATENT": pack.nodes.types.EssenceLatent, "STRING": str,
                "ESSENCE_LANDMARKS": lib.FaceLandmarker, "ESSENCE_ALIGNMENT": pack.nodes.types.EssenceAlignment}
    for kind, value in zip(cls.RETURN_TYPES, outputs):
        if kind == "IMAGE":
            assert isinstance(value, torch.Tensor) and value.dtype == torch.float32, cls.__name__
            assert value.ndim == 4 and value.shape[-1] == 3, f"{cls.__name__}: IMAGE {list(value.shape)}"
            assert value.device.type == "cpu" and 0 <= value.min() and value.max() <= 1
        else:
            assert isinstance(value, expected[kind]), f"{cls.__name__}: {kind} output is {type(value)}"


def link_fixture(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        destination.symlink_to(source)
    except OSError:
        shutil.copyfile(source, destination)


FAKE_MODULES = ("folder_paths", "comfy", "comfy.utils", "comfy.model_management")


@contextlib.contextmanager
def fake_comfyui(models_dir: Path, extra_paths: dict[str, str] | None = None) -> Iterator[ComfyEnv]:
    """Fake ComfyUI modules in ``sys.modules`` over a real ``models_dir``, with the pack freshly
    imported into them (so its folder registration runs against ``models_dir``). ``extra_paths``
    are registered first, as ComfyUI registers ``extra_model_paths.yaml`` before custom nodes."""
    saved = {name: sys.modules.get(name) for name in FAKE_MODULES}
    fp, mm, log = make_folder_paths(models_dir), make_model_management(), ProgressLog()
    comfy_pkg = types.ModuleType("comfy")
    comfy_pkg.__path__ = []
    comfy_pkg.utils, comfy_pkg.model_management = make_comfy_utils(log), mm
    sys.modules.update({"folder_paths": fp, "comfy": comfy_pkg, "comfy.utils": comfy_pkg.utils,
                        "comfy.model_management": mm})
    try:
        for folder, path in (extra_paths or {}).items():
            fp.add_model_folder_path(folder, path)
        pack = import_pack()
        try:
            yield ComfyEnv(pack, models_dir, fp, mm, log)
        finally:
            pack.essence.weights.set_folder_provider(None)
            pack.essence.clear_model_cache()
            drop_pack()
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


@pytest.fixture
def extra_model_paths() -> dict[str, str]:
    """Folders registered before the pack loads, as ComfyUI does for extra_model_paths.yaml
    (override by parametrizing a test with ``extra_model_paths``)."""
    return {}


@pytest.fixture
def comfy_env(tmp_path, fixtures, extra_model_paths) -> Iterator[ComfyEnv]:
    """A fake ComfyUI whose models folder holds the tiny fixtures (and dlib's landmark model when a
    package installed it), with the pack imported into it."""
    models = tmp_path / "ComfyUI" / "models"
    for folder, name in TINY_MODELS.items():
        link_fixture(fixtures / name, models / folder / name)
    landmarks = installed_landmarks()
    if landmarks is not None:
        link_fixture(landmarks, models / LANDMARKS_FOLDER / LANDMARKS_NAME)
    with fake_comfyui(models, extra_model_paths) as env:
        yield env
