"""optim.impl=flat (vaelab.optim.FlatAdam): Adam's rule, torch's checkpoints, vaelab's runs."""
from __future__ import annotations

import copy

import pytest
import torch

from vaelab import checkpoint as ckpt_io
from vaelab import optim
from vaelab.config import ConfigError, validate
from vaelab.optim import FlatAdam
from vaelab.train import Interrupted, build_model, build_optimizer, train

from tests.conftest import compose_cfg, signal_at_step
from tests.test_workflow import TINY, assert_same_run, vaelab


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def train_steps(model, opt, n: int, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(16, 7, generator=g)
        opt.zero_grad(set_to_none=True)
        model(x).pow(2).mean().backward()
        opt.step()


@pytest.fixture
def triton_on_cpu(monkeypatch):
    """optim.impl=triton's kernel run by Triton's interpreter on CPU tensors (CI has no GPU):
    `triton_adam(params, **kw)` is a FlatAdam whose update is that kernel."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    kernel = optim._triton_kernel.__wrapped__()  # built under the interpreter
    monkeypatch.setattr(optim, "_triton_kernel", lambda: kernel)
    monkeypatch.setattr(optim, "_TRITON_BROKEN", None)

    def triton_adam(params, **kw):
        opt = FlatAdam(params, **kw)
        opt.kernel = "triton"  # (the constructor would refuse a CPU tensor)
        return opt
    return triton_adam


@pytest.mark.parametrize("kernel", ["torch", "triton"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_flat_adam_follows_torch_adam(wd, kernel, request):
    new = request.getfixturevalue("triton_on_cpu") if kernel == "triton" else FlatAdam
    a, b = net(), net()
    ta = torch.optim.Adam(a.parameters(), lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd, foreach=False)
    fb = new(b.parameters(), lr=1e-2, betas=(0.8, 0.95), eps=1e-6, weight_decay=wd)
    train_steps(a, ta, 30)
    train_steps(b, fb, 30)
    assert fb.kernel == kernel and fb._triton_ran == (kernel == "triton")
    for p0, pa, pb in zip(net().parameters(), a.parameters(), b.parameters()):
        assert (pa - p0).abs().max() > 0.05  # 30 steps of lr 1e-2 moved every tensor
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6)
    # the parameters are views into the one flat tensor that the update writes
    assert all(p.untyped_storage().data_ptr() == fb.flat.untyped_storage().data_ptr() for p in b.parameters())


@pytest.mark.parametrize("kernel", ["torch", "triton"])
def test_flat_adam_bias_corrections_carry_no_float32_error(kernel, request):
    """1 - 0.999^t in float32 is ~1.3e-5 small at t=1: every update would be ~6.5e-6 too large."""
    new = request.getfixturevalue("triton_on_cpu") if kernel == "triton" else FlatAdam
    p32 = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    a, b = p32.clone().requires_grad_(), p32.clone().requires_grad_()
    ta, fb = torch.optim.Adam([a], lr=1e-3, foreach=False), new([b], lr=1e-3)  # forloop: float64 scalars
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        a.grad = torch.randn(100_000, generator=g)
        b.grad = a.grad.clone()
        before = a.detach().clone(), b.detach().clone()
        ta.step()
        fb.step()
    ua, ub = (a.detach() - before[0]).double(), (b.detach() - before[1]).double()
    big = ua.abs() > 1e-4  # updates well above the weights' float32 spacing
    assert abs((ub[big] / ua[big] - 1).mean().item()) < 1e-6  # rounding averages out; a scale error would not


@pytest.mark.parametrize("direction", ["flat-to-fused", "fused-to-flat", "triton-to-fused", "fused-to-triton"])
def test_checkpoints_move_between_flat_and_torch_adam(direction, request):
    """A run saved with one optim.impl resumes with the other and continues as one that never switched."""
    kw = dict(lr=1e-2, betas=(0.9, 0.999))
    first, then = direction.split("-to-")
    triton_adam = request.getfixturevalue("triton_on_cpu") if "triton" in direction else None
    new = {"flat": lambda m: FlatAdam(m.parameters(), **kw),
           "triton": lambda m: triton_adam(m.parameters(), **kw),
           "fused": lambda m: torch.optim.Adam(m.parameters(), fused=True, **kw)}
    a = net()
    oa = new[first](a)
    train_steps(a, oa, 5)
    saved_model, saved_opt = copy.deepcopy(a.state_dict()), copy.deepcopy(oa.state_dict())
    assert all(s["step"].item() == 5 for s in saved_opt["state"].values())
    train_steps(a, oa, 5, seed=2)  # the run that never switched

    b = net()
    b.load_state_dict(saved_model)
    ob = new[then](b)
    ob.load_state_dict(saved_opt)
    train_steps(b, ob, 5, seed=2)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6)
    assert all(s["step"].item() == 10 for s in ob.state_dict()["state"].values())


def test_the_triton_kernel_after_a_load_uses_the_loaded_step_and_this_configs_betas(triton_on_cpu):
    """Its bias corrections come from running products b^t kept beside the step count: a loaded
    checkpoint (and betas changed on resume) must set them as torch's Adam would compute them."""
    kw = dict(lr=1e-2, betas=(0.9, 0.99))
    a, b = net(), net()
    fa, fb = FlatAdam(a.parameters(), **kw), triton_on_cpu(b.parameters(), **kw)
    train_steps(a, fa, 4)
    train_steps(b, fb, 4)
    saved = copy.deepcopy(fb.state_dict())
    saved["param_groups"][0]["betas"] = (0.8, 0.95)  # as _under_config does for `vaelab resume optim.betas=...`
    fa.load_state_dict(saved)
    fb.load_state_dict(saved)
    torch.testing.assert_close(fb.sched, torch.tensor([4.0, 0.8 ** 4, 0.95 ** 4], dtype=torch.float64))
    train_steps(a, fa, 3, seed=2)
    train_steps(b, fb, 3, seed=2)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6)


def test_a_triton_kernel_that_fails_to_build_leaves_the_update_to_torch_kernels(triton_on_cpu, monkeypatch, caplog):
    class Broken:  # kernel[grid](...) compiles, then launches
        def __getitem__(self, grid):  # (Triton's compile errors give the source position first, the reason last)
            raise RuntimeError("at 19:30:\n    p = p - lr\n\nFailed to find C compiler. Please specify via CC "
                               "environment variable.")
    monkeypatch.setattr(optim, "_triton_kernel", Broken)
    a, b = net(), net()
    fa, fb = FlatAdam(a.parameters()), triton_on_cpu(b.parameters())
    with caplog.at_level("WARNING", logger="vaelab"):
        train_steps(a, fa, 3)
        train_steps(b, fb, 3)
    assert fb.kernel == "torch"
    assert [r.getMessage() for r in caplog.records] == [
        "optim.impl=triton: the Triton kernel failed to build or launch (Failed to find C compiler. Please specify "
        "via CC environment variable.); flat Adam's torch kernels do the update instead (optim.impl=flat)"]
    for pa, pb in zip(a.parameters(), b.parameters()):  # no step lost or taken twice
        torch.testing.assert_close(pb, pa, rtol=0, atol=0)
    # The process tries once. The warm-up thread's throwaway optimizer is the first to launch
    # the kernel: the run's own, built after it, must take the torch kernels, not refuse.
    monkeypatch.setattr(optim, "triton_unusable", lambda *a: None)  # as on a CUDA device
    assert FlatAdam(net().parameters(), kernel="triton").kernel == "torch"
    assert len(caplog.records) == 1


def test_a_triton_kernel_that_ran_then_fails_raises(triton_on_cpu, monkeypatch):
    """Only a kernel that never ran is a build problem to fall back from; a later failure is the
    device's, and the run must stop on it."""
    b = net()
    fb = triton_on_cpu(b.parameters())
    train_steps(b, fb, 1)

    class Broken:
        def __getitem__(self, grid):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
    monkeypatch.setattr(optim, "_triton_kernel", Broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        train_steps(b, fb, 1)
    assert fb.kernel == "triton"


def test_auto_takes_the_triton_kernel_where_it_can_run(monkeypatch):
    import vaelab.build as build

    monkeypatch.setattr(optim, "_TRITON_BROKEN", None)
    for where in (optim, build):  # as on a CUDA device with Triton
        monkeypatch.setattr(where, "triton_unusable", lambda *a: None)
    cfg = compose_cfg([])
    assert build_optimizer(cfg, build_model(cfg), capturable=True).kernel == "triton"
    assert type(build_optimizer(cfg, build_model(cfg), capturable=False)) is torch.optim.Adam  # eager: fused
    monkeypatch.setattr(optim, "_TRITON_BROKEN", "Failed to find C compiler")  # failed earlier in this process
    for impl in ("auto", "triton"):
        cfg = compose_cfg([f"optim.impl={impl}"])
        assert build_optimizer(cfg, build_model(cfg), capturable=True).kernel == "torch"


def test_optim_impl_triton_is_refused_off_cuda_with_the_reason():
    with pytest.raises(ConfigError, match=r"^optim.impl=triton: the Triton kernel needs a CUDA device \(device=cpu "
                                          r"is cpu here\); optim.impl=flat is the same update in torch kernels$"):
        validate(compose_cfg(["optim.impl=triton", "device=cpu"]))
    cfg = compose_cfg(["optim.impl=triton"])  # (build_optimizer says the same, for callers without validate)
    with pytest.raises(ConfigError, match=r"^optim.impl=triton: it needs a CUDA device \(this run's is cpu\)"):
        build_optimizer(cfg, build_model(cfg), capturable=True)
    assert optim.triton_unusable(torch.device("cuda"), torch.float64) == (
        "its kernel is written for float32 parameters (these are float64)")


def test_flat_adam_loads_into_the_tensors_it_was_built_with():
    """A CUDA graph captured before a load keeps reading the tensors it was captured with."""
    fb = FlatAdam(net().parameters(), betas=(0.9, 0.99))
    before = {k: getattr(fb, k).data_ptr() for k in ("flat", "exp_avg", "exp_avg_sq", "grad", "sched", "_decay")}
    saved = fb.state_dict()
    saved["param_groups"][0]["betas"] = (0.8, 0.95)
    fb.load_state_dict(saved)
    assert {k: getattr(fb, k).data_ptr() for k in before} == before
    assert fb._decay.tolist() == [1.0, 0.8, 0.95]


def test_flat_adam_loads_a_state_from_before_any_step():
    a = net()
    empty = torch.optim.Adam(a.parameters()).state_dict()
    b = net()
    fb = FlatAdam(b.parameters())
    train_steps(b, fb, 2)
    fb.load_state_dict(empty)  # back to the start: no moments, step 0
    assert fb.steps.item() == 0 and not fb.exp_avg.any() and not fb.exp_avg_sq.any()
    fa = torch.optim.Adam(a.parameters(), foreach=False)
    b.load_state_dict(a.state_dict())
    train_steps(a, fa, 3)
    train_steps(b, fb, 3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-6)


def test_flat_adam_refuses_state_it_cannot_keep():
    m = net()
    m[2].weight.requires_grad_(False)
    torch_opt = torch.optim.Adam(m.parameters(), foreach=False)
    train_steps(m, torch_opt, 2)  # no moments for the frozen weight
    with pytest.raises(ValueError, match=r"^optim.impl=flat: .*moments for some parameters only.*optim.impl=fused$"):
        FlatAdam(net().parameters()).load_state_dict(torch_opt.state_dict())


def test_auto_keeps_fused_adam_for_a_model_with_frozen_parameters():
    cfg = compose_cfg([])
    model = build_model(cfg)
    next(model.parameters()).requires_grad_(False)
    assert type(build_optimizer(cfg, model, capturable=True)) is torch.optim.Adam


def test_flat_adam_that_auto_chose_says_so_and_names_the_parameter():
    """A user who never set optim.impl must not be told off for optim.impl=flat."""
    cfg = compose_cfg([])
    model = build_model(cfg)
    opt = build_optimizer(cfg, model, capturable=True)  # (flat Adam in torch kernels: no Triton on a CPU)
    assert type(opt) is FlatAdam
    model.encoder[0].weight.grad = torch.zeros_like(model.encoder[0].weight)
    with pytest.raises(ConfigError, match=r"^optim.impl=auto \(flat Adam, for the CUDA-graph step\): parameters "
                                          r"encoder.0.bias, .* got no gradient"):
        opt.step()


def test_flat_adam_names_the_parameters_without_a_gradient():
    m = net()
    opt = FlatAdam(m.parameters())
    m[0](torch.randn(2, 7)).sum().backward()  # the second layer takes no part
    with pytest.raises(ConfigError, match=r"^optim.impl=flat: parameters 2, 3 got no gradient.*optim.impl=fused"):
        opt.step()


def test_flat_adam_refuses_parameters_moved_after_it_was_built():
    m = net()
    opt = FlatAdam(m.parameters())
    m.double()  # new tensors: the flat update would no longer reach the model
    m(torch.randn(2, 7, dtype=torch.float64)).sum().backward()
    with pytest.raises(RuntimeError, match=r"moved or replaced after the optimizer was built"):
        opt.step()


def test_a_flat_run_interrupted_then_resumed_is_bit_identical(tiny_mnist, tmp_path, monkeypatch, capsys):
    cfg = [f"data.root={tiny_mnist}", *TINY, "optim.impl=flat"]
    straight = tmp_path / "straight"
    train(compose_cfg(cfg), straight)
    run = tmp_path / "run"
    with signal_at_step(monkeypatch, 8), pytest.raises(Interrupted):  # in epoch 2
        train(compose_cfg(cfg), run)
    assert vaelab(["resume", run]) == 0
    assert_same_run(run, straight)


def test_a_fused_run_carries_on_with_flat_adam(tiny_mnist, tmp_path):
    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1"]), run)
    assert vaelab(["resume", run, "trainer.epochs=2", "optim.impl=flat"]) == 0
    ck = ckpt_io.load(run / "checkpoints" / "last.pt")
    assert ck["config"]["optim"]["impl"] == "flat"
    assert {s["step"].item() for s in ck["optimizer"]["state"].values()} == {ck["state"]["step"]} == {12}


def test_auto_is_flat_adam_for_a_graphed_step_and_fused_adam_otherwise():
    cfg = compose_cfg([])
    assert cfg.optim.impl == "auto"
    flat = build_optimizer(cfg, build_model(cfg), capturable=True)
    assert type(flat) is FlatAdam and flat.kernel == "torch"  # triton only on a CUDA device
    opt = build_optimizer(cfg, build_model(cfg))  # the eager step: one fused kernel beats FlatAdam's launches
    assert type(opt) is torch.optim.Adam and opt.defaults["fused"]
