"""Make the repository's ``tests/fixtures/targetclip_encoder_trace.{json,safetensors}`` from the golden trace.

    python tests/tools/slim_encoder_trace.py ../shared/fixtures tests/fixtures

The golden trace (the official encoder training on the tiny models, see the shared fixtures' README)
is 7 MB, almost all of it pictures: the 8 inputs at 256 px and, per step, the target resized.
The pictures are scikit-image's and are rebuilt exactly by ``tests/encoder_trace.py``, so the slim
copy keeps only what the tests compare: the sources, every step's losses, gradient norm and essence,
the held-out essences and losses before and after training, and the few trained tensors; each bit
for bit. The JSON keeps the settings, the order, the per-step and validation records and the notes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file, save_file

NAME = "targetclip_encoder_trace"
KEPT_PREFIXES = ("sources", "step_loss_", "step_grad_norm", "step_essence", "heldout_essence_", "heldout_losses_",
                 "encoder_after.", "source_clip_raw", "step_target_clip_raw")
KEPT_JSON = ("what", "variant", "hyper", "optimizer", "seeds", "train_images", "heldout_images", "step_image_index",
             "step_image", "per_step", "official_validation", "heldout", "encoder_after_tensors", "env", "notes")


def slim(golden: dict) -> dict:
    """The tensors the tests use, unchanged."""
    return {k: v.contiguous() for k, v in golden.items() if k.startswith(KEPT_PREFIXES)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shared", type=Path, help="the shared fixtures folder holding the golden trace")
    parser.add_argument("out", type=Path, help="the folder to write the slim copy into")
    args = parser.parse_args()
    tensors = slim(load_file(args.shared / f"{NAME}.safetensors"))
    record = json.loads((args.shared / f"{NAME}.json").read_text())
    kept = {k: record[k] for k in KEPT_JSON if k in record}
    kept["slimmed"] = ("tests/tools/slim_encoder_trace.py: pictures dropped (rebuilt by tests/encoder_trace.py), "
                       "tensors kept: " + ", ".join(sorted(tensors)))
    save_file(tensors, str(args.out / f"{NAME}.safetensors"))
    (args.out / f"{NAME}.json").write_text(json.dumps(kept, indent=1) + "\n")
    print(f"wrote {args.out / NAME}.safetensors: {(args.out / f'{NAME}.safetensors').stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
