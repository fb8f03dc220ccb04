"""Make the repository's ``tests/fixtures/clip_tiny.pt`` from the golden ``clip_tiny.pt``.

    python tests/tools/slim_clip.py ../shared/fixtures/clip_tiny.pt tests/fixtures/clip_tiny.pt

The golden file is 14 MB, 12.6 MB of it the text tower's token table (``token_embedding.weight``,
49408 x 64 values), which Essence never reads: it keeps CLIP's image tower only. The slim copy keeps
every other tensor bit for bit, in the same order, and the first ``--vocab`` rows of the token
table, so it is still a plain CLIP state dict that ``clip.load(path, jit=False)`` and Essence's
loader build (``build_model`` reads the vocabulary size from that table). Its image embeddings are
those of the golden file bit for bit (tests/test_fixtures.py checks this when the golden file is
present); text through it can only use the first ``--vocab`` token ids.
"""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import torch

TOKEN_TABLE = "token_embedding.weight"


def slim_state(state: dict[str, torch.Tensor], vocab: int) -> OrderedDict[str, torch.Tensor]:
    """The state dict with the token table cut to its first ``vocab`` rows, every other tensor as it was."""
    if TOKEN_TABLE not in state:
        raise SystemExit(f"not a CLIP state dict: no {TOKEN_TABLE}")
    return OrderedDict((key, value[:vocab].clone() if key == TOKEN_TABLE else value) for key, value in state.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="the golden clip_tiny.pt")
    parser.add_argument("out", type=Path, help="where to write the slim copy")
    parser.add_argument("--vocab", type=int, default=256, help="token table rows to keep (default 256)")
    args = parser.parse_args()
    state = torch.load(args.source, map_location="cpu", weights_only=True)
    torch.save(slim_state(state, args.vocab), args.out)
    print(f"wrote {args.out}: {args.out.stat().st_size:,} bytes (from {args.source.stat().st_size:,})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
