"""What one training step of the seed model is made of, and how fast an eager step can be.

    python benchmarks/floor.py [--rounds 10] [--block 100] [--reference-rate SAMPLES_PER_S]
                               [--record benchmarks/results/speed-cpu-epyc-run4.json] [--out PATH]

Times five things, alternated in blocks of --block calls so that a busy minute on the host
slows them all alike (order reversed every other round), and prints the median ms of each:
  step          the seed model's training step as vaelab-train runs it by default (oneDNN
                products, vae_loss, zero_grad, backward, fused Adam) on MNIST-shaped random
                images; the clock around its optimizer step gives `adam in step`
  products      its 11 matrix products alone, back to back, as the step runs them (gemm_shapes.py)
  adam alone    the fused Adam update of its 1.2 M parameters repeated alone (caches warm)
  overhead      the same step code on a model whose every width is 8, at batch 1: what
                dispatch, autograd and the optimizer cost with next to no arithmetic
  by hand       the same step written out without autograd (HandStep): the gradients of the
                seed loss worked out in ~25 tensor calls into preallocated buffers, ReLU and
                sigmoid fused into the oneDNN products, then the same fused Adam. It is checked
                against autograd's gradients before it is timed. It shows what dropping autograd
                altogether would buy, the one means the floor does not bound.
rest = step - products - adam in step - overhead: the elementwise ops, the oneDNN Function's
extra cost, and products running on caches that Adam has just swept. The eager floor, products
+ adam in step + overhead, is a lower bound on any eager autograd step of this model here: it
leaves out all elementwise work and gives the products their warm, stand-alone speed. With a
reference rate (--reference-rate, or --record: a speed.py record, whose reference samples/s is
used) it prints the step time that 3x the reference needs, and whether that is within reach.
Writes results/floor-cpu.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from gemm_shapes import products
from speed import machine
from vaelab.data import to_float
from vaelab.losses import vae_loss
from vaelab.models.mlp import MLPVAE

REPO = Path(__file__).resolve().parents[1]
TARGET = 3.0


class HandStep:
    """The seed model's step with its backward written out by hand: no autograd graph.

    Same model, loss (MSE recon summed over pixels + KL, averaged over the batch, beta=1) and
    fused Adam as Step; for one hidden layer (784 -> 512 -> [mu | logvar] -> 512 -> 784). With
    s = sigmoid(a) the decoder mean and B the batch, the gradients of the batch-mean loss are
      d a = 2/B (s - x) s (1 - s)
      d mu = d z + mu / B,   d logvar = 1/2 d z eps std + 1/2B (std^2 - 1)   (z = mu + eps std)
    and through each Linear: d W = g^T h, d b = sum_rows g, d h = g W, masked by h > 0 after a ReLU.
    Benchmark only: one architecture, no second derivatives, nothing to reuse.
    """

    def __init__(self, model: MLPVAE) -> None:
        if len(model.hidden) != 1:
            raise ValueError(f"HandStep: one hidden layer only, got hidden={model.hidden}")
        (self.l1, _), self.head, (self.l4, _, self.l5) = model.encoder, model.head, model.decoder
        self.model, self.latent = model, model.latent_size
        for p in model.parameters():
            p.grad = torch.zeros_like(p)  # written in place every step (out=), never reallocated
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    @staticmethod
    def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, act: str = "none") -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, w, b, act, [], "")  # act fused into the product

    @torch.no_grad()
    def grads(self, x: torch.Tensor) -> None:
        """Write d loss / d parameter into each parameter's .grad; x (B, 784) in [0, 1]."""
        (l1, head, l4, l5), L, B = (self.l1, self.head, self.l4, self.l5), self.latent, x.shape[0]
        h1 = self._linear(x, l1.weight, l1.bias, "relu")  # (B, 512)
        o = self._linear(h1, head.weight, head.bias)  # (B, 2L) = [mu | logvar]
        mu, logvar = o[:, :L], o[:, L:]
        std = torch.exp(logvar * 0.5)
        eps = torch.randn(std.shape)
        z = torch.addcmul(mu, eps, std)  # (B, L)
        h4 = self._linear(z, l4.weight, l4.bias, "relu")  # (B, 512)
        s = self._linear(h4, l5.weight, l5.bias, "sigmoid")  # (B, 784)
        ga = torch.ops.aten.sigmoid_backward(torch.sub(s, x).mul_(2.0 / B), s)
        torch.mm(ga.t(), h4, out=l5.weight.grad), torch.sum(ga, 0, out=l5.bias.grad)
        g4 = torch.ops.aten.threshold_backward(self._linear(ga, l5.weight.t(), None), h4, 0)
        torch.mm(g4.t(), z, out=l4.weight.grad), torch.sum(g4, 0, out=l4.bias.grad)
        gz = self._linear(g4, l4.weight.t(), None)  # (B, L)
        go = torch.empty_like(o)
        torch.add(gz, mu, alpha=1.0 / B, out=go[:, :L])
        kl_lv = torch.mul(std, std).sub_(1).mul_(0.5 / B)
        torch.addcmul(kl_lv, gz.mul_(eps), std, value=0.5, out=go[:, L:])
        torch.mm(go.t(), h1, out=head.weight.grad), torch.sum(go, 0, out=head.bias.grad)
        g1 = torch.ops.aten.threshold_backward(self._linear(go, head.weight.t(), None), h1, 0)
        torch.mm(g1.t(), x, out=l1.weight.grad), torch.sum(g1, 0, out=l1.bias.grad)

    def __call__(self, x: torch.Tensor) -> None:
        self.grads(x)
        self.opt.step()


def hand_grads_error(batch: int = 64, seed: int = 0) -> float:
    """Largest relative gap between HandStep's gradients and autograd's (vae_loss, same eps)."""
    torch.manual_seed(seed)
    auto = MLPVAE(256, size="base")
    hand = MLPVAE(256, size="base")
    hand.load_state_dict(auto.state_dict())
    x = torch.rand(batch, 784)
    torch.manual_seed(seed + 1)  # the same eps for both: randn_like there, randn here, one generator
    logits, mu, logvar = auto(x)
    vae_loss(logits, x, mu, logvar, recon="mse", beta=1.0)["loss"].backward()
    torch.manual_seed(seed + 1)
    HandStep(hand).grads(x)
    return max(float((h.grad - a.grad).abs().max() / a.grad.abs().max())
               for h, a in zip(hand.parameters(), auto.parameters()))


class Step:
    """The training step vaelab-train runs (vae_loss, zero_grad(set_to_none=True), backward,
    fused Adam), with a clock around the optimizer: CPU ops are synchronous, so that is Adam's
    time inside a real step, caches as the forward and backward left them."""

    def __init__(self, model: MLPVAE) -> None:
        self.model, self.adam_s = model, 0.0
        self.opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def __call__(self, x: torch.Tensor) -> None:
        logits, mu, logvar = self.model(x)
        loss = vae_loss(logits, x, mu, logvar, recon="mse", beta=1.0)["loss"]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        t0 = time.perf_counter()
        self.opt.step()
        self.adam_s += time.perf_counter() - t0


def parts(batch: int) -> tuple[dict[str, object], Step, int]:
    """The timed parts (name -> fn), the seed-model step whose Adam time is also kept, and the
    FLOPs of its 11 products."""
    torch.manual_seed(0)
    step = Step(MLPVAE(256, size="base"))  # the seed's network, model.linear=onednn as by default
    images = torch.randint(0, 256, (60000, 784), dtype=torch.uint8)  # MNIST's shape and dtype
    perm, pos = torch.randperm(60000), [0]

    hand = HandStep(MLPVAE(256, size="base"))

    def next_batch() -> torch.Tensor:
        i = pos[0] = (pos[0] + batch) % (60000 - batch)
        return to_float(images.index_select(0, perm[i:i + batch]))

    prods = products(batch, torch.float32, "onednn")

    def all_products() -> None:
        for _, _, fn in prods:
            fn()

    params = [p.detach().clone() for p in step.model.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    adam = torch.optim.Adam(params, lr=1e-3, fused=True)
    # every product < ONEDNN_MIN_MACS, so F.linear: the cheapest eager path
    tiny, tiny_x = Step(MLPVAE(8, hidden=[8], input_dim=8, image_shape=(1, 2, 4))), torch.rand(1, 8)
    return {"step": lambda: step(next_batch()), "products": all_products, "adam alone": adam.step,
            "overhead": lambda: tiny(tiny_x), "by hand": lambda: hand(next_batch())}, step, \
        sum(f for _, f, _ in prods)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--block", type=int, default=100, help="calls of each part per round")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reference-rate", type=float, help="the seed script's samples/s on this machine")
    p.add_argument("--record", type=Path, help="a speed.py record: its reference samples/s is used")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "floor-cpu.json")
    a = p.parse_args()
    if min(a.rounds, a.block, a.batch_size) < 1 or a.batch_size > 30000:
        p.error(f"--rounds {a.rounds} --block {a.block} --batch-size {a.batch_size}: each must be >= 1, "
                "the batch size at most 30000 (half of the 60,000 images it cycles through)")
    ref = a.reference_rate
    if a.record is not None:
        try:
            ref = json.loads(a.record.read_text())["summary"]["reference_samples_per_s"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            sys.exit(f"floor.py: error: --record {a.record}: not a readable speed.py record ({e!r})")
    if ref is not None and ref <= 0:
        p.error(f"--reference-rate {ref}: must be > 0 samples/s")
    torch.set_flush_denormal(True)  # as vaelab-train does by default
    hand_err = hand_grads_error()
    if hand_err > 1e-5:  # float rounding is ~1e-7; more means the hand-written maths is wrong
        sys.exit(f"floor.py: error: the hand-written step's gradients differ from autograd's by {hand_err:.1e} "
                 "(relative); allowed: 1e-5")
    fns, seed_step, flops = parts(a.batch_size)
    for fn in fns.values():  # warm-up
        for _ in range(5):
            fn()
    ms: dict[str, list[float]] = {k: [] for k in [*fns, "adam in step"]}
    names = list(fns)
    for r in range(a.rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            seed_step.adam_s = 0.0
            t0 = time.perf_counter()
            for _ in range(a.block):
                fns[k]()
            ms[k].append((time.perf_counter() - t0) * 1e3 / a.block)
            if k == "step":
                ms["adam in step"].append(seed_step.adam_s * 1e3 / a.block)
    med = {k: statistics.median(v) for k, v in ms.items()}
    med["rest"] = med["step"] - med["products"] - med["adam in step"] - med["overhead"]
    # a lower bound: products at their warm, stand-alone speed, Adam as a real step leaves its
    # caches, the framework's cost of a step with nothing to compute, and no elementwise work
    floor = med["products"] + med["adam in step"] + med["overhead"]
    per_epoch = -(-60000 // a.batch_size)
    n_params = sum(x.numel() for x in seed_step.model.parameters())
    m = machine("cpu")
    print(f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, batch {a.batch_size}: "
          f"median ms per step over {a.rounds} rounds of {a.block}")
    notes = {"step": "the default seed-model step",
             "products": f"its 11 products alone, {flops / med['products'] / 1e6:.0f} GFLOP/s",
             "adam in step": f"fused Adam on {n_params / 1e6:.2f} M parameters, timed inside the step",
             "adam alone": "the same update repeated alone (caches warm)",
             "overhead": "the same step with every width 8, batch 1",
             "rest": "step - products - adam in step - overhead: elementwise ops, oneDNN/Function cost, "
                     "products on cold caches",
             "by hand": f"the same step without autograd (gradients as autograd's to {hand_err:.0e})"}
    for k in ("step", "products", "adam in step", "adam alone", "overhead", "rest", "by hand"):
        print(f"  {k:12s} {med[k]:6.3f} ms  {notes[k]}")
    rate = lambda step_ms: a.batch_size / step_ms * 1e3  # noqa: E731
    print(f"eager floor (products + adam in step + overhead): {floor:.3f} ms = {rate(floor):,.0f} samples/s "
          f"({floor * per_epoch / 1e3:.2f} s per 60k-image epoch); the step now: {rate(med['step']):,.0f}")
    record = {"machine": m, "batch_size": a.batch_size, "rounds": a.rounds, "block": a.block,
              "median_ms": med, "floor_ms": floor, "hand_grad_rel_error": hand_err, "all_ms": ms,
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if ref is not None:
        need = a.batch_size / (TARGET * ref) * 1e3
        record.update(reference_samples_per_s=ref, target_step_ms=need)
        print(f"{TARGET:.0f}x the reference's {ref:,.0f} samples/s needs {need:.3f} ms per step: "
              + (f"{need - floor:.3f} ms above the eager floor" if need >= floor else
                 f"{floor - need:.3f} ms below the eager floor, out of eager reach")
              + f"; written by hand without autograd it takes {med['by hand']:.3f} ms, "
              + f"{rate(med['by hand']) / ref:.2f}x the reference")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"record: {a.out}")


if __name__ == "__main__":
    main()
