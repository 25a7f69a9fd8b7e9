"""How fast this CPU runs the seed model's matrix products, at 1 and 2 threads.

    python benchmarks/gemm_shapes.py [--batch-size 64] [--threads 1,2] [--dtype float32|bfloat16]
                                     [--linear aten|onednn]

One training step of the seed model is 11 products: for each of its four Linear layers the
forward `addmm`, the weight gradient `g^T x` and the input gradient `g W` (none for the first
layer: the images need no gradient). Times each one alone (best of 5 blocks), next to a
2048^3 product as this machine's practical peak, and prints microseconds and GFLOP/s. It shows
how close a step's products can get to the peak at batch 64, which bounds any speed-up.
--dtype bfloat16 times the same products in bf16, as `trainer.amp=bf16` runs them.
--linear onednn runs the forward and input-gradient products on oneDNN, as `model.linear=onednn`
(the default) does in float32; weight gradients stay on MKL there, as here.
Writes results/gemm-shapes-cpu[-bfloat16][-onednn].json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from vaelab.models.linear import HAVE_ONEDNN, onednn_linear
from vaelab.models.mlp import MLPVAE

REPO = Path(__file__).resolve().parents[1]


def best_seconds(fn, reps: int, blocks: int = 5) -> float:
    for _ in range(max(3, reps // 10)):
        fn()
    best = float("inf")
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def products(batch: int, dtype: torch.dtype, linear: str = "aten") -> list[tuple[str, int, object]]:
    """(name, flops, fn) for the 11 products of one seed-model step at this batch size."""
    torch.manual_seed(0)
    layers = [m for m in MLPVAE(256, size="base").modules() if isinstance(m, torch.nn.Linear)]
    out = []
    for k, lin in enumerate(layers):
        w, b = lin.weight.detach().to(dtype), lin.bias.detach().to(dtype)
        n_out, n_in = w.shape
        x, g = torch.rand(batch, n_in, dtype=dtype), torch.randn(batch, n_out, dtype=dtype)
        flops = 2 * batch * n_in * n_out
        name = f"{n_in}->{n_out}"
        if linear == "onednn":  # as models/linear.py computes them
            fwd = lambda b=b, x=x, w=w: onednn_linear(x, w, b)  # noqa: E731
            gin = lambda g=g, w=w: onednn_linear(g, w.t())  # noqa: E731
        else:
            fwd = lambda b=b, x=x, w=w: torch.addmm(b, x, w.t())  # noqa: E731
            gin = lambda g=g, w=w: g @ w  # noqa: E731
        out.append((f"{name} forward", flops, fwd))
        out.append((f"{name} grad weight", flops, lambda g=g, x=x: g.t() @ x))
        if k > 0:  # the first layer's input is the data: no gradient
            out.append((f"{name} grad input", flops, gin))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--linear", choices=["aten", "onednn"], default="aten",
                   help="where forward and input-gradient products run (as model.linear)")
    p.add_argument("--out", type=Path, help="JSON record (default results/gemm-shapes-cpu[-bfloat16][-onednn].json)")
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    if a.linear == "onednn" and (not HAVE_ONEDNN or a.dtype != "float32"):
        p.error("--linear onednn: needs --dtype float32 and a torch built with oneDNN")
    suffix = ("" if a.dtype == "float32" else f"-{a.dtype}") + ("-onednn" if a.linear == "onednn" else "")
    out = a.out or REPO / "benchmarks" / "results" / f"gemm-shapes-cpu{suffix}.json"
    try:
        threads = [int(t) for t in a.threads.split(",")]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        p.error(f"--threads {a.threads}: expected comma-separated integers >= 1, e.g. 1,2")
    if a.batch_size < 1:
        p.error(f"--batch-size {a.batch_size}: must be >= 1")
    big_a, big_b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    prods = products(a.batch_size, dtype, a.linear)
    record = {"batch_size": a.batch_size, "dtype": a.dtype, "linear": a.linear, "torch": torch.__version__,
              "threads": {}}
    for n in threads:
        torch.set_num_threads(n)
        peak = 2 * 2048 ** 3 / best_seconds(lambda: big_a @ big_b, 10) / 1e9
        rows = [(name, flops, best_seconds(fn, 300)) for name, flops, fn in prods]
        total_s = sum(s for _, _, s in rows)
        total_flops = sum(f for _, f, _ in rows)
        print(f"\n{n} thread(s), {a.dtype}, linear={a.linear}: 2048^3 product {peak:.0f} GFLOP/s")
        for name, flops, s in rows:
            print(f"  {name:24s} {s * 1e6:7.0f} us  {flops / s / 1e9:5.0f} GFLOP/s")
        print(f"  {'all 11':24s} {total_s * 1e6:7.0f} us  {total_flops / total_s / 1e9:5.0f} GFLOP/s "
              f"({100 * total_flops / total_s / 1e9 / peak:.0f}% of the 2048^3 rate)")
        record["threads"][n] = {"peak_gflops": peak, "total_us": total_s * 1e6,
                                "total_gflops": total_flops / total_s / 1e9,
                                "products": [{"name": name, "us": s * 1e6, "gflops": f / s / 1e9}
                                             for name, f, s in rows]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"record: {out}")


if __name__ == "__main__":
    main()
