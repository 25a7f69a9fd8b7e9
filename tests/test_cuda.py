"""The CUDA code paths: trainer.cuda_graph against the eager step. They need a GPU, so CI
(which has none) skips them; run them on one with `pytest tests/test_cuda.py`."""
from __future__ import annotations

import json
import math

import pytest
import torch

from vaelab import checkpoint as ckpt_io
from vaelab import fused_loss, optim
from vaelab.config import ConfigError, validate
from vaelab import train as train_mod
from vaelab.train import Interrupted, train

from tests.conftest import compose_cfg, signal_at_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# 192 training images at batch 40: four full batches (three eager warm-up steps, then the
# capture and replays) and a short one of 32 that runs eagerly, each epoch.
# optim.impl=fused and loss.impl=torch: the eager step and the graph then run the same kernels
# (auto would give the graph flat Adam and the loss's Triton kernels, float rounding apart).
GPU = ["device=cuda", "trainer.cuda_graph=false", "optim.impl=fused", "loss.impl=torch", "latent_size=4",
       "data.val_size=64", "trainer.epochs=3",
       "trainer.batch_size=40", "trainer.log_every=2", "trainer.progress=false", "trainer.final_eval=false",
       "logger.images_every=100"]


def weights(run) -> dict[str, torch.Tensor]:
    return ckpt_io.load(run / "checkpoints" / "last.pt", map_location="cpu")["model"]


def run(tiny_mnist, path, *overrides) -> dict:
    return train(compose_cfg([f"data.root={tiny_mnist}", *GPU, *overrides]), path)


def assert_same_weights(a, b, rtol=1e-5, atol=1e-6):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=rtol, atol=atol, msg=lambda m: f"{k}: {m}")


@pytest.mark.parametrize("extra", [
    [],
    # beta changes every step (a fixed 0-dim tensor in the graph), the lr every epoch (the
    # graph is captured again), clipping and Bernoulli draws inside the graph
    ["loss.kl_warmup_steps=7", "optim.schedule=iwae", "trainer.grad_clip=1.0", "data.binarize=dynamic",
     "loss.recon=bce"],
    ["optim.impl=flat", "optim.schedule=iwae", "optim.weight_decay=0.01"],
], ids=["seed-like", "warmup-schedule-clip-binarize", "flat-adam"])
def test_cuda_graph_trains_as_the_eager_step_does(tiny_mnist, tmp_path, extra):
    eager = run(tiny_mnist, tmp_path / "eager", *extra)
    graph = run(tiny_mnist, tmp_path / "graph", "trainer.cuda_graph=true", *extra)
    # The same kernels on the same random draws: a missed re-capture after the lr changed, or
    # a stale beta, would move the weights by ~lr per step, far over these tolerances.
    assert_same_weights(tmp_path / "eager", tmp_path / "graph")
    assert graph["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-5)
    assert graph["val_loss"] == pytest.approx(eager["val_loss"], rel=1e-5)


@pytest.mark.parametrize("impl", ["fused", "auto"])  # auto: flat Adam in the graph
def test_cuda_graph_run_interrupted_then_resumed_matches_the_straight_run(tiny_mnist, tmp_path, monkeypatch, impl):
    run(tiny_mnist, tmp_path / "straight", "trainer.cuda_graph=true", f"optim.impl={impl}")
    # the signal lands mid-step 7, in epoch 2, between replays
    with signal_at_step(monkeypatch, 7), pytest.raises(Interrupted):
        run(tiny_mnist, tmp_path / "resumed", "trainer.cuda_graph=true", f"optim.impl={impl}")
    assert ckpt_io.load(tmp_path / "resumed" / "checkpoints" / "last.pt")["state"]["step"] == 8
    run(tiny_mnist, tmp_path / "resumed", "trainer.cuda_graph=true", f"optim.impl={impl}")  # trainer.resume: on
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


def test_flat_adam_trains_as_fused_adam_does_on_the_gpu(tiny_mnist, tmp_path):
    fused = run(tiny_mnist, tmp_path / "fused", "trainer.cuda_graph=true")
    flat = run(tiny_mnist, tmp_path / "flat", "trainer.cuda_graph=true", "optim.impl=flat")
    # Float rounding apart, which Adam blows up to ~lr for weights whose gradient is mostly
    # rounding noise (on the CPU after these 15 steps: 1.2e-6 of a tensor's norm, equal losses,
    # as torch's forloop and fused Adam). CUDA's fused Adam works out its bias corrections in
    # float32, flat Adam in float64: more apart here. A wrong update rule would be ~lr x steps
    # = 1e-2 away.
    wa, wb = weights(tmp_path / "fused"), weights(tmp_path / "flat")
    for k in wa:
        assert (wb[k] - wa[k]).norm() <= 1e-3 * wa[k].norm(), k
    assert flat["train_loss"] == pytest.approx(fused["train_loss"], rel=1e-4)
    assert flat["val_loss"] == pytest.approx(fused["val_loss"], rel=1e-4)


def test_the_triton_kernel_trains_as_flat_adams_torch_kernels_do(tiny_mnist, tmp_path, caplog):
    pytest.importorskip("triton")
    flat = run(tiny_mnist, tmp_path / "flat", "trainer.cuda_graph=true", "optim.impl=flat")
    tri = run(tiny_mnist, tmp_path / "triton", "trainer.cuda_graph=true", "optim.impl=triton",
              "optim.weight_decay=0.0")
    assert "Triton kernel failed" not in caplog.text
    assert optim._TRITON_BROKEN is None  # (set by an earlier test, the kernel would not have run at all)
    # the same rule and float64 bias corrections; float rounding apart (one kernel's fused
    # multiply-adds against torch's separate passes), which Adam grows to ~lr for weights whose
    # gradient is mostly rounding noise. A wrong rule would be ~lr x steps = 1e-2 away.
    wa, wb = weights(tmp_path / "flat"), weights(tmp_path / "triton")
    for k in wa:
        assert (wb[k] - wa[k]).norm() <= 1e-3 * wa[k].norm(), k
    assert tri["train_loss"] == pytest.approx(flat["train_loss"], rel=1e-4)
    assert tri["val_loss"] == pytest.approx(flat["val_loss"], rel=1e-4)
    wd = run(tiny_mnist, tmp_path / "wd", "trainer.cuda_graph=true", "optim.impl=triton", "optim.weight_decay=0.01")
    assert math.isfinite(wd["val_loss"]) and wd["val_loss"] != tri["val_loss"]  # (the HAS_WD branch compiles too)


@pytest.mark.parametrize("recon", ["mse", "bce"])
def test_the_loss_kernels_train_as_torchs_loss_does(tiny_mnist, tmp_path, caplog, recon):
    pytest.importorskip("triton")
    for graph in ("true", "false"):
        over = (f"loss.recon={recon}", f"trainer.cuda_graph={graph}")
        torch_ops = run(tiny_mnist, tmp_path / f"torch-{graph}", *over)
        kernels = run(tiny_mnist, tmp_path / f"triton-{graph}", *over, "loss.impl=triton")
        assert "Triton kernels failed" not in caplog.text
        assert fused_loss._BROKEN is None  # (set by an earlier run, the kernels would not have run at all)
        # the same arithmetic and draws, summed in another order (as flat Adam's kernel, above)
        wa, wb = weights(tmp_path / f"torch-{graph}"), weights(tmp_path / f"triton-{graph}")
        for k in wa:
            assert (wb[k] - wa[k]).norm() <= 1e-3 * wa[k].norm(), k
        assert kernels["train_loss"] == pytest.approx(torch_ops["train_loss"], rel=1e-4)
        assert kernels["val_loss"] == pytest.approx(torch_ops["val_loss"], rel=1e-4)


def test_cuda_graph_with_bf16_autocast_trains(tiny_mnist, tmp_path):
    eager = run(tiny_mnist, tmp_path / "eager", "trainer.amp=bf16")
    graph = run(tiny_mnist, tmp_path / "graph", "trainer.amp=bf16", "trainer.cuda_graph=true")
    assert graph["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-3)


def test_a_default_run_on_cuda_finishes_with_its_eval_and_pictures(tiny_mnist, tmp_path, monkeypatch):
    calls = []  # loss.impl=auto: the loss's Triton kernels in the default CUDA-graph step
    real = train_mod.fused_vae_loss
    monkeypatch.setattr(train_mod, "fused_vae_loss", lambda *a: calls.append(1) or real(*a))
    metrics = train(compose_cfg([f"data.root={tiny_mnist}", "device=cuda", "latent_size=4", "data.val_size=64",
                                 "trainer.epochs=2", "trainer.batch_size=40", "trainer.progress=false",
                                 "trainer.final_eval_k=4"]), tmp_path)
    result = json.loads((tmp_path / "eval.json").read_text())
    assert math.isfinite(metrics["val_loss"]) and math.isfinite(result["nll_iwae"]) and result["k"] == 4
    assert list((tmp_path / "samples").glob("*.png"))
    assert calls and fused_loss._BROKEN is None


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_compile_modes_that_record_cuda_graphs_and_the_whole_step_graph_are_refused_together(mode):
    cfg = compose_cfg(["device=cuda", "trainer.compile=true", f"trainer.compile_mode={mode}"])
    with pytest.raises(ConfigError, match=rf"^trainer.compile_mode={mode}: .*trainer.cuda_graph=false$"):
        validate(cfg)
    validate(compose_cfg(["device=cuda", "trainer.compile=true", f"trainer.compile_mode={mode}",
                          "trainer.cuda_graph=false"]))


def test_the_warm_up_thread_changes_no_number(tiny_mnist, tmp_path):
    # trainer.cuda_warmup (the default) runs two steps of a throwaway model in a thread while the
    # data loads: a draw it left behind in the device's generator would change every weight.
    # Fresh processes, as vaelab-train runs: CUDA is not yet initialised when the thread starts.
    import subprocess
    import sys

    for name, extra in (("warm", []), ("cold", ["trainer.cuda_warmup=false"])):
        r = subprocess.run([sys.executable, "-m", "vaelab.train", f"data.root={tiny_mnist}", *GPU,
                            "trainer.cuda_graph=true", "optim.impl=auto", "trainer.deterministic=true",
                            f"hydra.run.dir={tmp_path / name}", *extra],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        assert "warm-up step failed" not in r.stdout + r.stderr
        assert "Triton kernel failed" not in r.stdout + r.stderr  # auto: the Triton kernel, built in the thread
    wa, wb = weights(tmp_path / "warm"), weights(tmp_path / "cold")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_failed_warm_up_costs_the_run_only_a_warning(tiny_mnist, tmp_path, monkeypatch, caplog):
    import vaelab.train as tr

    def broken(*args, **kwargs):
        raise RuntimeError("no room for the throwaway model")
    monkeypatch.setattr(tr, "warm_up", broken)
    metrics = run(tiny_mnist, tmp_path / "r", "trainer.cuda_graph=true")
    assert math.isfinite(metrics["val_loss"])
    assert "the CUDA warm-up step failed (no room for the throwaway model)" in caplog.text


# The seed's sizes at the batch sizes of gpu_step.py's larger-batch figures: many tiles of 128
# rows (the KL's partial sums over B / 128 programs, then summed by torch), and the interpreter's
# sizes in test_fused_loss.py, now compiled
@pytest.mark.parametrize("B,L,D,recon", [(64, 256, 784, "mse"), (1024, 256, 784, "mse"), (4096, 256, 784, "bce"),
                                         (130, 5, 33, "bce"), (3, 40, 1100, "mse")])
def test_the_compiled_loss_kernels_compute_what_losses_py_does(B, L, D, recon):
    pytest.importorskip("triton")
    from tests.test_fused_loss import terms_and_grad
    g = torch.Generator(device="cuda").manual_seed(B + L + D)
    h = (2 * torch.randn(B, 2 * L, generator=g, device="cuda")).requires_grad_()
    W = 3 * torch.randn(L, D, generator=g, device="cuda")
    x = torch.rand(B, D, generator=g, device="cuda")
    x = (x > 0.5).float() if recon == "bce" else x
    eps = torch.randn(B, L, generator=g, device="cuda")
    want, want_grad = terms_and_grad(h, W, x, eps, recon, fused=False)
    got, got_grad = terms_and_grad(h, W, x, eps, recon, fused=True)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5, msg=lambda m: f"{k}: {m}")
    scale = want_grad.abs().max()
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6 * float(scale))
