"""Adam over one flat buffer (optim.impl=flat and =triton), for small models in a CUDA-graph step.

torch's fused Adam splits its work into blocks of 65,536 numbers, one block per streaming
multiprocessor: the seed model's 1.2M parameters make ~19 blocks, a seventh of a 132-SM
H200, and the update takes ~50 us of a ~216 us graphed step. Here the weights, Adam's two
moments and the gradient are each one contiguous tensor, and the update covers the chip:
- optim.impl=flat: a handful of whole-tensor torch kernels (~15 launches with the bias
  corrections, ~17 passes over 4.8 MB tensors): the seed model trained 10% faster on the H200
  than with fused Adam (benchmarks/README.md);
- optim.impl=triton: the same rule as one Triton kernel (one pass: read p, g, m, v; write p,
  m, v), for CUDA devices with the triton package (torch's Linux wheels bring it). Triton
  compiles it at the first step of a process (cached on disk after: ~/.triton/cache).
On the CPU, and in an eager GPU step, fused Adam's one kernel wins, so optim.impl=auto uses
these only in a CUDA-graph step: triton where it can run, else flat.

The update rule is Adam's (Kingma & Ba 2015, Algorithm 1, with torch's L2 weight_decay):

    m <- b1 m + (1 - b1) g        v <- b2 v + (1 - b2) g^2
    p <- p - lr * m / (1 - b1^t) / (sqrt(v) / sqrt(1 - b2^t) + eps)

written as p <- p - lr * m / (sqrt(v) * c + eps * (1 - b1^t)) with c = (1 - b1^t) / sqrt(1 - b2^t).
The bias corrections are worked out on the device, in float64 (1 - 0.999^t in float32 is off
by ~1e-5 relative; float32 on MPS, which has no float64), from a step count kept there, so a
CUDA graph can hold the whole update: the torch kernels from b^t = pow(b, t); the Triton kernel
from running products b^t = b^(t-1) * b, kept beside the count (their float64 rounding after
1e6 steps, ~1e-10 relative, is far below float32's). It differs from torch's Adam only by
float rounding.

The model's parameters become views into the flat weight tensor when the optimizer is built
(build it after moving the model to its device; a step refuses parameters moved later).
state_dict() is torch.optim.Adam's, per parameter, so a checkpoint moves between optim.impl
values either way.
"""
from __future__ import annotations

import contextlib
import functools
import logging

import torch

from vaelab.config import ConfigError

log = logging.getLogger("vaelab")
BLOCK = 1024  # numbers per Triton program: ~1,200 programs for the seed model, every SM busy
_TRITON_BROKEN: str | None = None  # why the Triton kernel failed in this process, if it did


def triton_unusable(device: torch.device, dtype: torch.dtype = torch.float32) -> str | None:
    """Why optim.impl=triton cannot run for parameters of `dtype` on `device`, or None when it
    can. (A kernel that failed in this process is not a reason: FlatAdam then uses the torch
    kernels, as the warning said.)"""
    if device.type != "cuda":
        return f"it needs a CUDA device (this run's is {device.type})"
    if dtype != torch.float32:
        return f"its kernel is written for float32 parameters (these are {str(dtype).removeprefix('torch.')})"
    if _triton_kernel() is None:
        return "the triton package is not installed, or cannot be imported here"
    if torch.cuda.get_device_capability(device) < (7, 0):
        return f"Triton needs a GPU of compute capability 7.0 or more ({torch.cuda.get_device_name(device)})"
    return None


@functools.cache
def _triton_kernel():
    """The update as one Triton kernel, made on first use; None without triton. (Built inside a
    function so that a test can build it under TRITON_INTERPRET=1, on the CPU.)"""
    try:
        import triton
        import triton.language as tl
    except Exception:  # noqa: BLE001 - not installed, or an install that cannot load here
        return None

    @triton.jit
    def adam_update(p_ptr, g_ptr, m_ptr, v_ptr, sched_ptr, n, lr, one_minus_b1, b2, one_minus_b2, eps,
                    weight_decay, HAS_WD: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        # sched = (t, b1^t, b2^t) in float64, already advanced to this step
        bc1 = 1.0 - tl.load(sched_ptr + 1)
        bc2 = 1.0 - tl.load(sched_ptr + 2)
        c = (bc1 / tl.sqrt(bc2)).to(tl.float32)
        e = (bc1 * eps).to(tl.float32)
        p = tl.load(p_ptr + offs, mask=mask)
        g = tl.load(g_ptr + offs, mask=mask)
        if HAS_WD:
            g = g + weight_decay * p
        m = tl.load(m_ptr + offs, mask=mask)
        v = tl.load(v_ptr + offs, mask=mask)
        m = m + one_minus_b1 * (g - m)  # as torch's lerp_ for a weight under 0.5
        v = v * b2 + one_minus_b2 * g * g
        # IEEE square root and division, as torch's kernels (Triton's defaults are approximate)
        p = p - lr * tl.div_rn(m, tl.sqrt_rn(v) * c + e)
        tl.store(p_ptr + offs, p, mask=mask)
        tl.store(m_ptr + offs, m, mask=mask)
        tl.store(v_ptr + offs, v, mask=mask)

    return adam_update


class FlatAdam(torch.optim.Adam):
    """kernel: "torch" (optim.impl=flat) or "triton" (optim.impl=triton; a CUDA device, see
    triton_unusable). A Triton kernel that fails at its first step (no C compiler for Triton's
    launcher, say) is logged, and the torch kernels do the update from then on."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, kernel: str = "torch", names: list[str] | None = None,
                 setting: str = "optim.impl=flat"):
        """names: the parameters' names, for the one-line errors; setting: what chose flat Adam,
        as those errors name it (build_optimizer: optim.impl=auto in a CUDA-graph step)."""
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.names, self.setting = names, setting
        if kernel not in ("torch", "triton"):
            raise ValueError(f"FlatAdam kernel={kernel!r}: allowed: torch, triton")
        if len(self.param_groups) != 1:
            raise ValueError("FlatAdam takes one parameter group")
        ps = self.param_groups[0]["params"]
        if len({(p.dtype, p.device) for p in ps}) != 1:
            raise ValueError("FlatAdam needs every parameter on one device in one dtype")
        with torch.no_grad():
            self.flat = torch.cat([p.detach().reshape(-1) for p in ps])
            for p, view in zip(ps, self._views(self.flat)):
                p.data = view  # the model now trains the flat tensor's slices
        self._addresses = [p.data_ptr() for p in ps]
        self.exp_avg, self.exp_avg_sq = torch.zeros_like(self.flat), torch.zeros_like(self.flat)
        self.grad = torch.zeros_like(self.flat)
        self.scalar = torch.float32 if self.flat.device.type == "mps" else torch.float64  # MPS has no float64
        # (t, b1^t, b2^t), advanced each step by one kernel: sched * (1, b1, b2) + (1, 0, 0)
        self.sched = torch.tensor([0.0, 1.0, 1.0], dtype=self.scalar, device=self.flat.device)
        self.steps = self.sched[0]  # Adam's step count, as the state_dict keeps it
        self._advance = torch.tensor([1.0, 0.0, 0.0], dtype=self.scalar, device=self.flat.device)
        self._set_betas()
        if kernel == "triton" and (why := triton_unusable(self.flat.device, self.flat.dtype)):
            raise ValueError(f"optim.impl=triton: {why}; optim.impl=flat is the same update in torch kernels")
        # (a kernel that failed earlier in this process, e.g. in the warm-up's throwaway
        # optimizer, has been reported once: the torch kernels, as that warning said)
        self.kernel = "torch" if _TRITON_BROKEN else kernel
        self._triton_ran = False
        self._link_state()

    def _set_betas(self) -> None:
        """(b1, b2) and the step's factors (1, b1, b2) on the device, written in place once made,
        as everything a captured CUDA graph reads must be. (The graph also holds lr, the betas,
        eps and weight_decay as the numbers they were at capture: train.CudaGraphStep captures
        again when one of them changes.)"""
        b1, b2 = self.param_groups[0]["betas"]
        decay = torch.tensor([1.0, b1, b2], dtype=self.scalar)
        if not hasattr(self, "_decay"):
            self._decay = torch.empty(3, dtype=self.scalar, device=self.flat.device)
        self._decay.copy_(decay)
        self.betas_t = self._decay[1:]

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        ps = self.param_groups[0]["params"]
        return [v.view_as(p) for p, v in zip(ps, flat.split([p.numel() for p in ps]))]

    def _link_state(self) -> None:
        """Adam's per-parameter state, as views into the flat moments (what state_dict saves)."""
        ps = self.param_groups[0]["params"]
        for p, m, v in zip(ps, self._views(self.exp_avg), self._views(self.exp_avg_sq)):
            self.state[p] = {"step": self.steps, "exp_avg": m, "exp_avg_sq": v}

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        ps = group["params"]
        if [p.data_ptr() for p in ps] != self._addresses:  # else the update would miss the model
            raise RuntimeError("FlatAdam: the model's parameters were moved or replaced after the optimizer was "
                               "built (e.g. model.to(...)); build it after moving the model")
        missing = [self.names[i] if self.names else str(i) for i, p in enumerate(ps) if p.grad is None]
        if missing:  # torch's Adam would skip them; one flat update cannot. (A ConfigError: the
            # model's own doing, which vaelab-train reports in one line)
            raise ConfigError(f"{self.setting}: parameters {', '.join(missing)} got no gradient this step; use "
                              f"optim.impl=fused for a model with parameters a step can leave unused")
        torch.cat([p.grad.reshape(-1) for p in ps], out=self.grad)  # (P,)
        torch.addcmul(self._advance, self.sched, self._decay, out=self.sched)  # t+1, b1^(t+1), b2^(t+1)
        if self.kernel == "triton":
            try:
                self._triton_update(group)
                self._triton_ran = True
                return loss
            except Exception as e:  # noqa: BLE001 - a kernel that never ran: compiling it failed
                if self._triton_ran:
                    raise
                _triton_failed(e)
                self.kernel = "torch"
        self._torch_update(group)
        return loss

    def _triton_update(self, group: dict) -> None:
        b1, b2 = group["betas"]
        n, wd = self.flat.numel(), group["weight_decay"]
        # Triton launches on the current device's stream (a CPU tensor: a test, under its interpreter)
        dev = self.flat.device
        with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
            _triton_kernel()[((n + BLOCK - 1) // BLOCK,)](
                self.flat, self.grad, self.exp_avg, self.exp_avg_sq, self.sched, n, group["lr"], 1 - b1, b2,
                1 - b2, group["eps"], wd, HAS_WD=bool(wd), BLOCK=BLOCK)

    def _torch_update(self, group: dict) -> None:
        b1, b2 = group["betas"]
        g = self.grad
        if group["weight_decay"]:
            g = g.add(self.flat, alpha=group["weight_decay"])
        self.exp_avg.lerp_(g, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        bc = 1 - self.betas_t.pow(self.steps)  # (1 - b1^t, 1 - b2^t), float64
        c = (bc[0] / bc[1].sqrt()).float()
        denom = torch.addcmul((bc[0] * group["eps"]).float(), self.exp_avg_sq.sqrt(), c)
        self.flat.addcdiv_(self.exp_avg, denom, value=-group["lr"])

    def state_dict(self):
        sd = super().state_dict()
        # one float32 step count per parameter, as torch's Adam keeps it: a shared tensor would
        # be counted once per parameter by a fused Adam that loads this
        sd["state"] = {k: {**s, "step": s["step"].to(torch.float32, copy=True)} for k, s in sd["state"].items()}
        return sd

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)  # hyperparameters, and the saved moments per parameter
        ps = self.param_groups[0]["params"]
        saved = [self.state.get(p, {}) for p in ps]
        self._set_betas()
        have = [i for i, s in enumerate(saved) if "exp_avg" in s]
        steps = {float(saved[i]["step"]) for i in have}
        if have and (len(have) < len(ps) or len(steps) > 1 or any(self.param_groups[0].get(k) for k in
                                                                   ("amsgrad", "maximize"))):
            raise ConfigError(f"{self.setting}: this optimizer state has moments for some parameters only, step "
                              "counts that differ between parameters, or amsgrad/maximize, which flat Adam does "
                              "not keep; use optim.impl=fused")
        with torch.no_grad():
            if have:  # none for a checkpoint from before any step
                for s, m, v in zip(saved, self._views(self.exp_avg), self._views(self.exp_avg_sq)):
                    m.copy_(s["exp_avg"])
                    v.copy_(s["exp_avg_sq"])
                self.steps.fill_(steps.pop())
            else:
                self.exp_avg.zero_()
                self.exp_avg_sq.zero_()
                self.steps.zero_()
            self.sched[1:] = self.betas_t.pow(self.steps)  # with this config's betas, as torch's Adam
        self._link_state()


def _triton_failed(e: Exception) -> None:
    global _TRITON_BROKEN
    # Triton's CompilationError puts the source position first and the reason last
    lines = [ln.strip() for ln in str(getattr(e, "error_message", None) or e).splitlines() if ln.strip()]
    _TRITON_BROKEN = lines[-1] if lines else type(e).__name__  # one try per process
    log.warning("optim.impl=triton: the Triton kernel failed to build or launch (%s); flat Adam's torch "
                "kernels do the update instead (optim.impl=flat)", _TRITON_BROKEN)
