"""Adam over one flat buffer (optim.impl=flat), for small models in a CUDA-graph step.

torch's fused Adam splits its work into blocks of 65,536 numbers, one block per streaming
multiprocessor: the seed model's 1.2M parameters make ~19 blocks, a seventh of a 132-SM
H200, and the update takes ~50 us of a ~216 us graphed step. Here the weights, Adam's two
moments and the gradient are each one contiguous tensor, and the update is a handful of
whole-tensor elementwise kernels that cover the chip: the seed model trained 10% faster on
the H200 (benchmarks/README.md). On the CPU, and in an eager GPU step, fused Adam's one
kernel wins, so optim.impl=auto uses this only in a CUDA-graph step.

The update rule is Adam's (Kingma & Ba 2015, Algorithm 1, with torch's L2 weight_decay):

    m <- b1 m + (1 - b1) g        v <- b2 v + (1 - b2) g^2
    p <- p - lr * m / (1 - b1^t) / (sqrt(v) / sqrt(1 - b2^t) + eps)

written as p <- p - lr * m / (sqrt(v) * c + eps * (1 - b1^t)) with c = (1 - b1^t) / sqrt(1 - b2^t).
The bias corrections are worked out on the device, in float64 (1 - 0.999^t in float32 is off
by ~1e-5 relative; float32 on MPS, which has no float64), from a step count kept there, so a CUDA graph can hold the whole update.
It differs from torch's Adam only by float rounding.

The model's parameters become views into the flat weight tensor when the optimizer is built
(build it after moving the model to its device; a step refuses parameters moved later).
state_dict() is torch.optim.Adam's, per parameter, so a checkpoint moves between optim.impl
values either way.
"""
from __future__ import annotations

import torch


class FlatAdam(torch.optim.Adam):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
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
        self.steps = torch.zeros((), dtype=self.scalar, device=self.flat.device)
        self.betas_t = torch.tensor(self.param_groups[0]["betas"], dtype=self.scalar, device=self.flat.device)
        self._link_state()

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
        missing = [i for i, p in enumerate(ps) if p.grad is None]
        if missing:  # torch's Adam would skip them; one flat update cannot
            raise RuntimeError(f"optim.impl=flat: parameters {missing} got no gradient this step; "
                               f"use optim.impl=fused for models with parameters a step can leave unused")
        b1, b2 = group["betas"]
        torch.cat([p.grad.reshape(-1) for p in ps], out=self.grad)  # (P,)
        g = self.grad
        if group["weight_decay"]:
            g = g.add(self.flat, alpha=group["weight_decay"])
        self.steps.add_(1)
        self.exp_avg.lerp_(g, 1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(g, g, value=1 - b2)
        bc = 1 - self.betas_t.pow(self.steps)  # (1 - b1^t, 1 - b2^t), float64
        c = (bc[0] / bc[1].sqrt()).float()
        denom = torch.addcmul((bc[0] * group["eps"]).float(), self.exp_avg_sq.sqrt(), c)
        self.flat.addcdiv_(self.exp_avg, denom, value=-group["lr"])
        return loss

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
        self.betas_t.copy_(torch.tensor(self.param_groups[0]["betas"], dtype=self.scalar))
        have = [i for i, s in enumerate(saved) if "exp_avg" in s]
        steps = {float(saved[i]["step"]) for i in have}
        if have and (len(have) < len(ps) or len(steps) > 1 or any(self.param_groups[0].get(k) for k in
                                                                   ("amsgrad", "maximize"))):
            raise ValueError("optim.impl=flat: this optimizer state has moments for some parameters only, step "
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
        self._link_state()
