"""In-process A/B of training-step variants of the seed model, for noisy machines.

    python benchmarks/ab_step.py --data-root ../shared/data [--variants base,compile_all] [--rounds 8]
                                 [--block 100] [--size small|base|large] [--batch-size 64]

Each variant gets its own copy of one initial model and its own fused Adam, and the variants
take turns in blocks of 100 steps on real MNIST batches, so a slow minute on the host slows
them all alike; the order of the variants is reversed every other round. Prints the median
and the best ms/step per variant and, for each variant against the first, the median and
quartiles of the per-round ratio of their times (paired, so a busy minute cancels out). Variants:
  base           what vaelab-train runs (autograd, fused Adam, zero_grad(set_to_none=True),
                 model.linear=onednn)
  aten           model.linear=aten: the products on MKL through F.linear (the default before)
  keepgrad       zero_grad(set_to_none=False)
  inbwd          a fused Adam per parameter, stepped from register_post_accumulate_grad_hook
  flat           optim.impl=flat: Adam over one flat tensor (vaelab.optim.FlatAdam)
  compile_all    torch.compile of model + loss (forward and backward)
  compile_model  torch.compile of the model only
  fusedloss      reparameterisation + KL and sigmoid + MSE as two autograd.Functions with
                 closed-form gradients (fewer, fused ops; the same fp32 math). A prototype, not
                 in vaelab: it would be a second copy of the loss's derivative
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch

from vaelab.data import DataError, load_data, to_float
from vaelab.losses import vae_loss
from vaelab.models.linear import Linear
from vaelab.models.mlp import MLPVAE
from vaelab.optim import FlatAdam

VARIANTS = ("base", "aten", "keepgrad", "inbwd", "flat", "compile_all", "compile_model", "fusedloss")


class ReparamKL(torch.autograd.Function):
    """h = [mu | logvar] -> (z = mu + eps * exp(logvar / 2), KL to N(0, I) per example)."""

    @staticmethod
    def forward(ctx, h):
        mu, logvar = h.chunk(2, -1)
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        var = std * std
        kl = 0.5 * ((mu * mu).sum() + var.sum() - logvar.sum()) / h.shape[0] - 0.5 * mu.shape[1]
        ctx.save_for_backward(h, eps, std, var)
        return torch.addcmul(mu, eps, std), kl

    @staticmethod
    def backward(ctx, gz, gkl):
        h, eps, std, var = ctx.saved_tensors
        mu = h[:, :eps.shape[1]]
        c = gkl / h.shape[0]
        return torch.cat([gz + mu * c, (gz * eps * std + (var - 1) * c) * 0.5], -1)


class SigmoidMSE(torch.autograd.Function):
    """sum((sigmoid(logits) - x)^2) per example."""

    @staticmethod
    def forward(ctx, logits, x):
        s = torch.sigmoid(logits)
        d = (s - x).view(-1)
        ctx.save_for_backward(d, s)
        return torch.dot(d, d) / logits.shape[0]

    @staticmethod
    def backward(ctx, g):
        d, s = ctx.saved_tensors
        return torch.ops.aten.sigmoid_backward((d * (2 * g / s.shape[0])).view_as(s), s), None


def fused_loss(model: MLPVAE, x: torch.Tensor) -> torch.Tensor:
    z, kl = ReparamKL.apply(model.head(model.encoder(x)))
    return SigmoidMSE.apply(model.decoder(z), x) + kl


def _copy(init: MLPVAE, linear: str) -> MLPVAE:
    model = copy.deepcopy(init)
    for m in model.modules():
        if isinstance(m, Linear):
            m.impl = linear
    return model


def gradient_gap(variant: str, init: MLPVAE, x: torch.Tensor) -> float:
    """Largest relative difference between the variant's parameter gradients and those of
    vaelab's model (linear=aten) and vae_loss at the same eps: it must compute the same step."""
    grads = []
    for v in ("aten", variant):
        model = _copy(init, "aten" if v == "aten" else "onednn")
        torch.manual_seed(1)
        if v == "fusedloss":
            loss = fused_loss(model, x)
        else:
            logits, mu, logvar = model(x)
            loss = vae_loss(logits, x, mu, logvar, recon="mse", beta=1.0)["loss"]
        loss.backward()
        grads.append([p.grad for p in model.parameters()])
    return max(((g - g0).abs().max() / g0.abs().max()).item() for g0, g in zip(*grads))


def make_step(variant: str, init: MLPVAE):
    model = _copy(init, "aten" if variant == "aten" else "onednn")
    opt = None
    if variant == "inbwd":
        opts = {p: torch.optim.Adam([p], lr=1e-3, fused=True) for p in model.parameters()}

        def hook(p: torch.Tensor) -> None:
            opts[p].step()
            opts[p].zero_grad(set_to_none=True)

        for p in model.parameters():
            p.register_post_accumulate_grad_hook(hook)
    elif variant == "flat":
        opt = FlatAdam(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    net = torch.compile(model) if variant == "compile_model" else model

    def forward(x: torch.Tensor) -> torch.Tensor:
        if variant == "fusedloss":
            return fused_loss(model, x)
        logits, mu, logvar = net(x)
        return vae_loss(logits, x, mu, logvar, recon="mse", beta=1.0)["loss"]

    if variant == "compile_all":
        forward = torch.compile(forward)

    def step(x: torch.Tensor) -> None:
        loss = forward(x)
        if opt is not None:
            opt.zero_grad(set_to_none=variant != "keepgrad")
        loss.backward()
        if opt is not None:
            opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", required=True)
    p.add_argument("--variants", default="base,aten,keepgrad,inbwd,compile_all,compile_model,fusedloss")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--block", type=int, default=100, help="steps per variant per round")
    p.add_argument("--size", choices=["small", "base", "large"], default="base", help="as model.size")
    a = p.parse_args()
    if min(a.rounds, a.batch_size, a.block) < 1 or a.batch_size > 30000:
        p.error(f"--rounds {a.rounds} --batch-size {a.batch_size} --block {a.block}: each must be >= 1, "
                "the batch size at most 30000 (half the training images)")
    variants = a.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            p.error(f"--variants: unknown variant '{v}'; allowed: {', '.join(VARIANTS)}")
    torch.set_flush_denormal(True)  # as vaelab-train does by default
    try:
        data = load_data(a.data_root, torch.device("cpu"), val_size=0, download=False)
    except DataError as e:
        sys.exit(f"ab_step.py: error: --data-root {a.data_root}: {e}")
    images, n, b = data.train.images, len(data.train), a.batch_size
    torch.manual_seed(0)
    init = MLPVAE(256, size=a.size)  # base: the seed's network
    for v in variants:
        if v in ("base", "fusedloss"):
            print(f"{v}: gradients vs linear=aten and vae_loss, largest relative difference "
                  f"{gradient_gap(v, init, to_float(images[:b])):.1e}")
    steps = {v: make_step(v, init) for v in variants}
    for v, step in steps.items():  # warm-up, and compilation where there is any
        t0 = time.perf_counter()
        for _ in range(3):
            step(to_float(images[:b]))
        print(f"{v}: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
    perm = torch.randperm(n)
    ms = {v: [] for v in variants}
    pos = dict.fromkeys(variants, 0)
    for r in range(a.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            t0 = time.perf_counter()
            for _ in range(a.block):
                i = pos[v]
                pos[v] = (i + b) % (n - b)
                steps[v](to_float(images.index_select(0, perm[i:i + b])))
            ms[v].append((time.perf_counter() - t0) * 1e3 / a.block)
    for v in variants:
        print(f"{v:14s} median {statistics.median(ms[v]):.3f} ms/step   best {min(ms[v]):.3f}")
    for v in variants[1:]:
        ratios = [t / t0 for t, t0 in zip(ms[v], ms[variants[0]])]
        # (inclusive: within the observed ratios; the default method extrapolates past them for few rounds)
        q = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
        print(f"{v} / {variants[0]}: paired ratio median {statistics.median(ratios):.3f} "
              f"(quartiles {q[0]:.3f}-{q[2]:.3f}, {len(ratios)} rounds)")


if __name__ == "__main__":
    main()
