"""The evaluation numbers: the IWAE bound against closed forms, active units, `vaelab eval`.

A linear-Gaussian VAE is the one model whose log p(x) has a closed form:
p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I)  =>  p(x) = N(b, W W^T + s^2 I), and the exact
posterior is N(A (x - b), S) with S = (I + W^T W / s^2)^-1, A = S W^T / s^2 (Bishop 2006, 2.116).
Its likelihood is Gaussian, not the config's Bernoulli/MSE, so the tests pass it to the
evaluation functions as `recon` (evaluate.py accepts a log-likelihood function there).
"""
from __future__ import annotations

import errno
import json
import logging
import math
import re
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vaelab import checkpoint as ckpt_io
from vaelab.data import load_data, to_float
from vaelab.evaluate import (bits_per_dim, elbo_stats, iwae_bound, iwae_nll, iwae_nll_with_se, log_weights,
                             elbo_and_iwae)
from vaelab.evaluate_run import data_root, evaluate_run, load_run
from vaelab.losses import MSE_NLL_CONST_PER_DIM, recon_nll
from vaelab.models import VAE, MLPVAE
from vaelab.train import train

LOG_2PI = math.log(2 * math.pi)


def load_eval(run_dir) -> dict:
    return json.loads((Path(run_dir) / "eval.json").read_text())


class LinearGaussianVAE(VAE):
    """q(z|x) = N(A (x - b), diag(q_var)); by default q_var = the exact posterior's variances
    when W^T W is diagonal (then q is the exact posterior), else pass q_var."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, sigma: float, q_var: torch.Tensor | None = None):
        super().__init__()
        d, latent = w.shape
        self.latent_size, self.input_dim, self.image_shape = latent, d, (1, 1, d)
        self.sigma = sigma
        prec = torch.eye(latent, dtype=w.dtype) + w.T @ w / sigma ** 2  # S^-1, (L, L)
        self.post_cov = torch.linalg.inv(prec)
        self.register_buffer("w", w)
        self.register_buffer("b", b)
        self.register_buffer("a", self.post_cov @ w.T / sigma ** 2)  # (L, D)
        self.register_buffer("q_logvar", (q_var if q_var is not None else 1 / torch.diagonal(prec)).log())

    def encode(self, x):
        return (x - self.b) @ self.a.T, self.q_logvar.expand(x.shape[0], -1)

    def decode_logits(self, z):  # the Gaussian mean (no sigmoid anywhere in these tests)
        return z @ self.w.T + self.b

    def log_likelihood(self, mean, x):  # log N(x; mean, s^2 I), (B,)
        return (-0.5 * ((x - mean) / self.sigma) ** 2 - math.log(self.sigma) - 0.5 * LOG_2PI).sum(-1)

    def log_marginal(self, x):  # the truth: log N(x; b, W W^T + s^2 I)
        cov = self.w @ self.w.T + self.sigma ** 2 * torch.eye(self.input_dim, dtype=x.dtype)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x)

    def elbo(self, x):  # closed form: E_q[log p(x|z)] - KL(q || p)
        mu, logvar = self.encode(x)
        var = logvar.exp()
        sq = (x - self.decode_logits(mu)).pow(2).sum(-1) + (var @ self.w.pow(2).T).sum(-1)
        expected_ll = -0.5 * self.input_dim * (LOG_2PI + 2 * math.log(self.sigma)) - sq / (2 * self.sigma ** 2)
        return expected_ll - 0.5 * (mu.pow(2) + var - 1 - logvar).sum(-1)

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.latent_size, dtype=self.w.dtype, generator=generator)
        return self.decode_logits(z) + self.sigma * torch.randn(n, self.input_dim, dtype=self.w.dtype,
                                                                 generator=generator)


def overdispersed_model(seed: int = 0, d: int = 10, latent: int = 4, sigma: float = 0.5) -> LinearGaussianVAE:
    """The exact posterior mean with an isotropic variance lambda_max(S) >= every direction of
    the posterior: q is wider than p(z|x), so the importance weights are bounded (a well-posed
    test), and the ELBO is a couple of nats below log p(x), so k has work to do."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, latent, dtype=torch.float64, generator=g)
    b = torch.randn(d, dtype=torch.float64, generator=g)
    model = LinearGaussianVAE(w, b, sigma)
    q_var = torch.linalg.eigvalsh(model.post_cov).max().expand(latent).clone()
    return LinearGaussianVAE(w, b, sigma, q_var)


def exact_posterior_model(d: int = 12, latent: int = 3, sigma: float = 0.3) -> LinearGaussianVAE:
    """W with orthogonal columns: S is diagonal, so the diagonal q is the exact posterior and
    every importance weight equals p(x)."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, latent, dtype=torch.float64, generator=g))
    w = q * torch.tensor([3.0, 1.5, 0.5], dtype=torch.float64)
    return LinearGaussianVAE(w, torch.randn(d, dtype=torch.float64, generator=g), sigma)


# --- the IWAE bound ----------------------------------------------------------------------


def test_iwae_k1_is_the_elbo():
    """E[log w] with one sample is the ELBO: the k=1 bound and elbo_stats' one-sample ELBO both
    match the closed-form ELBO within 4 standard errors."""
    model = overdispersed_model()
    x = model.draw(4000, torch.Generator().manual_seed(1))
    truth = model.elbo(x)
    gen = torch.Generator().manual_seed(2)
    b1 = iwae_bound(model, x, 1, model.log_likelihood, gen)
    diff = b1 - truth
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(x)) + 1e-9
    # and log_weights with k=1 is the same estimate as the bound (log-mean-exp of one term)
    gen.manual_seed(3)
    lw = log_weights(model, x[:5], 1, model.log_likelihood, gen)
    gen.manual_seed(3)
    torch.testing.assert_close(lw[:, 0], iwae_bound(model, x[:5], 1, model.log_likelihood, gen))

    st = elbo_stats(model, x, model.log_likelihood, batch_size=1000, generator=gen)
    kl = 0.5 * (model.encode(x)[0].pow(2) + model.q_logvar.exp() - 1 - model.q_logvar).sum(-1)
    assert st["kl"] == pytest.approx(float(kl.mean()), rel=1e-9)  # closed form, no noise
    se = float(truth.std()) / math.sqrt(len(x)) + 0.05  # recon is a one-sample estimate
    assert -st["nelbo"] == pytest.approx(float(truth.mean()), abs=4 * se)


def test_the_test_elbo_averages_its_reconstruction_over_the_k_draws_of_the_bound():
    """vaelab eval's ELBO took one draw of z per image (elbo_stats, as training's validation does):
    from one --seed to the next it moved by as much as its s.e. on a small model (review). Its
    reconstruction term is now the mean over the IWAE bound's own k draws, its KL the closed form."""
    model = overdispersed_model()
    x = model.draw(500, torch.Generator().manual_seed(1))
    n, k = len(x), 400
    kl = 0.5 * (model.encode(x)[0].pow(2) + model.q_logvar.exp() - 1 - model.q_logvar).sum(-1)
    b = elbo_and_iwae(model, x, k, model.log_likelihood, torch.Generator().manual_seed(2), progress=False)
    assert b["kl"] == pytest.approx(float(kl.mean()), rel=1e-9)
    assert b["kl_se"] == pytest.approx(float(kl.std()) / math.sqrt(n), rel=1e-9)
    assert b["nelbo"] == pytest.approx(b["recon"] + b["kl"], rel=1e-12)
    # z's noise in one draw's reconstruction term, against the closed form of its expectation
    mu, logvar = model.encode(x)
    z = mu + (0.5 * logvar).exp() * torch.randn(mu.shape, dtype=mu.dtype, generator=torch.Generator().manual_seed(3))
    expected = -model.elbo(x) - kl  # E_q[-log p(x|z)]
    noise = float((-model.log_likelihood(model.decode_logits(z), x) - expected).std())
    assert b["recon"] == pytest.approx(float(expected.mean()), abs=4 * noise / math.sqrt(n * k))
    assert b["nll_iwae"] <= b["nelbo"]  # the bound of the same draws is the tighter
    again = elbo_and_iwae(model, x, k, model.log_likelihood, torch.Generator().manual_seed(4), progress=False)
    one = [elbo_stats(model, x, model.log_likelihood, generator=torch.Generator().manual_seed(s))["nelbo"]
           for s in (2, 4)]
    assert abs(again["nelbo"] - b["nelbo"]) < abs(one[1] - one[0]) / 5  # ~sqrt(k) = 20 times less noise


def test_the_standard_errors_are_those_of_the_examples_own_estimates():
    """eval.json's *_se and the table's s.e. column: the standard deviation of the examples' own
    estimates over sqrt(n), summed across batches in float64."""
    model = overdispersed_model()
    x = model.draw(300, torch.Generator().manual_seed(1))
    n = len(x)
    st = elbo_stats(model, x, model.log_likelihood, batch_size=128, generator=torch.Generator().manual_seed(2))
    kl = 0.5 * (model.encode(x)[0].pow(2) + model.q_logvar.exp() - 1 - model.q_logvar).sum(-1)  # closed form
    assert st["kl_se"] == pytest.approx(float(kl.std()) / math.sqrt(n), rel=1e-9)
    assert st["recon_se"] > 0 and st["nelbo_se"] > 0
    nll, se = iwae_nll_with_se(model, x, 5, model.log_likelihood, torch.Generator().manual_seed(3))
    bound = iwae_bound(model, x, 5, model.log_likelihood, torch.Generator().manual_seed(3), 5)  # the same draws
    assert nll == pytest.approx(-float(bound.mean()), rel=1e-12)
    assert se == pytest.approx(float(bound.std()) / math.sqrt(n), rel=1e-9)
    assert nll == iwae_nll(model, x, 5, model.log_likelihood, torch.Generator().manual_seed(3))
    # a float32 model, a large mean and a small spread (MSE's Gaussian constant in it): the float32 sum of
    # the bounds put about 1% of error into the s.e.
    torch.manual_seed(0)
    mlp = MLPVAE(latent_size=2, hidden=[16], input_dim=784)
    images = torch.randint(0, 256, (2000, 784), dtype=torch.uint8)
    _, se = iwae_nll_with_se(mlp, images, 2, "mse", torch.Generator().manual_seed(4), max_elems=784 * 2 * 2000)
    bound = iwae_bound(mlp, images.float() / 255, 2, "mse", torch.Generator().manual_seed(4), 2)  # the same draws
    assert se == pytest.approx(float(bound.double().std()) / math.sqrt(2000), rel=1e-6)
    assert iwae_nll_with_se(model, x[:1], 5, model.log_likelihood)[1] is None  # (one example: none)


def test_iwae_bound_grows_with_k_and_reaches_log_px():
    model = overdispersed_model()
    x = model.draw(1000, torch.Generator().manual_seed(1))
    log_px = model.log_marginal(x)
    gen = torch.Generator().manual_seed(2)
    # k steps where the expected gain (> 0.03 nat) is well above the Monte Carlo noise (~0.005)
    bounds = [float(iwae_bound(model, x, k, model.log_likelihood, gen).mean()) for k in (1, 4, 16, 64)]
    assert bounds == sorted(bounds), bounds
    assert float(log_px.mean() - model.elbo(x).mean()) > 1.0  # the test has a gap to close ...
    b1000 = iwae_bound(model, x, 1000, model.log_likelihood, gen)
    assert abs(float(b1000.mean() - log_px.mean())) < 0.1  # ... and k=1000 closes it to 0.1 nat
    assert float((b1000 - log_px).abs().max()) < 0.5  # every example, not only on average


def test_iwae_is_exact_and_stable_with_the_exact_posterior():
    """Every weight equals p(x), so the bound is log p(x) for any k, chunking and example batch,
    even where p(x) = exp(-10^4) underflows (a naive mean of exp(log w) would give -inf)."""
    model = exact_posterior_model()
    x = model.draw(7, torch.Generator().manual_seed(1))
    x[0] += 25.0  # far from the data: log p(x) ~ -10^4
    log_px = model.log_marginal(x)
    assert float(log_px[0]) < -1000
    gen = torch.Generator().manual_seed(0)
    for k, chunk in ((1, 1), (5, 2), (300, 7), (300, 300)):
        torch.testing.assert_close(iwae_bound(model, x, k, model.log_likelihood, gen, chunk=chunk), log_px,
                                   rtol=0, atol=1e-8)
    # max_elems so small that each batch is one example and each chunk one sample
    nll = iwae_nll(model, x, 50, model.log_likelihood, gen, max_elems=1, progress=False)
    assert nll == pytest.approx(-float(log_px.mean()), abs=1e-8)


def test_iwae_bound_grows_with_k_on_a_trained_model(make_cfg, tmp_path):
    cfg = make_cfg(["latent_size=4", "model.size=small", "loss.recon=bce", "data.binarize=static",
                    "trainer.final_eval=false"])
    train(cfg, tmp_path)
    _, model, _ = load_run(tmp_path)
    test = load_data(cfg.data.root, torch.device("cpu"), val_size=64, binarize="static").test.images
    gen = torch.Generator().manual_seed(0)
    nlls = [iwae_nll(model, test, k, "bce", gen, progress=False) for k in (1, 10, 100)]
    assert nlls == sorted(nlls, reverse=True), nlls  # -bound does not grow with k
    nelbo = elbo_stats(model, test, "bce", generator=gen)["nelbo"]
    assert nlls[-1] < nelbo


def test_runs_with_different_seeds_are_scored_on_the_same_binarized_test_set(make_cfg, tmp_path):
    """The binarized val/test draws belong to the data (data.split_seed), not to the run's seed:
    the same weights score the same whatever seed the run was trained with."""
    cfg = make_cfg(["latent_size=4", "model.size=small", "loss.recon=bce", "data.binarize=dynamic",
                    "trainer.epochs=1", "trainer.final_eval=false"])
    train(cfg, tmp_path)
    first = evaluate_run(tmp_path, k=2, device="cpu", progress=False, pictures=False)
    saved = tmp_path / ".hydra" / "config.yaml"
    saved.write_text(saved.read_text().replace("seed: 0\n", "seed: 7\n", 1))  # the run's seed only
    assert "split_seed: 0" in saved.read_text() and "\nseed: 7" in saved.read_text()
    again = evaluate_run(tmp_path, k=2, device="cpu", progress=False, pictures=False)
    assert (again["elbo"], again["nll_iwae"]) == (first["elbo"], first["nll_iwae"])
    other_split = load_data(cfg.data.root, torch.device("cpu"), val_size=64, binarize="dynamic", split_seed=1)
    assert not torch.equal(other_split.test.images, load_data(cfg.data.root, torch.device("cpu"), val_size=64,
                                                              binarize="dynamic").test.images)


# --- active units ---------------------------------------------------------------------------


def test_active_units_on_a_model_with_known_dead_dimensions():
    torch.manual_seed(0)
    model = MLPVAE(latent_size=6, hidden=[32], input_dim=784)
    with torch.no_grad():
        dead = [1, 3, 4]  # mu = 0 and logvar = 0 whatever x: q(z_i|x) = p(z_i)
        for i in dead:
            for row in (i, 6 + i):  # the head's outputs are [mu | logvar]
                model.head.weight[row] = 0
                model.head.bias[row] = 0
        model.head.bias[4] = 1.5  # a mean that is the same for every x: inactive (Burda et al.'s
        # Cov_x E_q[z|x] is 0), though its KL is not (an E_x[mu^2] in place of the variance took it)
        model.head.weight[[0, 2, 5]] *= 20  # the live means vary a lot with x
    images = torch.randint(0, 256, (300, 784), dtype=torch.uint8)
    st = elbo_stats(model, images, "bce", batch_size=128, generator=torch.Generator().manual_seed(0))
    assert st["active_units"] == 3
    assert (st["mu_var"][dead].abs() < 1e-9).all() and (st["mu_var"][[0, 2, 5]] > 0.01).all()
    assert torch.allclose(st["kl_per_dim"][[1, 3]], torch.zeros(2))
    assert float(st["kl_per_dim"][4]) == pytest.approx(0.5 * 1.5**2)  # KL(N(1.5, 1) || N(0, 1))
    assert st["kl"] == pytest.approx(float(st["kl_per_dim"].sum()), rel=1e-5)


@pytest.mark.parametrize("kind", ["mse", "bce"])
def test_the_decoders_likelihood_and_training_cost_agree_with_torch_distributions(kind):
    """Pinned without losses.py's own constants: mse is a Gaussian of variance 1/2 around
    sigmoid(logits), bce a Bernoulli, each summed over pixels (nats per example); the training
    cost is that NLL, less 448.73 nats for mse's 784 pixels. (Dropping the constant from the
    IWAE bound's likelihood, or a mean over pixels, passed every test before.)"""
    from torch.distributions import Bernoulli, Normal

    from vaelab.losses import recon_log_likelihood, recon_nll

    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(5, 784, generator=g)
    x = torch.rand(5, 784, generator=g)
    if kind == "bce":
        x = x.round()
        want = Bernoulli(logits=logits).log_prob(x).sum(-1)
    else:
        want = Normal(torch.sigmoid(logits), math.sqrt(0.5)).log_prob(x).sum(-1)
    torch.testing.assert_close(recon_log_likelihood(logits, x, kind), want)
    offset = 448.734 if kind == "mse" else 0.0  # 784 * log(pi) / 2
    torch.testing.assert_close(recon_nll(logits, x, kind), -want - offset, rtol=1e-5, atol=2e-3)


def test_vae_loss_weights_the_kl_by_beta_and_nelbo_at_one():
    """loss.beta must reach the optimised loss (only tests that need Triton caught it doing
    nothing), and nelbo is the unweighted bound; the KL is torch.distributions' own."""
    from torch.distributions import Bernoulli, Normal, kl_divergence

    from vaelab.losses import vae_loss

    g = torch.Generator().manual_seed(1)
    logits, x = torch.randn(6, 784, generator=g), torch.rand(6, 784, generator=g).round()
    mu, logvar = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    rec = -Bernoulli(logits=logits).log_prob(x).sum(-1).mean()
    kl_d = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).mean(0)
    out = vae_loss(logits, x, mu, logvar, recon="bce", beta=4.0)
    torch.testing.assert_close(out["kl_per_dim"], kl_d)
    torch.testing.assert_close(out["loss"], rec + 4.0 * kl_d.sum())
    torch.testing.assert_close(out["nelbo"], rec + kl_d.sum())


# --- vaelab eval on a run directory -------------------------------------------------------


def _eval_cli(argv):
    """`vaelab eval ARGV` through vaelab's dispatcher, in this process; returns the exit code."""
    from vaelab.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["eval", *map(str, argv)])
    return exc.value.code


def test_training_ends_with_eval_and_eval_json_round_trips(make_cfg, tmp_path, capsys):
    cfg = make_cfg(["latent_size=2", "model.size=small", "loss.recon=bce", "data.binarize=dynamic"])
    train(cfg, tmp_path)  # final eval with trainer.final_eval_k=4, pictures included
    first = load_eval(tmp_path)
    assert first["k"] == 4 and first["likelihood"] == "bernoulli" and first["binarize"] == "dynamic"
    assert (tmp_path / "eval" / "manifold.png").exists()  # latent_size == 2

    assert _eval_cli([str(tmp_path), "--k", "20", "--checkpoint", "best", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    saved = json.loads((tmp_path / "eval.json").read_text())
    for key in ("elbo", "recon", "kl", "nll_iwae", "k", "bits_per_dim", "active_units", "kl_per_dim",
                "checkpoint"):
        assert key in saved, key
    assert saved["k"] == 20 and saved["checkpoint"].endswith("best.pt")
    assert saved["elbo"] == pytest.approx(-(saved["recon"] + saved["kl"]))
    assert saved["bits_per_dim"] == pytest.approx(saved["nll_iwae"] / (784 * math.log(2)))
    assert saved["kl"] == pytest.approx(sum(saved["kl_per_dim"]), rel=1e-5)
    assert len(saved["kl_per_dim"]) == 2 and 0 <= saved["active_units"] <= 2
    # each mean's standard error over the test images, in eval.json and the table's s.e. column
    assert all(saved[f"{k}_se"] > 0 for k in ("elbo", "recon", "kl", "nll_iwae"))
    assert re.search(rf"{saved['nll_iwae']:.2f} +± [0-9.]+ +{saved['bits_per_dim']:.4f}", out)
    # two significant digits below 0.1 (not 0.00), and the columns stay put for any value
    from vaelab.evaluate_run import format_table
    for value, shown in ((0.004999, "± 0.0050"), (0.03, "± 0.030"), (0.1, "± 0.10"), (1e-7, "± < 0.0001"),
                         (12345.6, "± 12345.60"), (1234567.89, "± 1.2e+06")):
        line = next(ln for ln in format_table({**saved, "kl_se": value}, tmp_path).splitlines() if "KL(q" in ln)
        assert line.endswith(f"{saved['kl']:14.2f}{shown:>11s}{saved['kl_bits_per_dim']:11.4f}"), line
    assert saved["nll_iwae"] <= -saved["elbo"] + 5  # the bound is tighter, up to noise on 64 images
    assert json.loads(json.dumps(saved)) == saved == load_eval(tmp_path)
    # which data: the training's (metrics.json) and the evaluation's are the same
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["data_digest"] == metrics["data_digest"] and len(saved["data_digest"]) == 16
    assert saved["data_root"] == str(Path(cfg.data.root).resolve())
    assert "NLL, IWAE bound (k=20)" in out and "bits/dim" in out and "active units" in out

    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    steps = {e.step for e in acc.Scalars("test/nll_iwae")}
    # x-axis: examples seen where each evaluated checkpoint was taken (last.pt at the end of epoch
    # 2, then best.pt, at the end of epoch 1 or 2)
    assert 2 * (256 - 64) in steps and steps <= {256 - 64, 2 * (256 - 64)}
    for name in ("samples", "reconstructions", "traversals", "interpolations", "manifold", "latents_scatter",
                 "kl_by_dim"):
        assert f"eval/{name}" in acc.Tags()["images"], name
        assert (tmp_path / "eval" / f"{name}.png").exists(), name


def test_kl_by_dim_is_of_the_epochs_up_to_the_evaluated_checkpoint_and_not_left_stale(make_cfg, tmp_path, capsys,
                                                                                    monkeypatch):
    """(review) kl_by_dim.png of an eval of epoch_0001.pt showed every epoch, its active count the
    last's; and an eval that drew none (no epochs.jsonl) left an earlier one in eval/, unsaid."""
    import vaelab.pictures as pictures

    run = tmp_path / "run"
    train(make_cfg(["trainer.checkpoint_every=1", "trainer.final_eval=false"]), run)  # 2 epochs
    drawn = []
    real = pictures.kl_history_figure
    monkeypatch.setattr(pictures, "kl_history_figure", lambda h, *a: drawn.append([e for e, _, _ in h]) or real(h, *a))
    assert _eval_cli([run, "--k", "2", "--checkpoint", "epoch_0001.pt"]) == 0
    assert drawn == [[1]] and (run / "eval" / "kl_by_dim.png").is_file()
    (run / "epochs.jsonl").unlink()  # (as a run trained before 2026-11-27 has none)
    capsys.readouterr()
    assert _eval_cli([run, "--k", "2"]) == 0
    assert not (run / "eval" / "kl_by_dim.png").exists() and "kl_by_dim" not in load_eval(run)["pictures"]
    assert "no kl_by_dim.png: no epoch up to this checkpoint's has its KL per dimension in the run's epochs.jsonl" \
        in capsys.readouterr().out


def test_eval_of_an_earlier_checkpoint_is_logged_where_that_checkpoint_was_taken(make_cfg, tmp_path,
                                                                                 monkeypatch, caplog, capsys):
    run = tmp_path / "run"
    train(make_cfg(["trainer.checkpoint_every=1"]), run)  # 2 epochs of 192 images; eval of last.pt
    drawn = {k: load_eval(run)[k] for k in ("pictures", "traversal_dims", "dead_dims")}
    monkeypatch.chdir(tmp_path)
    assert _eval_cli(["run", "--k", "2", "--checkpoint", "epoch_0001.pt", "--no-pictures"]) == 0
    saved = load_eval(run)
    # eval.json names the pictures eval/ still holds (it had no "pictures" after --no-pictures)
    assert {k: saved[k] for k in drawn} == drawn and all(Path(f).is_file() for f in drawn["pictures"].values())
    out = capsys.readouterr().out  # and its table says whose they are, and draws no eval/* image at this step
    assert "kl_by_dim.png  (an earlier evaluation's, of last.pt at 384 examples seen)" in out
    assert "TensorBoard tags test/* at step 192" in out
    assert saved["epoch"] == 1 and saved["examples_seen"] == 192  # the checkpoint's, not metrics.json's 384
    assert saved["checkpoint"] == str(run / "checkpoints" / "epoch_0001.pt")  # not relative to the shell
    # eval/ still shows last.pt's weights, and says so, also after a second --no-pictures
    assert saved["pictures_of"] == {"checkpoint": str(run / "checkpoints" / "last.pt"), "examples_seen": 384,
                                    "data_digest": saved["data_digest"]}
    assert "run/eval/ shows the weights of last.pt at 384 examples seen, not these (epoch_0001.pt at 192)" \
        in caplog.text
    caplog.clear()
    # a path to the same file, relative to the shell or absolute, is the same checkpoint
    for given in ("run/checkpoints/epoch_0001.pt", str(run / "checkpoints" / "epoch_0001.pt")):
        assert _eval_cli(["run", "--k", "2", "--checkpoint", given, "--no-pictures"]) == 0
        assert load_eval(run)["checkpoint"] == str(run / "checkpoints" / "epoch_0001.pt")
    assert load_eval(run)["pictures_of"]["examples_seen"] == 384 and "shows the weights of last.pt" in caplog.text
    caplog.clear()
    assert _eval_cli(["run", "--k", "2", "--no-pictures"]) == 0  # last.pt again: the pictures match
    assert "shows the weights" not in caplog.text
    # pictures of these weights on other data: said, in the log and the table (review: unsaid)
    from tests.conftest import make_tiny_mnist
    other = make_tiny_mnist(tmp_path / "other", seed=1)
    assert _eval_cli(["run", "--k", "2", "--data-root", other]) == 0
    capsys.readouterr()
    assert _eval_cli(["run", "--k", "2", "--no-pictures"]) == 0
    assert "run/eval/ shows these weights on other data (digest " in caplog.text
    assert "kl_by_dim.png  (an earlier evaluation's, on other data)" in capsys.readouterr().out
    caplog.clear()
    assert _eval_cli(["run", "--k", "2", "--data-root", other, "--no-pictures"]) == 0  # (their own data: unsaid)
    assert "shows these weights on other data" not in caplog.text
    assert _eval_cli(["run", "--k", "2"]) == 0  # (drawn again on the run's own: the TensorBoard checks below)
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("test/nll_iwae")] == [384]  # the newest eval's point only
    # ... and, as eval/ keeps last.pt's pictures, TensorBoard keeps their eval/* images, once
    assert [e.step for e in acc.Images("eval/samples")] == [384]


def test_a_new_eval_replaces_the_previous_one_in_tensorboard(make_cfg, tmp_path, monkeypatch):
    """As its eval.json replaces the last one, the newest evaluation's test/* and eval/* events
    replace the last evaluation's (they piled up, two points at one step after two evals); the
    training's own events stay, and an evaluation that fails on the way leaves the last one."""
    train(make_cfg(["latent_size=2", "model.size=small"]), tmp_path)  # ends with an eval of last.pt at 384

    def tensorboard():
        acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        return ({tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]},
                {tag: [e.step for e in acc.Images(tag)] for tag in acc.Tags()["images"]})

    scalars, images = tensorboard()
    assert scalars["test/nll_iwae"] == [384] and images["eval/traversals"] == [384]
    for _ in range(2):
        assert _eval_cli([str(tmp_path), "--k", "10", "--checkpoint", "best", "--seed", "3", "--no-progress"]) == 0
        step = load_eval(tmp_path)["examples_seen"]
        now, now_images = tensorboard()
        assert {tag: now[tag] for tag in now if tag.startswith("test/")} == {
            tag: [step] for tag in scalars if tag.startswith("test/")}
        assert {tag: now_images[tag] for tag in now_images if tag.startswith("eval/")} == {
            tag: [step] for tag in images if tag.startswith("eval/")}
        # the training's events, those at the evaluated step included, are all there
        assert {tag: now[tag] for tag in now if not tag.startswith("test/")} == {
            tag: scalars[tag] for tag in scalars if not tag.startswith("test/")}
        assert now["epoch/val_loss"] == [192, 384] and now_images["samples"] == images["samples"]
    assert len(list(tmp_path.glob("events.out.tfevents.*.eval"))) == 1
    before = (tmp_path / "eval.json").read_text(), tensorboard()

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):  # a Ctrl-C or a full disk while the pictures are drawn
        raise Stop

    monkeypatch.setattr("vaelab.pictures.make_pictures", stop)
    with pytest.raises(Stop):
        evaluate_run(tmp_path, k=2, device="cpu", progress=False, seed=5)
    assert ((tmp_path / "eval.json").read_text(), tensorboard()) == before
    assert len(list(tmp_path.glob("events.out.tfevents.*.eval"))) == 1
    # stopped part-way through the pictures (the last one): eval/ still shows what eval.json says
    monkeypatch.undo()
    pictures = {p.name: p.read_bytes() for p in (tmp_path / "eval").iterdir()}
    assert {"samples.png", "traversals.png", "latents_scatter.png"} <= set(pictures)
    monkeypatch.setattr("vaelab.pictures.latents_scatter_figure", stop)
    with pytest.raises(Stop):
        evaluate_run(tmp_path, k=2, device="cpu", progress=False, seed=5)
    assert {p.name: p.read_bytes() for p in (tmp_path / "eval").iterdir()} == pictures
    assert ((tmp_path / "eval.json").read_text(), tensorboard()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".hydra"]  # nothing left aside
    # a SIGTERM to vaelab eval (kill) cleans up as a Ctrl-C does: it left .eval-*.tmp and a second
    # .eval event file holding numbers eval.json never had
    monkeypatch.setattr("vaelab.pictures.latents_scatter_figure", lambda *a: os.kill(os.getpid(), signal.SIGTERM))

    # (with SIGTERM's default action, as vaelab eval starts: were it not caught, this process would end here)
    before_handler = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        assert _eval_cli([str(tmp_path), "--k", "2", "--no-progress"]) == 130
    finally:
        signal.signal(signal.SIGTERM, before_handler)
    assert {p.name: p.read_bytes() for p in (tmp_path / "eval").iterdir()} == pictures
    assert ((tmp_path / "eval.json").read_text(), tensorboard()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".hydra"]
    # a full disk: closing the new event file fails too, which skipped its removal, and TensorBoard
    # showed numbers eval.json never had beside the ones it has
    from torch.utils.tensorboard import SummaryWriter

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def close_on_a_full_disk(self, close=SummaryWriter.close):
        close(self)
        full()
    monkeypatch.setattr("vaelab.pictures.latents_scatter_figure", full)
    monkeypatch.setattr(SummaryWriter, "close", close_on_a_full_disk)
    with pytest.raises(OSError, match="No space left"):
        evaluate_run(tmp_path, k=2, device="cpu", progress=False, seed=5)
    monkeypatch.undo()
    assert ((tmp_path / "eval.json").read_text(), tensorboard()) == before
    assert len(list(tmp_path.glob("events.out.tfevents.*.eval"))) == 1


def test_an_evaluation_removes_what_a_killed_one_left_of_eval_json(make_cfg, tmp_path):
    """A kill during eval.json's write left its temporary file in the run folder for good: only
    a resumed training cleaned up, and a resume that only finishes the evaluation does not train."""
    train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1", "trainer.final_eval=false"]), tmp_path)
    killed, not_ours = tmp_path / ".eval.json.k1ll3d00.tmp", tmp_path / ".metrics.json.wr1t1ng0.tmp"
    killed.write_text("{")
    not_ours.write_text("{")  # (a training writing metrics.json now: not an evaluation's to remove)
    evaluate_run(tmp_path, k=2, device="cpu", pictures=False, progress=False)
    assert not killed.exists() and not_ours.exists()


def test_an_evaluation_that_waits_for_another_says_so(make_cfg, tmp_path, caplog):
    """The second of two evaluations of a run waited for the first to write its results without
    a word: stopped in that section (a suspended process), it looked hung."""
    import threading

    train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1", "trainer.final_eval=false"]), tmp_path)
    held, release = threading.Event(), threading.Event()

    def other_evaluation():
        with ckpt_io.only_process(tmp_path / ".hydra"):
            held.set()
            release.wait(30)
    class ReleaseOnceWaiting(logging.Handler):  # (the other evaluation ends once this one waits)
        def emit(self, record):
            if "waiting for it" in record.getMessage():
                release.set()
    t = threading.Thread(target=other_evaluation)
    t.start()
    held.wait(30)
    handler = ReleaseOnceWaiting()
    logging.getLogger("vaelab").addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="vaelab"):
            evaluate_run(tmp_path, k=2, device="cpu", pictures=False, progress=False)
    finally:
        logging.getLogger("vaelab").removeHandler(handler)
        release.set()
        t.join()
    # (a warning: vaelab eval sets up no logging, and Python shows warnings and worse only)
    assert [r.levelno for r in caplog.records if r.getMessage() == (
        f"another evaluation of {tmp_path} is writing its results: waiting for it (Ctrl-C stops waiting)")] == \
        [logging.WARNING]


def test_an_earlier_evaluation_that_cannot_be_removed_costs_a_warning_not_the_new_one(make_cfg, tmp_path,
                                                                                      monkeypatch, caplog):
    """On Windows a running TensorBoard holds the newest event file open: the new evaluation's
    numbers are written all the same, and the old file is named."""
    train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1"]), tmp_path)  # ends with an eval
    [old] = tmp_path.glob("events.out.tfevents.*.eval")
    real_unlink = Path.unlink

    def unlink(self, *args, **kwargs):
        if self == old:
            raise PermissionError(13, "The process cannot access the file")
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", unlink)
    assert _eval_cli([str(tmp_path), "--k", "3", "--seed", "1", "--no-progress"]) == 0
    assert load_eval(tmp_path)["k"] == 3 and old.exists()
    assert f"{old}: could not remove an earlier evaluation's events (The process cannot access the file)" in caplog.text


def test_eval_on_other_data_than_the_run_trained_on_says_so(make_cfg, tmp_path, caplog):
    """eval.json records the data's digest, but nothing said when it was not the training's."""
    from tests.conftest import make_tiny_mnist

    train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1", "trainer.final_eval=false"]),
          tmp_path / "run")
    other = make_tiny_mnist(tmp_path / "other", seed=1)
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        evaluate_run(tmp_path / "run", k=1, device="cpu", pictures=False, progress=False)
        assert not [r for r in caplog.records if "differs" in r.getMessage()]  # its own data: no word
        evaluate_run(tmp_path / "run", k=1, device="cpu", pictures=False, progress=False, data_root_override=other)
    [warned] = [r.getMessage() for r in caplog.records if "differs" in r.getMessage()]
    assert warned.startswith("the data differs from what the run trained on (data digest ")
    assert warned.endswith(f"from {other}): these are test numbers of other data")


def test_an_eval_overtaken_by_the_runs_final_one_does_not_pass_for_it(make_cfg, tmp_path, monkeypatch, caplog):
    """`vaelab eval` of last.pt at epoch 1 while a resume trains the run to epoch 2 and evaluates
    it: the slower manual eval wrote its eval.json last and recorded the run's 2 epochs, so the run
    looked evaluated (compare "done", resume "nothing to do") with epoch 1's numbers."""
    import vaelab.evaluate as ev_mod

    run = tmp_path / "run"
    train(make_cfg(["latent_size=2", "trainer.epochs=1", "trainer.final_eval=true", "trainer.final_eval_k=2"]), run)
    real_iwae, raced = ev_mod.elbo_and_iwae, []

    def iwae_then_the_resume_finishes(*args, **kwargs):
        result = real_iwae(*args, **kwargs)
        if not raced:  # the manual evaluation's: the run's own final evaluation overtakes it here
            raced.append(True)
            cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
            cfg.trainer.epochs = 2
            train(cfg, run)
        return result
    monkeypatch.setattr(ev_mod, "elbo_and_iwae", iwae_then_the_resume_finishes)
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        manual = evaluate_run(run, k=3, device="cpu", pictures=False, progress=False)
    assert manual["epoch"] == 1 and manual["made_when"] == {"run_epochs": 1}  # when its checkpoint was read
    assert load_eval(run)["k"] == 3  # the last one written, whose numbers the user asked for
    assert ckpt_io.final_eval_missing(run)  # ... but not the run's final evaluation: resume runs that again
    assert f"replacing {run / 'eval.json'}, written while this evaluation ran (last.pt, epoch 2, k=2); " \
           f"`vaelab resume {run}` makes the run's own final evaluation again" in caplog.text
    # TensorBoard shows the evaluation eval.json holds: the manual one's events replace the final one's
    assert len(list(run.glob("events.out.tfevents.*.eval"))) == 1
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("test/nll_iwae")] == [(manual["examples_seen"],
                                                                         pytest.approx(manual["nll_iwae"]))]


def test_two_evaluations_at_once_leave_the_events_of_the_one_eval_json_holds(make_cfg, tmp_path, monkeypatch):
    """A second evaluation that began after the first had opened its event file, and ended before
    it, removed that file as an earlier evaluation's: eval.json then held the first one's numbers
    and TensorBoard only the second's."""
    import vaelab.pictures as pictures_mod

    run = tmp_path / "run"
    train(make_cfg(["latent_size=2", "trainer.epochs=1", "trainer.final_eval=true", "trainer.final_eval_k=2"]), run)
    real_make_pictures, nested = pictures_mod.make_pictures, []

    def and_meanwhile_another_evaluation(*args, **kwargs):
        if not nested:  # the first evaluation, its event file open: the second runs from start to end
            nested.append(None)
            nested[0] = evaluate_run(run, k=4, device="cpu", progress=False, seed=2)
        return real_make_pictures(*args, **kwargs)
    monkeypatch.setattr(pictures_mod, "make_pictures", and_meanwhile_another_evaluation)
    first = evaluate_run(run, k=3, device="cpu", progress=False, seed=1)
    assert nested and nested[0]["k"] == 4
    assert load_eval(run)["k"] == 3  # the last to end
    [events] = run.glob("events.out.tfevents.*.eval")
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.value for e in acc.Scalars("test/nll_iwae")] == [pytest.approx(first["nll_iwae"])]
    assert pytest.approx(first["nll_iwae"]) != nested[0]["nll_iwae"]


def test_mse_run_reports_the_gaussian_variance(make_cfg, tmp_path):
    cfg = make_cfg(["latent_size=3", "model.size=small", "trainer.epochs=1", "trainer.final_eval=false"])
    train(cfg, tmp_path)
    r = evaluate_run(tmp_path, k=2, device="cpu", progress=False, pictures=False)
    assert r["likelihood"] == "gaussian" and r["gaussian_variance"] == 0.5 and "variance 0.5" in r["note"]
    _, model, _ = load_run(tmp_path)
    test = load_data(cfg.data.root, torch.device("cpu"), val_size=64).test.images
    gen = torch.Generator().manual_seed(0)
    elbo_stats(model, test, "mse", cfg.trainer.eval_batch_size, gen)  # (eval draws its k z after these)
    st = elbo_and_iwae(model, test, 2, "mse", gen, progress=False)
    assert r["recon"] == st["recon"] and r["elbo"] == -st["nelbo"]
    # the squared error of the same two draws, and the Gaussian's constant: a log-likelihood
    gen = torch.Generator().manual_seed(0)
    elbo_stats(model, test, "mse", cfg.trainer.eval_batch_size, gen)
    with torch.no_grad():
        mu, logvar = model.encode(to_float(test))
        eps = torch.randn((2, *mu.shape), generator=gen)
        sq = [recon_nll(model.decode_logits(mu + (0.5 * logvar).exp() * e), to_float(test), "mse") for e in eps]
    assert r["recon"] == pytest.approx(float((sq[0] + sq[1]).mean()) / 2 + 784 * MSE_NLL_CONST_PER_DIM, rel=1e-6)
    assert r["elbo_bits_per_dim"] == pytest.approx(bits_per_dim(-r["elbo"], 784))
    assert not (tmp_path / "eval").exists()


def test_eval_errors_are_one_line(make_cfg, tmp_path, capsys):
    cfg = make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1", "trainer.final_eval=false"])
    train(cfg, tmp_path / "run")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    ckpts = tmp_path / "run" / "checkpoints"
    cases = [
        ([str(tmp_path / "nope")], "no such run directory"),
        ([str(tmp_path)], "not a vaelab run directory"),
        ([str(tmp_path / "junk"), "--checkpoint", "junk.pt"], "junk.pt: not a checkpoint file"),
        ([str(tmp_path / "run"), "--checkpoint", "epoch_9999.pt"],
         f"--checkpoint epoch_9999.pt: no such checkpoint; {ckpts} holds best.pt, "
         "last.pt (give last, best or a file name from there)"),
        # a checkpoint from outside the run: its numbers would be written down as the run's
        ([str(tmp_path / "run"), "--checkpoint", str(tmp_path / "junk.pt")],
         f"--checkpoint {tmp_path / 'junk.pt'}: not a file in {ckpts}/; give last, best or a file name from "
         f"there (it holds best.pt, last.pt); to use another run's checkpoint, give that run's folder as RUN_DIR"),
        ([str(tmp_path / "run"), "--checkpoint", str(tmp_path / "tanh" / "checkpoints" / "last.pt")],
         f"to use another run's checkpoint, give that run's folder ({tmp_path / 'tanh'}) as RUN_DIR"),
        ([str(tmp_path / "run"), "--checkpoint", f"{ckpts}/../../tanh/checkpoints/last.pt"],
         "not a file in"),
        # no checkpoint at all: not "--checkpoint last: no such checkpoint ... give last, best or a file name"
        ([str(tmp_path / "empty_ckpts")], f"error: {tmp_path / 'empty_ckpts' / 'checkpoints'}: no checkpoint, so no "
                                          f"weights to load (the run finished, and its checkpoints have been deleted)"),
        ([str(tmp_path / "unfinished")], f"error: {tmp_path / 'unfinished' / 'checkpoints'}: no checkpoint, so no "
                                         f"weights to load (the run stopped before its first checkpoint)"),
        ([str(tmp_path / "run"), "--k", "0"], "argument --k: must be an integer in [1, 1000000]"),
        ([str(tmp_path / "run"), "--k", "many"], "argument --k: must be an integer in [1, 1000000]"),
        ([str(tmp_path / "run"), "--device", "bogus"], "argument --device: allowed: auto, cpu, cuda, cuda:N, mps"),
        *([([str(tmp_path / "run"), "--device", "cuda"],
            "--device cuda: no CUDA GPU is visible here; use --device cpu or --device auto")]
          if not torch.cuda.is_available() else []),
        ([str(tmp_path / "run"), "--k", str(10**20)], "argument --k: must be an integer in [1, 1000000]"),
        ([str(tmp_path / "ro")], "ro: not writable (eval writes eval.json"),
        ([str(tmp_path / "run"), "--seed", str(2**64)], "argument --seed: must be an integer in [0, 2**63)"),
        ([str(tmp_path / "run"), "--data-root", str(tmp_path / "nodata")], "MNIST not found"),
        ([str(tmp_path / "run"), "--data-root", str(tmp_path / "nodata")], "; give --data-root DIR to a folder"),
        ([str(tmp_path / "tanh")], "trained with model.activation=relu, but the config says model.activation=tanh"),
        ([str(tmp_path / "typo")], "config.yaml: not a valid vaelab config: Key 'latentsize' not in 'Config'"),
        ([str(tmp_path / "empty")], "config.yaml: not a valid vaelab config: empty"),
        # a wrong type or broken YAML named no key or place (the same on the command line named the key)
        ([str(tmp_path / "wrongtype")], "config.yaml: not a valid vaelab config: Value 'abc' of type 'str' could not "
                                        "be converted to Integer (key 'latent_size')"),
        ([str(tmp_path / "badyaml")], "config.yaml: not a valid vaelab config: while parsing a flow sequence (line 2, "
                                      "column 14): expected ',' or ']', but got ':' (line "),
        ([str(tmp_path / "zero")], "config.yaml: trainer.eval_batch_size=0: must be >= 1"),
        # a file cut short after a key (a copy interrupted): the line said only "is not Optional"
        ([str(tmp_path / "cut")], "config.yaml: not a valid vaelab config: field 'model.kwargs' is not Optional "
                                  "(key 'model.kwargs') (a setting with no value: is the file whole?)"),
    ]
    # Hand-edited saved configs: one that no longer matches the checkpoint, and broken ones.
    for name, (old, new) in {"tanh": ("activation: relu", "activation: tanh"), "typo": ("latent_size:", "latentsize:"),
                             "empty": (None, ""), "zero": ("eval_batch_size: 64", "eval_batch_size: 0"),
                             "wrongtype": ("latent_size: ", "latent_size: abc #"),
                             "badyaml": ("latent_size: ", "latent_size: ["), "cut": ("kwargs: {}", "kwargs:")}.items():
        shutil.copytree(tmp_path / "run", tmp_path / name)
        saved = tmp_path / name / ".hydra" / "config.yaml"
        text = saved.read_text()
        assert old is None or old in text, old
        saved.write_text(new if old is None else text.replace(old, new, 1))
    shutil.copytree(tmp_path / "run", tmp_path / "junk")
    shutil.copy(tmp_path / "junk.pt", tmp_path / "junk" / "checkpoints")
    shutil.copytree(tmp_path / "run", tmp_path / "empty_ckpts", ignore=shutil.ignore_patterns("*.pt"))
    shutil.copytree(tmp_path / "run", tmp_path / "unfinished", ignore=shutil.ignore_patterns("*.pt", "metrics.json"))
    shutil.copytree(tmp_path / "run", tmp_path / "ro")
    (tmp_path / "ro").chmod(0o555)
    if os.access(tmp_path / "ro", os.W_OK):  # root ignores the mode bits
        cases = [c for c in cases if not c[0][0].endswith("ro")]
    capsys.readouterr()  # the training's log
    for argv, message in cases:
        code = _eval_cli(argv)
        err = capsys.readouterr().err
        assert code == 2, argv
        assert err.count("\n") == 1 and err.startswith("vaelab eval: error: ") and message in err, err
    assert not (tmp_path / "nodata").exists()  # the failed download left no empty MNIST/raw/ behind
    # No checkpoint yet because another process is still in the run's first epoch: say so
    with ckpt_io.only_process(tmp_path / "empty_ckpts"):  # as a training process holds it
        assert _eval_cli([str(tmp_path / "empty_ckpts")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (f"{tmp_path / 'empty_ckpts'} is still training its first epoch (another "
                                      "process holds it) and has no checkpoint yet") in err, err
    # With checkpoints, a run still training is evaluated as it is now, and told so
    with ckpt_io.only_process(tmp_path / "run"):
        assert _eval_cli([str(tmp_path / "run"), "--k", "2", "--no-pictures"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(f"vaelab eval: note: {tmp_path / 'run'} is training now (another process holds it): this "
                          f"evaluates its last checkpoint as it is now")
    final = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml").trainer.final_eval
    # (it promised a replacement by an end-of-training evaluation that trainer.final_eval=false never runs)
    assert ("end-of-training evaluation will replace eval.json" in err) == final
    saved = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")
    saved.trainer.final_eval = not final  # and the other way round
    OmegaConf.save(saved, tmp_path / "run" / ".hydra" / "config.yaml")
    with ckpt_io.only_process(tmp_path / "run"):
        assert _eval_cli([str(tmp_path / "run"), "--k", "2", "--no-pictures"]) == 0
    assert ("end-of-training evaluation will replace eval.json" in capsys.readouterr().err) == (not final)


def test_relative_data_root_is_relative_to_where_training_started(tmp_path, tiny_mnist):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save({"hydra": {"runtime": {"cwd": str(tiny_mnist.parent)}}}, run / ".hydra" / "hydra.yaml")
    assert data_root(run, OmegaConf.create({"data": {"root": tiny_mnist.name}})) == tiny_mnist
    assert data_root(run, OmegaConf.create({"data": {"root": str(tiny_mnist)}})) == tiny_mnist


def test_vaelab_eval_through_the_cli(make_cfg, tmp_path, capsys):
    for module in ("vaelab.workflow", "vaelab.compare"):  # cli.main imports every command module
        pytest.importorskip(module)
    from vaelab.cli import main

    train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1", "trainer.final_eval=false"]), tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path), "--k", "2", "--no-pictures"])
    assert e.value.code == 0 and "IWAE" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path / "missing")])
    assert e.value.code == 2


def test_iwae_paper_experiment_composes_and_runs(make_cfg, tmp_path):
    paper = make_cfg(["experiment=iwae_paper_vae"], fast=False)
    assert paper.latent_size == 50 and list(paper.model.hidden) == [200, 200] and paper.model.activation == "tanh"
    assert paper.loss.recon == "bce" and paper.data.binarize == "dynamic" and paper.optim.schedule == "iwae"
    assert paper.trainer.batch_size == 20 and paper.optim.eps == 1e-4 and paper.trainer.final_eval_k == 5000
    assert paper.data.val_size == 0 and paper.trainer.epochs == 3280
    cfg = make_cfg(["experiment=iwae_paper_vae", "trainer.epochs=1", "trainer.final_eval_k=2"])
    metrics = train(cfg, tmp_path)
    assert math.isfinite(metrics["val_loss"])
    r = load_eval(tmp_path)
    assert r["likelihood"] == "bernoulli" and r["latent_size"] == 50 and math.isfinite(r["nll_iwae"])


def test_picture_folders_left_by_killed_evaluations_are_removed_not_those_in_use(make_cfg, tmp_path):
    from vaelab import checkpoint as ckpt_io

    train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1", "trainer.final_eval=false"]), tmp_path)
    stale, fresh, held = (tmp_path / f".eval-{n}.tmp" for n in ("stale", "fresh", "held"))
    for d in (stale, fresh, held):
        (d / "samples.png").parent.mkdir()
        (d / "samples.png").write_bytes(b"half a picture")
    for d in (stale, held):  # an hour old
        os.utime(d, (os.path.getmtime(d) - 3600,) * 2)
    with ckpt_io.only_process(held):  # another evaluation, drawing into it now
        evaluate_run(tmp_path, k=2, device="cpu", progress=False)
    assert not stale.exists() and fresh.is_dir() and held.is_dir()
    assert (tmp_path / "eval" / "samples.png").is_file()


def test_the_kl_per_dim_line_does_not_round_small_values_up_and_marks_the_dead_by_one_rule(tmp_path):
    """0.0099 nats was printed as 0.01 beside "(3 dims < 0.01 nats)". That count was a second
    rule for dead dimensions beside the active units' (Cov_x E_q[z_i|x] > 0.01), and the two
    disagreed; the KL line now marks the inactive dimensions, as the traversals do."""
    from vaelab.evaluate_run import format_table

    r = {"elbo": -100.0, "recon": 90.0, "kl": 10.0, "nll_iwae": 99.0, "k": 5, "elbo_bits_per_dim": 0.18,
         "recon_bits_per_dim": 0.17, "kl_bits_per_dim": 0.01, "bits_per_dim": 0.18, "kl_per_dim": [2.5, 0.0099, 0.012, 0.001],
         "mean_variance_per_dim": [0.9, 0.02, 0.001, 0.0], "active_units": 2, "latent_size": 4, "checkpoint": "last.pt",
         "epoch": 1, "n_examples": 10, "dim": 784, "note": "", "examples_seen": 10, "seconds": 0.1}
    lines = format_table(r, tmp_path).splitlines()
    [line] = [ln for ln in lines if "KL per dim" in ln]
    assert line.endswith("z0 2.50, z2 0.012*, z1 0.0099, z3 0.001*   (nats, largest first; * inactive)")
    [line] = [ln for ln in lines if "active units" in ln]
    # (traversals only where eval drew them: not after a --no-pictures eval of a run without eval/, review)
    assert line.endswith("active units 2 / 4   (Cov_x E_q[z_i|x] > 0.01; the other 2: dead)")
    drawn = {"pictures": {"traversals": str(tmp_path / "eval" / "traversals.png")}}
    [line] = [ln for ln in format_table({**r, **drawn}, tmp_path).splitlines() if "active units" in ln]
    assert line.endswith("active units 2 / 4   (Cov_x E_q[z_i|x] > 0.01; the other 2: dead, in the traversals too)")
    assert any(ln.lstrip().startswith("ELBO gap (-ELBO - NLL)") for ln in lines)
    grey = format_table({**r, "recon_kind": "bce", "binarize": "none"}, tmp_path).splitlines()  # (bounds on nothing)
    assert any(ln.lstrip().startswith("gap (-ELBO form - IWAE form)") for ln in grey)
    # a picture make_pictures left out (a test split of 1 image: no interpolations) is named under the pictures
    pictures = {"pictures": {"samples": str(tmp_path / "eval" / "samples.png")},
                "pictures_of": {"checkpoint": "last.pt", "examples_seen": 10},
                "pictures_left_out": {"interpolations": "they need 2 test images, the split has 1"}}
    lines = format_table({**r, **pictures}, tmp_path).splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("pictures"))
    assert lines[at + 1].strip() == "no interpolations.png: they need 2 test images, the split has 1"


def test_no_pictures_names_the_pictures_eval_holds_in_this_runs_folder(make_cfg, tmp_path, capsys):
    """eval.json's "pictures" after --no-pictures: a copied run's named the original's files (and
    its pictures_of the original's checkpoint); without an earlier eval.json, no key at all."""
    train(make_cfg(["trainer.epochs=1"]), tmp_path / "run")
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "run", copy)
    shutil.rmtree(tmp_path / "run")
    assert _eval_cli([copy, "--k", "2", "--no-pictures"]) == 0
    saved = load_eval(copy)
    assert set(saved["pictures"]) == {"samples", "reconstructions", "traversals", "interpolations",
                                      "latents_scatter", "curves", "kl_by_dim"}
    assert all(Path(f).parent == copy / "eval" and Path(f).is_file() for f in saved["pictures"].values())
    assert saved["pictures_of"]["checkpoint"] == str(copy / "checkpoints" / "last.pt")
    out = capsys.readouterr().out
    assert "an earlier evaluation's" not in out and "TensorBoard tags test/* and eval/* at step 192" in out
    (copy / "eval" / "curves.png").unlink()
    (copy / "eval.json").unlink()  # whose pictures they are is not known any more
    assert _eval_cli([copy, "--k", "2", "--no-pictures"]) == 0
    saved = load_eval(copy)
    assert "curves" not in saved["pictures"] and len(saved["pictures"]) == 6 and saved["pictures_of"] is None
    assert "kl_by_dim.png  (of weights eval.json does not name)" in capsys.readouterr().out
    shutil.rmtree(copy / "eval")
    assert _eval_cli([copy, "--k", "2", "--no-pictures"]) == 0
    assert load_eval(copy)["pictures"] == {}


def test_no_pictures_keeps_the_images_of_the_evaluation_eval_json_holds_only(make_cfg, tmp_path):
    """A --no-pictures evaluation copied the eval/* images of every earlier event file into its
    own, those of an evaluation killed part-way (kill -9) too: TensorBoard then showed two
    pictures per tag, one never in eval/."""
    from torch.utils.tensorboard import SummaryWriter

    train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1", "trainer.final_eval=false"]), tmp_path)
    evaluate_run(tmp_path, k=2, device="cpu", progress=False, seed=1)
    step = load_eval(tmp_path)["examples_seen"]
    with SummaryWriter(str(tmp_path), filename_suffix=".eval") as w:  # what a killed evaluation leaves
        w.add_image("eval/samples", torch.zeros(1, 8, 8), step)
    assert len(list(tmp_path.glob("events.out.tfevents.*.eval"))) == 2
    evaluate_run(tmp_path, k=3, device="cpu", progress=False, seed=2, pictures=False)
    [events] = tmp_path.glob("events.out.tfevents.*.eval")
    assert load_eval(tmp_path)["events_file"] == events.name
    acc = EventAccumulator(str(events), size_guidance={"images": 0})
    acc.Reload()
    assert {tag: len(acc.Images(tag)) for tag in acc.Tags()["images"]} == {
        "eval/samples": 1, "eval/reconstructions": 1, "eval/traversals": 1, "eval/interpolations": 1,
        "eval/latents_scatter": 1, "eval/manifold": 1, "eval/curves": 1, "eval/kl_by_dim": 1}


def test_a_checkpoint_from_part_way_through_an_epoch_says_so(make_cfg, tmp_path, monkeypatch):
    """A run stopped in epoch 1 was evaluated as "last.pt (epoch 0)", and compare's test_from said
    epoch=0: the number of epochs finished, read as the epoch the weights are from."""
    from tests.conftest import signal_at_step
    from vaelab.compare import eval_settings
    from vaelab.evaluate_run import format_table
    from vaelab.train import Interrupted

    with signal_at_step(monkeypatch, 2), pytest.raises(Interrupted):  # 6 steps of 32 an epoch: after 96 images
        train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1"]), tmp_path)
    r = evaluate_run(tmp_path, k=2, device="cpu", pictures=False, progress=False)
    assert r["epoch"] == 0 and r["in_epoch"] == {"images": 96, "of": 192}
    assert "  checkpoint   " + f"{tmp_path / 'checkpoints' / 'last.pt'} (in epoch 1 at image 96/192)" in \
        format_table(r, tmp_path).splitlines()
    assert eval_settings(r, {"final_eval": True, "final_eval_k": 2}, 1) == "checkpoint=last.pt, k=2, seed=0, epoch=0.50"


@pytest.mark.parametrize("binarize", ["none", "dynamic", "static"])
def test_the_table_and_note_claim_a_likelihood_and_papers_only_where_they_hold(tmp_path, binarize):
    """A Bernoulli decoder on grey levels was printed as "-ELBO (upper bound on NLL)" and "NLL,
    IWAE bound" under a note that it is no likelihood; a static binarization (a draw of our own)
    was called comparable with Burda et al., who trained on dynamically binarized MNIST."""
    from vaelab.evaluate_run import _likelihood, format_table

    _, note = _likelihood("bce", binarize)
    r = {"elbo": -100.0, "recon": 90.0, "kl": 10.0, "nll_iwae": 99.0, "k": 5, "elbo_bits_per_dim": 0.18,
         "recon_bits_per_dim": 0.17, "kl_bits_per_dim": 0.01, "bits_per_dim": 0.18, "kl_per_dim": [2.5],
         "mean_variance_per_dim": [0.9], "active_units": 1, "latent_size": 1, "checkpoint": "last.pt", "epoch": 1,
         "n_examples": 10, "dim": 784, "note": note, "examples_seen": 10, "seconds": 0.1, "recon_kind": "bce",
         "binarize": binarize}
    table = format_table(r, tmp_path)
    assert ("upper bound on NLL" in table and "NLL, IWAE bound (k=5)" in table) == (binarize != "none")
    assert ("comparable with Burda et al. 2016" in note) == (binarize == "dynamic")
    if binarize == "static":
        assert "not Larochelle and Murray's fixed binarized MNIST" in note


def test_the_log_line_of_an_evaluation_on_grey_levels_claims_no_likelihood(make_cfg, tmp_path, caplog):
    """The table said "-ELBO form" and "IWAE form" for a Bernoulli decoder on grey levels, but
    the line the evaluation logs (the last of train.log) still said "ELBO" and "IWAE NLL", and
    eval.json's "likelihood" said "bernoulli"."""
    for binarize, names, likelihood in (("none", ("ELBO form ", "IWAE form "), "cross-entropy"),
                                        ("dynamic", ("ELBO ", "IWAE NLL "), "bernoulli")):
        train(make_cfg(["latent_size=2", "model.size=small", "loss.recon=bce", f"data.binarize={binarize}",
                        "trainer.epochs=1", "trainer.final_eval=false"]), tmp_path / binarize)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vaelab"):
            result = evaluate_run(tmp_path / binarize, k=2, device="cpu", pictures=False, progress=False)
        [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("eval (")]
        assert line.startswith(f"eval (last.pt, k=2): {names[0]}") and f"), {names[1]}" in line, line
        # (review: "IWAE form 309.13 nats = 0.5688 bits/dim" read as a code length)
        assert re.search(r" nats \([\d.]+ bits/dim: a cross-entropy's, no code length\), active" if binarize == "none"
                         else r" nats = [\d.]+ bits/dim, active", line), line
        assert result["likelihood"] == likelihood == json.loads((tmp_path / binarize / "eval.json").read_text())[
            "likelihood"]


@pytest.mark.parametrize("flush", [True, False])
def test_evaluation_runs_with_the_runs_flush_denormal_and_training_puts_it_back(make_cfg, tmp_path, monkeypatch,
                                                                                flush):
    """train() left trainer.flush_denormal (on by default) set in the process, so its final
    evaluation flushed subnormals and a later `vaelab eval` of the same checkpoint in a fresh
    process did not; and everything run after train() in the process flushed them too. Now both
    evaluations use the run's setting, and train() and evaluate_run put back what was set."""
    import vaelab.evaluate as evaluate_mod
    from vaelab.evaluate import flushing_subnormals

    seen, real = [], evaluate_mod.elbo_stats

    def elbo_stats(*args, **kwargs):
        seen.append(flushing_subnormals())
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluate_mod, "elbo_stats", elbo_stats)
    torch.set_flush_denormal(not flush)
    try:
        train(make_cfg(["latent_size=2", "model.size=small", f"trainer.flush_denormal={str(flush).lower()}"]),
              tmp_path)
        assert flushing_subnormals() is (not flush)  # as before the run
        evaluate_run(tmp_path, k=2, device="cpu", pictures=False, progress=False)
        assert flushing_subnormals() is (not flush)
    finally:
        torch.set_flush_denormal(False)
    assert seen == [flush, flush], seen  # the final evaluation's, then vaelab eval's


def test_a_finished_run_met_again_is_not_evaluated_or_logged_again(make_cfg, tmp_path, caplog):
    """A sweep job whose values repeat another's (an Optuna trial that draws them again,
    `-m latent_size=8,8`) meets the finished run: it reported the run's result, but ran the
    end-of-training evaluation again (k=5000 for the IWAE paper's model: minutes), rewrote
    eval.json and its pictures, and left another event file. Now only a missing evaluation runs."""
    cfg = make_cfg(["latent_size=2", "model.size=small"])
    first = train(cfg, tmp_path)
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    with caplog.at_level(logging.INFO, logger="vaelab"):
        again = train(cfg, tmp_path)
    assert again["val_loss"] == first["val_loss"]
    assert "its end-of-training evaluation is in" in caplog.text
    now = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    changed = sorted(str(p.relative_to(tmp_path)) for p in now if files.get(p) != now[p])
    assert changed == ["metrics.json", "train.log"], changed  # (the run's numbers, rewritten as they were)

    (tmp_path / "eval.json").unlink()  # a stop cut it short: the next meeting makes it
    train(cfg, tmp_path)
    assert load_eval(tmp_path)["k"] == cfg.trainer.final_eval_k


def test_a_run_whose_model_does_not_import_here_is_one_line(make_cfg, tmp_path, monkeypatch, capsys):
    """vaelab eval (and sample, resume) of a run trained with a model of one's own, in a shell
    where its module is not importable, printed a 65-line traceback; vaelab-train says it in one."""
    import sys

    (tmp_path / "gonemodels.py").write_text("from vaelab.models import MLPVAE\n\n\nclass Mine(MLPVAE):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1", "trainer.final_eval=false",
                    "model._target_=gonemodels.Mine"]), tmp_path / "run")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    monkeypatch.delitem(sys.modules, "gonemodels")
    capsys.readouterr()
    assert _eval_cli([tmp_path / "run", "--k", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vaelab eval: error: model._target_=gonemodels.Mine: Error loading 'gonemodels.Mine': "
                          "ModuleNotFoundError") and "\n" not in err
    # (review: what vaelab-train found through PYTHONPATH=., the next command typed without it did not)
    assert err.endswith("; a module of one's own is found through PYTHONPATH by every vaelab command: "
                        "PYTHONPATH=/its/folder vaelab ...")


def test_the_curves_are_read_before_the_evaluations_own_event_file_is_open(make_cfg, tmp_path, monkeypatch):
    """Review: TensorBoard's reader, reading the run's folder for curves.png while this evaluation's
    writer flushed into its .eval file, logged an ERROR ("File ... updated even though the current
    file is ...") in a sweep's job."""
    from vaelab.compare import Run

    train(make_cfg(["latent_size=2", "model.size=small", "trainer.final_eval=false"]), tmp_path)
    real, seen = Run.scalars, []

    def scalars(self, events_only=False):
        seen.append(sorted(p.name for p in self.path.glob("events.out.tfevents.*.eval")))
        return real(self, events_only)
    monkeypatch.setattr(Run, "scalars", scalars)
    evaluate_run(tmp_path, k=2, device="cpu", progress=False)
    assert seen and seen[0] == []
    assert len(list(tmp_path.glob("events.out.tfevents.*.eval"))) == 1


def test_the_curves_say_what_their_losses_are_and_where_they_end(make_cfg, tmp_path, monkeypatch, caplog):
    """Review: with loss.beta=4 the note called every loss recon + 4 KL, though validation's is
    recon + KL; curves of a run carried on with logger.tensorboard=false ended early unsaid (and a
    later review: began late, said as ending early); TensorBoard's own INFO lines ("Directory
    watcher advancing ...") went into train.log; and three notes on one line were cut off."""
    import vaelab.pictures as pictures

    notes = []
    real = pictures.curves_figure
    monkeypatch.setattr(pictures, "curves_figure",
                        lambda scalars, note="", *a, **kw: notes.append(note) or real(scalars, note, *a, **kw))
    common = ["latent_size=2", "model.size=small", "loss.beta=4", "trainer.final_eval=false"]
    train(make_cfg([*common, "trainer.epochs=1"]), tmp_path)
    train(make_cfg([*common, "trainer.epochs=2", "logger.tensorboard=false"]), tmp_path)  # carried on (it warns)
    with caplog.at_level(logging.INFO):
        r = evaluate_run(tmp_path, k=2, device="cpu", progress=False)
    mse = ("loss.recon=mse: the losses leave out the Gaussian decoder's constant (add 448.73 nats for the "
           "-ELBO)")
    assert notes == ["the train loss is recon + beta x KL (loss.beta=4), the validation loss recon + KL\n"
                     "epoch 2 of 2 logged no events: the per-log-point train curves leave it out\n" + mse]
    (tmp_path / "epochs.jsonl").unlink()  # (a run from before it was written)
    evaluate_run(tmp_path, k=2, device="cpu", progress=False)
    assert notes[1] == ("the train loss is recon + beta x KL (loss.beta=4), the validation loss recon + KL\n"
                        "epoch 2 of 2 logged no events: the curves leave it out\n" + mse)
    assert "curves" in r["pictures"]
    assert not [rec for rec in caplog.records if rec.name.startswith("tensorboard")]
    from vaelab.evaluate_run import _ranges
    assert _ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"
