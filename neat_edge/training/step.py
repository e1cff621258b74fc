"""One training step, as `neat train` (train.fit) and `neat-bench train` both run it.

    x = sample()                        data sampling (the corpus' sampler, then one host → device copy)
    loss = window_loss(x, plan) / |x|   forward over the window's chained segments, memory carried,
                                        detached every tbptt segments (train.chained_nll)
    loss.backward(); clip; AdamW        (fit() skips the optimizer step of a non-finite batch)

`mode` says how the forward and backward run; the math is the same module code in every mode:
  eager    plain PyTorch, segment by segment (the reference; the default on the CPU)
  compile  torch.compile over the whole window — every segment, the carried state, the detaches and the
           loss traced as one graph, its backward by AOTAutograd — so inductor fuses the Titans write's
           elementwise chains (Eq 13-18: log-space cumsums, decays, the carried weights and momentum) across
           segment boundaries and its partitioner saves far fewer of the [B,H,o,i] memory states for the
           backward (the default on CUDA)
  graphs   compile, then CUDA graphs (mode="reduce-overhead"): one launch per graph instead of one per kernel

memory_budget (compiled modes): AOTAutograd's activation memory budget (torch._functorch.config
.activation_memory_budget), the share of the saved-for-backward activations the partitioner may keep; below 1
it recomputes the cheapest of the rest in the backward (elementwise chains first), trading FLOPs for memory
without a per-segment checkpoint boundary.

The patch plan (training/patches.py) is computed outside the compiled graph: fixed patches are cached once
per batch shape, entropy patches come from the frozen entropy model and the numpy patcher per batch.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
from torch import nn

from neat_edge.errors import NeatError
from neat_edge.training.distributed import full_grad_norm

STEP_MODES = ("auto", "eager", "compile", "graphs")
# (A "regional" mode — the segment step a torch.compiler.nested_compile_region inside the compiled window — was
# measured on an H200 with torch 2.11 and dropped: it compiled no faster, 341 s, and its first step then failed
# with an illegal memory access. docs/training.md has the run.)


def resolve_mode(mode: str, device: str, patching: str = "fixed") -> str:
    """auto -> compile on CUDA, eager on the CPU (inductor's C++ build of a whole window takes minutes on a
    laptop CPU and buys little there). Entropy patching compiles too: the plan enters as inputs."""
    if mode not in STEP_MODES:
        raise NeatError(f"unknown step mode '{mode}' (choose from {', '.join(STEP_MODES)})")
    if mode == "auto":
        return "compile" if device.startswith("cuda") else "eager"
    if mode == "graphs" and not device.startswith("cuda"):
        raise NeatError("step mode 'graphs' (CUDA graphs) needs --device cuda")
    return mode


def make_adamw(groups: list[dict], lr: float) -> torch.optim.AdamW:
    """AdamW over parameter groups, fused into one kernel per group where the weights are on CUDA (the
    standard fast path), the default (foreach) implementation elsewhere."""
    on_cuda = any(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), fused=True if on_cuda else None)


def sample_batch(corpus, rng, batch: int, window: int, device: str) -> torch.Tensor:
    """`batch` windows from the corpus' sampler as int64 [batch, window] on `device`: through pinned memory
    and a non-blocking copy on CUDA, so the copy overlaps the previous step's kernels."""
    x = torch.from_numpy(corpus.sample(rng, batch, window))
    if device.startswith("cuda"):
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


class TrainStep:
    """forward + backward + clip of one batch of windows; `optimizer_step()` applies it.

    window_loss(x, plan) -> summed -log p of the batch (the trainer's WindowLoss, possibly DDP-wrapped);
    plan_fn(x) -> the per-segment (patch_ids, patch_mask) the loss reads (None: the loss needs none)."""

    def __init__(self, window_loss: nn.Module, parameters, optimizer, clip: float, autocast_dtype, device: str,
                 mode: str = "auto", plan_fn=None, compile_backend: str = "inductor", memory_budget: float = 1.0):
        if not 0.0 < memory_budget <= 1.0:
            raise NeatError(f"memory budget must be in (0, 1], not {memory_budget}")
        self.device, self.clip, self.amp = device, clip, autocast_dtype
        self.memory_budget = memory_budget
        self.optimizer, self.plan_fn = optimizer, plan_fn
        self.parameters = [p for p in parameters if p.requires_grad]
        self.mode = mode
        self.compile_seconds = 0.0  # time spent in the first call of each new shape (tracing + codegen)
        self._seen_shapes: set = set()
        if mode == "eager":
            self._loss = window_loss
        else:
            options = {"backend": compile_backend, "dynamic": False}
            if mode == "graphs":
                options["mode"] = "reduce-overhead"
            self._loss = torch.compile(window_loss, **options)

    def _autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=self.amp)

    def _budget(self):
        """The partitioner reads the budget when it splits a newly traced graph (the first call of a shape)."""
        if self.mode == "eager" or self.memory_budget >= 1.0:
            return contextlib.nullcontext()
        return torch._functorch.config.patch(activation_memory_budget=self.memory_budget)

    def forward_backward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean -log p per byte of x [B, n*S] (a 0-d tensor, no host sync) and the clipped-before norm."""
        plan = self.plan_fn(x) if self.plan_fn else None
        first = tuple(x.shape) not in self._seen_shapes
        tick = time.perf_counter() if first else 0.0
        with self._autocast(), self._budget():
            nll = self._loss(x, plan)
        loss = nll / x.numel()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.clip)
        if first:
            if x.is_cuda:
                torch.cuda.synchronize(x.device)
            self._seen_shapes.add(tuple(x.shape))
            if self.mode != "eager":
                self.compile_seconds += time.perf_counter() - tick
        return loss.detach(), norm

    def __call__(self, x: torch.Tensor, reduce=None) -> tuple[float, bool]:
        """The whole step on a batch: forward, backward, clip, then AdamW unless the loss or the gradient
        norm is not finite (a non-finite batch must never reach the weights). reduce(loss) -> float is the
        loss every rank agrees on (Ranks.mean; one process: .item()). Returns (that loss, stepped)."""
        loss, norm = self.forward_backward(x)
        mean = reduce(loss) if reduce else loss.item()
        norm = full_grad_norm(norm)
        stepped = math.isfinite(mean) and bool(torch.isfinite(norm))
        if stepped:
            self.optimizer.step()
        return mean, stepped
