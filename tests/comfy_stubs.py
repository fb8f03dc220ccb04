"""Small stand-ins for the few ComfyUI functions the Essence nodes use, and the pack imported as
ComfyUI imports it.

ComfyUI cannot be installed from a package registry, so these fakes reproduce just the behaviour
the nodes rely on (read from ComfyUI's ``folder_paths.py``, ``comfy/utils.py``,
``comfy/model_management.py`` and ``comfy/model_patcher.py``): the model-folder registry with its
extension filter, the progress bar's ``update_absolute(value, total, preview)``, the interrupt flag
that ``throw_exception_if_processing_interrupted`` turns into ``InterruptProcessingException``, and
the loaded-model ledger (``current_loaded_models`` of ``LoadedModel``s over ``ModelPatcher``s):
``load_models_gpu`` frees room (``free_memory``) before it moves models, ``free_memory`` unloads the
least recently loaded models first and asks for partial unloads when less would do (which splits a
plain module across devices, as ComfyUI's layer-by-layer unloading does), ``unload_all_models`` is
what ``POST /free {"unload_models": true}`` runs. Signatures are ComfyUI's.
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
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PACK = "essence_pack"
SUPPORTED_PT_EXTENSIONS = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}
TINY_MODELS = {"essence_stylegan2": "generator", "essence_e4e": "encoder", "essence_clip": "guide"}  # folder: tiny file
LANDMARKS_FOLDER = "essence_landmarks"
LANDMARKS_NAME = "shape_predictor_68_face_landmarks.dat"


def installed_landmarks() -> Path | None:
    """dlib's real 68-point model (there is no tiny one), where an installed package put it
    (PyPI's face-recognition-models, Debian's libdlib-data), or None."""
    from essence.storage.weights import installed_package_dirs

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

    def get_output_directory() -> str:  # ComfyUI's output/ beside models/
        return str(models_dir.parent / "output")

    fp.add_model_folder_path = add_model_folder_path
    fp.get_output_directory = get_output_directory
    fp.get_folder_paths = get_folder_paths
    fp.get_filename_list = get_filename_list
    fp.get_full_path = get_full_path
    return fp


class InterruptProcessingException(Exception):
    """ComfyUI's cancel exception."""


def module_size(module: torch.nn.Module) -> int:
    """Bytes of a module's state (ComfyUI's ``model_management.module_size``)."""
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


def _leaf_modules(model: torch.nn.Module) -> list[tuple[int, torch.nn.Module]]:
    """(size, module) for every module holding parameters itself (ComfyUI's ``_load_list``)."""
    return [(module_size(m), m) for m in model.modules() if any(True for _ in m.parameters(recurse=False))]


def make_model_patcher() -> types.ModuleType:
    """``comfy.model_patcher`` with a ``ModelPatcher`` that loads and unloads as ComfyUI's does for a
    module without ComfyUI's own layer types: whole when the memory allows, else layer by layer."""
    mp = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
            self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
            self.parent = None
            if getattr(model, "device", None) is None:
                model.device = offload_device
            for name, value in (("model_loaded_weight_memory", 0), ("lowvram_patch_counter", 0),
                                ("model_lowvram", False)):
                if not hasattr(model, name):
                    setattr(model, name, value)
            self.model_size()

        def model_size(self) -> int:
            if self.size <= 0:
                self.size = module_size(self.model)
            return self.size

        def loaded_size(self) -> int:
            return self.model.model_loaded_weight_memory

        def lowvram_patch_counter(self) -> int:
            return self.model.lowvram_patch_counter

        def current_loaded_device(self):
            return self.model.device

        def is_clone(self, other) -> bool:
            return hasattr(other, "model") and self.model is other.model

        def model_patches_models(self) -> list:
            return []

        def model_patches_to(self, device) -> None:
            pass

        def model_dtype(self):
            return self.model.get_dtype() if hasattr(self.model, "get_dtype") else None

        def partially_load(self, device_to, extra_memory=0, force_patch_weights=False) -> int:
            before = self.loaded_size()
            if not self.model.model_lowvram and before > 0:
                return 0
            if before + extra_memory > self.model_size():
                self.model.to(device_to)
                self.model.model_lowvram = False
                self.model.model_loaded_weight_memory = self.model_size()
            else:  # as much as fits, biggest layers first; the rest stays behind
                budget = before + extra_memory
                for size, module in sorted(_leaf_modules(self.model), key=lambda x: -x[0]):
                    if size <= budget:
                        module.to(device_to)
                        budget -= size
                self.model.model_lowvram = True
                self.model.model_loaded_weight_memory = before + extra_memory - budget
            self.model.device = device_to
            return self.loaded_size() - before

        def partially_unload(self, device_to, memory_to_free=0) -> int:
            freed = 0
            for size, module in sorted(_leaf_modules(self.model), key=lambda x: x[0]):
                if freed > memory_to_free:
                    break
                module.to(device_to)
                freed += size
            self.model.model_lowvram = True
            self.model.model_loaded_weight_memory -= freed
            return freed

        def detach(self, unpatch_all=True):
            if unpatch_all:
                self.model.to(self.offload_device)
                self.model.device = self.offload_device
                self.model.model_loaded_weight_memory = 0
                self.model.model_lowvram = False
            return self.model

    mp.ModelPatcher = ModelPatcher
    return mp


def make_model_management() -> types.ModuleType:
    mm = types.ModuleType("comfy.model_management")
    mm.InterruptProcessingException = InterruptProcessingException
    mm.OOM_EXCEPTION = torch.OutOfMemoryError
    mm.interrupt_processing = False
    mm.empty_cache_calls = 0
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.module_size = module_size
    mm.current_loaded_models = []
    mm.device_memory = {}  # device -> total bytes, for devices with a memory ledger (the CPU has none)
    mm.free_memory_calls = []

    class LoadedModel:
        def __init__(self, model):
            self._model = weakref.ref(model)
            self.device = model.load_device
            self.currently_used = True

        @property
        def model(self):
            return self._model()

        def model_memory(self) -> int:
            return self.model.model_size()

        def model_offloaded_memory(self) -> int:
            return self.model.model_size() - self.model.loaded_size()

        def model_memory_required(self, device) -> int:
            return self.model_offloaded_memory() if device == self.model.current_loaded_device() else self.model_memory()

        def model_load(self, lowvram_model_memory=0, force_patch_weights=False):
            self.model.partially_load(self.device, lowvram_model_memory or 1e32, force_patch_weights=force_patch_weights)
            return self.model.model

        def model_unload(self, memory_to_free=None, unpatch_weights=True) -> bool:
            if memory_to_free is not None and memory_to_free < self.model.loaded_size():
                if self.model.partially_unload(self.model.offload_device, memory_to_free) >= memory_to_free:
                    return False
            self.model.detach(unpatch_weights)
            return True

        def __eq__(self, other) -> bool:
            return self.model is other.model

    def cleanup_models():
        """Forget loaded models whose patcher is gone (ComfyUI does it when their module is freed)."""
        mm.current_loaded_models[:] = [m for m in mm.current_loaded_models if m.model is not None]

    def get_free_memory(dev=None, torch_free_too=False):
        cleanup_models()
        dev = torch.device(dev) if dev is not None else mm.get_torch_device()
        total = mm.device_memory.get(dev, 1 << 50)
        free = total - sum(m.model.loaded_size() for m in mm.current_loaded_models if m.device == dev)
        return (free, free) if torch_free_too else free

    def free_memory(memory_required, device, keep_loaded=[]):
        mm.free_memory_calls.append((memory_required, device))
        cleanup_models()
        unloaded = []
        for loaded in reversed(list(mm.current_loaded_models)):  # least recently loaded first
            if loaded.device != device or loaded in keep_loaded:
                continue
            free = get_free_memory(device)
            if free > memory_required:
                break
            if loaded.model_unload(memory_required - free):
                mm.current_loaded_models.remove(loaded)
                unloaded.append(loaded)
        return unloaded

    def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                        force_full_load=False):
        cleanup_models()
        to_load = []
        for patcher in models:  # a model listed already leaves the list (keeping its weights) and is loaded again
            loaded = LoadedModel(patcher)
            if loaded in mm.current_loaded_models:
                loaded = mm.current_loaded_models.pop(mm.current_loaded_models.index(loaded))
            to_load.append(loaded)
        needed: dict[Any, int] = {}
        for loaded in to_load:
            needed[loaded.device] = needed.get(loaded.device, 0) + loaded.model_memory_required(loaded.device)
        for device, required in needed.items():
            if device != torch.device("cpu"):
                free_memory(required + memory_required, device)
        for loaded in to_load:
            room = None if force_full_load or loaded.device not in mm.device_memory else get_free_memory(loaded.device)
            loaded.model_load(max(room, 1) if room is not None else 0, force_patch_weights)
            mm.current_loaded_models.insert(0, loaded)

    def loaded_models(only_currently_used=False):
        cleanup_models()
        return [m.model for m in mm.current_loaded_models]

    def unload_all_models():
        free_memory(1e30, mm.get_torch_device())

    def soft_empty_cache(force: bool = False) -> None:
        mm.empty_cache_calls += 1

    def interrupt_current_processing(value: bool = True) -> None:
        mm.interrupt_processing = value

    def throw_exception_if_processing_interrupted() -> None:
        if mm.interrupt_processing:
            mm.interrupt_processing = False
            raise InterruptProcessingException()

    mm.LoadedModel = LoadedModel
    mm.get_free_memory = get_free_memory
    mm.free_memory = free_memory
    mm.load_models_gpu = load_models_gpu
    mm.loaded_models = loaded_models
    mm.unload_all_models = unload_all_models
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
    argspec = inspect.getfullargspec(custom) if custom else None
    custom_args = argspec.args if argspec else []
    takes_all = argspec is not None and argspec.varkw is not None  # ComfyUI then passes every input to it
    for name, value in inputs.items():
        kind, options = declared[name][0], (declared[name][1] if len(declared[name]) > 1 else {})
        if name in custom_args or takes_all:
            continue
        if isinstance(kind, list):
            assert value in kind, f"{cls.__name__}.{name}: {value!r} not in {kind}"
        elif kind in ("INT", "FLOAT"):
            assert options.get("min", value) <= value <= options.get("max", value), f"{cls.__name__}.{name}={value}"
    if custom:
        verdict = custom(**{k: v for k, v in inputs.items() if k in custom_args or takes_all})
        assert verdict is True, f"{cls.__name__}.VALIDATE_INPUTS: {verdict}"


def check_outputs(pack: types.ModuleType, cls: type, outputs: Any) -> None:
    """Each output has the Python type its declared socket type promises; IMAGEs are ComfyUI images."""
    lib = pack.essence  # the pack's own copy of the library (ComfyUI imports it under the pack)
    assert isinstance(outputs, (tuple, list)) and len(outputs) == len(cls.RETURN_TYPES), cls.__name__
    expected = {"ESSENCE_GENERATOR": lib.networks.StyleGAN2Generator, "ESSENCE_ENCODER": lib.networks.E4EEncoder,
                "ESSENCE_GUIDE": lib.networks.ClipGuide, "ESSENCE_DIRECTION": lib.Direction,
                "ESSENCE_LATENT": lib.LatentSet, "STRING": str,
                "ESSENCE_LANDMARKS": lib.faces.FaceLandmarker, "ESSENCE_IDENTITY": lib.networks.IdentityEncoder,
                "ESSENCE_ALIGNMENT": pack.nodes.types.EssenceAlignment,
                "ESSENCE_TRAINED_ENCODER": lib.encoding.EssenceEncoder}
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


FAKE_MODULES = ("folder_paths", "comfy", "comfy.utils", "comfy.model_management", "comfy.model_patcher")


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
    comfy_pkg.model_patcher = make_model_patcher()
    sys.modules.update({"folder_paths": fp, "comfy": comfy_pkg, "comfy.utils": comfy_pkg.utils,
                        "comfy.model_management": mm, "comfy.model_patcher": comfy_pkg.model_patcher})
    try:
        for folder, path in (extra_paths or {}).items():
            fp.add_model_folder_path(folder, path)
        pack = import_pack()
        try:
            yield ComfyEnv(pack, models_dir, fp, mm, log)
        finally:
            pack.essence.storage.weights.set_folder_provider(None)
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
def comfy_env(tmp_path, tiny_files, extra_model_paths) -> Iterator[ComfyEnv]:
    """A fake ComfyUI whose models folder holds the tiny fixtures (and dlib's landmark model when a
    package installed it), with the pack imported into it."""
    models = tmp_path / "ComfyUI" / "models"
    for folder, role in TINY_MODELS.items():
        source = getattr(tiny_files, role)
        link_fixture(source, models / folder / source.name)
    landmarks = installed_landmarks()
    if landmarks is not None:
        link_fixture(landmarks, models / LANDMARKS_FOLDER / LANDMARKS_NAME)
    with fake_comfyui(models, extra_model_paths) as env:
        yield env
