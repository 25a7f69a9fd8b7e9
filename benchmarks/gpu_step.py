"""Where a training step's time goes on a GPU: the seed model's step, eager and as a CUDA graph.

    python benchmarks/gpu_step.py [--steps 2000] [--batch-sizes 64,256,1024,4096] [--impl auto] [--compile]
                                  [--loss-impl auto|torch|triton] [--tf32] [--adam-only] [--first-ops]

Builds the model, optimizer and step as vaelab-train experiment=seed does (through the composed
config; the step is train.py's, with its CudaGraphStep), on random uint8 images shaped like
MNIST, and prints first where a fresh process's first steps spend their time (the CUDA
start-up that lands in epoch 1), then microseconds per step for:
  eager      the loop as vaelab-train runs it with trainer.cuda_graph=false
  graph      the same loop with trainer.cuda_graph=true (slice, copy into the graph's buffer, replay)
  replay     graph.replay() alone, back to back: the GPU's own time for one step
then the CUDA kernels of one step, eager and inside the graph's replay (count, and the costliest
by GPU time), and the graph's
time per step and samples/s at larger batches. --compile adds the first three with torch.compile
of the model, and of the model and loss as one region. --loss-impl: as loss.impl (auto, the
default: fused_loss.py's Triton kernels in the graph, torch's ops in the eager step; not with
--compile's variants). --tf32 lets float32 matmuls use TF32 tensor cores (not a vaelab
setting: it changes the numbers). --adam-only times the optimizer update alone, as a graph:
torch's fused Adam, optim.impl=flat and =triton, and fused Adam over the flat tensor cut into
pieces (more, smaller blocks). --first-ops times a fresh process's first step
op by op, with the GPU synchronised around each (which ops load kernels), then stops.
"""
from __future__ import annotations

import argparse
import time

import torch
from hydra import compose, initialize_config_dir
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from vaelab.config import CONF_DIR, register_configs, typed
from vaelab.optim import FlatAdam
from vaelab.train import CudaGraphStep, build_model, build_optimizer, forward_loss, fused_loss_model, make_step

N = 60000


LOSS_IMPL = "auto"  # --loss-impl, for every setup() of the process


def setup(batch: int, graphed: bool, compiled: str = "", impl: str = "auto"):
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = typed(compose("config", overrides=["experiment=seed", f"trainer.batch_size={batch}",
                                                 f"optim.impl={impl}", f"loss.impl={LOSS_IMPL}",
                                                 f"trainer.cuda_graph={str(graphed).lower()}"]))
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(cfg).to(dev)
    opt = build_optimizer(cfg, model, capturable=graphed)
    loss_fn = forward_loss(torch.compile(model) if compiled == "model" else model, "mse",
                           fused=None if compiled else fused_loss_model(cfg, model, dev))  # (compile: torch's loss)
    if compiled == "model+loss":  # one compiled region: the loss's elementwise work fuses too
        loss_fn = torch.compile(loss_fn)
    images = torch.randint(0, 256, (N, 784), dtype=torch.uint8, device=dev)
    perm = torch.randperm(N, device=dev)
    step = make_step(loss_fn, model, opt, images, (torch.zeros(4, device=dev), torch.zeros(4, device=dev)))
    run = CudaGraphStep(step, opt, batch, dev) if graphed else step
    return run, perm, step


def loop_us(run, perm, batch: int, steps: int) -> float:
    full = N // batch
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(CudaGraphStep.WARMUP + 5):  # warm-up (and, for the graph, the capture)
        run(perm[i * batch:(i + 1) * batch], 1.0)
    torch.cuda.synchronize()
    print(f"  (batch {batch}: the first {CudaGraphStep.WARMUP + 5} steps took {time.perf_counter() - t0:.3f} s)")
    t0 = time.perf_counter()
    for i in range(steps):
        j = i % full
        run(perm[j * batch:(j + 1) * batch], 1.0)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps * 1e6


def first_use(impl: str) -> None:
    """Seconds of each first-time cost, in the order a fresh vaelab-train process meets them."""
    def timed(what, fn):
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        print(f"  first use: {what:44s} {1e3 * (time.perf_counter() - t0):8.1f} ms")
        return out

    dev = torch.device("cuda")
    timed("CUDA context (a tensor on the device)", lambda: torch.zeros(1, device=dev))
    a = timed("60k x 784 uint8 images to the device", lambda: torch.randint(0, 256, (N, 784), dtype=torch.uint8).to(dev))
    timed("cuBLAS handle", torch.cuda.current_blas_handle)
    w = torch.randn(512, 784, device=dev, requires_grad=True)
    timed("first matmul (64x784 @ 784x512)", lambda: a[:64].float() @ w.t())
    run, perm, _ = timed("model + optimizer (setup)", lambda: setup(64, True, impl=impl))
    for i in range(CudaGraphStep.WARMUP + 3):
        what = "eager warm-up step" if i < CudaGraphStep.WARMUP else ("capture + replay" if i == CudaGraphStep.WARMUP
                                                                      else "replay")
        timed(f"step {i + 1} ({what})", lambda: run(perm[i * 64:(i + 1) * 64], 1.0))


class OpClock(TorchDispatchMode):
    """Each aten op's wall time with the GPU synchronised before and after it: in a fresh
    process, which ops of the first step pay for loading their kernels (CUDA loads a kernel
    lazily, at its first launch) and cuBLAS for choosing and loading its products. The mode
    also sees the backward's ops, which autograd runs on its own thread."""

    def __init__(self):
        super().__init__()
        self.ms: dict[str, list[float]] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        torch.cuda.synchronize()
        self.ms.setdefault(str(func.overloadpacket.__name__), []).append(1e3 * (time.perf_counter() - t0))
        return out


def first_ops(impl: str, top: int = 15) -> None:
    """Step 1 of a fresh process, op by op (OpClock), after the CUDA context and cuBLAS's
    handle exist, as they do when vaelab-train's epoch 1 starts."""
    dev = torch.device("cuda")
    torch.zeros(1, device=dev)
    torch.cuda.current_blas_handle()
    run, perm, _ = setup(64, True, impl=impl)
    torch.cuda.synchronize()
    clock = OpClock()
    t0 = time.perf_counter()
    with clock:
        run(perm[:64], 1.0)
    torch.cuda.synchronize()
    total = 1e3 * (time.perf_counter() - t0)
    ops = sorted(clock.ms.items(), key=lambda kv: -sum(kv[1]))
    in_ops = sum(sum(v) for v in clock.ms.values())
    print(f"  step 1, op by op: {total:.1f} ms in all, {in_ops:.1f} ms inside "
          f"{sum(len(v) for v in clock.ms.values())} aten calls of {len(ops)} kinds; the costliest:")
    for name, ms in ops[:top]:
        print(f"    {name:40s} {len(ms):3d} calls {sum(ms):8.1f} ms (first {ms[0]:7.1f}, max {max(ms):7.1f})")
    clock = OpClock()
    with clock:
        run(perm[64:128], 1.0)
    torch.cuda.synchronize()
    print(f"  step 2, op by op: {sum(sum(v) for v in clock.ms.values()):.1f} ms inside aten calls")
    # A second model in the same process: what of step 1's cost a warm-up on a throwaway copy
    # (e.g. in a thread while vaelab-train loads data) would take away from the real run's epoch 1.
    run, perm, _ = setup(64, True, impl=impl)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run(perm[:64], 1.0)
    torch.cuda.synchronize()
    print(f"  step 1 of a second model in this process: {1e3 * (time.perf_counter() - t0):.1f} ms")


def adam_only(steps: int) -> None:
    """The update alone, captured as a CUDA graph and replayed: us per step."""
    dev = torch.device("cuda")

    def pieces(model, size):  # fused Adam over views of one flat tensor, `size` numbers each
        flat = FlatAdam(model.parameters())  # (for its flat weights and gradient; its own update unused)
        ws, gs = flat.flat.split(size), flat.grad.split(size)
        for w, g in zip(ws, gs):
            w.grad = g
        inner = torch.optim.Adam(ws, lr=1e-3, fused=True, capturable=True)

        def step():
            torch.cat([p.grad.reshape(-1) for p in model.parameters()], out=flat.grad)
            inner.step()
        return step

    makers = {"fused (optim.impl=fused)": lambda m: torch.optim.Adam(m.parameters(), fused=True, capturable=True).step,
              "flat (optim.impl=flat)": lambda m: FlatAdam(m.parameters()).step,
              "triton (optim.impl=triton/auto)": lambda m: FlatAdam(m.parameters(), kernel="triton").step}
    makers.update({f"fused over {k}-number pieces": (lambda k: lambda m: pieces(m, k))(k)
                   for k in (4096, 16384, 65536)})
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = typed(compose("config", overrides=["experiment=seed"]))
    for name, make in makers.items():
        torch.manual_seed(0)
        model = build_model(cfg).to(dev)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        step = make(model)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                step()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            g.replay()
        torch.cuda.synchronize()
        print(f"adam only, {name:30s} {(time.perf_counter() - t0) / steps * 1e6:6.1f} us/step")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-sizes", default="64,256,1024,4096")
    p.add_argument("--impl", choices=["auto", "fused", "flat", "triton", "foreach", "forloop"], default="auto",
                   help="as optim.impl (auto: flat Adam's Triton kernel in the graph, fused Adam in the eager step)")
    p.add_argument("--loss-impl", choices=["auto", "torch", "triton"], default="auto",
                   help="as loss.impl (triton: the loss, forward and backward, as fused_loss.py's four kernels; "
                        "auto: those in the graph, torch's ops in the eager step)")
    p.add_argument("--tf32", action="store_true", help="float32 matmuls on TF32 tensor cores")
    p.add_argument("--adam-only", action="store_true", help="time the optimizer update alone, then stop")
    p.add_argument("--first-ops", action="store_true",
                   help="in this fresh process, time step 1 op by op (where epoch 1's start-up goes), then stop")
    p.add_argument("--compile", action="store_true",
                   help="also with torch.compile of the model, and of the model and loss together")
    a = p.parse_args()
    global LOSS_IMPL
    LOSS_IMPL = a.loss_impl
    try:
        sizes = [int(b) for b in a.batch_sizes.split(",")]
    except ValueError:
        sizes = []
    if a.steps < 1 or not sizes or not all(1 <= b <= N for b in sizes):
        p.error(f"--steps {a.steps} --batch-sizes {a.batch_sizes}: steps >= 1, and batch sizes a comma-separated "
                f"list of integers in [1, {N}]")
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, optim.impl={a.impl}, loss.impl={a.loss_impl}, "
          f"tf32={a.tf32}")
    if a.adam_only:
        adam_only(a.steps)
        return
    if a.first_ops:
        first_ops(a.impl)
        return
    first_use(a.impl)
    variants = [("", "")] + ([(" +compile(model)", "model"), (" +compile(model+loss)", "model+loss")]
                             if a.compile else [])
    for tag, compiled in variants:
        run, perm, _ = setup(64, False, compiled, a.impl)
        eager = loop_us(run, perm, 64, max(1, a.steps // 4))
        g, perm, _ = setup(64, True, compiled, a.impl)
        graph = loop_us(g, perm, 64, a.steps)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            g.graph.replay()
        torch.cuda.synchronize()
        replay = (time.perf_counter() - t0) / a.steps * 1e6
        print(f"batch 64{tag}: eager {eager:.0f} us/step, graph {graph:.0f} us/step, replay alone {replay:.0f} "
              f"us/step; graph {64e6 / graph:,.0f} samples/s")

    # The kernels of one step, eager and inside the graph. Eager, the GPU idles ~2 ms between
    # steps and may run them at lower clocks; back-to-back replays are what training runs.
    _, perm, step = setup(64, False, impl=a.impl)
    g, gperm, _ = setup(64, True, impl=a.impl)
    loop_us(g, gperm, 64, 200)
    for tag, run_one in (("eager step", lambda i: step(perm[i * 64:(i + 1) * 64], 1.0)),
                         ("graph replay", lambda i: g.graph.replay())):
        for i in range(20):
            run_one(i)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for i in range(10):
                run_one(i)
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        print(f"{tag}: {len(kernels) / 10:.0f} GPU kernels and copies per step, "
              f"{sum(e.device_time for e in kernels) / 10:.0f} us of GPU time per step")
        print(prof.key_averages().table(sort_by="device_time_total", row_limit=14, max_name_column_width=70))

    for b in sizes:
        g, perm, _ = setup(b, True, impl=a.impl)
        us = loop_us(g, perm, b, max(200, a.steps * 64 // b))
        print(f"graph, batch {b:5d}: {us:7.0f} us/step, {b * 1e6 / us:12,.0f} samples/s, "
              f"{us * 1e-6 * -(-N // b):.3f} s per 60k epoch")


if __name__ == "__main__":
    main()
