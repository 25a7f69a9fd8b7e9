"""`vaelab reproduce RUN_DIR` and `vaelab resume RUN_DIR [overrides]`: a run directory is all
it takes to re-run a run from scratch or to carry it on.

reproduce  re-runs RUN_DIR/.hydra/config.yaml into a new run directory, through vaelab-train's
           plain Hydra route (`--config-dir RUN_DIR/.hydra --config-name config`), then prints
           both runs' final metrics side by side. Exit 1 if any metric differs (timings aside).
resume     continues RUN_DIR from checkpoints/last.pt, in the same directory, optionally with
           value overrides such as trainer.epochs=100. The overrides and the checkpoint are
           checked before anything is written; the new values go into RUN_DIR/.hydra/config.yaml
           and overrides.yaml, so a later `reproduce` re-runs the config the run ended with.
           Given a sweep's folder (vaelab-train -m), it launches the sweep again into that folder
           with the command line Hydra recorded in its multirun.yaml: finished and diverged jobs
           are left as they are, stopped ones continue from their last checkpoint, and jobs that
           never started start.
"""
from __future__ import annotations

import errno
import importlib
import json
import logging
import math
import os
import shlex
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from vaelab import checkpoint as ckpt_io
from vaelab.compare import eval_settings
from vaelab.cli_errors import _explain as explain_override_error  # vaelab-train's wording
from vaelab.cli_errors import comma_path_hint, no_key, parse_error, unwritable
from vaelab.config import (CONF_DIR, ConfigError, absolute, leaves, load_run_config, not_a_bool, resolve_device,
                           validate)
from vaelab.errors import STOP_AFTER_STEP, STOP_SIGNALS, after_hangup

log = logging.getLogger("vaelab")

# Set in each job's environment (hydra.job.env_set) when `vaelab resume SWEEP_DIR` launches a
# stopped sweep again: its jobs then carry on the runs already in their folders.
SWEEP_CONTINUED = "VAELAB_SWEEP_CONTINUED"


def _as_text(v) -> str:
    """A setting's value as one writes it: null, true, [8, 4], {a: 1}."""
    v = OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def is_timing(key: str) -> bool:
    """Wall-clock measurements (train_seconds, samples_per_s, test_seconds from eval.json) are
    never equal between two runs: reproduce shows them but does not compare them."""
    return key.endswith(("seconds", "_per_s"))


class WorkflowError(RuntimeError):
    """A run directory or command line that cannot be used. Its message is one line."""


def run_config_path(run_dir: str | Path) -> Path:
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if Path(run_dir).is_file():  # e.g. RUN/checkpoints/last.pt
        raise WorkflowError(f"{run_dir}: a file, not a run directory{runs_hint(Path(run_dir))}")
    if not Path(run_dir).is_dir():
        raise WorkflowError(f"{run_dir}: no such directory")
    if not path.is_file():
        raise WorkflowError(no_saved_config(Path(run_dir)))
    return path


def no_saved_config(run_dir: Path) -> str:
    """Why a folder without .hydra/config.yaml is not a run to use, in one line: not a run at all
    (with the runs below it, if any), or (it holds checkpoints) a run whose saved config is gone."""
    last = ckpt_io.latest(run_dir / "checkpoints")
    if last is None:
        return f"{run_dir}: not a vaelab run directory (no .hydra/config.yaml){runs_hint(run_dir)}"
    return (f"{run_dir}: a run without its saved config, .hydra/config.yaml (deleted or moved?); each checkpoint "
            f"keeps a copy, the 'config' entry of {last}: written back as {run_dir / '.hydra' / 'config.yaml'}"
            f"{'' if (run_dir / '.hydra').is_dir() else ' (a folder to make first)'}, it makes the run usable again "
            f"(a relative data.root in it is relative to the folder the run began in)")


def runs_hint(folder: Path) -> str:
    """For a path given where a run is wanted: '; <the runs below it>, give one of them, e.g.
    <the first>' (outputs/, outputs/multirun/, a sweep, a name folder), '; it is in the run
    <RUN>, give that' (RUN/checkpoints, RUN/.hydra, RUN/checkpoints/last.pt), or ''."""
    inside = ckpt_io.enclosing_run(folder)
    if inside is not None:  # (absolute: `last.pt` or `.` given from inside RUN/checkpoints)
        return f"; it is in the run {inside}, give that"

    # a sweep's jobs are 1 below it, outputs/multirun/NAME/TIME/JOB 4 below outputs/
    runs = sorted(p.parents[1] for depth in range(1, 5)
                  for p in folder.glob("/".join(["*"] * depth) + "/.hydra/config.yaml")) if folder.is_dir() else []
    if not runs:
        return ""
    what = "a sweep's folder: it holds" if (folder / "multirun.yaml").is_file() else "it holds"
    more = "" if all(r.parent == folder for r in runs) else " below it"
    return (f"; {what} {len(runs)} run{'s' * (len(runs) != 1)}{more}, give "
            f"{'one of them' if len(runs) > 1 else 'it'}, e.g. {runs[0]}")


def pin_environment(run_dir: str | Path, cfg) -> list[str]:
    """Write the values that RUN_DIR/.hydra/config.yaml takes from the environment
    (`${oc.env:...}`, e.g. data.root from VAELAB_DATA) into it as they were for this run, so that
    `reproduce` and `resume` in another shell read the same data. Returns the keys pinned.

    Hydra saves the config unresolved; only environment reads are pinned, other interpolations
    stay as written."""
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if not path.is_file():
        return []
    raw = OmegaConf.load(path)
    pinned: list[str] = []

    def walk(node, prefix: str) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            elif isinstance(v, str) and "${oc.env:" in v:
                OmegaConf.update(raw, key, OmegaConf.select(cfg, key), merge=False)
                pinned.append(key)

    walk(OmegaConf.to_container(raw, resolve=False), "")
    # data.root='~/mnist' (or VAELAB_DATA=~/mnist): the home of this shell, not of the one, the user or the
    # node that evaluates, resumes or reproduces the run (a relative root is read from the launch folder)
    root = OmegaConf.select(raw, "data.root")
    if isinstance(root, str) and root.startswith("~") and os.path.expanduser(root) != root:
        OmegaConf.update(raw, "data.root", os.path.expanduser(root), merge=False)
        pinned = [*pinned, "data.root"] if "data.root" not in pinned else pinned
    if pinned:
        ckpt_io.write_text_atomic(path, OmegaConf.to_yaml(raw))
    return pinned


# --- final metrics ------------------------------------------------------------------------


# The exit status of a training process that a stop ended: vaelab's own (130), or the signal's
# where it came before vaelab's handlers were set.
_STOPPED = (130, -signal.SIGINT, -signal.SIGTERM, -signal.SIGHUP)


class ReproductionStopped(WorkflowError):
    """The reproduction's training was stopped (Ctrl-C, SIGTERM, SIGHUP): not an error, exit 130."""


def _run_child(cmd: list[str], stops: list | None = None, **kwargs) -> int:
    """Run a vaelab-train process to its end; its exit status. It shares this process's group, so
    what the terminal sends (Ctrl-C, Ctrl-Z, Ctrl-\\, a hang-up) reaches it as it reaches this
    process; a Ctrl-C stops it as any run (it finishes its step and saves last.pt), where
    subprocess.run killed it 0.25 s later. What is sent to this process alone is passed on: a
    SIGTERM (kill, a batch system), and a SIGINT while this process is not in its terminal's
    foreground (no terminal: kill -INT, a notebook's interrupt; a kill -INT to it in the
    foreground cannot be told from the terminal's Ctrl-C, and is not). The first such SIGINT goes
    on as a SIGTERM, 0.25 s later: one sent to the whole group (`timeout -s INT`, kill -INT -PGID)
    has reached the child too, and a second SIGINT is a second Ctrl-C, which stops a run without
    saving; a SIGTERM after a Ctrl-C is the same stop. A SIGINT within 1 s of the first stop is
    that stop again (`timeout` sends one to this process, then one to its group); one after that
    goes on as itself, a second Ctrl-C. A signal this process was started ignoring (nohup, a
    background job) stays ignored. `stops`: each stop signal this process had is appended to it."""
    child = subprocess.Popen(cmd, **kwargs)
    stopped_at = None  # when the first stop signal came

    def pass_on(signum, frame):
        nonlocal stopped_at
        after_hangup(signum)  # (a closed terminal: this process waits on, without it)
        if stops is not None:
            stops.append(signum)
        first = stopped_at is None
        if first:
            stopped_at = time.monotonic()
        if signum == signal.SIGINT:
            if _terminal_sends_to_us():  # (the terminal's reached the child too)
                return
            if first:
                time.sleep(0.25)  # (a SIGINT to the group reaches the child first, whatever the scheduler does)
                signum = signal.SIGTERM
            elif time.monotonic() - stopped_at < 1.0:
                return
        child.send_signal(signum)  # (a hang-up the child had too: the same stop, twice)

    handlers = {s: signal.signal(s, pass_on) for s in (signal.SIGINT, *STOP_SIGNALS)
                if signal.getsignal(s) is not signal.SIG_IGN}
    try:
        return child.wait()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def _terminal_sends_to_us() -> bool:
    """Whether this process's group is its terminal's foreground group (a Ctrl-C there reaches
    every process of the group); False without a terminal."""
    try:
        with open("/dev/tty") as tty:
            return os.tcgetpgrp(tty.fileno()) == os.getpgrp()
    except OSError:
        return False


def final_metrics(run_dir: str | Path) -> dict:
    """metrics.json, plus the scalars of eval.json (the automatic test-split eval) as test_*."""
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.is_file():
        try:
            ckpt_io.check_not_in_use(run_dir)
        except ckpt_io.CheckpointError:  # starting or carrying it on would be a second process on it
            raise WorkflowError(f"{run_dir}: the run has not finished, another process is training it now; "
                                f"try again once it has") from None
        state, _, stopped = ckpt_io.run_state(run_dir)
        if state == "diverged":  # carried on, it would replay the same steps to the same blow-up
            raise WorkflowError(f"{run_dir}: the run diverged ({(stopped or {}).get('reason', 'non-finite loss')}), "
                                f"so it has no final metrics to compare")
        cmd = ckpt_io.carry_on(run_dir)  # (vaelab resume, or with no checkpoint vaelab-train from the config)
        how = (f"carry it on with: {cmd}" if cmd.startswith("vaelab resume ")
               else f"it has no checkpoint to carry on from; start it again with: {cmd}")
        raise WorkflowError(f"{run_dir}: no metrics.json, the run has not finished ({how})")
    metrics = ckpt_io.read_json(path)
    if metrics is None:  # (a truncated or hand-edited file: json's or a list's traceback)
        raise WorkflowError(f"{path}: not a JSON object of metrics (damaged?); the run's numbers cannot be "
                            f"compared (delete it, then {ckpt_io.carry_on(run_dir)} writes it again)")
    ev = run_dir / "eval.json"
    if ev.is_file():
        got = ckpt_io.read_json(ev)
        if got is None:
            raise WorkflowError(f"{ev}: not a JSON object of test numbers (damaged?); the run's numbers cannot be "
                                f"compared (vaelab eval {shlex.quote(str(run_dir))} writes it again)")
        metrics.update({f"test_{k}": v for k, v in got.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return metrics


def _same(a, b, rtol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if rtol and isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=rtol)
    return a == b  # floats from json round-trip exactly: == means identical to the bit


def differing_keys(original: dict, new: dict, rtol: float = 0.0) -> list[str]:
    """Metrics whose values differ (a metric present on one side only counts as differing)."""
    keys = [k for k in {**original, **new} if not is_timing(k)]
    return [k for k in keys if k not in original or k not in new or not _same(original[k], new[k], rtol)]


def side_by_side(original: dict, new: dict, rtol: float = 0.0) -> str:
    """One line per metric: name, original value, new value, and whether they agree."""
    diff = set(differing_keys(original, new, rtol))
    rows = [("metric", "original", "reproduction", "")]
    for k in {**original, **new}:
        a, b = original.get(k, "-"), new.get(k, "-")
        mark = "timing, ignored" if is_timing(k) else ("DIFFERENT" if k in diff else "same")
        rows.append((k, repr(a) if isinstance(a, float) else str(a), repr(b) if isinstance(b, float) else str(b),
                     mark))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}".rstrip()
                     for r in rows)


# --- vaelab reproduce -----------------------------------------------------------------------


def add_reproduce_arguments(p) -> None:
    from vaelab.evaluate_run import folder_name, non_negative_float, out_path, run_folder

    p.add_argument("run_dir", metavar="RUN_DIR", type=run_folder,
                   help="a finished run (a folder holding .hydra/config.yaml)")
    p.add_argument("--out", metavar="DIR", type=out_path, help="the new run directory "
                   "(default: outputs/runs/<name>/<timestamp>, like vaelab-train)")
    p.add_argument("--data-root", metavar="DIR", type=folder_name,
                   help="the folder holding MNIST/raw/, where the run's data.root no longer has it (moved, "
                        "another machine); the reproduction records it in its config")
    p.add_argument("--rtol", type=non_negative_float, default=0.0,
                   help="relative tolerance for the comparison (default 0: identical to the bit, which "
                        "holds on CPU; a GPU run that is not bit-reproducible needs one, see the README)")


def _new_run_dir(name: str) -> Path:
    base = Path("outputs") / "runs" / name / time.strftime("%Y-%m-%d_%H-%M-%S")
    out, n = base, 1
    while out.exists():  # two runs in the same second
        out, n = base.with_name(f"{base.name}_{n}"), n + 1
    return out.resolve()


def _launch_cwd(run_dir: Path) -> Path:
    """The directory the original run was started from (relative paths such as
    data.root=../shared/data mean what they meant then); the current one if unknown."""
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        cwd = (yaml.safe_load(hydra_yaml.read_text()) or {}).get("hydra", {}).get("runtime", {}).get("cwd")
        if cwd and Path(cwd).is_dir():
            return Path(cwd)
    return Path.cwd()


def _later_eval(run_dir: Path) -> str:
    """'' if RUN_DIR/eval.json is what the run's own end-of-training evaluation makes (which a
    reproduction makes again), else the settings it was made with instead."""
    ev = ckpt_io.read_json(run_dir / "eval.json")
    if ev is None:
        return ""
    cfg = load_run_config(run_config_path(run_dir), here=False)
    return eval_settings(ev, cfg.trainer, (ckpt_io.read_json(run_dir / "metrics.json") or {}).get("epochs"))


def _trained_otherwise(ck: dict, cfg) -> list[str]:
    """The settings a run's checkpoint trained with that its saved config `cfg` gives another
    value, as 'optim.lr=0.0001 (its config: 0.001)': `vaelab resume` writes a change into the
    config, train() from Python carrying a run on under another config does not. Those that
    change no number (how long, what is logged) and where and how it ran are left out."""
    return [f"{key}={'left out: ' if left else ''}{_as_text(trained)} (its config: {_as_text(now)})"
            for key, trained, now, left in _differences(ck, cfg)]


def _differences(ck: dict, cfg):
    """(key, the checkpoint's value, cfg's, left_out) for each setting that changes the numbers
    where the two differ (_trained_otherwise). left_out: an argument of a model of one's own that
    the checkpoint's config leaves out; its value there is the constructor's default."""
    trained_cfg = ck.get("config") or {}
    had = dict(leaves(trained_cfg, empty=False))  # (model.kwargs: {}, then an argument given: no change of its own)
    for key, trained in had.items():
        if key in _CHANGE_NO_NUMBER | _NOT_REPLAYED | ckpt_io._NOT_THE_RUNS or key == "name":
            continue
        now = OmegaConf.select(cfg, key, default=None)
        now = getattr(now, "name", now)  # enum -> its name, as checkpoints store it
        if now is None and key.startswith("model.kwargs."):  # (a constructor's default: check_config_whole's)
            continue
        if not ckpt_io._same(now, trained):
            yield key, trained, (OmegaConf.to_container(now) if OmegaConf.is_config(now) else now), False
    kwargs = OmegaConf.select(cfg, "model.kwargs", default=None)
    if OmegaConf.is_dict(kwargs):  # (review: one added to the config by hand went unseen)
        for name, now in leaves(OmegaConf.to_container(kwargs, resolve=True), empty=False):
            key = f"model.kwargs.{name}"
            if any(key == k or key.startswith(f"{k}.") or k.startswith(f"{key}.") for k in had):
                continue
            target = OmegaConf.create(trained_cfg)
            default = ckpt_io._default_argument(target, name)
            if not ckpt_io._same(now, default):
                at = _left_out_at(key, _in_config(trained_cfg)) or key
                yield key, (default if at == key and key.count(".") == 2 else _left_out_said(
                    key, at, lambda k: ckpt_io._default_argument(target, k.removeprefix("model.kwargs.")))), now, True


def _unrecorded(run_dir: Path, ck: dict, was, given: set[str] = frozenset()) -> list[tuple]:
    """The settings the checkpoint trained with that the run's saved config `was` gives another
    value, with no record of a change at the checkpoint's step (_differences' tuples): a resume
    killed between writing the config and its record (kill -9), a config edited by hand, train()
    from Python carrying the run on under another config. The run carries on with the config's
    values, so each is a change from that step, said and recorded as one given on the command line
    (review: it trained on with it unsaid, and vaelab reproduce said "NOT reproduced"). `given`: the
    keys the command changes itself (and what is under them: model.kwargs={b:2} given whole)."""
    behind, here = _where_the_record_is(_resumes(run_dir), ck["state"]["step"])
    if behind:
        return []  # (from a checkpoint older than the last change: resume records that on its own)
    given = set(given) | here
    return [d for d in _differences(ck, was) if not any(d[0] == k or d[0].startswith(f"{k}.") for k in given)]


def _where_the_record_is(earlier: list[dict], step: int) -> tuple[bool, set[str]]:
    """Of a run's record of resumes, against a checkpoint at `step`: whether the checkpoint is
    older than the last change (last.pt lost), and the keys changed at its step."""
    behind = bool(earlier) and isinstance(earlier[-1].get("step"), int) and step < earlier[-1]["step"]
    return behind, {str(o).split("=", 1)[0].lstrip("+~") for r in earlier if r.get("step") == step
                    for o in r.get("overrides") or []}


def _said_unrecorded(unrecorded: list[tuple]) -> list[str]:
    def was(v, left):  # (_differences gives an entry of a dict argument as words already)
        return str(v) if left and isinstance(v, str) and v.startswith("left out") else \
            f"{'left out: ' if left else ''}{_as_text(v)}"
    return [f"{k}={_as_text(now)} (was {was(v, left)}, the checkpoint's: the saved config held {_as_text(now)} with "
            f"no record of the change)" for k, v, now, left in unrecorded]


def _own_model_changes(changed: list[tuple]) -> None:
    """Warn of changes (key, before, now) of the arguments of a model of one's own: vaelab's own
    settings that change what weights mean are refused (SAME_TO_RESUME); these cannot be told
    apart: one that keeps the shapes is taken, and said."""
    for k, v, now in changed:  # (another class with the same weights' names and shapes: taken unsaid, review)
        if k == "model._target_" and not ckpt_io._same(v, now) and not _same_class(v, now):
            log.warning("model._target_=%s (was %s): the weights trained so far carry on in another class; vaelab "
                        "checks only that their names and shapes fit: start a new run if it computes something "
                        "else", _as_text(now), _as_text(v))
    own = [f"{k}={_as_text(now)} (was {_as_text(v)})" for k, v, now in changed
           if k.startswith("model.kwargs.") and not ckpt_io._same(v, now)]
    if own:
        log.warning("%s: the weights trained so far carry on under %s; vaelab cannot tell what an argument of "
                    "a model of one's own changes (a change of shapes is refused): start a new run if it changes "
                    "what the weights mean", ", ".join(own), "it" if len(own) == 1 else "them")


def _left_out_at(key: str, present) -> str | None:
    """Of a model.kwargs.ARG... key, the outermost part that a config leaves out (model.kwargs.opts
    for model.kwargs.opts.a where opts was not given; the key itself where opts was, {} included),
    as `present(part)` tells; None where the config has the key."""
    parts = key.split(".")
    return next((".".join(parts[:i]) for i in range(3, len(parts) + 1) if not present(".".join(parts[:i]))), None)


def _left_out_said(key: str, at: str, default_of) -> str:
    """What a resume says of an own argument `key` the run left out (`at`: the outermost part left out,
    _left_out_at; default_of(k): the constructor's default of model.kwargs.k), after "was"."""
    if at != key:  # (an entry of a dict argument left out: given, it replaces the whole default, review)
        return f"left out with all of {at}, the constructor's {_as_text(default_of(at))}"
    if key.count(".") > 2:  # (an entry of a dict the run gave, {} too: no default of the entry's)
        return f"left out of {key.rsplit('.', 1)[0]}"
    return f"left out: {_as_text(default_of(key))}"


def _in_config(trained: dict):
    """present() for _left_out_at over a checkpoint's config (a plain dict)."""
    had = dict(leaves(trained))  # (an empty dict a leaf: opts={} given is not opts left out, review)
    return lambda part: part in had or any(k.startswith(f"{part}.") for k in had)


def _same_class(a, b) -> bool:
    """Whether two model._target_ paths name one class (vaelab.models.MLPVAE, vaelab.models.mlp.MLPVAE)."""
    from hydra._internal.utils import _locate

    try:
        return _locate(str(a)) is _locate(str(b))
    except Exception:  # noqa: BLE001 - (one that does not load: other checks say so)
        return False


def record_unrecorded(run_dir: Path, cfg):
    """For a sweep's job that `vaelab resume SWEEP_DIR` carries on from its saved config `cfg`
    (train._carry_on): what `vaelab resume JOB` does of its _unrecorded changes, as train()'s
    on_start (None where there are none)."""
    last = ckpt_io.latest(run_dir / "checkpoints")
    try:
        import torch

        ck = torch.load(last, map_location="cpu", weights_only=True, mmap=True) if last is not None else None
        unrecorded = _unrecorded(run_dir, ck, cfg) if isinstance(ck, dict) else []
    except Exception:  # noqa: BLE001 - (a checkpoint that does not load: train() says so)
        return None
    if not unrecorded:
        return None
    from vaelab.train_cli import override_value

    st = ck["state"]

    def on_start():
        record_resume(run_dir, {"epoch": st["epoch"] + 1, "step": st["step"],
                                "overrides": [f"{k}={override_value(now)}" for k, _, now, _ in unrecorded],
                                "before": {k: None if left else v for k, v, _, left in unrecorded},
                                **({"left_out": list(dict.fromkeys(_left_out_at(k, _in_config(ck["config"])) or k
                                                                   for k, *_, left in unrecorded if left))}
                                   if any(d[3] for d in unrecorded) else {})})
        log.info("%s carried on with %s from step %d, recorded in .hydra/%s", run_dir.name,
                 ", ".join(_said_unrecorded(unrecorded)), st["step"], RESUMES)
        _own_model_changes([(k, v, now) for k, v, now, _ in unrecorded])
    return on_start


def reproduce(run_dir: str | Path, out: str | Path | None = None, rtol: float = 0.0,
              data_root: str | Path | None = None) -> tuple[int, Path]:
    """Re-run `run_dir` from its saved config into a new directory; print both runs' metrics.
    Returns (exit code, new run directory): 0 if every metric agrees, 1 if any differs.
    data_root: where the data is now, if not where the run's config says."""
    from vaelab.data import DataError, fetch_mnist, mnist_train_size, val_size_error
    from vaelab.evaluate_run import data_root as run_data_root

    run_dir = Path(run_dir).resolve()
    cfg_path = run_config_path(run_dir)
    cfg = load_run_config(cfg_path)  # ConfigError, one line: not after a failed training
    last = ckpt_io.latest(run_dir / "checkpoints")
    otherwise = []
    if last is not None:  # a line lost from the config would re-run the run with a default in its place
        try:
            ck = ckpt_io.load(last)
        except ckpt_io.CheckpointError:  # (a damaged checkpoint: the re-run does not need it)
            ck = None
        if ck is not None:
            ckpt_io.check_config_whole(ck, last, cfg_path, cfg, overrides=False)
            otherwise = _trained_otherwise(ck, cfg)
    original = final_metrics(run_dir)  # before spending time on a run we could not compare
    root = Path(absolute(data_root)) if data_root else run_data_root(run_dir, cfg)
    fetch_mnist(root, cfg.data.download, how="give --data-root DIR")  # DataError, one line, before the new folder
    n = mnist_train_size(root)  # (too few images for the run's val split: name the data, not the setting)
    if n is not None and (why := val_size_error(cfg.data.val_size, n, root, saved=True, given=bool(data_root))):
        raise DataError(why)
    name = cfg.name  # (resolved: ${now:...} is the time of this reproduction, as in a new launch)
    new_dir = Path(out).resolve() if out else _new_run_dir(name)
    err = unwritable(new_dir)
    if err:
        raise WorkflowError(f"--out {new_dir}: {err}; give another --out" if out else
                            f"cannot make the run folder {new_dir}: {err}; give --out DIR")
    # (hidden files, a .gitkeep say, are no run: vaelab-train takes such a folder as hydra.run.dir too; review)
    if new_dir.exists() and any(not p.name.startswith(".") or p.name == ".hydra" for p in new_dir.iterdir()):
        raise WorkflowError(f"{new_dir}: already exists and is not empty; give another --out")
    inside = ckpt_io.enclosing_run(new_dir)
    if inside is not None:  # (vaelab-train refused it in its own words, naming hydra.run.dir, then this failed too)
        raise WorkflowError(f"--out {new_dir}: that folder is inside the run {inside}; give a folder outside it")
    from vaelab.train_cli import override_value

    cmd = [sys.executable, "-m", "vaelab.train", "--config-dir", str(run_dir / ".hydra"), "--config-name", "config",
           f"hydra.run.dir={override_value(str(new_dir))}"]
    if data_root:
        cmd.append(f"data.root={override_value(str(root))}")
    env = dict(os.environ)
    threads = original.get("torch_threads")
    if threads:  # CPU float sums depend on it (a joblib worker gets cpu_count / n_jobs threads)
        env["OMP_NUM_THREADS"] = str(threads)
    as_before = f" ({threads} CPU thread{'s' * (threads != 1)}, as the original)" if threads else ""
    print(f"reproducing {run_dir}\n        into {new_dir}{as_before}", flush=True)
    if otherwise:  # (train() from Python carried the run on under another config: it saves none, review)
        print(f"note: {run_dir.name}'s {last.name} trained with settings its saved config does not hold: "
              f"{', '.join(otherwise)} "
              f"(train() carried it on under a config it was given, which it does not save; vaelab resume "
              f"records a change): the reproduction runs the saved config, so its numbers need not match.",
              flush=True)
    changed = changed_part_way(run_dir)
    replay, why = _replay(run_dir) if changed else (None, "")
    if replay == []:  # (nothing to make at a step: changed lists no change that _replay leaves out, but safe)
        replay, changed = None, []
    if changed and replay is None:
        print(f"note: {run_dir.name} was carried on with changed settings: {', '.join(changed)}. Its config holds "
              f"the last values, which the reproduction uses from the start ({why}): its numbers need not "
              f"match.", flush=True)
    if replay is None:
        code = _run_child(cmd, cwd=_launch_cwd(run_dir), env=env)
    else:
        # (at the step the weights took them: a change merged into a resume from an older checkpoint's)
        made = [f"{o} (from epoch {c['epoch']}, after step {c['step']})" for c in replay for o in c["overrides"]
                if o.split("=", 1)[0] not in _CHANGE_NO_NUMBER]
        print(f"note: {run_dir.name} was carried on with changed settings: {', '.join(made)}; the reproduction "
              f"makes each change at the step it was made ({RESUMES}), with vaelab resume.", flush=True)
        code = _replayed(run_dir, new_dir, cmd, env, replay, root if data_root else None)
        changed = []  # (made where they were made: the numbers are to match)
    stopped = code in _STOPPED  # (negative: stopped while it started, before vaelab-train's own handlers, with
    # Python's traceback of the KeyboardInterrupt above)
    if stopped and not (new_dir.is_dir() and any(new_dir.iterdir())):
        raise ReproductionStopped(f"the reproduction was stopped before it began; nothing was written to {new_dir}")
    if stopped and ckpt_io.latest(new_dir / "checkpoints") is None:
        raise ReproductionStopped(f"the reproduction in {new_dir} was stopped before its first checkpoint; start "
                                  f"another: vaelab reproduce {shlex.quote(str(run_dir))} --out NEW_DIR"
                                  + (f" --data-root {shlex.quote(str(root))}" if data_root else ""))
    if stopped:  # as any run is, with its last.pt
        raise ReproductionStopped(f"the reproduction in {new_dir} was stopped; finish it with: "
                                  f"{ckpt_io.carry_on(new_dir)}; then set the two side by side: vaelab compare "
                                  f"{shlex.quote(str(run_dir))} {shlex.quote(str(new_dir))}")
    if code != 0:
        log_file = new_dir / "train.log"  # (a run refused at its start leaves no folder: its error is above)
        raise WorkflowError(f"the reproduction in {new_dir} failed (exit code {code})"
                            + (f"; see {log_file}" if log_file.is_file() else ""))
    try:
        return _report(run_dir, new_dir, original, rtol, changed), new_dir
    except KeyboardInterrupt:  # (the reproduction is whole: only the table was cut short)
        raise ReproductionStopped(f"interrupted; the reproduction in {new_dir} has finished, set the two side by "
                                  f"side with: vaelab compare {shlex.quote(str(run_dir))} "
                                  f"{shlex.quote(str(new_dir))}") from None


def _report(run_dir: Path, new_dir: Path, original: dict, rtol: float, changed: list[str]) -> int:
    """reproduce's comparison of the finished reproduction with the original: the table, and
    0 if every metric agrees, 1 if any differs."""
    new = final_metrics(new_dir)
    if "data_digest" not in original:  # a run from before 2026-11-26 recorded none: nothing to compare
        new.pop("data_digest", None)
    for key in [k for k in new if k.startswith("test_") and k.endswith("_se") and k not in original]:
        new.pop(key)  # (an eval.json from before 2026-11-27 has no standard errors)
    if "units" not in original:  # (a metrics.json from before 2026-11-27 does not say them: the config does)
        new.pop("units", None)
    by_hand = _later_eval(run_dir)
    # a run whose end-of-training evaluation did not run or finish (stopped in it, eval.json
    # deleted): the reproduction's test_* have nothing to be compared with
    unevaluated = not any(k.startswith("test_") for k in original) and any(k.startswith("test_") for k in new)
    # an evaluation by an older vaelab: its ELBO took one draw of z per image, and its sums were float32
    older = not unevaluated and "test_elbo_draws" in new and "test_elbo_draws" not in original
    k = original.get("test_k")  # (what it was made with: the run's trainer.final_eval_k, not eval's --k default)
    if by_hand or unevaluated or older:  # not what the run's own final evaluation makes now: test_* differ by design
        original = {k: v for k, v in original.items() if not k.startswith("test_")}
        new = {k: v for k, v in new.items() if not k.startswith("test_")}
    diff = differing_keys(original, new, rtol)
    if "data_digest" in diff:  # first: it explains the rest
        print("\nThe data differs from the original run's (data_digest: its images and labels, split as the run "
              "split them): its numbers cannot be expected to match.")
    print()
    print(side_by_side(original, new, rtol))
    if by_hand:
        print(f"(test_* not compared: {run_dir / 'eval.json'} is not the run's own final evaluation, which a "
              f"reproduction makes again; it was made with {by_hand})")
    elif unevaluated:
        print(f"(test_* not compared: {run_dir} has no eval.json, its end-of-training evaluation did not run to its "
              f"end; vaelab resume {shlex.quote(str(run_dir))} makes it)")
    elif older:
        print(f"(test_* not compared: {run_dir / 'eval.json'} was made by an older vaelab, whose test ELBO took one "
              f"draw of z per image; vaelab eval {shlex.quote(str(run_dir))}{f' --k {k}' if k else ''} makes it again "
              f"as the reproduction did)")
    if diff:
        print(f"\nNOT reproduced: {len(diff)} metric(s) differ ({', '.join(diff)})"
              + (f" beyond rtol={rtol}" if rtol else "") + (" (settings changed part-way: see the note above)"
                                                            if changed else ""))
        return 1
    print(f"\nreproduced: every metric is {'within rtol=' + str(rtol) if rtol else 'identical'}")
    return 0


def reproduce_command(args) -> int:
    from vaelab.data import DataError

    try:
        return reproduce(args.run_dir, args.out, args.rtol, args.data_root)[0]
    except ReproductionStopped as e:  # (exit 130: cli.main ignores late signals from here on)
        print(f"vaelab reproduce: {e}", file=sys.stderr)
        return 130
    except (WorkflowError, ConfigError, DataError) as e:
        print(f"vaelab reproduce: error: {e}", file=sys.stderr)
        return 2


# --- vaelab resume --------------------------------------------------------------------------


def add_resume_arguments(p) -> None:
    from vaelab.evaluate_run import _checked

    run_or_sweep = _checked(str, lambda v: v.strip() != "", "a run's or a sweep's folder, not empty (an unset shell "
                                                            "variable?)")
    p.add_argument("run_dir", metavar="RUN_DIR", type=run_or_sweep, help="a run directory holding "
                   "checkpoints/last.pt, or the folder of a stopped sweep (vaelab-train -m) to carry on as a whole")
    # default=[]: without one, argparse lists KEY=VALUE as required when RUN_DIR is missing
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", default=[],
                   help="values to change for the rest of the run, e.g. trainer.epochs=100")


def apply_overrides(cfg, overrides: list[str]) -> list:
    """Apply KEY=VALUE overrides (Hydra's grammar) to a typed config, in place. Returns the
    parsed overrides. Anything that is not a plain value change is a WorkflowError."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # OverrideParseException: vaelab-train's one line, naming the override
        raise WorkflowError(parse_error(overrides, e)) from None
    for o in parsed:
        line = o.input_line
        if o.is_hydra_override():
            raise WorkflowError(f"override '{line}': resume runs no Hydra app, hydra.* settings do not apply")
        if o.is_sweep_override():
            raise WorkflowError(f"override '{line}': resume continues one run; sweep with vaelab-train -m"
                                + comma_path_hint(line))
        if o.is_add() or o.is_delete() or o.is_force_add() or o.package is not None:
            # (+model.kwargs.width=3, as vaelab-train takes it: model.kwargs takes new keys without the +)
            plain = line.lstrip("+") if (o.is_add() or o.is_force_add()) and o.package is None and \
                o.key_or_group.startswith("model.kwargs.") else None
            raise WorkflowError(f"override '{line}': resume takes KEY=VALUE only"
                                + (f": give {plain}" if plain else ""))
        if not o.key_or_group:
            raise WorkflowError(no_key(line))
        first = next(f for f in parsed if f.key_or_group == o.key_or_group)
        if first is not o:  # (the last was kept, and both were logged and recorded as changes; review)
            raise WorkflowError(f"override '{line}': {o.key_or_group} is given already, as '{first.input_line}'; "
                                f"give it once")
        if (CONF_DIR / o.key_or_group).is_dir():  # model=mlp, experiment=seed: config groups
            raise WorkflowError(f"override '{line}': {o.key_or_group} is a config group, chosen when the run started; "
                                f"resume changes values (KEY=VALUE) only: for {line}, start a new run "
                                f"(vaelab-train {line} ...)")
        if o.key_or_group == "name":  # a later reproduce would land in outputs/runs/<new name>/
            raise WorkflowError(f"override '{line}': name names the folder the run is in (outputs/runs/<name>/..., "
                                f"a sweep's outputs/multirun/<name>/...), which resume keeps; leave it out")
        why = not_a_bool(o.key_or_group, o.value())  # (OmegaConf takes trainer.progress=2 for true)
        if why:
            raise WorkflowError(f"override '{line}': {why}")
        try:
            # merge=True as Hydra applies a KEY=VALUE: a dict value (model.kwargs={b:2}) updates the
            # keys it names and keeps the others, the same in resume as in vaelab-train
            OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
        except Exception as e:  # unknown key, wrong type, a group name given a value, ...
            raise WorkflowError(explain_override_error(e, line)) from None
    return parsed


# what a DataError tells `vaelab resume`'s user: "...; {how} to a folder holding MNIST/raw/"
RESUME_HOW = "resume with data.root=DIR set"


def _data_root_from_here(overrides: list[str]) -> list[str]:
    """A relative data.root given to `vaelab resume` now means a folder relative to where the
    command is typed, as any path in a shell does; it is saved as that absolute path. (The run's
    own relative data.root stays relative to where the run began: _to_carry_on.)"""
    from vaelab.train_cli import override_value

    out = []
    for text in overrides:
        if text.split("=", 1)[0].strip() == "data.root":
            try:
                value = OverridesParser.create().parse_overrides([text])[0].value()
            except Exception:  # apply_overrides reports it in vaelab-train's words
                value = None
            if isinstance(value, str) and value and "${" not in value and absolute(value) != value:  # (~, .., ./)
                text = f"data.root={override_value(absolute(value))}"
        out.append(text)
    return out


# Settings a reproduction does not put back to their values before a change: where the data and
# the machine are now (a run moved to a CPU machine is reproduced there).
_NOT_REPLAYED = {"data.root", "device", "trainer.progress"}


def _replay(run_dir: Path) -> tuple[list[dict] | None, str]:
    """The run's changes part-way (resumes.yaml) as a reproduction makes them, each at its step:
    [{"step": S, "overrides": [...], "before": {key: value}}]; or None and why that cannot be
    done (a change recorded without the value before it, by a vaelab from before 2026-11-27, or
    a change of the data itself)."""
    parser = OverridesParser.create()

    def no_change(line: str, key: str, before: dict) -> bool:  # (recorded by a vaelab from before 2026-11-28)
        try:
            return key in before and ckpt_io._same(before[key], parser.parse_overrides([line])[0].value())
        except Exception:  # noqa: BLE001 - not one override: a change, as recorded
            return False
    plan = []
    for r in _resumes(run_dir):
        before = r.get("before") if isinstance(r.get("before"), dict) else {}
        lines = [str(o) for o in r.get("overrides") or []]
        if r.get("data_digest") is not None:
            return None, "the data itself changed part-way"
        # A value the run had already (resume records none now) makes no change: a reproduction's resume
        # would record none for it either, which made() would count as a change not made (review)
        # (a key given twice takes its last value, as the resume did: optim.lr=5e-4 optim.lr=1e-3 is none)
        last = {o.split("=", 1)[0]: o for o in lines}
        changed = {k for k, o in last.items() if not no_change(o, k, before)}
        made_none = [o for o in lines if o.split("=", 1)[0] in changed]
        keys = [o.split("=", 1)[0] for o in made_none]
        # nothing to make at that step: only how long, where the data is, the device (review)
        nothing = bool(lines) and all(k in _NOT_REPLAYED or k in _CHANGE_NO_NUMBER for k in keys)
        lacks = f"{RESUMES} lacks the values before the changes, as a vaelab from before 2026-11-27 wrote it"
        if not isinstance(r.get("step"), int):
            if nothing:
                continue
            return None, lacks
        if not nothing and any(k not in before for k in keys if k not in _CHANGE_NO_NUMBER):
            return None, lacks
        change = {"epoch": r.get("epoch"), "step": r["step"],
                  "before": {} if nothing else {k: before[k] for k in keys if k in before and k not in _NOT_REPLAYED},
                  "overrides": [o for o, k in zip(made_none, keys) if k not in _NOT_REPLAYED]}
        left_out = [k for k in r.get("left_out") or [] if _under(change["before"], k)]  # (left out until then)
        if left_out:
            change["left_out"] = left_out
        # A change at or before an earlier one's step (a resume from an older checkpoint, after a kill
        # that lost the newer ones): the weights trained with both from there. (So a record of nothing
        # to make is kept for that: left out, the earlier change stayed at its later step, review.)
        merged = False
        while plan and plan[-1]["step"] >= change["step"]:
            undone, merged = plan.pop(), True
            left_out = [*undone.get("left_out", []),
                        *(k for k in change.get("left_out", []) if not _under(undone["before"], k))]
            change = {**{k: v for k, v in change.items() if k != "left_out"},
                      "before": {**change["before"], **undone["before"]},
                      "overrides": _later_wins([*undone["overrides"], *change["overrides"]]),
                      **({"left_out": left_out} if left_out else {})}
        if not nothing or merged:
            plan.append(change)
        elif plan:  # (its lines still go to the last part's resume: trainer.epochs=4 after an earlier part's
            plan[-1]["overrides"] = _later_wins([*plan[-1]["overrides"], *change["overrides"]])  # trainer.epochs=3
    return plan, ""                                                              # ended the reproduction at 3, review)


def _later_wins(lines: list[str]) -> list[str]:
    """Overrides of one resume made from several records: a key given twice keeps its later value
    (vaelab resume refuses a key given twice: a run resumed with trainer.epochs=2, then 3, failed to
    reproduce, review), with the + of an earlier one that added it."""
    out: dict[str, str] = {}
    for line in lines:
        key = line.split("=", 1)[0]
        bare = key.lstrip("+~")
        earlier = out.pop(bare, None)
        if earlier is not None and earlier.startswith("+") and not key.startswith(("+", "~")):
            line = f"+{line}"
        out[bare] = line
    return list(out.values())


# stopped.json's key in a reproduction stopped before it had made every change of its run's at its
# step: why `vaelab resume` of it is refused, and what to do instead
REPRODUCTION_PART_WAY = "reproduction_part_way"


def _replayed(run_dir: Path, new_dir: Path, cmd: list[str], env: dict, plan: list[dict], root: Path | None) -> int:
    """Train the reproduction as the run was: from its config with each change undone, up to the
    step of the first change (a process that stops there as a Ctrl-C would, train.STOP_AFTER_STEP),
    then `vaelab resume` with each change in turn, up to the next one's step, then to the end.
    The exit status of the last process, or of one that failed. A stop (Ctrl-C, SIGTERM, a
    hang-up) before every change is made is a ReproductionStopped that says to start another:
    the changes still to make need their steps, which `vaelab resume` by hand cannot give them."""
    from vaelab.errors import stop_signals_as_ctrl_c

    first = OmegaConf.load(run_config_path(run_dir))
    for change in reversed(plan):
        gone = change.get("left_out", ())  # (the outermost part the run left out: the constructor's default)
        for key, value in change["before"].items():
            if not any(key == k or key.startswith(f"{k}.") for k in gone):
                OmegaConf.update(first, key, value, merge=False)
        for key in gone:
            parent, leaf = key.rsplit(".", 1)
            node = OmegaConf.select(first, parent)
            if OmegaConf.is_dict(node) and leaf in node:
                del node[leaf]
    steps = [change["step"] for change in plan]
    stops = []  # (stop signals while a part ran)

    def made() -> int:
        """How many of the changes the reproduction has made: those its resumes.yaml records (each
        part's resume writes its record before it trains), and those with nothing to write."""
        records, count = len(_resumes(new_dir)), 0
        for change in plan:
            if change["overrides"]:
                if not records:
                    break
                records -= 1
            count += 1
        return count

    def part_way() -> ReproductionStopped:
        again = f" --data-root {shlex.quote(str(root))}" if root is not None else ""
        why = (f"the reproduction in {new_dir} was stopped before it had made all of {run_dir.name}'s changes at "
               f"their steps ({made()} of {len(plan)}); start another (not the vaelab resume its training printed: "
               f"that would train on without them): vaelab reproduce {shlex.quote(str(run_dir))} --out NEW_DIR{again}")
        # The folder says so too, for `vaelab resume NEW_DIR`, which trained on without the changes unsaid,
        # as its stopped.json advised (review)
        stopped = ckpt_io.read_json(new_dir / ckpt_io.STOPPED)
        if isinstance(stopped, dict):
            ckpt_io.write_text_atomic(new_dir / ckpt_io.STOPPED, json.dumps({
                **stopped, "reason": str(stopped.get("reason", "")).split("; continue with:")[0],
                REPRODUCTION_PART_WAY: why}))
        return ReproductionStopped(why)
    try:
        with stop_signals_as_ctrl_c():  # (a stop between two parts, when no child runs to pass it to)
            with tempfile.TemporaryDirectory(prefix="vaelab-reproduce-") as configs:
                if (run_dir / ".hydra" / "hydra.yaml").is_file():  # (a saved config, as vaelab-train reads
                    shutil.copy(run_dir / ".hydra" / "hydra.yaml", configs)  # one; train()'s from Python have none)
                (Path(configs) / "config.yaml").write_text(OmegaConf.to_yaml(first))
                at = cmd.index("--config-dir") + 1
                code = _run_child([*cmd[:at], configs, *cmd[at + 1:]], stops, cwd=_launch_cwd(run_dir),
                                  env={**env, STOP_AFTER_STEP: str(steps[0])})
            for i, change in enumerate(plan):
                reason = str((ckpt_io.read_json(new_dir / ckpt_io.STOPPED) or {}).get("reason", ""))
                planned = code == 0 or (code == 130 and reason.startswith(f"stopped by {STOP_AFTER_STEP}="))
                if stops or (not planned and code in _STOPPED):
                    if not (new_dir.is_dir() and any(new_dir.iterdir())):
                        return code  # (stopped before it began: reproduce says so, as of any run)
                    raise part_way()
                if not planned:
                    return code  # (a failure: reproduce says what it does of any run's)
                given = [*change["overrides"], *([f"data.root={root}"] if root is not None else [])]
                env_now = {k: v for k, v in env.items() if k != STOP_AFTER_STEP}
                if i + 1 < len(steps):
                    env_now[STOP_AFTER_STEP] = str(steps[i + 1])
                code = _run_child([sys.executable, "-m", "vaelab.cli", "resume", str(new_dir), *given], stops,
                                  cwd=_launch_cwd(run_dir), env=env_now)
    except KeyboardInterrupt:
        if not (new_dir.is_dir() and any(new_dir.iterdir())):
            raise  # (nothing written yet: cli says so)
        if made() < len(plan):
            raise part_way() from None
        code = 130  # (every change made: finished with vaelab resume, below, as any run's)
    if made() < len(plan) and (stops or code in _STOPPED):  # (stopped as its last part started)
        raise part_way()
    return code  # (a stop once every change is made is finished with vaelab resume, as any run's)


# .hydra/resumes.yaml: each `vaelab resume` that changed the config (and each resume that found
# other data), with the epoch it first trained in and the steps the run had taken before it. The
# config holds the last values only; a re-run from it uses them from the start, so `vaelab
# reproduce` says when a change can make its numbers differ.
RESUMES = "resumes.yaml"
# Settings that change no number of the run when changed part-way (where the data is, how long,
# what is logged and kept).
_CHANGE_NO_NUMBER = {"trainer.epochs", "data.root", "trainer.progress", "trainer.checkpoint_every", "trainer.log_every",
                     "logger.images_every", "logger.histograms", "logger.tensorboard", "trainer.final_eval",
                     "trainer.final_eval_k"}


# What the end-of-training evaluation that resume runs for a finished run takes from the command
# line (finish_evaluation): where the data is, whether to run it, and its number of importance samples.
_USED_BY_THE_EVALUATION = {"data.root", "trainer.final_eval", "trainer.final_eval_k"}


_LEFT_OUT = object()  # (OmegaConf.select's default for a key the config does not have)


def _under(keys, part: str) -> bool:
    """Whether one of `keys` is `part` or lies under it."""
    return any(k == part or k.startswith(f"{part}.") for k in keys)


def _changed_nothing(given: list[str]) -> str:
    """What resume of a finished run says of the training settings it was given."""
    return (f"{' '.join(map(shlex.quote, given))} changed nothing: {'they apply' if len(given) > 1 else 'it applies'} "
            f"to epochs still to train")


def _resumes(run_dir: Path) -> list[dict]:
    try:
        record = yaml.safe_load((run_dir / ".hydra" / RESUMES).read_text())
    except (OSError, yaml.YAMLError):
        return []
    return record if isinstance(record, list) else []


def record_resume(run_dir: Path, entry: dict) -> None:
    """Add an entry to the run's record of resumes (train(): the data changed at a resume)."""
    ckpt_io.write_text_atomic(run_dir / ".hydra" / RESUMES,
                              yaml.safe_dump([*_resumes(run_dir), entry], sort_keys=False))


def changed_part_way(run_dir: Path) -> list[str]:
    """The changes `vaelab resume` made part-way through the run that can change its numbers,
    as 'optim.lr=1e-4 (from epoch 3, after step 1876)'; other data as 'the data (digest A, then
    B) (from ...)'."""
    out = []
    for r in _resumes(run_dir):
        when = f"(from epoch {r.get('epoch')}, after step {r.get('step')})"
        for line in r.get("overrides") or []:  # (the device: a run moved to a CPU machine is reproduced there)
            if str(line).split("=", 1)[0] not in _CHANGE_NO_NUMBER | _NOT_REPLAYED:
                out.append(f"{line} {when}")
        digests = r.get("data_digest")
        if isinstance(digests, dict):
            out.append(f"the data (digest {digests.get('before')}, then {digests.get('now')}) {when}")
    return out


def _updated_files(run_dir: Path, parsed: list, cfg=None) -> tuple[str, str]:
    """The new texts of .hydra/config.yaml (same layout, new values) and .hydra/overrides.yaml
    (each key once: a new value replaces the old override of that key). cfg: the typed config
    the overrides were applied to, whose float settings keep a float given as an integer
    (loss.beta=4 is saved as 4.0, as a first launch saves it, not 4), and whose booleans are
    saved as true and false (not as given: 'yes', 0)."""
    cfg_path, ovr_path = run_dir / ".hydra" / "config.yaml", run_dir / ".hydra" / "overrides.yaml"
    raw = OmegaConf.load(cfg_path)
    for o in parsed:
        value = o.value()
        typed = OmegaConf.select(cfg, o.key_or_group) if cfg is not None else None
        if type(value) is int and isinstance(typed, float):
            value = float(value)
        elif isinstance(typed, bool):  # trainer.progress=yes (or 0) saved as false or true, as a first launch saves it
            value = typed
        OmegaConf.update(raw, o.key_or_group, value, merge=True)  # (as apply_overrides: a dict value merges)
    old = (yaml.safe_load(ovr_path.read_text()) or []) if ovr_path.is_file() else []
    new_keys = {o.key_or_group for o in parsed}
    lines = [ln for ln in old if ln.split("=", 1)[0].lstrip("+~") not in new_keys] + [o.input_line for o in parsed]
    return OmegaConf.to_yaml(raw), yaml.safe_dump(lines, default_flow_style=False)


def resume(run_dir: str | Path, overrides: list[str] = ()) -> dict | None:
    """Carry on the run in `run_dir` from its last checkpoint; returns its final metrics, or
    None when it has already trained trainer.epochs epochs (then nothing is written)."""
    from vaelab.data import load_data

    run_dir = Path(run_dir)
    cfg_path = run_config_path(run_dir)
    for folder in (run_dir, run_dir / ".hydra", run_dir / "checkpoints"):
        if folder.is_dir() and not os.access(folder, os.W_OK):
            raise WorkflowError(f"{folder}: not writable; resume writes checkpoints, logs and the config there")
    ckpt_io.check_not_in_use(run_dir)  # before rewriting the config of a run another process trains
    part_way = (ckpt_io.read_json(run_dir / ckpt_io.STOPPED) or {}).get(REPRODUCTION_PART_WAY)
    if part_way:
        raise WorkflowError(f"{run_dir}: {part_way}")
    cfg = load_run_config(cfg_path, here=False)  # ConfigError, one line; its device=... may be overridden
    was = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False, enum_to_str=True))
    parsed = apply_overrides(cfg, _data_root_from_here(list(overrides)))
    validate(cfg)  # ConfigError, one line
    # Check the checkpoint and the data against the (new) config before anything is written.
    last = ckpt_io.latest(run_dir / "checkpoints")
    if last is None:
        stopped = ckpt_io.read_json(run_dir / ckpt_io.STOPPED) or {}
        again = ckpt_io.carry_on(run_dir)  # (with no checkpoint: vaelab-train from the saved config)
        if stopped.get("state") == "diverged":  # started again as it was, it would blow up at the same step
            reason = stopped.get("reason", "a non-finite loss").split(";")[0]
            # (the run's folder: its empty checkpoints/ is removed at such a stop, review)
            raise ckpt_io.CheckpointError(f"{run_dir}: no checkpoint, nothing to resume (the run "
                                          f"diverged before its first checkpoint: {reason}); start it anew, with "
                                          f"settings other than those that diverged, e.g. {again} "
                                          f"{ckpt_io.lower_lr(float(was.optim.lr))}")
        if (run_dir / "metrics.json").is_file():  # (again: a new run, in a new folder, with what this command set)
            given = " ".join(shlex.quote(o) for o in overrides)
            raise ckpt_io.CheckpointError(f"{run_dir / 'checkpoints'}: no checkpoint, nothing to resume (the run "
                                          f"finished, and its checkpoints have been deleted); train it anew in a "
                                          f"folder of its own with: {again}{' ' + given if given else ''}")
        raise ckpt_io.CheckpointError(f"{run_dir / 'checkpoints'}: no checkpoint, nothing to resume "
                                      f"(the run stopped before its first checkpoint; start it again with: {again})")

    # (torch: after the cheap checks)
    from vaelab.build import build_model
    from vaelab.train import check_data_to_resume, check_epochs_to_resume, train

    model = build_model(cfg)
    try:
        ck = ckpt_io.load(last)
        ckpt_io.check_finite(ck, last, model)
    except ckpt_io.CheckpointError as e:  # a damaged last.pt: say which checkpoint resume would take without it
        other = ckpt_io.furthest(p for p in last.parent.glob("*.pt") if p != last and p.is_file())
        if other is None:  # (review: the line said what was wrong and not what to do)
            again = f"vaelab-train --config-dir {shlex.quote(str(run_dir / '.hydra'))} --config-name config" + \
                "".join(f" {shlex.quote(o)}" for o in overrides)  # (what this command asked for goes with it)
            raise ckpt_io.CheckpointError(f"{e}; it is the run's only checkpoint: train the run again, in a folder "
                                          f"of its own, with {again}") from None
        raise ckpt_io.CheckpointError(f"{e}; to resume from the furthest trained other checkpoint, {other.name}, "
                                      f"move {last.name} out of {last.parent}") from None
    ckpt_io.check_resumable(ck, last, needs=("state",))  # (the rest only to train on, below)
    ckpt_io.check_config_whole(ck, last, cfg_path, cfg, given_now={o.key_or_group for o in parsed})
    ckpt_io.check_compatible(ck, model, last, cfg, ckpt_io.SAME_TO_RESUME)
    done = ck["state"]["epoch"]
    check_epochs_to_resume(ck["state"], cfg.trainer.epochs)  # ConfigError, one line, before anything is written
    metrics = ckpt_io.read_json(run_dir / "metrics.json")
    if done > cfg.trainer.epochs and metrics is None:  # a stop between epochs: it has trained more than asked
        raise ConfigError(f"trainer.epochs={cfg.trainer.epochs}: the run has trained {n_epochs(done)} already; "
                          f"give trainer.epochs={done} to end it there (its final metrics and evaluation), or more "
                          f"to go on")
    # The run's config, overrides and record of resumes as this command changes them, written once
    # what it runs has passed its own checks (a refusal, or a failure before, leaves them as they were)
    files, own_changes, said, changes = {}, [], [], []
    earlier = _resumes(run_dir)
    st = ck["state"]
    behind, here = _where_the_record_is(earlier, st["step"])
    unrecorded = _unrecorded(run_dir, ck, was, {o.key_or_group for o in parsed})
    trained_with = dict(leaves(ck.get("config") or {}))
    if parsed or unrecorded:
        from vaelab.train_cli import override_value

        if parsed:
            cfg_text, ovr_text = _updated_files(run_dir, parsed, cfg)
            files = {cfg_path: cfg_text, run_dir / ".hydra" / "overrides.yaml": ovr_text}
        # (epoch: the 1-based epoch the change first trains in; step: how many steps ran before it)
        # before: each changed setting's value until then, which `vaelab reproduce` trains with up to
        # that step: the checkpoint's, where it has the key (the config's may be one never trained with)
        before = {o.key_or_group: OmegaConf.select(was, o.key_or_group) for o in parsed}
        before = {k: trained_with[k] if k in trained_with and k not in here and not behind else
                  OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in before.items()}
        # a model.kwargs argument the run left out (the constructor's default trained): null in `before`,
        # which a reproduction gave the constructor instead of leaving it out (review: a TypeError); left
        # out as the checkpoint trained, where it can tell (the config may hold one added by hand, review)
        in_checkpoint = _in_config(ck.get("config") or {})

        def in_was(part: str) -> bool:
            return OmegaConf.select(was, part, default=_LEFT_OUT) is not _LEFT_OUT
        # (what the part left out was: the outermost, which the reproduction leaves out whole)
        gone = {k: _left_out_at(k, in_was if not ck.get("config") or behind or k in here else in_checkpoint)
                for k in before if k.startswith("model.kwargs.")}
        absent = [k for k, at in gone.items() if at is not None]
        before.update({k: None for k in absent})

        def value_now(key):
            v = OmegaConf.select(cfg, key)
            return OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
        # (a value the run had already, optim.lr=0.001 given again, is no change: it was recorded, and
        # vaelab reproduce stopped and resumed at its step for nothing, review)
        changes = [o for o in parsed if not ckpt_io._same(before[o.key_or_group], value_now(o.key_or_group))]
        absent = [k for k in absent if k in {o.key_or_group for o in changes}]

        def default_of(key: str):
            return ckpt_io._default_argument(was, key.removeprefix("model.kwargs."))

        def left_out_was(key: str):  # (the words, or a top-level argument's default, which the warning compares)
            at = gone[key]
            return default_of(key) if at == key and key.count(".") == 2 else _left_out_said(key, at, default_of)
        said = [f"{o.key_or_group}={_as_text(value_now(o.key_or_group))} (was "
                + (f"{_left_out_said(o.key_or_group, gone[o.key_or_group], default_of)})" if o.key_or_group in absent
                   else f"{_as_text(before[o.key_or_group])})") for o in changes]
        said += _said_unrecorded(unrecorded)
        absent = [gone[k] for k in absent]
        absent += [_left_out_at(k, in_checkpoint) or k for k, *_, left in unrecorded if left]
        absent = list(dict.fromkeys(absent))
        record = [*earlier, {"epoch": st["epoch"] + 1, "step": st["step"],
                             "overrides": [o.input_line for o in changes]
                             + [f"{k}={override_value(now)}" for k, _, now, _ in unrecorded],
                             "before": {**{o.key_or_group: before[o.key_or_group] for o in changes},
                                        **{k: None if left else v for k, v, _, left in unrecorded}},
                             **({"left_out": absent} if absent else {})}]
        if changes or unrecorded:
            files[run_dir / ".hydra" / RESUMES] = yaml.safe_dump(record, sort_keys=False)
        for k, v in before.items():
            if k in gone and gone[k] is not None:  # (left out until now: the constructor's default, or words)
                v = left_out_was(k)
            own_changes.append((k, v, value_now(k)))
        own_changes += [(k, v, now) for k, v, now, _ in unrecorded]
    if not changes and behind:
        # From a checkpoint older than the last change (last.pt lost): its steps trained with that
        # change from here on, which the record says for `vaelab reproduce`
        files[run_dir / ".hydra" / RESUMES] = yaml.safe_dump(
            [*earlier, {"epoch": st["epoch"] + 1, "step": st["step"], "overrides": [], "before": {}}], sort_keys=False)

    def write_config():
        for path, text in files.items():
            ckpt_io.write_text_atomic(path, text)
        if said:  # (the resume's one line said where it carried on from, not with what: review)
            log.info("carried on with %s from step %d, recorded in .hydra/%s", ", ".join(said), ck["state"]["step"],
                     RESUMES)
        _own_model_changes(own_changes)

    # (no metrics.json: killed between its last checkpoint and its final numbers, which train() writes)
    if done >= cfg.trainer.epochs and not ck["state"].get("pos") and metrics is not None:
        trained = (f"all {n_epochs(done)} of trainer.epochs={done}" if done == cfg.trainer.epochs
                   else f"{n_epochs(done)}, more than trainer.epochs={cfg.trainer.epochs}")
        missing = []
        try:  # the evaluation reads the saved config: the lines it lacks that this command gives go in first
            ckpt_io.check_config_whole(ck, last, cfg_path, load_run_config(cfg_path, here=False))
        except ConfigError:  # (this command's check above passed: the settings given put it right)
            have = dict(leaves(OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False)))
            # only those (not there, or an empty dict: model.kwargs={opts: ...}); the others are changes,
            # written below or not at all
            missing = [o for o in parsed if have.get(o.key_or_group, {}) == {}]
            ckpt_io.write_text_atomic(cfg_path, _updated_files(run_dir, missing, cfg)[0])
        result = finish_evaluation(run_dir, cfg, say=lambda m: print(f"vaelab resume: {m}", file=sys.stderr),
                                   how=RESUME_HOW)
        if result is not None:
            # What the evaluation ran with goes into the run's config (compare then takes its numbers
            # as the run's own). A training setting changed nothing, no epoch being left: written, a
            # reproduction would train with it from the start, so it is not, and no resume is recorded.
            # Other data (the evaluation has warned): the run did not train on it, so its config keeps its own.
            trained_on = ck["state"].get("data_digest")  # (none in a checkpoint from before 2026-11-26)
            other_data = trained_on is not None and trained_on != result.get("data_digest")
            used = [o for o in parsed if o.key_or_group in _USED_BY_THE_EVALUATION
                    and not (other_data and o.key_or_group == "data.root")]
            if used:
                cfg_text, ovr_text = _updated_files(run_dir, used, cfg)
                ckpt_io.write_text_atomic(cfg_path, cfg_text)
                ckpt_io.write_text_atomic(run_dir / ".hydra" / "overrides.yaml", ovr_text)
            from vaelab.evaluate_run import format_table
            print(format_table(result, run_dir))
            rest = [o for o in parsed if o not in used and o not in missing and o.key_or_group != "trainer.epochs"
                    and not (other_data and o.key_or_group == "data.root")]
            unused = [o.input_line for o in rest if o.key_or_group not in ("device", "trainer.progress")]
            if unused:  # (to go on, the command takes device=... again: the config does not have it)
                print(f"vaelab resume: {_changed_nothing(unused)}; to go on: vaelab resume "
                      f"{shlex.quote(str(run_dir))} trainer.epochs={2 * done} "
                      + " ".join(shlex.quote(o.input_line) for o in rest), file=sys.stderr)
            return metrics
        # Training again would only log the final numbers a second time.
        if any(o.key_or_group == "data.root" for o in parsed):  # (review: "to go on" named data that is not there)
            from vaelab.data import fetch_mnist

            fetch_mnist(cfg.data.root, download=False, how=RESUME_HOW)  # DataError, one line (no download for this)
        given = [o for o in overrides if o.split("=", 1)[0] != "trainer.epochs"]
        k = next((o.split("=", 1)[1] for o in given if o.split("=", 1)[0] == "trainer.final_eval_k"), None)
        training = [o for o in given if not o.split("=", 1)[0].startswith("trainer.final_eval")]
        unused = f" (so {_changed_nothing(training)})" if training else ""
        again = (f"; another evaluation of it: vaelab eval {shlex.quote(str(run_dir))} --k {shlex.quote(k)}"
                 if k else "")
        print(f"vaelab resume: nothing to do, {run_dir} has trained {trained}{unused}; to go on: "
              f"vaelab resume {shlex.quote(str(run_dir))} trainer.epochs={2 * done}"
              + "".join(f" {shlex.quote(o)}" for o in given) + again, file=sys.stderr)
        return None
    ckpt_io.check_resumable(ck, last)
    _to_carry_on(cfg, run_dir)  # that is what this command is for, whatever the run said
    data = load_data(cfg.data.root, resolve_device(cfg.device), val_size=cfg.data.val_size, split_seed=cfg.data.split_seed,
                     binarize=cfg.data.binarize, download=cfg.data.download, saved=True,  # (val_size: checked above)
                     how=RESUME_HOW)  # DataError, one line
    check_data_to_resume(ck["state"], len(data.train))  # DataError, one line, before anything is written
    # (the files once train() has built the model and optimizer and checked the checkpoint;
    # the run's own CPU thread count, as a resumed train() takes)
    return train(cfg, run_dir, data, on_start=write_config)


def is_sweep_dir(path: Path) -> bool:
    """A folder Hydra made for a sweep (vaelab-train -m, hparams_search=optuna), not a run: its
    multirun.yaml, or job folders that a sweep made (Optuna's sweeper writes no multirun.yaml)."""
    if not path.is_dir() or (path / ".hydra" / "config.yaml").is_file():
        return False
    return (path / "multirun.yaml").is_file() or _jobs_sweeper(path) is not None


def _jobs_sweeper(path: Path) -> str | None:
    """The sweeper (its _target_) that made the job folders in `path`, from their .hydra/hydra.yaml."""
    for job in sorted(path.iterdir()):
        try:
            hc = (yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text()) or {}).get("hydra") or {}
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if str(hc.get("mode")).endswith("MULTIRUN"):
            return str((hc.get("sweeper") or {}).get("_target_", ""))
    return None


def sweep_command_line(sweep_dir: Path) -> tuple[Path | None, list[str], list[str]]:
    """From the multirun.yaml Hydra wrote in a sweep's folder: the folder the sweep was started
    in (None if it is gone), the vaelab-train arguments that launch it again into its own
    folder, and the sweep's task overrides. The arguments are the overrides as given (Hydra's
    included: launcher, job folder names; interpolations unresolved), the primary config unless
    it was vaelab's own, and hydra.sweep.dir pointing here. Hydra's basic sweeper only: a
    sweeper that draws its jobs (Optuna) would draw new ones."""
    from vaelab.config import CONF_DIR
    from vaelab.train_cli import override_value

    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        sweeper = _jobs_sweeper(sweep_dir) or ""
        if not sweeper.endswith(".BasicSweeper"):
            raise WorkflowError(_drawn(sweep_dir, sweeper))
        raise WorkflowError(f"{sweep_dir}: no multirun.yaml, where Hydra records the sweep's command line; carry "
                            f"its jobs on one by one with vaelab resume {shlex.quote(str(sweep_dir / 'JOB'))}")
    try:
        hc = OmegaConf.load(path).hydra
        given = OmegaConf.to_container(hc.overrides, resolve=False)  # ${now:...} resolves only in Hydra
        task, hydra_args = [str(o) for o in given["task"]], [str(o) for o in given["hydra"]]
        cwd, config_name = Path(str(hc.runtime.cwd)), str(hc.job.config_name)
        sweeper = str(OmegaConf.select(hc, "sweeper._target_", default=""))
        sources = OmegaConf.to_container(hc.runtime.config_sources)
    except Exception as e:  # unreadable, or not what Hydra writes
        raise WorkflowError(f"{path}: not a sweep record as Hydra writes it ({type(e).__name__}: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no detail'})") from None
    if not sweeper.endswith(".BasicSweeper"):
        raise WorkflowError(_drawn(sweep_dir, sweeper))
    flags = []
    file = config_name if config_name.endswith(".yaml") else f"{config_name}.yaml"  # (Hydra takes either: review)
    for source in sources:
        where = Path(str(source.get("path", "")))
        if source.get("provider") == "main" and where.resolve() != CONF_DIR.resolve():  # e.g. -cd RUN/.hydra
            if not (where / file).is_file():
                raise WorkflowError(f"{sweep_dir}: the sweep's primary config {where / file} is gone")
            flags += ["--config-path", str(where), "--config-name", config_name]
        elif source.get("provider") == "command-line":  # --config-dir: the user's own config groups
            flags += ["--config-dir", str(where)]
    if "--config-name" not in flags and config_name != "config":
        # --config-dir DIR --config-name NAME: the primary config is found in DIR, which Hydra lists as
        # a command-line source, vaelab's conf/ staying main; without the name the sweep relaunched
        # with vaelab's own config, other settings and no hydra.sweeper.params of NAME's (review)
        dirs = [Path(d) for f, d in zip(flags, flags[1:]) if f == "--config-dir"] + [CONF_DIR]
        if not any((Path(d) / file).is_file() for d in dirs):
            raise WorkflowError(f"{sweep_dir}: the sweep's primary config {file} is in none of "
                                f"{', '.join(str(d) for d in dirs[:-1]) or 'its config folders'} any more")
        flags += ["--config-name", config_name]
    # This launch leaves each job's .hydra/ to the job (train.hydra_main): a job that began keeps its own
    # config, with any change `vaelab resume JOB KEY=VALUE` made to it.
    ours = ("hydra.sweep.dir", "hydra.mode", "hydra.output_subdir", f"hydra.job.env_set.{SWEEP_CONTINUED}")
    keep = [o for o in hydra_args if o.split("=", 1)[0].lstrip("+~") not in ours]
    argv = ["-m", *flags, *task, *keep, "hydra.output_subdir=null", f"++hydra.job.env_set.{SWEEP_CONTINUED}=1",
            f"hydra.sweep.dir={override_value(str(sweep_dir.resolve()))}"]
    return (cwd if cwd.is_dir() else None), argv, task


def _drawn(sweep_dir: Path, sweeper: str) -> str:
    return (f"{sweep_dir}: its jobs were drawn by {sweeper.rsplit('.', 1)[-1] or 'another sweeper'}, which would "
            f"draw new ones; carry a stopped trial on with vaelab resume {shlex.quote(str(sweep_dir / 'TRIAL'))}")


def resume_sweep(sweep_dir: str | Path, overrides: list[str] = ()) -> int:
    """Launch the sweep in `sweep_dir` again into that folder (sweep_command_line), from where
    it was started. Its jobs (train.hydra_main) leave a run that finished or diverged as it is,
    carry on one that stopped as `vaelab resume JOB_DIR` would (its own saved config), and
    start the rest. Returns vaelab-train's exit status."""
    sweep_dir = Path(sweep_dir).resolve()
    if overrides:
        raise WorkflowError(f"override '{overrides[0]}': a sweep carries on with the values it began with; change "
                            f"one job's with vaelab resume {shlex.quote(str(sweep_dir / 'JOB'))} KEY=VALUE")
    ckpt_io.release_sweep(sweep_dir)  # (this process ran it, and a Ctrl-C stopped it)
    # Its launching process holds the sweep's lock while the jobs run. Taken here, before the
    # checks, and kept through the relaunch: two resumes begun at the same instant cannot both pass.
    if not ckpt_io.hold_sweep(sweep_dir):
        raise WorkflowError(f"{sweep_dir}: another process is running this sweep now; let it finish or stop it "
                            f"(Ctrl-C) first")
    try:
        return _relaunch(sweep_dir)
    finally:
        ckpt_io.release_sweep(sweep_dir)


def _relaunch(sweep_dir: Path) -> int:
    cwd, argv, task = sweep_command_line(sweep_dir)
    jobs = [d for d in sorted(sweep_dir.iterdir()) if (d / ".hydra" / "config.yaml").is_file()]
    for job in jobs:  # before anything is launched: Hydra would write into a running job's folder
        ckpt_io.check_not_in_use(job)
    _check_job_folders(jobs)
    if cwd is None:
        cwd = Path.cwd()
        print(f"vaelab resume: the sweep was started in a folder that is gone; relative paths in its command line "
              f"are read from here, {cwd}", file=sys.stderr)
    if jobs and not any(o.split("=", 1)[0].lstrip("+~") == "data.root" for o in task):
        # data.root came from VAELAB_DATA (conf/data/mnist.yaml), pinned in each job's config: jobs that
        # start now read the same folder, whatever this shell says.
        root = OmegaConf.select(OmegaConf.load(jobs[0] / ".hydra" / "config.yaml"), "data.root")
        if root is not None:
            os.environ["VAELAB_DATA"] = str(root)
    print(f"vaelab resume: carrying on the sweep {sweep_dir}, from {cwd}: jobs that finished or diverged stay as "
          f"they are, stopped ones continue from their last checkpoint, the others start", file=sys.stderr)
    os.chdir(cwd)  # relative paths in the overrides (data.root=../data) mean what they meant
    from vaelab.train_cli import launch

    return launch(argv, prog="vaelab resume", continuing=sweep_dir)


def _check_job_folders(jobs: list[Path]) -> None:
    """The relaunch finds a job's run only in the folder hydra.sweep.subdir names for it: a name
    that changes between launches (${now:...} in it) would start every job anew beside the old
    ones. Each job's .hydra/hydra.yaml holds subdir as given and the job's own values (num,
    override_dirname); a subdir that does not resolve from those alone is not checked."""
    from hydra.core.utils import setup_globals

    setup_globals()  # Hydra's resolvers (now, ...), as a launch has them
    importlib.import_module("vaelab.train")  # registers vaelab_job_name, which the default subdir uses

    for job in jobs:
        try:
            hc = OmegaConf.load(job / ".hydra" / "hydra.yaml")
            given = OmegaConf.select(hc, "hydra.sweep.subdir", default=None, throw_on_resolution_failure=False)
            raw = str(OmegaConf.to_container(hc.hydra.sweep, resolve=False)["subdir"])
            launcher = str(OmegaConf.select(hc, "hydra.launcher._target_", default=""))
        except Exception:  # no hydra.yaml, or not Hydra's
            continue
        # hydra.job.id resolves from the job's record; the basic and joblib launchers number jobs as
        # before, others (submitit: the SLURM job id) give the relaunch new ids
        if "hydra.job.id" in raw and not launcher.endswith((".BasicLauncher", ".JoblibLauncher")):
            now = f"holds the job id that {launcher.rsplit('.', 1)[-1]} gives anew at each launch"
        elif given is not None and (job.parent / str(given)).resolve() != job.resolve():
            now = f"now gives '{given}'"
        else:
            continue
        raise WorkflowError(f"{job}: the sweep names its job folders hydra.sweep.subdir={raw}, which {now}: launched "
                            f"again, its jobs would start anew in other folders; carry them on one by one with "
                            f"vaelab resume {shlex.quote(str(job.parent / 'JOB'))}")


def n_epochs(n: int) -> str:
    return f"{n} epoch{'s' * (n != 1)}"


def finish_evaluation(run_dir: Path, cfg, say, how: str = "give data.root=DIR", progress: bool | None = None,
                      job: str = "") -> dict | None:
    """Run the end-of-training evaluation (trainer.final_eval) of a finished run if a stop cut
    it short (no eval.json, or one of last.pt at an earlier epoch): `vaelab resume` of such a
    run has no training left, but its test numbers are missing. Returns its numbers (eval.json's),
    or None when there was nothing to run; `say` reports why it runs, in one line; `how` is what
    a DataError tells the user to do to point at the data. `progress` (default trainer.progress)
    and `job`: as train() has them (a sweep job's name; no bars in a joblib worker)."""
    missing = cfg.trainer.final_eval and ckpt_io.final_eval_missing(run_dir)
    if not missing:
        return None
    from vaelab.evaluate_run import RunDirError, data_root, evaluate_run
    from vaelab.train import logging_to

    if ckpt_io.latest(run_dir / "checkpoints") is None:  # its checkpoints were cleaned away since
        raise ckpt_io.CheckpointError(f"{run_dir / 'checkpoints'}: no checkpoint left to evaluate")
    say(f"{run_dir.name} has finished training, but its end-of-training evaluation did not finish "
        f"({missing}): evaluating it now")
    try:
        with logging_to(run_dir):  # (train.log ends with the evaluation's line, as a run's that was not cut short)
            return evaluate_run(run_dir, k=cfg.trainer.final_eval_k, device=cfg.device, checkpoint="last",
                                progress=cfg.trainer.progress if progress is None else progress,
                                data_root_override=data_root(run_dir, cfg), how=how, job=job)
    except RunDirError as e:  # (its wording is vaelab eval's)
        raise ckpt_io.CheckpointError(str(e)) from None


def carried_on_config(run_dir: Path):
    """A run's own saved config, set to continue from its checkpoints, with a relative data.root
    read from where the run began (`vaelab resume SWEEP_DIR`'s jobs)."""
    return _to_carry_on(load_run_config(run_config_path(run_dir)), run_dir)


def _to_carry_on(cfg, run_dir: Path):
    """cfg, set to continue the run in run_dir from its checkpoints, with a relative data.root
    (data.root=../shared/data) read from where the run began. In place; returns cfg."""
    from vaelab.evaluate_run import data_root

    cfg.trainer.resume = True
    cfg.data.root = absolute(data_root(run_dir, cfg))  # (~ too: a home folder, not a folder named ~)
    return cfg


def _not_written(run_dir: Path, overrides: list[str]) -> list[str]:
    """The overrides a resume stopped before it wrote them into the run's config (all of them
    where that cannot be told): the command that carries the run on must give them again."""
    if not overrides:
        return []
    try:
        cfg = load_run_config(run_config_path(run_dir), here=False)
        saved = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
        apply_overrides(cfg, _data_root_from_here(list(overrides)))
        return [] if OmegaConf.to_container(cfg, resolve=False, enum_to_str=True) == saved else overrides
    except Exception:  # noqa: BLE001 - (a config that does not load: as given)
        return overrides


def resume_command(args) -> int:
    from vaelab.data import DataError
    from vaelab.errors import Interrupted, NonFiniteLoss, SaveFailed, stop_signals_as_ctrl_c

    try:
        if is_sweep_dir(Path(args.run_dir)):
            return resume_sweep(args.run_dir, args.overrides)
        with stop_signals_as_ctrl_c():  # (the final evaluation of a run that has trained: as vaelab eval)
            resume(args.run_dir, args.overrides)
    except (WorkflowError, ConfigError, DataError, ckpt_io.CheckpointError) as e:
        print(f"vaelab resume: error: {e}", file=sys.stderr)
        return 2
    except (NonFiniteLoss, SaveFailed) as e:
        print(f"vaelab resume: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a disk that fills up or turns read-only mid-way
        if e.errno == errno.ENAMETOOLONG:  # (a path given too long: no write; cli.main says so)
            raise
        print(f"vaelab resume: error: cannot write {e.filename or args.run_dir}: {e.strerror or e}", file=sys.stderr)
        return 1
    except Interrupted:  # (train() has logged how it stopped, on the console and in train.log)
        return 130
    except KeyboardInterrupt:  # outside training: loading, or the final evaluation of a run that has trained
        run = shlex.quote(str(args.run_dir))
        again = _not_written(Path(args.run_dir), list(args.overrides))  # (its hint dropped them: review)
        print(f"vaelab resume: interrupted; {run} keeps what it had: vaelab resume {run}"
              f"{''.join(' ' + shlex.quote(o) for o in again)} carries it on", file=sys.stderr)
        return 130
    return 0


