"""Where a training step's time goes: by operator category, by generator resolution, forward and backward.

``python -m bench --only breakdown`` profiles whole training steps (``essence.train``,
4 sources) with torch.profiler and adds up each operator's *self* time (GPU kernel time on CUDA, CPU
time elsewhere) into:

  conv                     the generator's convolutions (modulated 3x3, upsampling, 1x1 to-RGB)
  modulation/demodulation  style linears, input scaling by the style, demodulation gains
  noise/bias/activation    the elementwise chain after each conv: demodulation gain + noise (one
                           fused pass), bias, leaky ReLU; the to-RGB bias and skip sum
  resampling               blur / upfirdn2d, padding and pixel shuffle of the upsampling layers
  CLIP resize              TargetCLIP's x7-upsample + average-pool resize (as two matrix products)
  CLIP transformer         CLIP's image tower
  optimiser                both Adams (the direction's and the coefficients')
  other                    everything else: losses, latents, mapping, best-so-far tracking

The profiler only sees operators, so the bench gives it names: while profiling, each generator
block and CLIP part runs inside a ``record_function`` scope carrying its part and resolution
(installed by hooks from outside; the library is not modified). Backward operators are attributed
to the forward operator that created their autograd node (the profiler's sequence numbers).

Roofline numbers are computed from the recorded input shapes and dtypes: FLOPs of convolutions
(from their strides and groups), matrix products and elementwise ops (one per output element), and
bytes moved as inputs read plus one output written, each tensor once: a lower bound on the traffic.
With the measured time they give the achieved TFLOP/s and GB/s, to set against the device's peaks.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Iterator

import torch

CATEGORIES = ("conv", "modulation/demodulation", "noise/bias/activation", "resampling", "CLIP resize",
              "CLIP transformer", "optimiser", "other")
SCOPE = "essence|"
_BYTES = {"float": 4, "c10::BFloat16": 2, "c10::Half": 2, "double": 8, "long int": 8, "int": 4, "bool": 1,
          "c10::complex<float>": 8, "unsigned char": 1, "signed char": 1, "short int": 2}


# ----------------------------------------------------------------------------- named scopes


def _label(part: str, resolution: int | str) -> str:
    return f"{SCOPE}{part}|{resolution}"


@contextmanager
def scopes(generator, guide) -> Iterator[None]:
    """Run every generator block and CLIP part inside a profiler scope naming it (removed on exit)."""
    from torch.autograd.profiler import record_function

    handles, open_scopes = [], defaultdict(list)

    def enter(label: str):
        def hook(module, args):
            scope = record_function(label)
            scope.__enter__()
            open_scopes[id(module)].append(scope)
        return hook

    def leave(module, args, output):
        open_scopes[id(module)].pop().__exit__(None, None, None)

    def name(module: torch.nn.Module, label: str) -> None:
        handles.append(module.register_forward_pre_hook(enter(label)))
        handles.append(module.register_forward_hook(leave))

    named = [(generator.style, "mapping", "-"), (generator.conv1, "styledconv", 4), (generator.to_rgb1, "torgb", 4)]
    named += [(conv, "styledconv", 2 ** (3 + i // 2)) for i, conv in enumerate(generator.convs)]
    named += [(rgb, "torgb", 2 ** (3 + i)) for i, rgb in enumerate(generator.to_rgbs)]
    for module, part, res in named:
        name(module, _label(part, res))
        for child_name, child in module.named_modules():
            if child_name.endswith("modulation"):
                name(child, _label("modulation", res))
            elif child_name.endswith(("blur", "upsample")):
                name(child, _label("resampling", res))
    name(guide.visual, _label("clip-transformer", "clip"))
    resize = guide.resize_generated

    def scoped_resize(*args, **kwargs):
        with record_function(_label("clip-resize", "clip")):
            return resize(*args, **kwargs)

    guide.resize_generated = scoped_resize  # an instance attribute: the class is untouched
    try:
        yield
    finally:
        del guide.resize_generated
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------- categories


def categorise(op: str, shapes: list, part: str | None) -> str:
    """The category of operator ``op`` (its outermost name) run inside the scope ``part``."""
    if part is None:
        return "other"
    if part in ("clip-resize", "clip-transformer"):
        return "CLIP resize" if part == "clip-resize" else "CLIP transformer"
    if part == "optimiser":
        return "optimiser"
    if part == "mapping":
        return "other"
    if part == "modulation":
        return "modulation/demodulation"
    if part == "resampling" or any(k in op for k in ("pixel_shuffle", "constant_pad", "aten::pad")):
        return "resampling"
    if "conv" in op:
        return "conv"
    if op == "_ScaleChannels":  # with an offset (noise) it is the post-conv pass, else the input modulation
        return "noise/bias/activation" if len(shapes) > 2 and shapes[2] else "modulation/demodulation"
    if part == "torgb" or any(k in op for k in ("leaky_relu", "addcmul", "aten::add", "randn")):
        return "noise/bias/activation"
    return "modulation/demodulation"  # weight scaling, energy, rsqrt: the demodulation gains


# ----------------------------------------------------------------------------- roofline from shapes


def _numel(shape) -> int:
    return math.prod(shape) if shape else 0


def _conv_flops(x, w, stride, padding, dilation, transposed, output_padding, groups) -> tuple[int, int]:
    """(FLOPs, output elements) of a 2-D convolution from its shapes and arguments."""
    n, c_in = x[0], x[1]
    spatial_in = x[2:]
    k = w[2:]
    s = list(stride) * (len(k) // len(stride)) if stride else [1] * len(k)
    p = list(padding) * (len(k) // len(padding)) if padding else [0] * len(k)
    d = list(dilation) * (len(k) // len(dilation)) if dilation else [1] * len(k)
    if transposed:
        c_out = w[1] * groups
        op = list(output_padding or [0] * len(k))
        out = [(i - 1) * si - 2 * pi + di * (ki - 1) + oi + 1 for i, si, pi, di, ki, oi in zip(spatial_in, s, p, d, k, op)]
        flops = 2 * n * c_in * _numel(spatial_in) * w[1] * _numel(k)
    else:
        c_out = w[0]
        out = [(i + 2 * pi - di * (ki - 1) - 1) // si + 1 for i, si, pi, di, ki in zip(spatial_in, s, p, d, k)]
        flops = 2 * n * c_out * _numel(out) * w[1] * _numel(k)
    return flops, n * c_out * _numel(out)


def roofline(op: str, shapes: list, dtypes: list, concrete: list | None) -> tuple[float, float]:
    """(FLOPs, bytes) of one operator call from its recorded shapes, dtypes and scalar arguments."""
    tensors = [(s, _BYTES.get(t, 4)) for s, t in zip(shapes, dtypes) if isinstance(s, list) and s]
    if not tensors:
        return 0.0, 0.0
    size = tensors[0][1]
    args = list(concrete or []) + [None] * 12
    try:
        if op in ("aten::conv2d", "aten::conv_transpose2d", "aten::convolution", "aten::convolution_backward"):
            x, w = shapes[0], shapes[1]
            if op == "aten::conv2d":
                stride, padding, dilation, groups, transposed, out_pad = args[3], args[4], args[5], args[6], False, None
            elif op == "aten::conv_transpose2d":
                stride, padding, out_pad, groups, dilation, transposed = args[3], args[4], args[5], args[6], args[7], True
            elif op == "aten::convolution":
                stride, padding, dilation, transposed, out_pad, groups = args[3:9]
            else:  # grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed, out_pad, groups, mask
                x, w = shapes[1], shapes[2]
                stride, padding, dilation, transposed, out_pad, groups, mask = args[4:11]
            flops, out = _conv_flops(x, w, stride, padding, dilation, bool(transposed), out_pad, int(groups or 1))
            if op == "aten::convolution_backward":
                grads = sum(bool(m) for m in (mask or [True, True])[:2])
                return float(flops * grads), float((out + _numel(x) + _numel(w) + grads * _numel(x)) * size)
            return float(flops), float((_numel(x) + _numel(w) + out) * size)
        if op in ("aten::mm", "aten::bmm", "aten::addmm", "aten::matmul", "aten::baddbmm", "aten::linear"):
            mats = [s for s, _ in tensors if len(s) >= 2] if op != "aten::linear" else [s for s, _ in tensors[:2]]
            a, b = (mats[-2], mats[-1]) if op != "aten::linear" else (mats[0], mats[1][::-1])
            m, k, n = _numel(a[:-1]), a[-1], b[-1]
            flops = 2 * m * k * n
            return float(flops), float((_numel(a) + _numel(b) + m * n) * size)
    except (IndexError, TypeError, ValueError):
        pass
    largest = max(_numel(s) for s, _ in tensors)
    return float(largest), float(sum(_numel(s) * b for s, b in tensors) + largest * size)


# ----------------------------------------------------------------------------- attribution


def _is_scope(name: str) -> bool:
    return name.startswith(SCOPE)


def _chain(event) -> list:
    chain = []
    while event is not None:
        chain.append(event)
        event = event.cpu_parent
    return chain  # innermost first


def attribute(events, use_device: bool) -> dict[str, Any]:
    """Sum self times, FLOPs and bytes into (category, resolution, pass) rows, over the events inside
    the ``essence|step`` scopes only (what happens before the first step is a one-off)."""
    from torch.autograd import DeviceType

    cpu_events = [e for e in events if e.device_type == DeviceType.CPU]
    # the steps' span, by time: on CUDA the backward pass runs on another thread, outside the scopes' nesting
    steps = [e.time_range for e in cpu_events if e.name.startswith(SCOPE + "step|")]
    first, last = min(r.start for r in steps), max(r.end for r in steps)
    forward_by_seq: dict[tuple[int, int], tuple[str, list, str | None, Any]] = {}
    rows: dict[tuple[str, str, str], dict[str, float]] = defaultdict(lambda: {"us": 0.0, "flops": 0.0, "bytes": 0.0,
                                                                              "calls": 0})
    for event in sorted(cpu_events, key=lambda e: e.time_range.start):
        if not first <= event.time_range.start <= last:
            continue
        chain = _chain(event)
        names = [e.name for e in chain]
        node = next((e for e in chain if e.name.startswith("autograd::engine::evaluate_function")), None)
        if node is not None:
            fwd = forward_by_seq.get((node.fwd_thread, node.sequence_nr)) or forward_by_seq.get((None, node.sequence_nr))
            op, shapes, part, res = fwd if fwd else (node.name, [], None, "-")
            direction = "backward"
            # the operators each backward node runs (its grandchildren) are the ones counted for the roofline
            counted = event.cpu_parent is not None and event.cpu_parent.cpu_parent is node
        elif any(n.startswith("Optimizer.") for n in names):
            op, shapes, part, res, direction = event.name, event.input_shapes, "optimiser", "-", "optimiser"
            counted = event.cpu_parent is not None and event.cpu_parent.name.startswith("Optimizer.")
        else:
            scope_at = next((i for i, n in enumerate(names) if _is_scope(n) or n.startswith("Optimizer.")), len(chain))
            top = chain[scope_at - 1] if scope_at > 0 else event
            label = names[scope_at] if scope_at < len(chain) else ""
            part, res = (label.split("|")[1], label.split("|")[2]) if label.startswith(SCOPE) else (None, "-")
            if part == "step":
                part = None
            op, shapes, direction = top.name, top.input_shapes, "forward"
            counted = top is event
            if event.sequence_nr >= 0:  # the latest forward op with this number created the autograd node
                forward_by_seq[(event.thread, event.sequence_nr)] = (op, shapes, part, res)
                forward_by_seq[(None, event.sequence_nr)] = (op, shapes, part, res)  # if thread ids disagree
        category = categorise(op, shapes, part)
        row = rows[(category, str(res) if category not in ("other", "optimiser") else "-", direction)]
        row["us"] += event.self_device_time_total if use_device else event.self_cpu_time_total
        if counted and not _is_scope(event.name) and not event.name.startswith(("autograd::", "Optimizer.")):
            flops, moved = roofline(event.name, event.input_shapes, getattr(event, "input_dtypes", []) or [],
                                    getattr(event, "concrete_inputs", None))
            row["flops"] += flops
            row["bytes"] += moved
            row["calls"] += 1
    return rows


def profile_breakdown(problem: dict, settings, steps: int, device: torch.device, warmup: int = 2) -> dict[str, Any]:
    """Profile ``steps`` training steps (after a ``warmup``-step run) and break their time down."""
    from dataclasses import replace

    from torch.autograd.profiler import record_function
    from torch.profiler import ProfilerActivity, profile

    from essence.training import EssenceJob, train

    generator, guide = problem["generator"], problem["guide"]
    train(**problem, job=EssenceJob(replace(settings, steps=warmup, progress_every=warmup)))  # kernels, caches
    state: dict[str, Any] = {"scope": None, "count": 0}

    def next_step() -> bool:  # polled at the start of every step: close the last step's scope, open one
        if state["scope"] is not None:
            state["scope"].__exit__(None, None, None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        state["scope"] = record_function(_label("step", state["count"]))
        state["scope"].__enter__()
        state["count"] += 1
        return False

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    run = replace(settings, steps=steps, progress_every=steps)
    with scopes(generator, guide), profile(activities=activities, record_shapes=True) as prof:
        start = time.perf_counter()
        train(**problem, job=EssenceJob(run), should_stop=next_step)
        state["scope"].__exit__(None, None, None)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - start
    rows = attribute(prof.events(), use_device=device.type == "cuda")
    table = [{"category": c, "resolution": r, "pass": p, "seconds_per_step": v["us"] / 1e6 / steps,
              "gflop_per_step": v["flops"] / 1e9 / steps, "gb_per_step": v["bytes"] / 1e9 / steps,
              "calls_per_step": v["calls"] / steps} for (c, r, p), v in rows.items()]
    table.sort(key=lambda r: -r["seconds_per_step"])
    timed = "GPU kernel time" if device.type == "cuda" else "CPU time"
    return {"steps": steps, "warmup": warmup, "wall_seconds_per_step": wall / steps, "timed": timed, "rows": table}


# ----------------------------------------------------------------------------- report


def totals(table: list[dict], key: str) -> list[dict]:
    """Rows summed over everything but ``key`` (category or resolution), largest first."""
    sums: dict[str, dict[str, float]] = defaultdict(lambda: {"seconds_per_step": 0.0, "gflop_per_step": 0.0,
                                                             "gb_per_step": 0.0})
    for row in table:
        for field in ("seconds_per_step", "gflop_per_step", "gb_per_step"):
            sums[row[key]][field] += row[field]
    return sorted(({key: k, **v} for k, v in sums.items()), key=lambda r: -r["seconds_per_step"])


def _roof(row: dict) -> str:
    s, flop, gbytes = row["seconds_per_step"], row["gflop_per_step"], row["gb_per_step"]
    intensity = flop / gbytes if gbytes else 0.0
    tflops = flop / 1e3 / s if s else 0.0
    gbs = gbytes / s if s else 0.0
    return f"{flop:.2f} | {gbytes:.3f} | {intensity:.1f} | {tflops:.3f} | {gbs:.1f}"


def markdown(result: dict, title: str, top: int = 25) -> str:
    """The breakdown as Markdown: by category, by resolution, then the top (category, resolution, pass) rows."""
    table = result["rows"]
    total = sum(r["seconds_per_step"] for r in table) or 1.0
    head = "| {} | ms / step | share | GFLOP / step | GB / step | FLOP / byte | TFLOP/s | GB/s |\n| --- |" + " ---: |" * 7
    lines = [f"# {title}", "",
             f"{result['timed']} per training step, summed over operators' self times: {total * 1e3:.1f} ms "
             f"(wall clock under the profiler: {result['wall_seconds_per_step'] * 1e3:.1f} ms per step; "
             f"{result['steps']} step(s) profiled after a {result['warmup']}-step warm-up). FLOPs and bytes come from the "
             "recorded shapes (bytes: every input read and one output written once, a lower bound).", ""]
    for key in ("category", "resolution"):
        lines += [f"## By {key}", "", head.format(key)]
        lines += [f"| {r[key]} | {r['seconds_per_step'] * 1e3:.2f} | {r['seconds_per_step'] / total:.1%} | {_roof(r)} |"
                  for r in totals(table, key)]
        lines.append("")
    lines += [f"## Top {top} (category, resolution, pass)", "",
              "| category | resolution | pass | ms / step | share | GFLOP / step | GB / step | FLOP / byte | TFLOP/s | GB/s |",
              "| --- | --- | --- |" + " ---: |" * 7]
    lines += [f"| {r['category']} | {r['resolution']} | {r['pass']} | {r['seconds_per_step'] * 1e3:.2f} | "
              f"{r['seconds_per_step'] / total:.1%} | {_roof(r)} |" for r in table[:top]]
    return "\n".join(lines) + "\n"
