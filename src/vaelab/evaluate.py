"""Numbers a researcher can trust: ELBO, the importance-weighted bound, active units.

Units: nats per example unless a name says bits_per_dim (nats / (D ln 2)).

- ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)), with the KL in closed form.
- IWAE bound (Burda et al. 2016, eq. 8): log p(x) >= E[log (1/k) sum_i w_i],
  w_i = p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x). It tightens as k grows; -bound with a large k
  (5000 in the paper) is the usual "test NLL". Computed as a streaming log-sum-exp over chunks
  of samples, so memory is O(batch * chunk) whatever k is.
- Active units (Burda et al. 2016, sec. 5.2): dimension i is active if Cov_x(E_q[z_i|x]) > 0.01.

The likelihood `recon` is the config's name ('bce': Bernoulli, 'mse': Gaussian with variance
1/2, see losses.py) or any function (decoder logits (B, D), x (B, D)) -> log p(x|z) (B,) in nats.
The likelihood belongs to the objective, not to the network, so it is passed in like the
config passes it to the loss; a test with a closed-form log p(x) passes its own Gaussian.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Union

import torch
from tqdm.auto import tqdm

from vaelab.data import to_float
from vaelab.losses import kl_per_dim, recon_log_likelihood, recon_nll


def quiet(progress: bool) -> dict:
    """tqdm's keyword for trainer.progress: false turns the bar off; true leaves tqdm's default,
    so that TQDM_DISABLE=1 (tqdm reads it for defaults only) still turns it off."""
    return {} if progress else {"disable": True}


def flushing_subnormals() -> bool:
    """Whether this thread's CPU arithmetic flushes subnormal floats to zero (torch has a setter,
    torch.set_flush_denormal, and no getter): the smallest float32 subnormal, times 1."""
    tiny = torch.tensor([1], dtype=torch.int32).view(torch.float32)  # (bits 0x00000001: no arithmetic to flush it)
    return (tiny * 1.0).item() == 0.0


@contextlib.contextmanager
def subnormals_flushed(flush: bool):
    """trainer.flush_denormal within the block, what was set before after it: the setting is the
    process's (its main thread's), and one process may train and evaluate several runs."""
    before = flushing_subnormals()
    torch.set_flush_denormal(flush)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


LOG_2PI = math.log(2 * math.pi)
ACTIVE_THRESHOLD = 0.01

LogLikelihood = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Recon = Union[str, LogLikelihood]


def log_likelihood_fn(recon: Recon) -> LogLikelihood:
    """(logits (B, D), x (B, D)) -> log p(x|z) (B,) in nats, for a config name or a function."""
    if callable(recon):
        return recon
    return lambda logits, x: recon_log_likelihood(logits, x, recon)


def _recon_cost(recon: Recon) -> LogLikelihood:
    """The decoder's cost as training reports it, (B,): for a config name exactly
    losses.recon_nll (for mse the squared error, without the Gaussian constant), for a
    log-likelihood function -log p(x|z)."""
    if callable(recon):
        return lambda logits, x: -recon(logits, x)
    return lambda logits, x: recon_nll(logits, x, recon)


def _batches(images: torch.Tensor, batch_size: int):
    """Float batches of a split: uint8 (N, D) as stored (eval splits are already binarized if
    asked), or values (N, D) already in float, e.g. from a test's hand-built model."""
    for i in range(0, images.shape[0], batch_size):
        x = images[i:i + batch_size]
        yield to_float(x) if x.dtype == torch.uint8 else x


@torch.no_grad()
def elbo_stats(model, images: torch.Tensor, recon: Recon, batch_size: int = 2000,
               generator: torch.Generator | None = None) -> dict:
    """One-sample ELBO terms over a split (uint8 (N, D)), averaged per example, plus the KL of
    each latent dimension and the active-unit count. Large no-grad batches. 'recon' in the
    result is the cost training reports (see _recon_cost), and so is 'nelbo': for loss.recon=mse
    both leave out the Gaussian's constant (recon_log_likelihood adds it)."""
    cost = _recon_cost(recon)
    was_training = model.training
    model.eval()
    n = images.shape[0]
    rec = kl = 0.0
    kl_d = None
    mu_sum = mu_sq = None
    moments = torch.zeros(2, 3, dtype=torch.float64)  # sums and squares of each example's recon, KL, -ELBO
    for x in _batches(images, batch_size):
        mu, logvar = model.encode(x)
        z = model.reparameterize(mu, logvar, generator)
        each = cost(model.decode_logits(z), x)  # (B,)
        r = each.sum()
        per_dim = kl_per_dim(mu, logvar)  # (B, L)
        k = per_dim.sum(0)  # (L,)
        rec = rec + r
        kl_d = k if kl_d is None else kl_d + k
        terms = torch.stack([each, per_dim.sum(1), each + per_dim.sum(1)]).cpu().double()  # (3, B)
        moments += torch.stack([terms.sum(1), (terms ** 2).sum(1)])
        mu64 = (mu.cpu() if mu.device.type == "mps" else mu).double()  # MPS has no float64
        mu_sum = mu64.sum(0) if mu_sum is None else mu_sum + mu64.sum(0)
        mu_sq = (mu64 ** 2).sum(0) if mu_sq is None else mu_sq + (mu64 ** 2).sum(0)
    model.train(was_training)
    kl_d = kl_d / n
    mu_var = (mu_sq / n - (mu_sum / n) ** 2).float().to(kl_d.device)  # Cov_x(E_q[z_i]) per dimension
    rec = float(rec) / n
    kl = float(kl_d.sum())
    se = [standard_error(float(a), float(b), n) for a, b in zip(*moments)]
    return {"recon": rec, "kl": kl, "nelbo": rec + kl, "kl_per_dim": kl_d.cpu(),
            "mu_var": mu_var.cpu(), "active_units": int((mu_var > ACTIVE_THRESHOLD).sum()),
            "recon_se": se[0], "kl_se": se[1], "nelbo_se": se[2]}


def standard_error(total: float, squares: float, n: int) -> float | None:
    """The standard error of a mean over n examples, from the sum of their values and of their
    squares: how far another draw of as many test images (and of each one's Monte Carlo
    samples) would move it. None for one example."""
    if n < 2:
        return None
    mean = total / n
    var = max(squares / n - mean * mean, 0.0) * n / (n - 1)  # (both sums float64: MSE's ~5e2 squared keep 10 digits)
    return math.sqrt(var / n)


def log_weights(model, x: torch.Tensor, k: int, recon: Recon, generator: torch.Generator | None = None,
                chunk: int = 100) -> torch.Tensor:
    """log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x) for i = 1..k: (B, k), in nats; x is
    a float batch (B, D) in [0, 1] (data.to_float of a split's uint8 images; iwae_nll takes
    those whole). (Use iwae_bound for large k: it never holds all k at once.)"""
    return torch.cat(list(_log_weight_chunks(model, x, k, recon, generator, chunk)), dim=1)


def _log_weight_chunks(model, x, k, recon, generator, chunk, with_log_px=False):
    """log w of the chunks of the k draws, (B, c) each; with_log_px: and log p(x|z) of each, (B, c)."""
    log_px_given_z = log_likelihood_fn(recon)
    mu, logvar = model.encode(x)  # (B, L)
    std = torch.exp(0.5 * logvar)
    b, latent = mu.shape
    done = 0
    while done < k:
        c = min(chunk, k - done)
        eps = torch.randn((c, b, latent), device=mu.device, dtype=mu.dtype, generator=generator)
        z = mu + std * eps  # (c, B, L)
        log_q = -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(-1)  # (c, B)
        log_p_z = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)  # (c, B)
        logits = model.decode_logits(z.reshape(c * b, latent)).reshape(c, b, -1)  # (c, B, D)
        log_px = log_px_given_z(logits, x)  # x (B, D) broadcasts, no k-fold copy: (c, B)
        lw = (log_px + log_p_z - log_q).t()  # (B, c)
        yield (lw, log_px.t()) if with_log_px else lw
        done += c


@torch.no_grad()
def iwae_bound(model, x: torch.Tensor, k: int, recon: Recon, generator: torch.Generator | None = None,
               chunk: int = 100) -> torch.Tensor:
    """log (1/k) sum_i w_i per example, (B,), in nats, by a streaming log-sum-exp; x a float
    batch (B, D) in [0, 1], as for log_weights."""
    return _bound_and_log_px(model, x, k, recon, generator, chunk)[0]


def _bound_and_log_px(model, x, k, recon, generator, chunk) -> tuple[torch.Tensor, torch.Tensor]:
    """iwae_bound, and the mean of log p(x|z_i) over the same k draws, each (B,)."""
    lse = total = None
    for lw, log_px in _log_weight_chunks(model, x, k, recon, generator, chunk, with_log_px=True):
        c, s = lw.logsumexp(dim=1), log_px.sum(dim=1)
        lse = c if lse is None else torch.logaddexp(lse, c)
        total = s if total is None else total + s
    return lse - math.log(k), total / k


@torch.no_grad()
def iwae_nll(model, images: torch.Tensor, k: int, recon: Recon, generator: torch.Generator | None = None,
             max_elems: int = 2_000_000, progress: bool = True) -> float:
    """-IWAE bound averaged over a split, nats per example. The example batch is chosen so one
    chunk of decoder outputs holds about max_elems floats: memory stays bounded for any k."""
    return iwae_nll_with_se(model, images, k, recon, generator, max_elems, progress)[0]


@torch.no_grad()
def iwae_nll_with_se(model, images: torch.Tensor, k: int, recon: Recon, generator: torch.Generator | None = None,
                     max_elems: int = 2_000_000, progress: bool = True) -> tuple[float, float | None]:
    """iwae_nll, and its standard error over the split's examples (standard_error)."""
    b = elbo_and_iwae(model, images, k, recon, generator, max_elems, progress)
    return b["nll_iwae"], b["nll_iwae_se"]


@torch.no_grad()
def elbo_and_iwae(model, images: torch.Tensor, k: int, recon: Recon, generator: torch.Generator | None = None,
                  max_elems: int = 2_000_000, progress: bool = True) -> dict:
    """Over a split (uint8 (N, D)), from the same k draws of z for each example, nats per example:
    'nll_iwae', minus the IWAE bound; the ELBO's terms, 'recon' = -log p(x|z) averaged over those
    k draws (a likelihood's: for loss.recon=mse with the Gaussian's constant) and 'kl' in closed
    form, and 'nelbo' = recon + kl; each with its standard error over the examples ('..._se').
    The ELBO's k draws leave it sqrt(k) times less of z's noise than elbo_stats' one draw (which
    training's validation uses), and its gap to the bound is measured on the same z. The example
    batch is chosen so one chunk of decoder outputs holds about max_elems floats: memory stays
    bounded for any k."""
    was_training = model.training
    model.eval()
    d = images.shape[1]
    chunk = max(1, min(k, max_elems // (d * 64)))
    bs = max(1, min(images.shape[0], max_elems // (d * chunk)))
    # sums and squares of each example's -bound, recon, KL, -ELBO; float64, as the s.e.'s difference of squares needs
    moments = torch.zeros(2, 4, dtype=torch.float64)
    with tqdm(total=images.shape[0], desc=f"IWAE k={k}", unit="img", leave=False, **quiet(progress)) as bar:
        for x in _batches(images, bs):
            bound, log_px = _bound_and_log_px(model, x, k, recon, generator, chunk)
            kl = kl_per_dim(*model.encode(x)).sum(1)  # (the encoder is deterministic: the q of the draws)
            terms = torch.stack([-bound, -log_px, kl, kl - log_px]).cpu().double()  # (4, B)
            moments += torch.stack([terms.sum(1), (terms ** 2).sum(1)])
            bar.update(x.shape[0])
    model.train(was_training)
    n = images.shape[0]
    names = ("nll_iwae", "recon", "kl", "nelbo")
    out = {name: float(t) / n for name, t in zip(names, moments[0])}
    out.update({f"{name}_se": standard_error(float(a), float(b), n) for name, a, b in zip(names, *moments)})
    return out


def bits_per_dim(nats_per_example: float, dim: int) -> float:
    return nats_per_example / (dim * math.log(2))
