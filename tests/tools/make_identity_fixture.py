"""Record the reference ArcFace pipeline's embeddings for deterministic weights (the identity fixture).

    python tests/tools/make_identity_fixture.py PATH/TO/TargetCLIP \
        --out tests/fixtures/identity_reference [--commit SHA]

PATH/TO/TargetCLIP is a checkout of hila-chefer/TargetCLIP; only ``models/encoders/model_irse.py``,
``models/encoders/helpers.py``, ``experiments/Losses.py`` and ``configs/paths_config.py`` are used
(imported from that path, nothing of it is copied here). Its ``model_irse.py`` is the one of
omertov/encoder4editing and eladrich/pixel2style2pixel.

The reference ``IDLoss`` is built by its own ``__init__``, which constructs
``Backbone(input_size=112, num_layers=50, drop_ratio=0.6, mode='ir_se')`` and loads
``model_ir_se50.pth`` with ``load_state_dict`` (strict). Two stand-ins make that run here:
``torch.load`` returns the deterministic state dict of ``tests/identity_weights.fill_state`` (built
from the reference model's own keys and shapes), and ``.cuda()`` stays on the CPU. Its
``extract_feats`` then embeds seeded face-like inputs at 256 and 1024 px.

Writes ``<out>.json`` (key -> shape/dtype, weight seed, inputs) and ``<out>.safetensors`` (the
reference embeddings): a few tens of kilobytes, from which the tests rebuild the 175 MB network.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from identity_weights import describe_state, face_like_inputs, fill_state  # noqa: E402

WEIGHT_SEED = 2024
INPUTS = ({"name": "faces_256", "seed": 1, "count": 3, "size": 256},
          {"name": "faces_1024", "seed": 2, "count": 2, "size": 1024})


@contextlib.contextmanager
def stand_ins(state: dict[str, torch.Tensor]) -> Iterator[None]:
    """``torch.load`` gives ``state``; ``Module.cuda`` is a no-op (this machine has no GPU)."""
    saved_load, saved_cuda = torch.load, torch.nn.Module.cuda
    torch.load = lambda *args, **kwargs: {k: v.clone() for k, v in state.items()}
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.load, torch.nn.Module.cuda = saved_load, saved_cuda


def reference_modules(checkout: Path):
    sys.path.insert(0, str(checkout))
    model_irse = importlib.import_module("models.encoders.model_irse")
    losses = importlib.import_module("experiments.Losses")
    return model_irse, losses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkout", type=Path, help="a checkout of hila-chefer/TargetCLIP")
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "fixtures" / "identity_reference")
    parser.add_argument("--commit", default="", help="the checkout's commit, recorded in the fixture")
    args = parser.parse_args()

    torch.manual_seed(0)
    model_irse, losses = reference_modules(args.checkout.resolve())
    shapes = describe_state(model_irse.Backbone(112, 50, mode="ir_se", drop_ratio=0.6).state_dict())
    state = fill_state(shapes, WEIGHT_SEED)
    with stand_ins(state):
        id_loss = losses.IDLoss().eval()
    loaded = id_loss.facenet.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state), "the reference did not load the weights"

    embeddings = {}
    with torch.no_grad():
        for spec in INPUTS:
            faces = face_like_inputs(spec["seed"], spec["count"], spec["size"])
            embeddings[spec["name"]] = id_loss.extract_feats(faces).contiguous()
    for name, emb in embeddings.items():
        cos = emb @ emb.T
        print(f"{name}: {list(emb.shape)}, norms {emb.norm(dim=1).tolist()}, "
              f"off-diagonal cosines {cos[~torch.eye(len(emb), dtype=torch.bool)].tolist()}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "about": "Reference ArcFace embeddings: TargetCLIP's experiments/Losses.py IDLoss.extract_feats on "
                 "Backbone(112, 50, 'ir_se', 0.6) filled by tests/identity_weights.fill_state(state, weight_seed); "
                 "inputs from face_like_inputs(seed, count, size). Made by tests/tools/make_identity_fixture.py.",
        "reference": "hila-chefer/TargetCLIP",
        "commit": args.commit,
        "weight_seed": WEIGHT_SEED,
        "inputs": list(INPUTS),
        "state": {key: [shape, dtype] for key, (shape, dtype) in shapes.items()},  # the reference's key order
    }
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    save_file(embeddings, str(args.out.with_suffix(".safetensors")))
    print(f"wrote {args.out.with_suffix('.json')} and {args.out.with_suffix('.safetensors')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
