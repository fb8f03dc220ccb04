"""Adam's arithmetic with nothing read back to the host, so a CUDA graph can replay a training step.

``torch.optim.Adam`` takes its step count and learning rate as Python numbers on the host, so a step
that uses it cannot be captured once and replayed. Its ``capturable=True`` mode keeps them on the
device, but only on CUDA (so a CPU test could not check the step that runs on the GPU) and with its
own rounding. The two updates here run the same torch operations, in the same order, with the same
constants as ``torch.optim.Adam``'s default single-tensor update (coupled L2 weight decay, default
betas and eps, which TargetCLIP's reference uses): on the CPU their results equal torch's bit for bit,
and on any device they need no host value while they run.

* ``fresh_adam_step_``: the first step of a newly created Adam, in closed form. TargetCLIP creates a
  new Adam for its per-source coefficients at every step, so each update is such a first step.
* ``ScheduledAdam``: Adam with state whose per-step learning rate is known in advance (the schedule),
  its per-step scalars held in device tables read at a device step counter.
"""

from __future__ import annotations

from typing import Sequence

import torch

BETAS = (0.9, 0.999)  # torch.optim.Adam's defaults, which the reference keeps
EPS = 1e-8


def _step_scalars(step: int, lr: float) -> tuple[float, float]:
    """(-step size, sqrt of the second bias correction) of Adam step ``step`` (1-based), computed in
    Python floats exactly as ``torch.optim.Adam`` computes them from its step count."""
    beta1, beta2 = BETAS
    bias_correction1 = 1 - beta1 ** float(step)
    bias_correction2 = 1 - beta2 ** float(step)
    return -(lr / bias_correction1), bias_correction2 ** 0.5


def fresh_adam_step_(param: torch.Tensor, grad: torch.Tensor, lr: float, weight_decay: float = 0.0) -> None:
    """Update ``param`` in place exactly as ``torch.optim.Adam([param], lr, weight_decay=...)`` does on
    its first ``step()`` after being created.

    With zero moments, step 1 gives ``m = (1 - b1) g`` and ``v = (1 - b2) g^2`` (``g`` includes the
    coupled decay, ``g = grad + weight_decay * param``); bias correction divides them by ``1 - b1`` and
    ``1 - b2``, so the update is ``-lr * g / (|g| + eps)``, eps added after the square root: about
    ``-lr * sign(g)`` unless ``|g|`` is near eps, and 0 where ``g`` is 0. No state survives, which is
    why the reference's per-step fresh optimiser needs none here. The operations below are torch's
    own, in its order, so the rounding is torch's too (``1 - b1`` and ``1 - 0.9`` are not exact).
    """
    beta1, beta2 = BETAS
    if weight_decay != 0:
        grad = grad.add(param, alpha=weight_decay)
    exp_avg = grad * (1 - beta1)  # torch: zeros.lerp_(grad, 1 - beta1)
    exp_avg_sq = grad * (1 - beta2) * grad  # torch: zeros.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    neg_step_size, bias_correction2_sqrt = _step_scalars(1, lr)
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(EPS)
    param.add_(exp_avg.mul_(neg_step_size).div_(denom))  # torch: addcdiv_(exp_avg, denom, value=-step_size)


class ScheduledAdam:
    """``torch.optim.Adam`` over one tensor (coupled weight decay), with the learning rate of every step
    given up front, so an update reads no host value: the step's scalars come from device tables at a
    device step index.

    ``lrs[i]`` is the learning rate of update ``i`` (0-based). Equals torch's Adam with
    ``param_groups[0]["lr"] = lrs[i]`` before its ``i``-th ``step()``.
    """

    def __init__(self, param: torch.Tensor, lrs: Sequence[float], weight_decay: float = 0.0) -> None:
        self.param = param
        self.weight_decay = weight_decay
        self.exp_avg = torch.zeros_like(param, memory_format=torch.preserve_format)
        self.exp_avg_sq = torch.zeros_like(param, memory_format=torch.preserve_format)
        scalars = [_step_scalars(i + 1, lr) for i, lr in enumerate(lrs)]
        # torch turns each Python scalar into the parameter's dtype inside its kernels: so do the tables
        self._neg_step_size = torch.tensor([s[0] for s in scalars], dtype=param.dtype, device=param.device)
        self._bias_correction2_sqrt = torch.tensor([s[1] for s in scalars], dtype=param.dtype, device=param.device)

    @torch.no_grad()
    def step_(self, index: torch.Tensor) -> None:
        """Apply update ``index`` (a long tensor holding one 0-based step number, on the parameter's
        device) with the gradient in ``param.grad``."""
        beta1, beta2 = BETAS
        param, grad = self.param, self.param.grad
        if self.weight_decay != 0:
            grad = grad.add(param, alpha=self.weight_decay)
        self.exp_avg.lerp_(grad, 1 - beta1)
        self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        at = index.reshape(1)
        denom = (self.exp_avg_sq.sqrt() / self._bias_correction2_sqrt.index_select(0, at)).add_(EPS)
        param.add_(self._neg_step_size.index_select(0, at) * self.exp_avg / denom)
