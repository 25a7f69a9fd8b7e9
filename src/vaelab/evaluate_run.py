"""`vaelab eval RUN_DIR`: the test-split numbers of a trained run, into RUN_DIR/eval.json and
the run's own TensorBoard."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vaelab import checkpoint as ckpt_io
from vaelab.config import resolve_device, typed
from vaelab.data import load_data
from vaelab.evaluate import bits_per_dim, elbo_stats, iwae_nll
from vaelab.losses import MSE_GAUSSIAN_VARIANCE, MSE_NLL_CONST_PER_DIM

log = logging.getLogger("vaelab")


def load_run(run_dir: str | Path, checkpoint: str = "last", device: str = "cpu"):
    """(config, model on device, checkpoint path) of a run directory."""
    from vaelab.train import build_model

    run_dir = Path(run_dir)
    cfg_path = run_dir / ".hydra" / "config.yaml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a vaelab run directory (no .hydra/config.yaml)")
    cfg = typed(OmegaConf.load(cfg_path))
    if checkpoint in ("last", "best"):
        path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    else:
        path = Path(checkpoint)
    ck = ckpt_io.load(path)
    model = build_model(cfg)
    ckpt_io.check_compatible(ck, model, path)
    model.load_state_dict(ck["model"])
    dev = resolve_device(device)
    return cfg, model.to(dev).eval(), path


def evaluate_run(run_dir: str | Path, k: int = 5000, device: str = "auto", checkpoint: str = "last",
                 progress: bool = True, seed: int = 0) -> dict:
    run_dir = Path(run_dir)
    cfg, model, path = load_run(run_dir, checkpoint, device)
    dev = next(model.parameters()).device
    data = load_data(cfg.data.root, dev, val_size=cfg.data.val_size, split_seed=cfg.data.split_seed,
                     binarize=cfg.data.binarize, seed=cfg.seed, download=cfg.data.download)
    test = data.test.images
    d = test.shape[1]
    recon_kind = cfg.loss.recon
    gen = torch.Generator(device=dev).manual_seed(seed)
    st = elbo_stats(model, test, recon_kind, cfg.trainer.eval_batch_size, gen)
    # For MSE the "recon" is a squared error; as a likelihood it is a Gaussian with variance
    # 1/2, whose NLL adds D * 0.5 * log(pi) nats (a continuous density: not comparable with
    # Bernoulli NLLs on binarized MNIST).
    const = d * MSE_NLL_CONST_PER_DIM if recon_kind == "mse" else 0.0
    recon = st["recon"] + const
    nll = iwae_nll(model, test, k, recon_kind, gen, progress=progress)
    elbo = -(recon + st["kl"])
    result = {
        "elbo": elbo, "recon": recon, "kl": st["kl"], "nll_iwae": nll, "k": k,
        "bits_per_dim": bits_per_dim(nll, d), "elbo_bits_per_dim": bits_per_dim(-elbo, d),
        "active_units": st["active_units"], "latent_size": int(cfg.latent_size),
        "kl_per_dim": [float(v) for v in st["kl_per_dim"]],
        "checkpoint": str(path), "split": "test", "n_examples": int(test.shape[0]),
        "likelihood": ("bernoulli" if recon_kind == "bce"
                       else f"gaussian(variance={MSE_GAUSSIAN_VARIANCE}) on [0,1] pixels, continuous density"),
        "binarize": str(cfg.data.binarize),
    }
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    _log_tb(run_dir, result)
    log.info("eval (%s, k=%d): ELBO %.2f nats (recon %.2f, KL %.2f), IWAE NLL %.2f nats = %.4f bits/dim, "
             "active units %d/%d", path.name, k, elbo, recon, st["kl"], nll, result["bits_per_dim"],
             st["active_units"], cfg.latent_size)
    return result


def _log_tb(run_dir: Path, result: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(log_dir=str(run_dir))
    for key in ("elbo", "recon", "kl", "nll_iwae", "bits_per_dim", "active_units"):
        if isinstance(result[key], (int, float)) and math.isfinite(result[key]):
            w.add_scalar(f"test/{key}", result[key], 0)
    w.close()
