"""Where a training step's time goes: torch.profiler over the seed model's step.

    python benchmarks/profile_step.py [--impl fused|foreach] [--steps 200] [--batch-size 64]

Builds the model, optimizer and loss exactly as vaelab-train experiment=seed does (through the
composed config), runs warm-up steps, then profiles --steps steps on the CPU and prints the
top ops by self time.
"""
from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_dir
from torch.profiler import ProfilerActivity, profile

from vaelab.config import CONF_DIR, register_configs, typed
from vaelab.losses import vae_loss
from vaelab.train import build_model, build_optimizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", default="fused")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rows", type=int, default=15)
    a = p.parse_args()
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = typed(compose("config", overrides=["experiment=seed", f"optim.impl={a.impl}"]))
    torch.set_flush_denormal(cfg.trainer.flush_denormal)  # as vaelab-train does
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    images = torch.randint(0, 256, (60000, 784), dtype=torch.uint8)  # shape and dtype of MNIST on device
    perm = torch.randperm(60000)

    def step(i: int) -> torch.Tensor:
        x = images.index_select(0, perm[i * a.batch_size:(i + 1) * a.batch_size]).float().div_(255)
        logits, mu, logvar = model(x)
        t = vae_loss(logits, x, mu, logvar, recon=cfg.loss.recon, beta=1.0)
        opt.zero_grad(set_to_none=True)
        t["loss"].backward()
        opt.step()
        return t["loss"].detach()

    for i in range(30):
        step(i)
    t0 = time.perf_counter()
    for i in range(a.steps):
        step(i)
    dt = (time.perf_counter() - t0) / a.steps
    print(f"optim.impl={a.impl} batch {a.batch_size}: {dt * 1e3:.2f} ms/step, "
          f"{dt * -(-60000 // a.batch_size):.2f} s per 60k-image epoch")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(a.steps):
            step(i)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
