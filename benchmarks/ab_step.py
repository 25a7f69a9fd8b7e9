"""In-process A/B of training-step variants of the seed model, for noisy machines.

    python benchmarks/ab_step.py --data-root ../shared/data [--variants base,compile_all] [--rounds 8]

Each variant gets its own copy of one initial model and its own fused Adam, and the variants
take turns in blocks of 100 steps on real MNIST batches, so a slow minute on the host slows
them all alike. Prints the median and the best ms/step per variant. Variants:
  base           what vaelab-train runs (autograd, fused Adam, zero_grad(set_to_none=True))
  keepgrad       zero_grad(set_to_none=False)
  inbwd          a fused Adam per parameter, stepped from register_post_accumulate_grad_hook
  compile_all    torch.compile of model + loss (forward and backward)
  compile_model  torch.compile of the model only
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from vaelab.data import load_data, to_float
from vaelab.losses import vae_loss
from vaelab.models.mlp import MLPVAE

VARIANTS = ("base", "keepgrad", "inbwd", "compile_all", "compile_model")


def make_step(variant: str, init: MLPVAE):
    model = copy.deepcopy(init)
    opt = None
    if variant == "inbwd":
        opts = {p: torch.optim.Adam([p], lr=1e-3, fused=True) for p in model.parameters()}

        def hook(p: torch.Tensor) -> None:
            opts[p].step()
            opts[p].zero_grad(set_to_none=True)

        for p in model.parameters():
            p.register_post_accumulate_grad_hook(hook)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    net = torch.compile(model) if variant == "compile_model" else model

    def forward(x: torch.Tensor) -> torch.Tensor:
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
    p.add_argument("--variants", default="base,keepgrad,inbwd,compile_all,compile_model")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    a = p.parse_args()
    variants = a.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            p.error(f"--variants: unknown variant '{v}'; allowed: {', '.join(VARIANTS)}")
    torch.set_flush_denormal(True)  # as vaelab-train does by default
    data = load_data(a.data_root, torch.device("cpu"), val_size=0, download=False)
    images, n, b = data.train.images, len(data.train), a.batch_size
    torch.manual_seed(0)
    init = MLPVAE(256, size="base")  # the seed's network
    steps = {v: make_step(v, init) for v in variants}
    for v, step in steps.items():  # warm-up, and compilation where there is any
        t0 = time.perf_counter()
        for _ in range(3):
            step(to_float(images[:b]))
        print(f"{v}: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
    perm = torch.randperm(n)
    ms = {v: [] for v in variants}
    pos = dict.fromkeys(variants, 0)
    for _ in range(a.rounds):
        for v, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(100):
                i = pos[v]
                pos[v] = (i + b) % (n - b)
                step(to_float(images.index_select(0, perm[i:i + b])))
            ms[v].append((time.perf_counter() - t0) * 1e3 / 100)
    for v in variants:
        print(f"{v:14s} median {statistics.median(ms[v]):.3f} ms/step   best {min(ms[v]):.3f}")


if __name__ == "__main__":
    main()
