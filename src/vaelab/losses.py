"""The VAE objective as pure functions. Every term is per example, in nats, except that the
MSE reconstruction leaves out its Gaussian's constant (MSE_NLL_CONST_PER_DIM per pixel, below).

negative ELBO(x) = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I))       (Kingma & Welling 2014, eq. 3)

Reconstruction terms are summed over the D pixels and averaged over the batch, like the
KL; the seed script summed over the batch too, which makes its numbers batch-size dependent
(seed loss per batch = 64 x ours at batch 64; the gradient direction is the same and Adam
is invariant to that scale but for eps, which conf/experiment/seed.yaml divides by 64).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# MSE summed over pixels is the NLL of a Gaussian decoder with variance 1/2 minus a constant:
# -log N(x; m, 1/2) = (x - m)^2 + 0.5 * log(pi) per pixel.
MSE_GAUSSIAN_VARIANCE = 0.5
MSE_NLL_CONST_PER_DIM = 0.5 * math.log(math.pi)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) per example and dimension, (B, L), in nats.
    Closed form, Kingma & Welling 2014 Appendix B: -0.5 * (1 + logvar - mu^2 - exp(logvar))."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def recon_nll(logits: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-example reconstruction cost, (B,), summed over pixels.

    bce: -log Bernoulli(x | sigmoid(logits)), exact NLL for binary x, in nats.
    mse: sum (x - sigmoid(logits))^2, the seed's loss; add D * MSE_NLL_CONST_PER_DIM for the
         Gaussian (variance 1/2) NLL in nats.
    """
    kind = getattr(kind, "value", kind)
    if kind == "bce":  # x may broadcast against logits, e.g. (B, D) vs (k, B, D) in IWAE
        return F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    if kind == "mse":
        return (torch.sigmoid(logits) - x).pow(2).sum(-1)
    raise ValueError(f"loss.recon={kind}: allowed: mse, bce")


def recon_log_likelihood(logits: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """log p(x|z) in nats, (B,): the recon cost as a normalised likelihood (used by IWAE)."""
    nll = recon_nll(logits, x, kind)
    if getattr(kind, "value", kind) == "mse":
        nll = nll + logits.shape[-1] * MSE_NLL_CONST_PER_DIM
    return -nll


def beta_at(step: int, beta: float, warmup_steps: int) -> float:
    """Effective KL weight: linear warm-up from 0 to beta over warmup_steps (0 = none)."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def vae_loss(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             recon: str = "mse", beta: float = 1.0) -> dict[str, torch.Tensor]:
    """Named terms of the beta-weighted negative ELBO, each averaged over the batch (nats/example;
    for recon="mse", recon and so nelbo leave out the Gaussian's constant, D * MSE_NLL_CONST_PER_DIM).

    Returns: loss (the optimised total, recon + beta * kl), recon, kl, nelbo (recon + kl: for
    recon="bce", the negative ELBO at beta=1, the bound papers report) and kl_per_dim (L,).
    """
    kl_d = kl_per_dim(mu, logvar).mean(0)  # (L,)
    return elbo_terms(recon_nll(logits, x, recon).mean(), kl_d, kl_d.sum(), beta)


def elbo_terms(rec: torch.Tensor, kl_d: torch.Tensor, kl: torch.Tensor, beta) -> dict[str, torch.Tensor]:
    """vae_loss's named terms from the batch means of the reconstruction cost, the KL per
    dimension and the KL (also the form fused_loss.py's kernels return them in)."""
    return {"loss": rec + beta * kl, "recon": rec, "kl": kl, "nelbo": rec + kl, "kl_per_dim": kl_d}
