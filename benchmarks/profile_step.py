"""Where a training step's time goes: torch.profiler over the seed model's step.

    python benchmarks/profile_step.py [--impl fused|foreach|forloop] [--steps 200] [--batch-size 64]
                                      [--rows 15] [--phases] [--amp off|bf16] [--linear onednn|aten]

Builds the model, optimizer and loss exactly as vaelab-train experiment=seed does (through the
composed config), runs warm-up steps, then profiles --steps steps on the CPU and prints the
top --rows ops by self time. Batches go round the 60,000 images, as epochs do. --phases instead times the parts of a step with a wall clock (no
profiler overhead): batch, forward, loss, zero_grad, backward, optimizer, median over steps.
--amp bf16 runs the forward under bf16 autocast, as `trainer.amp=bf16` does. --linear aten
puts every product on MKL (F.linear), as `model.linear=aten` does.
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
from hydra import compose, initialize_config_dir
from torch.profiler import ProfilerActivity, profile

from vaelab.config import CONF_DIR, register_configs, typed
from vaelab.losses import vae_loss
from vaelab.build import build_model, build_optimizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=["fused", "foreach", "forloop"], default="fused", help="as optim.impl")
    p.add_argument("--steps", type=int, default=200, help="steps timed (and profiled)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rows", type=int, default=15, help="ops shown in the profiler table")
    p.add_argument("--phases", action="store_true", help="wall-clock time per phase instead of the profiler")
    p.add_argument("--amp", choices=["off", "bf16"], default="off", help="as trainer.amp")
    p.add_argument("--linear", choices=["onednn", "aten"], default="onednn", help="as model.linear")
    a = p.parse_args()
    if a.steps < 1 or a.rows < 1 or not 1 <= a.batch_size <= 60000:
        p.error(f"--steps {a.steps} --rows {a.rows} --batch-size {a.batch_size}: each must be >= 1, "
                "the batch size at most 60000")
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = typed(compose("config", overrides=["experiment=seed", f"optim.impl={a.impl}",
                                                     f"trainer.amp={a.amp}", f"model.linear={a.linear}"]))
    torch.set_flush_denormal(cfg.trainer.flush_denormal)  # as vaelab-train does
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    # as vaelab.train does: only the model's forward is autocast; the loss is fp32
    amp = torch.autocast("cpu", dtype=torch.bfloat16) if a.amp == "bf16" else nullcontext()
    images = torch.randint(0, 256, (60000, 784), dtype=torch.uint8)  # shape and dtype of MNIST on device
    perm = torch.randperm(60000)
    per_epoch = 60000 // a.batch_size  # full batches; step i takes batch i mod this, never an empty one

    phase_ms: dict[str, list[float]] = {k: [] for k in
                                         ("batch", "forward", "loss", "zero_grad", "backward", "optimizer")}

    def step(i: int, timed: bool = False) -> torch.Tensor:
        # perf_counter is exact here: CPU ops run synchronously.
        t = [time.perf_counter()]
        j = i % per_epoch
        x = images.index_select(0, perm[j * a.batch_size:(j + 1) * a.batch_size]).float().div_(255)
        t.append(time.perf_counter())
        with amp:
            logits, mu, logvar = model(x)
        t.append(time.perf_counter())
        terms = vae_loss(logits.float(), x, mu.float(), logvar.float(), recon=cfg.loss.recon, beta=1.0)
        t.append(time.perf_counter())
        opt.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        terms["loss"].backward()
        t.append(time.perf_counter())
        opt.step()
        t.append(time.perf_counter())
        if timed:
            for k, t0, t1 in zip(phase_ms, t, t[1:]):
                phase_ms[k].append((t1 - t0) * 1e3)
        return terms["loss"].detach()

    for i in range(30):
        step(i)
    t0 = time.perf_counter()
    for i in range(a.steps):
        step(i)
    dt = (time.perf_counter() - t0) / a.steps
    print(f"optim.impl={a.impl} trainer.amp={a.amp} model.linear={a.linear} batch {a.batch_size}: "
          f"{dt * 1e3:.2f} ms/step, "
          f"{dt * -(-60000 // a.batch_size):.2f} s per 60k-image epoch")
    if a.phases:
        for i in range(a.steps):
            step(i, timed=True)
        medians = {k: statistics.median(v) for k, v in phase_ms.items()}
        for k, v in medians.items():
            print(f"  {k:10s} {v:6.3f} ms (median of {a.steps} steps)")
        print(f"  {'sum':10s} {sum(medians.values()):6.3f} ms")
        return
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(a.steps):
            step(i)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
