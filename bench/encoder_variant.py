"""Speed and memory of TargetCLIP's encoder variant at full size (random weights): an essence in one
pass (``encode``), and the encoder's training steps (``encoder_train``).

``encode`` times what ``essence encode`` does after alignment: a target's 256 px picture through the
fine-tuned e4e (IR-SE-50, eval mode) to its essence. Set beside it, the optimiser's seconds for one
essence are 1000 x the ``train`` section's seconds per step.

``encoder_train`` times one update of the encoder's training: the e4e forward and backward at 256 px
in train mode, the target through CLIP, the sources (5, as the official file) drawn at 1024 px with
the essence and through CLIP, and Ranger's step. ``chunk`` renders that many source faces a pass
(less memory, the same gradient). The first update is a warm-up; the rest are timed.

With ``memory_gib`` (CUDA only) the process may allocate only that much, as on a smaller card
(``torch.cuda.set_per_process_memory_fraction``; 11.5 GiB stands for a 12 GB card, whose CUDA context
and display take the rest), and training runs as users' runs do: out of memory, it goes on with
fewer faces a pass by itself. The record says which chunk size it ended with.
"""

from __future__ import annotations

import statistics

import torch

SOURCES = 5  # the official encoder_sources.pt holds 5 rows
SMALL_CARD_GIB = 11.5  # what a 12 GB card leaves for tensors, about


def _full_size_encoder(device: torch.device):
    from essence.networks import EncoderConfig, build_encoder

    torch.manual_seed(0)
    return build_encoder(EncoderConfig.ir_se50(), device=device)


def _pictures(count: int) -> torch.Tensor:
    """Random 8-bit 256 px pictures: timing needs the shapes, not faces."""
    return torch.randint(0, 256, (count, 3, 256, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def bench_encode(device: torch.device, repeats: int) -> dict:
    """Seconds to encode one target picture (the network's part of ``essence encode``)."""
    from bench.measure import _peak_tracker, _timed
    from essence.encoding import essences_of

    model = _full_size_encoder(device).requires_grad_(False)
    picture = _pictures(1)
    peak = _peak_tracker(device)
    seconds = statistics.median(_timed(lambda: essences_of(model, picture), device, repeats))  # back on the CPU
    return {"seconds": seconds, "targets_per_second": 1 / seconds, "peak_mb": peak()}


def bench_encoder_train(device: torch.device, steps: int, chunk: int | None, memory_gib: float | None = None) -> dict:
    """Seconds per update of the encoder's training, and the peak memory, at full size; within
    ``memory_gib`` of device memory when given (module docstring)."""
    from bench.measure import StepClock, _peak_tracker, training_problem
    from essence.encoding import EncoderData, EncoderSettings, train_encoder

    if memory_gib is not None:
        if device.type != "cuda":
            raise ValueError("a memory limit is a CUDA measurement")
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_gib * 2**30 / total), device)
    problem = training_problem(device)
    generator, guide = problem["generator"], problem["guide"]
    encoder = _full_size_encoder(device)
    data = EncoderData(_pictures(2), _pictures(0), "pictures", {"what": "random pixels"})
    sources = generator.sample_wplus(SOURCES, seed=1, truncation=0.7)
    tracker = _peak_tracker(device)
    clock = StepClock(device)
    settings = EncoderSettings(max_steps=max(steps, 2) - 1, chunk_size=chunk, flip=0.0)
    retries: list[int] = []

    def retried(chunk_size: int) -> None:  # (CUDA only) the peak is the finished attempt's
        retries.append(chunk_size)
        torch.cuda.reset_peak_memory_stats(device)

    # without a memory limit, fit_memory=False: a run that does not fit fails rather than being timed
    # at another chunk size than its label's
    train_encoder(encoder, generator, guide, data, sources, settings, progress=clock,
                  fit_memory=memory_gib is not None, on_retry=retried)
    per_step = clock.intervals()[-(settings.updates - 1):]  # the finished attempt's, after its warm-up
    seconds = statistics.median(per_step)
    return {"steps_timed": len(per_step), "seconds_per_step": seconds, "steps_per_second": 1 / seconds,
            "chunk": chunk, "sources": SOURCES, "peak_mb": tracker(), "memory_gib": memory_gib,
            "chunk_used": retries[-1] if retries else chunk}


def format_encoder_row(row: dict) -> str:
    if row["kind"] == "encode":
        what = "encode one target (e4e, eval)"
        return f"{what:<54}{row['seconds']:>9.3f} s {row['targets_per_second']:>9.2f} targets/s {row['peak_mb']:>7.0f} MB"
    chunk = f" chunk {row['chunk']}" if row.get("chunk") else ""
    if row.get("memory_gib"):
        chunk = f" in {row['memory_gib']:g} GiB (chunk {row.get('chunk_used') or 'all'})"
    what = f"encoder training, {row['sources']} sources{chunk}"
    return (f"{what:<54}{row['seconds_per_step']:>9.3f} s/step {row['steps_per_second']:>9.3f} steps/s "
            f"{row['peak_mb']:>7.0f} MB")
