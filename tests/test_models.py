"""models/linear.py: the oneDNN path computes what nn.Linear computes, and only runs where it may."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from vaelab.models import MLPVAE
from vaelab.models import linear as linear_mod
from vaelab.models.linear import Linear

needs_onednn = pytest.mark.skipif(not linear_mod.HAVE_ONEDNN, reason="torch built without oneDNN")


@pytest.fixture
def onednn_calls(monkeypatch):
    """Count the calls that reach oneDNN, so a test can't pass by silently using F.linear."""
    calls = []
    real = linear_mod._onednn_linear

    def counted(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(linear_mod, "_onednn_linear", counted)
    return calls


def _pair(in_f: int, out_f: int, bias: bool) -> tuple[nn.Linear, Linear]:
    torch.manual_seed(0)
    ref = nn.Linear(in_f, out_f, bias=bias)
    new = Linear(in_f, out_f, bias=bias, impl="onednn")
    new.load_state_dict(ref.state_dict())
    return ref, new


@needs_onednn
@pytest.mark.parametrize("shape", [(64, 784), (5, 3, 784)])  # a batch; IWAE's (k, B, D)
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_nn_linear_and_its_gradients(shape, bias, onednn_calls):
    ref, new = _pair(784, 512, bias)
    x = (torch.rand(shape) * (torch.rand(shape) < 0.3)).requires_grad_()  # MNIST-like zeros
    g = torch.randn(*shape[:-1], 512)
    out = []
    for m in (ref, new):
        xi = x.detach().clone().requires_grad_()
        y = m(xi)
        y.backward(g)
        out.append([y, xi.grad] + [p.grad for p in m.parameters()])
    assert len(onednn_calls) == 2  # the forward product and the input gradient
    for a, b in zip(*out):
        assert a.shape == b.shape
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-5 * a.abs().max().item())


@needs_onednn
def test_onednn_linear_without_grad_and_for_a_frozen_input(onednn_calls):
    ref, new = _pair(256, 512, True)
    z = torch.randn(64, 256)
    with torch.no_grad():
        assert torch.allclose(new(z), ref(z), atol=1e-5)
    y = new(z)  # z needs no grad, the weights do: no input-gradient product
    y.sum().backward()
    ref(z).sum().backward()
    assert torch.allclose(new.weight.grad, ref.weight.grad, atol=1e-4)
    assert len(onednn_calls) == 2


@needs_onednn
def test_onednn_linear_trains_a_bias_alone_and_refuses_double_backward(onednn_calls):
    ref, new = _pair(784, 512, True)
    x = torch.rand(64, 784)
    for m in (ref, new):
        m.weight.requires_grad_(False)  # e.g. a frozen layer with a trainable bias
        m(x).pow(2).sum().backward()
    assert new.bias.grad is not None and torch.allclose(new.bias.grad, ref.bias.grad, rtol=1e-5)
    xg = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(new(xg).pow(2).sum(), xg, create_graph=True)
    with pytest.raises(RuntimeError):
        gx.sum().backward()


@pytest.mark.parametrize("case", ["float64", "bf16_autocast", "aten", "small"])
def test_falls_back_to_f_linear_off_the_onednn_path(case, onednn_calls):
    ref, new = _pair(784, 512, True)
    x = torch.randn(64, 784)
    if case == "small":  # below ONEDNN_MIN_MACS oneDNN's fixed cost per call loses
        ref, new = _pair(200, 200, True)
        x = torch.randn(20, 200)
    if case == "float64":
        ref, new, x = ref.double(), new.double(), x.double()
    if case == "aten":
        new.impl = "aten"
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if case == "bf16_autocast" else torch.no_grad()
    with ctx:
        y, y_ref = new(x), ref(x)
    assert y.dtype == y_ref.dtype and torch.equal(y, y_ref)  # the very same op: bit-identical
    assert onednn_calls == []


def test_bad_impl_is_refused():
    with pytest.raises(ValueError, match="allowed: aten, onednn"):
        Linear(3, 4, impl="mkl")


@needs_onednn
def test_mlpvae_linear_choice_keeps_weights_interchangeable():
    torch.manual_seed(0)
    a = MLPVAE(16, hidden=[64], input_dim=784, linear="aten")
    b = MLPVAE(16, hidden=[64], input_dim=784, linear="onednn")
    b.load_state_dict(a.state_dict())  # same keys and shapes: checkpoints load either way
    x = torch.rand(128, 784)  # (8 rows were below ONEDNN_MIN_MACS: both ran F.linear)
    from vaelab.models.linear import HAVE_ONEDNN
    assert b.encoder[0]._use_onednn(x) is HAVE_ONEDNN and not a.encoder[0]._use_onednn(x)
    mu_a, lv_a = a.encode(x)
    mu_b, lv_b = b.encode(x)
    assert torch.allclose(mu_a, mu_b, atol=1e-5) and torch.allclose(lv_a, lv_b, atol=1e-5)
    assert "impl=onednn" in repr(b) and "impl" not in repr(a)


def test_the_configs_model_choices_are_the_ones_mlp_builds():
    """config.py (no torch) lists what the schema allows; models/mlp.py builds them: a value
    added to one alone would pass the config and fail at build, or never be allowed."""
    from vaelab.config import Activation, ModelSize
    from vaelab.models import mlp

    assert {a.value for a in Activation} == set(mlp._ACTIVATIONS)
    assert {s.value for s in ModelSize} == set(mlp.SIZES)


def test_glorot_init_is_burda_et_als_and_torch_the_seeds():
    """model.init=glorot: Glorot & Bengio (2010)'s U(+-sqrt(6 / (fan_in + fan_out))) weights and zero
    biases, as Burda et al. (2016) initialise (review: experiment=iwae_paper_vae used PyTorch's, 1.7-2.2x
    narrower, with biases); the head's mu and logvar halves with fan_out latent_size each, as two layers."""
    import math

    from vaelab.config import ModelInit, compose_config
    from vaelab.train import build_model

    assert {i.value for i in ModelInit} == {"torch", "glorot"}
    torch.manual_seed(0)
    m = MLPVAE(50, hidden=[200, 200], activation="tanh", init="glorot")
    for name, fan_in, fan_out in (("encoder.0", 784, 200), ("encoder.2", 200, 200), ("decoder.0", 50, 200),
                                  ("decoder.4", 200, 784)):
        w = dict(m.named_parameters())[f"{name}.weight"].detach()
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert 0.95 * bound < w.abs().max() <= bound and abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound, name
    head = m.head.weight.detach()
    for half in head.chunk(2):
        assert 0.95 * math.sqrt(6 / 250) < half.abs().max() <= math.sqrt(6 / 250)
    assert all(float(p.detach().abs().max()) == 0 for n, p in m.named_parameters() if n.endswith("bias"))
    torch.manual_seed(0)
    plain = MLPVAE(50, hidden=[200, 200], activation="tanh")  # (the default: nn.Linear's, biases too)
    assert plain.encoder[0].weight.abs().max() <= 1 / math.sqrt(784) and plain.encoder[0].bias.abs().max() > 0
    cfg = compose_config(["experiment=iwae_paper_vae"])
    assert cfg.model.init == ModelInit.glorot
    assert float(build_model(cfg).head.bias.detach().abs().max()) == 0
    with pytest.raises(ValueError, match="init='xavier': torch or glorot"):
        MLPVAE(2, init="xavier")
