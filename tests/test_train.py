"""End-to-end: a tiny run on generated IDX files leaves a complete run directory."""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vaelab import checkpoint as ckpt_io
from vaelab.config import ConfigError
from vaelab.data import DataError
from vaelab.train import NonFiniteLoss, build_model, build_optimizer, train

from tests.conftest import FAST, compose_cfg


def _events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0,
                                                        "histograms": 0})
    acc.Reload()
    return acc


def test_tiny_run_writes_everything(make_cfg, tmp_path):
    cfg = make_cfg(["latent_size=4", "model.size=small", "logger.histograms=true"])
    metrics = train(cfg, tmp_path)

    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("train_loss", "val_loss", "val_recon", "val_kl", "active_units", "epochs", "steps",
                "examples_seen", "samples_per_s"):
        assert key in saved, key
    assert saved == json.loads(json.dumps(metrics))
    assert saved["epochs"] == 2 and saved["examples_seen"] == 2 * (256 - 64)
    assert saved["steps"] == 2 * 6  # 192 images / batch 32

    acc = _events(tmp_path)
    tags = acc.Tags()
    for tag in ("train/loss", "train/recon", "train/kl", "train/beta", "epoch/train_loss", "epoch/val_loss",
                "epoch/val_recon", "epoch/val_kl", "epoch/active_units", "epoch/lr", "epoch/samples_per_s",
                "hparams/val_loss", "hparams/active_units"):
        assert tag in tags["scalars"], tag
    # x-axis = examples seen
    assert [e.step for e in acc.Scalars("epoch/val_loss")] == [192, 384]
    assert {"samples", "reconstructions"} <= set(tags["images"])
    assert "latent/kl_per_dim" in tags["histograms"]
    # the KL of each dimension, by index, at the epochs that keep sample PNGs (numbered checkpoints, the last)
    assert [e.step for e in acc.Images("latent/kl_by_dim")] == [384]
    plugins = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in plugins and "_hparams_/session_start_info" in plugins
    assert any(t.startswith("config") for t in tags["tensors"])  # the config as text

    for name in ("last.pt", "best.pt"):
        ck = ckpt_io.load(tmp_path / "checkpoints" / name)  # weights_only=True
        model = build_model(cfg)
        model.load_state_dict(ck["model"])
        assert isinstance(ck["config"], dict) and ck["config"]["latent_size"] == 4
    assert (tmp_path / "samples" / "samples_epoch0002.png").exists()
    ev = json.loads((tmp_path / "eval.json").read_text())
    # every inactive dimension, not only those the traversals show (dead_dims: review)
    assert ev["inactive_dims"] == [i for i, v in enumerate(ev["mean_variance_per_dim"]) if v <= 0.01]
    assert len(ev["inactive_dims"]) == ev["latent_size"] - ev["active_units"]
    assert (tmp_path / "train.log").read_text().count("epoch 2/2") == 1


def test_kl_warmup_logs_the_mean_beta_of_each_interval(make_cfg, tmp_path):
    cfg = make_cfg(["latent_size=4", "loss.beta=4", "loss.kl_warmup_steps=10", "trainer.final_eval=false"])
    train(cfg, tmp_path)
    betas = [e.value for e in _events(tmp_path).Scalars("train/beta")]
    # logged after step 2: the mean of the betas steps 0 and 1 took (0 and 0.4), as train/loss mixes them
    assert betas[0] == pytest.approx((0 + 4 * 1 / 10) / 2)
    assert betas[1] == pytest.approx((4 * 2 / 10 + 4 * 3 / 10) / 2)
    assert betas[-1] == pytest.approx(4.0)
    assert all(a <= b for a, b in zip(betas, betas[1:]))


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg(["latent_size=4", "trainer.final_eval=false", "trainer.epochs=1"])
    train(cfg, tmp_path)
    good = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    # Continue for another epoch with a learning rate that blows the weights up.
    cfg2 = make_cfg(["latent_size=4", "trainer.final_eval=false", "trainer.epochs=2", "optim.lr=1e30"])
    with pytest.raises(NonFiniteLoss, match="non-finite loss") as e:
        train(cfg2, tmp_path)
    assert (tmp_path / "checkpoints" / "last.pt").read_bytes() == good
    # the run's log says why it stopped, also for a train() from Python (review: it ended at its last epoch line)
    last = (tmp_path / "train.log").read_text().splitlines()[-1]
    assert last.endswith(f"[vaelab][ERROR] - {e.value}") and last.count("non-finite") == 1


def test_a_divergence_is_on_the_console_once_even_with_hydras_job_logging_disabled(tiny_mnist, tmp_path):
    """vaelab-train prints the stop reason on the console's log handler; with
    hydra/job_logging=disabled there is none, and the run exited 1 saying nothing."""
    r = subprocess.run([sys.executable, "-m", "vaelab.train", "hydra/job_logging=disabled", f"data.root={tiny_mnist}",
                        *FAST, "trainer.epochs=1", "latent_size=4", "optim.lr=1e30", "hydra.run.dir=run"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "TQDM_DISABLE": "1"})
    assert r.returncode == 1, r.stderr[-2000:]
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if "non-finite loss" in ln]
    assert len(lines) == 1 and lines[0].startswith("vaelab-train: error: non-finite loss"), r.stderr[-2000:]
    assert (tmp_path / "run" / "stopped.json").is_file()


def test_a_non_finite_loss_names_the_steps_it_can_have_come_from(make_cfg, tmp_path):
    """The loss is read every trainer.log_every steps (no host sync per step), so a loss that
    turned NaN was reported at the log point's step, up to log_every - 1 steps after the fact;
    now the message names the steps since the last read."""
    cfg = make_cfg(["latent_size=4", "trainer.final_eval=false", "trainer.epochs=1", "trainer.log_every=3"])
    m = train(cfg, tmp_path)
    per_epoch = m["steps"]
    assert per_epoch > 3
    cfg2 = make_cfg(["latent_size=4", "trainer.final_eval=false", "trainer.epochs=2", "trainer.log_every=3",
                     "optim.lr=1e30"])
    with pytest.raises(NonFiniteLoss) as e:
        train(cfg2, tmp_path)
    got = re.match(r"non-finite loss \S+ in steps (\d+)-(\d+) \(epoch 2: the loss is read every "
                   r"trainer.log_every=3 steps\); ", str(e.value))
    assert got, str(e.value)
    first, last = int(got[1]), int(got[2])
    assert first == max(per_epoch + 1, (last - 1) // 3 * 3 + 1) and (last % 3 == 0 or last == 2 * per_epoch)


def test_seed_experiment_runs_a_step(make_cfg, tmp_path):
    cfg = make_cfg(["experiment=seed", "data.val_size=0", "trainer.epochs=1", "trainer.batch_size=64",
                    "trainer.final_eval=false"])
    assert cfg.latent_size == 256 and cfg.trainer.batch_size == 64
    m = train(cfg, tmp_path)
    assert m["val_split"] == "test" and m["steps"] == 4  # all 256 images, batch 64
    assert torch.isfinite(torch.tensor(m["val_loss"]))


def _seed_script_step(model, opt, x):
    """One step as ../shared/reference/seed_vae.py takes it: the loss summed over the batch
    (squared error over pixels + KL), its Adam with torch's default eps, 1e-8."""
    mu, logvar = model.encode(x)
    recon = model.decode(model.reparameterize(mu, logvar))
    loss = torch.nn.functional.mse_loss(recon, x, reduction="sum") \
        - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_seed_experiment_takes_the_seed_scripts_adam_steps():
    """experiment=seed's per-example mean has gradients 64x smaller than the seed's per-batch
    sum; Adam ignores that scale but for eps, so the seed's eps 1e-8 is 1e-8/64 here. With it
    the weights follow the seed's to float rounding (7e-7 relative); with optim.eps=1e-8 they
    were 7e-3 apart after these 30 steps."""
    from vaelab.train import build_optimizer, forward_loss, make_step

    cfg = compose_cfg(["experiment=seed", "model.size=small", "latent_size=8"])
    torch.manual_seed(0)
    ours = build_model(cfg)
    seeds = build_model(cfg)
    seeds.load_state_dict(ours.state_dict())
    images = ((torch.rand(30 * 64, 784) < 0.2) * torch.randint(0, 256, (30 * 64, 784))).to(torch.uint8)
    step = make_step(forward_loss(ours, "mse"), ours, build_optimizer(cfg, ours), images, (torch.zeros(4),))
    seed_opt = torch.optim.Adam(seeds.parameters(), lr=1e-3)  # the seed's, defaults otherwise
    for i in range(30):
        idx = torch.arange(i * 64, (i + 1) * 64)
        torch.manual_seed(100 + i)  # the same eps for both
        step(idx, 1.0)
        torch.manual_seed(100 + i)
        _seed_script_step(seeds, seed_opt, images[idx].float() / 255)
    gap = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(ours.parameters(), seeds.parameters()))
    assert gap < 1e-5, gap


def test_compile_trains_through_a_short_last_batch(make_cfg, tmp_path, monkeypatch, caplog):
    """trainer.compile=true: the last batch of an epoch is shorter, which makes torch.compile
    retrace with a dynamic batch size; sampling eps must trace there too. Dynamo's tracing is
    what failed, so its eager backend (no inductor build, seconds not a minute) tests it."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    # 256 - 64 validation = 192 training images at batch 40: 4 full batches, then 32 rows
    with caplog.at_level(logging.INFO, logger="vaelab"):
        m = train(make_cfg(["latent_size=4", "trainer.epochs=2", "trainer.batch_size=40", "trainer.compile=true",
                            "trainer.final_eval=false"]), tmp_path)
    assert m["steps"] == 10 and torch.isfinite(torch.tensor(m["val_loss"]))
    # (epoch 1 ran silently for its compile, and its img/s counted it)
    assert "trainer.compile=true: torch.compile (mode=default) compiles the model in the first steps" in caplog.text


def test_bf16_autocast_runs_on_cpu_and_changes_the_numbers_only_slightly(make_cfg, tmp_path):
    common = ["latent_size=4", "trainer.epochs=1", "trainer.final_eval=false"]
    fp32 = train(make_cfg(common), tmp_path / "fp32")
    bf16 = train(make_cfg([*common, "trainer.amp=bf16"]), tmp_path / "bf16")
    assert bf16["train_loss"] != fp32["train_loss"]  # the products really ran in bf16
    assert bf16["train_loss"] == pytest.approx(fp32["train_loss"], rel=0.02)
    assert torch.isfinite(torch.tensor(bf16["val_loss"]))



def test_trainer_progress_false_turns_the_bars_off(make_cfg, tmp_path, capfd):
    """(In this process: whatever TQDM_DISABLE was when tqdm was imported, false is off.)"""
    train(make_cfg(["model.size=small", "trainer.epochs=1", "trainer.final_eval=false", "trainer.progress=false"]),
          tmp_path)
    assert "epoch 1/1:" not in capfd.readouterr().err


@pytest.mark.parametrize("progress, env, shown", [("true", None, True), ("true", "1", False)])
def test_progress_bars_follow_trainer_progress_and_tqdm_disable(tiny_mnist, tmp_path, progress, env, shown):
    """trainer.progress=true shows the bars, unless tqdm's own TQDM_DISABLE=1, which tqdm reads
    when it is imported (so: a fresh process), turns them off (an explicit disable=False used to
    override it)."""
    environ = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"} | ({"TQDM_DISABLE": env} if env else {})
    p = subprocess.run([sys.executable, "-m", "vaelab.train", f"data.root={tiny_mnist}", *FAST, "model.size=small",
                        "trainer.epochs=1", "trainer.final_eval=false", f"trainer.progress={progress}"],
                       cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert ("epoch 1/1:" in p.stderr) == shown


def test_a_ctrl_c_while_numpy_loads_stops_the_command():
    """vaelab-train's checks import torch first, and torch._C imports numpy from C++: a Ctrl-C
    at that moment left numpy half-made and the command going on (to fail at the end of an
    epoch, unsaved, with "module 'numpy' has no attribute 'void'"), or ended it in an ImportError
    traceback. `import vaelab` now loads numpy first, from Python, where a Ctrl-C stops it."""
    from importlib.metadata import version

    core = "numpy._core" if int(version("numpy").split(".")[0]) >= 2 else "numpy.core"
    script = f"""
import os, signal, sys
class CtrlC:  # a Ctrl-C as numpy's C code imports its first Python module
    def find_spec(self, name, path=None, target=None):
        if name == "{core}._exceptions":
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, CtrlC())
try:
    from vaelab.config import resolve_device
    resolve_device("cpu")  # (its import of torch: the first, as in vaelab-train's checks)
except KeyboardInterrupt:
    sys.exit(130)
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 130, p.stderr[-2000:]


def test_a_ctrl_c_in_the_first_seconds_is_not_hidden_by_the_clean_up(make_cfg, tmp_path, monkeypatch):
    """A Ctrl-C that cut the import of sympy short (torchvision and Adam import it as a run
    starts) left it half-made; train()'s clean-up then called torch.use_deterministic_algorithms,
    which imports torch._inductor and with it sympy: its AttributeError hid the stop, so a sweep
    printed a traceback, exited 1 and started every job left. The clean-up now leaves settings
    the run did not change alone."""
    def broken_import(*args, **kwargs):  # what the import of torch._inductor raised then
        raise AttributeError("module 'sympy' has no attribute 'logic'")

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "use_deterministic_algorithms", broken_import)
    monkeypatch.setattr("vaelab.train.load_data", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(["latent_size=2", "model.size=small"]), tmp_path)


# (bce on grey levels is a cross-entropy, not a likelihood: no -ELBO either)
@pytest.mark.parametrize("recon,binarize,name", [("mse", "none", "val loss"), ("bce", "dynamic", "val -elbo"),
                                                 ("bce", "static", "val -elbo"), ("bce", "none", "val loss")])
def test_the_epoch_line_calls_a_validation_number_a_negative_elbo_only_where_it_is_one(make_cfg, tmp_path, caplog,
                                                                                        recon, binarize, name):
    with caplog.at_level("INFO", logger="vaelab"):
        train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1", "trainer.final_eval=false",
                        f"loss.recon={recon}", f"data.binarize={binarize}"]), tmp_path)
    epoch = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1"))
    assert f"  {name} " in epoch
    # (mse: the numbers are nats less the Gaussian's constant, which the line said nothing of)
    assert (") nats/example less the constant 448.73  active" if recon == "mse" else ") nats/example  active") in epoch
    note = [r.getMessage() for r in caplog.records if "Gaussian decoder's constant" in r.getMessage()]
    assert note == (["loss.recon=mse: train and val losses leave out the Gaussian decoder's constant; add 448.73 "
                     "nats for the -ELBO (vaelab eval does)"] if recon == "mse" else [])
    assert re.search(r"  train loss [\d.]+  val ", epoch)  # (beta 1: the train loss is recon + KL too)


@pytest.mark.parametrize("extra, terms", [(["loss.beta=4"], "(recon + 4 x KL)"),
                                          (["loss.beta=0.5", "loss.kl_warmup_steps=100"],  # (the epoch's mean beta:
                                           "(recon + 0.0125 x KL, beta ramping up to 0.5 over 100 steps)"),  # review)
                                          (["loss.beta=0.5", "loss.kl_warmup_steps=2"],
                                           "(recon + 0.375 x KL, beta ramping up to 0.5 over 2 steps)")])
def test_the_epoch_line_says_what_a_train_loss_with_another_beta_sums(make_cfg, tmp_path, caplog, extra, terms):
    """Review: with loss.beta=4, 'train loss 53.619  val loss 46.229' compared two objectives unsaid."""
    with caplog.at_level("INFO", logger="vaelab"):
        train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1", "trainer.final_eval=false",
                        *extra]), tmp_path)
    epoch = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1"))
    assert re.search(rf"  train loss [\d.]+ {re.escape(terms)}  val loss ", epoch), epoch


@pytest.mark.parametrize("extra", [[], ["trainer.amp=bf16", "data.binarize=dynamic", "loss.recon=bce",
                                        "trainer.grad_clip=1.0", "optim.impl=flat"]],
                         ids=["seed", "bf16-dynamic-bce-clip-flat"])
def test_the_warm_up_runs_two_steps_and_leaves_the_generator_as_it_found_it(monkeypatch, extra):
    """train() runs warm_up in a thread on a CUDA device only (tests/test_cuda.py; CI has none).
    Here the function itself on the CPU, whose generator the reparameterisation then draws from:
    without putting it back, the run after the warm-up would draw other noise."""
    import vaelab.train as tr
    from tests.conftest import compose_cfg

    batches, make_step = [], tr.make_step

    def counted(*args, **kwargs):
        step = make_step(*args, **kwargs)
        return lambda idx, beta: (batches.append(idx.shape[0]), step(idx, beta))
    monkeypatch.setattr(tr, "make_step", counted)
    cfg = compose_cfg(["experiment=seed", *extra])
    torch.manual_seed(3)
    before = torch.get_rng_state()
    tr.warm_up(cfg, torch.device("cpu"), 784, graphed=False)
    assert batches == [64, 64]
    assert torch.equal(torch.get_rng_state(), before)
    tr.warm_up(cfg, torch.device("cpu"), 784, graphed=False, cancelled=lambda: True)  # the data failed to load
    assert batches == [64, 64]


def test_train_curves_count_every_step_also_past_the_last_log_point_of_an_epoch(make_cfg, tmp_path):
    """With 6 steps an epoch and trainer.log_every=4, each epoch's last steps make a point of
    their own at its end: weighted by their examples, the train/loss points of an epoch give
    its epoch/train_loss (the last 2 steps were dropped before)."""
    train(make_cfg(["latent_size=4", "model.size=small", "trainer.log_every=4"]), tmp_path)
    acc = _events(tmp_path)
    points = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [x for x, _ in points] == [128, 192, 256, 384]  # steps 4, 6 (epoch 1's end), 8, 12 (epoch 2's end)
    epochs = [e.value for e in acc.Scalars("epoch/train_loss")]
    for (start, end), expected in zip(((0, 192), (192, 384)), epochs):
        inside = [(x, v) for x, v in points if start < x <= end]
        xs = [start] + [x for x, _ in inside]
        weighted = sum((x - x0) * v for x0, (x, v) in zip(xs, inside)) / (end - start)
        assert weighted == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("override,message", [
    ("model._target_=foo.Bar", "model._target_=foo.Bar: Error loading 'foo.Bar'"),
    ("latent_size=1000000000", "the model (latent_size=1000000000, model.size=small) does not fit in memory: "),
    # a target that is not a vaelab model: Hydra's lines over a TypeError, or (dict) a traceback later
    *[(f"model._target_={t}", f"model._target_={t}: not a vaelab model: a subclass of vaelab.models.VAE")
      for t in ("torch.nn.Linear", "builtins.dict", "vaelab.models.VAE")],
])
def test_a_model_that_cannot_be_built_is_one_line(tiny_mnist, tmp_path, override, message):
    """Hydra's five lines (and, in a sweep, a job that failed after others had trained)."""
    cfg = compose_cfg([f"data.root={tiny_mnist}", "data.val_size=64", "model.size=small", override])
    with pytest.raises(ConfigError) as e:
        train(cfg, tmp_path / "r")
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    # the PYTHONPATH hint for a module of one's own that is not found, and only then (review: it was given
    # for a class misspelt in a module found, and for a package the module imports)
    assert str(e.value).endswith("; a module of one's own is found through PYTHONPATH by every vaelab command: "
                                 "PYTHONPATH=/its/folder vaelab ...") == (override == "model._target_=foo.Bar")


def test_the_pythonpath_hint_is_for_the_targets_own_module_only(tiny_mnist, tmp_path, monkeypatch):
    (tmp_path / "found.py").write_text("import einops_not_installed\n")
    (tmp_path / "plain.py").write_text("x = 1\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    for target in ("found.Mine", "plain.NoSuch", "pkg.nosub.Bar"):  # (a package found, its submodule not)
        cfg = compose_cfg([f"data.root={tiny_mnist}", "data.val_size=64", f"model._target_={target}"])
        with pytest.raises(ConfigError) as e:
            train(cfg, tmp_path / "r")
        assert "PYTHONPATH" not in str(e.value), str(e.value)


def test_a_model_class_whose_arguments_do_not_fit_is_one_line(tiny_mnist, tmp_path, monkeypatch):
    """A model of one's own that needs an argument it is not given (nor in model.kwargs)."""
    (tmp_path / "othermodels.py").write_text("from vaelab.models import MLPVAE\n\n\nclass Other(MLPVAE):\n"
                                          "    def __init__(self, latent_size, depth, input_dim, image_shape):\n"
                                          "        super().__init__(latent_size, input_dim=input_dim)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_cfg([f"data.root={tiny_mnist}", "data.val_size=64", "model._target_=othermodels.Other"])
    with pytest.raises(ConfigError, match=r"^model._target_=othermodels.Other does not take the settings given it "
                                          r"\(latent_size, input_dim, image_shape\): missing a required argument: "
                                          r"'depth'; give it with \+model.kwargs.depth=VALUE \(to vaelab resume "
                                          r"without the \+; a run trained before the class took it is evaluated "
                                          r"once the class gives it a default\)$"):
        train(cfg, tmp_path / "r")
    # a misspelt one: what it does take (review: the line listed what it was given only)
    cfg = compose_cfg([f"data.root={tiny_mnist}", "data.val_size=64", "model._target_=othermodels.Other",
                       "+model.kwargs.dept=2"])
    with pytest.raises(ConfigError, match=r"^model._target_=othermodels.Other does not take the settings given it "
                                          r"\(latent_size, dept, input_dim, image_shape\): got an unexpected keyword "
                                          r"argument 'dept' \(did you mean depth\?\); it takes latent_size, depth, "
                                          r"input_dim, image_shape$"):
        train(cfg, tmp_path / "r")
    # an MLP setting it does not take (vaelab resume, which the hint is also for, refuses a +: review)
    cfg = compose_cfg([f"data.root={tiny_mnist}", "data.val_size=64", "model._target_=othermodels.Other",
                       "+model.kwargs.depth=2", "model.size=small"])
    with pytest.raises(ConfigError, match=r"^model.size=small: model._target_=othermodels.Other takes no size \(it "
                                          r"is a setting of vaelab's MLP\); give a model's own arguments as "
                                          r"\+model.kwargs.NAME=VALUE \(to vaelab resume without the \+\)$"):
        train(cfg, tmp_path / "r")


_PARTIAL_MODELS = """
import torch
from torch import nn
from vaelab.models import VAE


class Base(VAE):
    def __init__(self, latent_size, input_dim, image_shape, **settings):
        super().__init__()
        self.latent_size, self.input_dim, self.image_shape = latent_size, input_dim, tuple(image_shape)
        self.e, self.d = nn.Linear(input_dim, 2 * latent_size), nn.Linear(latent_size, input_dim)


class NoEncode(Base):
    def decode_logits(self, z):
        return self.d(z)


class NoAttributes(VAE):
    def __init__(self, latent_size, input_dim, image_shape, **settings):
        super().__init__()
        self.e, self.d = nn.Linear(input_dim, 2 * latent_size), nn.Linear(latent_size, input_dim)

    def encode(self, x):
        return self.e(x).chunk(2, -1)

    def decode_logits(self, z):
        return self.d(z)


class OneOutput(Base):  # encode returns mu only
    def encode(self, x):
        return self.e(x)[:, :self.latent_size]

    def decode_logits(self, z):
        return self.d(z)


class WrongWidth(Base):  # logits of 28 pixels, not 784
    def encode(self, x):
        return self.e(x).chunk(2, -1)

    def decode_logits(self, z):
        return self.d(z)[:, :28]


class Float64(Base):
    def encode(self, x):
        return [t.double() for t in self.e(x).chunk(2, -1)]  # (a list of two is fine; float64 is not)

    def decode_logits(self, z):
        return self.d(z)


class Complete(Base):
    def encode(self, x):
        return self.e(x).chunk(2, -1)

    def decode_logits(self, z):
        return self.d(z)


class DoubleParameters(Complete):  # built in float64: failed at the first step with a traceback
    def __init__(self, latent_size, input_dim, image_shape, **settings):
        super().__init__(latent_size, input_dim, image_shape)
        self.double()


class OwnLatentSize(Complete):  # ignores the latent_size it is given: failed after epoch 1, at the pictures
    def __init__(self, latent_size, input_dim, image_shape, **settings):
        super().__init__(3, input_dim, image_shape)


class ImageLogits(Complete):  # its own forward: logits as images
    def forward(self, x):
        mu, logvar = self.encode(x)
        return self.decode_logits(mu).view(-1, 1, 28, 28), mu, logvar


class NoLogvar(Complete):
    def forward(self, x):
        mu, logvar = self.encode(x)
        return self.decode_logits(mu), mu


class OneLogvar(Complete):  # a logvar of (B, 1): the KL broadcast over the latents, and trained
    def forward(self, x):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decode_logits(z), mu, logvar[:, :1]


class EvalRecon(Complete):  # returns a reconstruction in eval mode, which the training step never calls
    def forward(self, x):
        if not self.training:
            return self.decode(self.encode(x)[0])
        return super().forward(x)


class TrainOneLogvar(Complete):  # right in eval mode only
    def forward(self, x):
        logits, mu, logvar = super().forward(x)
        return (logits, mu, logvar[:, :1]) if self.training else (logits, mu, logvar)


class IntLogits(Complete):
    def forward(self, x):
        logits, mu, logvar = super().forward(x)
        return logits.long(), mu, logvar


class Normed(Complete):  # BatchNorm: the check in train mode must leave its running statistics
    def __init__(self, latent_size, input_dim, image_shape, **settings):
        super().__init__(latent_size, input_dim, image_shape)
        self.norm = nn.BatchNorm1d(input_dim)

    def forward(self, x):
        return super().forward(self.norm(x + 1))


class OwnForward(Complete):  # a forward of its own that is right, and draws its z as VAE.forward does
    def forward(self, x):
        return super().forward(x)


class Noisy(Complete):  # draws random numbers in eval mode too
    def encode(self, x):
        return self.e(x + 0.01 * torch.randn_like(x)).chunk(2, -1)


class Unused(Base):  # a layer its forward never uses
    def __init__(self, latent_size, input_dim, image_shape, **settings):
        super().__init__(latent_size, input_dim, image_shape)
        self.spare = nn.Linear(3, 3)

    def encode(self, x):
        return self.e(x).chunk(2, -1)

    def decode_logits(self, z):
        return self.d(z)


class Probabilities(Complete):  # a decoder that ends in a sigmoid, which vaelab's losses apply again
    def decode_logits(self, z):
        return torch.sigmoid(self.d(z))


class FreshConvLike(Complete):  # a logit decoder whose values for the blank images' mu are all > 0
    def __init__(self, latent_size, input_dim, image_shape, **settings):
        super().__init__(latent_size, input_dim, image_shape)
        with torch.no_grad():
            self.e.bias.zero_()
            self.d.bias.fill_(0.1)


class ReluOut(Complete):  # ends in a ReLU: sigmoid(>= 0) >= 0.5, no black pixel, as with a sigmoid (review)
    def decode_logits(self, z):
        return torch.relu(self.d(z))


class OwnReparam(Complete):  # without the generator validation passes: a traceback after epoch 1 (review)
    def reparameterize(self, mu, logvar):
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class NoParameters(VAE):
    def __init__(self, latent_size, input_dim, image_shape, **settings):
        super().__init__()
        self.latent_size, self.input_dim, self.image_shape = latent_size, input_dim, tuple(image_shape)
        self.register_buffer("w", torch.zeros(input_dim, 2 * latent_size))

    def encode(self, x):
        return (x @ self.w).chunk(2, -1)

    def decode_logits(self, z):
        return z.new_zeros(z.shape[0], self.input_dim)
"""


@pytest.mark.parametrize("target,message", [
    ("NoEncode", "this one lacks encode()"),
    ("NoAttributes", "this one lacks latent_size, input_dim, image_shape"),
    ("OneOutput", "encode(x) of x (2, 784) must return two tensors, mu and logvar, each (2, latent_size=2); "
                  "got Tensor"),
    ("WrongWidth", "decode_logits(z) of z (2, 2) must return logits (2, 784); got (2, 28)"),
    ("Float64", "encode(x) must return mu and logvar in the parameters' dtype, torch.float32; got torch.float64"),
    ("NoParameters", "the model has no parameters to train"),  # (build_optimizer's StopIteration before)
    ("OwnReparam", "reparameterize(mu, logvar, generator) must take the generator (a torch.Generator or None) that "
                   "vaelab's validation draws eps with, as VAE's does (vaelab/models/base.py)"),
    ("DoubleParameters", "its parameters are torch.float64; vaelab feeds a model float32 images (trainer.amp=bf16 "
                         "runs its products in bf16): build it in float32"),
    ("OwnLatentSize", "the model's latent_size is 3, the config's latent_size=2: build it with the latent_size it "
                      "is given (model.latent_size follows latent_size), which the pictures, the reports and sweeps "
                      "use"),
    # a model's own forward, which the step calls: a traceback at the first step, or (OneLogvar) no error at all
    ("ImageLogits", "forward(x) of x (2, 784) must return logits (2, 784), mu and logvar (2, 2), as VAE.forward "
                    "does; got (2, 1, 28, 28), (2, 2), (2, 2)"),
    ("NoLogvar", "forward(x) of x (2, 784) must return logits (2, 784), mu and logvar (2, 2), as VAE.forward does; "
                 "got (2, 784), (2, 2)"),
    ("OneLogvar", "got (2, 784), (2, 2), (2, 1)"),
    ("TrainOneLogvar", "got (2, 784), (2, 2), (2, 1)"),  # (checked as the step calls it: in train mode)
    ("IntLogits", "forward(x) must return logits, mu and logvar as floating-point tensors; got torch.int64, "
                  "torch.float32, torch.float32"),
])
def test_a_model_of_ones_own_that_lacks_part_of_the_interface_is_one_line_before_training(
        tiny_mnist, tmp_path, monkeypatch, target, message):
    """Without encode it failed at the first step with a traceback; without image_shape it
    trained a whole epoch and failed at its pictures, before the epoch's checkpoint."""
    (tmp_path / "partialmodels.py").write_text(_PARTIAL_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_cfg([f"data.root={tiny_mnist}", "data.val_size=64", "latent_size=2",
                       f"model._target_=partialmodels.{target}"])
    with pytest.raises(ConfigError) as e:
        train(cfg, tmp_path / "r")
    assert str(e.value).startswith(f"model._target_=partialmodels.{target}: ") and str(e.value).endswith(message)
    assert not (tmp_path / "r").exists()  # (it was left, listed by vaelab compare as an unfinished run)


def test_a_decoder_that_returns_probabilities_is_warned_of(tmp_path, monkeypatch, caplog):
    """Review: decode_logits ending in a sigmoid trained silently (to 708 nats), its outputs, through
    the losses' own sigmoid, never below 0.5. A fresh logit decoder (FreshConvLike) was warned of too:
    its values for the blank images' mu were all positive (a later review)."""
    (tmp_path / "partialmodels.py").write_text(_PARTIAL_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    said = {}
    for target in ("Probabilities", "Complete", "FreshConvLike", "ReluOut"):
        caplog.clear()
        with caplog.at_level("WARNING", logger="vaelab"):
            build_model(compose_cfg(["latent_size=2", f"model._target_=partialmodels.{target}"]))
        said[target] = [r.getMessage() for r in caplog.records]
    assert said["Complete"] == [] and said["FreshConvLike"] == []
    assert len(said["ReluOut"]) == 1 and "returned no negative value (12544 of them, 0 to " in said["ReluOut"][0]
    [line] = said["Probabilities"]
    assert re.fullmatch(
        r"model._target_=partialmodels.Probabilities: decode_logits\(z\) of 16 draws of z returned no negative "
        r"value \(12544 of them, 0.\d+ to 0.\d+\): probabilities\? vaelab's losses take logits and apply the "
        r"sigmoid themselves, and "
        r"sigmoid\(logits >= 0\) is at least 0.5, no black pixel; return the decoder's last layer before its sigmoid "
        r"\(or ReLU, softplus\)",
        line), line


def test_train_refused_at_its_start_from_python_leaves_the_folder_as_it_was(tiny_mnist, tmp_path):
    """vaelab-train removes a run folder it was refused in; train() from Python left the folders
    it made, its config and an empty train.log: vaelab compare listed it as an unfinished run."""
    bad = compose_cfg([f"data.root={tmp_path / 'nowhere'}", "data.download=false", "data.val_size=64"])
    with pytest.raises(DataError):
        train(bad, tmp_path / "runs" / "a" / "r")
    assert not (tmp_path / "runs").exists()  # with the folders made to hold it
    mine = tmp_path / "mine"  # a folder of the user's: it stays, with what it held
    (mine / ".hydra").mkdir(parents=True)
    (mine / "notes.txt").write_text("kept")
    # a call that would train there is refused before it writes (review: its metrics.json, epochs.jsonl,
    # train.log and samples/ went over the user's files of those names, where vaelab-train refuses)
    (mine / "metrics.json").write_text('{"my": "results of a month"}')
    good = compose_cfg([f"data.root={tiny_mnist}", *FAST, "latent_size=2", "trainer.epochs=1"])
    with pytest.raises(ConfigError) as e:
        train(good, mine)
    assert str(e.value) == (f"run_dir {mine}: that folder holds files (metrics.json, notes.txt) and is not a vaelab "
                            f"run; give a new or empty folder")
    assert sorted(p.name for p in mine.rglob("*")) == [".hydra", "metrics.json", "notes.txt"]
    assert (mine / "metrics.json").read_text() == '{"my": "results of a month"}'
    # ... but not a run whose saved config is gone (carried on from its checkpoints), nor a script's own log file
    # there (review)
    gone = tmp_path / "gone"
    train(good, gone)
    (gone / ".hydra" / "config.yaml").unlink()
    assert train(OmegaConf.merge(good, {"trainer": {"epochs": 2}}), gone)["epochs"] == 2
    (tmp_path / "logged").mkdir()
    (tmp_path / "logged" / "script.log").write_text("the script's own\n")
    assert train(good, tmp_path / "logged")["epochs"] == 1
    # a run already there is not touched by a refused call on it
    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *FAST, "latent_size=2", "trainer.epochs=1"]), run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(DataError):
        train(OmegaConf.merge(bad, {"trainer": {"epochs": 2}}), run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # nor one named through a folder that is not there (missing/../run: the run was taken for a folder
    # the call made, and removed with its files)
    with pytest.raises(DataError):
        train(bad, tmp_path / "missing" / ".." / "run")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    with pytest.raises(DataError):
        train(bad, tmp_path / "missing" / ".." / "new")
    assert not (tmp_path / "missing").exists() and not (tmp_path / "new").exists()  # (missing/ was made, and left)
    # nor the saved config of a run that has no checkpoint yet (it was the refused call's after it)
    (run / "checkpoints").rename(tmp_path / "aside")
    (run / "metrics.json").unlink()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(DataError):
        train(OmegaConf.merge(bad, {"latent_size": 7}), run)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_refused_train_leaves_the_global_generators_as_they_were(tmp_path):
    """train() seeds torch's, NumPy's and Python's generators with cfg.seed: a refused call did
    too, so a script's next draws were the run's seed's, not those it was going to make."""
    import random

    bad = compose_cfg([f"data.root={tmp_path / 'nowhere'}", "data.download=false", "seed=3"])
    draws = []
    for call in (False, True):
        torch.manual_seed(11), np.random.seed(11), random.seed(11)
        torch.rand(2), np.random.rand(), random.random()  # (part-way along each)
        if call:
            with pytest.raises(DataError):
                train(bad, tmp_path / "run")
        draws.append((torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]))
    assert draws[1] == draws[0]


def test_a_new_run_stopped_while_its_data_loads_keeps_its_config(tiny_mnist, tmp_path, monkeypatch):
    """Stopped (or killed) in a slow first download, the run can be started again from its saved
    config, which vaelab resume names; it is written before the data loads."""
    import vaelab.train as train_mod

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_mod, "load_data", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(compose_cfg([f"data.root={tiny_mnist}", *FAST, "latent_size=3"]), tmp_path / "r")
    assert OmegaConf.load(tmp_path / "r" / ".hydra" / "config.yaml").latent_size == 3


def test_train_on_a_folder_another_process_trains_leaves_it_alone(tiny_mnist, tmp_path):
    """train() refused because another process holds the folder wrote an empty train.log into it."""
    from vaelab.checkpoint import CheckpointError

    folder = tmp_path / "theirs"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from vaelab import checkpoint as c\n"
                               "with c.only_process(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
                               str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointError, match="another process is training this run now"):
            train(compose_cfg([f"data.root={tiny_mnist}", *FAST]), folder)
    finally:
        holder.kill()
        holder.wait()
    assert list(folder.iterdir()) == []


def test_a_bug_in_a_models_step_keeps_the_run_folder_from_python(tiny_mnist, tmp_path, monkeypatch):
    """Once the input has passed its checks the folder is the run's: a model that raises in its
    third step kept it with TensorBoard on, and lost it, its train.log's step lines too, with it off."""
    (tmp_path / "buggymodels.py").write_text(
        "from vaelab.models import MLPVAE\n"
        "class LaterBug(MLPVAE):\n"
        "    calls = 0\n"
        "    def decode_logits(self, z):\n"
        "        LaterBug.calls += 1\n"
        "        if self.training and LaterBug.calls > 4:\n"
        "            raise RuntimeError('a bug in step 3')\n"
        "        return super().decode_logits(z)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_cfg([f"data.root={tiny_mnist}", *FAST, "latent_size=2", "logger.tensorboard=false",
                       "model._target_=buggymodels.LaterBug"])
    with pytest.raises(RuntimeError, match="a bug in step 3"):
        train(cfg, tmp_path / "r")
    assert (tmp_path / "r" / "checkpoints").is_dir() and (tmp_path / "r" / ".hydra" / "config.yaml").is_file()


def test_flat_adam_on_a_model_with_an_unused_parameter_is_one_line_naming_it(tiny_mnist, tmp_path, monkeypatch):
    """It was a RuntimeError, a traceback from vaelab-train, at the first step (and would be
    for optim.impl=auto, flat Adam in a CUDA-graph step, with any such model of one's own)."""
    (tmp_path / "partialmodels.py").write_text(_PARTIAL_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_cfg([f"data.root={tiny_mnist}", "data.val_size=64", "latent_size=2", "optim.impl=flat",
                       "model._target_=partialmodels.Unused", "trainer.final_eval=false"])
    with pytest.raises(ConfigError, match=r"^optim.impl=flat: parameters spare.weight, spare.bias got no gradient "
                                          r"this step; use optim.impl=fused for a model with parameters a step can "
                                          r"leave unused$"):
        train(cfg, tmp_path / "r")
    train(OmegaConf.merge(cfg, {"optim": {"impl": "fused"}, "trainer": {"epochs": 1}}), tmp_path / "fused")


def test_auto_takes_fused_adam_for_a_model_with_a_parameter_a_step_leaves_unused(tiny_mnist, tmp_path, monkeypatch):
    """optim.impl=auto in a CUDA-graph step is flat Adam, which refuses such a model at its first
    step: auto now takes fused Adam for it, as for a model with frozen parameters. The probe
    leaves no trace, not even the random numbers a model's encode draws (auto's run then draws
    what fused's does)."""
    from vaelab.optim import FlatAdam

    (tmp_path / "partialmodels.py").write_text(_PARTIAL_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    for target, kind in (("Unused", torch.optim.Adam), ("Complete", FlatAdam), ("Noisy", FlatAdam)):
        cfg = compose_cfg(["latent_size=2", f"model._target_=partialmodels.{target}"])
        model = build_model(cfg)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        rng = torch.get_rng_state()
        assert type(build_optimizer(cfg, model, capturable=True)) is kind  # (on a CPU: flat Adam's torch kernels)
        assert all(p.grad is None for p in model.parameters()) and model.training  # the probe leaves no trace
        assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
        assert torch.equal(torch.get_rng_state(), rng)


def test_the_check_of_a_models_own_forward_leaves_the_generators_as_they_were(tmp_path, monkeypatch):
    """The check of forward(x) runs it once: its draws must not shift the run's random numbers, nor
    its train-mode BatchNorm the running statistics; a forward that is wrong only in eval mode,
    which training never calls, is not refused."""
    (tmp_path / "partialmodels.py").write_text(_PARTIAL_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    for target in ("EvalRecon", "Normed"):
        model = build_model(compose_cfg(["latent_size=2", f"model._target_=partialmodels.{target}"]))
        assert model.training
    assert torch.equal(model.norm.running_mean, torch.zeros(784)) and int(model.norm.num_batches_tracked) == 0
    with torch.device("meta"):  # (the CUDA warm-up's model: the check does not run there)
        build_model(compose_cfg(["latent_size=2", "model._target_=partialmodels.IntLogits"]))
    cfg = compose_cfg(["latent_size=2", "model._target_=partialmodels.OwnForward"])
    torch.manual_seed(0)
    build_model(cfg)
    after = torch.rand(3)
    torch.manual_seed(0)
    build_model(OmegaConf.merge(cfg, {"model": {"_target_": "partialmodels.Complete"}}))  # (no check of forward)
    assert torch.equal(torch.rand(3), after)


def test_an_error_inside_the_models_own_code_keeps_its_traceback(tiny_mnist, tmp_path, monkeypatch):
    """Only a target that cannot be found is a one-line config error: a bug in a model's
    __init__ (here an import it makes) must reach the user with its stack."""
    from hydra.errors import InstantiationException

    (tmp_path / "mymodels.py").write_text("from vaelab.models import VAE\n\n\nclass Bad(VAE):\n"
                                          "    def __init__(self, **kw):\n        import not_a_module\n\n\n"
                                          "def build(**kw):  # a function that builds a model\n"
                                          "    raise RuntimeError('its own bug')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for target, cause in (("mymodels.Bad", ModuleNotFoundError), ("mymodels.build", RuntimeError)):
        cfg = compose_cfg([f"data.root={tiny_mnist}", "data.val_size=64", "model.size=small",
                           f"model._target_={target}"])
        with pytest.raises(InstantiationException) as e:
            train(cfg, tmp_path / "r")
        assert isinstance(e.value.__cause__, cause)


@pytest.mark.parametrize("setting,said", [
    # trainer.compile_mode=max-autotune alone ran uncompiled without a word
    ("trainer.compile_mode=max-autotune", "trainer.compile_mode=max-autotune does nothing with trainer.compile=false: "
                                          "add trainer.compile=true to compile the model"),
    # Review: data.val_size=1 reported active 0/32, with no word that one image has no variance
    ("data.val_size=1", "data.val_size=1: active_units, a variance across the validation images, needs 2 or more; "
                        "with one it reads 0"),
], ids=["compile-mode-without-compile", "one-validation-image"])
def test_a_setting_that_does_nothing_or_reads_0_is_said(make_cfg, tmp_path, caplog, setting, said):
    with caplog.at_level("WARNING", logger="vaelab"):
        train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1", "trainer.final_eval=false",
                        setting]), tmp_path)
    assert said in caplog.text


def test_a_batch_larger_than_the_training_set_is_said(make_cfg, tmp_path, caplog):
    """It trains (one step an epoch, the whole set), but without a word a typo (batch_size=6400
    for 64) went unnoticed."""
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        metrics = train(make_cfg(["trainer.batch_size=100000", "trainer.epochs=1", "trainer.final_eval=false",
                                  "model.size=small", "latent_size=2"]), tmp_path)
    assert metrics["steps"] == 1
    assert "trainer.batch_size=100000 is larger than the 192 training images: each epoch is one step of 192" in \
        caplog.text


def test_train_from_python_says_when_it_carries_a_run_on_with_other_settings(make_cfg, tmp_path, caplog):
    """train(cfg, run_dir) on a folder holding a finished run, with loss.beta=4, trained epoch 2
    at beta 4 without a word, while the saved config (what reproduce re-runs) still said 1."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # a script's own level: train() lowered it to INFO for good
    try:
        train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1", "trainer.final_eval=false"]),
              tmp_path)
        assert root.level == logging.WARNING
    finally:
        root.setLevel(level)
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=1", "trainer.final_eval=false",
                        "trainer.progress=false"]), tmp_path)  # the same settings: nothing to say
        assert "carrying on" not in caplog.text
        train(make_cfg(["latent_size=2", "model.size=small", "trainer.epochs=3", "trainer.final_eval=false",
                        "loss.beta=4"]), tmp_path)
    # (trainer.epochs too: reproduce re-runs the saved config's)
    assert (f"carrying on the run in {tmp_path} with settings its saved config does not have (loss.beta: 1.0 there, "
            f"4.0 here, and 1 more): that config, which vaelab reproduce re-runs, and the run's record of resumes do "
            f"not say so; vaelab resume {tmp_path} KEY=VALUE changes a run's settings and records them") in caplog.text


@pytest.mark.parametrize("override", ["model.activation=sigmoid", "optim.impl=fusd", "loss.impl=trition",
                                      "model.size=huge"])
def test_compose_config_refuses_a_value_outside_a_settings_choices(override):
    """From Python these passed compose and failed only when train() checked them (they were
    plain str settings, held to their lists by validate()). Then Hydra's exception, its reason
    in __cause__: now vaelab-train's one line."""
    from vaelab.config import compose_config

    key, value = override.split("=")
    with pytest.raises(ConfigError, match=rf"^override '{re.escape(override)}': Invalid value '{value}', expected one "
                                          rf"of \[.*\] \(key '{key}'\)$"):
        compose_config([override])


def test_compose_config_says_what_is_wrong_with_an_override_in_one_line(tmp_path):
    """Hydra's "Could not override 'latent_sizee'. To append to your config use +latent_sizee=16"
    advised adding a key no model reads."""
    from vaelab.config import compose_config

    with pytest.raises(ConfigError) as e:
        compose_config(["latent_sizee=16"])
    assert str(e.value).startswith("unknown key 'latent_sizee' in override 'latent_sizee=16'; did you mean "
                                   "'latent_size'? keys allowed at the top level: name, latent_size, ")
    with pytest.raises(ConfigError, match=r"^override 'latent_size=abc': Value 'abc' of type 'str' could not be "
                                          r"converted to Integer \(key 'latent_size'\); give a whole number "
                                          r"\(1000, not 1e3 or 1000\.0\)$"):
        compose_config(["latent_size=abc"])
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\nlatent_size: 3\n")
    with pytest.raises(ConfigError, match=r"^override 'experiment=mnie': Could not find 'experiment/mnie'; "
                                          r"available: .*mine"):
        compose_config(["experiment=mnie"], config_dir=tmp_path)
    # a group of one's own setting a key that is not there: the line named no key, ending in "config:"
    (tmp_path / "experiment" / "bad.yaml").write_text("# @package _global_\nlatent_sz: 7\n")
    # (now with the hints an override gets: test_config.py's test_a_group_file_of_ones_own_...)
    with pytest.raises(ConfigError, match=r"^unknown key 'latent_sz' in experiment/bad.yaml \(override "
                                          r"'experiment=bad'\); did you mean 'latent_size'\? keys allowed at the top "
                                          r"level: name, latent_size, "):
        compose_config(["experiment=bad"], config_dir=tmp_path)
    # one that is not YAML: the file and the line (the line was "while parsing a flow sequence")
    (tmp_path / "experiment" / "syn.yaml").write_text("# @package _global_\nlatent_size: [1\n")
    with pytest.raises(ConfigError) as e:
        compose_config(["experiment=syn"], config_dir=tmp_path)
    assert str(e.value) == (f"override 'experiment=syn': {tmp_path / 'experiment' / 'syn.yaml'}, line 3, column 1: "
                            f"expected ',' or ']', but got '<stream end>' (while parsing a flow sequence begun on "
                            f"line 2)")
    # what OmegaConf refuses after Hydra has composed, and vaelab-train's flags
    with pytest.raises(ConfigError, match=r"^unknown key 'foo' in override '\+foo=1'; keys allowed at the top level"):
        compose_config(["+foo=1"])
    with pytest.raises(ConfigError, match=r"^latent_size=\$\{nosuch\}: cannot be resolved \(Interpolation key "
                                          r"'nosuch' not found\)$"):
        compose_config(["latent_size=${nosuch}"])
    with pytest.raises(ConfigError, match=r"^-m: compose_config takes settings \(KEY=VALUE\), not vaelab-train's "
                                          r"flags$"):
        compose_config(["-m", "latent_size=2,4"])
    with pytest.raises(ConfigError, match=r"^override 'latent_size=2,4' lists several values: compose one config per "
                                          r"value$"):
        compose_config(["latent_size=2,4"])
    # a value in range for its type but not for vaelab: at compose time too, not first at train() (review),
    # in the line vaelab-train prints; what depends on the machine (device=cuda here) stays train()'s
    for override, line in (("latent_size=0", "latent_size=0: must be an integer >= 1"),
                           ("loss.beta=-1", "loss.beta=-1.0: must be a finite number >= 0")):
        with pytest.raises(ConfigError, match=rf"^{re.escape(line)}"):
            compose_config([override])
    assert compose_config(["device=cuda"]).device == "cuda"


def test_compose_config_finds_config_groups_of_ones_own(tmp_path):
    from vaelab.config import compose_config

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\nlatent_size: 3\nloss:\n  beta: 2.0\n")
    cfg = compose_config(["experiment=mine", "trainer.epochs=4"], config_dir=tmp_path)
    assert (cfg.latent_size, cfg.loss.beta, cfg.trainer.epochs) == (3, 2.0, 4)
    assert compose_config(["latent_size=5"]).latent_size == 5
    with pytest.raises(ConfigError, match="^config_dir=/nonexistent: no such folder$"):
        compose_config([], config_dir="/nonexistent")
    with pytest.raises(ConfigError, match="^config_dir and hydra.searchpath: give one"):
        compose_config([f"hydra.searchpath=[file://{tmp_path}]"], config_dir=tmp_path)


def test_a_loss_blowing_up_to_huge_finite_values_ends_as_diverged(make_cfg, tmp_path):
    """With optim.lr=1e4 the first epoch's validation KL was finite, near 1e32: TensorBoard's
    histogram of its dimensions failed ("The histogram is empty") and the run ended in a
    traceback, with no stopped.json, before the next step's non-finite loss could stop it."""
    cfg = make_cfg(["optim.lr=1e4", "loss.recon=bce", "latent_size=2", "model.size=small", "trainer.batch_size=128",
                    "trainer.final_eval=false", "logger.histograms=true"])
    with pytest.raises(NonFiniteLoss):
        train(cfg, tmp_path)
    assert json.loads((tmp_path / "stopped.json").read_text())["state"] == "diverged"
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


@pytest.mark.parametrize("prog,line", [("vaelab-train", "vaelab-train: interrupted before any run started"),
                                       ("vaelab", "vaelab: interrupted before the command began; nothing was written"),
                                       ("myscript.py", None)])
def test_a_ctrl_c_while_a_console_script_loads_numpy_is_one_line(prog, line):
    """The console scripts import the vaelab package, and with it numpy, before cli's own answer
    to a Ctrl-C can run: one in that tenth of a second was a 15-line traceback. A script's
    `import vaelab` keeps its KeyboardInterrupt."""
    from importlib.metadata import version

    core = "numpy._core" if int(version("numpy").split(".")[0]) >= 2 else "numpy.core"
    script = f"""
import os, signal, sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "{core}._exceptions":
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, CtrlC())
sys.argv = [os.path.join("bin", "{prog}")]
try:
    from vaelab.cli import main
except KeyboardInterrupt:
    sys.exit(7)
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stderr) == ((130, line + "\n") if line else (7, "")), p.stderr[-2000:]


def test_a_ctrl_c_while_python_m_vaelab_train_loads_numpy_is_one_line(tmp_path):
    """`python -m vaelab.train` (the README's other way in) stopped while the package loads numpy:
    sys.argv[0] is "-m" then, and the line came only for the console scripts."""
    from importlib.metadata import version

    core = "numpy._core" if int(version("numpy").split(".")[0]) >= 2 else "numpy.core"
    (tmp_path / "sitecustomize.py").write_text(f"""
import os, signal, sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "{core}._exceptions":
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, CtrlC())
""")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(tmp_path), os.environ.get("PYTHONPATH"))))}
    p = subprocess.run([sys.executable, "-m", "vaelab.train", "latent_size=2"], capture_output=True, text=True,
                       timeout=120, env=env, cwd=tmp_path)
    assert (p.returncode, p.stderr) == (130, "vaelab-train: interrupted before any run started\n"), p.stderr[-2000:]


def test_a_run_made_from_python_saves_the_config_it_trained_and_where_its_data_is(tiny_mnist, tmp_path, monkeypatch):
    """train() from Python saved the config of its first call in a folder: a call that failed
    before its first checkpoint (a typo) kept it there, and the corrected retry trained under
    another config than the one reproduce, resume and eval read. Nor did a relative data.root, or
    one from VAELAB_DATA, say where the data was for a command run in another folder or shell."""
    (tmp_path / "nb").mkdir()
    (tmp_path / "nb" / "data_link").symlink_to(tiny_mnist)
    monkeypatch.chdir(tmp_path / "nb")
    base = ["data.val_size=64", "trainer.epochs=1", "model.size=small", "latent_size=2", "trainer.progress=false",
            "trainer.final_eval=false", "device=cpu"]
    with pytest.raises(DataError):
        train(compose_cfg([*base, "data.root=nowhere", "data.download=false"]), tmp_path / "run")
    train(compose_cfg([*base, "data.root=../nb/data_link", "seed=3"]), tmp_path / "run")
    saved = OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml")
    assert saved.data.root == str(tmp_path / "nb" / "data_link") and saved.seed == 3  # (absolute, without the ..)
    monkeypatch.setenv("VAELAB_DATA", str(tiny_mnist))
    cfg = compose_cfg(base)
    OmegaConf.set_readonly(cfg.data, True)  # (a script's read-only config, or part: the saved copy changes, not it)
    train(cfg, tmp_path / "env")  # data.root: ${oc.env:VAELAB_DATA,data}
    assert OmegaConf.load(tmp_path / "env" / ".hydra" / "config.yaml").data.root == str(tiny_mnist)
    # a run that has trained keeps its config: a later call carries it on (and warns of what differs)
    train(compose_cfg([*base, "data.root=../nb/data_link", "seed=3", "trainer.epochs=2"]), tmp_path / "run")
    assert OmegaConf.load(tmp_path / "run" / ".hydra" / "config.yaml").trainer.epochs == 1


def test_data_given_to_train_must_be_loaded_with_the_configs_settings(tiny_mnist, make_cfg, tmp_path):
    """train(cfg, run_dir, data=...) trained on grey levels with 100 held out where the config
    said data.binarize=dynamic and data.val_size=64, and recorded the config: the run's saved
    settings were not what it trained with, and reproduce found 19 metrics different."""
    from vaelab.data import load_data

    data = load_data(tiny_mnist, torch.device("cpu"), val_size=100)
    for setting, line in (("data.binarize=dynamic", "data.binarize=dynamic, but the data given to train() was "
                                                    "loaded with data.binarize=none"),
                          ("data.val_size=64", "data.val_size=64, but the data given to train() was loaded with "
                                               "data.val_size=100"),
                          # (it trained on split 0 and recorded 1: review)
                          ("data.split_seed=1", "data.split_seed=1, but the data given to train() was loaded with "
                                                "data.split_seed=0")):
        with pytest.raises(ConfigError) as e:
            train(make_cfg(["data.val_size=100", setting, "trainer.epochs=1"]), tmp_path / "run", data=data)
        assert str(e.value) == line + ": load it with the config's settings, or leave data out"
        assert not (tmp_path / "run" / "checkpoints").exists()
    metrics = train(make_cfg(["data.val_size=100", "trainer.epochs=1", "trainer.final_eval=false"]), tmp_path / "run",
                    data=data)
    assert metrics["examples_seen"] == 156


def test_a_model_defined_in_main_is_told_it_cannot_be_loaded_elsewhere(make_cfg, tmp_path, monkeypatch, caplog):
    """A notebook's own class (model._target_=__main__.NbVAE) trained and loaded in its process;
    `vaelab eval` and `resume` then failed with "'__main__' is not a package", after the fact."""
    import __main__

    from vaelab.models import MLPVAE

    class NbVAE(MLPVAE):
        pass
    NbVAE.__module__ = "__main__"
    monkeypatch.setattr(__main__, "NbVAE", NbVAE, raising=False)
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        train(make_cfg(["model._target_=__main__.NbVAE", "latent_size=2", "model.size=small", "trainer.epochs=1",
                        "trainer.final_eval=false"]), tmp_path)
    assert [r.getMessage() for r in caplog.records if "__main__" in r.getMessage()] == [
        "model._target_=__main__.NbVAE is defined in the script or notebook that runs it: vaelab eval, resume and "
        "reproduce, in processes of their own, cannot import it; define it in a module"]
    # ... and a function of its that builds a model of vaelab's
    monkeypatch.setattr(__main__, "make", lambda **kw: MLPVAE(**kw), raising=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        train(make_cfg(["model._target_=__main__.make", "latent_size=2", "model.size=small", "trainer.epochs=1",
                        "trainer.final_eval=false"]), tmp_path / "made")
    assert any(r.getMessage().startswith("model._target_=__main__.make is defined in") for r in caplog.records)


def test_a_plain_config_of_a_model_that_takes_no_mlp_settings_trains(tiny_mnist, tmp_path, monkeypatch):
    """train() of a plain config whose model section names only its _target_ (a class taking
    latent_size, input_dim, image_shape): typed()'s rule for old saved MLP configs gave it
    linear=aten, which the model then refused as a setting it does not take."""
    from vaelab.config import to_plain

    (tmp_path / "tinymod.py").write_text(_PARTIAL_MODELS + '''

class Tiny(VAE):
    def __init__(self, latent_size, input_dim, image_shape):
        super().__init__()
        self.latent_size, self.input_dim, self.image_shape = latent_size, input_dim, tuple(image_shape)
        self.e, self.d = nn.Linear(input_dim, 2 * latent_size), nn.Linear(latent_size, input_dim)

    def encode(self, x):
        return self.e(x).chunk(2, -1)

    def decode_logits(self, z):
        return self.d(z)
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    plain = to_plain(compose_cfg([f"data.root={tiny_mnist}", *FAST, "trainer.epochs=1", "trainer.final_eval=false",
                                  "latent_size=2"]))
    plain["model"] = {"_target_": "tinymod.Tiny"}
    assert train(OmegaConf.create(plain), tmp_path / "run")["epochs"] == 1


def test_a_runs_hparams_marks_keep_an_override_that_holds_an_interpolation(tmp_path):
    """Review: `trainer.eval_batch_size=${trainer.batch_size}` on the command line, read back from
    overrides.yaml as a list, resolved against that list and failed, and the run's HParams row
    marked none of its keys."""
    from vaelab.train import _compared_keys

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        "- latent_size=2\n- trainer.eval_batch_size=${trainer.batch_size}\n")
    (tmp_path / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  job:\n    config:\n      override_dirname:\n        exclude_keys: []\n")
    assert _compared_keys(tmp_path) == {"latent_size", "trainer.eval_batch_size"}


def test_a_single_runs_hparams_marks_keep_its_keys_after_a_resume_gives_more(tmp_path):
    """Review: vaelab-train puts all of a single run's own keys in exclude_keys, so once
    `vaelab resume RUN optim.lr=0.5` had added its key to overrides.yaml, only that one was marked."""
    from vaelab.train import _compared_keys

    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- latent_size=2\n- trainer.epochs=3\n- optim.lr=0.5\n")
    (tmp_path / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  mode: RUN\n  job:\n    config:\n      override_dirname:\n"
        "        exclude_keys: [latent_size, trainer.epochs, seed]\n")
    assert _compared_keys(tmp_path) == {"latent_size", "trainer.epochs", "optim.lr"}
    # (a sweeper's search space in its config, run without -m: its own keys still, review)
    (tmp_path / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  mode: RUN\n  sweeper:\n    params:\n      loss.beta: 1,4\n  job:\n    config:\n"
        "      override_dirname:\n        exclude_keys: [latent_size, trainer.epochs, seed]\n")
    assert _compared_keys(tmp_path) == {"latent_size", "trainer.epochs", "optim.lr"}


def test_a_sweep_of_config_group_options_marks_the_keys_they_set(tmp_path):
    """Review: `-m experiment=seed,iwae_paper_vae` marked no HParams column (a group's name is
    none), so the dashboard showed the first columns by name. Now: the keys the options' files set
    differently, less those the command line gives one value; an own --config-dir's group too."""
    from vaelab.config import CONF_DIR
    from vaelab.train import _swept_keys

    own = tmp_path / "own"
    (own / "model").mkdir(parents=True)
    (own / "model" / "wide.yaml").write_text("defaults:\n  - mlp\n  - _self_\nhidden: [64]\nactivation: relu\n")
    (own / "model" / "deep.yaml").write_text("defaults:\n  - mlp\n  - _self_\nhidden: [32, 32]\nactivation: relu\n")

    def swept(*task):
        (tmp_path / "multirun.yaml").write_text(OmegaConf.to_yaml({"hydra": {
            "overrides": {"task": list(task)},
            "runtime": {"config_sources": [{"path": "hydra.conf", "schema": "pkg", "provider": "hydra"},
                                           {"path": str(CONF_DIR), "schema": "file", "provider": "main"},
                                           {"path": str(own), "schema": "file", "provider": "command-line"}]}}}))
        return _swept_keys(tmp_path / "multirun.yaml")

    marked = swept("experiment=seed,iwae_paper_vae", "name=x", "trainer.epochs=1")
    assert {"latent_size", "loss.recon", "data.binarize", "trainer.batch_size"} <= marked
    assert not marked & {"experiment", "name", "trainer.epochs", "optim.lr"}  # (both set lr 1e-3)
    assert swept("model=wide,deep", "loss.beta=1,4") == {"model.hidden", "loss.beta"}
    assert swept("model=glob(*)") == {"model.hidden"}  # (mlp.yaml sets it too, to null)
    assert swept("latent_size=2,4") == {"latent_size"}
    (own / "exp").mkdir()
    (own / "exp" / "a.yaml").write_text("latent_size: 3\n")
    (own / "exp" / "b.yaml").write_text("latent_size: 4\n")
    assert swept("+exp@_global_=a,b") == {"latent_size"}  # (the override's package, not the group's: review)
    assert swept("+exp=a,b") == {"exp.latent_size"}


def test_an_optuna_trial_marks_its_search_space_from_its_own_hydra_yaml(tmp_path):
    """Review: Optuna's sweeper writes no multirun.yaml, so a search space over a config group
    (model: choice(wide, deep)) marked only the plain keys."""
    from vaelab.config import CONF_DIR
    from vaelab.train import _compared_keys

    own = tmp_path / "own"
    (own / "model").mkdir(parents=True)
    (own / "model" / "wide.yaml").write_text("defaults:\n  - mlp\n  - _self_\nhidden: [64]\n")
    (own / "model" / "deep.yaml").write_text("defaults:\n  - mlp\n  - _self_\nhidden: [32, 32]\n")
    trial = tmp_path / "sweep" / "0"
    (trial / ".hydra").mkdir(parents=True)
    (trial / ".hydra" / "overrides.yaml").write_text("- name=x\n- latent_size=4\n- model=deep\n")
    (trial / ".hydra" / "hydra.yaml").write_text(OmegaConf.to_yaml({"hydra": {
        "mode": "MULTIRUN", "overrides": {"task": ["name=x", "latent_size=4", "model=deep"]},
        "sweeper": {"params": {"latent_size": "choice(2, 4)", "model": "choice(wide, deep)"}},
        "job": {"config": {"override_dirname": {"exclude_keys": ["name"]}}},
        "runtime": {"config_sources": [{"path": str(CONF_DIR), "schema": "file", "provider": "main"},
                                       {"path": str(own), "schema": "file", "provider": "command-line"}]}}}))
    assert _compared_keys(trial) == {"latent_size", "model.hidden"}


def test_a_run_diverged_before_its_first_checkpoint_leaves_no_empty_folders(make_cfg, tmp_path):
    """Review: optim.lr=1e5 left checkpoints/ and samples/ empty beside its stopped.json."""
    cfg = make_cfg(["optim.lr=1e30", "latent_size=2", "model.size=small", "trainer.final_eval=false"])
    with pytest.raises(NonFiniteLoss):
        train(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "stopped.json").read_text())["state"] == "diverged"
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "samples").exists()
