"""Reproduce, interrupt + resume, and every bad input of `vaelab resume`, on tiny generated data.

Bit-identical means torch.equal on every tensor of the final checkpoint (weights and Adam
state) and == on every metric except the wall-clock ones.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2

import vaelab.train as train_mod
from vaelab import checkpoint as ckpt_io
from vaelab.cli import main as vaelab_cli
from vaelab.models import MLPVAE
from vaelab.train import Interrupted, train
from vaelab.train_cli import config_dir_error, launch, saved_config_argv
from vaelab.workflow import differing_keys, is_timing, side_by_side

from tests.conftest import FAST, compose_cfg, signal_at_step

# 192 training images, batch 32: 6 steps an epoch, 3 epochs.
TINY = [*FAST, "model.size=small", "latent_size=4", "trainer.final_eval=false", "trainer.epochs=3"]
CURVES = ("train/loss", "train/beta", "epoch/train_loss", "epoch/val_loss", "epoch/active_units")


def cli_env() -> dict:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop("VAELAB_DATA", None)
    return env


def run_module(module: str, args: list[str], cwd: Path, check: bool = True,
               env: dict | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd, env={**cli_env(), **(env or {})},
                       capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p


def vaelab(args: list[str]) -> int:
    """`vaelab ARGS` in this process; returns the exit code."""
    if args[:1] == ["resume"]:
        _after_existing_events(Path(args[1]))
    with pytest.raises(SystemExit) as exc:
        vaelab_cli([str(a) for a in args])
    return exc.value.code


def _after_existing_events(run_dir: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and a name starts with the file's
    creation time in whole seconds. A real run takes longer than a second to reach its first
    checkpoint; these take less, so wait until a continuation's file will sort last."""
    stamps = [int(f.name.split(".")[3]) for f in run_dir.glob("events.out.tfevents.*")]
    while stamps and int(time.time()) <= max(stamps):
        time.sleep(0.05)


def curves(run_dir: Path) -> dict:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in CURVES}


def assert_same_run(a: Path, b: Path) -> None:
    """Same weights, optimizer state, counters and RNG state to the bit; same metrics; same curves."""
    ca, cb = ckpt_io.load(a / "checkpoints" / "last.pt"), ckpt_io.load(b / "checkpoints" / "last.pt")
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    for p, st in ca["optimizer"]["state"].items():
        for k, v in st.items():
            assert torch.equal(v, cb["optimizer"]["state"][p][k]), (p, k)
    assert torch.equal(ca["rng"]["torch"], cb["rng"]["torch"])
    for k in ("epoch", "step", "examples", "best_val"):
        assert ca["state"][k] == cb["state"][k], k
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert differing_keys(ma, mb) == [], side_by_side(ma, mb)
    assert curves(a) == curves(b)  # no duplicated or missing steps, same values
    ea, eb = epoch_lines(a), epoch_lines(b)
    assert [e["epoch"] for e in ea] == list(range(1, ca["state"]["epoch"] + 1))
    assert [{k: v for k, v in e.items() if not is_timing(k)} for e in ea] == \
        [{k: v for k, v in e.items() if not is_timing(k)} for e in eb]


def epoch_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "epochs.jsonl").read_text().splitlines()]


@pytest.fixture(autouse=True)
def _restore_log_handlers():
    """train() in this process adds a train.log handler per run directory: drop them after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


@pytest.fixture(scope="module")
def reference(tiny_mnist, tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run."""
    run = tmp_path_factory.mktemp("reference")
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), run)
    return run


def files_snapshot(run_dir: Path) -> dict:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_a_data_root_given_with_a_tilde_is_saved_as_this_shells_home(tmp_path, monkeypatch):
    """Review: data.root='~/d' was saved as written, and vaelab eval from another user's shell (or
    a SLURM node, sudo) looked in that one's home."""
    from vaelab.workflow import pin_environment

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / ".hydra").mkdir()
    for given, env in (("'~/d'", None), ("${oc.env:VAELAB_DATA,./data}", "~/e")):
        if env:
            monkeypatch.setenv("VAELAB_DATA", env)
        (tmp_path / ".hydra" / "config.yaml").write_text(f"data:\n  root: {given}\nlatent_size: 2\n")
        cfg = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")
        assert pin_environment(tmp_path, cfg) == ["data.root"]
        saved = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")
        assert saved.data.root == str(tmp_path / "home" / (env or "~/d")[2:])


def test_vaelab_train_gives_hydra_a_data_root_with_its_tilde_expanded(monkeypatch):
    """Review: a sweep's multirun.yaml kept data.root='~/x', and `vaelab resume SWEEP_DIR` from another
    user's shell launched the jobs that had not started on that one's home."""
    from vaelab.train_cli import _home_expanded

    monkeypatch.setenv("HOME", "/home/me")
    assert _home_expanded("data.root='~/x'") == "data.root='/home/me/x'"
    assert _home_expanded("+data.root='~/x y'") == "+data.root='/home/me/x y'"
    # a sweep's values (review: multirun.yaml kept them, for vaelab resume SWEEP_DIR in another shell)
    assert _home_expanded("data.root='~/a','~/b c',/abs") == "data.root='/home/me/a','/home/me/b c','/abs'"
    for kept in ("data.root=/abs", "data.root=rel/~x", "data.root=choice('~/a','~/b')", "latent_size=2", "--multirun",
                 "data.root='~nosuchuser_vaelab/x'"):
        assert _home_expanded(kept) == kept


# --- reproduce -------------------------------------------------------------------------------


def test_reproduce_reruns_the_saved_config_identically(tiny_mnist, tmp_path, capsys, monkeypatch):
    # The data comes from VAELAB_DATA, as the README offers; the reproduction runs without it.
    run_module("vaelab.train", [*TINY, "trainer.epochs=2", "trainer.final_eval=true", "name=repro"], tmp_path,
               env={"VAELAB_DATA": str(tiny_mnist)})
    [original] = (tmp_path / "outputs" / "runs" / "repro").iterdir()
    assert yaml.safe_load((original / ".hydra" / "config.yaml").read_text())["data"]["root"] == str(tiny_mnist)

    monkeypatch.chdir(tmp_path)  # (vaelab reproduce in this process: it runs the copy in one of its own)
    capsys.readouterr()
    assert vaelab(["reproduce", original]) == 0
    out = capsys.readouterr().out
    assert "reproduced: every metric is identical" in out
    assert "val_loss" in out and "DIFFERENT" not in out
    runs = sorted((tmp_path / "outputs" / "runs" / "repro").iterdir())
    assert len(runs) == 2
    copy = runs[1]
    assert (copy / ".hydra" / "config.yaml").read_text() == (original / ".hydra" / "config.yaml").read_text()
    assert (copy / "eval.json").exists()  # the final test-split eval ran too, and agreed (test_* rows)
    assert "test_elbo" in out
    ca, cb = (ckpt_io.load(d / "checkpoints" / "last.pt") for d in (original, copy))
    assert all(torch.equal(v, cb["model"][k]) for k, v in ca["model"].items())
    # a run evaluated before eval.json had standard errors: the reproduction's are no difference
    from vaelab.workflow import _report, final_metrics
    ev = json.loads((original / "eval.json").read_text())
    assert "test_nll_iwae_se" in final_metrics(original)
    (original / "eval.json").write_text(json.dumps({k: v for k, v in ev.items() if not k.endswith("_se")}))
    assert _report(original, copy, final_metrics(original), 0.0, []) == 0
    assert "reproduced: every metric is identical" in capsys.readouterr().out
    # evaluated by a vaelab whose test ELBO took one draw of z (no elbo_draws): "NOT reproduced" (review)
    older = {k: v for k, v in ev.items() if k != "elbo_draws"}
    (original / "eval.json").write_text(json.dumps({**older, "elbo": ev["elbo"] + 0.3, "recon": ev["recon"] - 0.3}))
    assert _report(original, copy, final_metrics(original), 0.0, []) == 0
    out = capsys.readouterr().out
    assert "reproduced: every metric is identical" in out and "DIFFERENT" not in out
    assert f"(test_* not compared: {original / 'eval.json'} was made by an older vaelab, whose test ELBO took one " \
           f"draw of z per image; vaelab eval {original} --k {ev['k']} makes it again as the reproduction did)" in out


def test_reproduce_reports_a_difference():
    a = {"val_loss": 1.0, "val_kl": 0.5, "samples_per_s": 100.0, "epochs": 2}
    b = {"val_loss": 1.0 + 1e-12, "val_kl": 0.5, "samples_per_s": 90.0, "epochs": 2}
    assert differing_keys(a, b) == ["val_loss"]  # timings are ignored
    assert differing_keys(a, b, rtol=1e-9) == []
    table = side_by_side(a, b)
    assert "DIFFERENT" in table and "timing, ignored" in table
    assert repr(1.0 + 1e-12) in table  # full precision, so "identical" is visible
    assert all(map(is_timing, ("samples_per_s", "train_seconds", "test_seconds")))
    assert not any(map(is_timing, ("val_loss", "test_nll_iwae", "epochs")))


def test_reproduce_rejects_bad_input(tmp_path, capsys):
    assert vaelab(["reproduce", tmp_path / "nope"]) == 2
    assert vaelab(["reproduce", tmp_path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vaelab reproduce: error: {tmp_path / 'nope'}: no such directory",
                   f"vaelab reproduce: error: {tmp_path}: not a vaelab run directory (no .hydra/config.yaml)"]
    with pytest.raises(SystemExit) as exc:  # before any training
        vaelab_cli(["reproduce", str(tmp_path), "--rtol", "-1"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith("vaelab reproduce: error: argument --rtol: must be a number >= 0")
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("latent_size: [\n")
    assert vaelab(["reproduce", run]) == 2
    assert capsys.readouterr().err.startswith(f"vaelab reproduce: error: {run / '.hydra' / 'config.yaml'}: "
                                              f"not a valid vaelab config: ")
    (run / ".hydra" / "config.yaml").write_text("latent_size: 2\n")  # diverged before its first checkpoint
    assert vaelab(["reproduce", run]) == 2
    assert capsys.readouterr().err.strip() == (f"vaelab reproduce: error: {run}: no metrics.json, the run has not "
                                               f"finished (it has no checkpoint to carry on from; start it again "
                                               f"with: vaelab-train --config-dir {run / '.hydra'} --config-name config)")


def test_plain_hydra_rerun_uses_the_saved_config_and_the_usual_folders(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("name: x\n")
    argv = saved_config_argv(["--config-dir", str(tmp_path / ".hydra"), "--config-name", "config", "seed=3"])
    # The saved folder becomes the primary config path: conf/config.yaml cannot shadow it.
    assert argv[:2] == ["--config-path", str(tmp_path / ".hydra")] and "seed=3" in argv
    assert "++hydra.run.dir='outputs/runs/${name}/${now:%Y-%m-%d_%H-%M-%S}'" in argv
    assert any(a.startswith("++hydra.searchpath=") for a in argv)  # launchers, hparams_search still found
    # the rest of conf/config.yaml's hydra: section too: the sweep summary and its exit status
    assert "++hydra.callbacks.summary._target_='vaelab.compare.SweepSummary'" in argv
    assert not any("exclude_keys" in a for a in argv)  # main() derives it from the command line
    mine = saved_config_argv(["-cd", str(tmp_path / ".hydra"), "hydra.run.dir=here"])
    assert "hydra.run.dir=here" in mine and not any(a.startswith("++hydra.run.dir=") for a in mine)
    # A folder without that config keeps Hydra's meaning (extra config groups).
    assert saved_config_argv(["--config-dir", str(tmp_path), "x=1"]) == ["--config-dir", str(tmp_path), "x=1"]


def test_a_run_named_after_the_time_can_be_evaluated_resumed_and_reproduced(tiny_mnist, tmp_path, monkeypatch):
    """name=${now:%H%M%S}, Hydra's idiom for a name per launch, is saved as written; a process
    with no launch in it (vaelab eval, resume, reproduce) had not Hydra's resolvers: "not a valid
    vaelab config: Unsupported interpolation type now (key 'name')", and the run was lost to them."""
    monkeypatch.chdir(tmp_path)
    assert launch(["name=${now:%H%M%S}", f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1",
                   "hydra.run.dir=run"]) == 0
    assert "name: ${now:%H%M%S}" in (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    OmegaConf.clear_resolver("now")  # as in a fresh process: the launch above registered Hydra's
    assert vaelab(["sample", "run", "-n", "4"]) == 0
    OmegaConf.clear_resolver("now")
    assert vaelab(["resume", "run", "trainer.epochs=2"]) == 0
    OmegaConf.clear_resolver("now")
    assert vaelab(["reproduce", "run", "--out", "again"]) == 0
    assert (tmp_path / "again" / "checkpoints" / "last.pt").is_file()


def test_config_dir_given_the_run_folder_rather_than_its_hydra_folder_is_refused(tmp_path, capsys):
    """Hydra took the run folder as an extra folder of groups, composed conf/'s defaults and
    started a fresh default run, silently."""
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("name: x\n")
    run = tmp_path / "run"
    assert launch(["--config-dir", str(run), "trainer.epochs=1"]) == 2
    assert capsys.readouterr().err == (
        f"vaelab-train: error: --config-dir {run}: that is a run's folder; its saved config is in {run / '.hydra'}: "
        f"--config-dir {run / '.hydra'} --config-name config (or vaelab reproduce {run})\n")
    assert not (tmp_path / "outputs").exists()
    (tmp_path / "file").write_text("x")
    assert config_dir_error(["-cd", str(tmp_path / "file")]) == (
        f"--config-dir {tmp_path / 'file'}: not a folder; give a folder of config groups of one's own, or a run's "
        f"saved config folder, RUN_DIR/.hydra")
    assert config_dir_error(["-cd", str(run / ".hydra")]) is None
    # the other config flags, where they name nothing (Hydra's several lines before)
    assert config_dir_error(["-cd", str(tmp_path / "none")]) == (
        f"--config-dir {tmp_path / 'none'}: no such folder; give a folder of config groups of one's own, or a run's "
        f"saved config folder, RUN_DIR/.hydra")
    assert config_dir_error(["--config-name", "nope"]) == (
        "--config-name nope: vaelab's configs have no nope.yaml; to re-run a saved run: --config-dir "
        "RUN_DIR/.hydra --config-name config")
    assert config_dir_error(["--config-path", str(tmp_path / "none")]) == (
        f"--config-path {tmp_path / 'none'}: no such folder")
    assert config_dir_error(["--config-path", str(tmp_path)]) == f"--config-name config: no config.yaml in {tmp_path}"
    assert config_dir_error(["--config-path", str(run / ".hydra")]) is None
    # Hydra's multi-line "Primary config module 'vaelab.rel' not found"; a group's option taken
    # for a whole config (its overrides then failed, with a wrong '+data.root' hint)
    assert config_dir_error(["--config-path", "rel"]).startswith("--config-path rel: give an absolute folder, as in ")
    assert config_dir_error(["--config-name", "experiment/seed"]) == (
        "--config-name experiment/seed: that is an option of the config group experiment, not a whole config; "
        "choose it with experiment=seed")
    assert config_dir_error(["-cd", str(tmp_path)]) is None  # Hydra's meaning: a folder of extra config groups
    assert config_dir_error(["--config-name", "config.yaml"]) is None  # Hydra takes the name with .yaml too
    # the other files of a run's .hydra/ (a traceback from the composition), and a misspelt name
    # there (Hydra's search-path block)
    (run / ".hydra" / "hydra.yaml").write_text("hydra: {}\n")
    assert config_dir_error(["-cd", str(run / ".hydra"), "-cn", "hydra"]) == (
        f"--config-name hydra: {run / '.hydra' / 'hydra.yaml'} is Hydra's record of how the run was launched, not "
        f"its settings; those are config.yaml: --config-dir {run / '.hydra'} --config-name config")
    assert config_dir_error(["-cd", str(run / ".hydra"), "--config-name=confg"]) == (
        f"--config-name confg: no confg.yaml in {run / '.hydra'} (a run's saved config is config.yaml: --config-name "
        f"config)")
    assert config_dir_error(["-cd", str(tmp_path), "-cn", "confg"]) == f"--config-name confg: no confg.yaml in {tmp_path}"


def test_a_rerun_of_a_saved_config_gets_the_same_pre_flight(tmp_path, monkeypatch):
    """`vaelab-train -cd RUN/.hydra -cn config BAD` used to skip the pre-flight: Hydra's
    multi-line error, or a traceback once the run had started."""
    from omegaconf import OmegaConf

    from vaelab.cli_errors import precheck

    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(compose_cfg(["experiment=seed"]), tmp_path / ".hydra" / "config.yaml")
    rerun = ["-cd", str(tmp_path / ".hydra"), "-cn", "config"]
    assert precheck(saved_config_argv([*rerun, "trainer.epochs=3", "device=cpu"])) is None
    assert precheck(saved_config_argv([*rerun, "latent_sizee=3"])).startswith(
        "unknown key 'latent_sizee' in override 'latent_sizee=3'; did you mean 'latent_size'?")
    assert precheck(saved_config_argv([*rerun, "trainer.epochs=0"])) == "trainer.epochs=0: must be >= 1"
    assert precheck(saved_config_argv([*rerun, "hydra.run.dir=/proc/x"])) == ("hydra.run.dir=/proc/x: cannot make "
                                                                            "folders in /proc")
    # a folder of groups of one's own beside conf/'s: checked with it on the search path
    assert precheck(["--config-dir", str(tmp_path), "latent_sizee=3"]).startswith("unknown key 'latent_sizee'")
    # another primary config stays Hydra's to check
    assert precheck(["-cn", "other", "latent_sizee=3"]) is None
    # the folders saved_config_argv passes on are conf/config.yaml's, not words of the user's
    monkeypatch.chdir("/proc")
    assert precheck(saved_config_argv(rerun)).startswith("cannot make the run folder outputs/runs/seed/")
    monkeypatch.chdir(tmp_path)
    # a run saved before a key existed: Hydra needs '+' to add it, and the message says so
    old = OmegaConf.load(tmp_path / ".hydra" / "config.yaml")
    del old.trainer["cuda_graph"]
    OmegaConf.save(old, tmp_path / ".hydra" / "config.yaml")
    assert precheck(saved_config_argv([*rerun, "trainer.cuda_graph=true"])) == (
        "'trainer.cuda_graph' is not in this config (it was saved before vaelab had that key); add it with a "
        "leading +: '+trainer.cuda_graph=true'")
    assert precheck(saved_config_argv([*rerun, "+trainer.cuda_graph=true"])) is None
    # a saved config edited by hand: the file is named, not "override ''"
    saved = tmp_path / ".hydra" / "config.yaml"
    saved.write_text(saved.read_text() + "bogus: 1\n")
    assert precheck(saved_config_argv([*rerun, "seed=2"])) == f"{saved}: unknown key 'bogus'"
    saved.write_text(saved.read_text().replace("bogus: 1\n", "").replace("latent_size: ", "latent_size: abc #"))
    assert precheck(saved_config_argv(rerun)) == (f"{saved}: Value 'abc' of type 'str' could not be converted to "
                                                  f"Integer (key 'latent_size')")  # (as reproduce and resume say)
    saved.write_text("name: x\nlatent_size: [1, 2\nseed: 0\n")
    assert precheck(saved_config_argv(rerun)) == f"{saved}: expected ',' or ']', but got ':' (line 3, column 5)"


# --- interrupt, then resume ------------------------------------------------------------------


def test_a_run_logs_to_the_console_past_a_handler_left_on_a_closed_stream(tmp_path, capsys):
    """A console handler left on the root logger by an earlier Hydra app in this process, its
    stream (that app's captured stdout) closed since, counted as the console: `vaelab resume`
    printed nothing (CI, after an in-process sweep resume)."""
    import io

    from vaelab.train import logging_to

    gone = io.StringIO()
    gone.close()
    left = logging.StreamHandler(gone)
    left.handleError = lambda record: None  # (its 'Logging error' traceback is not what is tested)
    logging.getLogger().addHandler(left)
    try:
        with logging_to(tmp_path):
            logging.getLogger("vaelab").info("epoch 1/1: the line the user waits for")
    finally:
        logging.getLogger().removeHandler(left)
    assert "][vaelab][INFO] - epoch 1/1: the line the user waits for" in capsys.readouterr().out
    assert "the line the user waits for" in (tmp_path / "train.log").read_text()


@pytest.mark.parametrize("sig,after_step", [(signal.SIGINT, 4), (signal.SIGTERM, 9), (signal.SIGINT, 11),
                                             (signal.SIGHUP, 7)],
                         ids=["ctrl-c-in-epoch-1", "sigterm-in-epoch-2", "ctrl-c-on-last-step-of-epoch-2",
                              "hang-up-in-epoch-2"])
def test_interrupted_then_resumed_is_bit_identical(tiny_mnist, reference, tmp_path, monkeypatch, capsys, sig,
                                                   after_step):
    run = tmp_path / "run"
    with signal_at_step(monkeypatch, after_step, sig), \
            pytest.raises(Interrupted, match=f"stopped by {sig.name}.*vaelab resume"):
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), run)
    ck = ckpt_io.load(run / "checkpoints" / "last.pt")
    assert ck["state"]["step"] == after_step + 1  # finished the step it was in, then saved
    assert not (run / "metrics.json").exists()
    capsys.readouterr()

    assert vaelab(["resume", run]) == 0
    assert_same_run(run, reference)
    out, err = capsys.readouterr()  # the log on stdout, in vaelab-train's format, as the stop said it
    epoch, pos = divmod(after_step + 1, 6)  # TINY: 6 steps of 32 per epoch
    at = f"in epoch {epoch + 1} at image {pos * 32}/192" if pos else f"after epoch {epoch}"
    assert f"][vaelab][INFO] - resuming {run} from {run / 'checkpoints' / 'last.pt'} {at} (step " in out, out
    assert "resuming" not in err
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    tags = [v.tag for f in run.glob("events.out.tfevents.*") for e in EventFileLoader(str(f)).Load()
            for v in e.summary.value]
    assert tags.count("_hparams_/session_start_info") == 1  # one HParams row, written at the start


def test_a_hang_up_ignored_by_nohup_stays_ignored():
    """Under nohup a closed terminal must not stop the run: SIGHUP keeps its ignored action in
    train()'s stop and in the command's own (stop_signals_as_ctrl_c); with the default action
    both take it over. So does a Ctrl-C that a script's `vaelab-train ... &` started ignoring:
    training took it over, and stopped, where the final evaluation went on."""
    from vaelab.errors import stop_signals_as_ctrl_c
    from vaelab.train import _StopFlag

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with stop_signals_as_ctrl_c(), _StopFlag():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        with stop_signals_as_ctrl_c():
            assert signal.getsignal(signal.SIGHUP) is not signal.SIG_DFL
            with _StopFlag() as stop:
                assert signal.getsignal(signal.SIGHUP) == stop._handler
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_ctrl_c_while_a_checkpoint_is_written_does_not_offer_to_abort(caplog):
    """It said '(Ctrl-C again to abort now)', and the next Ctrl-C then waited for the checkpoint."""
    from vaelab.train import _StopFlag

    stop = _StopFlag()
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        stop.saving = True
        stop._handler(signal.SIGINT, None)
        stop._handler(signal.SIGINT, None)  # the second: still not an abort, the checkpoint comes first
        stop.saving = False
        with pytest.raises(KeyboardInterrupt):  # once it is written, a Ctrl-C aborts
            stop._handler(signal.SIGINT, None)
    assert [r.getMessage() for r in caplog.records] == [
        "got SIGINT while writing a checkpoint: stopping right after it",
        "writing the checkpoint; stopping right after it"]
    assert stop.signum == signal.SIGINT


@pytest.mark.parametrize("before_last", [False, True], ids=["after-last.pt", "mid-way-through-the-first-last.pt"])
def test_killed_at_the_first_checkpoint_then_resumed_is_bit_identical(tiny_mnist, reference, tmp_path, before_last):
    # vaelab-train, killed with SIGKILL the moment the epoch-1 last.pt is on disk; or while it
    # is being written, after best.pt (which holds the same state) and with a partial temp file.
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from vaelab import checkpoint\n"
        "save = checkpoint.save_atomic\n"
        "def save_and_die(obj, path):\n"
        "    if path.name == 'last.pt' and obj['state']['epoch'] == 1:\n"
        f"        if {before_last}:\n"
        "            (path.parent / '.last.pt.abcd1234.tmp').write_bytes(b'PK' * 100)\n"
        "        else:\n"
        "            save(obj, path)\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    save(obj, path)\n"
        "checkpoint.save_atomic = save_and_die\n"
        "from vaelab.train_cli import main\n"
        "main()\n")
    p = subprocess.run([sys.executable, "-c", script, f"data.root={tiny_mnist}", *TINY, "hydra.run.dir=run"],
                       cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr[-2000:]
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.pt").exists() != before_last
    assert ckpt_io.load(ckpt_io.latest(run / "checkpoints"))["state"]["epoch"] == 1
    assert curves(run)["epoch/val_loss"] == curves(reference)["epoch/val_loss"][:1]  # on disk before the kill

    assert vaelab(["resume", run]) == 0
    assert_same_run(run, reference)
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the partial file is gone
    missing = (f"{run / 'checkpoints' / 'last.pt'} is missing: resuming from the complete checkpoint that trained "
               "furthest, best.pt")
    assert (missing in (run / "train.log").read_text()) == before_last


def test_the_text_tab_shows_the_settings_a_resume_changed(tiny_mnist, tmp_path, monkeypatch):
    """TensorBoard's text tab kept the config the run started with after a resume that changed it,
    beside an HParams row of the new settings (review). A resume that changes nothing adds nothing."""
    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1"]), run)
    examples = json.loads((run / "metrics.json").read_text())["examples_seen"]
    assert vaelab(["resume", run, "trainer.epochs=2", "optim.lr=0.0005"]) == 0

    def texts():
        acc = EventAccumulator(str(run), size_guidance={"tensors": 0})
        acc.Reload()
        return [(e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors("config/text_summary")]
    [(s0, first), (s1, then)] = texts()
    assert (s0, s1) == (0, examples + 1)
    assert "lr: 0.001\n" in first and "epochs: 1\n" in first
    assert "lr: 0.0005\n" in then and "epochs: 2\n" in then
    # trained on from Python to 3 epochs (a change: an entry), stopped part-way (Ctrl-C) and carried on as
    # it was: the same settings, no new entry
    with signal_at_step(monkeypatch, 14), pytest.raises(Interrupted):  # in epoch 3 (6 steps an epoch)
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=3", "optim.lr=0.0005"]), run)
    assert [step for step, _ in texts()] == [0, examples + 1, 2 * examples + 1]
    assert vaelab(["resume", run, "trainer.epochs=3"]) == 0  # (train() from Python does not save its config)
    assert [step for step, _ in texts()] == [0, examples + 1, 2 * examples + 1]


def test_what_counts_as_a_change_for_the_text_tab():
    """Not a name that reads anew (name=${now:...}) nor a key a checkpoint from an older vaelab lacks:
    each resume of such a run wrote the config text again, with nothing changed (review)."""
    from vaelab.train import _carried_on_otherwise

    saved = {"name": "22-43-08", "optim": {"lr": 0.001}, "trainer": {"epochs": 2}}
    assert not _carried_on_otherwise(saved, {**saved, "name": "22-43-15"})
    assert not _carried_on_otherwise(saved, {**saved, "trainer": {"epochs": 2, "cuda_warmup": True}})
    assert _carried_on_otherwise(saved, {**saved, "trainer": {"epochs": 3}})
    assert _carried_on_otherwise(saved, {**saved, "optim": {}})


def test_a_finished_run_carried_on_is_listed_as_running_until_it_finishes_again(tiny_mnist, tmp_path, monkeypatch):
    """The HParams row's end (STATUS_SUCCESS) and its metrics stayed in the training's event file at
    the old last step, which a resume does not purge: a finished run carried on to more epochs and
    stopped was listed as finished, with the old epochs' numbers, and its hparams/* curves had a
    stale point (review). They go in the row's own file now, which a resume replaces."""
    from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader
    from tensorboard.plugins.hparams import metadata as hparams_metadata

    def row():  # (the statuses of the session ends in the run's events, and hparams/val_loss's steps)
        ends, steps = [], []
        for f in run.glob("events.out.tfevents.*"):
            for e in LegacyEventFileLoader(str(f)).Load():
                for v in e.summary.value:
                    if v.tag == "_hparams_/session_end_info":
                        content = v.metadata.plugin_data.content
                        ends.append(hparams_metadata.parse_session_end_info_plugin_data(content).status)
                    elif v.tag == "hparams/val_loss":
                        steps.append(e.step)
        return ends, sorted(steps)

    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1"]), run)
    examples = json.loads((run / "metrics.json").read_text())["examples_seen"]
    assert row() == ([api_pb2.STATUS_SUCCESS], [examples])
    with signal_at_step(monkeypatch, 8), pytest.raises(Interrupted):  # in epoch 2 (6 steps an epoch)
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=2"]), run)
    assert row() == ([], [])  # carried on, not finished: no end, no metrics
    assert vaelab(["resume", run, "trainer.epochs=2"]) == 0
    assert row() == ([api_pb2.STATUS_SUCCESS], [2 * examples])


def test_without_last_pt_a_run_resumes_from_the_checkpoint_that_trained_furthest(tiny_mnist, tmp_path, caplog):
    """It took the newest file: in a folder copied with cp -r, scp or an unzip the files' times are
    in another order, and a resume from epoch_0001.pt trained epoch 2 again over epoch_0002.pt (review)."""
    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=2", "trainer.checkpoint_every=1"]), run)
    ckpts = run / "checkpoints"
    (ckpts / "last.pt").unlink()
    os.utime(ckpts / "epoch_0001.pt", (time.time() + 60, time.time() + 60))  # the newest file now
    kept = {p.name: p.read_bytes() for p in ckpts.glob("*.pt")}
    assert ckpt_io.latest(ckpts).name in ("epoch_0002.pt", "best.pt")
    assert ckpt_io.load(ckpt_io.latest(ckpts))["state"]["epoch"] == 2
    with caplog.at_level(logging.INFO, logger="vaelab"):
        assert vaelab(["resume", run, "trainer.epochs=3"]) == 0
    assert "after epoch 2" in caplog.text and "after epoch 1" not in caplog.text
    assert (ckpts / "epoch_0002.pt").read_bytes() == kept["epoch_0002.pt"]
    # an unreadable file is the last choice, however new
    (ckpts / "last.pt").unlink()
    (ckpts / "junk.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    assert ckpt_io.latest(ckpts).name != "junk.pt"


def test_a_stop_between_an_epochs_checkpoint_writes_resumes_from_the_one_ahead_of_last_pt(tiny_mnist, tmp_path,
                                                                                          caplog):
    """best.pt and epoch_N.pt are written before last.pt: a full disk or a kill -9 between them
    left last.pt an epoch behind, and a resume with a changed setting trained that epoch again,
    beside a best.pt of the old settings' weights that nothing in the run's record showed (review).
    It carries on from the complete checkpoint ahead instead; a last.pt that cannot be read is
    still the one chosen (loading it says so). And trainer.resume=false in a run's folder is
    refused: it trained from scratch there, beside the other run's files (review)."""
    from vaelab.config import ConfigError

    run = tmp_path / "run"
    args = [f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1", "trainer.checkpoint_every=1"]
    train(compose_cfg(args), run)
    ckpts = run / "checkpoints"
    epoch1 = (ckpts / "last.pt").read_bytes()
    train(compose_cfg([*args, "trainer.epochs=2"]), run)
    (ckpts / "best.pt").unlink()  # (epoch 2 need not be the best: best.pt, where it is, is the same)
    (ckpts / "last.pt").write_bytes(epoch1)  # as a stop between epoch_0002.pt's write and last.pt's left it
    assert ckpt_io.latest(ckpts).name == "epoch_0002.pt"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vaelab"):
        assert vaelab(["resume", run, "trainer.epochs=3", "optim.lr=1e-4"]) == 0
    assert "last.pt is behind epoch_0002.pt, which trained furthest" in caplog.text
    assert "after epoch 2" in caplog.text and "from step 12" in caplog.text
    assert [json.loads(line)["lr"] for line in (run / "epochs.jsonl").read_text().splitlines()] == [1e-3, 1e-3, 1e-4]
    # ... and in the last epoch: nothing left to train, the final evaluation took the older last.pt (review)
    ended = tmp_path / "ended"
    train(compose_cfg([*args, "trainer.epochs=2", "trainer.final_eval=true"]), ended)
    (ended / "checkpoints" / "last.pt").write_bytes((ended / "checkpoints" / "epoch_0001.pt").read_bytes())
    for name in ("metrics.json", "eval.json"):
        (ended / name).unlink()
    assert vaelab(["resume", ended]) == 0
    assert json.loads((ended / "eval.json").read_text())["epoch"] == 2
    assert ckpt_io.load(ended / "checkpoints" / "last.pt")["state"]["epoch"] == 2
    (ckpts / "last.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    assert ckpt_io.latest(ckpts).name == "last.pt"
    with pytest.raises(ConfigError, match=f"trainer.resume=false: {run} holds a run already"):
        train(compose_cfg([*args, "trainer.resume=false"]), run)


def test_a_stop_while_the_run_folder_is_set_up_checkpoints_after_the_first_step(tiny_mnist, reference, tmp_path,
                                                                                monkeypatch):
    """Review: a SIGTERM between the run's first files (its event file, checkpoints/) and the
    training loop was a bare KeyboardInterrupt: a folder with no checkpoint, no stopped.json, that
    vaelab resume refused. Now the loop's stop: a checkpoint after the first step, resumed exactly."""
    import signal as signal_mod

    import vaelab.train as train_mod
    from vaelab.errors import Interrupted

    real = train_mod.RunLogger

    def logger_then_stop(*args, **kwargs):
        made = real(*args, **kwargs)
        os.kill(os.getpid(), signal_mod.SIGTERM)
        return made
    monkeypatch.setattr(train_mod, "RunLogger", logger_then_stop)
    run = tmp_path / "run"
    with pytest.raises(Interrupted, match=r"^stopped by SIGTERM at step 1 \(epoch 1, 32/192 images\)"):
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), run)
    assert json.loads((run / "stopped.json").read_text())["state"] == "interrupted"
    monkeypatch.setattr(train_mod, "RunLogger", real)
    assert vaelab(["resume", run]) == 0
    assert_same_run(run, reference)


def test_a_fresh_start_in_a_folder_with_events_drops_the_earlier_curves(tiny_mnist, reference, tmp_path):
    """A job requeued after a kill before its first checkpoint starts again in the same folder:
    the curves of the killed start must not stay beside the new ones."""
    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "seed=1"]), run)  # other numbers, then "killed"
    shutil.rmtree(run / "checkpoints")
    (run / "metrics.json").unlink()
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), run)
    assert curves(run) == curves(reference)
    assert [e["val_loss"] for e in epoch_lines(run)] == [e["val_loss"] for e in epoch_lines(reference)]


def test_a_resume_from_an_older_checkpoint_drops_the_later_epochs_from_epochs_jsonl(tiny_mnist, tmp_path):
    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1"]), run)
    one = (run / "checkpoints" / "last.pt").read_bytes()
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=2"]), run)
    first = epoch_lines(run)
    assert [e["epoch"] for e in first] == [1, 2]
    assert len(first[0]["kl_per_dim"]) == len(first[0]["mean_variance_per_dim"]) == 4
    assert first[1]["active_units"] == sum(v > 0.01 for v in first[1]["mean_variance_per_dim"])
    assert first[1]["val_loss"] == pytest.approx(first[1]["val_recon"] + first[1]["val_kl"])
    assert sum(first[1]["kl_per_dim"]) == pytest.approx(first[1]["val_kl"], rel=1e-5)
    assert [e["beta"] for e in first] == [1.0, 1.0]
    (run / "checkpoints" / "last.pt").write_bytes(one)  # epoch 2 lost: it runs again from epoch 1
    (run / "checkpoints" / "best.pt").unlink()
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=2"]), run)
    again = epoch_lines(run)
    assert [e["epoch"] for e in again] == [1, 2]
    assert [e["val_loss"] for e in again] == [e["val_loss"] for e in first]
    # lines edited by hand: those that cannot be read go, not the resume (review: a byte that is no UTF-8
    # ended it with a traceback, after it had rewritten the run's config)
    with open(run / "epochs.jsonl", "ab") as f:
        f.write(b'\xff\n{"epoch": 1, "examples_seen": Infinity}\n{"epoch": 3, "st')  # (last: cut short by a kill)
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=3"]), run)
    assert [e["epoch"] for e in epoch_lines(run)] == [1, 2, 1, 3]  # (the edited epoch-1 line stays: compare skips it)


def test_epochs_jsonl_records_the_mean_beta_of_a_kl_warm_up(tiny_mnist, tmp_path):
    """Review: its beta was the next epoch's first step's, not one this epoch's loss was taken with."""
    from vaelab.losses import beta_at

    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=2", "loss.beta=0.5",
                       "loss.kl_warmup_steps=10", "trainer.batch_size=40"]), tmp_path)
    # 192 images: steps of 40, 40, 40, 40, 32 in each epoch
    sizes = [40, 40, 40, 40, 32]
    want = [sum(beta_at(5 * e + i, 0.5, 10) * b for i, b in enumerate(sizes)) / 192 for e in range(2)]
    assert [e["beta"] for e in epoch_lines(tmp_path)] == pytest.approx(want)


def test_resume_of_a_finished_run_completes_what_a_stop_cut_short(tiny_mnist, tmp_path, capsys):
    """A stop during the end-of-training evaluation (no eval.json), or between the last checkpoint
    and metrics.json: resume has no training left, but gives the run the numbers it lacks."""
    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1", "trainer.final_eval=true"]), run)
    final = json.loads((run / "metrics.json").read_text())
    (run / "eval.json").unlink()
    capsys.readouterr()
    assert vaelab(["compare", run]) == 0
    assert capsys.readouterr().out.splitlines()[2].endswith("  done (no eval)")  # compare says so
    lr = OmegaConf.load(run / ".hydra" / "config.yaml").optim.lr
    assert vaelab(["resume", run, "trainer.final_eval_k=3", "optim.lr=0.5", "device=cpu"]) == 0
    out, err = capsys.readouterr()
    assert err.strip().splitlines()[0] == (
        "vaelab resume: run has finished training, but its end-of-training evaluation did not finish "
        "(no eval.json): evaluating it now")
    # A training setting has no epoch left to change: not written (it was, and recorded as a change
    # "from epoch 2": a reproduction trained with it from the start, and said its numbers may differ)
    # (device=... stays in the command to go on: the run's config does not have it, a GPU's run on a CPU machine)
    assert err.strip().splitlines()[-1] == (f"vaelab resume: optim.lr=0.5 changed nothing: it applies to epochs still "
                                            f"to train; to go on: vaelab resume {run} trainer.epochs=2 optim.lr=0.5 "
                                            f"device=cpu")
    assert OmegaConf.load(run / ".hydra" / "config.yaml").optim.lr == lr
    assert "optim.lr" not in (run / ".hydra" / "overrides.yaml").read_text()
    assert not (run / ".hydra" / "resumes.yaml").exists()
    assert "-ELBO (upper bound on NLL)" in out  # its numbers, as vaelab eval prints them
    # and its train.log ends with the evaluation's line, as a run's that was not stopped (it ended
    # with the line that said the evaluation had been stopped)
    assert (run / "train.log").read_text().splitlines()[-1].split(" - ", 1)[1].startswith("eval (last.pt, k=3): ELBO ")
    ev = json.loads((run / "eval.json").read_text())
    assert ev["checkpoint"].endswith("last.pt") and ev["k"] == 3
    # the setting it ran with is the run's, so compare takes these numbers as its own evaluation's
    assert OmegaConf.load(run / ".hydra" / "config.yaml").trainer.final_eval_k == 3
    assert "trainer.final_eval_k=3" in (run / ".hydra" / "overrides.yaml").read_text()
    assert vaelab(["compare", run]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].endswith("  done") and "test_from" not in out
    # an eval.json made before the run trained its last epochs (a resume with more epochs stopped
    # in its final evaluation keeps the one before, of whatever checkpoint): it was "done", and
    # resume had "nothing to do"
    assert ev["made_when"] == {"run_epochs": 1}
    for checkpoint in ("last.pt", "best.pt"):
        early = {**ev, "epoch": 0, "checkpoint": str(run / "checkpoints" / checkpoint), "made_when": {"run_epochs": 0}}
        (run / "eval.json").write_text(json.dumps(early))
        assert vaelab(["compare", run]) == 0
        assert capsys.readouterr().out.splitlines()[2].endswith("  done (no eval)")
        assert vaelab(["resume", run]) == 0
        assert ("evaluation did not finish (its eval.json was made when the run had trained 0 of its 1 epochs): "
                "evaluating it now" in capsys.readouterr().err)
        assert json.loads((run / "eval.json").read_text())["made_when"] == {"run_epochs": 1}
    # one made since, of another checkpoint (vaelab eval --checkpoint best), is the user's: left as it is
    best = {**json.loads((run / "eval.json").read_text()), "epoch": 0,
            "checkpoint": str(run / "checkpoints" / "best.pt")}
    (run / "eval.json").write_text(json.dumps(best))
    assert vaelab(["compare", run]) == 0
    assert capsys.readouterr().out.splitlines()[2].endswith("  done")
    assert vaelab(["resume", run]) == 0
    assert "nothing to do" in capsys.readouterr().err and json.loads((run / "eval.json").read_text()) == best
    # an eval.json from before made_when: of last.pt at an earlier epoch is missing, as before
    (run / "eval.json").write_text(json.dumps({k: v for k, v in {**ev, "epoch": 0}.items() if k != "made_when"}))
    assert vaelab(["compare", run]) == 0
    assert capsys.readouterr().out.splitlines()[2].endswith("  done (no eval)")
    (run / "metrics.json").unlink()
    assert vaelab(["resume", run]) == 0
    assert json.loads((run / "metrics.json").read_text())["val_loss"] == final["val_loss"]
    # started again once finished (a requeued job): the same numbers, not a second point of each
    train(OmegaConf.load(run / ".hydra" / "config.yaml"), run)
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    assert [len(acc.Scalars(f"hparams/{k}")) for k in ("val_loss", "val_recon", "val_kl", "active_units")] == [1] * 4


def test_resume_of_a_finished_run_evaluated_on_other_data_keeps_its_data_root(tiny_mnist, tmp_path, capsys):
    """The evaluation resume runs for a finished run takes data.root=...; other data than the run
    trained on (it warns) was written into the config as the run's: reproduce trained on it."""
    from tests.conftest import make_tiny_mnist

    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1", "trainer.final_eval=true"]), run)
    (run / "eval.json").unlink()
    saved = (run / ".hydra" / "config.yaml").read_text()
    other = make_tiny_mnist(tmp_path / "other", seed=1)
    capsys.readouterr()
    assert vaelab(["resume", run, f"data.root={other}"]) == 0
    assert "the data differs from what the run trained on" in capsys.readouterr().out
    assert (run / ".hydra" / "config.yaml").read_text() == saved
    assert not (run / ".hydra" / "resumes.yaml").exists()
    assert json.loads((run / "eval.json").read_text())["data_root"] == str(other.resolve())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_gpu_run_is_evaluated_and_resumed_on_a_machine_without_one(tiny_mnist, tmp_path, capsys):
    """A run trained with device=cuda, moved to a CPU machine: eval and sample take --device,
    resume takes device=cpu; only a resume that keeps device=cuda is refused, and it says how."""
    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1"]), run)
    saved = run / ".hydra" / "config.yaml"
    saved.write_text(saved.read_text().replace("device: cpu", "device: cuda"))
    assert vaelab(["eval", run, "--device", "cpu", "--k", "2"]) == 0
    assert vaelab(["resume", run]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "device=cuda: no CUDA GPU is visible here; use device=cpu or device=auto")
    assert vaelab(["resume", run, "device=cpu", "trainer.epochs=2"]) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


def test_resume_with_more_epochs_continues_and_records_the_override(tiny_mnist, reference, tmp_path, capsys):
    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1"]), run)  # a finished 1-epoch run
    (run / ".hydra" / "overrides.yaml").write_text("- latent_size=4\n- trainer.epochs=1\n")

    assert vaelab(["resume", run, "trainer.epochs=2"]) == 0
    assert vaelab(["resume", run, "trainer.epochs=3"]) == 0
    assert_same_run(run, reference)
    before = files_snapshot(run)
    assert vaelab(["resume", run]) == 0  # finished: nothing to do, nothing written
    assert vaelab(["resume", run, "trainer.epochs=1"]) == 0
    assert vaelab(["resume", run, "optim.lr=1e-4"]) == 0  # (it said nothing of the setting it left unused)
    assert files_snapshot(run) == before
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-3].startswith(f"vaelab resume: nothing to do, {run} has trained all 3 epochs of trainer.epochs=3; "
                              f"to go on: vaelab resume {run} trainer.epochs=6")
    assert err[-2].startswith(f"vaelab resume: nothing to do, {run} has trained 3 epochs, more than "
                              f"trainer.epochs=1; to go on:")
    assert err[-1] == (f"vaelab resume: nothing to do, {run} has trained all 3 epochs of trainer.epochs=3 (so "
                       f"optim.lr=1e-4 changed nothing: it applies to epochs still to train); to go on: vaelab resume "
                       f"{run} trainer.epochs=6 optim.lr=1e-4")
    assert vaelab(["resume", run, "trainer.final_eval_k=10"]) == 0  # an evaluation setting: vaelab eval's
    assert capsys.readouterr().err.strip().endswith(f"; another evaluation of it: vaelab eval {run} --k 10")
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert saved["trainer"]["epochs"] == 3 and saved["model"]["latent_size"] == "${latent_size}"
    # The HParams row shows the config the run ended with (one row: its own event file, replaced)
    from tensorboard.plugins.hparams import metadata as hparams_metadata
    assert len(list(run.glob("events.out.tfevents.*.hparams"))) == 1
    acc = EventAccumulator(str(run))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    assert hparams_metadata.parse_session_start_info_plugin_data(content).hparams["trainer.epochs"].number_value == 3
    # Each key once, the last value: `vaelab reproduce` of this run re-runs what it ended as.
    assert yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) == ["latent_size=4", "trainer.epochs=3"]


def test_resume_takes_the_thread_count_the_run_had(tiny_mnist, reference, tmp_path):
    """CPU float sums depend on the thread count: a run resumed in a process with another count
    (another machine, a launcher's worker) goes on with its own and ends bit-identical; the
    process gets its count back for what it runs next (a sweep's next job)."""
    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1"]), run)
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert vaelab(["resume", run, "trainer.epochs=3"]) == 0
        assert torch.get_num_threads() == threads + 1
    finally:
        torch.set_num_threads(threads)
    assert_same_run(run, reference)
    assert json.loads((run / "metrics.json").read_text())["torch_threads"] == threads
    assert f"using {threads} CPU threads, as the run did (this process had {threads + 1})" in \
        (run / "train.log").read_text()


@pytest.mark.parametrize("old_checkpoint", [False, True], ids=["checkpoint-now", "checkpoint-before-log_beta"])
def test_a_warm_up_resumed_mid_interval_logs_the_betas_its_loss_was_taken_with(tiny_mnist, tmp_path, monkeypatch,
                                                                              old_checkpoint):
    """train/beta is the mean beta of its log interval: a run stopped part-way through one logs
    the same values once resumed, from a checkpoint that kept the interval's beta sum or (made
    before it did) one that did not."""
    args = [f"data.root={tiny_mnist}", *TINY, "trainer.epochs=2", "loss.beta=4", "loss.kl_warmup_steps=20",
            "trainer.log_every=4"]
    reference = tmp_path / "reference"
    train(compose_cfg(args), reference)
    run = tmp_path / "run"
    # epoch 2 (6 steps an epoch), one step after the log point at step 8
    with signal_at_step(monkeypatch, 9), pytest.raises(Interrupted):
        train(compose_cfg(args), run)
    last = run / "checkpoints" / "last.pt"
    ck = ckpt_io.load(last)
    beta_at = train_mod.beta_at
    assert ck["state"]["step"] == 10 and ck["state"]["log_beta"] == (beta_at(8, 4.0, 20) + beta_at(9, 4.0, 20)) * 32
    if old_checkpoint:
        del ck["state"]["log_beta"]
        ckpt_io.save_atomic(ck, last)
    _after_existing_events(run)
    train(compose_cfg([*args, "trainer.resume=true"]), run)

    def betas(d):
        acc = EventAccumulator(str(d), size_guidance={"scalars": 0})
        acc.Reload()
        return [(e.step, e.value) for e in acc.Scalars("train/beta")]
    # steps 4, 6 (epoch 1's last two steps, at its end), 8 and 12
    assert betas(run) == betas(reference) and [x for x, _ in betas(run)] == [4 * 32, 6 * 32, 8 * 32, 12 * 32]


def test_resume_part_way_through_an_epoch_needs_that_epoch(tiny_mnist, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    with signal_at_step(monkeypatch, 8), pytest.raises(Interrupted):  # in epoch 2 (6 steps an epoch)
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), run)
    before = files_snapshot(run)
    capsys.readouterr()
    assert vaelab(["resume", run, "trainer.epochs=1"]) == 2
    assert capsys.readouterr().err.strip() == ("vaelab resume: error: trainer.epochs=1: the run stopped part-way "
                                               "through epoch 2; give trainer.epochs=2 or more to finish it")
    assert files_snapshot(run) == before
    assert vaelab(["resume", run, "trainer.epochs=2"]) == 0
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


def test_resume_trains_on_with_the_optimizer_settings_it_writes_into_the_config(finished_run, tmp_path):
    """Adam's moments come from the checkpoint, its hyperparameters from the (new) config."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = ckpt_io.load(run / "checkpoints" / "last.pt")["optimizer"]
    assert vaelab(["resume", run, "trainer.epochs=2", "optim.eps=1e-4", "optim.weight_decay=0.5",
                   "optim.betas=[0.5,0.9]", "optim.impl=forloop"]) == 0
    after = ckpt_io.load(run / "checkpoints" / "last.pt")["optimizer"]
    [group] = after["param_groups"]
    assert (group["eps"], group["weight_decay"], tuple(group["betas"])) == (1e-4, 0.5, (0.5, 0.9))
    assert not group["fused"] and not group["foreach"]
    steps = [int(st["step"]) for st in after["state"].values()]
    assert steps == [int(st["step"]) * 2 for st in before["state"].values()]  # carried on, not restarted
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["optim"]
    assert (saved["eps"], saved["weight_decay"], saved["betas"], saved["impl"]) == (1e-4, 0.5, [0.5, 0.9], "forloop")


def test_compare_shows_an_unfinished_run_from_its_events(tiny_mnist, tmp_path, monkeypatch, capsys):
    with signal_at_step(monkeypatch, 8), pytest.raises(Interrupted):
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), tmp_path / "stopped")
    capsys.readouterr()
    assert vaelab(["compare", tmp_path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["run", "epochs", "train_loss", "val_loss", "val_recon", "val_kl", "active_units",
                              "state"]
    row = out[2].split()
    assert row[0] == "stopped" and row[1] == "1" and row[-1] == "interrupted"
    assert row[-2].isdigit()  # active units, an integer even when read back from the events

    # A diverged run says so; a run resumed to its end is done again.
    with pytest.raises(train_mod.NonFiniteLoss):
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "optim.lr=1e30"]), tmp_path / "diverged")
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.resume=true"]), tmp_path / "stopped")
    capsys.readouterr()
    assert vaelab(["compare", tmp_path]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("loss.recon=mse runs: train_loss, val_loss")  # the units footnote
    states = {ln.split()[0]: ln.split()[-1] for ln in lines[2:-1]}
    assert states == {"diverged": "diverged", "stopped": "done"}


def test_deterministic_flag_reruns_bit_identically(tiny_mnist, tmp_path, monkeypatch):
    """...and is the run's own: the next run in the process (a sweep's next job) runs as before."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)  # a user's choice, kept after the run
    try:
        for name in ("a", "b"):
            train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1", "trainer.deterministic=true"]),
                  tmp_path / name)
            assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark is True
            assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        assert_same_run(tmp_path / "a", tmp_path / "b")
    finally:
        torch.use_deterministic_algorithms(False)


# --- bad input: one clear line, exit 2, nothing written ----------------------------------------


@pytest.fixture(scope="module")
def finished_run(tiny_mnist, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1"]), run)
    return run


@pytest.fixture(scope="module")
def other_model_checkpoint(tiny_mnist, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("other") / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1", "latent_size=2"]), run)
    return run / "checkpoints" / "last.pt"


class Began(Exception):
    """Raised in place of a reproduction's training (stop_reproduce_at): a test reads what came before."""


def stop_reproduce_at(monkeypatch, name: str) -> None:
    """vaelab reproduce raises Began where it would call workflow.NAME (_run_child: its training;
    _replayed: its changes part-way)."""
    import vaelab.workflow as workflow_mod

    def began(*args, **kwargs):
        raise Began
    monkeypatch.setattr(workflow_mod, name, began)


def _corrupt(path: Path, _):
    path.write_bytes(os.urandom(4096))


def _truncate(path: Path, _):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _truncate_alone(path: Path, _):  # (the run's only checkpoint)
    for p in path.parent.glob("*.pt"):
        if p != path:
            p.unlink()
    _truncate(path, _)


def _other_model(path: Path, other: Path):
    shutil.copy(other, path)


def _flip(path: Path, _):
    """Bytes changed inside a tensor's data: still a valid zip, but its CRC-32 no longer matches."""
    with zipfile.ZipFile(path) as z:
        big = max(z.infolist(), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    at = big.header_offset + 30 + len(big.filename) + len(big.extra) + 64  # into the member's bytes
    data[at:at + 16] = bytes(b ^ 0xFF for b in data[at:at + 16])
    path.write_bytes(bytes(data))


NAN_REST = " (it checks them before each save): the file was changed since; use another checkpoint"


def _nan_weight(path: Path, _):
    """A weight set to nan after training (which checks them before each save)."""
    ck = torch.load(path, weights_only=True)
    ck["model"]["decoder.0.weight"][0, 0] = float("nan")
    torch.save(ck, path)


def _missing(path: Path, _):
    for p in path.parent.glob("*.pt"):
        p.unlink()


@pytest.mark.parametrize("damage,expect", [
    (_corrupt, "not a checkpoint file (no zip header"),
    (_truncate, "unreadable checkpoint (truncated or corrupted)"),
    # (review: no other checkpoint, and the line said nothing of what to do)
    (_truncate_alone, "unreadable checkpoint (truncated or corrupted): File is not a zip file; it is the run's only "
                      "checkpoint: train the run again, in a folder of its own, with vaelab-train --config-dir "),
    (_flip, "corrupted checkpoint (archive/data/"),
    (_other_model, "made for a different model"),
    (_nan_weight, "its weights hold nan or inf (decoder.0.weight), which training never saves"),
    # a finished run (metrics.json): not "stopped before its first checkpoint; start it again"
    (_missing, "no checkpoint, nothing to resume (the run finished, and its checkpoints have been deleted); train it "
               "anew in a folder of its own with: vaelab-train --config-dir "),
], ids=["corrupted", "truncated", "truncated-alone", "flipped-bytes", "different-model", "nan-weight", "missing"])
def test_bad_checkpoint_names_the_file_and_overwrites_nothing(finished_run, other_model_checkpoint, tmp_path,
                                                              capsys, damage, expect):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    last = run / "checkpoints" / "last.pt"
    damage(last, other_model_checkpoint)
    before = files_snapshot(run)
    capsys.readouterr()

    assert vaelab(["resume", run, "trainer.epochs=5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    named = last.parent if damage is _missing else last
    assert len(err) == 1 and err[0].startswith(f"vaelab resume: error: {named}: ") and expect in err[0], err
    assert files_snapshot(run) == before
    if damage is _missing:  # (what this command asked for goes with it)
        assert err[0].endswith(f"{run / '.hydra'} --config-name config trainer.epochs=5")
    if damage in (_corrupt, _truncate, _flip, _nan_weight):  # what resume takes once the damaged last.pt is gone
        furthest = max((p for p in last.parent.glob("*.pt") if p != last),
                       key=lambda p: (ckpt_io.load(p)["state"]["examples"], p.stat().st_mtime))
        assert err[0].endswith(f"; to resume from the furthest trained other checkpoint, {furthest.name}, move "
                               f"last.pt out of {last.parent}")
    if damage is _nan_weight:  # (eval failed in a picture's SVD with a traceback; sample drew a grid of nan)
        for cmd in (["eval", run, "--k", "2"], ["sample", run, "--out", tmp_path / "s.png"]):
            assert vaelab(cmd) == 2
            assert capsys.readouterr().err == f"vaelab {cmd[0]}: error: {last}: {expect}{NAN_REST}\n"
        assert files_snapshot(run) == before and not (tmp_path / "s.png").exists()


def test_the_finite_weights_check_reads_parameters_not_a_models_own_buffers_or_extra_state(tmp_path):
    """A model of one's own may keep an inf buffer (a clamp's bound) or a dict of extra state:
    check_finite refused its every checkpoint, the run's own final evaluation too, and the
    shape check raised AttributeError on the dict (review)."""
    class Clamped(MLPVAE):
        def __init__(self):
            super().__init__(latent_size=2, hidden=[8])
            self.register_buffer("logvar_hi", torch.tensor(float("inf")))

        def get_extra_state(self):
            return {"note": "mine"}

        def set_extra_state(self, state):
            pass

    model = Clamped()
    ck = {"model": model.state_dict()}
    ckpt_io.check_finite(ck, tmp_path / "x.pt", model)
    ckpt_io.check_compatible(ck, model, tmp_path / "x.pt")
    ck["model"]["encoder.0.bias"] = torch.full_like(ck["model"]["encoder.0.bias"], float("inf"))
    with pytest.raises(ckpt_io.CheckpointError, match=r"x.pt: its weights hold nan or inf \(encoder.0.bias\)"):
        ckpt_io.check_compatible(ck, model, tmp_path / "x.pt")
    ckpt_io.check_finite({"not": "a checkpoint"}, tmp_path / "x.pt", model)  # (check_resumable's to refuse)
    ck["model"] = model.state_dict()
    ck["model"]["logvar_hi"] = torch.tensor(float("nan"))  # (inf may be the model's own; nan never is)
    with pytest.raises(ckpt_io.CheckpointError, match=r"its weights hold nan or inf \(logvar_hi\)"):
        ckpt_io.check_finite(ck, tmp_path / "x.pt", model)


def test_resume_of_a_read_only_run_is_one_line(finished_run, tmp_path, capsys, monkeypatch):
    import vaelab.workflow as workflow

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    # As root the mode bits do not stop writes; a read-only mount does, and access() says so.
    monkeypatch.setattr(workflow.os, "access", lambda path, mode: Path(path).name != "checkpoints")
    capsys.readouterr()
    assert vaelab(["resume", run, "trainer.epochs=5"]) == 2
    assert capsys.readouterr().err.strip() == (f"vaelab resume: error: {run / 'checkpoints'}: not writable; "
                                               f"resume writes checkpoints, logs and the config there")


def test_a_sweep_job_waits_for_the_job_training_in_its_folder(tmp_path):
    """only_process(waiting=...), which a sweep's job takes before it looks at its folder:
    parallel Optuna trials that drew the same values got one folder, and the second was refused
    ('another process is training this run now'), which ended the study."""
    import threading

    events = []

    def second_job():
        with ckpt_io.only_process(tmp_path, waiting=lambda: events.append("waiting")):
            events.append("has the folder")

    with ckpt_io.only_process(tmp_path):  # the first job, training
        t = threading.Thread(target=second_job)
        t.start()
        t.join(0.5)
        assert events == ["waiting"] and t.is_alive()
        events.append("first done")
    t.join(10)
    assert events == ["waiting", "first done", "has the folder"]


def test_resume_of_a_run_another_process_trains_is_one_line(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = files_snapshot(run)
    capsys.readouterr()
    with ckpt_io.only_process(run):  # what a vaelab-train still running on it holds
        assert vaelab(["resume", run, "trainer.epochs=5"]) == 2
        with pytest.raises(ckpt_io.CheckpointError, match="another process is training this run now"):
            train(compose_cfg([f"data.root={finished_run.parent}", *TINY]), run)
    assert capsys.readouterr().err.strip() == (f"vaelab resume: error: {run}: another process is training this run "
                                               f"now; let it finish or stop it (Ctrl-C) first")
    assert files_snapshot(run) == before
    assert vaelab(["resume", run, "trainer.epochs=2"]) == 0  # the lock went with its holder


def test_resume_saves_a_float_setting_given_as_an_integer_as_a_float(finished_run, tmp_path):
    """loss.beta=4 was saved as 4 (an int), and compare showed 4 beside another run's 4.0."""
    from vaelab.workflow import _updated_files, apply_overrides, load_run_config

    cfg = load_run_config(finished_run / ".hydra" / "config.yaml", here=False)
    parsed = apply_overrides(cfg, ["loss.beta=4", "trainer.epochs=3"])
    saved = yaml.safe_load(_updated_files(finished_run, parsed, cfg)[0])
    assert saved["loss"]["beta"] == 4.0 and isinstance(saved["loss"]["beta"], float)
    assert saved["trainer"]["epochs"] == 3 and isinstance(saved["trainer"]["epochs"], int)


def test_resume_applies_a_dict_value_as_vaelab_train_does(tmp_path):
    """model.kwargs={b:2} replaced the whole dict in resume ({b: 2}) and merged into it in
    vaelab-train ({a: 1, b: 2})."""
    from vaelab.workflow import apply_overrides

    from vaelab.workflow import _updated_files

    overrides = ["+model.kwargs.a=1", "+model.kwargs.b=5"]
    cfg = compose_cfg(overrides)
    parsed = apply_overrides(cfg, ["model.kwargs={b:2}"])
    assert cfg.model.kwargs == compose_cfg([*overrides, "model.kwargs={b:2}"]).model.kwargs == {"a": 1, "b": 2}
    # ... and the config resume saves says so (it trained with a and b, and saved b alone: a later
    # eval, resume or reproduce then found model.kwargs.a missing)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(compose_cfg(overrides)))
    saved = yaml.safe_load(_updated_files(tmp_path, parsed, cfg)[0])
    assert saved["model"]["kwargs"] == {"a": 1, "b": 2}


class ScaledVAE(MLPVAE):
    """A model of one's own with a constructor argument that changes its numbers (the config
    check reads its default; it is never built here)."""

    def __init__(self, *args, scale: float = 1.0, widths: tuple = (8, 4), opts: dict = {"a": 1},  # noqa: B006
                 extra_opts=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = scale


class ChildVAE(ScaledVAE):
    """... and one that passes its parent's arguments up through **kwargs."""

    def __init__(self, *args, extra: int = 0, **kwargs):
        super().__init__(*args, **kwargs)


def test_resume_says_when_an_argument_of_a_model_of_ones_own_changes(tiny_mnist, tmp_path, capsys, caplog):
    """Review: model.kwargs.act=tanh on weights trained with silu carried on unsaid, where vaelab's
    own model.activation is refused."""
    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1",
                       f"model._target_={ScaledVAE.__module__}.ScaledVAE", "+model.kwargs.scale=1.0"]), run)
    assert vaelab(["resume", run, "trainer.epochs=2", "model.kwargs.scale=0.5", "model.kwargs.widths=[8,4]"]) == 0
    said = ("model.kwargs.scale=0.5 (was 1.0): the weights trained so far carry on under it; vaelab cannot tell what "
            "an argument of a model of one's own changes (a change of shapes is refused): start a new run if it "
            "changes what the weights mean")
    assert said in (run / "train.log").read_text()
    assert vaelab(["resume", run, "trainer.epochs=3", "model.kwargs.scale=0.5"]) == 0  # (no change: nothing said)
    assert (run / "train.log").read_text().count("carry on under") == 1
    # another class, the same weights' names and shapes: taken unsaid (review)
    assert vaelab(["resume", run, "trainer.epochs=4", f"model._target_={ChildVAE.__module__}.ChildVAE"]) == 0
    assert (f"model._target_={ChildVAE.__module__}.ChildVAE (was {ScaledVAE.__module__}.ScaledVAE): the weights "
            f"trained so far carry on in another class") in (run / "train.log").read_text()
    # ... not the same class under another of its names (review)
    from vaelab.workflow import _own_model_changes
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        _own_model_changes([("model._target_", "vaelab.models.MLPVAE", "vaelab.models.mlp.MLPVAE")])
    assert "another class" not in caplog.text


def test_reproduce_leaves_out_an_argument_the_run_left_out_until_a_resume_gave_it(tiny_mnist, tmp_path,
                                                                                     monkeypatch, caplog):
    """model.kwargs.scale left out (the constructor's 1.0 trained), then `vaelab resume RUN
    model.kwargs.scale=0.5`: the record's null before it made the reproduction build the model with
    scale=None (review: a TypeError in the constructor), and the resume's line said "was null" where
    its warning said 1.0. Review of that fix: an entry of a dict argument (opts.a) left opts={} in
    the first part, not the default; and one added to the config by hand, then given on the command
    line, took the hand-made value as the one before."""
    import vaelab.workflow as workflow_mod
    from vaelab.workflow import _replay

    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1",
                       f"model._target_={ScaledVAE.__module__}.ScaledVAE"]), run)
    config = run / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("  kwargs: {}\n", "  kwargs:\n    scale: 0.25\n"))  # (by hand)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vaelab"):
        assert vaelab(["resume", run, "trainer.epochs=2", "model.kwargs.scale=0.5", "model.kwargs.opts.a=2"]) == 0
    # (an entry of a dict argument left out replaces the whole default: said so, review)
    assert ("model.kwargs.scale=0.5 (was left out: 1.0), model.kwargs.opts.a=2 (was left out with all of "
            "model.kwargs.opts, the constructor's {'a': 1}) from step 6") in caplog.text
    left = ["model.kwargs.scale", "model.kwargs.opts"]  # (the outermost part left out: opts, whole)
    assert yaml.safe_load((run / ".hydra" / "resumes.yaml").read_text())[-1]["left_out"] == left
    assert _replay(run)[0][0]["left_out"] == left
    firsts = []

    def first_part(cmd, *args, **kwargs):  # the config the reproduction's first part trains with
        firsts.append(OmegaConf.load(Path(cmd[cmd.index("--config-dir") + 1]) / "config.yaml"))
        raise Began
    monkeypatch.setattr(workflow_mod, "_run_child", first_part)
    with pytest.raises(Began):
        workflow_mod.reproduce(run, tmp_path / "again")
    assert firsts[0].model.kwargs == {} and firsts[0].trainer.epochs == 1
    # a dict the run gave, {} included, is no argument left out (review of the fix: opts={a:3} replaced whole was
    # recorded as left out, and opts={} given became the default in the reproduction)
    for name, given, resumed, said, left_out, first_opts in (
            ("whole", "+model.kwargs.opts={a:3}", "model.kwargs.opts={a:5}",
             "model.kwargs.opts={'a': 5} (was {'a': 3})", None, {"a": 3}),
            ("empty", "+model.kwargs.opts={}", "model.kwargs.opts.a=5",
             "model.kwargs.opts.a=5 (was left out of model.kwargs.opts)", ["model.kwargs.opts.a"], {})):
        run = tmp_path / name / "run"
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1",
                           f"model._target_={ScaledVAE.__module__}.ScaledVAE", given]), run)
        assert vaelab(["resume", run, "trainer.epochs=2", resumed]) == 0
        assert said in (run / "train.log").read_text()
        assert yaml.safe_load((run / ".hydra" / "resumes.yaml").read_text())[-1].get("left_out") == left_out
        firsts.clear()
        with pytest.raises(Began):
            workflow_mod.reproduce(run, run.parent / "again")
        assert firsts[0].model.kwargs.opts == first_opts


def test_the_config_check_reads_a_missing_constructor_argument_as_its_default(tmp_path):
    """A model.kwargs entry the saved config lacks takes the constructor's default: refused where
    that is not what the run trained with (a review's scale=0.25 run was evaluated at 1.0), not
    where it is. device and trainer.progress are the machine's, not the run's."""
    from vaelab.config import ConfigError, load_run_config

    model = [f"model._target_={ScaledVAE.__module__}.ScaledVAE"]
    trained = OmegaConf.to_container(compose_cfg([*model, "+model.kwargs.scale=1.0", "trainer.progress=false"]))
    cfg_file = tmp_path / "config.yaml"
    raw = OmegaConf.to_container(compose_cfg(model))
    del raw["device"], raw["trainer"]["progress"]
    cfg_file.write_text(OmegaConf.to_yaml(raw))

    def check():
        ckpt_io.check_config_whole({"config": trained}, "last.pt", cfg_file, load_run_config(cfg_file, here=False))
    check()  # scale=1.0 is the default: the same model
    trained["model"]["kwargs"] = {"scale": 1, "widths": [8, 4]}  # as YAML reads them: still the defaults (review)
    check()
    trained["model"]["kwargs"] = {"opts": {"a": 1}}  # an entry of a dict default: read there (review)
    check()
    trained["model"]["kwargs"] = {"extra_opts": {"a": 1}}  # the argument's default is None: that is the value
    with pytest.raises(ConfigError, match=r"has no model.kwargs.extra_opts.a; .* would be null"):
        check()
    raw["model"]["kwargs"] = {"extra_opts": None}  # a bare `extra_opts:`, its lines lost: refused (review)
    cfg_file.write_text(OmegaConf.to_yaml(raw))
    with pytest.raises(ConfigError, match=r"has no model.kwargs.extra_opts.a"):
        check()
    (tmp_path / "overrides.yaml").write_text("- +model.kwargs.extra_opts={a:1}\n")  # (the launch gave it a dict)
    with pytest.raises(ConfigError, match=r"has no model.kwargs.extra_opts.a"):
        check()
    (tmp_path / "overrides.yaml").write_text("- model.kwargs.extra_opts=null\n")  # ... set so by a resume: a change
    check()
    (tmp_path / "overrides.yaml").unlink()
    trained["model"]["kwargs"] = {"opts": {"a": 5, "b": 7}}  # a dict the config gives, an entry of it lost: the
    raw["model"]["kwargs"] = {"opts": {"a": 5}}  # constructor gets the config's dict whole, not the default's b
    cfg_file.write_text(OmegaConf.to_yaml(raw))
    with pytest.raises(ConfigError, match=r"has no model.kwargs.opts.b; .* would be whatever the constructor does"):
        check()
    raw["model"]["kwargs"] = {}
    cfg_file.write_text(OmegaConf.to_yaml(raw))
    trained["model"]["kwargs"] = {"scale": 0.25}
    with pytest.raises(ConfigError, match=r"has no model.kwargs.scale; the run trained with model.kwargs.scale=0.25 "
                                          r"\(last.pt\), and without it model.kwargs.scale would be 1.0"):
        check()
    # the same through a subclass that passes it up in **kwargs (accepted, at scale 1.0: review)
    raw["model"]["_target_"] = f"{ChildVAE.__module__}.ChildVAE"
    cfg_file.write_text(OmegaConf.to_yaml(raw))
    trained["model"]["_target_"] = f"{ChildVAE.__module__}.ChildVAE"
    with pytest.raises(ConfigError, match=r"has no model.kwargs.scale; .* would be 1.0"):
        check()
    trained["model"]["kwargs"] = {"other": 3}  # a **kwargs that no constructor up the line takes: no default to read
    with pytest.raises(ConfigError, match=r"has no model.kwargs.other; .* would be whatever the constructor does "
                                          r"without it"):
        check()
    trained["model"]["kwargs"] = {}
    del raw["trainer"]["eval_batch_size"]  # a setting of the run's: caught, and said as one types it
    cfg_file.write_text(OmegaConf.to_yaml(raw))
    trained["trainer"]["eval_batch_size"] = 64
    with pytest.raises(ConfigError, match="has no trainer.eval_batch_size; the run trained with "
                                          "trainer.eval_batch_size=64 .* trainer.eval_batch_size would be 2000"):
        check()


@pytest.mark.parametrize("command", ["resume", "eval", "reproduce"])
def test_a_line_lost_from_a_runs_config_is_refused_not_filled_with_the_default(finished_run, tmp_path, capsys,
                                                                               command):
    """With `batch_size: 32` cut out of .hydra/config.yaml, resume went on at the default 128 and
    recorded nothing, eval ran, and reproduce ended in a traceback (review)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cfg_file = run / ".hydra" / "config.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("  batch_size: 32\n", "", 1))
    before = files_snapshot(run)
    args = {"resume": [run, "trainer.epochs=2"], "eval": [run, "--k", "2"], "reproduce": [run, "--out", tmp_path / "r"]}
    capsys.readouterr()
    assert vaelab([command, *args[command]]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"vaelab {command}: error: {cfg_file}: has no trainer.batch_size; the run trained with "
                   f"trainer.batch_size=32 (last.pt), and without it trainer.batch_size would be 128: is the "
                   f"file whole? put the line back" + (", or give trainer.batch_size=VALUE" if command == "resume"
                                                       else ""))
    assert files_snapshot(run) == before and not (tmp_path / "r").exists()
    if command == "resume":  # given on the command line, it stands in for the line (and goes into the config)
        # A finished run: also when nothing trains, as its evaluation reads the file (review); only that line, and
        # no record of a resume (a second review: optim.lr=0.5 was saved, and recorded as a change at epoch 2)
        assert vaelab(["resume", run, "trainer.batch_size=32", "optim.lr=0.5"]) == 0
        text = cfg_file.read_text()
        assert "  batch_size: 32\n" in text and "lr: 0.5" not in text and not (run / ".hydra" / "resumes.yaml").exists()
        assert vaelab(["resume", run, "trainer.epochs=2"]) == 0
        # ... and so does another value: a change, as any KEY=VALUE of resume's (it said "give loss.impl=VALUE" and
        # refused loss.impl=auto for a line lost whose run trained with torch: review)
        cfg_file.write_text(cfg_file.read_text().replace("  impl: auto\n", "", 1))
        assert vaelab(["resume", run, "trainer.epochs=2"]) == 2 and "has no loss.impl" in capsys.readouterr().err
        assert vaelab(["resume", run, "loss.impl=torch"]) == 0 and "  impl: torch\n" in cfg_file.read_text()


def test_a_run_whose_saved_config_was_deleted_is_told_where_a_copy_is(finished_run, tmp_path, capsys):
    """It was 'not a vaelab run directory', with no way back, though its checkpoints hold the config."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / ".hydra" / "config.yaml").unlink()
    for command in ("resume", "eval", "reproduce"):
        assert vaelab([command, run]) == 2
        assert capsys.readouterr().err.strip() == (
            f"vaelab {command}: error: {run}: a run without its saved config, .hydra/config.yaml (deleted or "
            f"moved?); each checkpoint keeps a copy, the 'config' entry of {run / 'checkpoints' / 'last.pt'}: "
            f"written back as {run / '.hydra' / 'config.yaml'}, it makes the run usable again (a relative data.root "
            f"in it is relative to the folder the run began in)")
    config = ckpt_io.load(run / "checkpoints" / "last.pt")["config"]  # ... as the line says
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    assert vaelab(["resume", run, "trainer.epochs=2"]) == 0


def test_a_run_carried_on_from_python_under_other_arguments_is_not_evaluated_as_saved(tiny_mnist, tmp_path,
                                                                                       caplog):
    """train() carrying a run on with a constructor argument its saved config lacks (README: it
    warns) evaluated, at the end, a model built from the saved config: one it never trained."""
    model = [f"model._target_={ScaledVAE.__module__}.ScaledVAE", f"data.root={tiny_mnist}", *TINY]
    train(compose_cfg([*model, "trainer.epochs=1"]), tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        m = train(compose_cfg([*model, "trainer.epochs=2", "+model.kwargs.scale=0.25", "trainer.final_eval=true"]),
                  tmp_path / "run")
    assert m["epochs"] == 2 and not (tmp_path / "run" / "eval.json").exists()
    assert any(r.getMessage().startswith("the end-of-training evaluation did not run: ") and
               "has no model.kwargs.scale; the run trained with model.kwargs.scale=0.25" in r.getMessage() and
               r.getMessage().endswith(f"once the saved config says what the run trained with, vaelab resume "
                                       f"{tmp_path / 'run'} runs it") for r in caplog.records)


def test_a_damaged_run_at_its_final_evaluation_still_fails(tiny_mnist, tmp_path, monkeypatch):
    """Only a run carried on from Python under other settings has its evaluation skipped with a
    warning; a config or checkpoint damaged under a run fails it, as before (review: exit 0)."""
    import vaelab.evaluate_run as eval_mod

    def damaged(*args, **kwargs):
        raise ckpt_io.CheckpointError("last.pt: unreadable checkpoint (truncated or corrupted)")
    monkeypatch.setattr(eval_mod, "evaluate_run", damaged)
    with pytest.raises(ckpt_io.CheckpointError, match="truncated"):
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1", "trainer.final_eval=true"]),
              tmp_path / "run")


def test_resume_with_missing_data_changes_nothing(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "stopped.json").write_text('{"state": "diverged", "reason": "x"}')
    before = files_snapshot(run)
    capsys.readouterr()
    assert vaelab(["resume", run, f"data.root={tmp_path / 'nowhere'}", "trainer.epochs=5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vaelab resume: error: MNIST not found in") and "\n" not in err
    assert files_snapshot(run) == before  # config, overrides, stopped.json, events: as they were
    # data too small for the run's data.val_size: the message names the data.root given, not only
    # data.val_size, which the user did not type
    from tests.conftest import make_tiny_mnist
    small = make_tiny_mnist(tmp_path / "small", n_train=50)
    assert vaelab(["resume", run, f"data.root={small}", "trainer.epochs=5"]) == 2
    too_few = (f"error: data.root={small}: its training split has 50 images, too few for the run's "
               f"data.val_size=64 (set when it trained): is this the data the run trained on?")
    assert capsys.readouterr().err.strip() == f"vaelab resume: {too_few}"
    assert files_snapshot(run) == before
    # eval and reproduce name it as typed there, --data-root (it splits as the run did)
    given = too_few.replace(f"data.root={small}", f"--data-root {small}")
    assert vaelab(["eval", run, "--data-root", small, "--k", "1", "--no-pictures"]) == 2
    assert capsys.readouterr().err.strip() == f"vaelab eval: {given}"
    # (reproduce: vaelab-train's own check of data.val_size spoke of the setting, after a new folder)
    assert vaelab(["reproduce", run, "--data-root", small, "--out", tmp_path / "again"]) == 2
    assert capsys.readouterr().err.strip() == f"vaelab reproduce: {given}"
    assert not (tmp_path / "again").exists()


def test_a_run_that_diverged_before_its_first_checkpoint_is_named_as_such(tiny_mnist, tmp_path, capsys):
    """eval spoke of a --checkpoint last never given, and resume offered to start the run again
    as it was, which blows up at the same step."""
    run = tmp_path / "run"
    with pytest.raises(train_mod.NonFiniteLoss):
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "optim.lr=1e8"]), run)
    capsys.readouterr()
    assert vaelab(["eval", run]) == 2
    reason = json.loads((run / "stopped.json").read_text())["reason"].split(";")[0]  # non-finite loss inf at step 2 ...
    assert reason.startswith("non-finite loss ")
    assert capsys.readouterr().err.strip() == (f"vaelab eval: error: {run} diverged before its first checkpoint "
                                               f"({reason}): there are no weights to load")
    assert vaelab(["resume", run]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vaelab resume: error: {run}: no checkpoint, nothing to resume (the run "
                          f"diverged before its first checkpoint: {reason}); start it anew, with settings other "
                          f"than those that diverged, e.g. vaelab-train --config-dir ")
    assert err.endswith("--config-name config optim.lr=0.0001") and "\n" not in err
    # a tenth of the run's rate, at most 1e-4: a tenth of 1e8 diverges again (review: it said 1e+29 after 1e30)
    assert [ckpt_io.lower_lr(lr) for lr in (1e8, 1e-3, 3e-4, 1e-5)] == [
        "optim.lr=0.0001", "optim.lr=0.0001", "optim.lr=3e-05", "optim.lr=1e-06"]


def test_resume_below_the_epochs_a_stopped_run_has_trained_is_one_line(tiny_mnist, tmp_path, capsys):
    """A run stopped between epochs (no metrics.json) and resumed with fewer epochs than it has:
    it wrote final metrics under a config that said 2 of its 3 epochs, which reproduce then
    could not match."""
    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), run)  # 3 epochs
    (run / "metrics.json").unlink()  # as a stop after the last checkpoint leaves it
    before = files_snapshot(run)
    capsys.readouterr()
    assert vaelab(["resume", run, "trainer.epochs=2"]) == 2
    assert capsys.readouterr().err.strip() == ("vaelab resume: error: trainer.epochs=2: the run has trained 3 epochs "
                                               "already; give trainer.epochs=3 to end it there (its final metrics "
                                               "and evaluation), or more to go on")
    assert files_snapshot(run) == before
    assert vaelab(["resume", run]) == 0 and json.loads((run / "metrics.json").read_text())["epochs"] == 3


@pytest.mark.parametrize("pruned", [("optimizer",), ("rng",), ("state", "rng")])
def test_resume_of_a_checkpoint_with_weights_only_is_one_line(finished_run, tmp_path, capsys, pruned):
    """A last.pt without its optimizer state, RNG states or counters ended resume in a KeyError."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    last = run / "checkpoints" / "last.pt"
    for name in ("last.pt", "best.pt"):
        ck = ckpt_io.load(run / "checkpoints" / name)
        ckpt_io.save_atomic({k: v for k, v in ck.items() if k not in pruned}, run / "checkpoints" / name)
    before = files_snapshot(run)
    capsys.readouterr()
    missing = "'state'" if "state" in pruned else "/".join(repr(k) for k in pruned)  # (state: looked at first)
    assert vaelab(["resume", run, "trainer.epochs=2"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vaelab resume: error: {last}: holds the weights but no {missing} entr{'ies' if '/' in missing else 'y'}: "
        f"it can be evaluated (vaelab eval), not resumed")
    assert files_snapshot(run) == before
    # a finished run with its counters: nothing to train, so nothing missing ("nothing to do", or its
    # final evaluation when that is what it lacks)
    code = vaelab(["resume", run])
    err = capsys.readouterr().err
    if "state" in pruned:
        assert code == 2 and "holds the weights but no 'state'" in err
    else:
        assert code == 0 and "nothing to do" in err
    assert files_snapshot(run) == before
    assert vaelab(["eval", run, "--k", "2", "--no-pictures"]) == 0


def test_a_resume_that_train_refuses_leaves_the_config_and_metrics_as_they_were(finished_run, tmp_path, capsys,
                                                                                monkeypatch):
    """What only train() can check (here the loss kernels, which need a GPU with Triton) comes
    after resume's own checks: the run's config, its overrides and metrics.json stay as they
    were until it has passed, so the same `vaelab resume RUN` can simply be run again."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    keep = (".hydra/config.yaml", ".hydra/overrides.yaml", "metrics.json")
    before = {k: v for k, v in files_snapshot(run).items() if k in keep}

    def refused(*a):
        raise train_mod.ConfigError("loss.impl=triton: the triton package is not installed")
    monkeypatch.setattr(train_mod, "fused_loss_model", refused)
    capsys.readouterr()
    assert vaelab(["resume", run, "trainer.epochs=2", "optim.lr=3e-4"]) == 2
    assert capsys.readouterr().err.strip().endswith("loss.impl=triton: the triton package is not installed")
    assert {k: v for k, v in files_snapshot(run).items() if k in keep} == before
    assert {".hydra/config.yaml", "metrics.json"} <= set(before)  # (overrides.yaml: a run started by train())
    assert not (run / ".hydra" / "resumes.yaml").exists()
    monkeypatch.undo()
    assert vaelab(["resume", run, "trainer.epochs=2", "optim.lr=3e-4"]) == 0  # and then it goes on
    assert "optim.lr=3e-4" in (run / ".hydra" / "overrides.yaml").read_text()
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2


def test_resume_saves_a_boolean_as_true_or_false(finished_run, tmp_path):
    """trainer.progress=yes was saved as 'yes' (and =0 as 0): compare --where trainer.progress=false
    then missed the run, which vaelab-train would have saved as false."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert vaelab(["resume", run, "trainer.epochs=2", "trainer.progress=yes", "trainer.final_eval=0"]) == 0
    saved = OmegaConf.load(run / ".hydra" / "config.yaml").trainer
    assert saved.progress is True and saved.final_eval is False


@pytest.mark.parametrize("args,expect", [
    (["latent_size=8"], "made for a different model (head.weight has shape (8, 256), this config needs (16, 256)); "
                        "trained with latent_size 4, the config says latent_size 8"),
    (["model.hidden=[128]"], "made for a different model (encoder.0.weight has shape (256, 784), this config needs "
                             "(128, 784)); trained with hidden widths [256], the config says hidden widths [128]"),
    (["name=other"], "override 'name=other': name names the folder the run is in (outputs/runs/<name>/..., a "
                     "sweep's outputs/multirun/<name>/...), which resume keeps; leave it out"),
    (["trainer.epoch=5"], "unknown key 'trainer.epoch' in override 'trainer.epoch=5'; did you mean 'trainer.epochs'?"),
    (["trainer.epochs=many"], "override 'trainer.epochs=many': Value 'many' of type 'str' could not be converted"),
    (["trainer.epochs=0"], "trainer.epochs=0: must be >= 1"),
    (["loss.beta=1,4"], "override 'loss.beta=1,4': resume continues one run; sweep with vaelab-train -m"),
    (["data.root=/home/u/x,y"], "override 'data.root=/home/u/x,y': resume continues one run; sweep with vaelab-train "
                                "-m (if it is one path with a comma in it, quote it for Hydra: "
                                "\"data.root='/home/u/x,y'\")"),
    (["+foo=1"], "override '+foo=1': resume takes KEY=VALUE only"),
    # (as vaelab-train's README line gives it: review)
    (["+model.kwargs.width=3"], "override '+model.kwargs.width=3': resume takes KEY=VALUE only: give "
                                "model.kwargs.width=3"),
    (["=3"], "override '=3': no key before the '=': an override is KEY=VALUE, as in latent_size=16"),  # as vaelab-train
    (["data.root=~/mnist"], "override 'data.root=~/mnist': cannot parse it (unexpected '~' at character 11); Hydra "
                            "does not expand ~: write the path out, e.g. data.root=$HOME/mnist"),  # vaelab-train's
    (["model=mlp"], "override 'model=mlp': model is a config group, chosen when the run started; resume changes "
                    "values (KEY=VALUE) only: for model=mlp, start a new run (vaelab-train model=mlp ...)"),
    (["model.activation=tanh"], "trained with model.activation=relu, but the config says model.activation=tanh"),
    (["data.val_size=100"], "trained with data.val_size=64, but the config says data.val_size=100"),
    # (the weights a run started from: changed later, the run would misrecord them; review)
    (["model.init=glorot"], "trained with model.init=torch, but the config says model.init=glorot"),
    (["trainer.progress=2"], "override 'trainer.progress=2': Value '2' is not a valid bool (type int) (key "
                             "'trainer.progress'); give true or false"),  # (it was written, and read as true)
    # (the last was kept, and both were logged and recorded as changes; review)
    (["trainer.epochs=4", "trainer.epochs=3"], "override 'trainer.epochs=3': trainer.epochs is given already, as "
                                               "'trainer.epochs=4'; give it once"),
], ids=["other-latent-size", "other-widths", "name", "unknown-key", "wrong-type", "bad-value", "sweep", "comma-path",
        "add-key", "add-model-argument",
        "no-key", "unparsed", "group", "same-shapes",
        "other-split", "other-init", "integer-for-bool", "given-twice"])
def test_bad_override_is_one_line_and_overwrites_nothing(finished_run, tmp_path, capsys, args, expect):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = files_snapshot(run)
    capsys.readouterr()
    assert vaelab(["resume", run, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vaelab resume: error: ") and expect in err[0], err
    assert files_snapshot(run) == before


def test_resume_of_a_finished_run_with_data_that_is_not_there_is_one_line(finished_run, tmp_path, capsys):
    """It said "nothing to do" and offered, to go on, a command with that data.root, which then failed (review)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = files_snapshot(run)
    capsys.readouterr()
    assert vaelab(["resume", run, f"data.root={tmp_path / 'nowhere'}", "data.download=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vaelab resume: error: MNIST not found in {tmp_path / 'nowhere'}"), err
    assert files_snapshot(run) == before


def test_non_finite_validation_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_mnist, tmp_path,
                                                                               monkeypatch):
    """An epoch's last step can blow the weights up after its training loss was summed: the
    validation loss is checked too, before any checkpoint of the epoch is written."""
    real, calls = train_mod.elbo_stats, []

    def elbo_stats(*args, **kwargs):
        calls.append(1)
        out = real(*args, **kwargs)
        return {**out, "nelbo": float("nan")} if len(calls) == 2 else out

    monkeypatch.setattr(train_mod, "elbo_stats", elbo_stats)
    run = tmp_path / "run"
    with pytest.raises(train_mod.NonFiniteLoss, match=r"validation after epoch 2.*last good checkpoint: .*last.pt "
                                                      r"\(after epoch 1\); the same settings diverge again there: "
                                                      r"carry it on with others, e.g. vaelab resume \S+ optim.lr="
                                                      r"0.0001$"):
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), run)
    assert ckpt_io.load(run / "checkpoints" / "last.pt")["state"]["epoch"] == 1
    assert json.loads((run / "stopped.json").read_text())["state"] == "diverged"


def test_a_stop_names_where_a_mid_epoch_last_pt_was_saved(tiny_mnist, tmp_path, monkeypatch):
    """A Ctrl-C's last.pt is mid-way through an epoch: a later divergence named it '(epoch 1)'."""
    run, cfg = tmp_path / "run", compose_cfg([f"data.root={tiny_mnist}", *TINY])
    with signal_at_step(monkeypatch, 8), pytest.raises(Interrupted):  # in epoch 2 (6 steps an epoch)
        train(cfg, run)
    real = train_mod.elbo_stats
    monkeypatch.setattr(train_mod, "elbo_stats", lambda *a, **k: {**real(*a, **k), "nelbo": float("nan")})
    with pytest.raises(train_mod.NonFiniteLoss, match=r"last good checkpoint: .*last.pt \(in epoch 2 at image "
                                                      r"96/192\); the same settings"):
        train(cfg, run)
    # carried on from best.pt (last.pt deleted), which the resume writes as last.pt again: that is the good
    # one, not "none yet"
    (run / "checkpoints" / "last.pt").unlink()
    with pytest.raises(train_mod.NonFiniteLoss, match=r"last good checkpoint: .*last.pt \(after epoch 1\); the same"):
        train(cfg, run)
    assert ckpt_io.load(run / "checkpoints" / "last.pt")["state"]["epoch"] == 1


def test_ctrl_c_after_the_weights_blew_up_keeps_the_good_checkpoint(tiny_mnist, tmp_path, monkeypatch):
    """The Ctrl-C checkpoint comes between loss checks: it must not replace last.pt with
    non-finite weights."""
    real_beta_at, model = train_mod.beta_at, {}
    real_build = train_mod.build_model

    def build_model(*args, **kwargs):
        model["m"] = real_build(*args, **kwargs)
        return model["m"]

    def beta_at(step, *args):
        if step == 8:  # epoch 2 (6 steps an epoch), before its first loss check
            with torch.no_grad():
                next(model["m"].parameters()).fill_(float("inf"))
            os.kill(os.getpid(), signal.SIGINT)
        return real_beta_at(step, *args)

    monkeypatch.setattr(train_mod, "build_model", build_model)
    monkeypatch.setattr(train_mod, "beta_at", beta_at)
    run = tmp_path / "run"
    with pytest.raises(train_mod.NonFiniteLoss, match="non-finite weights at step 9, not saved to last.pt"):
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), run)
    ck = ckpt_io.load(run / "checkpoints" / "last.pt")
    assert ck["state"]["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())
    assert json.loads((run / "stopped.json").read_text())["state"] == "diverged"


def test_overflowed_adam_moments_are_not_saved(tiny_mnist, tmp_path, monkeypatch):
    """A gradient whose square overflows leaves the weights finite and exp_avg_sq infinite (those
    weights never move again): the checkpoint after it must not replace the good one."""
    real_beta_at, opt = train_mod.beta_at, {}
    real_build = train_mod.build_optimizer

    def build_optimizer(*args, **kwargs):
        opt["o"] = real_build(*args, **kwargs)
        return opt["o"]

    def beta_at(step, *args):
        if step == 8:  # epoch 2 (6 steps an epoch): its end-of-epoch checkpoint sees it
            next(iter(opt["o"].state.values()))["exp_avg_sq"][0] = float("inf")
        return real_beta_at(step, *args)

    monkeypatch.setattr(train_mod, "build_optimizer", build_optimizer)
    monkeypatch.setattr(train_mod, "beta_at", beta_at)
    run = tmp_path / "run"
    with pytest.raises(train_mod.NonFiniteLoss, match=r"non-finite Adam moments at step \d+ .*not saved to "
                                                       r"(last|best).pt; last good checkpoint: .*after epoch 1"):
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), run)
    ck = ckpt_io.load(run / "checkpoints" / "last.pt")
    assert ck["state"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for s in ck["optimizer"]["state"].values() for t in s.values()
               if torch.is_tensor(t))
    assert json.loads((run / "stopped.json").read_text())["state"] == "diverged"


@pytest.mark.parametrize("code,why,when", [(errno.ENOSPC, "No space left on device", "there is room"),
                                           (errno.EROFS, "Read-only file system", "it can be written")])
def test_a_checkpoint_on_a_full_disk_says_once_there_is_room(tiny_mnist, tmp_path, monkeypatch, code, why, when):
    """It said 'once the folder is writable' for a disk that had filled up; and a read-only file
    system, 'once there is room' when metrics.json was what failed (the same words now, below)."""
    save = ckpt_io.save_atomic

    def full(obj, path):
        if obj["state"]["epoch"] == 2:
            raise OSError(code, why, str(path))
        return save(obj, path)
    monkeypatch.setattr(ckpt_io, "save_atomic", full)
    run = tmp_path / "run"
    with pytest.raises(train_mod.SaveFailed, match=rf": {why}; .*; once {when}: vaelab resume"):
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), run)


@pytest.mark.parametrize("failing_epoch,failing_file", [(2, None), (1, None), (1, "last.pt")])
def test_a_checkpoint_that_cannot_be_written_stops_the_run_in_one_line(tiny_mnist, tmp_path, monkeypatch,
                                                                       failing_epoch, failing_file):
    """The line says how to carry on: vaelab resume from the last good checkpoint (epoch 1's
    best.pt when only its last.pt failed), or, when the first one failed, the run started again
    from its saved config (resume would refuse)."""
    save = ckpt_io.save_atomic

    def save_or_fail(obj, path):
        if obj["state"]["epoch"] == failing_epoch and Path(path).name == (failing_file or Path(path).name):
            raise PermissionError(1, "Operation not permitted", str(path))
        return save(obj, path)

    monkeypatch.setattr(ckpt_io, "save_atomic", save_or_fail)
    run = tmp_path / "run"
    with pytest.raises(train_mod.SaveFailed) as exc:
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), run)
    msg = str(exc.value)
    assert msg.startswith(f"cannot write {run / 'checkpoints'}/") and "Operation not permitted" in msg
    assert "; once it can be written: " in msg  # (a full disk: "once there is room", below)
    assert "\n" not in msg and json.loads((run / "stopped.json").read_text())["state"] == "failed"
    if failing_epoch == 2:
        assert f"the last complete one is {run / 'checkpoints' / 'last.pt'}" in msg
        assert msg.endswith(f"vaelab resume {run}")
        assert ckpt_io.load(run / "checkpoints" / "last.pt")["state"]["epoch"] == 1
    elif failing_file:
        assert f"the last complete one is {run / 'checkpoints' / 'best.pt'}" in msg
        assert msg.endswith(f"vaelab resume {run}")
    else:
        assert "; it has no checkpoint yet; " in msg and "intact" not in msg
        assert msg.endswith(f"vaelab-train --config-dir {run / '.hydra'} --config-name config")
        assert ckpt_io.latest(run / "checkpoints") is None


def test_a_ctrl_c_in_the_last_epoch_stops_before_the_final_evaluation(tiny_mnist, tmp_path, monkeypatch, capsys):
    """It was dropped: the run finished, ran its whole evaluation, and a sweep went on to its next
    job. Now the run finishes its last epoch (it is done, not stopped early: no stopped.json),
    the evaluation is left to vaelab resume, and Interrupted stops a sweep."""
    run = tmp_path / "run"
    with signal_at_step(monkeypatch, 17), pytest.raises(Interrupted) as exc:  # the last step of 3 epochs of 6
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.final_eval=true"]), run)
    assert exc.value.finished and str(exc.value) == (
        f"stopped by SIGINT after its last epoch, 3: the run has finished training (metrics.json); its "
        f"end-of-training evaluation did not run: vaelab resume {run} runs it")
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 3
    assert not (run / "stopped.json").exists() and not (run / "eval.json").exists()
    capsys.readouterr()
    assert vaelab(["resume", run]) == 0 and (run / "eval.json").is_file()


def test_a_ctrl_c_during_the_final_evaluation_names_the_run_and_what_is_left(tiny_mnist, tmp_path, monkeypatch):
    """It reached vaelab-train as a bare KeyboardInterrupt: a generic line that named no run and
    did not say that only the evaluation was missing."""
    import vaelab.evaluate as ev_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(ev_mod, "elbo_and_iwae", interrupted)
    run = tmp_path / "run"
    with pytest.raises(Interrupted) as exc:
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1", "trainer.final_eval=true"]), run)
    assert exc.value.finished and str(exc.value) == (
        f"stopped during the end-of-training evaluation of {run}: the run has finished training (metrics.json); "
        f"vaelab resume {run} runs the evaluation")
    assert not (run / "stopped.json").exists() and not (run / "eval.json").exists()
    assert ckpt_io.final_eval_missing(run) == "no eval.json"


def test_an_atomic_write_fsyncs_the_file_then_its_folder(tmp_path, monkeypatch):
    """The file's data before the rename, the folder after it: otherwise a power cut can bring
    back the old checkpoint (or none) although the new one was reported written."""
    import stat
    synced, fsync = [], os.fsync

    def record(fd):
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        fsync(fd)
    monkeypatch.setattr(os, "fsync", record)
    ckpt_io.write_atomic(tmp_path / "x.json", lambda f: f.write(b"{}"))
    assert synced == ["file", "folder"] and (tmp_path / "x.json").read_bytes() == b"{}"


def test_a_checkpoint_the_disk_has_no_room_for_fails_as_the_oserror_it_is(tmp_path):
    """torch.save into the file itself turned a short write into a RuntimeError ("unexpected
    pos"), which no handler knew: a full disk ended the run in a traceback and no stopped.json.
    A file-size limit (RLIMIT_FSIZE) fails writes as a full disk does."""
    resource = pytest.importorskip("resource")
    path = tmp_path / "last.pt"
    ckpt_io.save_atomic({"w": torch.zeros(10)}, path)
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (else the kernel kills the process)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(OSError) as e:
            ckpt_io.save_atomic({"w": torch.randn(100_000)}, path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert e.value.errno == errno.EFBIG and e.value.errno in train_mod.DISK_FULL
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]  # the old one, no temp file


@pytest.mark.parametrize("code,why,when", [(errno.ENOSPC, "No space left on device", "there is room"),
                                           (errno.EPERM, "Operation not permitted", "it can be written"),
                                           (errno.EROFS, "Read-only file system", "it can be written")],
                         ids=["disk-full", "made-unwritable", "read-only"])
def test_a_full_disk_after_the_last_checkpoint_stops_the_run_in_one_line(tiny_mnist, tmp_path, monkeypatch, code,
                                                                         why, when):
    """metrics.json, the sample PNGs, the final evaluation's files: a full disk there is the same
    one-line failed stop as under a checkpoint (it was PIL's or json's traceback); so is one of
    the run's folders made unwritable while it trains (chattr +i samples/ was a traceback)."""
    write = ckpt_io.write_text_atomic

    def full_at_metrics(path, text):
        if Path(path).name == "metrics.json":  # (as write() fails on a full disk: naming no file; review, the
            def fail(f):                       # message named the run's folder)
                raise OSError(code, why)
            return ckpt_io.write_atomic(path, fail)
        return write(path, text)
    monkeypatch.setattr(ckpt_io, "write_text_atomic", full_at_metrics)
    run = tmp_path / "run"
    run.mkdir()
    # the run's train.log written by a handler not train()'s own, as Hydra's job logging (vaelab-train) or a
    # script's basicConfig(filename=...) writes it: the reason goes in too, once (review: it did not)
    theirs = logging.FileHandler(run / "train.log")
    logging.getLogger().addHandler(theirs)
    try:
        with pytest.raises(train_mod.SaveFailed) as exc:
            train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), run)
    finally:
        logging.getLogger().removeHandler(theirs)
        theirs.close()
    assert str(exc.value) == (f"cannot write {run / 'metrics.json'}: {why}; the checkpoints already "
                              f"there are intact; once {when}: vaelab resume {run}")
    assert (run / "train.log").read_text().count(str(exc.value)) == 1
    assert json.loads((run / "stopped.json").read_text())["state"] == "failed"
    assert ckpt_io.load(run / "checkpoints" / "last.pt")["state"]["epoch"] == 3


def test_a_failed_write_named_in_bytes_or_before_any_checkpoint_is_one_true_line(tiny_mnist, tmp_path, monkeypatch):
    """Review: TensorBoard's writer names its file in bytes, and a run folder made unwritable under
    it ended in a TypeError's traceback; a full disk before the first checkpoint said "the
    checkpoints already there are intact" of none."""
    write = ckpt_io.write_text_atomic

    def unwritable(path, text):
        if Path(path).name == "metrics.json":
            raise OSError(errno.EPERM, "Operation not permitted", os.fsencode(str(path)))
        return write(path, text)
    monkeypatch.setattr(ckpt_io, "write_text_atomic", unwritable)
    run = tmp_path / "run"
    with pytest.raises(train_mod.SaveFailed) as exc:
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1"]), run)
    assert str(exc.value) == (f"cannot write {run / 'metrics.json'}: Operation not permitted; the checkpoints already "
                              f"there are intact; once it can be written: vaelab resume {run}")
    monkeypatch.setattr(ckpt_io, "write_text_atomic", write)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(train_mod, "save_png", full)  # (the epoch's samples, written before its checkpoint)
    fresh = tmp_path / "fresh"
    with pytest.raises(train_mod.SaveFailed) as exc:
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1"]), fresh)
    assert "; it has no checkpoint yet; once there is room: vaelab-train --config-dir" in str(exc.value)


def test_data_gone_by_the_final_evaluation_says_how_to_evaluate_the_trained_run(tiny_mnist, tmp_path, monkeypatch,
                                                                               capsys):
    """It said 'give --data-root DIR', a flag vaelab-train refuses, and not that the run had trained."""
    import vaelab.evaluate_run as eval_mod

    data = tmp_path / "data"
    shutil.copytree(tiny_mnist, data)
    evaluate = eval_mod.evaluate_run

    def data_gone(*args, **kwargs):
        shutil.rmtree(data)
        return evaluate(*args, **kwargs)
    monkeypatch.setattr(eval_mod, "evaluate_run", data_gone)
    run = tmp_path / "run"
    from vaelab.data import DataError

    with pytest.raises(DataError) as e:
        train(compose_cfg([f"data.root={data}", *TINY, "trainer.epochs=1", "trainer.final_eval=true",
                           "data.download=false"]), run)
    assert f"the run has finished training; to evaluate it: vaelab resume {run} data.root=DIR" in str(e.value)
    assert "--data-root" not in str(e.value)
    monkeypatch.setattr(eval_mod, "evaluate_run", evaluate)
    assert vaelab(["resume", run, f"data.root={tiny_mnist}"]) == 0  # as it says
    assert json.loads((run / "eval.json").read_text())["epoch"] == 1


def test_a_second_ctrl_c_while_the_checkpoint_is_written_waits_for_it(tiny_mnist, tmp_path, monkeypatch):
    real_beta_at, save = train_mod.beta_at, ckpt_io.save_atomic

    def beta_at(step, *args):
        if step == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return real_beta_at(step, *args)

    def save_twice_interrupted(obj, path):
        os.kill(os.getpid(), signal.SIGINT)  # the impatient second Ctrl-C
        return save(obj, path)

    monkeypatch.setattr(train_mod, "beta_at", beta_at)
    monkeypatch.setattr(ckpt_io, "save_atomic", save_twice_interrupted)
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), run)
    assert ckpt_io.load(run / "checkpoints" / "last.pt")["state"]["step"] == 5


def test_carrying_on_a_finished_run_makes_it_unfinished_until_it_ends(finished_run, tmp_path, monkeypatch, capsys):
    """metrics.json means "finished with these numbers": a run extended with trainer.epochs
    loses it when training starts again, so compare and reproduce don't take it as done."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    real_beta_at = train_mod.beta_at

    def beta_at(step, *args):
        os.kill(os.getpid(), signal.SIGINT)
        return real_beta_at(step, *args)

    monkeypatch.setattr(train_mod, "beta_at", beta_at)
    assert vaelab(["resume", run, "trainer.epochs=2"]) == 130
    assert not (run / "metrics.json").exists()
    assert vaelab(["compare", run]) == 0
    lines = capsys.readouterr().out.splitlines()
    row = lines[next(i for i, ln in enumerate(lines) if ln.startswith("---")) + 1]  # (a units footnote follows)
    assert row.endswith("interrupted")


def test_reproduce_says_what_a_run_carried_on_from_python_trained_with_besides_its_saved_config(
        finished_run, tiny_mnist, tmp_path, capsys, monkeypatch):
    """train() on a run folder carries it on under the config it is given, and saves none after the
    first checkpoint: the reproduction said 'NOT reproduced' with no word of why (review)."""
    import vaelab.workflow as workflow_mod

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=2", "optim.lr=1e-4"]), run)

    stop_reproduce_at(monkeypatch, "_run_child")
    capsys.readouterr()
    with pytest.raises(Began):
        workflow_mod.reproduce(run, tmp_path / "again")
    assert ("note: run's last.pt trained with settings its saved config does not hold: optim.lr=0.0001 (its config: "
            "0.001) (train() carried it on under a config it was given") in capsys.readouterr().out
    with pytest.raises(Began):  # (a run as saved: no note)
        workflow_mod.reproduce(finished_run, tmp_path / "again2")
    assert "does not hold" not in capsys.readouterr().out


def test_reproduce_out_takes_a_folder_that_holds_hidden_files_only(finished_run, tmp_path, capsys, monkeypatch):
    """A .gitkeep made --out 'not empty' to reproduce, where vaelab-train takes such a folder
    (review); a folder with files, or a run's .hydra/, is refused."""
    full, stub, kept = tmp_path / "full", tmp_path / "stub", tmp_path / "kept"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    (stub / ".hydra").mkdir(parents=True)
    kept.mkdir()
    (kept / ".gitkeep").touch()
    for folder in (full, stub):
        assert vaelab(["reproduce", finished_run, "--out", folder]) == 2
        assert capsys.readouterr().err.strip() == (f"vaelab reproduce: error: {folder}: already exists and is not "
                                                   f"empty; give another --out")
    import vaelab.workflow as workflow_mod

    stop_reproduce_at(monkeypatch, "_run_child")  # (past its checks: its training, not run here)
    with pytest.raises(Began):
        workflow_mod.reproduce(finished_run, kept)


def test_reproduce_leaves_out_an_eval_json_made_later_with_other_settings(finished_run, tmp_path):
    """A reproduction makes the run's own end-of-training evaluation again, nothing else: an
    eval.json with other settings, of an earlier epoch, or in a run that had no final evaluation
    (trainer.final_eval=false) is not compared."""
    from vaelab.workflow import _later_eval

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cfg_path = run / ".hydra" / "config.yaml"
    saved = yaml.safe_load(cfg_path.read_text())
    assert saved["trainer"]["final_eval"] is False and saved["trainer"]["final_eval_k"] == 4
    own = {"k": 4, "seed": 0, "checkpoint": str(run / "checkpoints/last.pt"), "epoch": 1}
    assert _later_eval(run) == ""  # no eval.json
    (run / "eval.json").write_text(json.dumps(own))
    assert _later_eval(run) == "checkpoint=last.pt, k=4, seed=0, epoch=1"  # made by hand: no final eval
    saved["trainer"]["final_eval"] = True
    cfg_path.write_text(yaml.safe_dump(saved))
    assert _later_eval(run) == ""  # the run's own
    (run / "eval.json").write_text(json.dumps({**own, "epoch": None}))
    assert _later_eval(run) == ""  # (an eval.json from before the epoch was recorded)
    (run / "eval.json").write_text(json.dumps({**own, "k": 5, "checkpoint": str(run / "checkpoints/best.pt")}))
    assert _later_eval(run) == "checkpoint=best.pt, k=5, seed=0, epoch=1"
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, "epochs": 3}))  # carried on after that eval
    (run / "eval.json").write_text(json.dumps(own))
    assert _later_eval(run) == "checkpoint=last.pt, k=4, seed=0, epoch=1"


def test_reproduce_of_a_run_that_has_not_finished_says_why(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "metrics.json").unlink()
    (run / "stopped.json").write_text(json.dumps({"state": "diverged", "reason": "non-finite loss nan at step 5"}))
    assert vaelab(["reproduce", run]) == 2
    assert capsys.readouterr().err.strip() == (f"vaelab reproduce: error: {run}: the run diverged (non-finite loss "
                                               f"nan at step 5), so it has no final metrics to compare")
    (run / "stopped.json").unlink()
    with ckpt_io.only_process(run):  # as a training process holds it
        assert vaelab(["reproduce", run]) == 2
    assert capsys.readouterr().err.strip() == (f"vaelab reproduce: error: {run}: the run has not finished, another "
                                               f"process is training it now; try again once it has")
    assert vaelab(["reproduce", run]) == 2
    assert capsys.readouterr().err.strip() == (f"vaelab reproduce: error: {run}: no metrics.json, the run has not "
                                               f"finished (carry it on with: vaelab resume {run})")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_reproduce_passes_a_stop_on_to_its_training(tmp_path, sig):
    """A SIGTERM to `vaelab reproduce` killed it and left its training process running on, an
    orphan; a Ctrl-C made subprocess.run kill the training 0.25 s later, before it could save
    last.pt. Sent to reproduce alone (no terminal here), each now reaches the training once."""
    import threading

    from vaelab.workflow import _run_child

    child = ("import os, signal, sys, time\n"  # stands for vaelab-train: a stop saves, then exits 130
             "signal.signal(signal.SIGINT, lambda *a: sys.exit(130))\n"
             "signal.signal(signal.SIGTERM, lambda *a: sys.exit(130))\n"
             "open(sys.argv[1], 'w').write(str(os.getpgrp()))\n"
             "time.sleep(20)\n")
    ready = tmp_path / "ready"

    def stop_when_ready():
        while not ready.exists() or not ready.read_text():
            time.sleep(0.01)
        os.kill(os.getpid(), sig)

    # (as in a terminal; a shell's background job, CI's perhaps, starts with SIGINT ignored, which stays so)
    started = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
               signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL)}
    try:
        threading.Thread(target=stop_when_ready, daemon=True).start()
        assert _run_child([sys.executable, "-c", child, str(ready)]) == 130
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        for s_, handler in started.items():
            signal.signal(s_, handler)
    assert int(ready.read_text()) == os.getpgrp()  # the terminal's Ctrl-C, Ctrl-Z, ... reach both


@pytest.mark.parametrize("how", ["group", "timeout", "reproduce-twice"])
def test_reproduce_without_a_terminal_passes_a_sigint_on_as_one_stop(tmp_path, how):
    """`timeout -s INT 1h vaelab reproduce RUN` (timeout signals reproduce, then the whole group),
    or kill -INT -PGID, with no terminal: the training had the SIGINT from the group and again
    from reproduce, and a second SIGINT is a second Ctrl-C, which stopped the run without saving.
    reproduce now passes the first SIGINT on as a SIGTERM (after a Ctrl-C, the same stop), and a
    SIGINT within 1 s of it is the same one; a SIGINT to reproduce after that still reaches the
    training as a second Ctrl-C."""
    child = ("import os, sys, time\n"  # train()'s own stop, as in vaelab-train
             "from vaelab.train import _StopFlag\n"
             "with _StopFlag() as flag:\n"
             "    open(sys.argv[1], 'w').write('ready')\n"
             "    end = time.time() + 30\n"
             "    try:\n"
             "        while flag.signum is None and time.time() < end:\n"
             "            time.sleep(0.01)\n"
             "        open(sys.argv[2] + '.tmp', 'w').write(str(flag.signum))\n"
             "        os.replace(sys.argv[2] + '.tmp', sys.argv[2])\n"
             "        time.sleep(3)\n"  # (the step it finishes, and the checkpoint)
             "    except KeyboardInterrupt:\n"
             "        sys.exit(1)\n"  # aborted, nothing saved
             "sys.exit(130)\n")
    parent = ("import signal, sys\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "from vaelab.workflow import _run_child\n"
              "sys.exit(_run_child([sys.executable, '-c', sys.argv[1], sys.argv[2], sys.argv[3]]))\n")
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    p = subprocess.Popen([sys.executable, "-c", parent, child, str(ready), str(stop)], start_new_session=True,
                         stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert p.poll() is None and time.time() < deadline
            time.sleep(0.05)
        if how != "reproduce-twice":
            if how == "timeout":  # (its two sends are microseconds apart; on a busy machine, more)
                os.kill(p.pid, signal.SIGINT)
                time.sleep(0.02)
            os.killpg(p.pid, signal.SIGINT)  # reproduce, and its training too
            assert p.wait(timeout=30) == 130
            assert stop.read_text() == str(int(signal.SIGINT))  # the group's: the SIGTERM after it changed nothing
        else:
            os.kill(p.pid, signal.SIGINT)
            while not stop.exists():
                assert p.poll() is None and time.time() < deadline
                time.sleep(0.01)
            assert stop.read_text() == str(int(signal.SIGTERM))
            time.sleep(1.2)
            os.kill(p.pid, signal.SIGINT)  # asked again: abort
            assert p.wait(timeout=30) == 1
    finally:
        p.kill()


def test_vaelab_train_stopped_then_signalled_on_its_way_out_exits_130(tiny_mnist, tmp_path):
    """A Ctrl-C, then a SIGTERM or another Ctrl-C while vaelab-train saved and left: the run saved,
    but the process was killed by the late signal (143 or -2, where a stop exits 130; a calling
    shell script takes a death by SIGINT as its own Ctrl-C). stop_signals_as_ctrl_c put its
    handlers back over the ignoring that leaving_after_a_stop had set."""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("VAELAB_DATA", None)
    tiny = [a for a in TINY if not a.startswith("trainer.epochs=")]
    p = subprocess.Popen([sys.executable, "-c", "from vaelab.train_cli import main; main()", f"data.root={tiny_mnist}",
                          *tiny, "trainer.epochs=100000", "hydra.run.dir=run"], cwd=tmp_path, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while not (tmp_path / "run" / "checkpoints" / "epoch_0001.pt").exists() and \
                not (tmp_path / "run" / "checkpoints" / "last.pt").exists():
            assert p.poll() is None and time.time() < deadline
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGINT)
        for _ in range(20):  # (the step, the saving, then the way out)
            time.sleep(0.1)
            if p.poll() is not None:
                break
            os.kill(p.pid, signal.SIGTERM)
        assert p.wait(timeout=60) == 130
    finally:
        p.kill()
    assert json.loads((tmp_path / "run" / "stopped.json").read_text())["state"] == "interrupted"


def test_reproduce_stopped_ignores_a_late_signal_on_its_way_out(monkeypatch, capsys):
    """A second SIGINT to `vaelab reproduce` after its training had saved and ended killed it
    with SIGINT (a calling script takes that for its own Ctrl-C) where a stop exits 130."""
    from vaelab import workflow

    def stopped(*args, **kwargs):
        raise workflow.ReproductionStopped("the reproduction in X was stopped")
    monkeypatch.setattr(workflow, "reproduce", stopped)
    assert vaelab(["reproduce", "."]) == 130
    assert all(signal.getsignal(s) is signal.SIG_IGN for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))


def test_a_stop_signal_after_a_ctrl_c_is_the_same_stop():
    """In a command's own stop (stop_signals_as_ctrl_c: evaluation, resume, vaelab-train outside
    training), a SIGTERM or hang-up after a Ctrl-C raised a second KeyboardInterrupt inside the
    first one's clean-up; now it is the same stop. A second Ctrl-C is still a second Ctrl-C."""
    from vaelab.errors import stop_signals_as_ctrl_c

    firsts = []
    started = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
               signal.SIGTERM: signal.signal(signal.SIGTERM, signal.SIG_DFL)}
    try:
        with stop_signals_as_ctrl_c(first=firsts.append):
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            try:
                os.kill(os.getpid(), signal.SIGTERM)  # the same stop: nothing raised, nothing passed to first
                time.sleep(0.1)
            except KeyboardInterrupt:
                pytest.fail("a SIGTERM after a Ctrl-C was a second stop")
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
        assert firsts == []
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        with stop_signals_as_ctrl_c(first=firsts.append), pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # (a SIGTERM first: as before)
            time.sleep(5)
        assert firsts == [signal.SIGTERM]
    finally:
        for s_, handler in started.items():
            signal.signal(s_, handler)


def test_reproduce_leaves_a_signal_it_was_started_ignoring_ignored(tmp_path):
    """Under nohup (or as a background job) a hang-up or Ctrl-C is ignored: passing it on would
    stop the training that nohup was asked to keep going."""
    import threading

    from vaelab.workflow import _run_child

    child = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(130)); time.sleep(1)"
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        assert _run_child([sys.executable, "-c", child]) == 0  # not passed on: it ran to its end
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)


@pytest.mark.parametrize("code", [130, -signal.SIGINT], ids=["exit-130", "killed-by-sigint"])
def test_a_stopped_reproduction_says_how_to_go_on(finished_run, tmp_path, capsys, monkeypatch, code):
    """A Ctrl-C as the training process started (before its handlers: killed by SIGINT, -2) said
    'failed'; stopped later, it says how to finish the reproduction."""
    import vaelab.workflow as workflow_mod

    def stopped(new, *parts):
        def child(*args, **kwargs):  # what the training process had written when it was stopped
            for part in parts:
                shutil.copytree(finished_run / part, new / part)
            return code
        return child

    new = tmp_path / "new"
    monkeypatch.setattr(workflow_mod, "_run_child", stopped(new))  # before Hydra made its folder
    assert vaelab(["reproduce", finished_run, "--out", new]) == 130
    assert capsys.readouterr().err.strip() == (f"vaelab reproduce: the reproduction was stopped before it began; "
                                               f"nothing was written to {new}")
    monkeypatch.setattr(workflow_mod, "_run_child", stopped(new, ".hydra"))  # begun, no checkpoint yet
    assert vaelab(["reproduce", finished_run, "--out", new]) == 130
    assert capsys.readouterr().err.strip() == (f"vaelab reproduce: the reproduction in {new} was stopped before its "
                                               f"first checkpoint; start another: vaelab reproduce {finished_run} "
                                               f"--out NEW_DIR")
    trained = tmp_path / "trained"
    monkeypatch.setattr(workflow_mod, "_run_child", stopped(trained, ".hydra", "checkpoints"))  # last.pt saved
    assert vaelab(["reproduce", finished_run, "--out", trained]) == 130
    assert capsys.readouterr().err.strip() == (
        f"vaelab reproduce: the reproduction in {trained} was stopped; finish it with: vaelab resume {trained}; then "
        f"set the two side by side: vaelab compare {finished_run} {trained}")


def test_reproduce_into_a_folder_inside_a_run_is_one_line(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert vaelab(["reproduce", run, "--out", run / "sub"]) == 2
    assert capsys.readouterr().err.strip() == (f"vaelab reproduce: error: --out {run / 'sub'}: that folder is inside "
                                               f"the run {run}; give a folder outside it")


def test_a_stopped_run_is_recorded_before_it_is_let_go(tiny_mnist, tmp_path, monkeypatch):
    """A joblib parent ends a stopped worker once its run is let go (the folder's lock), and
    stopped.json and the "stopped by" line were written after that: at times a sweep's run kept
    its checkpoint but no record of the stop (a CI run lost the line). Both now come first."""
    import contextlib

    seen = {}
    held = ckpt_io.only_process

    @contextlib.contextmanager
    def spied(run_dir, *args, **kwargs):
        with held(run_dir, *args, **kwargs):
            try:
                yield
            finally:  # (the moment the run is let go)
                seen["stopped.json"] = (Path(run_dir) / ckpt_io.STOPPED).is_file()
                seen["logged"] = "stopped by SIGINT at step 5" in (Path(run_dir) / "train.log").read_text()
    monkeypatch.setattr(ckpt_io, "only_process", spied)
    with signal_at_step(monkeypatch, 4), pytest.raises(Interrupted):
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), tmp_path / "run")
    assert seen == {"stopped.json": True, "logged": True}


def test_a_stop_signal_while_a_stop_is_recorded_is_the_same_stop(tiny_mnist, tmp_path, monkeypatch):
    """In a joblib sweep the terminal's Ctrl-C reaches a worker, and then its parent's SIGTERM: that
    came once train()'s own stop had ended, in the job's handler (a KeyboardInterrupt), and cut
    short the writing of stopped.json (a CI run lost it). It is now the same stop until train()
    has recorded it; then train() puts the handlers back."""
    def interrupt(signum, frame):  # as a joblib job's SIGTERM handler (compare.SweepSummary)
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)
    real = ckpt_io.write_text_atomic

    def write(path, text):
        if Path(path).name == ckpt_io.STOPPED:
            os.kill(os.getpid(), signal.SIGTERM)  # the parent's, as the stop is recorded
            time.sleep(0.1)
        return real(path, text)
    monkeypatch.setattr(ckpt_io, "write_text_atomic", write)
    with signal_at_step(monkeypatch, 4), pytest.raises(Interrupted):
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), tmp_path / "run")
    assert json.loads((tmp_path / "run" / ckpt_io.STOPPED).read_text())["state"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is interrupt
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_stopped_resume_says_so_in_the_runs_log(tiny_mnist, tmp_path, monkeypatch, capsys):
    """vaelab resume printed how it stopped on stderr only; after a closed terminal that went
    nowhere, and train.log ended at "got SIGHUP: will checkpoint" (vaelab-train logs it there)."""
    run = tmp_path / "run"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), run)  # 3 epochs of 6 steps
    with signal_at_step(monkeypatch, 20, signal.SIGHUP):  # in epoch 4
        assert vaelab(["resume", run, "trainer.epochs=5"]) == 130
    last = (run / "train.log").read_text().splitlines()[-1]
    assert "][vaelab][WARNING] - stopped by SIGHUP at step 21 (epoch 4, " in last, last


def test_resume_stopped_in_its_final_evaluation_says_so(finished_run, tmp_path, capsys, monkeypatch):
    """A Ctrl-C (or SIGTERM) while resume evaluated a run that had trained exited 130 silently."""
    import vaelab.workflow as workflow_mod

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(workflow_mod, "finish_evaluation", stopped)
    assert vaelab(["resume", run]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"vaelab resume: interrupted; {run} keeps what it had: vaelab resume {run} carries it on")
    # stopped while it loaded the data, before it wrote its changes: the command says them again (review)
    import vaelab.data as data_mod
    monkeypatch.setattr(data_mod, "load_data", stopped)
    assert vaelab(["resume", run, "trainer.epochs=2", "optim.lr=1e-4"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"vaelab resume: interrupted; {run} keeps what it had: vaelab resume {run} trainer.epochs=2 optim.lr=1e-4 "
        f"carries it on")


def test_reproduce_of_a_run_with_a_damaged_metrics_or_eval_json_is_one_line(finished_run, tmp_path, capsys):
    """A truncated metrics.json, or a list in eval.json, was json's or Python's traceback."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "eval.json").write_text("[1, 2]")
    assert vaelab(["reproduce", run]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vaelab reproduce: error: {run / 'eval.json'}: not a JSON object of test numbers (damaged?); the run's "
        f"numbers cannot be compared (vaelab eval {run} writes it again)")
    (run / "metrics.json").write_text('{"val_loss": 1')
    assert vaelab(["reproduce", run]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vaelab reproduce: error: {run / 'metrics.json'}: not a JSON object of metrics (damaged?); the run's "
        f"numbers cannot be compared (delete it, then vaelab resume {run} writes it again)")


def test_files_written_atomically_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        path = ckpt_io.write_atomic(tmp_path / "x.json", lambda f: f.write(b"{}"))
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644  # mkstemp alone gives 0600


@pytest.mark.parametrize("args,expect", [
    (["eval", "R", "--checkpoints", "best"], "vaelab eval: error: unrecognized arguments: --checkpoints best; "
                                             "did you mean --checkpoint? (see vaelab eval --help)"),
    (["resume", "R", "--epochs", "3"], "vaelab resume: error: unrecognized arguments: --epochs 3 (see vaelab "
                                       "resume --help)"),
    (["compare"], "vaelab compare: error: the following arguments are required: DIR (see vaelab compare --help)"),
    (["reproduce", "R", "--rtol", "x"], "vaelab reproduce: error: argument --rtol: must be a number >= 0, got 'x' "
                                        "(see vaelab reproduce --help)"),
    ([], "vaelab: error: the following arguments are required: COMMAND (see vaelab --help)"),
    (["--bogus", "eval", "R"], "vaelab: error: unrecognized arguments: --bogus (see vaelab --help)"),
    (["evaluate", "R"], "vaelab: error: argument COMMAND: invalid choice: 'evaluate' (choose from 'eval', 'sample', "
                        "'reproduce', 'resume', 'compare'); did you mean eval? (see vaelab --help)"),
    (["train", "R"], "vaelab: error: argument COMMAND: invalid choice: 'train' (choose from 'eval', 'sample', "
                     "'reproduce', 'resume', 'compare'); training is vaelab-train's (see vaelab --help)"),
    (["trian", "R"], "vaelab: error: argument COMMAND: invalid choice: 'trian' (choose from 'eval', 'sample', "
                     "'reproduce', 'resume', 'compare'); training is vaelab-train's (see vaelab --help)"),
    (["eval", "R", "--chekpoint=best", "--data-rot", "/x"],
     "vaelab eval: error: unrecognized arguments: --chekpoint=best --data-rot /x; did you mean --checkpoint, "
     "--data-root? (see vaelab eval --help)"),
    (["sample", "R", "-N", "3"], "vaelab sample: error: unrecognized arguments: -N 3; did you mean -n? (see vaelab "
                                 "sample --help)"),
    (["eval", "R", "\u2014checkpoint", "last", "--K", "5"],  # (an em dash pasted from typeset text; a case miss)
     "vaelab eval: error: unrecognized arguments: \u2014checkpoint last --K 5; did you mean --checkpoint, --k? (see "
     "vaelab eval --help)"),
    (["eval", "R", "data.root=/x"], "vaelab eval: error: unrecognized arguments: data.root=/x; the data folder is "
                                    "given as --data-root DIR (see vaelab eval --help)"),
    (["reproduce", "R", "--data-root", ""], "vaelab reproduce: error: argument --data-root: must be a folder (holding "
                                            "MNIST/raw/), not empty, got '' (see vaelab reproduce --help)"),
    # (vaelab's own misspelt option: it asked for a COMMAND, or for the command's RUN_DIR)
    (["--versoin"], "vaelab: error: unrecognized arguments: --versoin; did you mean --version? (see vaelab --help)"),
    (["\u2013verison", "eval"], "vaelab: error: unrecognized arguments: \u2013verison; did you mean --version? (see "
                               "vaelab --help)"),
    (["--", "eval"], "vaelab: error: argument COMMAND: invalid choice: '--' (choose from 'eval', 'sample', "
                     "'reproduce', 'resume', 'compare') (see vaelab --help)"),  # (argparse's, not 'unrecognized')
    # "$RUN" with RUN unset: it read the current folder (eval: "not a vaelab run directory"; compare listed its runs)
    (["eval", ""], "vaelab eval: error: argument RUN_DIR: must be a run's folder, not empty (an unset shell "
                   "variable?), got '' (see vaelab eval --help)"),
    (["compare", "runs", ""], "vaelab compare: error: argument DIR: must be a folder, not empty (an unset shell "
                              "variable?), got '' (see vaelab compare --help)"),
    (["sample", "R", "--out", ""], "vaelab sample: error: argument --out: must be a path, not empty (an unset shell "
                                   "variable?), got '' (see vaelab sample --help)"),
], ids=["unknown-option", "unknown-option-resume", "missing-dir", "bad-value", "no-command", "option-before-command",
        "unknown-command", "train-command", "misspelt-train", "two-misspelt-options", "short-option", "dash-and-case",
        "data-root-as-override", "empty-data-root", "misspelt-version", "misspelt-version-before-a-command",
        "double-dash", "empty-run-dir", "empty-compare-dir", "empty-out"])
def test_a_bad_vaelab_command_line_is_one_line(args, expect, capsys):
    """argparse would print its usage block, and report a command's unknown option as the
    top-level parser's, naming neither the command nor its options."""
    assert vaelab(args) == 2
    assert capsys.readouterr().err.strip() == expect


def test_vaelab_version(capsys):
    from vaelab import __version__

    assert vaelab(["--version"]) == 0  # (it said COMMAND was missing: review)
    assert capsys.readouterr().out.strip() == f"vaelab {__version__}"
    # argparse's own rules stand beside the closest-option hint: an unambiguous start, and -h anywhere
    assert vaelab(["--vers", "eval", "R"]) == 0 and capsys.readouterr().out.strip() == f"vaelab {__version__}"
    assert vaelab(["--bogus", "-h"]) == 0 and capsys.readouterr().out.startswith("usage: vaelab")
    assert vaelab(["--vers", "--bogus"]) == 0 and capsys.readouterr().out.strip() == f"vaelab {__version__}"
    assert vaelab(["--versoin", "eval", "R", "--version"]) == 2  # (after the command: eval's, no version there)
    assert "unrecognized arguments: --versoin; did you mean --version?" in capsys.readouterr().err


def test_resume_without_a_run_names_only_what_is_missing(capsys):
    with pytest.raises(SystemExit) as exc:
        vaelab_cli(["resume"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == ("vaelab resume: error: the following arguments are required: RUN_DIR "
                                               "(see vaelab resume --help)")


def test_resume_of_a_non_run_is_one_line(tmp_path, capsys, monkeypatch):
    assert vaelab(["resume", tmp_path]) == 2
    assert capsys.readouterr().err.strip() == (f"vaelab resume: error: {tmp_path}: "
                                               f"not a vaelab run directory (no .hydra/config.yaml)")
    for job in ("latent_size=2", "latent_size=4"):  # a sweep's folder: point at its runs
        (tmp_path / job / ".hydra").mkdir(parents=True)
        (tmp_path / job / ".hydra" / "config.yaml").write_text("{}")
    assert vaelab(["resume", tmp_path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"it holds 2 runs, give one of them, e.g. {tmp_path / 'latent_size=2'}")
    assert "\n" not in err
    # outputs/ (runs/NAME/TIME): the runs below it; the same in eval and reproduce
    (tmp_path / "outputs" / "runs" / "seed" / "t0" / ".hydra").mkdir(parents=True)
    (tmp_path / "outputs" / "runs" / "seed" / "t0" / ".hydra" / "config.yaml").write_text("{}")
    for command in ("resume", "eval", "reproduce"):
        assert vaelab([command, tmp_path / "outputs"]) == 2
        assert capsys.readouterr().err.strip().endswith(
            f"(no .hydra/config.yaml); it holds 1 run below it, give it, e.g. {tmp_path / 'outputs/runs/seed/t0'}")
    # a path into a run (its checkpoints/, .hydra/, a checkpoint file): the run it is in
    run = tmp_path / "outputs" / "runs" / "seed" / "t0"
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    for command in ("resume", "reproduce", "eval"):
        for given in (run / "checkpoints", run / ".hydra", run / "checkpoints" / "last.pt"):
            assert vaelab([command, given]) == 2
            what = ("a file, not a run directory" if given.is_file()
                    else "not a vaelab run directory (no .hydra/config.yaml)")
            assert capsys.readouterr().err.strip() == (f"vaelab {command}: error: {given}: {what}; "
                                                       f"it is in the run {run}, give that")
    monkeypatch.chdir(run / "checkpoints")  # relative: `last.pt` or `.` from inside the run
    for given in ("last.pt", "."):
        assert vaelab(["eval", given]) == 2
        assert capsys.readouterr().err.strip().endswith(f"; it is in the run {run}, give that")


def test_reproduce_into_a_folder_that_cannot_be_made_is_one_line(finished_run, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    for out in (tmp_path / "afile", tmp_path / "afile" / "new"):
        assert vaelab(["reproduce", finished_run, "--out", out]) == 2  # before any training
        assert capsys.readouterr().err.strip() == (f"vaelab reproduce: error: --out {out}: {tmp_path / 'afile'} "
                                                   f"is a file, not a folder; give another --out")


def test_the_vaelab_dispatcher_imports_only_the_command_it_runs(tmp_path):
    """Every command's module used to be imported to build the parser: 4-5 s before a typo in
    the command was refused. Now only the chosen one is (torchvision, ~1.4 s, not by compare),
    and eval, sample, resume, reproduce and compare name a wrong folder before importing torch (~2 s)."""
    script = ("import atexit, sys\n"
              "atexit.register(lambda: print(sorted(m for m in sys.modules if m.startswith('vaelab.')\n"
              "                                     or m in ('torch', 'torchvision'))))\n"
              "from vaelab.cli import main\n"
              "main(sys.argv[1:])\n")
    for args, loaded in ((["frob"], ["vaelab.cli"]),
                         (["compare", "nope"], ["vaelab.checkpoint", "vaelab.cli", "vaelab.cli_errors",
                                                "vaelab.compare", "vaelab.config", "vaelab.errors"]),
                         (["eval", "nope"], None), (["sample", "nope"], None), (["resume", "nope"], None),
                         (["reproduce", "nope"], None)):
        r = subprocess.run([sys.executable, "-c", script, *args], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120, env=cli_env())
        assert r.returncode == 2 and args[-1] in r.stderr, r.stderr
        modules = r.stdout.strip().splitlines()[-1]
        assert modules == repr(loaded) if loaded else "'torch'" not in modules, (args, modules)


# --- the data a run is carried on, or reproduced, with ---------------------------------------


def test_resume_mid_epoch_on_a_training_split_of_another_size_changes_nothing(tiny_mnist, tmp_path, monkeypatch,
                                                                              capsys, caplog):
    """The checkpoint's order of the interrupted epoch indexed past the end of a smaller split: a
    traceback, after the run's config had been rewritten and its stopped.json deleted."""
    from tests.conftest import make_tiny_mnist
    from vaelab.data import DataError

    run = tmp_path / "run"
    with signal_at_step(monkeypatch, 8), pytest.raises(Interrupted):  # in epoch 2 (6 steps an epoch)
        train(compose_cfg([f"data.root={tiny_mnist}", *TINY]), run)
    larger = make_tiny_mnist(tmp_path / "larger", n_train=320)  # 256 training images past the 64 for val
    before = files_snapshot(run)
    capsys.readouterr()
    assert vaelab(["resume", run, f"data.root={larger}"]) == 2
    assert capsys.readouterr().err.strip() == (
        "vaelab resume: error: the run stopped part-way through epoch 2 of a training split of 192 images, and this "
        "data gives 256 (data.root, data.val_size): finish it on the data it was trained on")
    assert files_snapshot(run) == before
    # a resumed sweep's job takes train() directly: refused before the folder changes, too
    with pytest.raises(DataError, match="training split of 192 images, and this data gives 256"):
        train(compose_cfg([f"data.root={larger}", *TINY]), run)
    assert (run / "stopped.json").is_file()

    # Data of the same size but other images: the run goes on, and says so.
    other = make_tiny_mnist(tmp_path / "other", seed=1)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        train(compose_cfg([f"data.root={other}", *TINY]), run)
    assert "the data differs from what this run trained on until now (data digest" in caplog.text
    from vaelab.data import load_data
    digests = [load_data(root, torch.device("cpu"), val_size=64).digest for root in (tiny_mnist, other)]
    assert json.loads((run / "metrics.json").read_text())["data_digest"] == digests[1]
    # ... which metrics.json alone hid from `vaelab reproduce`: the run's record of resumes has it
    from vaelab.workflow import changed_part_way
    assert changed_part_way(run) == [f"the data (digest {digests[0]}, then {digests[1]}) (from epoch 2, after step 9)"]


def test_a_relative_data_root_given_to_resume_is_read_from_here(finished_run, tiny_mnist, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shutil.copytree(tiny_mnist, tmp_path / "here" / "data")
    monkeypatch.chdir(tmp_path / "here")
    assert vaelab(["resume", run, "data.root=data", "trainer.epochs=2"]) == 0
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["data"]["root"]
    assert saved == str(tmp_path / "here" / "data")  # absolute: the next resume reads the same folder
    assert f"data.root='{tmp_path / 'here' / 'data'}'" in (run / ".hydra" / "overrides.yaml").read_text()
    (tmp_path / "there").mkdir()  # ../here/data, and ~/data: saved as the folders they name (review: as typed)
    monkeypatch.chdir(tmp_path / "there")
    assert vaelab(["resume", run, "data.root=../here/data", "trainer.epochs=3"]) == 0
    assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["data"]["root"] == saved
    monkeypatch.setenv("HOME", str(tmp_path / "here"))
    assert vaelab(["resume", run, "data.root='~/data'", "trainer.epochs=4"]) == 0  # (quoted: Hydra's ~)
    assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["data"]["root"] == saved


def test_a_run_whose_data_root_starts_with_a_tilde_is_carried_on_from_the_home_folder(finished_run, tmp_path,
                                                                                     monkeypatch):
    from vaelab.workflow import carried_on_config

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    cfg["data"]["root"] = "~/mnist"
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert carried_on_config(run).data.root == str(tmp_path / "home" / "mnist")  # not <launch folder>/~/mnist


def test_resume_evaluates_a_finished_run_on_the_data_root_it_is_given(finished_run, tiny_mnist, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    cfg["data"]["root"], cfg["trainer"]["final_eval"] = str(tmp_path / "moved-away"), True  # its evaluation never ran
    cfg["data"]["download"] = False  # (where there is a network)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert vaelab(["resume", run]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("vaelab resume: error: MNIST not found in") and err.endswith(
        "; resume with data.root=DIR set to a folder holding MNIST/raw/")  # resume's words, not eval's
    assert vaelab(["resume", run, f"data.root={tiny_mnist}"]) == 0
    assert json.loads((run / "eval.json").read_text())["data_root"] == str(tiny_mnist.resolve())


def test_reproduce_takes_the_data_from_data_root_and_tells_other_data(finished_run, tiny_mnist, tmp_path, capsys):
    from tests.conftest import make_tiny_mnist

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    cfg["data"]["download"] = False  # (where there is a network)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert vaelab(["reproduce", run, "--data-root", tmp_path / "nowhere", "--out", tmp_path / "r0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vaelab reproduce: error: MNIST not found in {tmp_path / 'nowhere' / 'MNIST' / 'raw'}")
    assert err.endswith("give --data-root DIR to a folder holding MNIST/raw/") and not (tmp_path / "r0").exists()

    other = make_tiny_mnist(tmp_path / "other", seed=1)
    assert vaelab(["reproduce", run, "--data-root", other / ".." / "other", "--out", tmp_path / "r1"]) == 1
    out = capsys.readouterr().out
    assert "The data differs from the original run's (data_digest" in out and "NOT reproduced" in out
    assert yaml.safe_load((tmp_path / "r1" / ".hydra" / "config.yaml").read_text())["data"]["root"] == str(other)



def test_a_run_whose_launch_folder_moved_reads_a_relative_data_root_from_the_current_one(tiny_mnist, tmp_path,
                                                                                        monkeypatch):
    from vaelab.evaluate_run import data_root

    run = tmp_path / "project" / "run"
    shutil.copytree(tiny_mnist, tmp_path / "project" / "data")
    run_module("vaelab.train", ["data.root=data", *TINY, "trainer.epochs=1", f"hydra.run.dir={run}"],
               tmp_path / "project")
    cfg = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    assert cfg["data"]["root"] == "data"
    (tmp_path / "project").rename(tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved")
    assert data_root(tmp_path / "moved" / "run", OmegaConf.create(cfg)) == Path("data")  # not the gone project/data
    assert vaelab(["resume", tmp_path / "moved" / "run", "trainer.epochs=2"]) == 0


def test_an_epoch_whose_beta_changed_part_way_logs_its_mean_beta(finished_run, tmp_path, caplog, monkeypatch):
    """epochs.jsonl's beta (and the epoch's log line) is the mean over the epoch's examples; after
    `vaelab resume loss.beta=2` part-way through an epoch it was the new value's (review). The
    resume says what it changed (its line said only where it carried on from, review)."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    with signal_at_step(monkeypatch, 7):  # (step 8 of 6 an epoch: in epoch 2 at image 64)
        assert vaelab(["resume", run, "trainer.epochs=3"]) == 130
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vaelab"):
        assert vaelab(["resume", run, "loss.beta=2", "optim.lr=0.001"]) == 0  # (the lr it had: not a change)
    assert "carried on with loss.beta=2.0 (was 1.0) from step 8, recorded in .hydra/resumes.yaml" in caplog.text
    betas = [json.loads(line)["beta"] for line in (run / "epochs.jsonl").read_text().splitlines()]
    assert betas == [1.0, pytest.approx((64 * 1.0 + 128 * 2.0) / 192), 2.0]  # (epoch 3: all at 2, as set)


def test_a_resume_part_way_that_changes_the_batches_or_beta_keeps_the_mean_betas(tiny_mnist, tmp_path, monkeypatch,
                                                                                 caplog):
    """After `vaelab resume trainer.batch_size=40` part-way through a warm-up's epoch, epochs.jsonl's
    beta was worked out as if the whole epoch had had batches of 40; after `vaelab resume loss.beta=1`
    part-way through a log interval (no warm-up), train/beta said 1 for an interval taken partly at
    beta 2, and the epoch's line left out its mean beta (review)."""
    warm = tmp_path / "warm"
    args = [f"data.root={tiny_mnist}", *TINY, "trainer.epochs=2", "loss.kl_warmup_steps=20", "trainer.log_every=4"]
    with signal_at_step(monkeypatch, 7), pytest.raises(Interrupted):  # (epoch 2, steps 6 and 7 done: image 64)
        train(compose_cfg(args), warm)
    assert vaelab(["resume", warm, "trainer.batch_size=40"]) == 0
    epoch2 = json.loads((warm / "epochs.jsonl").read_text().splitlines()[1])
    # steps 6-7 of 32 images, 8-10 of 40, 11 of the last 8; beta = step / 20
    assert epoch2["beta"] == pytest.approx((32 * (6 + 7) + 40 * (8 + 9 + 10) + 8 * 11) / 20 / 192)

    mixed = tmp_path / "mixed"
    args = [f"data.root={tiny_mnist}", *TINY, "trainer.epochs=2", "loss.beta=2", "trainer.log_every=4"]
    with signal_at_step(monkeypatch, 9), pytest.raises(Interrupted):  # (epoch 2, steps 8 and 9 of its interval done)
        train(compose_cfg(args), mixed)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vaelab"):
        assert vaelab(["resume", mixed, "loss.beta=1"]) == 0
    acc = EventAccumulator(str(mixed), size_guidance={"scalars": 0})
    acc.Reload()
    beta = {e.step: e.value for e in acc.Scalars("train/beta")}
    assert beta[8 * 32] == 2.0 and beta[12 * 32] == pytest.approx(1.5)  # (steps 8-9 at 2, 10-11 at 1)
    assert json.loads((mixed / "epochs.jsonl").read_text().splitlines()[1])["beta"] == pytest.approx(320 / 192)
    assert "(recon + 1.67 x KL)" in caplog.text
    # and eval's curves.png says its train loss is not recon + KL throughout (loss.beta is 1 now)
    import vaelab.pictures as pictures
    notes = []
    real = pictures.curves_figure
    monkeypatch.setattr(pictures, "curves_figure",
                        lambda scalars, note="", *a, **kw: notes.append(note) or real(scalars, note, *a, **kw))
    from vaelab.evaluate_run import evaluate_run
    evaluate_run(mixed, k=2, device="cpu", progress=False)
    assert notes[0].startswith("the train loss is recon + beta x KL (a resume changed beta's settings: train/beta "
                               "has its betas), the validation loss recon + KL")


def _resumed_after_editing(run: Path, caplog, old: str, new: str, *overrides: str) -> str:
    """The log of `vaelab resume RUN OVERRIDES` after `old` in the run's saved config was replaced
    by `new`, as by hand."""
    config = run / ".hydra" / "config.yaml"
    assert old in config.read_text()
    config.write_text(config.read_text().replace(old, new))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vaelab"):
        assert vaelab(["resume", run, *overrides]) == 0
    return caplog.text


def test_a_config_changed_without_a_record_is_a_change_the_resume_records(finished_run, tmp_path, caplog):
    """A kill -9 between a resume's write of the config and of its record (or a config edited by
    hand) left optim.lr=0.0005 in config.yaml with no record: the next resume trained with it unsaid,
    and vaelab reproduce said NOT reproduced (review). The resume says and records it as a change
    from its step, with the checkpoint's value before it, and the run reproduces."""
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    said = _resumed_after_editing(run, caplog, "lr: 0.001\n", "lr: 0.0005\n", "trainer.epochs=2")
    assert ("carried on with trainer.epochs=2 (was 1), optim.lr=0.0005 (was 0.001, the checkpoint's: the saved config "
            "held 0.0005 with no record of the change) from step 6") in said
    assert yaml.safe_load((run / ".hydra" / "resumes.yaml").read_text()) == [
        {"epoch": 2, "step": 6, "overrides": ["trainer.epochs=2", "optim.lr=0.0005"],
         "before": {"trainer.epochs": 1, "optim.lr": 0.001}}]
    # what vaelab reproduce makes of it (which then matched to the bit: by hand, 2026-11-28)
    from vaelab.workflow import _replay
    assert _replay(run) == ([{"epoch": 2, "step": 6, "before": {"trainer.epochs": 1, "optim.lr": 0.001},
                              "overrides": ["trainer.epochs=2", "optim.lr=0.0005"]}], "")


def test_unrecorded_changes_of_ones_own_arguments_of_a_sweeps_job_and_not_of_interpolations(tiny_mnist, tmp_path,
                                                                                              caplog):
    """Review of the change before: an argument of one's own model added to the config by hand was
    not seen (and the whole-config check refused the file, saying it had no model.kwargs); one
    changed so went without the own-model warning; a setting that follows a changed one through an
    interpolation was said as a change of its own; and a sweep's job carried on by `vaelab resume
    SWEEP_DIR` (train._carry_on) still trained on with an unrecorded change unsaid."""
    from vaelab.train import _carry_on

    own = tmp_path / "own"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1",
                       f"model._target_={ScaledVAE.__module__}.ScaledVAE"]), own)
    said = _resumed_after_editing(own, caplog, "  kwargs: {}\n", "  kwargs:\n    scale: 0.5\n", "trainer.epochs=2")
    assert "model.kwargs.scale=0.5 (was left out: 1.0, the checkpoint's: the saved config held 0.5" in said
    assert "model.kwargs.scale=0.5 (was 1.0): the weights trained so far carry on under it" in said
    assert yaml.safe_load((own / ".hydra" / "resumes.yaml").read_text())[-1]["left_out"] == ["model.kwargs.scale"]

    follows = tmp_path / "follows"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1",
                       "trainer.eval_batch_size=${trainer.batch_size}"]), follows)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vaelab"):
        assert vaelab(["resume", follows, "trainer.epochs=2", "trainer.batch_size=16"]) == 0
    assert "carried on with trainer.epochs=2 (was 1), trainer.batch_size=16 (was 32) from step 6" in caplog.text

    job = tmp_path / "job"  # (_carry_on's own: a job that has not trained all its epochs)
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1"]), job)
    config = job / ".hydra" / "config.yaml"
    config.write_text(config.read_text().replace("lr: 0.001\n", "lr: 0.0005\n").replace("epochs: 1\n", "epochs: 2\n"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vaelab"):
        _carry_on(job)
    assert "job carried on with optim.lr=0.0005 (was 0.001, the checkpoint's" in caplog.text
    assert yaml.safe_load((job / ".hydra" / "resumes.yaml").read_text()) == [
        {"epoch": 2, "step": 6, "overrides": ["optim.lr=0.0005"], "before": {"optim.lr": 0.001}}]


def test_reproduce_makes_each_change_part_way_where_it_was_made(finished_run, tmp_path, capsys, monkeypatch):
    """The config holds a resumed run's last values, which a re-run used from its first step: a
    run whose lr changed at epoch 2 reproduced as 'NOT reproduced', with a note. The reproduction
    now trains with the values before each change up to its step (one at an epoch's end, one after
    a Ctrl-C part-way through an epoch), then resumes with it, and matches; a record from before
    resumes.yaml kept those values gets the note."""
    longer, changed = tmp_path / "longer", tmp_path / "changed"
    for run in (longer, changed):
        shutil.copytree(finished_run, run)
    assert vaelab(["resume", longer, "trainer.epochs=2"]) == 0
    with signal_at_step(monkeypatch, 7):  # (step 8 of 6 an epoch: in epoch 2 at image 64)
        assert vaelab(["resume", changed, "trainer.epochs=3", "optim.lr=1e-4"]) == 130
    assert vaelab(["resume", changed, "loss.beta=2", "optim.lr=0.0001"]) == 0  # (the lr it has: no change, review)
    assert yaml.safe_load((changed / ".hydra" / "resumes.yaml").read_text()) == [
        {"epoch": 2, "step": 6, "overrides": ["trainer.epochs=3", "optim.lr=1e-4"],
         "before": {"trainer.epochs": 1, "optim.lr": 0.001}},
        {"epoch": 2, "step": 8, "overrides": ["loss.beta=2"], "before": {"loss.beta": 1.0}}]
    capsys.readouterr()

    from vaelab.workflow import changed_part_way
    assert changed_part_way(longer) == []  # more epochs: the same numbers (test_resume_with_more_epochs...)
    assert vaelab(["reproduce", changed, "--out", tmp_path / "r1"]) == 0
    out = capsys.readouterr().out
    assert ("note: changed was carried on with changed settings: optim.lr=1e-4 (from epoch 2, after step 6), "
            "loss.beta=2 (from epoch 2, after step 8); the reproduction makes each change at the step it was made "
            "(resumes.yaml), with vaelab resume.") in out
    assert out.rstrip().endswith("reproduced: every metric is identical")
    assert (tmp_path / "r1" / ".hydra" / "config.yaml").read_text() == (changed / ".hydra" / "config.yaml").read_text()
    # a record of the changes without the values before them (a vaelab from before 2026-11-27): the
    # last values from the start, as the note says (and as if from before data_digest: nothing to
    # compare it with, not a difference)
    record = yaml.safe_load((changed / ".hydra" / "resumes.yaml").read_text())
    (changed / ".hydra" / "resumes.yaml").write_text(yaml.safe_dump([{k: v for k, v in r.items() if k != "before"}
                                                                     for r in record]))
    metrics = json.loads((changed / "metrics.json").read_text())
    del metrics["data_digest"], metrics["units"]  # (nor units, as before 2026-11-27: review, "units DIFFERENT")
    (changed / "metrics.json").write_text(json.dumps(metrics))
    import vaelab.workflow as workflow_mod

    def trained(*args, **kwargs):  # (any plain reproduction's training; with the last values from the start, the
        shutil.copytree(tmp_path / "r1", tmp_path / "r2", dirs_exist_ok=True)  # numbers come out otherwise)
        other = {**json.loads((tmp_path / "r1" / "metrics.json").read_text()), "val_loss": 1.0}
        (tmp_path / "r2" / "metrics.json").write_text(json.dumps(other))
        return 0
    monkeypatch.setattr(workflow_mod, "_run_child", trained)
    assert vaelab(["reproduce", changed, "--out", tmp_path / "r2"]) == 1
    out = capsys.readouterr().out
    assert "data_digest" not in out.splitlines()[-1] and not re.search(r"^units ", out, re.M)
    assert ("note: changed was carried on with changed settings: optim.lr=1e-4 (from epoch 2, after step 6), "
            "loss.beta=2 (from epoch 2, after step 8). Its config holds the last values, which the reproduction "
            "uses from the start (resumes.yaml lacks the values before the changes, as a vaelab from before "
            "2026-11-27 wrote it): its numbers need not match.") in out
    assert out.rstrip().endswith("(settings changed part-way: see the note above)")


def test_reproduce_of_a_run_resumed_from_an_older_checkpoint_after_a_change(finished_run, tmp_path, capsys,
                                                                            monkeypatch):
    """A change at step 8, then last.pt lost and the run resumed (no setting given) from best.pt at
    step 6: it trained with the change from step 6. That resume was not recorded, and the
    reproduction made the change at step 8, then differed without a note (review)."""
    from vaelab.workflow import _replay

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    # (stops as a Ctrl-C's, at a given step: a second Ctrl-C in one process is ignored, leaving_after_a_stop)
    monkeypatch.setenv("VAELAB_STOP_AFTER_STEP", "8")  # in epoch 2
    assert vaelab(["resume", run, "trainer.epochs=2"]) == 130
    monkeypatch.setenv("VAELAB_STOP_AFTER_STEP", "10")  # from step 8 with the change
    assert vaelab(["resume", run, "optim.lr=1e-4"]) == 130
    monkeypatch.delenv("VAELAB_STOP_AFTER_STEP")
    (run / "checkpoints" / "last.pt").unlink()
    # from best.pt, step 6 (the lr given is the one it has: no change, and still the record of where it resumed)
    assert vaelab(["resume", run, "optim.lr=1e-4"]) == 0
    assert yaml.safe_load((run / ".hydra" / "resumes.yaml").read_text())[-1] == {
        "epoch": 2, "step": 6, "overrides": [], "before": {}}
    # (trainer.epochs=2 alone, at step 6: nothing to make there, so not in the plan)
    assert _replay(run) == ([{"epoch": 2, "step": 6, "before": {"optim.lr": 0.001}, "overrides": ["optim.lr=1e-4"]}],
                            "")
    # (the reproduction then makes it at step 6, as test_reproduce_makes_each_change_part_way_... shows; its
    # note says so, not "after step 8")
    import vaelab.workflow as workflow_mod

    stop_reproduce_at(monkeypatch, "_replayed")
    capsys.readouterr()
    with pytest.raises(Began):
        workflow_mod.reproduce(run, tmp_path / "again")
    assert "changed settings: optim.lr=1e-4 (from epoch 2, after step 6); the reproduction makes" in (
        capsys.readouterr().out)


@pytest.mark.parametrize("how", ["a Ctrl-C in the first part", "a Ctrl-C as the first part stops at its step",
                                 "a Ctrl-C as the last part starts", "a Ctrl-C between two parts",
                                 "a Ctrl-C once every change is made"])
def test_a_reproduction_stopped_part_way_through_its_changes_says_to_start_another(finished_run, tmp_path,
                                                                                   monkeypatch, how):
    """It said 'finish it with: vaelab resume NEW', which trained on without the changes still to
    make (review); a Ctrl-C that came as a part stopped at its step, or between two parts, or as
    the last part started (before its resume had written the change) was lost or said the same.
    Once every change is made, vaelab resume NEW does finish it (reproduce says so, exit 130)."""
    import vaelab.workflow as workflow_mod

    run, new = tmp_path / "run", tmp_path / "new"
    shutil.copytree(finished_run, run)
    plan = [{"epoch": 1, "step": 3, "before": {"optim.lr": 0.001}, "overrides": ["optim.lr=1e-4"]}]
    parts = []

    def child(cmd, stops=None, **kwargs):
        parts.append(cmd)
        if len(parts) == 1:  # the first part: stopped at step 3, by a Ctrl-C or as planned
            (new / "checkpoints").mkdir(parents=True)
            by = "SIGINT" if how == "a Ctrl-C in the first part" else "VAELAB_STOP_AFTER_STEP=3"
            (new / "stopped.json").write_text(json.dumps({"state": "interrupted", "reason": f"stopped by {by}"}))
            if how == "a Ctrl-C as the first part stops at its step":
                stops.append(signal.SIGINT)
            return 130
        if how == "a Ctrl-C between two parts":
            raise KeyboardInterrupt
        if how == "a Ctrl-C once every change is made":  # (the resume wrote its record, then was stopped)
            (new / ".hydra").mkdir(exist_ok=True)
            (new / ".hydra" / "resumes.yaml").write_text(yaml.safe_dump([{"step": 3, "overrides": ["optim.lr=1e-4"]}]))
        stops.append(signal.SIGINT)
        return 130
    monkeypatch.setattr(workflow_mod, "_run_child", child)
    cmd = ["python", "-m", "vaelab.train", "--config-dir", str(run / ".hydra"), "--config-name", "config"]
    if how == "a Ctrl-C once every change is made":
        assert workflow_mod._replayed(run, new, cmd, {}, plan, None) == 130
        return
    root = tmp_path / "data" if how == "a Ctrl-C between two parts" else None  # (reproduce --data-root: kept)
    with pytest.raises(workflow_mod.ReproductionStopped) as e:
        workflow_mod._replayed(run, new, cmd, {}, plan, root)
    assert str(e.value) == (f"the reproduction in {new} was stopped before it had made all of run's changes at "
                            f"their steps (0 of 1); start another (not the vaelab resume its training printed: "
                            f"that would train on without them): vaelab reproduce {run} --out NEW_DIR"
                            + (f" --data-root {root}" if root else ""))
    # the folder says so too: its stopped.json advised vaelab resume NEW, which trained on without the
    # changes, unsaid (review); it is refused, with the same words
    stopped = json.loads((new / "stopped.json").read_text())
    assert "continue with" not in stopped["reason"] and stopped["reproduction_part_way"] == str(e.value)
    (new / ".hydra").mkdir(exist_ok=True)
    (new / ".hydra" / "config.yaml").write_text((run / ".hydra" / "config.yaml").read_text())
    with pytest.raises(workflow_mod.WorkflowError, match=f"^{re.escape(f'{new}: {e.value}')}$"):
        workflow_mod.resume(new)


def test_replay_plans_say_why_they_cannot_be_made(tmp_path):
    from vaelab.workflow import _later_wins, _replay

    (tmp_path / ".hydra").mkdir()
    record = tmp_path / ".hydra" / "resumes.yaml"
    record.write_text(yaml.safe_dump([{"epoch": 2, "step": 6, "overrides": ["optim.lr=1e-4"]}]))
    assert _replay(tmp_path) == (None, "resumes.yaml lacks the values before the changes, as a vaelab from before "
                                       "2026-11-27 wrote it")
    # only how long, where the data is, the device or the progress bar: nothing to make at that step (it
    # stopped and resumed there for nothing, and said "changed settings: ;", review)
    for line in ("trainer.epochs=3", "device=cpu", "trainer.progress=true"):
        record.write_text(yaml.safe_dump([{"epoch": 2, "step": 6, "overrides": [line]}]))
        assert _replay(tmp_path) == ([], "")
    # ... nor a value the run had already (recorded so before 2026-11-28; a reproduction's resume records none,
    # and it was counted as a change not made, review)
    record.write_text(yaml.safe_dump([{"epoch": 2, "step": 8, "overrides": ["optim.lr=0.001"],
                                       "before": {"optim.lr": 0.001}}]))
    assert _replay(tmp_path) == ([], "")
    # but such a record after a resume from an older checkpoint still says where the change was made from
    # (left out, the lr change stayed at step 8: NOT reproduced, review)
    change = {"epoch": 2, "step": 8, "overrides": ["optim.lr=0.0005"], "before": {"optim.lr": 0.001}}
    for older, lines in (({"overrides": ["trainer.epochs=4"], "before": {"trainer.epochs": 3}}, ["trainer.epochs=4"]),
                         ({"overrides": ["optim.lr=0.0005"], "before": {"optim.lr": 0.0005}}, []),
                         ({"overrides": [], "before": {}}, [])):
        record.write_text(yaml.safe_dump([change, {"epoch": 2, "step": 6, **older}]))
        assert _replay(tmp_path) == ([{**change, "step": 6, "overrides": [*change["overrides"], *lines]}], ""), older
    # a later trainer.epochs, with nothing to make at its step, still goes to the last part's resume: an earlier
    # part's trainer.epochs=3 ended the reproduction at 3 where the run went on to 4 (review); in its place, as
    # vaelab resume refuses a key given twice (review: the reproduction of such a run failed)
    both = {**change, "overrides": ["optim.lr=0.0005", "trainer.epochs=3"],
            "before": {"optim.lr": 0.001, "trainer.epochs": 2}}
    record.write_text(yaml.safe_dump([both, {"epoch": 4, "step": 18, "overrides": ["trainer.epochs=4"],
                                             "before": {"trainer.epochs": 3}}]))
    assert _replay(tmp_path) == ([{**both, "overrides": ["optim.lr=0.0005", "trainer.epochs=4"]}], "")
    assert _later_wins(["+model.kwargs.a=1", "latent_size=2", "model.kwargs.a=2"]) == ["latent_size=2",
                                                                                       "+model.kwargs.a=2"]
    # a key given twice takes its last value, as the resume did (written so before 2026-11-28)
    record.write_text(yaml.safe_dump([{**change, "overrides": ["optim.lr=0.0005", "optim.lr=0.001"]}]))
    assert _replay(tmp_path) == ([], "")
    record.write_text(yaml.safe_dump([{"epoch": 2, "step": 6, "data_digest": {"before": "a", "now": "b"}}]))
    assert _replay(tmp_path) == (None, "the data itself changed part-way")


def test_a_ctrl_c_during_vaelab_trains_checks_is_one_line(monkeypatch, capsys):
    """A SIGINT 0.3-2 s after vaelab-train started (its checks, its imports) ended in a
    KeyboardInterrupt traceback: _run_hydra's handler comes only later."""
    import vaelab.train_cli as train_cli

    def checks(argv, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(train_cli, "launch", checks)
    assert train_cli._launch_unless_stopped() == 130
    assert capsys.readouterr().err == "vaelab-train: interrupted before any run started\n"


def test_a_ctrl_c_before_a_run_began_training_leaves_no_folder(tiny_mnist, tmp_path):
    """A Ctrl-C as the data loaded left a folder of .hydra/ alone: `vaelab compare` listed it as an
    unfinished run for good, and the same hydra.run.dir was refused as a run's folder. A folder
    made for the run goes; one that was there before (here the current folder, a link) keeps all
    but Hydra's files: its .gitkeep, and a note of the user's in a .hydra/ of theirs."""
    def interrupted_as_the_data_loads(*args) -> str:
        script = f"""
import sys
import vaelab.train
def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
vaelab.train.load_data = interrupted
from vaelab.train_cli import main
sys.argv = ["vaelab-train", "data.root={tiny_mnist}", "data.val_size=64", *{list(args)!r}]
main()
"""
        p = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120, env={**os.environ, "TQDM_DISABLE": "1"})
        assert p.returncode == 130, p.stderr[-2000:]
        [line] = [ln for ln in p.stderr.splitlines() if ln.startswith("vaelab-train: interrupted")]
        return line

    made = "began training; its folder, made for it and holding nothing else, is removed"
    kept = "began training; what it had written there (.hydra/'s files, train.log) is removed"
    line = interrupted_as_the_data_loads()
    assert re.fullmatch(rf"vaelab-train: interrupted before {tmp_path}/outputs/runs/default/\S+ {made}", line), line
    assert not (tmp_path / "outputs" / "runs" / "default").exists()
    assert interrupted_as_the_data_loads(f"hydra.run.dir={tmp_path / 'new'}").endswith(made)  # named, new
    assert not (tmp_path / "new").exists()
    (tmp_path / ".gitkeep").write_text("")
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "notes.txt").write_text("mine")
    assert interrupted_as_the_data_loads(f"hydra.run.dir={tmp_path}") == (
        f"vaelab-train: interrupted before {tmp_path} {kept}")
    assert sorted(p.name for p in tmp_path.rglob("*")) == [".gitkeep", ".hydra", "notes.txt"]
    (tmp_path / "target").mkdir()  # a link the user named (rmtree refused it, and the line said "removed")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert interrupted_as_the_data_loads(f"hydra.run.dir={tmp_path / 'link'}").endswith(kept)
    assert (tmp_path / "link").is_symlink() and list((tmp_path / "target").iterdir()) == []


def test_a_ctrl_c_while_vaelab_train_loads_its_modules_is_one_line():
    """Earlier still, in the import of vaelab.train_cli (hydra, the checks' modules), a Ctrl-C was
    a 48-line KeyboardInterrupt traceback: the console script is now cli.train_main."""
    script = """
import os, signal, sys
class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "vaelab.cli_errors":
            os.kill(os.getpid(), signal.SIGINT)
sys.meta_path.insert(0, CtrlC())
sys.argv = ["vaelab-train", "latent_size=2"]
from vaelab.cli import train_main
train_main()
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stderr) == (130, "vaelab-train: interrupted before any run started\n")


def test_a_ctrl_c_while_a_vaelab_command_loads_is_one_line(monkeypatch, capsys):
    """`vaelab resume RUN` imports its command's module (torch, ~2 s) before the command runs and
    answers a Ctrl-C itself: one came out as a KeyboardInterrupt traceback."""
    import importlib

    def loading(name, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(importlib, "import_module", loading)
    try:
        assert vaelab(["compare", "."]) == 130
    except KeyboardInterrupt:  # (a failure of this test, not a Ctrl-C that ends the test session)
        pytest.fail("the Ctrl-C came out of vaelab as a KeyboardInterrupt")
    assert capsys.readouterr().err == "vaelab: interrupted before the command began; nothing was written\n"


def test_a_ctrl_c_a_vaelab_command_does_not_answer_itself_is_one_line(reference, tmp_path, monkeypatch, capsys):
    """`vaelab eval|sample|compare|reproduce` stopped while loading torch or the data exited 130
    with no word at all. Each says now what the Ctrl-C left; reproduce's, before its training
    began, that it wrote nothing, and after its training, that the reproduction is whole."""
    from vaelab import compare as compare_mod
    from vaelab import data as data_mod
    from vaelab import evaluate_run as ev_mod
    from vaelab import workflow

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(ev_mod, "evaluate_run", interrupted)
    monkeypatch.setattr(ev_mod, "load_run", interrupted)
    monkeypatch.setattr(compare_mod, "find_runs", interrupted)
    monkeypatch.setattr(data_mod, "fetch_mnist", interrupted)
    before = files_snapshot(reference)
    for argv, line in ((["eval", reference], "vaelab eval: interrupted; the run's eval.json, eval/ and TensorBoard "
                                             "keep the evaluation they held"),
                       (["sample", reference], "vaelab sample: interrupted; nothing was written"),
                       (["compare", reference], "vaelab compare: interrupted; nothing was written"),
                       (["reproduce", reference, "--out", tmp_path / "again"],
                        "vaelab reproduce: interrupted before the reproduction began; nothing was written")):
        try:
            assert vaelab(argv) == 130
        except KeyboardInterrupt:
            pytest.fail(f"the Ctrl-C came out of vaelab {argv[0]} as a KeyboardInterrupt")
        assert capsys.readouterr().err == line + "\n"
    assert not (tmp_path / "again").exists() and files_snapshot(reference) == before
    monkeypatch.undo()

    def trained(cmd, **kwargs):  # the reproduction's training, done: its folder a copy of the run's
        shutil.copytree(reference, tmp_path / "again")
        return 0
    monkeypatch.setattr(workflow, "_run_child", trained)
    monkeypatch.setattr(workflow, "_report", interrupted)  # a Ctrl-C as the two runs' table is made
    assert vaelab(["reproduce", reference, "--out", tmp_path / "again"]) == 130
    assert capsys.readouterr().err == (f"vaelab reproduce: interrupted; the reproduction in {tmp_path / 'again'} has "
                                       f"finished, set the two side by side with: vaelab compare {reference} "
                                       f"{tmp_path / 'again'}\n")


def test_reproduce_of_a_run_without_its_final_evaluation_compares_the_rest(tiny_mnist, tmp_path, monkeypatch, capsys):
    """A run stopped during its end-of-training evaluation (or whose eval.json was deleted) has
    no test_*: its reproduction's, which the reproduction makes, counted as 17 differing metrics
    and "NOT reproduced" though every training number was identical."""
    from vaelab import workflow

    evaluated = tmp_path / "evaluated"
    train(compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.final_eval=true"]), evaluated)
    run = tmp_path / "run"
    shutil.copytree(evaluated, run)
    (run / "eval.json").unlink()

    def trained(cmd, **kwargs):  # the reproduction: the same run, with its final evaluation
        shutil.copytree(evaluated, tmp_path / "again")
        return 0
    monkeypatch.setattr(workflow, "_run_child", trained)
    capsys.readouterr()
    assert vaelab(["reproduce", run, "--out", tmp_path / "again"]) == 0
    out = capsys.readouterr().out
    assert "test_elbo" not in out and "reproduced: every metric is identical" in out
    assert (f"(test_* not compared: {run} has no eval.json, its end-of-training evaluation did not run to its end; "
            f"vaelab resume {run} makes it)") in out


def test_an_eval_interrupted_once_written_says_the_new_one_stands(reference, tmp_path, monkeypatch, capsys):
    """A Ctrl-C after eval.json was written (as the old event file goes, or the table prints) said
    the run kept the evaluation it held: it holds the new one."""
    from vaelab import evaluate_run as ev_mod

    run = tmp_path / "run"
    shutil.copytree(reference, run)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(ev_mod, "format_table", interrupted)
    capsys.readouterr()
    assert vaelab(["eval", run, "--k", "2", "--no-pictures", "--no-progress"]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == (f"vaelab eval: interrupted once the evaluation was written: "
                                                        f"{run / 'eval.json'} holds it")
    assert json.loads((run / "eval.json").read_text())["k"] == 2
    # stopped inside the evaluation, once eval.json is written (as the old event file goes), with last.pt
    # a link to a checkpoint kept aside: eval.json names the target, and it is still this one's
    (run / "checkpoints" / "last.pt").rename(run / "checkpoints" / "kept.pt")
    (run / "checkpoints" / "last.pt").symlink_to("kept.pt")
    monkeypatch.setattr(ev_mod, "_remove_events", interrupted)
    assert vaelab(["eval", run, "--k", "3", "--no-pictures", "--no-progress"]) == 130
    assert capsys.readouterr().err.splitlines()[-1].endswith("eval.json holds it")


def test_an_atomic_write_replaces_a_link_unless_told_to_write_through_it(tmp_path):
    """Following links for `vaelab sample --out` made every atomic write follow them: a run's
    last.pt linked to a checkpoint kept aside overwrote that checkpoint at the next epoch."""
    kept = tmp_path / "keep_epoch1.pt"
    kept.write_bytes(b"epoch 1")
    (tmp_path / "last.pt").symlink_to(kept.name)
    ckpt_io.write_atomic(tmp_path / "last.pt", lambda f: f.write(b"epoch 2"))
    assert kept.read_bytes() == b"epoch 1" and not (tmp_path / "last.pt").is_symlink()
    (tmp_path / "grid.png").symlink_to(kept.name)  # a picture the user named: written where the link points
    ckpt_io.write_atomic(tmp_path / "grid.png", lambda f: f.write(b"picture"), through_link=True)
    assert (tmp_path / "grid.png").is_symlink() and kept.read_bytes() == b"picture"


def test_an_eval_interrupted_as_another_wrote_eval_json_does_not_claim_it(reference, tmp_path, monkeypatch, capsys):
    """Stopped as another process (the run's own final evaluation) wrote eval.json with the same k
    and seed but another checkpoint, `vaelab eval --checkpoint best` said the file held its own."""
    from vaelab import evaluate_run as ev_mod

    run = tmp_path / "run"
    shutil.copytree(reference, run)

    def another_wrote_then_ctrl_c(run_dir, **kwargs):
        (run / "eval.json").write_text(json.dumps({"k": 2, "seed": 0, "checkpoint": str(run / "checkpoints" /
                                                                                        "last.pt")}))
        raise KeyboardInterrupt
    monkeypatch.setattr(ev_mod, "evaluate_run", another_wrote_then_ctrl_c)
    capsys.readouterr()
    assert vaelab(["eval", run, "--k", "2", "--checkpoint", "best"]) == 130
    assert capsys.readouterr().err.strip() == ("vaelab eval: interrupted; the run's eval.json, eval/ and TensorBoard "
                                               "keep the evaluation they held")
    assert vaelab(["eval", run, "--k", "2"]) == 130  # (last.pt's, as this one asked: its own)
    assert capsys.readouterr().err.strip().endswith("eval.json holds it")
