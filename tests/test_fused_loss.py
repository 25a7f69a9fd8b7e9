"""loss.impl=triton (vaelab.fused_loss): its kernels against losses.py, run by Triton's
interpreter on CPU tensors (CI has no GPU; tests/test_cuda.py trains with them on one)."""
from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

from vaelab import fused_loss
from vaelab import train as train_mod
from vaelab.config import ConfigError, validate
from vaelab.losses import elbo_terms, vae_loss
from vaelab.models import VAE
from vaelab.train import build_model, fused_loss_model, train

from tests.conftest import compose_cfg
from tests.test_workflow import TINY

# numpy's exp, for the interpreter's, warns where sigmoid(l) = 1 / (1 + exp(-l)) meets l < -88:
# exp overflows to inf and the sigmoid is 0, as on a GPU
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")


@pytest.fixture
def kernels_on_cpu(monkeypatch):
    """fused_loss's kernels built under Triton's interpreter, which runs them on CPU tensors."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when a kernel is decorated: a fresh copy of their module
    spec = importlib.util.spec_from_file_location("interpreted_kernels", Path(fused_loss.__file__).with_name(
        "_fused_kernels.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    kernels = module.reparam_kl_fwd, module.reparam_kl_bwd, module.recon_fwd, module.recon_bwd
    # tl.sum and tl.zeros are jit functions of triton's own, made when triton was imported (by
    # torch, without TRITON_INTERPRET), which the interpreter cannot call: their interpreted
    # forms (tl.sum's reduction is the one the interpreter does with numpy)
    import triton.language as tl
    monkeypatch.setattr(tl, "sum", lambda x, axis=None: tl.reduce(x, axis, tl.standard._sum_combine))
    monkeypatch.setattr(tl, "zeros", lambda shape, dtype: tl.full(shape, 0, dtype))
    monkeypatch.setattr(fused_loss, "_kernels", lambda: kernels)
    monkeypatch.setattr(fused_loss, "_BROKEN", None)
    fused_loss._kernels_work.cache_clear()
    yield kernels
    fused_loss._kernels_work.cache_clear()


def terms_and_grad(h, W, x, eps, recon, fused):
    """The loss terms of a toy decoder (z @ W) and the gradient of the encoder's output h,
    through losses.vae_loss or through the kernels; the KL of one dimension weighted apart, so
    the kl_per_dim output's gradient is checked too."""
    h.grad = None
    mu, logvar = h.chunk(2, dim=-1)  # strided halves, as MLPVAE.encode returns them
    if fused:
        z, kl_d, kl = fused_loss.ReparamKL.apply(mu, logvar, eps)
        t = elbo_terms(fused_loss.ReconMean.apply(z @ W, x, recon == "bce"), kl_d, kl, 0.7)
    else:
        z = mu + eps * torch.exp(0.5 * logvar)
        t = vae_loss(z @ W, x, mu, logvar, recon=recon, beta=0.7)
    (t["loss"] + 0.3 * t["kl_per_dim"][1]).backward()
    return {k: v.detach() for k, v in t.items()}, h.grad.clone()


# (batch, latent, pixels): the seed's sizes; more rows than one tile of 128 (partial sums); more
# pixels than one block of 1024; latent sizes that do not fill a tile of 16 columns
@pytest.mark.parametrize("B,L,D,recon", [(64, 256, 784, "mse"), (130, 5, 33, "bce"), (3, 40, 1100, "mse"),
                                         (3, 40, 1100, "bce")])
def test_kernels_compute_what_losses_py_does(kernels_on_cpu, B, L, D, recon):
    g = torch.Generator().manual_seed(B + L + D)
    h = (2 * torch.randn(B, 2 * L, generator=g)).requires_grad_()  # logvar from -6 to 6
    W = 3 * torch.randn(L, D, generator=g)  # logits large enough to saturate the sigmoid
    x = torch.rand(B, D, generator=g)
    x = (x > 0.5).float() if recon == "bce" else x
    eps = torch.randn(B, L, generator=g)
    want, want_grad = terms_and_grad(h, W, x, eps, recon, fused=False)
    got, got_grad = terms_and_grad(h, W, x, eps, recon, fused=True)
    assert want.keys() == got.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-5, msg=lambda m: f"{k}: {m}")
    # the same float32 arithmetic in another order: near cancellations (dlogvar's two terms) may
    # differ in their last bits, so errors are measured against the gradient's scale
    scale = want_grad.abs().max()
    assert scale > 0.1
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-6 * float(scale))


@pytest.mark.parametrize("name,constexprs", [
    ("reparam_kl_fwd", {}),
    *[("reparam_kl_bwd", dict(HAS_GZ=gz, HAS_GKD=gkd, HAS_GK=gk)) for gz in (True, False) for gkd in (True, False)
      for gk in (True, False)],
    *[("recon_fwd", dict(BCE=bce, BLOCK=b, D=d)) for bce in (True, False) for b, d in ((64, 33), (1024, 784))],
    *[("recon_bwd", dict(BCE=bce, BLOCK=b)) for bce in (True, False) for b in (64, 1024)],
])
def test_the_kernels_compile_for_a_gpu(name, constexprs, tmp_path, monkeypatch):
    """What the interpreter does not check (it runs the kernels as Python over numpy): that
    Triton's compiler takes them, down to a cubin for an H100/H200 (sm_90), with no GPU here."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from vaelab import _fused_kernels

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    kernel = getattr(_fused_kernels, name)
    if name.startswith("reparam"):
        constexprs = {"ROWS": fused_loss.ROWS, "COLS": fused_loss.COLS, **constexprs}
    # the arguments as the launches in fused_loss.py pass them: float32 tensors, a float, ints
    signature = {a: "constexpr" if a in constexprs else "*fp32" if a.endswith("_ptr") else
                 "fp32" if a in ("divisor", "batch") else "i32" for a in kernel.arg_names}
    assert set(constexprs) <= set(signature) and "constexpr" in signature.values()
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs={
        (kernel.arg_names.index(a),): v for a, v in constexprs.items()}),
        target=GPUTarget("cuda", 90, 32))
    assert compiled.asm["cubin"]


def test_a_run_with_the_kernels_trains_as_one_with_torch_ops(kernels_on_cpu, tiny_mnist, tmp_path, monkeypatch):
    """The whole training loop on loss.impl=triton: the same draws, the same losses and weights
    up to float rounding. (validate() refuses the kernels off CUDA: here they run interpreted.)"""
    monkeypatch.setattr(train_mod, "validate", lambda cfg: validate(cfg, here=False))
    monkeypatch.setattr(train_mod, "kernels_unusable", lambda device: None)
    calls = []
    real = fused_loss.fused_vae_loss
    monkeypatch.setattr(train_mod, "fused_vae_loss", lambda *a: calls.append(1) or real(*a))
    # (2 epochs of 2 steps: the interpreter takes ~0.2 s a step)
    over = [f"data.root={tiny_mnist}", *TINY, "trainer.epochs=2", "trainer.batch_size=96", "loss.kl_warmup_steps=3",
            "loss.beta=2"]
    for impl in ("torch", "triton"):
        train(compose_cfg([*over, f"loss.impl={impl}"]), tmp_path / impl)
    assert len(calls) == 2 * 2  # every step of 2 epochs of 192 images in batches of 96 took the kernels
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("torch", "triton"))
    for k in ("train_loss", "val_loss", "val_kl", "active_units"):
        assert mb[k] == pytest.approx(ma[k], rel=1e-4), k
    from tests.test_cuda import assert_same_weights
    assert_same_weights(tmp_path / "torch", tmp_path / "triton", rtol=1e-4, atol=1e-5)


def test_the_probe_launches_the_variants_training_uses(kernels_on_cpu, monkeypatch):
    """kernels_work compiles what the model's steps launch (Triton compiles a variant per width
    and alignment), not a toy shape's: its first launch is then the training's compile."""
    shapes = []
    for fn in (fused_loss.ReparamKL, fused_loss.ReconMean):
        real = fn.apply
        monkeypatch.setattr(fn, "apply", lambda *a, real=real: shapes.append((a[0].shape, a[0].stride())) or real(*a))
    cfg = compose_cfg(["loss.impl=triton", "device=cpu", "model.size=small", "latent_size=8"])
    monkeypatch.setattr(train_mod, "kernels_unusable", lambda device: None)
    assert fused_loss_model(cfg, build_model(cfg), torch.device("cpu")) is not None
    # mu as the encoder's half of one (B, 16) output, then the logits of 784 pixels
    assert shapes == [((2, 8), (16, 1)), ((2, 784), (784, 1))]


def test_kernels_that_fail_to_build_leave_the_loss_to_torch(kernels_on_cpu, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("Triton's launcher\nfailed to compile: no C compiler")
    monkeypatch.setattr(fused_loss, "_kernels", lambda: [type("K", (), {"__getitem__": lambda s, g: broken})()] * 4)
    cfg = compose_cfg(["loss.impl=triton", "device=cpu", "model.size=small", "latent_size=4"])
    monkeypatch.setattr(train_mod, "kernels_unusable", lambda device: None)
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        assert fused_loss_model(cfg, build_model(cfg), torch.device("cpu")) is None
        assert fused_loss_model(cfg, build_model(cfg), torch.device("cpu")) is None
    warned = [r.getMessage() for r in caplog.records if "loss.impl=triton" in r.getMessage()]
    assert len(warned) == 1 and "no C compiler" in warned[0] and "loss.impl=torch" in warned[0]


def test_what_the_kernels_cannot_take_is_refused_in_one_line(kernels_on_cpu, monkeypatch):
    def refused(*overrides, here=True):
        with pytest.raises(ConfigError) as e:
            validate(compose_cfg(["loss.impl=triton", *overrides]), here=here)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "CUDA device" in refused("device=cpu") and "loss.impl=torch" in refused("device=cpu")
    assert "trainer.amp=bf16" in refused("trainer.amp=bf16", here=False)
    assert "trainer.compile=true" in refused("trainer.compile=true", here=False)
    validate(compose_cfg(["loss.impl=triton", "device=cpu"]), here=False)  # a saved run, read elsewhere

    class OwnSampling(VAE):  # a model whose forward draws z its own way: the kernels would not
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 2)

        def forward(self, x):
            return x, x, x
    monkeypatch.setattr(train_mod, "kernels_unusable", lambda device: None)
    with pytest.raises(ConfigError, match="OwnSampling has its own forward: use loss.impl=torch"):
        fused_loss_model(compose_cfg(["loss.impl=triton"]), OwnSampling(), torch.device("cpu"))
    monkeypatch.setattr(train_mod, "kernels_unusable", lambda device: "its kernels need a CUDA device")
    with pytest.raises(ConfigError, match="^loss.impl=triton: its kernels need a CUDA device; loss.impl=torch"):
        fused_loss_model(compose_cfg(["loss.impl=triton"]), build_model(compose_cfg()), torch.device("cpu"))


@pytest.mark.parametrize("overrides,device,fused", [
    ([], "cuda", True),  # the default, auto, in the default CUDA-graph step
    (["trainer.cuda_graph=false"], "cuda", False),  # an eager step: not timed with the kernels
    (["trainer.amp=bf16"], "cuda", False),  # what loss.impl=triton is refused for: torch, silently
    (["trainer.compile=true"], "cuda", False),
    ([], "cpu", False),
    (["loss.impl=torch"], "cuda", False),
    (["loss.impl=triton", "trainer.cuda_graph=false"], "cuda", True),  # as asked, graph or not
])
def test_auto_takes_the_kernels_in_a_float32_cuda_graph_step_only(overrides, device, fused, monkeypatch):
    monkeypatch.setattr(train_mod, "kernels_unusable", lambda device: None)
    monkeypatch.setattr(train_mod, "kernels_work", lambda *a, **k: True)
    cfg = compose_cfg(["model.size=small", "latent_size=4", *overrides])
    model = build_model(cfg)
    assert (fused_loss_model(cfg, model, torch.device(device)) is model) is fused


def test_auto_leaves_to_torch_what_triton_is_refused_for(monkeypatch, caplog):
    class OwnSampling(VAE):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 2)

        def reparameterize(self, mu, logvar):
            return mu
    cuda = torch.device("cuda")
    monkeypatch.setattr(train_mod, "kernels_work", lambda *a, **k: pytest.fail("auto probed the kernels"))
    monkeypatch.setattr(train_mod, "kernels_unusable", lambda device: None)
    auto = compose_cfg(["loss.impl=auto"])
    assert fused_loss_model(auto, OwnSampling(), cuda) is None
    monkeypatch.setattr(train_mod, "kernels_unusable", lambda device: "the triton package is not installed")
    assert fused_loss_model(auto, build_model(auto), cuda) is None
    with pytest.raises(ConfigError, match="^loss.impl=triton: the triton package is not installed"):
        fused_loss_model(compose_cfg(["loss.impl=triton"]), build_model(compose_cfg()), cuda)


def test_kernels_that_fail_under_auto_are_named_as_auto_in_the_warning(kernels_on_cpu, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("no C compiler")
    monkeypatch.setattr(fused_loss, "_kernels", lambda: [type("K", (), {"__getitem__": lambda s, g: broken})()] * 4)
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        assert not fused_loss.kernels_work(torch.device("cpu"), setting="loss.impl=auto")
    assert "loss.impl=auto: the Triton kernels failed to build or launch (no C compiler)" in caplog.text
