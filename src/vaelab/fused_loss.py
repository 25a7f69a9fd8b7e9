"""The training step's loss as four Triton kernels (loss.impl=triton, CUDA only; loss.impl=auto,
the default, in a CUDA-graph step).

In a CUDA-graph step of the seed model on an H200 (benchmarks/README.md) the step is 78 kernels,
and about 40 of them are the small element-wise and reduction kernels of the
reparameterisation, the KL and the reconstruction term, forward and backward, each about 1 us
on a GPU that a batch of 64 leaves almost idle. Here the same arithmetic is:

- reparam_kl: z = mu + eps * exp(logvar / 2), and the KL per latent dimension averaged over the
  batch (losses.kl_per_dim), in one pass; its backward, dmu and dlogvar, in one more;
- recon: the per-example reconstruction cost (losses.recon_nll: mse or bce, from the decoder's
  logits), and its backward, dlogits, in one more.

The functions are autograd.Functions with their derivatives written out, the same float32
arithmetic in another order (the sums), so the run's numbers differ from loss.impl=torch by
float rounding only; tests/test_fused_loss.py checks values and gradients against losses.py on
the CPU under Triton's interpreter. eps is drawn by torch as the model's reparameterize draws
it, so a run's draws are the same with either loss.impl.

What it needs (config.validate and train.fused_loss_model refuse the rest, each with one
line): a CUDA device with Triton, float32 (trainer.amp=off), no torch.compile, and a model
that samples z through VAE.forward (it calls the model's encode and decode_logits, and
reparameterises itself).
"""
from __future__ import annotations

import contextlib
import functools
import logging

import torch

from vaelab.losses import elbo_terms
from vaelab.optim import triton_unusable

log = logging.getLogger("vaelab")
# The (batch, latent) tile of the reparameterisation's kernels: a batch of up to 128 (the
# seed's 64, the trainer's default 128) is one row of tiles, whose KL needs no second sum.
ROWS, COLS = 128, 16
BLOCK = 1024  # numbers per program of the element-wise kernels
_BROKEN: str | None = None  # why the kernels failed in this process, if they did


@functools.cache
def _kernels():
    """The four kernels (vaelab/_fused_kernels.py), compiled by Triton at their first launch;
    None without triton."""
    try:
        from vaelab import _fused_kernels as k
    except Exception:  # noqa: BLE001 - not installed, or an install that cannot load here
        return None
    return k.reparam_kl_fwd, k.reparam_kl_bwd, k.recon_fwd, k.recon_bwd


def _on(t: torch.Tensor):
    """Triton launches on the current device's stream (a CPU tensor: a test, under its interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _rows(t: torch.Tensor) -> torch.Tensor:
    """A (B, L) tensor whose rows may be spaced apart (mu and logvar are halves of one (B, 2L)
    output) but whose columns are adjacent, as the kernels read them."""
    return t if t.stride(-1) == 1 else t.contiguous()


class ReparamKL(torch.autograd.Function):
    """(mu, logvar, eps) -> (z, KL per latent dimension averaged over the batch (L,), its sum)."""

    @staticmethod
    def forward(ctx, mu, logvar, eps):
        mu, logvar, eps = _rows(mu), _rows(logvar), eps.contiguous()
        B, L = mu.shape
        blocks = _cdiv(B, ROWS)
        z = torch.empty((B, L), dtype=mu.dtype, device=mu.device)
        part = torch.empty((blocks, L), dtype=mu.dtype, device=mu.device)
        with _on(mu):
            _kernels()[0][(blocks, _cdiv(L, COLS))](mu, logvar, eps, z, part, B, L, mu.stride(0), logvar.stride(0),
                                                    float(B) if blocks == 1 else 1.0, ROWS=ROWS, COLS=COLS)
        kl_d = part[0] if blocks == 1 else part.sum(0).div_(B)  # (two kernels fewer for a batch <= ROWS)
        ctx.save_for_backward(mu, logvar, eps)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zeros made
        return z, kl_d, kl_d.sum()

    @staticmethod
    def backward(ctx, gz, gkl_d, gkl):
        mu, logvar, eps = ctx.saved_tensors
        B, L = mu.shape
        dmu = torch.empty((B, L), dtype=mu.dtype, device=mu.device)
        dlv = torch.empty_like(dmu)
        gz = gz.contiguous() if gz is not None else None
        gkl_d = gkl_d.contiguous() if gkl_d is not None else None
        with _on(mu):
            _kernels()[1][(_cdiv(B, ROWS), _cdiv(L, COLS))](
                mu, logvar, eps, gz if gz is not None else mu, gkl_d if gkl_d is not None else mu,
                gkl if gkl is not None else mu, dmu, dlv, B, L, mu.stride(0), logvar.stride(0), float(B),
                HAS_GZ=gz is not None, HAS_GKD=gkl_d is not None, HAS_GK=gkl is not None, ROWS=ROWS, COLS=COLS)
        return dmu, dlv, None


class ReconMean(torch.autograd.Function):
    """(logits, x, bce) -> the reconstruction cost summed over pixels, averaged over the batch."""

    @staticmethod
    def forward(ctx, logits, x, bce: bool):
        logits, x = logits.contiguous(), x.contiguous()
        B, D = logits.shape
        rows = torch.empty(B, dtype=logits.dtype, device=logits.device)
        with _on(logits):
            _kernels()[2][(B,)](logits, x, rows, D, BCE=bce, BLOCK=min(BLOCK, 1 << (D - 1).bit_length()))
        ctx.save_for_backward(logits, x)
        ctx.bce = bce
        return rows.mean()

    @staticmethod
    def backward(ctx, g):
        logits, x = ctx.saved_tensors
        dl = torch.empty_like(logits)
        with _on(logits):
            _kernels()[3][(_cdiv(logits.numel(), BLOCK),)](logits, x, g.contiguous(), dl, logits.numel(),
                                                           float(logits.shape[0]), BCE=ctx.bce, BLOCK=BLOCK)
        return dl, None, None


def fused_vae_loss(model, x: torch.Tensor, beta, recon: str) -> dict[str, torch.Tensor]:
    """losses.vae_loss of model(x), with one z per example drawn as VAE.reparameterize draws it."""
    mu, logvar = model.encode(x)
    # (B, L) contiguous, as reparameterize's randn_like(std): the same draws
    eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device)
    z, kl_d, kl = ReparamKL.apply(mu, logvar, eps)
    rec = ReconMean.apply(model.decode_logits(z), x, getattr(recon, "value", recon) == "bce")
    return elbo_terms(rec, kl_d, kl, beta)


def kernels_unusable(device: torch.device) -> str | None:
    """Why loss.impl=triton cannot run on `device`, or None when it can: where optim.impl=triton
    cannot (a CUDA device of compute capability 7.0 or more, with triton)."""
    if why := triton_unusable(device):
        return why
    return None if _kernels() is not None else "its kernels cannot be imported here"


def kernels_work(device: torch.device, recon: str = "mse", latent: int = 3, dim: int = 5,
                 setting: str = "loss.impl=triton") -> bool:
    """Whether the kernels build and run here: each is launched once on a batch of two with the
    model's widths (latent, dim: the variants Triton compiles for training, whose first launch
    in a process is also their compile), forward and backward, with the gradients a training
    step has. A failure (no C compiler for Triton's launcher, say) is logged once, and the
    caller uses losses.py; `setting` is what the warning names. Once per device: cuda and
    cuda:0 are one."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _kernels_work(device, recon, latent, dim, setting)


@functools.cache
def _kernels_work(device: torch.device, recon: str, latent: int, dim: int, setting: str) -> bool:
    global _BROKEN
    if _BROKEN is not None:
        return False
    try:  # (mu and logvar as a model's encoder gives them: the halves of one (B, 2L) output)
        h = torch.zeros(2, 2 * latent, device=device, requires_grad=True)
        logits = torch.zeros(2, dim, device=device, requires_grad=True)
        z, _, kl = ReparamKL.apply(h[:, :latent], h[:, latent:], torch.zeros(2, latent, device=device))
        rec = ReconMean.apply(logits + z.sum(), torch.zeros(2, dim, device=device), recon == "bce")
        (rec + kl).backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return True
    except Exception as e:  # noqa: BLE001 - compiling or launching a kernel failed
        lines = [ln.strip() for ln in str(getattr(e, "error_message", None) or e).splitlines() if ln.strip()]
        _BROKEN = lines[-1] if lines else type(e).__name__
        log.warning("%s: the Triton kernels failed to build or launch (%s); the loss runs in torch "
                    "kernels instead (loss.impl=torch)", setting, _BROKEN)
        return False
