"""Storage: every file Essence reads or writes, and where weight files are found.

- ``installation``: where Essence runs from (a checkout or an installed package) and the command to suggest;
- ``files``: atomic writes and header-checked reading of safetensors and ``.npy`` files;
- ``checkpoints``: PyTorch and TorchScript files read safely (``weights_only``), strict state-dict loading;
- ``weights`` and ``weights_manifest.json``: the known weight files, their lookup order and status;
- ``outputs``: where a command writes, checked before it works (never over an input, always writable);
- ``downloads``: resumable, checksummed downloads that appear under their final name only when complete.

Nothing here knows about networks or faces; every layer above stores and loads through it.
"""

from .checkpoints import (build_loaded, describe_contents, is_torchscript_archive, load_state_strict, load_torch_file,
                          refuse_torchscript_load_code)
from .downloads import download, fetch_weight
from .files import (atomic_write, checked_stem, encode_metadata, folder_lock, load_npy_checked, next_numbered_path,
                    npy_shape, read_safetensors_header, read_typed_file, remove_temp_files, save_safetensors_atomic,
                    save_safetensors_numbered, utc_now, write_numbered)
from .installation import cli_command
from .outputs import (COMPANION_SUFFIX, Output, check_files, check_output, check_outputs, companion_path,
                      save_or_rescue)
from .weights import (WeightSpec, default_weights_dir, demo_specs, fetch_command, file_sha256, find_weight,
                      get_it_lines, get_spec, load_manifest, locate, set_folder_provider, spec_for_generator,
                      weight_inputs, weight_status)

__all__ = [
    "atomic_write", "remove_temp_files", "save_safetensors_atomic", "write_numbered", "save_safetensors_numbered",
    "next_numbered_path", "checked_stem", "folder_lock", "read_safetensors_header", "read_typed_file",
    "encode_metadata", "load_npy_checked", "npy_shape", "utc_now",
    "load_torch_file", "load_state_strict", "build_loaded", "describe_contents", "is_torchscript_archive",
    "refuse_torchscript_load_code",
    "cli_command", "check_output", "check_outputs", "check_files", "Output", "companion_path", "COMPANION_SUFFIX",
    "weight_inputs", "save_or_rescue",
    "WeightSpec", "load_manifest", "get_spec", "spec_for_generator", "demo_specs", "find_weight", "locate",
    "weight_status", "file_sha256", "fetch_command", "get_it_lines", "default_weights_dir", "set_folder_provider",
    "download", "fetch_weight",
]
