"""An encoder training on several processes of torch's own DDP launcher, outside Ray: the reference a
run on Ray Train's workers must equal (the same ``train_encoder``, the same ``DistributedWorkers``).

``torch.multiprocessing.spawn`` starts the processes (gloo, a file store in a temporary folder); rank 0
writes what the run ended with into that folder, and ``ddp_training`` reads it back as an object with the
fields of ``essence.encoding.EncoderTraining`` that the tests compare. Far cheaper than a Ray Train run
(no controller, no actors: two processes), so tests need a Ray Train run only where Ray is what they check.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file


def ddp_training(files, data, sources: torch.Tensor, settings, workers: int = 2) -> SimpleNamespace:
    """``train_encoder`` on ``workers`` DDP processes with the models in ``files`` (``TinyFiles``):
    ``losses``, ``validations``, ``best_step``, ``best_loss``, ``encoder`` (the last one) and
    ``best_state`` of rank 0."""
    import essence

    with tempfile.TemporaryDirectory(prefix="essence-ddp-") as folder:
        models = (str(files.generator), str(files.guide), str(files.encoder))
        torch.multiprocessing.spawn(_rank, args=(workers, folder, models, data, sources, settings), nprocs=workers)
        record = json.loads((Path(folder) / "training.json").read_text())
        encoder = essence.load_encoder(models[2], cache=False)
        encoder.load_state_dict(load_file(str(Path(folder) / "encoder.safetensors")), strict=True)
        best = Path(folder) / "best.safetensors"
        return SimpleNamespace(**record, encoder=encoder.eval(), best_state=load_file(str(best)) if best.exists() else None)


def _rank(rank: int, count: int, folder: str, models: tuple[str, str, str], data, sources, settings) -> None:
    import essence
    from essence.encoding import DistributedWorkers, train_encoder

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=count)
    try:
        generator = essence.load_generator(models[0], cache=False)
        guide = essence.load_guide(models[1], cache=False)
        encoder = essence.load_encoder(models[2], cache=False)
        training = train_encoder(encoder, generator, guide, data, sources, settings,
                                 workers=DistributedWorkers(rank, count, torch.device("cpu")))
    finally:
        torch.distributed.destroy_process_group()
    if rank != 0:
        return
    out = Path(folder)
    save_file({k: v.contiguous() for k, v in training.encoder.state_dict().items()}, str(out / "encoder.safetensors"))
    if training.best_state is not None:
        save_file({k: v.contiguous() for k, v in training.best_state.items()}, str(out / "best.safetensors"))
    (out / "training.json").write_text(json.dumps({"losses": training.losses, "validations": training.validations,
                                                   "best_step": training.best_step, "best_loss": training.best_loss}))
