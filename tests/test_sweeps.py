"""Sweeps as a user runs them (vaelab-train -m ...), on tiny generated data: folder names,
one HParams row per run, the joblib launcher, Optuna, `vaelab compare`, the launcher configs."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from vaelab import checkpoint as ckpt_io
from vaelab.cli import main as vaelab_cli
from vaelab.config import CONF_DIR, register_configs
from vaelab.run_dirs import job_name
from vaelab.train_cli import sweep_name_override
from vaelab.workflow import is_timing

from tests.conftest import FAST, compose_cfg

TINY = [*FAST, "model.size=small", "trainer.final_eval=false", "seed=3"]
SWEEP = ["latent_size=2,4", "loss.beta=1,4"]
NAMES = {"latent_size=2,loss.beta=1", "latent_size=2,loss.beta=4", "latent_size=4,loss.beta=1",
         "latent_size=4,loss.beta=4"}


def vaelab_train(args: list[str], cwd: Path, threads: int | None = None, code: int = 0, bars: bool = False) -> Path:
    """Run vaelab-train in `cwd`, expecting exit status `code`; returns the sweep folder it made.
    What it printed is in cwd/vaelab-train.out. bars: with its progress bars (else TQDM_DISABLE)."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if bars:
        env.pop("TQDM_DISABLE")
    env.pop("VAELAB_DATA", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    p = subprocess.run([sys.executable, "-m", "vaelab.train", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == code, p.stderr[-3000:]
    (cwd / "vaelab-train.out").write_text(p.stdout + p.stderr)
    [sweep] = (cwd / "outputs" / "multirun" / "default").iterdir()
    return sweep


def runs(sweep: Path) -> dict[str, Path]:
    return {d.name: d for d in sweep.iterdir() if d.is_dir() and not d.name.startswith(".")}


def vaelab(args: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        vaelab_cli([str(a) for a in args])
    return exc.value.code


@pytest.fixture(scope="module")
def sweep(tiny_mnist, tmp_path_factory) -> Path:
    """A 2x2 sweep on the basic launcher, one CPU thread per job like the joblib workers below."""
    return vaelab_train(["-m", *SWEEP, f"data.root={tiny_mnist}", *TINY], tmp_path_factory.mktemp("basic"),
                        threads=1)


def test_sweep_ends_with_a_summary_line(sweep):
    out = (sweep.parents[3] / "vaelab-train.out").read_text()
    # and which job did best by the number the sweep minimises
    val = {name: json.loads((run / "metrics.json").read_text())["val_loss"] for name, run in runs(sweep).items()}
    best = min(val, key=val.get)
    assert (f"sweep of 4 jobs: 4 done; lowest val_loss {val[best]:.4f}: {best}; table: vaelab compare "
            f"{sweep.relative_to(sweep.parents[3])}") in out


def test_sweep_folders_are_named_by_the_swept_overrides(sweep):
    assert set(runs(sweep)) == NAMES  # not 0..3; the fixed overrides and the seed stay out
    for name, run in runs(sweep).items():
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        assert set(name.split(",")) <= set(overrides) and "seed=3" in overrides
        assert json.loads((run / "metrics.json").read_text())["latent_size"] == int(name.split(",")[0][-1])
    # TensorBoard's own loader names the runs by these folders.
    mux = EventMultiplexer().AddRunsFromDirectory(str(sweep))
    mux.Reload()
    assert set(mux.Runs()) == NAMES


def test_sweep_has_one_hparams_row_per_run(sweep):
    for name, run in runs(sweep).items():
        assert not list(run.glob("*/**/events.out.tfevents.*"))  # no add_hparams sub-folder doubling runs
        tags = [v.tag for f in run.glob("events.out.tfevents.*") for e in EventFileLoader(str(f)).Load()
                for v in e.summary.value]
        assert tags.count("_hparams_/session_start_info") == 1  # one row
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hp = hparams_metadata.parse_session_start_info_plugin_data(content).hparams
        latent, beta = (kv.split("=")[1] for kv in name.split(","))
        assert hp["latent_size"].number_value == int(latent) and hp["loss.beta"].number_value == float(beta)
        assert hp["trainer.progress"].string_value == "false"  # not 0.0, as torch's hparams() stores a bool
        assert hp["model.hidden"].string_value == "[256]"  # model.size=small: the widths built, where the config names a size
        # the swept keys are marked as the ones the runs differ in: the dashboard shows those first
        exp = hparams_metadata.parse_experiment_plugin_data(acc.PluginTagToContent("hparams")["_hparams_/experiment"])
        assert {i.name for i in exp.hparam_infos if i.differs} == {"latent_size", "loss.beta"}
        # columns for the final val numbers, and the test numbers the evaluation writes into this run
        assert [m.name.tag for m in exp.metric_infos] == [
            "hparams/val_loss", "hparams/val_recon", "hparams/val_kl", "hparams/active_units",
            "test/nll_iwae", "test/bits_per_dim"]
        # text columns with a fixed set of values carry it: the dashboard's checkbox filter needs it
        domains = {i.name: [v.string_value for v in i.domain_discrete.values] for i in exp.hparam_infos
                   if i.HasField("domain_discrete")}
        assert domains["model.size"] == ["small", "base", "large"] and domains["optim.impl"][0] == "auto"
        assert domains["trainer.progress"] == ["false", "true"] and "data.root" not in domains
        metrics = json.loads((run / "metrics.json").read_text())
        for m in ("val_loss", "val_recon", "val_kl", "active_units"):
            [event] = acc.Scalars(f"hparams/{m}")
            assert event.value == pytest.approx(metrics[m], rel=1e-6)


def test_sweep_names_leave_out_fixed_overrides_and_an_unswept_seed():
    """What a job's folder is called: Hydra's override_dirname minus the exclude_keys that
    vaelab-train adds from the command line, with '/' made safe."""
    argv = ["-m", "latent_size=2,16", "data.root=/x/y", "trainer.epochs=2", "+foo=1", "hydra/launcher=joblib"]
    [override] = sweep_name_override(argv)
    assert override == "hydra.job.config.override_dirname.exclude_keys=['data.root','trainer.epochs','foo','seed']"
    assert sweep_name_override(["-m", "latent_size=2,16", "seed=0,1"]) == [
        "hydra.job.config.override_dirname.exclude_keys=[]"]  # a swept seed stays in the name
    assert sweep_name_override(["-m", "latent_size=2,16", "hydra.job.config.override_dirname.exclude_keys=[]"]) == []
    assert job_name("latent_size=16,model=mlp/big", 5) == "latent_size=16,model=mlp%2Fbig"
    assert job_name("data.root=/d/x", 0) != job_name("data.root=/d_x", 1)  # two values, two folders
    assert job_name("data.root=a%2Fb", 0) != job_name("data.root=a/b", 1)
    long = ",".join(f"key{i}=0.{i}123456789012345678" for i in range(20))  # Optuna's floats add up
    assert len(job_name(long, 0).encode()) <= 200 and job_name(long, 0) != job_name(long + "9", 0)
    assert job_name("", 5) == "job5"


def test_joblib_jobs_run_in_parallel_without_touching_each_others_files(sweep, tiny_mnist, tmp_path):
    par = vaelab_train(["-m", *SWEEP, f"data.root={tiny_mnist}", *TINY, "hydra/launcher=joblib",
                        "hydra.launcher.n_jobs=2", "trainer.final_eval=true", "trainer.final_eval_k=2",
                        "trainer.progress=true"], tmp_path,
                       bars=True)
    assert set(runs(par)) == NAMES  # the names travel in each job's config; workers import the resolver
    # Two workers share the terminal: each epoch line names its job, and no per-step or IWAE bar
    # redraws a line the other is writing (they wrote over each other and into the epoch lines).
    out = (tmp_path / "vaelab-train.out").read_text()
    assert "img/s]" not in out, out[-2000:]
    for name in NAMES:
        assert all(f"][vaelab][INFO] - {name} {what}" in out for what in ("epoch 1/", "metrics: ", "eval (last.pt"))
    for name, run in runs(par).items():
        assert len(list(run.glob("events.out.tfevents.*"))) == 3  # the run's events, its HParams row, its eval's
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()  # the HParams row's test columns: scalars of the row's own run (folder)
        assert {"test/nll_iwae", "test/bits_per_dim"} <= set(acc.Tags()["scalars"])
        log = (run / "train.log").read_text()
        assert f"run directory: {run}" in log and log.count("run directory:") == 1
        # Same numbers as the sequential sweep: no job read or wrote another job's files.
        a, b = (json.loads((d / "metrics.json").read_text()) for d in (run, runs(sweep)[name]))
        assert a["torch_threads"] == b["torch_threads"] == 1
        assert {k: v for k, v in a.items() if not is_timing(k)} == {k: v for k, v in b.items() if not is_timing(k)}


def test_optuna_search_minimises_the_val_loss(tiny_mnist, tmp_path, capsys):
    # (TINY's model.size=small would fix one of the searched keys)
    sweep = vaelab_train(["hparams_search=optuna", "hydra.sweeper.n_trials=2", f"data.root={tiny_mnist}",
                          *[o for o in TINY if not o.startswith("model.size=")],
                          "trainer.epochs=1"], tmp_path)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = {name: json.loads((run / "metrics.json").read_text())["val_loss"] for name, run in runs(sweep).items()}
    assert len(trials) == 2  # each named by its sampled values, sorted by key
    assert all([kv.split("=")[0] for kv in n.split(",")] == ["latent_size", "model.size", "optim.lr"] for n in trials)
    assert result["best_value"] == min(trials.values())  # the task function returned the val loss
    # A study is not launched again (its sweeper would draw new trials); it writes no multirun.yaml.
    capsys.readouterr()
    assert vaelab(["resume", str(sweep)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vaelab resume: error: {sweep}: its jobs were drawn by OptunaSweeper, which would draw new ones; "
        f"carry a stopped trial on with vaelab resume {sweep / 'TRIAL'}")


def test_compare_finds_runs_through_links(sweep, tmp_path, capsys):
    """Review: a folder of links to one's chosen runs listed none ("no runs under fav")."""
    fav = tmp_path / "fav"
    fav.mkdir()
    for name in ("latent_size=2,loss.beta=1", "latent_size=4,loss.beta=4"):
        (fav / name.replace(",", "_")).symlink_to(sweep / name)
    (fav / "loop").symlink_to(fav)  # (a link to no run nor sweep, here to a folder above: not followed)
    shutil.copytree(sweep / "latent_size=2,loss.beta=4", tmp_path / "other")  # (review: listed, through "up")
    (fav / "up").symlink_to(tmp_path)
    study = tmp_path / "study"  # (an Optuna study's folder: runs right below it, no multirun.yaml; review)
    shutil.copytree(sweep / "latent_size=4,loss.beta=1", study / "0")
    (fav / "study").symlink_to(study)
    assert vaelab(["compare", fav]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = sorted(r.split()[0].rsplit("/", 1)[-1] for r in out[2:] if r and not r.startswith(("loss.", "note")))
    assert rows == ["0", "latent_size=2,loss.beta=1", "latent_size=4,loss.beta=4"], out  # (not "other")


def test_compare_says_which_sweeps_have_jobs_that_never_started(sweep, tmp_path, capsys):
    """A sweep stopped before all its jobs began listed only those that had: the table read as
    the whole sweep."""
    from vaelab.compare import sweep_jobs

    assert sweep_jobs(sweep) == 4
    assert vaelab(["compare", sweep]) == 0
    assert "note:" not in capsys.readouterr().out
    copy = tmp_path / "stopped"
    shutil.copytree(sweep, copy)
    shutil.rmtree(copy / "latent_size=4,loss.beta=4")
    shutil.rmtree(copy / "latent_size=4,loss.beta=1")
    assert vaelab(["compare", tmp_path]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"note: {copy}: 2 of the sweep's 4 jobs started; the other 2 did not run (vaelab resume {copy} runs them)")
    # while the sweep still runs, its jobs to come are no advice to resume it (which is refused then: review)
    from vaelab import checkpoint as ckpt_io

    holder = subprocess.Popen([sys.executable, "-c", "import sys; from vaelab import checkpoint as c; "
                               f"c.hold_sweep({str(copy)!r}); print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held" and ckpt_io.sweep_running(copy)
        assert vaelab(["compare", tmp_path]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"note: {copy}: 2 of the sweep's 4 jobs started so far; the sweep is still running")
    finally:
        holder.communicate("", timeout=60)
    # a sweep run into its folder: its jobs are not the outer one's
    shutil.copytree(sweep, copy / "inner")
    assert vaelab(["compare", copy]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"note: {copy}: 2 of the sweep's 4 jobs started; the other 2 did not run (vaelab resume {copy} runs them)")
    # a value given twice is one job (one folder); a range is counted, not listed; a sweeper that draws
    # its jobs (Optuna) launches no fixed number
    text = (copy / "multirun.yaml").read_text()
    (copy / "multirun.yaml").write_text(text.replace("latent_size=2,4", "latent_size=2,4,2"))
    assert sweep_jobs(copy) == 4
    (copy / "multirun.yaml").write_text(text.replace("latent_size=2,4", "latent_size=range(1,1000001)"))
    assert sweep_jobs(copy) == 2 * 10**6
    (copy / "multirun.yaml").write_text(text.replace("hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                                                     "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"))
    assert sweep_jobs(copy) is None


def test_compare_prints_the_sweep_sorted_and_plots_it(sweep, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert vaelab(["compare", sweep, "--sort", "val_loss", "--plot", "val_loss", "--out", out]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header[:3] == ["run", "latent_size", "loss.beta"] and "val_loss" in header
    rows = [ln.split() for ln in lines[2:6]]
    assert {r[0] for r in rows} == NAMES
    col = header.index("val_loss")
    losses = [float(r[col]) for r in rows]
    assert losses == sorted(losses)
    expected = {n: json.loads((d / "metrics.json").read_text())["val_loss"] for n, d in runs(sweep).items()}
    assert [r[0] for r in rows] == sorted(expected, key=expected.get)
    # the sweep's runs are mse: the table says which of its numbers carry the Gaussian's constant
    assert lines[6] == ("loss.recon=mse runs: train_loss, val_loss, val_recon leave out the Gaussian decoder's "
                        "constant (add 448.73 nats for MNIST's 784 pixels)")
    assert lines[7].startswith(f"wrote {out}")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert vaelab(["compare", sweep, "--sort", "active_units", "--desc"]) == 0
    capsys.readouterr()
    assert vaelab(["compare", sweep, "--plot", "val_loss", "--out", tmp_path / "no_extension"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {tmp_path / 'no_extension.png'}"
    # a Ctrl-C part-way through a plot over an earlier one leaves that one whole
    from matplotlib.figure import Figure

    def half_then_ctrl_c(self, f, *args, **kwargs):
        with (open(f, "wb") if isinstance(f, (str, os.PathLike)) else contextlib.nullcontext(f)) as out_file:
            out_file.write(b"\x89PNG half")
        raise KeyboardInterrupt
    plotted = out.read_bytes()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", half_then_ctrl_c)
        assert vaelab(["compare", sweep, "--plot", "val_loss", "--out", out]) == 130
    assert out.read_bytes() == plotted and sorted(p.name for p in tmp_path.iterdir()) == ["curves.png",
                                                                                           "no_extension.png"]
    # a format whose tool is missing (.pgf without xelatex) was a traceback
    def no_tex(self, f, *args, **kwargs):
        raise RuntimeError("'xelatex' not found")
    # the default curves.png a link into a run: replaced, not written through, so not refused
    (tmp_path / "here").mkdir()
    last = next(iter(runs(sweep).values())) / "checkpoints" / "last.pt"
    kept = last.read_bytes()
    (tmp_path / "here" / "curves.png").symlink_to(last)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path / "here")
        assert vaelab(["compare", sweep, "--plot", "val_loss"]) == 0
    assert not (tmp_path / "here" / "curves.png").is_symlink() and last.read_bytes() == kept
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", no_tex)
        assert vaelab(["compare", sweep, "--plot", "val_loss", "--out", tmp_path / "c.pgf"]) == 2
    assert capsys.readouterr().err == (f"vaelab compare: error: --out {tmp_path / 'c.pgf'}: cannot write it: "
                                       f"'xelatex' not found\n")


@pytest.mark.parametrize("args,expect", [
    (["--sort", "val_los"], "--sort val_los: no run has that metric or setting (did you mean val_loss?); metrics: "
                            "active_units, best_val_loss"),
    (["--plot", "nope"], "--plot nope: no run has that scalar; available: epoch/active_units"),
    (["--plot", "val_loss", "--out", "new/curves.xyz"], "--out new/curves.xyz: unknown image format 'xyz'; allowed: "),
    (["--plot", "val_loss", "--out", "/proc/curves.png"], "--out /proc/curves.png: cannot make folders in /proc"),
    (["--out", "c.png"], "--out c.png: give --plot SCALAR too"),
    (["--desc"], "--desc: give --sort METRIC too"),
    (["--plot", "val_loss", "--out", "metrics.json/c.png"], "--out metrics.json/c.png: "),
    (["--plot", "val_loss", "--out", "."], "--out .: is a directory; give a file name such as curves.png"),
    (["--plot", "val_loss", "--out", "new/.png"], "--out new/.png: no file name before '.png'; give one such as "
                                                  "new/curves.png"),
], ids=["unknown-metric", "unknown-scalar", "unknown-format", "unwritable", "out-without-plot", "desc-without-sort",
        "file-in-path", "directory", "extension-only"])
def test_compare_bad_input_is_one_line(sweep, capsys, args, expect, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics.json").write_text("{}")
    assert vaelab(["compare", sweep, *args]) == 2
    out, err = capsys.readouterr()
    err = err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"vaelab compare: error: {expect}"), err
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # before any work


def test_compare_out_ending_in_a_dot_gets_png(sweep, tmp_path, capsys):
    assert vaelab(["compare", sweep, "--plot", "val_loss", "--out", tmp_path / "sub" / "dot."]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {tmp_path / 'sub' / 'dot.png'}"


def test_compare_says_where_test_numbers_from_a_later_eval_come_from(sweep, tmp_path, capsys):
    names = ("latent_size=2,loss.beta=1", "latent_size=2,loss.beta=4", "latent_size=4,loss.beta=1")
    for name in names:
        shutil.copytree(sweep / name, tmp_path / name)
        config = tmp_path / name / ".hydra" / "config.yaml"
        saved = yaml.safe_load(config.read_text())
        saved["trainer"]["final_eval"] = name != names[2]  # the sweep's runs had none
        config.write_text(yaml.safe_dump(saved))
    k, epochs = saved["trainer"]["final_eval_k"], saved["trainer"]["epochs"]
    own = {"checkpoint": "x/checkpoints/last.pt", "k": k, "seed": 0, "epoch": epochs, "nll_iwae": 90.0}
    (tmp_path / names[0] / "eval.json").write_text(json.dumps(own))  # what the run's own final evaluation makes
    (tmp_path / names[1] / "eval.json").write_text(json.dumps(
        {"checkpoint": "x/checkpoints/epoch_0001.pt", "k": 5, "seed": 0, "nll_iwae": 95.0}))
    (tmp_path / names[2] / "eval.json").write_text(json.dumps(own))  # by hand: the run had no final evaluation
    assert vaelab(["compare", tmp_path]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[-2:] == ["test_from", "state"]
    assert re.search(r" 90\.000\s+-\s+done$", rows[2]), rows[2]  # its own final evaluation: nothing to say
    assert re.search(r" 95\.000\s+checkpoint=epoch_0001\.pt, k=5, seed=0\s+done$", rows[3]), rows[3]
    assert re.search(rf" 90\.000\s+checkpoint=last\.pt, k={k}, seed=0, epoch={epochs}\s+done$", rows[4]), rows[4]
    assert rows[5].endswith("(add 448.73 nats for MNIST's 784 pixels); test_nll_iwae includes it")


def test_compare_footnote_names_only_the_columns_the_gaussian_constant_is_in(tmp_path):
    from vaelab.compare import Run, _units_note

    runs = [Run(tmp_path, "a", {"loss.recon": "mse"})]
    [note] = _units_note(runs, ["train_loss", "val_loss", "val_kl", "test_kl", "test_nll_iwae", "test_epoch",
                                "test_kl_bits_per_dim", "test_bits_per_dim", "test_from"])
    assert note.startswith("loss.recon=mse runs: train_loss, val_loss leave out")
    assert note.endswith("; test_nll_iwae, test_bits_per_dim include it")
    assert _units_note([Run(tmp_path, "a", {"loss.recon": "bce"})], ["val_loss"]) == []
    # bce and mse runs in one table: their likelihood columns are of two likelihoods (review: one sorted column)
    both = [*runs, Run(tmp_path, "b", {"loss.recon": "bce"})]
    assert _units_note(both, ["val_loss", "test_kl", "test_nll_iwae"])[1] == (
        "val_loss, test_nll_iwae of loss.recon=bce and loss.recon=mse runs are of two likelihoods (a Bernoulli "
        "cross-entropy of the pixels; a Gaussian density of grey levels): compare runs of one kind")
    assert len(_units_note(both, ["val_kl", "test_kl"])) == 0


def test_a_trial_that_draws_a_diverged_runs_values_is_not_trained_again(tmp_path, monkeypatch, caplog):
    """An Optuna trial that drew the values of a run that diverged trained it again, to the same
    blow-up, at each such draw (review); the README says such a trial reports that run's result.
    A job of other values that meets the folder (a hydra.sweep.subdir of one's own) trains, as
    does one that meets a stopped.json from before the run's settings were kept in it."""
    import logging

    import vaelab.train as train_mod
    from vaelab.checkpoint import STOPPED
    from vaelab.config import to_plain

    run = tmp_path / "latent_size=4,optim.lr=1e8"
    (run / ".hydra").mkdir(parents=True)
    cfg = compose_cfg(["latent_size=4", "optim.lr=1e8"])
    monkeypatch.setattr(train_mod, "another_jobs_run", lambda cfg, run_dir: None)  # (no checkpoint to tell by)
    trained = []
    monkeypatch.setattr(train_mod, "train", lambda cfg, run_dir: trained.append(run_dir) or {"val_loss": 1.0})

    def stopped(config):
        (run / STOPPED).write_text(json.dumps({"state": "diverged", "reason": "non-finite loss inf in steps 1-2",
                                               **({"config": config} if config else {})}))
    stopped(to_plain(cfg))
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        assert train_mod._train_sweep_job(cfg, run, prepare=lambda: None) == {"val_loss": float("inf")}
    assert not trained
    assert "latent_size=4,optim.lr=1e8 diverged earlier with these values: reported as it was (+inf), not trained " \
           "again" in caplog.text
    stopped(to_plain(compose_cfg(["latent_size=4", "optim.lr=1e8", "loss.beta=2"])))
    assert train_mod._train_sweep_job(cfg, run, prepare=lambda: None) == {"val_loss": 1.0} and trained == [run]
    stopped(None)
    assert train_mod._train_sweep_job(cfg, run, prepare=lambda: None) == {"val_loss": 1.0} and len(trained) == 2


def test_compare_lists_a_sweeps_runs_in_the_order_of_their_values(tmp_path):
    from vaelab.compare import find_runs

    names = ["latent_size=16", "latent_size=2", "latent_size=4,loss.beta=0.5", "latent_size=4,loss.beta=1e-05",
             "latent_size=4,loss.beta=4", "latent_size=4,loss.beta=-1"]
    for name in names:
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text("{}")
    assert [r.name for r in find_runs([tmp_path])] == ["latent_size=2", "latent_size=4,loss.beta=-1",
                                                       "latent_size=4,loss.beta=1e-05",
                                                       "latent_size=4,loss.beta=0.5", "latent_size=4,loss.beta=4",
                                                       "latent_size=16"]


@pytest.mark.parametrize("text", ["latent_size: [\n", "- a\n"])
def test_compare_reads_the_other_runs_when_one_config_is_damaged(tmp_path, capsys, text):
    """A YAML error (or a list) in one run's saved config was a traceback and no table at all."""
    from vaelab.compare import find_runs

    for name, body in (("good", "latent_size: 4\n"), ("bad", text)):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(body)
    runs = {r.name: r for r in find_runs([tmp_path])}
    assert runs["good"].config == {"latent_size": "4"} and runs["bad"].config == {}
    [warning] = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith(f"vaelab compare: warning: {tmp_path / 'bad' / '.hydra' / 'config.yaml'} cannot be "
                              f"read (") and warning.endswith("its run's settings are left out")
    assert vaelab(["compare", tmp_path]) == 0


def test_compare_plot_takes_a_scalar_by_its_name_in_the_table(tmp_path):
    """The table's columns name val_loss and test_nll_iwae; their curves are epoch/val_loss and
    test/nll_iwae (one point per evaluation). test_nll_iwae was refused."""
    from torch.utils.tensorboard import SummaryWriter

    from vaelab.compare import curves, find_runs

    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("latent_size: 4\n")
    with SummaryWriter(str(tmp_path / "run")) as w:
        w.add_scalar("epoch/val_loss", 2.0, 100)
        w.add_scalar("test/nll_iwae", 90.5, 100)
    runs = find_runs([tmp_path])
    for name, full, value in (("val_loss", "epoch/val_loss", 2.0), ("test_nll_iwae", "test/nll_iwae", 90.5)):
        [(_, tag, points)] = curves(runs, name)
        assert tag == full and [(x, v) for x, v in points] == [(100, value)]
    # a run that logged no events (logger.tensorboard=false): its test point from eval.json, as the table
    # shows it (review: "no run has that scalar"); a number that is not finite is left out
    for f in (tmp_path / "run").glob("events.out.tfevents.*"):
        f.unlink()
    (tmp_path / "run" / "eval.json").write_text(json.dumps({"examples_seen": 300, "nll_iwae": 88.25, "kl": None,
                                                           "elbo": float("nan"), "active_units": 3}))
    runs = find_runs([tmp_path])
    [(_, tag, points)] = curves(runs, "test_nll_iwae")
    assert tag == "test/nll_iwae" and points == [(300, 88.25)]
    assert {t for t in runs[0].scalars() if t.startswith("test/")} == {"test/nll_iwae", "test/active_units"}


def test_compare_plot_of_one_point_per_run_draws_a_dot_per_run_named_on_its_axis(tmp_path, monkeypatch):
    """test/nll_iwae is logged once, by the final evaluation: over examples seen, a sweep's runs
    stood in one column of points told apart by colour only."""
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    from vaelab.compare import find_runs, plot

    for latent, nll, seen in ((2, 120.5, 1000), (16, 95.25, 1000), (64, 90.0, 1000), (8, 99.0, 500)):
        (tmp_path / str(latent) / ".hydra").mkdir(parents=True)
        (tmp_path / str(latent) / ".hydra" / "config.yaml").write_text(f"latent_size: {latent}\n")
        with SummaryWriter(str(tmp_path / str(latent))) as w:
            w.add_scalar("epoch/val_loss", nll + 10, seen // 2)
            w.add_scalar("epoch/val_loss", nll + 5, seen)
            w.add_scalar("test/nll_iwae", nll, seen)
    figs, close = [], plt.close
    monkeypatch.setattr(plt, "close", figs.append)
    runs = [r for r in find_runs([tmp_path]) if r.name != "8"]
    plot(runs, "test_nll_iwae", tmp_path / "nll.png")
    ax = figs[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["latent_size=2", "latent_size=16", "latent_size=64"]
    [dots] = ax.get_lines()
    assert list(dots.get_xdata()) == [0, 1, 2] and list(dots.get_ydata()) == [120.5, 95.25, 90.0]
    assert ax.get_xlabel() == "run (each at 1,000 examples seen)" and ax.get_legend() is None
    assert ax.get_ylabel() == "test/nll_iwae (nats per example)"
    plot(find_runs([tmp_path]), "test_nll_iwae", tmp_path / "nll.png")  # (a run of another length: each says where)
    assert "latent_size=8\n(at 500)" in [t.get_text() for t in figs[1].axes[0].get_xticklabels()]
    plot(runs, "val_loss", tmp_path / "val.png")  # (curves of more points stay curves over examples seen)
    assert len(figs[2].axes[0].get_lines()) == 3 and figs[2].axes[0].get_xlabel() == "examples seen"
    for fig in figs:
        close(fig)


def test_compare_plot_names_its_unit_and_tells_runs_with_the_same_settings_apart(tmp_path, monkeypatch):
    """The axis said only 'epoch/val_loss'; mse runs (Gaussian constant left out) shared it with
    bce runs unremarked; and a run next to its reproduction made every curve a folder name."""
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    from vaelab.compare import find_runs, plot

    for name, recon in (("a", "mse"), ("a_again", "mse"), ("b", "bce")):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(f"loss:\n  recon: {recon}\n")
        with SummaryWriter(str(tmp_path / name)) as w:
            w.add_scalar("epoch/val_loss", 45.0, 50)
            w.add_scalar("epoch/val_loss", 40.0, 100)
            w.add_scalar("test/bits_per_dim", 0.9, 100)
    figs, close = [], plt.close
    monkeypatch.setattr(plt, "close", figs.append)  # plot() closes its figure: keep it to read
    runs = find_runs([tmp_path])
    plot(runs, "val_loss", tmp_path / "val.png")
    plot(runs, "test_bits_per_dim", tmp_path / "bpd.png")
    (ax,), (ax_bpd,) = figs[0].axes[:1], figs[1].axes[:1]
    assert ax.get_ylabel() == "epoch/val_loss (nats per example)"
    differ = ("these curves do not compare: the runs differ in loss.recon (a Gaussian density of the images against a "
              "Bernoulli probability of their pixels)")
    assert ax.get_title(loc="center").startswith(f"{differ}\nloss.recon=mse runs leave out the Gaussian decoder's "
                                                 f"constant")
    # (the same points twice: the later curve dashed over the first, and its label says so; it hid the first)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "loss.recon=mse (a)", "loss.recon=mse (a_again), the same points as loss.recon=mse (a)",
        "loss.recon=bce (b), the same points as loss.recon=mse (a)"]
    assert [line.get_linestyle() for line in ax.get_lines()] == ["-", "--", "--"]
    # (each copy in a slot of its own: the third's dashes on the second's hid it too, review)
    assert [line._unscaled_dash_pattern for line in ax.get_lines()[1:]] == [(0, (4, 8)), (4, (4, 8))]
    assert ax_bpd.get_ylabel() == "test/bits_per_dim (bits per dimension)"
    assert ax_bpd.get_title() == differ.replace("these curves", "these points")  # (one dot a run)
    for fig in figs:
        close(fig)


def test_compare_plot_names_runs_by_folder_when_their_settings_would_not_fit(tmp_path, monkeypatch, capsys):
    """Runs of two sweeps differ in many settings: the legend of every one of them made a
    3668-pixel-wide strip. A run without the curve was left out of the plot without a word, and
    --out could replace one of a run's training pictures."""
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    for i, name in enumerate(("sweep_a/0", "sweep_b/0", "no_events")):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(
            "".join(f"setting_number_{j}: {i}\n" for j in range(6)))
        if name != "no_events":
            with SummaryWriter(str(tmp_path / name)) as w:
                w.add_scalar("epoch/val_loss", 45.0 + i, 50)
                w.add_scalar("epoch/val_loss", 40.0 + i, 100)
    figs, close = [], plt.close
    monkeypatch.setattr(plt, "close", figs.append)
    assert vaelab(["compare", tmp_path, "--plot", "val_loss", "--out", tmp_path / "val.png"]) == 0
    assert [t.get_text() for t in figs[0].axes[0].get_legend().get_texts()] == ["sweep_a/0", "sweep_b/0"]
    close(figs[0])
    assert capsys.readouterr().err.strip() == (
        "vaelab compare: note: no val_loss curve for 1 of the 3 runs, left out of the plot: no_events")
    (tmp_path / "sweep_a" / "0" / "samples").mkdir()
    inside = tmp_path / "sweep_a" / "0" / "samples" / "recon_epoch0002.png"
    assert vaelab(["compare", tmp_path, "--plot", "val_loss", "--out", inside]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vaelab compare: error: --out {inside}: inside samples/ of the run {tmp_path / 'sweep_a' / '0'}, which "
        f"holds what its training and evaluation wrote; give --out a file outside it, e.g. "
        f"{tmp_path / 'sweep_a' / 'curves.png'}")
    assert not inside.exists()
    assert vaelab(["compare", tmp_path, "--plot", "val_loss", "--out", tmp_path / "sweep_a" / "0" / "v.png"]) == 0
    # RUN/samples/.. is the run's own folder, not inside samples/; a link into samples/ is inside it
    up = tmp_path / "sweep_a" / "0" / "samples" / ".." / ".." / "up.png"
    assert vaelab(["compare", tmp_path, "--plot", "val_loss", "--out", up]) == 0 and up.is_file()
    (tmp_path / "link").symlink_to(tmp_path / "sweep_a" / "0" / "samples")
    assert vaelab(["compare", tmp_path, "--plot", "val_loss", "--out", tmp_path / "link" / "x.png"]) == 2
    capsys.readouterr()
    # the default curves.png, from inside a run's samples/: said as the default, not as a --out given
    monkeypatch.chdir(tmp_path / "sweep_a" / "0" / "samples")
    assert vaelab(["compare", tmp_path, "--plot", "val_loss"]) == 2
    assert capsys.readouterr().err.strip().startswith(
        "vaelab compare: error: the plot's default file, curves.png in the current folder, is inside samples/ of the "
        "run")


def test_compare_into_a_pipe_closed_early_ends_quietly(tmp_path):
    """`vaelab compare DIR | head -1` ended in a BrokenPipeError traceback."""
    for name, value in (("a", "x" * 100_000), ("b", "y")):  # one row longer than a pipe's buffer
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(f"name: {value}\n")
    p = subprocess.Popen([sys.executable, "-m", "vaelab.cli", "compare", str(tmp_path)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    assert p.stdout.read(10).startswith(b"run")
    p.stdout.close()  # as head does once it has its line
    assert p.wait(timeout=60) == 0
    assert p.stderr.read() == b""


@pytest.mark.parametrize("flag", ["--help", "--cfg", "--info"])
def test_vaelab_train_help_into_a_pipe_closed_early_ends_quietly(flag):
    """`vaelab-train --help | head -3` ended in a BrokenPipeError traceback and exit 1 when head
    had gone before Hydra's help was written (1 run in 4 here); `--cfg job` too, and `--info`
    with thousands of lines of logging errors. Nothing runs with these: they now end as Unix tools
    do (SIGPIPE). The reader closes first here."""
    read, write = os.pipe()
    os.close(read)
    try:
        p = subprocess.run([sys.executable, "-c", "from vaelab.train_cli import main; main()", flag,
                            *(["job"] if flag == "--cfg" else [])], stdout=write, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write)
    assert (p.returncode, p.stderr) == (-signal.SIGPIPE, b"")


def test_a_training_whose_console_reader_has_gone_trains_on_quietly(tiny_mnist, tmp_path):
    """`vaelab-train ... | head -1`: the run trained on and kept every line in train.log, but each
    console line after the reader had gone printed a 'Logging error' traceback to stderr
    (hundreds a run). The reader closes first here."""
    read, write = os.pipe()
    os.close(read)
    try:
        p = subprocess.run([sys.executable, "-c", "from vaelab.train_cli import main; main()", f"data.root={tiny_mnist}",
                            *TINY, "latent_size=4", "trainer.epochs=2", "hydra.run.dir=run"], cwd=tmp_path,
                           stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    assert p.returncode == 0 and "Logging error" not in p.stderr, p.stderr[-2000:]
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert "epoch 2/2" in (tmp_path / "run" / "train.log").read_text()


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(monkeypatch, capfd):
    """Only stdout's reader going away ends a command quietly, not any BrokenPipeError."""
    from vaelab import compare
    from vaelab.cli import main

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")  # a worker's pipe, say: stdout is still read
    monkeypatch.setattr(compare, "compare_command", broken)
    with pytest.raises(BrokenPipeError):
        main(["compare", "."])


def test_compare_plots_the_epoch_points_of_a_run_without_tensorboard(make_cfg, tmp_path, capsys, monkeypatch):
    from vaelab import compare
    from vaelab.train import train

    train(make_cfg(["latent_size=2", "model.size=small", "trainer.final_eval=false", "logger.tensorboard=false"]),
          tmp_path / "run")
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))
    plotted = []
    monkeypatch.setattr(compare, "curves", lambda runs, tag, real=compare.curves: plotted.append(
        real(runs, tag)) or plotted[-1])
    assert vaelab(["compare", tmp_path, "--plot", "val_kl", "--out", tmp_path / "kl.png"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()]
    [(_, tag, points)] = plotted[-1]
    assert tag == "epoch/val_kl" and points == [(e["examples_seen"], e["val_kl"]) for e in lines]
    assert (tmp_path / "kl.png").stat().st_size > 0
    # lines edited by hand are left out, not the file, nor the command (review: Infinity, NaN, a byte that is
    # no UTF-8 ended it with a traceback, or dropped every line)
    with open(tmp_path / "run" / "epochs.jsonl", "ab") as f:
        f.write(b'\xff\n{"epoch": 3, "examples_seen": Infinity, "val_kl": 1}\n'
                b'{"epoch": 3, "examples_seen": 999, "val_kl": NaN, "active_units": NaN}\n')
    (tmp_path / "run" / "metrics.json").unlink()  # (its table's numbers: the last epoch points)
    assert vaelab(["compare", tmp_path, "--plot", "val_kl", "--out", tmp_path / "kl.png"]) == 0
    assert plotted[-1][0][2] == points


def test_compare_plot_of_runs_whose_losses_do_not_compare_says_so(tmp_path, capsys, monkeypatch):
    """Review: bce and mse runs' val_loss on one axis, with only the note on the constant, read as the
    mse run being the best; the table's note for --sort was not given for --plot."""
    for name, recon, loss in (("a", "bce", 120.0), ("b", "mse", 30.0)):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(f"loss:\n  recon: {recon}\n")
        (tmp_path / name / "epochs.jsonl").write_text(json.dumps(
            {"epoch": 1, "examples_seen": 100, "val_loss": loss, "val_kl": 5.0}) + "\n")
    titles = []
    import matplotlib.axes

    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, t, **kw: titles.append(t))
    assert vaelab(["compare", tmp_path, "--plot", "val_loss", "--out", tmp_path / "c.png"]) == 0
    why = ("the runs differ in loss.recon (a Gaussian density of the images against a Bernoulli probability of their "
           "pixels)")
    # (one point a run: dots, not curves)
    assert f"note: --plot val_loss draws points that do not compare: {why}" in capsys.readouterr().out
    assert titles[-1].startswith(f"these points do not compare: {why}\nloss.recon=mse runs leave out")
    assert vaelab(["compare", tmp_path, "--plot", "val_kl", "--out", tmp_path / "c.png"]) == 0  # (the KL compares)
    assert "do not compare" not in capsys.readouterr().out


def test_compare_says_train_losses_of_other_betas_do_not_compare(tmp_path, capsys):
    """Review: --sort train_loss ranked recon + 0.5 KL against recon + 4 KL without a word."""
    for name, beta in (("a", 0.5), ("b", 4.0)):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(f"loss:\n  recon: bce\n  beta: {beta}\n")
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"train_loss": 30 * beta, "val_loss": 40.0, "val_split": "val", "active_units": 3}))
    note = ("the runs differ in loss.beta or loss.kl_warmup_steps (a train loss is recon + beta x KL; val_loss is "
            "recon + KL)")
    assert vaelab(["compare", tmp_path, "--sort", "train_loss"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"note: --sort train_loss orders numbers that do not compare: {note}")
    for metric in ("val_loss", "active_units"):
        assert vaelab(["compare", tmp_path, "--sort", metric]) == 0
        assert "do not compare" not in capsys.readouterr().out


def test_compare_says_iwae_bounds_of_other_k_do_not_compare(tmp_path, capsys):
    """Review: --plot test_nll_iwae set a k=50 bound (tighter, lower) beside k=4 ones as if the run
    were better; the table said it only in its test_from column."""
    for name, k, nll in (("a", 4, 120.0), ("b", 50, 110.0), ("c", 4, 118.0)):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text("loss:\n  recon: bce\n")
        (tmp_path / name / "metrics.json").write_text(json.dumps({"val_loss": 40.0, "val_split": "val"}))
        (tmp_path / name / "eval.json").write_text(json.dumps(
            {"k": k, "nll_iwae": nll, "bits_per_dim": nll / 784 / 0.693, "elbo": -nll - 5}))
    note = "the runs were evaluated with different k (importance samples: a larger k gives a tighter, lower IWAE bound)"
    for metric in ("test_nll_iwae", "test_bits_per_dim"):
        assert vaelab(["compare", tmp_path, "--sort", metric]) == 0
        assert capsys.readouterr().out.splitlines()[-1] == (
            f"note: --sort {metric} orders numbers that do not compare: {note}")
    assert vaelab(["compare", tmp_path, "--sort", "test_elbo"]) == 0  # (the ELBO is k's own: one draw each)
    assert "do not compare" not in capsys.readouterr().out
    (tmp_path / "b" / "eval.json").write_text(json.dumps({"k": 4, "nll_iwae": 110.0}))
    assert vaelab(["compare", tmp_path, "--sort", "test_nll_iwae"]) == 0
    assert "do not compare" not in capsys.readouterr().out


def test_compare_plot_of_runs_without_event_files_says_so(tmp_path, capsys):
    (tmp_path / "run" / ".hydra").mkdir(parents=True)  # as logger.tensorboard=false leaves a run
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("latent_size: 4\n")
    assert vaelab(["compare", tmp_path, "--plot", "val_loss"]) == 2
    assert capsys.readouterr().err.strip() == ("vaelab compare: error: --plot val_loss: these runs have no TensorBoard "
                                               "scalars to plot (no event files; logger.tensorboard=false leaves none)")
    from torch.utils.tensorboard import SummaryWriter  # a run that diverged before its first point

    SummaryWriter(str(tmp_path / "run")).close()
    assert vaelab(["compare", tmp_path, "--plot", "val_loss"]) == 2
    assert capsys.readouterr().err.strip().endswith("to plot (their event files hold none yet: a run that stopped "
                                                    "before its first point, e.g. one that diverged in its first steps)")


def test_a_sweep_job_whose_folder_holds_another_jobs_run_is_refused(tiny_mnist, tmp_path):
    """Two jobs whose folder names leave out the key they differ in (exclude_keys, a subdir of
    one's own) shared one folder: the second carried the first's run on as its own, and the
    folder's config and HParams row then said the second's values over the first's weights."""
    from omegaconf import OmegaConf

    from tests.conftest import compose_cfg
    from tests.test_workflow import TINY
    from vaelab.run_dirs import another_jobs_run
    from vaelab.train import train

    run = tmp_path / "latent_size=2"
    first = compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1", "optim.lr=0.001"])
    train(first, run)
    (run / ".hydra" / "overrides.yaml").write_text("- optim.lr=0.003\n- latent_size=2\n")  # as Hydra rewrote them
    (run / ".hydra" / "config.yaml").write_text("optim:\n  lr: 0.003\n")
    assert another_jobs_run(first, run) is None  # the same config: a job submitit requeued, back at its run
    second = compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1", "optim.lr=0.003"])
    msg = another_jobs_run(second, run)
    assert msg.startswith(f"{run} holds the run of another job of this sweep, which got the same folder name: they "
                          f"differ in optim.lr=0.003 (theirs 0.001), which the folder name leaves out")
    assert OmegaConf.load(run / ".hydra" / "config.yaml").optim.lr == 0.001  # put back from its checkpoint
    assert list(OmegaConf.load(run / ".hydra" / "overrides.yaml")) == ["optim.lr=0.001", "latent_size=2"]
    # one that diverged before its first checkpoint: told by the settings its stopped.json keeps (review: a job
    # of other values trained over it silently)
    import json

    from vaelab import checkpoint as ckpt_io
    from vaelab.config import to_plain

    shutil.rmtree(run / "checkpoints")
    (run / ckpt_io.STOPPED).write_text(json.dumps({"state": "diverged", "reason": "x", "config": to_plain(first)}))
    assert another_jobs_run(first, run) is None
    assert another_jobs_run(second, run).startswith(f"{run} holds the run of another job of this sweep")


def test_a_sweep_job_waits_for_a_duplicate_that_took_the_folder_after_it_looked(tiny_mnist, tmp_path, caplog):
    """Parallel Optuna trials that drew the same values: the first took the folder only once its
    data had loaded, after the second had found it free; the second then stopped with "another
    process is training this run now" (exit 2), which ended the whole study."""
    import fcntl
    import logging
    import threading

    from tests.conftest import compose_cfg
    from tests.test_workflow import TINY
    from vaelab.train import _train_sweep_job

    run = tmp_path / "latent_size=2"
    run.mkdir()
    cfg = compose_cfg([f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1", "trainer.final_eval=false"])
    taken, prepared = threading.Event(), []

    def other_job():  # the duplicate takes the folder for a moment, as train() does
        fd = os.open(run, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        taken.set()
        time.sleep(1.0)
        os.close(fd)

    def prepare():  # between this job's look and its start
        prepared.append(True)
        if len(prepared) == 1:
            threading.Thread(target=other_job).start()
            taken.wait()
    with caplog.at_level(logging.INFO, logger="vaelab"):
        metrics = _train_sweep_job(cfg, run, prepare)
    assert len(prepared) == 2 and metrics["epochs"] == 1
    assert f"another process is training {run} now: waiting for it to finish" in caplog.text


def test_a_job_a_resumed_sweep_starts_keeps_hydra_overrides_that_hold_interpolations(tmp_path):
    """A sweep begun from a saved config (--config-dir RUN/.hydra) carries
    ++hydra.run.dir=outputs/runs/${name}/...: its jobs that had not started failed on resume
    with an InterpolationKeyError, reading that override as a list item to resolve."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from vaelab.run_dirs import save_job_config
    from vaelab.workflow import SWEEP_CONTINUED

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        full = compose("config", overrides=["latent_size=2"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    given = ["++hydra.run.dir='outputs/runs/${name}/${now:%H}'", "hydra.output_subdir=null",
             f"++hydra.job.env_set.{SWEEP_CONTINUED}=1"]
    OmegaConf.update(full, "hydra.overrides.hydra", given, merge=False)
    HydraConfig.instance().set_config(full)
    try:
        save_job_config(OmegaConf.masked_copy(full, [k for k in full if k != "hydra"]), tmp_path)
    finally:
        HydraConfig.instance().cfg = None
    saved = OmegaConf.load(tmp_path / ".hydra" / "hydra.yaml")
    assert OmegaConf.to_container(saved.hydra.overrides.hydra, resolve=False) == [given[0]]  # vaelab's own dropped
    assert OmegaConf.load(tmp_path / ".hydra" / "config.yaml").latent_size == 2


def test_compare_without_runs_is_one_line(tmp_path, capsys):
    assert vaelab(["compare", tmp_path / "missing", tmp_path / "gone"]) == 2
    assert capsys.readouterr().err.strip() == f"vaelab compare: error: {tmp_path / 'missing'}: no such directory"
    # one folder of several missing is left out with a warning: the README's `compare outputs/multirun
    # outputs/runs` where only sweeps have run yet was an error, with the sweeps' table not shown
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    (tmp_path / "run" / ".hydra" / "config.yaml").write_text("latent_size: 2\n")
    assert vaelab(["compare", tmp_path / "run", tmp_path / "missing"]) == 0
    got = capsys.readouterr()
    assert got.err == f"vaelab compare: warning: {tmp_path / 'missing'}: no such directory; left out\n"
    assert got.out.splitlines()[2].startswith("run ")
    shutil.rmtree(tmp_path / "run")
    assert vaelab(["compare", tmp_path]) == 2
    assert "no runs under" in capsys.readouterr().err
    (tmp_path / "metrics.json").write_text("{}")
    assert vaelab(["compare", tmp_path / "metrics.json"]) == 2
    assert capsys.readouterr().err.strip() == (f"vaelab compare: error: {tmp_path / 'metrics.json'}: a file; give a "
                                               f"run's folder, or a folder of runs (outputs/multirun/...)")


@pytest.mark.parametrize("launcher,target", [
    ("joblib", "JoblibLauncher"), ("slurm", "SlurmLauncher"), ("submitit_local", "LocalLauncher")])
def test_launcher_configs_compose(launcher, target):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}", "hydra.launcher.timeout_min=30"]
                      if launcher != "joblib" else [f"hydra/launcher={launcher}"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        lc = cfg.hydra.launcher
        assert lc.timeout_min == 30 and lc.gpus_per_node == 1 and lc.partition is None
        assert lc.max_num_timeout > 0  # a timed-out job is requeued, then resumes from last.pt


def test_slurm_launcher_without_slurm_is_one_line(monkeypatch):
    """submitit raised 'Could not detect "srun"' in a 25-line traceback, after the sweep folder was made."""
    from vaelab.cli_errors import precheck
    monkeypatch.setenv("PATH", "/nonexistent")  # no srun, whatever this machine has
    for launcher in ("slurm", "submitit_slurm"):  # (named as given)
        assert precheck(["-m", f"hydra/launcher={launcher}", "latent_size=2,4"]) == (
            f"hydra/launcher={launcher}: SLURM's srun is not on PATH here; launch the sweep from a SLURM login node, "
            f"or run it on this machine with hydra/launcher=joblib or submitit_local")
    # showing the config needs no SLURM: a laptop can look at what a cluster would get
    assert precheck(["hydra/launcher=slurm", "latent_size=2", "--cfg", "hydra", "-p", "hydra.launcher"]) is None


def test_ray_launcher_on_a_local_instance(tiny_mnist, tmp_path, monkeypatch):
    """Runs only where hydra-ray-launcher is installed (pip install -e '.[ray]')."""
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    ray = vaelab_train(["-m", *SWEEP, f"data.root={tiny_mnist}", *TINY, "hydra/launcher=ray_local",
                        "hydra.launcher.ray.init.num_cpus=2"], tmp_path)
    assert set(runs(ray)) == NAMES
    assert all((r / "metrics.json").exists() for r in runs(ray).values())


@pytest.mark.skipif(not os.environ.get("VAELAB_SLOW_TESTS"), reason="about 25 s; set VAELAB_SLOW_TESTS=1")
def test_submitit_requeue_lands_in_the_same_folder_and_resumes(tiny_mnist, tmp_path):
    """What SLURM + submitit do to a preempted job, with the local executor: the requeued job
    runs the same pickled submission (the launcher's checkpoint() resubmits itself unchanged)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = vaelab_train(["-m", "latent_size=2,4", f"data.root={tiny_mnist}", *TINY, "trainer.checkpoint_every=1",
                          "hydra/launcher=submitit_local"], tmp_path)
    job = runs(sweep)["latent_size=4"]
    ckpts = job / "checkpoints"
    finished = ckpt_io.load(ckpts / "last.pt")
    # Roll the job back to "killed right after its epoch-1 checkpoint".
    (ckpts / "last.pt").write_bytes((ckpts / "epoch_0001.pt").read_bytes())
    (job / "metrics.json").unlink()
    [folder] = [d for d in (sweep / ".submitit").iterdir()
                if f"run directory: {job}" in "".join(f.read_text() for f in d.glob("*_log.out"))]
    env = {**os.environ, "TQDM_DISABLE": "1", "SUBMITIT_EXECUTOR": "local", "SUBMITIT_LOCAL_JOB_ID": folder.name,
           "SUBMITIT_LOCAL_NTASKS": "1", "SUBMITIT_LOCAL_GLOBALID": "0", "SUBMITIT_LOCAL_LOCALID": "0",
           "SUBMITIT_LOCAL_NODEID": "0", "SUBMITIT_LOCAL_JOB_NUM_NODES": "1"}  # nothing of vaelab's
    p = subprocess.run([sys.executable, "-m", "submitit.core._submit", str(folder)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert set(runs(sweep)) == {"latent_size=2", "latent_size=4"}  # same sweep folder, same job folder
    assert "resuming" in (job / "train.log").read_text()
    resumed = ckpt_io.load(ckpts / "last.pt")
    assert all(torch.equal(v, resumed["model"][k]) for k, v in finished["model"].items())


def test_a_diverged_trial_does_not_end_an_optuna_study(tiny_mnist, tmp_path):
    """A non-finite loss ends its own job with +inf (worst for a minimising sweeper); Optuna
    refuses nan, which ended the whole study before."""
    # (beta drawn from a range: two trials that drew the same values would be one run)
    sweep = vaelab_train(["hparams_search=optuna", "hydra.sweeper.n_trials=2", "optim.lr=choice(1e30)",
                          "loss.beta=interval(0.5,4.0)", f"data.root={tiny_mnist}", *TINY, "trainer.epochs=1"],
                         tmp_path, code=1)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == float("inf") and len(runs(sweep)) == 2
    assert all("non-finite loss" in (run / "train.log").read_text() for run in runs(sweep).values())
    # ... and the sweep says so at the end, with exit status 1, instead of passing for a success
    out = (tmp_path / "vaelab-train.out").read_text()
    assert "sweep of 2 jobs: 2 diverged" in out and "error: 2 of 2 jobs diverged (non-finite loss or weights)" in out
    assert "alembic" not in out  # the set-up lines of the database library Optuna imports
    for run in runs(sweep).values():  # listed in HParams with its config, its metrics blank
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        plugin = acc.PluginTagToContent("hparams")
        assert "_hparams_/session_start_info" in plugin
        assert not [t for t in acc.Tags()["scalars"] if t.startswith("hparams/")]
        end = hparams_metadata.parse_session_end_info_plugin_data(plugin["_hparams_/session_end_info"])
        assert end.status == api_pb2.STATUS_FAILURE  # the dashboard's status filter tells it from the rest


def test_sweep_summary_counts_this_sweeps_jobs_only(tmp_path, capsys):
    """The end-of-sweep line counts the run folders written since the sweep began (a reused
    hydra.sweep.dir keeps older ones) by how they ended; exit status 1 only if one diverged."""
    from omegaconf import OmegaConf

    from vaelab.checkpoint import STOPPED
    from vaelab.compare import SweepSummary

    def run(name, state=None, age=0.0):
        d = tmp_path / name
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "config.yaml").write_text("latent_size: 2\n")
        if state == "done":
            (d / "metrics.json").write_text('{"val_loss": 1.0, "val_split": "val"}')
        elif state:
            (d / STOPPED).write_text(json.dumps({"state": state, "reason": "x"}))
        t = time.time() - age
        os.utime(d / ".hydra" / "config.yaml", (t, t))

    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    summary = SweepSummary()
    summary.on_multirun_start(cfg)
    run("old_diverged", "diverged", age=3600)  # from an earlier sweep into the same folder
    run("a", "done")
    run("b", "done")
    summary.on_multirun_end(cfg)  # nothing diverged: returns
    assert f"sweep of 2 jobs: 2 done; lowest val_loss 1.0000: a; table: vaelab compare {tmp_path}" in (
        capsys.readouterr().out)
    # an Optuna study whose third trial drew the values of an earlier one, which carried that run on:
    # "sweep of 2 jobs" read as a trial lost
    summary.on_multirun_end(OmegaConf.merge(cfg, {"hydra": {"sweeper": {"n_trials": 3}}}))
    assert ("sweep of 3 trials in 2 runs (a trial that drew an earlier one's values carried its run on): 2 done; "
            "lowest val_loss 1.0000: a;") in capsys.readouterr().out
    # a job whose val_loss is in another unit (bce: no Gaussian constant left out): no best named
    run("e", "done")
    (tmp_path / "e" / ".hydra" / "config.yaml").write_text("latent_size: 2\nloss:\n  recon: bce\n")
    summary.on_multirun_end(cfg)
    assert ("sweep of 3 jobs: 3 done; no lowest val_loss named: the jobs differ in loss.recon (a Gaussian density "
            "of the images against a Bernoulli probability of their pixels), whose losses do not compare"
            ) in capsys.readouterr().out  # (nor is test_nll_iwae: not named there)
    # ... and compare --sort val_loss says so under its table (it ranked them without a word)
    assert vaelab(["compare", tmp_path, "--sort", "val_loss"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "note: --sort val_loss orders numbers that do not compare: the runs differ in loss.recon (a Gaussian "
        "density of the images against a Bernoulli probability of their pixels)")
    # grey levels against binarized images (bce both): other data, ranked without a word as well
    for name, binarize in (("a", "none"), ("b", "static"), ("e", "dynamic")):
        (tmp_path / name / ".hydra" / "config.yaml").write_text(f"latent_size: 2\nloss:\n  recon: bce\n"
                                                                f"data:\n  binarize: {binarize}\n")
    summary.on_multirun_end(cfg)
    assert ("no lowest val_loss named: the jobs differ in data.binarize (grey-level images against binarized ones: "
            "other data), whose losses do not compare") in capsys.readouterr().out
    assert vaelab(["compare", tmp_path, "--sort", "active_units"]) == 0  # (not a likelihood: no note)
    out = capsys.readouterr().out
    assert "do not compare" not in out
    # (these metrics.json have none: that is said, without a reason that is not theirs)
    assert out.splitlines()[-1] == "note: --sort active_units: no run has it; the table is in run order"
    assert vaelab(["compare", tmp_path, "--sort", "val_loss"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "note: --sort val_loss orders numbers that do not compare: the runs differ in data.binarize (grey-level "
        "images against binarized ones: other data)")
    (tmp_path / "a" / ".hydra" / "config.yaml").write_text("latent_size: 2\nloss:\n  recon: bce\ndata:\n"
                                                           "  binarize: dynamic\n")
    summary.on_multirun_end(cfg)  # static and dynamic: both binarized, both Bernoulli likelihoods
    assert "lowest val_loss 1.0000: a;" in capsys.readouterr().out
    for name in ("a", "b", "e"):
        (tmp_path / name / ".hydra" / "config.yaml").write_text("latent_size: 2\n")
    # the same settings, other images (data_digest: another data folder): not one quantity either
    for name, digest in (("a", "aaaa"), ("b", "bbbb"), ("e", "aaaa")):
        (tmp_path / name / "metrics.json").write_text(json.dumps({"val_loss": 1.0, "val_split": "val",
                                                                  "data_digest": digest}))
    summary.on_multirun_end(cfg)
    assert ("no lowest val_loss named: the jobs saw different images under the same data settings (their "
            "data_digest differs: another data folder), whose losses do not compare") in capsys.readouterr().out
    assert vaelab(["compare", tmp_path, "--sort", "val_loss"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "note: --sort val_loss orders numbers that do not compare: the runs saw different images under the same data "
        "settings (their data_digest differs: another data folder)")
    (tmp_path / "b" / ".hydra" / "config.yaml").write_text("latent_size: 2\ndata:\n  val_size: 100\n")
    summary.on_multirun_end(cfg)  # a digest that follows from another data.val_size: that is the split's own
    assert "lowest val_loss 1.0000: a;" in capsys.readouterr().out
    (tmp_path / "b" / ".hydra" / "config.yaml").write_text("latent_size: 2\n")
    for name in ("a", "b", "e"):
        (tmp_path / name / "metrics.json").write_text('{"val_loss": 1.0, "val_split": "val"}')
    assert vaelab(["compare", tmp_path, "--sort", "latent_size"]) == 0
    assert "note: --sort" not in capsys.readouterr().out
    # a run with no val_split (unfinished: its numbers come from its events) is not another split
    (tmp_path / "e" / ".hydra" / "config.yaml").write_text("latent_size: 2\n")
    (tmp_path / "e" / "metrics.json").unlink()
    from torch.utils.tensorboard import SummaryWriter
    with SummaryWriter(str(tmp_path / "e")) as w:
        w.add_scalar("epoch/val_loss", 2.0, 10)
    assert vaelab(["compare", tmp_path, "--sort", "val_loss"]) == 0
    assert "note: --sort" not in capsys.readouterr().out
    shutil.rmtree(tmp_path / "e")
    run("f", "done")  # data.val_size=0: val_loss on the test split
    (tmp_path / "f" / "metrics.json").write_text('{"val_loss": 0.5, "val_split": "test"}')
    summary.on_multirun_end(cfg)
    assert ("sweep of 3 jobs: 3 done; no lowest val_loss named: the jobs measure val_loss on different splits "
            "(data.val_size=0 uses the test split); compare test_nll_iwae in vaelab compare, once vaelab eval JOB has "
            "made it for the jobs without;") in capsys.readouterr().out  # (no eval.json here)
    assert vaelab(["compare", tmp_path, "--sort", "val_loss"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "note: --sort val_loss orders numbers that do not compare: the runs measure it on different splits "
        "(data.val_size=0 uses the test split)")
    shutil.rmtree(tmp_path / "f")
    run("c", "diverged")
    run("d", "interrupted")
    with pytest.raises(SystemExit) as exc:
        summary.on_multirun_end(cfg)
    assert exc.value.code == 1
    out, err = capsys.readouterr()
    assert "sweep of 4 jobs: 2 done, 1 diverged, 1 interrupted" in out
    assert err.strip() == "vaelab-train: error: 1 of 4 jobs diverged (non-finite loss or weights): c"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_sigterm_to_vaelab_train_reaches_its_busy_joblib_workers(tmp_path):
    """`kill PID` of a joblib sweep's vaelab-train ended it at once, and its workers trained on
    with no parent (a Ctrl-C reaches them through the terminal's process group). vaelab-train now
    passes SIGTERM on to the workers that are training (they hold a run folder open), waits for
    them to let go, then stops as for a Ctrl-C. An idle worker is left alone: a SIGTERM ended it,
    and joblib then ended the busy ones before they had saved. Here stand-in workers, named as
    loky names its workers, exit 7 on SIGTERM; another child is left alone."""
    from vaelab.errors import stop_signals_as_ctrl_c
    from vaelab.train_cli import LOKY_WORKER, _stop_workers, loky_workers

    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("latent_size: 2\n")
    code = ("import os, signal, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY) if sys.argv[1] else None; "
            "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7)); time.sleep(30)")
    busy = subprocess.Popen([sys.executable, "-c", code, str(run), LOKY_WORKER])
    idle = subprocess.Popen([sys.executable, "-c", code, "", LOKY_WORKER])
    other = subprocess.Popen([sys.executable, "-c", code, ""])
    try:
        deadline = time.time() + 20
        while sorted(loky_workers()) != sorted([busy.pid, idle.pid]):  # (once each has exec'd Python)
            assert time.time() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # their handlers installed
        with stop_signals_as_ctrl_c(first=_stop_workers), pytest.raises(KeyboardInterrupt):
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # what vaelab-train's SIGTERM runs
        assert busy.wait(10) == 7 and idle.poll() is None and other.poll() is None
    finally:
        for p in (busy, idle, other):
            p.kill()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("how", ["kill PID", "Ctrl-C to the group, more workers than jobs",
                                 "Ctrl-C with a worker idle", "Ctrl-C with a job queued",
                                 "SIGTERM to the group, more workers than jobs",
                                 "SIGTERM to the group after a Ctrl-C it started ignoring"])
def test_stopping_a_joblib_sweep_lets_every_running_job_save(tiny_mnist, tmp_path, how):
    """`kill PID` passed SIGTERM to the workers and stopped at once, and a Ctrl-C stopped joblib's
    parent at once too; joblib's shutdown then ended a worker before it had saved: its run lost its
    partial epoch (no stopped.json, no mid-epoch last.pt). vaelab-train now waits for the jobs to
    let go of their runs. (The group's SIGINT stands in for the terminal's Ctrl-C.)"""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("VAELAB_DATA", None)
    # (with a worker idle: the short job has ended, its worker waits for work that will not come)
    jobs = (["trainer.epochs=1,100000"] if how.endswith("idle") else
            ["latent_size=2,4,8", "trainer.epochs=100000"] if how.endswith("queued") else
            ["latent_size=2,4", "trainer.epochs=100000"])
    tiny = [a for a in TINY if not a.startswith("trainer.epochs=")]
    # (more workers than jobs: loky starts them all at once, and one that never got a job died on
    # the Ctrl-C, after which joblib ended the others before they had saved)
    workers = 4 if how.endswith("than jobs") else 2
    p = subprocess.Popen([sys.executable, "-m", "vaelab.train", "-m", f"data.root={tiny_mnist}", *tiny, *jobs,
                          "trainer.final_eval=false", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={workers}"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True,  # (its own group, as a terminal's job; SIGINT as a terminal has it)
                         preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                          signal.SIG_IGN if "ignoring" in how else signal.SIG_DFL))
    try:
        deadline = time.time() + 180
        while len(list(tmp_path.glob("outputs/multirun/*/*/*/checkpoints/last.pt"))) < 2 or (  # both jobs began
                how.endswith("idle") and not list(tmp_path.glob("outputs/multirun/*/*/*/metrics.json"))):
            assert p.poll() is None and time.time() < deadline, p.stdout.read() if p.poll() is not None else "timeout"
            time.sleep(0.2)
        time.sleep(2.0 if how.endswith("idle") else 0.5)  # (the ended job's worker back at joblib's queue)
        if how.endswith("ignoring"):  # (a script's `vaelab-train -m ... &`: the script's Ctrl-C is not the sweep's)
            os.killpg(p.pid, signal.SIGINT)
            time.sleep(2.0)
            assert p.poll() is None and not list(tmp_path.glob("outputs/multirun/*/*/*/" + ckpt_io.STOPPED))
        if how == "kill PID":
            p.send_signal(signal.SIGTERM)
        else:  # (a group's SIGTERM: scancel, a time limit)
            os.killpg(p.pid, signal.SIGTERM if how.startswith("SIGTERM") else signal.SIGINT)
        out, _ = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, out[-3000:]
    assert "leaked semaphore" not in out  # (loky's resource tracker, of the workers the stop ended)
    if how == "kill PID":  # once, not once per running job (a signal to the group reaches the jobs as soon as
        assert out.count("the sweep stops here") == 1, out[-3000:]  # vaelab-train, which marks the stop first)
    [sweep] = (tmp_path / "outputs" / "multirun" / "default").iterdir()
    assert not (sweep / ckpt_io.SWEEP_LOCK).exists()  # let go on the way out, though the sweep did not end
    if how.endswith("queued"):  # joblib handed the third job out while the stop waited: it did not start
        assert "latent_size=8" not in runs(sweep), (sweep / "latent_size=8" / "train.log").read_text()[-2000:]
    for name, run in runs(sweep).items():  # each stopped by the signal, with its checkpoint
        if how.endswith("idle") and name == "trainer.epochs=1":
            assert (run / "metrics.json").is_file()  # it had ended
            continue
        assert json.loads((run / ckpt_io.STOPPED).read_text())["state"] == "interrupted", (name, out[-3000:])
        assert ("stopped by SIGINT" if how.startswith("Ctrl-C") else "stopped by SIGTERM") in \
            (run / "train.log").read_text()


def _in_a_terminal(cmd: list[str], cwd: Path, env: dict) -> tuple[subprocess.Popen, int]:
    """Start cmd as a terminal's job: under a shell that leads a new session whose controlling
    terminal is a fresh pty, in the terminal's foreground group, SIGINT and SIGHUP with their
    default actions. Returns the shell's process and the pty's master side: closing it is closing
    the terminal window (the shell gets SIGHUP and ends, and the kernel then sends SIGHUP to the
    foreground group: cmd and the processes it started)."""
    import fcntl
    import termios

    master, slave = os.openpty()

    def as_a_terminals_job():
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # (stdin is the slave: it becomes the controlling terminal)
        for s in (signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)

    p = subprocess.Popen(["sh", "-c", f"{shlex.join(cmd)}; exit $?"], cwd=cwd, env=env, stdin=slave, stdout=slave,
                         stderr=slave, start_new_session=True,
                         preexec_fn=as_a_terminals_job)
    os.close(slave)
    return p, master


def _vaelab_processes(cwd: Path) -> list[int]:
    """The processes that run in cwd (a test's vaelab-train and its joblib workers), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.readlink(entry / "cwd") == str(cwd) and \
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":  # (not a zombie)
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("how", ["a run", "a joblib sweep, hang-up twice"])
def test_closing_the_terminal_stops_as_ctrl_c_does(tiny_mnist, tmp_path, how):
    """A closed terminal (an ssh session that dropped) sent SIGHUP, whose default action ended
    vaelab-train on the spot: the run lost its partial epoch and kept no stopped.json (a joblib
    sweep: joblib then ended every job). It now stops as a Ctrl-C does, with writes to the
    hung-up terminal (which fail with EIO) sent to /dev/null; the run's train.log has the lines.
    The sweep has its hang-up twice, as under an interactive shell (the single one of `sh -c`
    is the first half of that)."""
    import select

    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("VAELAB_DATA", None)
    tiny = [a for a in TINY if not a.startswith("trainer.epochs=")]
    sweep = ["-m", "latent_size=2,4", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"] if "sweep" in how else []
    p, master = _in_a_terminal([sys.executable, "-m", "vaelab.train", *sweep, f"data.root={tiny_mnist}", *tiny,
                                "trainer.epochs=100000"], tmp_path, env)
    out = b""
    try:
        deadline = time.time() + 180
        while len(list(tmp_path.glob("outputs/**/checkpoints/last.pt"))) < (2 if sweep else 1):
            assert p.poll() is None and time.time() < deadline, out.decode(errors="replace")[-3000:]
            if select.select([master], [], [], 0.2)[0]:  # (read on, so that a full pty does not block it)
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
        time.sleep(0.5)
        if how.endswith("twice"):  # as an interactive shell does: it passes the hang-up to its job, and as it
            os.killpg(p.pid, signal.SIGHUP)  # ends the kernel sends the job's group another (a second one
            time.sleep(0.03)                  # stopped the wait for the workers at once, as a second Ctrl-C)
        os.close(master)  # the terminal goes away
        p.wait(timeout=30)  # (the shell: it ends on the hang-up, then vaelab-train has its SIGHUP)
        deadline = time.time() + 120
        while _vaelab_processes(tmp_path):
            assert time.time() < deadline, "vaelab-train still running"
            time.sleep(0.2)
    finally:
        p.kill()
        for pid in _vaelab_processes(tmp_path):
            os.kill(pid, signal.SIGKILL)
    found = list(tmp_path.glob(f"outputs/{'multirun' if sweep else 'runs'}/**/{ckpt_io.STOPPED}"))
    assert len(found) == (2 if sweep else 1), found
    for stopped in found:
        assert json.loads(stopped.read_text())["state"] == "interrupted"
        assert "stopped by SIGHUP" in (stopped.parent / "train.log").read_text()
    if sweep:
        [sweep_dir] = (tmp_path / "outputs" / "multirun" / "default").iterdir()
        assert not (sweep_dir / ckpt_io.SWEEP_LOCK).exists()


def test_a_line_said_while_stopping_survives_a_terminal_gone_under_it(monkeypatch):
    """joblib's parent, in its hang-up handler, printed "waiting for 2 jobs to save" after
    after_hangup had found the terminal still there: on a busy host the terminal closed in
    between, the write failed (EIO) and ended the parent, whose end ended a job still saving (no
    stopped.json: test_closing_the_terminal_stops_as_ctrl_c_does, once in ~12 runs under load)."""
    import errno

    import vaelab.errors as errors_mod

    class Gone:
        def write(self, text):
            raise OSError(errno.EIO, "Input/output error")

        def flush(self):
            raise OSError(errno.EIO, "Input/output error")
    hung_up = []
    monkeypatch.setattr(errors_mod, "after_hangup", hung_up.append)
    monkeypatch.setattr(sys, "stderr", Gone())
    errors_mod.say_while_stopping("vaelab-train: waiting for 2 jobs to save a checkpoint")
    assert hung_up == [signal.SIGHUP]  # (the streams go to /dev/null from here)


def test_after_a_hang_up_writes_to_the_terminal_and_to_its_pipes_go_nowhere(tmp_path):
    """`vaelab-train ... |& tee log` in a terminal that closes: tee had the hang-up too, and the
    progress bar's next write to its pipe (EPIPE) ended the run before it saved. A `kill -HUP`
    with the terminal still there leaves the streams be."""
    code = """if True:
        import os, signal, sys
        from vaelab.errors import after_hangup
        master, slave = os.openpty()
        read, write = os.pipe()
        os.dup2(slave, 0); os.dup2(write, 1); os.dup2(write, 2)   # stdin the terminal, output a pipe to 'tee'
        after_hangup(signal.SIGHUP)  # the terminal still there: nothing changes
        assert os.path.samestat(os.fstat(1), os.fstat(write)), "a live terminal's pipe was redirected"
        os.close(master); os.close(read)  # the terminal goes, and tee with it
        after_hangup(signal.SIGHUP)
        print("after the hang-up", flush=True)  # EPIPE without after_hangup
        sys.stderr.write("and on stderr\\n"); sys.stderr.flush()
        open(sys.argv[1], "w").write("ok")
    """
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ok")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and (tmp_path / "ok").read_text() == "ok", p.stderr[-2000:]


def test_ctrl_c_stops_the_whole_sweep(tiny_mnist, tmp_path):
    """Ctrl-C ends the job in progress with a checkpoint and exit code 130, and the sweep with it:
    no later job starts."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop("VAELAB_DATA", None)
    p = subprocess.Popen([sys.executable, "-m", "vaelab.train", "-m", "latent_size=2,4", f"data.root={tiny_mnist}",
                          *TINY, "trainer.epochs=1000"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not list(tmp_path.glob("outputs/multirun/*/*/*/checkpoints/last.pt")):  # job 1 is training
            assert p.poll() is None and time.time() < deadline, p.stdout.read() if p.poll() is not None else "timeout"
            time.sleep(0.2)
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, out[-3000:]
    [sweep] = (tmp_path / "outputs" / "multirun" / "default").iterdir()
    assert list(runs(sweep)) == ["latent_size=2"]  # the second job never started
    assert "stopped by SIGINT" in out and "the sweep stops here" in out
    assert (sweep / "latent_size=2" / "checkpoints" / "last.pt").is_file()
    assert f"carry the whole sweep on with: vaelab resume {sweep}" in out


def test_resume_carries_a_stopped_sweep_on_in_its_folder(tiny_mnist, tmp_path):
    """`vaelab resume SWEEP_DIR`, from another folder: a stopped job continues from its checkpoint
    and a job that never started starts, each ending as it would have without the stop
    (bit-identical at one thread); a finished job is left as it is, with the config a
    `vaelab resume JOB KEY=VALUE` gave it, and gets the evaluation a stop cut short; a diverged
    one is left as it is and still counts. data.root is relative: it means what it meant where
    the sweep began."""
    started = tmp_path / "started"
    started.mkdir()
    data = os.path.relpath(tiny_mnist, started)
    sweep = vaelab_train(["-m", "latent_size=2,4,8,16", f"data.root={data}", *TINY, "trainer.checkpoint_every=1"],
                         started, threads=1)
    jobs = runs(sweep)
    before = {n: json.loads((d / "metrics.json").read_text()) for n, d in jobs.items()}
    done = jobs["latent_size=2"]  # carried on by hand to 3 epochs and evaluated; the evaluation lost
    threads = torch.get_num_threads()
    try:
        assert vaelab(["resume", done, "trainer.epochs=3", "trainer.final_eval=true"]) == 0
    finally:  # resume takes the run's thread count (1): not for the tests after this one
        torch.set_num_threads(threads)
    (done / "eval.json").unlink()
    stopped = jobs["latent_size=4"]  # as if stopped during epoch 2: last.pt is epoch 1's
    ckpt = stopped / "checkpoints"
    (ckpt / "epoch_0001.pt").replace(ckpt / "last.pt")
    for gone in (ckpt / "epoch_0002.pt", ckpt / "best.pt", stopped / "metrics.json"):
        gone.unlink()
    (stopped / "stopped.json").write_text(json.dumps({"state": "interrupted", "reason": "stopped by SIGINT"}))
    fresh = sweep / "latent_size=8"  # never started
    saved = {f: (fresh / ".hydra" / f).read_text() for f in ("config.yaml", "overrides.yaml")}
    shutil.rmtree(fresh)
    diverged = jobs["latent_size=16"]
    (diverged / "metrics.json").unlink()
    (diverged / "stopped.json").write_text(json.dumps({"state": "diverged", "reason": "non-finite loss nan"}))
    kept = {p: p.stat().st_mtime_ns for d in (done, stopped, diverged) for p in (d / ".hydra").iterdir()}

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "vaelab.cli", "resume", str(sweep)], cwd=elsewhere, env=env,
                       capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out[-3000:]  # the diverged job: as when the sweep first ended
    # (the finished job whose evaluation was lost says only that: it was "left as it is", then evaluated)
    assert ("latent_size=2 has finished training, but its end-of-training evaluation did not finish (no eval.json): "
            "evaluating it now") in out and "latent_size=2 finished earlier" not in out
    assert "latent_size=16 diverged earlier" in out
    assert "sweep of 4 jobs: 3 done, 1 diverged; lowest val_loss " in out  # (of a done job, not the diverged one)
    assert f"; table: vaelab compare {sweep}" in out
    assert "vaelab resume: error: 1 of 4 jobs diverged (non-finite loss or weights): latent_size=16" in p.stderr
    assert set(runs(sweep)) == set(jobs) and not list(elsewhere.iterdir())
    for name in ("latent_size=4", "latent_size=8"):
        after = json.loads((sweep / name / "metrics.json").read_text())
        assert {k: v for k, v in after.items() if not is_timing(k)} == \
            {k: v for k, v in before[name].items() if not is_timing(k)}, name
    assert "resuming" in (stopped / "train.log").read_text() and not (stopped / "stopped.json").exists()
    # the jobs that began keep their own .hydra/; the new one gets what Hydra wrote the first time
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert "epochs: 3" in (done / ".hydra" / "config.yaml").read_text()
    assert {f: (fresh / ".hydra" / f).read_text() for f in saved} == saved
    hydra_yaml = (fresh / ".hydra" / "hydra.yaml").read_text()
    assert "output_subdir: .hydra" in hydra_yaml and "VAELAB_SWEEP_CONTINUED" not in hydra_yaml
    assert json.loads((done / "metrics.json").read_text())["epochs"] == 3 and (done / "eval.json").is_file()
    assert json.loads((diverged / "stopped.json").read_text())["state"] == "diverged"
    assert not (diverged / "metrics.json").exists()


def test_resume_of_a_sweep_launches_the_command_line_as_given(sweep, tmp_path):
    """Interpolations in the recorded overrides stay unresolved (Hydra resolves them per job), and
    a primary config of the user's own, even in a folder named conf, is the one launched again."""
    from vaelab.config import CONF_DIR
    from vaelab.workflow import sweep_command_line

    record = yaml.safe_load((sweep / "multirun.yaml").read_text())
    record["hydra"]["overrides"]["hydra"].append("++hydra.run.dir='runs/${now:%Y}'")
    record["hydra"]["overrides"]["task"].append("trainer.eval_batch_size=${trainer.batch_size}")
    own = tmp_path / "mine" / "conf"
    own.mkdir(parents=True)
    (own / "config.yaml").write_text("defaults:\n  - config\n")
    for source in record["hydra"]["runtime"]["config_sources"]:
        if source["provider"] == "main":
            assert Path(source["path"]).resolve() == CONF_DIR.resolve()
            source["path"] = str(own)
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "multirun.yaml").write_text(yaml.safe_dump(record))
    cwd, argv, task = sweep_command_line(copy)
    assert cwd == sweep.parents[3]
    assert "++hydra.run.dir='runs/${now:%Y}'" in argv and "trainer.eval_batch_size=${trainer.batch_size}" in task
    assert argv[argv.index("--config-path") + 1] == str(own)
    assert argv[-3:] == ["hydra.output_subdir=null", "++hydra.job.env_set.VAELAB_SWEEP_CONTINUED=1",
                         f"hydra.sweep.dir='{copy.resolve()}'"]


def test_resume_of_a_sweep_keeps_a_primary_config_given_with_config_dir(sweep, tmp_path):
    """`vaelab-train --config-dir myconf --config-name mine -m ...`: Hydra lists myconf as a
    command-line source and vaelab's conf/ as main, and the resume launched vaelab's own config,
    a job that had not begun training with other settings (review: latent 32, not mine's 8)."""
    from vaelab.workflow import WorkflowError, sweep_command_line

    record = yaml.safe_load((sweep / "multirun.yaml").read_text())
    mine = tmp_path / "myconf"
    mine.mkdir()
    (mine / "mine.yaml").write_text("defaults:\n  - config\n  - _self_\nlatent_size: 8\n")
    record["hydra"]["job"]["config_name"] = "mine"
    record["hydra"]["runtime"]["config_sources"].append({"path": str(mine), "schema": "file",
                                                         "provider": "command-line"})
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "multirun.yaml").write_text(yaml.safe_dump(record))
    argv = sweep_command_line(copy)[1]
    assert argv[argv.index("--config-dir") + 1] == str(mine) and argv[argv.index("--config-name") + 1] == "mine"
    assert "--config-path" not in argv
    record["hydra"]["job"]["config_name"] = "mine.yaml"  # (Hydra takes the name with its .yaml too: review)
    (copy / "multirun.yaml").write_text(yaml.safe_dump(record))
    argv = sweep_command_line(copy)[1]
    assert argv[argv.index("--config-name") + 1] == "mine.yaml"
    record["hydra"]["job"]["config_name"] = "mine"
    (copy / "multirun.yaml").write_text(yaml.safe_dump(record))
    (mine / "mine.yaml").unlink()
    with pytest.raises(WorkflowError, match=f"primary config mine.yaml is in none of {mine} any more"):
        sweep_command_line(copy)


def test_resume_of_a_sweep_refuses_what_it_cannot_carry_on(sweep, tmp_path, capsys):
    assert vaelab(["resume", sweep, "latent_size=3"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vaelab resume: error: override 'latent_size=3': a sweep carries on with the values it began with; "
        f"change one job's with vaelab resume {sweep / 'JOB'} KEY=VALUE")
    drawn = tmp_path / "study"
    drawn.mkdir()
    record = yaml.safe_load((sweep / "multirun.yaml").read_text())
    record["hydra"]["sweeper"]["_target_"] = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    (drawn / "multirun.yaml").write_text(yaml.safe_dump(record))
    assert vaelab(["resume", drawn]) == 2
    assert capsys.readouterr().err.strip() == (
        f"vaelab resume: error: {drawn}: its jobs were drawn by OptunaSweeper, which would draw new ones; "
        f"carry a stopped trial on with vaelab resume {drawn / 'TRIAL'}")
    (drawn / "multirun.yaml").write_text("hydra: [1, 2]\n")
    assert vaelab(["resume", drawn]) == 2
    assert capsys.readouterr().err.strip().startswith(
        f"vaelab resume: error: {drawn / 'multirun.yaml'}: not a sweep record as Hydra writes it (")


def test_a_sweep_whose_one_job_runs_in_the_sweep_folder_itself_trains(tiny_mnist, tmp_path):
    """hydra.sweep.subdir=. (one job): the job waited forever for the sweep folder's lock, which
    its own launching process held."""
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "vaelab.train", "-m", f"data.root={tiny_mnist}", *TINY,
                        "trainer.epochs=1", f"hydra.sweep.dir={tmp_path / 'dot'}", "hydra.sweep.subdir=."],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "sweep of 1 job: 1 done" in p.stdout and (tmp_path / "dot" / "metrics.json").is_file()
    assert not (tmp_path / "dot" / ckpt_io.SWEEP_LOCK).exists()


def test_resume_of_a_sweep_that_is_still_running_is_refused(sweep, tmp_path, capsys, monkeypatch):
    """The launching process holds the sweep folder while the jobs run: a resume went ahead, and
    ran a job's final evaluation a second time beside the sweep's own. A resume takes the lock
    itself before its checks, so that two begun at the same instant cannot both pass."""
    from omegaconf import OmegaConf

    from vaelab.compare import SweepSummary

    running = tmp_path / "running"
    shutil.copytree(sweep, running)
    probe = ("import fcntl, os, sys\nfd = os.open(sys.argv[1] + '/.vaelab-sweep.lock', os.O_RDWR | os.O_CREAT)\n"
             "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
             "except BlockingIOError:\n    print('held')\n")

    def seen_from_another_process() -> str:
        return subprocess.run([sys.executable, "-c", probe, str(running)], capture_output=True, text=True,
                              check=True).stdout.strip()
    hydra_cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(running)}}})
    summary = SweepSummary()
    summary.on_multirun_start(hydra_cfg)
    assert seen_from_another_process() == "held"
    summary.on_multirun_end(hydra_cfg)
    assert not (running / ".vaelab-sweep.lock").exists()  # let go, and its file removed
    assert seen_from_another_process() == "free"

    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1] + "
                               "'/.vaelab-sweep.lock', os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); "
                               "print('held', flush=True); time.sleep(60)", str(running)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        capsys.readouterr()
        assert vaelab(["resume", running]) == 2
        assert capsys.readouterr().err.strip() == (
            f"vaelab resume: error: {running}: another process is running this sweep now; let it finish or stop "
            f"it (Ctrl-C) first")
    finally:
        holder.kill()
        holder.wait()

    import vaelab.workflow as workflow_mod
    seen = []

    def check_job_folders(jobs):  # (the resume's checks: a second resume now must see the sweep as running)
        seen.append(seen_from_another_process())
        raise workflow_mod.WorkflowError("stopped here by the test")

    monkeypatch.setattr(workflow_mod, "_check_job_folders", check_job_folders)
    assert vaelab(["resume", running]) == 2 and seen == ["held"]
    assert seen_from_another_process() == "free"  # let go when the resume ended


def test_a_sweep_lock_taken_as_its_file_is_removed_is_taken_again(tmp_path, monkeypatch):
    """release_sweep removes the lock file before it lets go; a process that had opened the file
    just before got its lock on the removed file, and so did one that made the file anew: two
    resumes of one sweep both held 'the' lock."""
    real_open = os.open
    opened = []

    def open_then_removed(path, *args, **kwargs):  # as if the holder removed it right after this open
        fd = real_open(path, *args, **kwargs)
        if str(path).endswith(ckpt_io.SWEEP_LOCK) and not opened:
            opened.append(path)
            os.unlink(path)
        return fd

    monkeypatch.setattr(os, "open", open_then_removed)
    assert ckpt_io.hold_sweep(tmp_path) and opened
    monkeypatch.setattr(os, "open", real_open)
    try:
        probe = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
                 "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('free')\n"
                 "except BlockingIOError:\n    print('held')\n")
        seen = subprocess.run([sys.executable, "-c", probe, str(tmp_path / ckpt_io.SWEEP_LOCK)], capture_output=True,
                              text=True, check=True).stdout.strip()
        assert seen == "held"
    finally:
        ckpt_io.release_sweep(tmp_path)


def test_resume_of_a_sweep_whose_job_folders_are_named_by_the_clock_is_refused(sweep, tmp_path, capsys):
    """A relaunch finds a begun job only in the folder hydra.sweep.subdir names for it; with
    ${now:...} in the name every job would start anew beside the old ones, so resume says so."""
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    job = copy / "latent_size=2,loss.beta=1"
    hydra_yaml = job / ".hydra" / "hydra.yaml"
    hc = yaml.safe_load(hydra_yaml.read_text())
    assert hc["hydra"]["sweep"]["subdir"] == "${vaelab_job_name:${hydra.job.override_dirname},${hydra.job.num}}"
    hc["hydra"]["sweep"]["subdir"] = "j${hydra.job.num}_${now:%H%M%S%f}"
    hydra_yaml.write_text(yaml.safe_dump(hc))
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
    assert vaelab(["resume", copy]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"vaelab resume: error: {job}: the sweep names its job folders "
                          "hydra.sweep.subdir=j${hydra.job.num}_${now:%H%M%S%f}, which now gives 'j")
    assert err.endswith(f"': launched again, its jobs would start anew in other folders; carry them on one by one "
                        f"with vaelab resume {copy / 'JOB'}")
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == before
    # the job id resolves from the job's record, but SLURM gives a relaunch's jobs new ones
    hc["hydra"]["sweep"]["subdir"] = "j${hydra.job.id}"
    hc["hydra"]["launcher"]["_target_"] = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    hydra_yaml.write_text(yaml.safe_dump(hc))
    assert vaelab(["resume", copy]) == 2
    assert capsys.readouterr().err.strip().startswith(
        f"vaelab resume: error: {job}: the sweep names its job folders hydra.sweep.subdir=j${{hydra.job.id}}, which "
        f"holds the job id that SlurmLauncher gives anew at each launch: launched again, ")


def test_compare_sorts_a_sweep_whose_every_job_diverged(tmp_path, capsys):
    """--sort by a metric no run reached (each diverged before its first epoch) is not an
    error: the rows come out, as unsorted as their metrics are missing."""
    for name in ("optim.lr=1e+30", "optim.lr=1e+31"):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(f"optim:\n  lr: {name.split('=')[1]}\n")
        (tmp_path / name / "stopped.json").write_text('{"state": "diverged", "reason": "x"}')
    assert vaelab(["compare", tmp_path, "--sort", "val_loss"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = out[2:4]
    assert len(rows) == 2 and all(r.endswith("diverged") for r in rows)
    # said, as --where says it (review: the table came out silently unsorted)
    assert out[4:] == ["note: --sort val_loss: no run has it yet (none of them has finished an epoch); the table is "
                       "in run order"]
    assert vaelab(["compare", tmp_path, "--where", "test_nll_iwae=3"]) == 2
    assert capsys.readouterr().err.strip() == (  # (it said "did you mean test_nll_iwae?", the key it was given)
        "vaelab compare: error: --where test_nll_iwae=3: no run has test_nll_iwae yet (the test_* numbers come from "
        "eval.json, which none of them has: vaelab eval RUN makes it)")


def test_compare_columns_leave_out_settings_that_change_no_number(tmp_path):
    from vaelab.compare import CompareError, Run, _varying, sort_runs

    runs = [Run(tmp_path / "a", "a", {"latent_size": "2", "trainer.progress": "True", "data.download": "True"}),
            Run(tmp_path / "b", "b", {"latent_size": "4", "trainer.progress": "False", "data.download": "False"})]
    assert _varying(runs) == ["latent_size"]
    # a run whose saved config is gone made every setting a column, each "-" in its row (review)
    assert _varying([runs[0], Run(tmp_path / "x", "x", {})]) == [] and _varying([*runs, Run(tmp_path, "x")]) == [
        "latent_size"]
    with pytest.raises(CompareError, match=r"^--sort val_los: no run has that metric or setting \(did you mean "
                                           r"val_loss\?\); metrics: none yet \(no run has finished an epoch\); or a "
                                           r"setting, e.g. loss.beta, or run or state$"):
        sort_runs(runs, "val_los")
    # a setting, a column of the table too: by its number (16 after 4, not before), else its text
    runs += [Run(tmp_path / "c", "c", {"latent_size": "16"}), Run(tmp_path / "d", "d", {})]
    assert [r.name for r in sort_runs(runs, "latent_size")] == ["a", "b", "c", "d"]  # (none last)
    assert [r.name for r in sort_runs(runs, "latent_size", descending=True)] == ["c", "b", "a", "d"]
    # columns stay put whatever order the rows are in: a key only some runs have (a model of one's own's
    # model.kwargs.width) came before or after trainer.epochs as the sort put such a run first or not
    mixed = [Run(tmp_path / "m", "m", {"model.kwargs.width": "16", "trainer.epochs": "2"}),
             Run(tmp_path / "n", "n", {"trainer.epochs": "3"})]
    assert _varying(mixed) == _varying(mixed[::-1]) == ["model.kwargs.width", "trainer.epochs"]


def test_compare_where_takes_the_hidden_widths_an_mlp_was_built_with(tmp_path, capsys):
    """Review: --where model.hidden=[256] found no model.size=small run ('the runs have model.hidden
    None'), though its HParams row has model.hidden [256], as built."""
    for name, model in (("small", "size: small\n  hidden: null"), ("wide", "size: small\n  hidden: [300]"),
                        ("own", "size: small\n  hidden: null\n  _target_: mine.Model")):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "config.yaml").write_text(
            f"model:\n  _target_: vaelab.models.MLPVAE\n  {model}\n" if "mine" not in model else
            f"model:\n  {model}\n")
    assert vaelab(["compare", tmp_path, "--where", "model.hidden=[256]"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == ["small"]
    assert vaelab(["compare", tmp_path, "--where", "model.hidden=[300]"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == ["wide"]
    # (saved before model.init existed: PyTorch's initialisation, as the run had; review)
    assert vaelab(["compare", tmp_path, "--where", "model.init=torch"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[2:]] == ["small", "wide"]


def test_compare_sorts_by_run_state_and_list_settings(tmp_path):
    """--sort state and --sort run were refused though both are columns, and model.hidden sorted
    as text: [64, 32] before [64]."""
    from vaelab.compare import Run, sort_runs

    runs = [Run(tmp_path / n, name=n, config={"model.hidden": h}, state=st)
            for n, h, st in (("job10", "[64, 32]", "done"), ("job9", "[64]", "interrupted"), ("job2", "[128]", "done"),
                             ("job1", "None", "done"))]  # (null: no value, last either way)
    assert [r.name for r in sort_runs(runs, "run")] == ["job1", "job2", "job9", "job10"]
    assert [r.name for r in sort_runs(runs, "state")] == ["job1", "job2", "job10", "job9"]
    assert [r.name for r in sort_runs(runs, "model.hidden")] == ["job9", "job10", "job2", "job1"]
    assert [r.name for r in sort_runs(runs, "model.hidden", descending=True)] == ["job2", "job10", "job9", "job1"]


def test_compare_where_keeps_the_runs_with_a_setting_state_or_metric(sweep, capsys):
    """A sweep of many jobs had no way to list some of them."""
    from vaelab.compare import find_runs

    assert vaelab(["compare", sweep, "--where", "loss.beta=4", "--where", "state=done"]) == 0
    def names():  # (the rows, not the note on the MSE constant under them)
        return [r.split()[0] for r in capsys.readouterr().out.splitlines()[2:] if r.startswith("latent_size=")]
    assert sorted(names()) == ["latent_size=2,loss.beta=4", "latent_size=4,loss.beta=4"]
    assert vaelab(["compare", sweep, "--where", "latent_size=4.0", "--sort", "run"]) == 0  # numbers as numbers
    assert names() == ["latent_size=4,loss.beta=1", "latent_size=4,loss.beta=4"]
    assert vaelab(["compare", sweep, "--where", "lossbeta=4"]) == 2
    assert capsys.readouterr().err.strip() == ("vaelab compare: error: --where lossbeta=4: no run has lossbeta (did you "
                                               "mean loss.beta?); give a setting (loss.beta), state, run or a metric "
                                               "(val_loss)")
    assert vaelab(["compare", sweep, "--where", "state=diverged"]) == 2  # (with what the runs have instead)
    assert capsys.readouterr().err.strip() == ("vaelab compare: error: --where state=diverged: no run has "
                                               "state=diverged; the runs have state done")
    assert vaelab(["compare", sweep, "--where", "loss.beta=4", "--where", "latent_size=3"]) == 2
    assert capsys.readouterr().err.strip().endswith("no run has latent_size=3; the runs left have latent_size 2 or 4")
    # a metric matches as the table shows it (val_loss=45.398 for 45.39818...), not only to every bit
    runs = {r.name: r for r in find_runs([sweep])}
    shown = f"{runs['latent_size=2,loss.beta=1'].metrics['val_loss']:.3f}"
    assert vaelab(["compare", sweep, "--where", f"val_loss={shown}"]) == 0
    out = capsys.readouterr().out  # one run left, still with the settings the sweep varied (it had no such column)
    assert out.splitlines()[0].split()[:3] == ["run", "latent_size", "loss.beta"], out
    assert vaelab(["compare", sweep, "--where", "loss.beta=4"]) == 0  # runs that differ: their own columns only
    assert capsys.readouterr().out.splitlines()[0].split()[:3] == ["run", "latent_size", "epochs"]
    assert [r.split()[0] for r in out.splitlines()[2:] if r.startswith("latent_size=")] == ["latent_size=2,loss.beta=1"]
    assert vaelab(["compare", sweep, "--where", "active_units=99"]) == 2  # (a whole number: exact)
    assert "no run has active_units=99; the runs have active_units " in capsys.readouterr().err
    # booleans as the configs and overrides write them (only True matched), and as Python does
    for value in ("true", "True"):
        assert vaelab(["compare", sweep, "--where", f"trainer.cuda_graph={value}"]) == 0
        assert len(names()) == 4
    assert vaelab(["compare", sweep, "--where", "trainer.cuda_graph=false"]) == 2
    assert vaelab(["compare", sweep, "--where", "name=Default"]) == 2  # (text keeps its case)
    # a run by its folder, the table's first column, as --sort takes it ("no run has run", review)
    assert vaelab(["compare", sweep, "--where", "run=latent_size=4,loss.beta=1"]) == 0
    assert names() == ["latent_size=4,loss.beta=1"]
    capsys.readouterr()
    # a comparison was read as the key 'val_loss>' ("no run has val_loss> (did you mean val_loss?)", review)
    for cond in ("val_loss>=110", "loss.beta!=4", "val_loss<=1"):
        assert vaelab(["compare", sweep, "--where", cond]) == 2
        assert capsys.readouterr().err.strip() == (
            f"vaelab compare: error: --where {cond}: give KEY=VALUE, e.g. --where loss.beta=4 or --where state=done; "
            f"--where keeps runs equal to a value (--sort orders them by one)")


def test_compare_writes_a_blown_up_number_short():
    """A run whose loss blew up (finite, 1e32) printed its numbers as 36-digit decimals."""
    from vaelab.compare import _fmt

    assert [_fmt(v) for v in (84094630536980407375606577102848.0, -2.5e12, 123456.78912, 0.5, float("nan"), None)] == [
        "8.409e+31", "-2.500e+12", "123456.789", "0.500", "nan", "-"]


def test_a_stopping_sweep_is_said_to_stop_once(tmp_path):
    """Each job joblib runs stops on a Ctrl-C or SIGTERM, and each said 'the sweep stops here':
    the line came once per running job. The first to say it takes the stop file's token."""
    from vaelab import checkpoint as ckpt_io

    assert ckpt_io.first_to_tell_stop(tmp_path)  # no stop of the launch's own: a job stopped alone says it
    assert ckpt_io.hold_sweep(tmp_path)
    try:
        ckpt_io.mark_sweeps_stopping()
        assert [ckpt_io.first_to_tell_stop(tmp_path) for _ in range(3)] == [True, False, False]
        assert ckpt_io.sweep_stopping(tmp_path)  # (the token leaves the stop as it was)
    finally:
        ckpt_io.release_sweeps()
    assert not any(tmp_path.iterdir())


def test_compare_where_keeps_the_case_of_text_that_reads_true():
    """--where took any value true/false as a boolean: a text setting 'True' matched nothing."""
    from vaelab.compare import CompareError, Run, where

    runs = [Run(Path("a"), "a", config={"name": "True", "trainer.compile": "true"}),
            Run(Path("b"), "b", config={"name": "other", "trainer.compile": "false"})]
    assert [r.name for r in where(runs, ["name=True"])] == ["a"]
    with pytest.raises(CompareError, match="^--where name=true: no run has name=true; the runs have name True or "
                                           "other$"):
        where(runs, ["name=true"])
    assert [r.name for r in where(runs, ["trainer.compile=True"])] == ["a"]
    assert [r.name for r in where(runs, ["trainer.compile=FALSE"])] == ["b"]


def test_compare_where_takes_values_as_vaelab_train_does():
    """A boolean as vaelab-train takes it (yes, 0), a list without spaces, null, and a diverged
    run's nan matched nothing; "the runs left" came after a condition that had removed none."""
    from vaelab.compare import CompareError, Run, where

    runs = [Run(Path("a"), "a", config={"trainer.compile": "true", "optim.betas": "[0.9, 0.999]",
                                        "model.hidden": "None", "loss.beta": "1.0"},
                metrics={"val_loss": float("nan")}),
            Run(Path("b"), "b", config={"trainer.compile": "false", "optim.betas": "[0.5, 0.9]",
                                        "model.hidden": "[512, 256]", "loss.beta": "4.0"},
                metrics={"val_loss": 45.398})]
    for cond, names in (("trainer.compile=yes", ["a"]), ("trainer.compile=0", ["b"]), ("trainer.compile=off", ["b"]),
                        ("optim.betas=[0.9,0.999]", ["a"]), ("model.hidden=null", ["a"]), ("model.hidden=None", ["a"]),
                        ("model.hidden=[512,256]", ["b"]), ("val_loss=nan", ["a"]), ("val_loss=NaN", ["a"])):
        assert [r.name for r in where(runs, [cond])] == names, cond
    for r in runs:
        r.config["seed"] = "0"
    with pytest.raises(CompareError, match="; the runs have loss.beta 1.0 or 4.0$"):  # (seed=0 left out none)
        where(runs, ["seed=0", "loss.beta=2"])
    with pytest.raises(CompareError, match="; the runs left have model.hidden None$"):
        where(runs, ["loss.beta=1", "model.hidden=[1]"])


def test_resume_of_a_sweep_leaves_a_job_whose_saved_config_was_deleted_as_it_is(sweep, tmp_path, capfd):
    """A job with checkpoints but no .hydra/config.yaml counted as one that never started: the
    sweep's config was written in its place (a `vaelab resume JOB KEY=VALUE` change lost) and the
    run carried on under it (review). The summary then called the jobs incomparable in loss.recon."""
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    job = copy / "latent_size=2,loss.beta=1"
    (job / ".hydra" / "config.yaml").unlink()
    before = sorted(p.name for p in (job / ".hydra").iterdir())
    last = (job / "checkpoints" / "last.pt").read_bytes()
    capfd.readouterr()
    handlers = logging.getLogger().handlers[:]
    assert vaelab(["resume", copy]) == 1  # (it is not carried on: the user has something to do)
    out = "".join(capfd.readouterr())
    # Hydra's console handler, bound to this test's captured stdout (closed after it), was left on the
    # root logger: a later `vaelab resume RUN` in this process logged into it, and nothing was printed
    assert logging.getLogger().handlers == handlers
    assert f"{job}: a run without its saved config, .hydra/config.yaml (deleted or moved?)" in out
    assert "; it is left as it is" in out and "sweep of 4 jobs: 4 done; lowest val_loss " in out
    assert ("vaelab resume: error: 1 of 4 jobs were left as they are, their saved config gone (each checkpoint "
            "keeps a copy, see above): latent_size=2,loss.beta=1") in out
    assert sorted(p.name for p in (job / ".hydra").iterdir()) == before
    assert (job / "checkpoints" / "last.pt").read_bytes() == last


def test_a_second_launch_into_a_sweep_folder_that_is_starting_is_refused(tiny_mnist, tmp_path, monkeypatch, capsys):
    """While a sweep's workers start (10-15 s, before any job folder), a second vaelab-train -m into
    its folder passed the pre-flight check, rewrote multirun.yaml and one job's config, then failed
    (review). The held sweep lock now refuses it: in the pre-flight check, and, for two launches
    begun at once that both passed it, where Hydra starts the sweep, before it writes there."""
    import vaelab.cli_errors as cli_errors
    from vaelab.train_cli import launch

    folder = tmp_path / "sweep"
    folder.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(folder / ckpt_io.SWEEP_LOCK)!r}, os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = ["-m", "latent_size=2,4", *FAST, f"data.root={tiny_mnist}", f"hydra.sweep.dir={folder}"]
        line = "another process is running a sweep in that folder now; give a new folder, or wait for it to end"
        capsys.readouterr()
        assert launch(args) == 2
        assert line in capsys.readouterr().err
        monkeypatch.setattr(cli_errors, "sweep_running", lambda folder: False)  # (begun at the same instant)
        assert launch(args) == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == f"vaelab-train: error: {folder}: {line}"
        assert sorted(p.name for p in folder.iterdir()) == [ckpt_io.SWEEP_LOCK]  # (no multirun.yaml, no job)
    finally:
        holder.kill()
        holder.wait()


def test_a_joblib_worker_killed_under_its_job_is_one_line(monkeypatch):
    """kill -9 of a worker (or the out-of-memory killer) ended the sweep with loky's
    TerminatedWorkerError, some 30 lines of traceback through Hydra's (review; by hand on
    2026-11-28: 'vaelab-train: error: a worker process ... (SIGKILL(-9): killed, ...', exit 1)."""
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
    from joblib.externals.loky.process_executor import TerminatedWorkerError
    from omegaconf import OmegaConf

    from vaelab.errors import SweepWorkerDied
    from vaelab.train_cli import _a_killed_worker_is_one_line

    def killed(self, *args, **kwargs):
        raise TerminatedWorkerError("A worker process managed by the executor was unexpectedly terminated. This "
                                    "could be caused by a segmentation fault ... The exit codes of the workers are "
                                    "{SIGKILL(-9)}")
    monkeypatch.setattr(JoblibLauncher, "launch", killed)
    _a_killed_worker_is_one_line()
    launcher = JoblibLauncher()
    basic = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    launcher.config = OmegaConf.create({"hydra": {"sweep": {"dir": "/x/my sweep"}, "sweeper": {"_target_": basic}}})
    with pytest.raises(SweepWorkerDied) as e:
        launcher.launch([], 0)
    assert e.value.code == ("a worker process of the sweep died under its job (SIGKILL(-9): killed, or out of "
                            "memory); the jobs running beside it stopped where they were; vaelab resume '/x/my sweep' "
                            "carries the sweep on from their checkpoints")
    # an Optuna study's: not vaelab resume SWEEP_DIR, which refuses a study (review)
    launcher.config.hydra.sweeper._target_ = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    with pytest.raises(SweepWorkerDied) as e:
        launcher.launch([], 0)
    assert e.value.code.endswith("vaelab resume '/x/my sweep'/TRIAL carries a stopped trial on, and a study goes on "
                                 "only as a new one")


@pytest.mark.parametrize("sweeper,argv,says", [
    ("hydra._internal.core_plugins.basic_sweeper.BasicSweeper", ["-m", "hydra/sweeper=basic", "seed=1,2"],
     "vaelab resume SWEEP_DIR a whole sweep"),
    ("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper", ["experiment=a_study_of_ones_own"],
     "a study goes on only as a new one"),
    (None, ["+hparams_search=optuna"], "a study goes on only as a new one")])  # (stopped before Hydra composed)
def test_an_interrupted_launch_names_what_carries_it_on(monkeypatch, capsys, sweeper, argv, says):
    """After a stopped Optuna study the last line named vaelab resume SWEEP_DIR, which refuses a
    study (review); told from the command line, it missed a study set up in a config file and took
    hydra/sweeper=basic for one (review): the sweeper the launch composed tells."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    import vaelab.train as train_mod
    from vaelab.train_cli import _run_hydra

    def stopped():  # (once Hydra has composed the launch: its hydra section, as HydraConfig.get() gives it)
        if sweeper is not None:
            monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
            monkeypatch.setattr(HydraConfig, "get", staticmethod(
                lambda: OmegaConf.create({"sweeper": {"_target_": sweeper}})))
        raise KeyboardInterrupt
    monkeypatch.setattr(train_mod, "hydra_main", stopped)
    monkeypatch.setattr(sys, "argv", ["vaelab-train", *argv])
    monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: False))
    assert _run_hydra("vaelab-train") == 130
    err = capsys.readouterr().err
    assert says in err and ("vaelab resume SWEEP_DIR" in err) == ("SWEEP_DIR" in says)
