"""`vaelab compare DIR...`: the runs under some folders as one table, and their curves.

    vaelab compare outputs/multirun --sort val_loss
    vaelab compare outputs/multirun/default/2026-01-01_12-00-00 --plot val_loss --out curves.png

A run is a folder holding .hydra/config.yaml or TensorBoard event files. Its row shows what
sets it apart, the config values that differ between the listed runs (the swept overrides of a
sweep; read from .hydra/config.yaml, so a resumed or reproduced run shows the config it ran
with), and its final metrics (metrics.json and the test_* numbers of eval.json; a run that has
not finished shows the last epoch values in its events), and its state: done, diverged or
interrupted or failed (from the stopped.json train() writes), or unfinished. Events are read with
TensorBoard's own EventAccumulator, so a resumed run's curves come out as TensorBoard shows
them; the x-axis is examples seen.
"""
from __future__ import annotations

import collections
import difflib
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from vaelab import checkpoint as ckpt_io
from vaelab.checkpoint import read_json, run_state
from vaelab.cli_errors import unwritable
from vaelab.config import MLP_TARGET, SIZES, as_trained, leaves

# Final metrics of an unfinished run, from the per-epoch scalars train() logs.
EPOCH_TAGS = {"epochs": "epoch/epoch", "train_loss": "epoch/train_loss", "val_loss": "epoch/val_loss",
              "val_recon": "epoch/val_recon", "val_kl": "epoch/val_kl", "active_units": "epoch/active_units"}
COLUMNS = ("epochs", "train_loss", "val_loss", "val_recon", "val_kl", "active_units", "test_nll_iwae")
_SKIP = {".hydra", "checkpoints", "samples"}


class CompareError(RuntimeError):
    """Nothing to compare, or an unknown metric. Its message is one line."""


@dataclass
class Run:
    path: Path
    name: str = ""
    config: dict = field(default_factory=dict)  # flattened .hydra/config.yaml: 'loss.beta' -> '4.0'
    metrics: dict = field(default_factory=dict)
    state: str = "unfinished"  # done, diverged (non-finite loss), interrupted, failed (a checkpoint not
    # written), or unfinished (running, killed)
    _scalars: dict | None = None
    _events: dict | None = None
    # the settings given as an interpolation, as written (config shows them resolved): model.latent_size's
    # ${latent_size} is no column of its own where every run has it
    interpolated: dict = field(default_factory=dict)

    def scalars(self, events_only: bool = False) -> dict:
        """{tag: [(examples seen, value), ...]} from the run's event files and its epochs.jsonl (the
        same numbers as epoch/* tags), or (events_only) the event files' alone."""
        if self._scalars is None:
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

            tb_log = logging.getLogger("tensorboard")  # (its INFO lines, "Directory watcher advancing ...")
            level = tb_log.level
            tb_log.setLevel(logging.ERROR)
            try:
                acc = EventAccumulator(str(self.path), size_guidance={"scalars": 0})
                acc.Reload()
            finally:
                tb_log.setLevel(level)
            self._events = {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
            self._scalars = dict(self._events)
            # epochs.jsonl's numbers too: the epochs trained with logger.tensorboard=false have no events;
            # and eval.json's, the evaluation's test/* point (the table showed test_nll_iwae, --plot had none)
            for t, points in {**_epoch_scalars(self.path), **_eval_scalars(self.path)}.items():
                if t in self._scalars:  # (in order of examples seen, one value each: the events' where both have one)
                    points = sorted({**dict(points), **dict(self._scalars[t])}.items())
                self._scalars[t] = points
        return self._events if events_only else self._scalars


def _epoch_lines(run: Path) -> list[dict]:
    """The lines of a run's epochs.jsonl that read as JSON objects with their examples_seen, in
    order; a line that cannot be read is left out."""
    try:  # (a byte that is no UTF-8, in a line edited by hand: that line is left out, not the file)
        lines = (run / ckpt_io.EPOCHS).read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            e = json.loads(line)
            e["examples_seen"] = int(e["examples_seen"])
        except (ValueError, KeyError, TypeError, OverflowError):  # (Infinity: OverflowError, NaN: ValueError)
            continue
        out.append(e)
    return out


def kl_history(run: Path) -> list[tuple[int, list[float], list[float] | None]]:
    """[(epoch, the validation KL of each latent dimension in nats, the variance across the
    validation images of each one's posterior mean, which active_units thresholds), ...] from a
    run's epochs.jsonl, for eval's kl_by_dim.png; lines without a whole, finite kl_per_dim are
    left out (and a variance that is not whole and finite is None)."""
    def numbers(v) -> list[float] | None:
        ok = isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                              and math.isfinite(x) for x in v)
        return [float(x) for x in v] if ok else None

    out = []
    for e in _epoch_lines(run):
        epoch, kl, var = e.get("epoch"), numbers(e.get("kl_per_dim")), numbers(e.get("mean_variance_per_dim"))
        if isinstance(epoch, int) and not isinstance(epoch, bool) and kl is not None:
            out.append((epoch, kl, var if var is not None and len(var) == len(kl) else None))
    return out


def _epoch_scalars(run: Path) -> dict:
    """{epoch/KEY: [(examples seen, value), ...]} of the numbers in a run's epochs.jsonl (the
    TensorBoard tags of the same numbers); a line that cannot be read is left out."""
    found: dict = {}
    for e in _epoch_lines(run):
        x = e["examples_seen"]
        for k, v in e.items():  # (a NaN or infinity, written by hand: train() stops before a non-finite epoch)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and \
                    k not in ("examples_seen", "step"):
                found.setdefault(f"epoch/{k}", []).append((x, float(v)))
    return found


# The numbers of eval.json that `vaelab eval` logs as test/KEY at the evaluated checkpoint's examples seen
EVAL_SCALARS = ("elbo", "recon", "kl", "nll_iwae", "bits_per_dim", "elbo_bits_per_dim", "active_units")


def _eval_scalars(run: Path) -> dict:
    """{test/KEY: [(examples seen, value)]} of a run's eval.json, as its evaluation logged them to
    TensorBoard (where logger.tensorboard=false, it logged none)."""
    ev = read_json(run / "eval.json") or {}
    x = ev.get("examples_seen")
    if not isinstance(x, int) or isinstance(x, bool):
        return {}
    return {f"test/{k}": [(x, float(ev[k]))] for k in EVAL_SCALARS
            if isinstance(ev.get(k), (int, float)) and not isinstance(ev[k], bool) and math.isfinite(ev[k])}


def _is_run(d: Path) -> bool:
    return (d / ".hydra" / "config.yaml").is_file() or any(p.name.startswith("events.out.tfevents.")
                                                            for p in d.iterdir() if p.is_file())


def _natural(name: str) -> list:
    """Sort key that reads the numbers in a name as numbers: latent_size=2 before latent_size=16,
    loss.beta=0.5 before loss.beta=4 (a sweep's folders, in the order of their values)."""
    number = r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"  # with its sign right after '=' (a value), not in a date
    return [[(0, float(part), "") if re.fullmatch(f"-?{number}", part) else (1, 0.0, part)
             for part in re.split(f"((?:(?<==)-)?{number})", name) if part], name]  # (name breaks ties: 2, 2.0)


def find_runs(dirs: list[str | Path]) -> list[Run]:
    """Every run folder at or under the given folders (not looking inside a run)."""
    found: dict[Path, None] = {}
    missing = [d for d in map(Path, dirs) if not d.exists()]
    if missing and len(missing) == len(dirs):
        raise CompareError(f"{missing[0]}: no such directory")
    for d in missing:  # (the README's `outputs/multirun outputs/runs`, where only sweeps have run yet)
        print(f"vaelab compare: warning: {d}: no such directory; left out", file=sys.stderr)
    for d in (d for d in map(Path, dirs) if d not in missing):
        if d.is_file():
            raise CompareError(f"{d}: a file; give a run's folder, or a folder of runs (outputs/multirun/...)")
        if not d.is_dir():  # (a socket, a FIFO: there, but not a folder)
            raise CompareError(f"{d}: no such directory")
        for root, subdirs, _ in _walk(d):
            root = Path(root)
            if _is_run(root):
                found[root.resolve()] = None
                subdirs.clear()
            else:
                subdirs[:] = sorted((s for s in subdirs if s not in _SKIP), key=_natural)
    if not found:
        raise CompareError(f"no runs under {', '.join(map(str, dirs))} "
                           f"(a run is a folder with .hydra/config.yaml or TensorBoard event files)")
    paths = list(found)
    top = Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0].parent
    return [_load(p, str(p.relative_to(top))) for p in paths]


def _walk(top: Path):
    """os.walk, and through the links in it to a run or a sweep (a folder of links to one's chosen
    runs listed none: review); not to other folders (a link to .. or /usr walked all of them,
    review), each folder once."""
    def followed(link: Path) -> bool:  # a run, or a sweep: its multirun.yaml, or runs right below it (Optuna's);
        real = os.path.realpath(link)    # not a folder above it (it holds the folder of links: all it holds)
        if Path(os.path.realpath(top)).is_relative_to(real):
            return False
        try:
            return _is_run(link) or (link / "multirun.yaml").is_file() or ckpt_io.holds_runs(link)
        except OSError:  # (unreadable: left out, as os.walk leaves out a folder it cannot list)
            return False
    seen = set()
    for root, subdirs, files in os.walk(top, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            subdirs.clear()
            continue
        seen.add(real)
        subdirs[:] = [s for s in subdirs if not os.path.islink(os.path.join(root, s)) or followed(Path(root, s))]
        yield root, subdirs, files


def _resolved(saved: dict) -> dict:
    """A saved config with the interpolations of its values resolved, as the run trained with them
    and its HParams row shows them (`optim.lr=${oc.decode:"1e-3"}` is 0.001; it was compared,
    and --where matched, as its text: review). ${now:...} and ${hydra:...} stay as written: they
    resolve as the run was launched, not now; so does one that does not resolve here."""
    try:
        conf = OmegaConf.create(saved)
    except Exception:  # noqa: BLE001 - (not a config OmegaConf reads: as written)
        return saved

    def value(key, v):
        if isinstance(v, dict):
            return {k: value(f"{key}.{k}", x) for k, x in v.items()}
        text = str(v)
        if "${" not in text or "${now:" in text or "${hydra:" in text:
            return v
        try:
            got = OmegaConf.select(conf, key, throw_on_resolution_failure=True)
            return OmegaConf.to_container(got, resolve=True) if OmegaConf.is_config(got) else got
        except Exception:  # noqa: BLE001 - (e.g. a resolver of the user's own, not registered here)
            return v
    return {k: value(str(k), v) for k, v in saved.items()}


def _load(path: Path, name: str) -> Run:
    run = Run(path, name)
    cfg = path / ".hydra" / "config.yaml"
    if cfg.is_file():
        try:
            saved = yaml.safe_load(cfg.read_text()) or {}
            if not isinstance(saved, dict):
                raise ValueError(f"a {type(saved).__name__}, not a mapping of settings")
            # (booleans as the config files, overrides and HParams write them: --where trainer.compile=true;
            # a setting added since the run trained, as it trained: loss.impl=torch, not today's default)
            trained = as_trained(saved)
            run.config = {k: str(v).lower() if isinstance(v, bool) else str(v)
                          for k, v in leaves(_resolved(trained), empty=False)}
            run.interpolated = {k: str(v) for k, v in leaves(trained, empty=False) if "${" in str(v)}
            size = run.config.get("model.size")
            if run.config.get("model._target_") == MLP_TARGET and run.config.get("model.hidden") == "None" and \
                    size in SIZES:  # the widths as built, as the HParams row has them: --where model.hidden=[256]
                run.config["model.hidden"] = str(SIZES[size])
            if run.config.get("model._target_") == MLP_TARGET:  # (saved before model.init: PyTorch's, as typed())
                run.config.setdefault("model.init", "torch")
        except (OSError, ValueError, yaml.YAMLError) as e:  # a hand-edited or damaged file: the other runs still
            why = " ".join(str(e).split())[:120]
            print(f"vaelab compare: warning: {cfg} cannot be read ({why}); its run's settings are left out",
                  file=sys.stderr)
    run.state, metrics, _ = run_state(path)
    if run.state == "done":
        run.metrics = metrics
    else:  # still running or stopped (maybe resumed after finishing): the last epoch scalars
        sc = run.scalars()
        run.metrics = {k: sc[t][-1][1] for k, t in EPOCH_TAGS.items() if sc.get(t)}
        for k in ("epochs", "active_units"):
            if k in run.metrics:
                run.metrics[k] = int(run.metrics[k])
    ev = read_json(path / "eval.json") or {}
    if run.state == "done" and ckpt_io.final_eval_missing(path) and run.config.get("trainer.final_eval") == "true":
        try:
            ckpt_io.check_not_in_use(path)
            run.state = "done (no eval)"  # a stop cut its end-of-training evaluation short: vaelab resume runs it
        except ckpt_io.CheckpointError:
            run.state = "evaluating"  # its process is at the end-of-training evaluation now
    run.metrics.update({f"test_{k}": v for k, v in ev.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})
    if ev and run.config:  # test numbers that are not the run's own final evaluation: say where they come from
        trainer = {"final_eval": run.config.get("trainer.final_eval", True),
                   "final_eval_k": run.config.get("trainer.final_eval_k")}
        made = eval_settings(ev, trainer, run.metrics.get("epochs"))
        if made:
            run.metrics["test_from"] = made
    return run


def eval_settings(ev: dict, trainer, epochs=None) -> str:
    """'' if an eval.json is what its run's own end-of-training evaluation makes (trainer.final_eval
    on: last.pt, k = trainer.final_eval_k, seed 0, of the run's final epoch `epochs`), else the
    settings it was made with instead (a later `vaelab eval`, or one made before the run was
    carried on further). `trainer`: the run's trainer config (a mapping)."""
    final_eval, k = trainer.get("final_eval", True), trainer.get("final_eval_k")
    made = {"checkpoint": Path(str(ev.get("checkpoint", ""))).name, "k": str(ev.get("k")), "seed": str(ev.get("seed"))}
    if ev.get("epoch") is not None:
        part = ev.get("in_epoch") if isinstance(ev.get("in_epoch"), dict) else {}
        # part-way through an epoch (a stopped run's last.pt): in epochs, as 1.84
        made["epoch"] = (f"{ev['epoch'] + part['images'] / part['of']:.2f}" if part.get("images") and part.get("of")
                         else str(ev["epoch"]))
    own = {"checkpoint": "last.pt", "k": str(k), "seed": "0"}
    if "epoch" in made:  # (an eval.json written before it recorded the epoch: not compared)
        own["epoch"] = made["epoch"] if epochs is None else str(epochs)
    ran = final_eval not in (False, "False", "false")
    return "" if made == own and ran else ", ".join(f"{k}={v}" for k, v in made.items())


def where(runs: list[Run], conditions: list[str]) -> list[Run]:
    """The runs whose setting, state or metric equals each KEY=VALUE (numbers as numbers:
    loss.beta=4 is 4.0; a metric to the decimals given, as the table shows it: val_loss=45.398
    takes 45.39818); CompareError for a condition that is not KEY=VALUE, names nothing a run has,
    or that no run left meets (with the values those runs have)."""
    kept = runs
    for cond in conditions:
        key, eq, want = cond.partition("=")
        if not eq or not key or key[-1] in "<>!":  # (val_loss>=110 read as the key 'val_loss>': no comparisons)
            raise CompareError(f"--where {cond}: give KEY=VALUE, e.g. --where loss.beta=4 or --where state=done"
                               + ("; --where keeps runs equal to a value (--sort orders them by one)"
                                  if any(c in cond for c in "<>!") else ""))
        metric = key not in ("state", "run") and not any(key in r.config for r in runs)

        def has(r: Run) -> str | float | None:
            if key in ("state", "run"):  # (run: the table's first column, the run's folder, as --sort takes it)
                return r.state if key == "state" else r.name
            return r.config.get(key, r.metrics.get(key))
        if not any(has(r) is not None for r in runs):
            if key in COLUMNS:  # (the table's own column: not misspelt, only not reached)
                raise CompareError(f"--where {cond}: no run has {key}{_not_yet(key, runs)}")
            settings = sorted({k for r in runs for k in r.config})
            close = difflib.get_close_matches(key, [*settings, "state", "run", *COLUMNS], n=1)
            raise CompareError(f"--where {cond}: no run has {key}" + (f" (did you mean {close[0]}?)" if close else "")
                               + "; give a setting (loss.beta), state, run or a metric (val_loss)")
        decimals = re.fullmatch(r"\s*[+-]?\d*\.(\d+)\s*", want)

        def same(v) -> bool:
            if v is None:
                return False
            try:
                if metric and decimals and isinstance(v, float):  # (the table's 45.398, the log's 45.3982)
                    return round(v, len(decimals.group(1))) == float(want)
                if math.isnan(float(v)):  # (a diverged run's nan, as the table shows it)
                    return want.strip().lower() == "nan"
                return float(v) == float(want)
            except (TypeError, ValueError):
                text = str(v)
                if text in ("true", "false"):  # a boolean setting, as saved configs write it
                    return _BOOLEAN_WORDS.get(want.strip().lower()) == text
                return text == want or _as_typed(text) == _as_typed(want)
        met = [r for r in kept if same(has(r))]
        if not met:
            left = " left" if len(kept) < len(runs) else ""
            raise CompareError(f"--where {cond}: no run has {key}={want}; the runs{left} "
                               f"{_values_here(key, [has(r) for r in kept])}")
        kept = met
    return kept


# A boolean setting as vaelab-train and OmegaConf take it (true, yes, on, 1; as Python writes it, True),
# as the saved configs write it (true, false)
_BOOLEAN_WORDS = {**dict.fromkeys(("true", "yes", "on", "y", "1"), "true"),
                  **dict.fromkeys(("false", "no", "off", "n", "0"), "false")}


def _as_typed(text: str):
    """A --where value or a run's setting, as text, in one form where the two are written
    differently: a list ([0.9,0.999] as [0.9, 0.999]) or null (None, as the table shows it). Other
    text stays as it is, its case too (a name 'True' is not the boolean)."""
    if text in ("None", "null", "~"):
        return None
    if text.startswith("["):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            pass
    return text


def _values_here(key: str, values: list) -> str:
    """What the runs have for a --where key, for its message ("have loss.beta 1.0 or 4.0"): the
    values, as the table shows them, or the range of a metric's many."""
    present = [v for v in values if v is not None]
    if not present:
        return f"have no {key}"
    numbers = [v for v in present if isinstance(v, float)]
    if len(numbers) == len(present) and len(set(numbers)) > 6:
        return f"have {key} from {_fmt(min(numbers))} to {_fmt(max(numbers))}"
    shown = sorted({_fmt(v) for v in present}, key=_natural)
    listed = shown if len(shown) <= 8 else [*shown[:7], f"{len(shown) - 7} other values"]
    return f"have {key} {', '.join(listed[:-1])}{' or ' if len(listed) > 1 else ''}{listed[-1]}"


def _not_yet(column: str, runs: list[Run]) -> str:
    """' yet (why)': why no run has a column of the table, where that can be said."""
    if column.startswith("test_"):
        return " yet (the test_* numbers come from eval.json, which none of them has: vaelab eval RUN makes it)"
    if not any(r.state.startswith("done") for r in runs):
        return " yet (none of them has finished an epoch)"
    return ""  # (finished runs without it: a metrics.json written by hand, or by another tool)


def sort_runs(runs: list[Run], metric: str, descending: bool = False) -> list[Run]:
    """The runs by a metric, or by a setting (loss.beta: a column of the table too); runs
    without a value last, either way."""
    if metric in ("run", "state"):  # the table's first and last columns: its folder name (as numbers sort), its state
        return sorted(runs, key=lambda r: _natural(r.name) if metric == "run" else (r.state, _natural(r.name)),
                      reverse=descending)
    known = sorted({k for r in runs for k, v in r.metrics.items() if isinstance(v, (int, float))})
    setting = metric not in known and metric not in COLUMNS and any(metric in r.config for r in runs)
    if metric not in known and metric not in COLUMNS and not setting:  # (a column no run reached sorts as missing)
        close = difflib.get_close_matches(metric, [*known, *COLUMNS, "run", "state", *{k for r in runs
                                                                                      for k in r.config}], n=1)
        raise CompareError(f"--sort {metric}: no run has that metric or setting"
                           + (f" (did you mean {close[0]}?)" if close else "") + "; metrics: "
                           f"{', '.join(known) or 'none yet (no run has finished an epoch)'}; or a setting, "
                           f"e.g. loss.beta, or run or state")

    def value(r: Run):  # a number, a list of them (model.hidden), or a setting's text (model.size=small)
        v = r.config.get(metric) if setting else r.metrics.get(metric)
        if v == "None":  # (a setting left null, model.hidden: no value, last either way)
            return None
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                pass
            try:  # [64, 32] after [64], not before it as text
                items = yaml.safe_load(v) if v.startswith("[") else None
            except yaml.YAMLError:
                items = None
            if isinstance(items, list) and all(isinstance(x, (int, float)) for x in items):
                return tuple(items)
            return v
        return v if isinstance(v, (int, float)) and not math.isnan(v) else None

    def rank(v) -> tuple:  # numbers, then lists, then texts
        return (1, v) if isinstance(v, tuple) else (2, v) if isinstance(v, str) else (0, v)
    values = [(value(r), r) for r in runs]
    ordered = sorted(((v, r) for v, r in values if v is not None), key=lambda vr: rank(vr[0]), reverse=descending)
    return [r for _, r in ordered] + [r for v, r in values if v is None]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):  # (a run that blew up: 8.409e+31, not 36 digits across the table)
        return "nan" if math.isnan(v) else f"{v:.3f}" if abs(v) < 1e9 else f"{v:.3e}"
    return str(v)


# Settings that change how a run talks, not what it computes: never a column of their own.
_NOT_A_DIFFERENCE = {"trainer.progress", "data.download"}


def _varying(runs: list[Run]) -> list[str]:
    """Config keys whose values are not the same in every run, in config order (keys that only some
    runs have, a model of one's own's, where the first run by name has them: the columns stay put
    whatever --sort orders the rows by). A run whose saved config is gone (no settings to read)
    makes no key differ: its row shows - under them."""
    known = sorted((r for r in runs if r.config), key=lambda r: r.name)
    keys = dict.fromkeys(k for r in known for k in r.config if k not in _NOT_A_DIFFERENCE)
    # (a setting every run derives alike from others, model.latent_size: ${latent_size}, varies with them:
    # theirs are the columns)
    derived = {k for k in keys if len({r.interpolated.get(k) for r in known}) == 1 and known[0].interpolated.get(k)}
    return [k for k in keys if len({r.config.get(k) for r in known}) > 1 and k not in derived]


def table(runs: list[Run], extra: list[str] = (), settings_of: list[Run] | None = None) -> str:
    """One row per run: its name, the config values that differ between runs (where none do, one
    run kept by --where say, those that differ between the runs of `settings_of`, all those found),
    its metrics."""
    varying = _varying(runs) or _varying(settings_of or [])
    metrics = [m for m in (*COLUMNS, *extra, "test_from") if any(m in r.metrics for r in runs)]
    metrics = list(dict.fromkeys(metrics))
    header = ["run", *varying, *metrics, "state"]
    rows = [[r.name, *(r.config.get(k, "-") for k in varying), *(_fmt(r.metrics.get(m)) for m in metrics),
             r.state] for r in runs]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    left = 1 + len(varying)  # text columns left-aligned, numbers right-aligned

    def line(cells):
        return "  ".join(f"{c:<{w}}" if i < left else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths)))
    out = [line(header), line(["-" * w for w in widths])]
    return "\n".join([*out, *(line(r).rstrip() for r in rows), *_units_note(runs, metrics)])


def leaves_out_mse_constant(name: str) -> bool:
    """Whether a metric (train_loss, a table column) or scalar (epoch/val_recon, a tag) is a
    training or validation likelihood term, which train() gives without the MSE decoder's
    Gaussian constant (vaelab eval's test_* and test/* include it; the KL has none)."""
    return not name.startswith(("test_", "test/")) and name.endswith(("loss", "recon"))


def _mse_constant_left_out() -> str:
    from vaelab.losses import MSE_NLL_CONST_PER_DIM  # (here: losses imports torch)

    return (f"leave out the Gaussian decoder's constant (add {784 * MSE_NLL_CONST_PER_DIM:.2f} nats for MNIST's "
            f"784 pixels)")


def _units_note(runs: list[Run], metrics: list[str]) -> list[str]:
    """A footnote when one table holds numbers in two units: train() leaves the MSE decoder's
    Gaussian constant out of train_loss and val_* (the seed's loss), vaelab eval puts it in."""
    if not any(r.config.get("loss.recon") == "mse" for r in runs):
        return []
    left_out = [m for m in metrics if leaves_out_mse_constant(m)]
    # (eval.json's likelihood terms; its KL, k, epoch, ... have no such constant)
    with_it = [m for m in metrics if m in ("test_elbo", "test_recon", "test_nll_iwae") or
               (m.startswith("test_") and m.endswith("bits_per_dim") and m != "test_kl_bits_per_dim")]
    notes = []
    if left_out:
        note = f"loss.recon=mse runs: {', '.join(left_out)} {_mse_constant_left_out()}"
        notes.append(note + (f"; {', '.join(with_it)} include{'s' * (len(with_it) == 1)} it" if with_it else ""))
    if any(r.config.get("loss.recon") == "bce" for r in runs) and (left_out or with_it):  # (review: one column, sorted)
        notes.append(f"{', '.join(left_out + with_it)} of loss.recon=bce and loss.recon=mse runs are of two "
                     f"likelihoods (a Bernoulli cross-entropy of the pixels; a Gaussian density of grey levels): "
                     f"compare runs of one kind")
    return notes


def image_path(out: str | Path, formats: list[str], example: str) -> Path:
    """Where an --out image will go, checked before any work: a file (not a folder) in a format
    of `formats` (no suffix means .png, as matplotlib does), in a folder that exists or can be
    made. ValueError with the one-line reason otherwise; `example` is a file name to suggest."""
    given, out = str(out), Path(out)
    if out.is_dir() or given.endswith(("/", os.sep)):
        raise ValueError(f"--out {given}: is a directory; give a file name such as {out / example}")
    if out.name.startswith(".") and out.name[1:].lower() in formats:  # '.png': a suffix and no name
        raise ValueError(f"--out {out}: no file name before '{out.name}'; give one such as "
                         f"{out.with_name(Path(example).stem + out.name)}")
    if out.suffix in ("", "."):  # 'curves' and 'curves.' both mean curves.png
        out = out.with_name(out.name.rstrip(".") + ".png")
    fmt = out.suffix[1:].lower()
    if fmt not in formats:
        raise ValueError(f"--out {out}: unknown image format '{fmt}'; allowed: {', '.join(sorted(formats))}")
    err = unwritable(out.parent)
    if err:
        raise ValueError(f"--out {out}: {err}")
    return out


def plot_path(out: str | Path, defaulted: bool = False) -> Path:
    """image_path for `vaelab compare --plot`: the formats matplotlib writes; not inside a run's
    own folders. `defaulted`: `out` is the default, not a --out the user gave."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    try:
        out = image_path(out, list(FigureCanvasAgg.get_supported_filetypes()), "curves.png")
    except ValueError as e:
        raise CompareError(str(e)) from None
    # (the default file is replaced, not written through, where it is a link: not the link's target)
    inside = None if defaulted and out.is_symlink() else ckpt_io.inside_run_folder(out)
    if inside:
        run, part = inside
        where = f"the plot's default file, {out} in the current folder, is" if defaulted else f"--out {out}:"
        raise CompareError(f"{where} inside {part}/ of the run {run}, which holds what its training and evaluation "
                           f"wrote; give --out a file outside it, e.g. {Path(os.path.dirname(run)) / 'curves.png'}")
    return out


def curves(runs: list[Run], tag: str) -> list[tuple[Run, str, list]]:
    """(run, full tag, points) for every run that has the scalar, also by its name in the table:
    val_loss means epoch/val_loss, test_nll_iwae test/nll_iwae (one point per evaluation)."""
    found = []
    names = (tag, f"epoch/{tag}", *([tag.replace("_", "/", 1)] if tag.startswith("test_") else []))
    for r in runs:
        sc = r.scalars()
        full = next((t for t in names if t in sc), None)
        if full is not None and sc[full]:
            found.append((r, full, sc[full]))
    if not found:
        tags = sorted({t for r in runs for t in r.scalars()})
        if not tags:
            events = any(next(r.path.glob("events.out.tfevents.*"), None) for r in runs)
            why = ("their event files hold none yet: a run that stopped before its first point, e.g. one that "
                   "diverged in its first steps" if events else
                   "no event files; logger.tensorboard=false leaves none")
            raise CompareError(f"--plot {tag}: these runs have no TensorBoard scalars to plot ({why})")
        raise CompareError(f"--plot {tag}: no run has that scalar; available: {', '.join(tags)}")
    return found


def scalar_unit(tag: str) -> str | None:
    """The unit of a vaelab scalar, for an axis label: likelihood terms are nats per example."""
    name = tag.rsplit("/", 1)[-1]
    if name.endswith("bits_per_dim"):
        return "bits per dimension"
    if name.endswith(("loss", "recon", "kl", "elbo", "nll_iwae")):
        return "nats per example"
    return {"active_units": "dimensions", "samples_per_s": "examples/s", "rss_mib": "MiB"}.get(name)


# A legend label longer than this (runs from different sweeps differ in many settings) would
# squeeze the plot into a strip beside it: the runs are named by their folders instead.
LABEL_CHARS = 60


def plot(runs: list[Run], tag: str, out: str | Path, defaulted: bool = False) -> Path:
    """One curve per run of a scalar, x = examples seen (one dot per run, by name, where each run
    has one point), written to out (see plot_path); through a link there only where the user
    named it (--out, not `defaulted`), as a plain write would."""
    import matplotlib.pyplot as plt

    out = plot_path(out, defaulted)
    found = curves(runs, tag)
    plotted = {id(r) for r, _, _ in found}
    left_out = [r.name for r in runs if id(r) not in plotted]
    if left_out:  # (a run with logger.tensorboard=false, or one stopped before its first point)
        print(f"vaelab compare: note: no {tag} curve for {len(left_out)} of the {len(runs)} runs, left out of the "
              f"plot: {', '.join(left_out)}", file=sys.stderr)
    fig, ax = plt.subplots(figsize=(8, 5))
    varying = _varying(runs)
    labels = [", ".join(f"{k}={r.config[k]}" for k in varying if k in r.config) for r, _, _ in found]
    if not all(labels) or max(map(len, labels)) > LABEL_CHARS:  # nothing differs, or too much to read: the
        labels = [r.name for r, _, _ in found]                    # folder names, as the table's first column
    elif len(set(labels)) < len(labels):  # the same settings twice (a run and its reproduction): both
        labels = [f"{label} ({r.name})" for (r, _, _), label in zip(found, labels)]
    dots = all(len(pts) == 1 for _, _, pts in found)
    if dots:  # a scalar of one point per run (test/nll_iwae, logged by the final evaluation): over examples seen,
        # the runs of a sweep stood in one column, told apart by colour only; one dot per run, named on the axis
        seen = {pts[0][0] for _, _, pts in found}
        ticks = labels if len(seen) == 1 else [f"{label}\n(at {pts[0][0]:,})" for (_, _, pts), label in
                                               zip(found, labels)]
        if not_comparable([r for r, _, _ in found], found[0][1], plotted=True) == "k":  # (which bound is which)
            ticks = [f"{tick} (k={r.metrics.get('test_k')})" for tick, (r, _, _) in zip(ticks, found)]
        ax.plot(range(len(found)), [pts[0][1] for _, _, pts in found], "o", linestyle="none")
        slant = len(found) > 3 or max(map(len, labels)) > 80 / len(found)  # (long labels ran into each other)
        ax.set_xticks(range(len(found)), ticks, rotation=30 if slant else 0, ha="right" if slant else "center",
                      fontsize="small")
        each = "each " if len(found) > 1 else ""
        ax.set_xlabel(f"run ({each}at {next(iter(seen)):,} examples seen)" if len(seen) == 1 else
                      "run (at examples seen)")
        ax.set_xlim(-0.5, len(found) - 0.5)
    else:
        first_with: dict = {}  # {a curve's points: the labels of the runs that have them, so far}
        copies = collections.Counter(tuple(pts) for _, _, pts in found)
        for i, ((r, _, pts), label) in enumerate(zip(found, labels)):
            # matplotlib's colour cycle has 10 colours: past them, another line style tells runs apart
            style = ("-", "--", ":", "-.")[i // 10 % 4]
            same = first_with.setdefault(tuple(pts), [])
            same.append(label)
            if len(same) > 1:  # (a run and its reproduction: drawn over it, the curve hid it; dashed, and said)
                # the k-th copy of m dashed in slot k of m (the first, solid, shows in the last): each one seen
                k, m = len(same) - 1, copies[tuple(pts)]
                style, label = (4 * (k - 1), (4, 4 * (m - 1))), f"{label}, the same points as {same[0]}"
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="." if len(pts) < 50 else None, label=label,
                    linestyle=style)
        ax.set_xlabel("examples seen")
    unit = scalar_unit(found[0][1])
    if unit == "dimensions":  # (a count: no 15.2 on the axis; review)
        from matplotlib.ticker import MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(found[0][1] + (f" ({unit})" if unit else ""))
    notes = []
    why = not_comparable([r for r, _, _ in found], found[0][1], plotted=True)
    if why:  # (one axis invited reading the lowest curve as the best run: review)
        notes.append(f"these {'points' if dots else 'curves'} do not compare: the runs {NOT_COMPARABLE[why]}")
    if leaves_out_mse_constant(found[0][1]) and any(r.config.get("loss.recon") == "mse" for r, _, _ in found):
        notes.append(f"loss.recon=mse runs {_mse_constant_left_out()}")  # (the table's note)
    if notes:
        ax.set_title("\n".join(notes), fontsize="small")
    ax.grid(alpha=0.3)
    if not dots:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    try:
        # whole or not at all: a Ctrl-C mid-write leaves the file --out names as it was
        ckpt_io.write_atomic(out, lambda f: fig.savefig(f, format=out.suffix[1:].lower(), dpi=120,
                                                        bbox_inches="tight"), through_link=not defaulted)
    except (OSError, ValueError, RuntimeError) as e:  # what plot_path cannot foresee: a full disk, a read-only
        # mount, a format whose tool is missing (.pgf: "'xelatex' not found")
        raise CompareError(f"--out {out}: cannot write it: {getattr(e, 'strerror', None) or e}") from None
    finally:
        plt.close(fig)
    return out


# --- the end of a sweep ------------------------------------------------------------------------


def _val_split(r: Run) -> str | None:
    """The split a run's val_* are of: metrics.json's val_split, or for a run that has not
    finished (its numbers come from its events) its config's data.val_size; None if neither."""
    if r.metrics.get("val_split"):
        return r.metrics["val_split"]
    if "data.val_size" in r.config:
        return "test" if r.config["data.val_size"] == "0" else "val"
    return None


# not_comparable's reasons, as the sweep summary and compare --sort's note give them
NOT_COMPARABLE = {
    "loss.recon": "differ in loss.recon (a Gaussian density of the images against a Bernoulli probability of "
                  "their pixels)",
    "data.binarize": "differ in data.binarize (grey-level images against binarized ones: other data)",
    "data": "saw different images under the same data settings (their data_digest differs: another data folder)",
    "split": "measure it on different splits (data.val_size=0 uses the test split)",
    "beta": "differ in loss.beta or loss.kl_warmup_steps (a train loss is recon + beta x KL; val_loss is recon + KL)",
    "k": "were evaluated with different k (importance samples: a larger k gives a tighter, lower IWAE bound)",
}


def not_comparable(runs: list[Run], metric: str, plotted: bool = False) -> str | None:
    """Why `metric` is not one quantity across the runs that have it, a key of NOT_COMPARABLE:
    "loss.recon" (a Gaussian density of x/255 against a Bernoulli probability of the pixels:
    different quantities; KL and the active units still compare), "data.binarize" (grey levels
    against binarized images: other data; static and dynamic runs are both scored on binarized
    draws and compare), "data" (runs whose data settings are the same but whose data_digest is not:
    images from another folder; a digest that follows from data.val_size, data.split_seed or the
    binarization is not counted), "split" (a val_* of data.val_size=0 is the test split's), "beta"
    (a train loss of runs with other loss.beta or KL warm-up) or "k" (IWAE bounds of evaluations
    with different k); else None. `plotted`: the runs are
    those with a curve of it (--plot), whatever their final metrics."""
    metric = metric.removeprefix("epoch/").replace("/", "_")  # (a curve's tag: epoch/val_loss, train/loss)
    have = runs if plotted else [r for r in runs if isinstance(r.metrics.get(metric), (int, float))]
    known = [r for r in have if r.config]  # (a run whose saved config is gone or unreadable: settings unknown)
    likelihood = any(part in metric for part in ("loss", "recon", "elbo", "nll", "bits_per_dim"))
    if likelihood and len({r.config.get("loss.recon") for r in known}) > 1:
        return "loss.recon"
    if likelihood and len({r.config.get("data.binarize", "none") == "none" for r in known}) > 1:
        return "data.binarize"
    digests: dict[tuple, set] = {}
    for r in known:
        if isinstance(r.metrics.get("data_digest"), str):
            same = tuple(r.config.get(k) for k in ("data.val_size", "data.split_seed", "data.binarize"))
            digests.setdefault(same, set()).add(r.metrics["data_digest"])
    if likelihood and any(len(d) > 1 for d in digests.values()):
        return "data"
    if metric.startswith("test_") and metric.endswith(("nll_iwae", "bits_per_dim")) and \
            len({r.metrics.get("test_k") for r in have}) > 1:  # (the plot's dots did not say it: review)
        return "k"
    splits = {_val_split(r) for r in have} - {None}
    if metric.startswith(("val_", "best_val_")) and len(splits) > 1:
        return "split"
    if metric == "train_loss":  # (train/loss, epoch/train_loss, train_loss: the loss optimised)
        weights = set()
        for r in known:
            try:
                weights.add((float(r.config.get("loss.beta", 1)), int(r.config.get("loss.kl_warmup_steps", 0))))
            except ValueError:  # (a hand-edited value: not counted)
                pass
        if len(weights) > 1:
            return "beta"
    return None


_job_stopping = False  # in a joblib worker: its job has had its SIGTERM or hang-up


def _raise_keyboard_interrupt(signum, frame):
    """A job's SIGTERM or hang-up, once: again (an interactive shell passes the hang-up on, and
    the kernel sends another as the shell ends) it would cut short the clean-up of the first."""
    from vaelab.errors import after_hangup

    global _job_stopping
    after_hangup(signum)
    if _job_stopping:
        return
    _job_stopping = True
    raise KeyboardInterrupt


def _made_by_hydra_for_this_launch(config, key: str) -> None:
    """A launch of a primary config of one's own (--config-name: Hydra's to check, so vaelab-train
    did not make its folder): the run or sweep folder Hydra is about to make is this launch's,
    which a run or first job refused for bad input may remove whole, as vaelab-train's own (it
    left an empty one). A folder that is there already is not; nor one that cannot be resolved
    yet (${hydra:...} before Hydra has set its config: left as it was)."""
    from vaelab.train_cli import LAUNCH_MADE_ENV

    if LAUNCH_MADE_ENV in os.environ:  # (vaelab-train made it, or knows it was there)
        return
    try:
        folder = Path(str(OmegaConf.select(config, key, throw_on_resolution_failure=True))).absolute()
    except Exception:  # (any resolver's error: the folder stays unknown, as before)
        return
    if not os.path.lexists(folder):
        os.environ[LAUNCH_MADE_ENV] = str(folder)


class SweepSummary(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): when a sweep ends, one line on how its
    jobs ended, and exit status 1 if any diverged. A diverged job returns +inf so that the other
    jobs (and an Optuna study) go on, and Hydra's launchers pass no job status back to the
    parent, so without this a sweep whose every job diverged would exit 0.

    The jobs are the runs in the sweep folder whose config was written after the sweep began
    (vaelab-train makes each default folder anew and refuses a given hydra.sweep.dir that holds
    runs, but one given to two sweeps at once, or a same-second default folder of a vaelab from
    before 2026-11-26, holds another sweep's too), or all of them for a sweep that `vaelab resume
    SWEEP_DIR` carries on. on_multirun_end runs on the machine that
    launched the sweep, after every job returned, whichever launcher ran them."""

    # In a joblib (loky) worker: a worker that dies on a Ctrl-C, SIGTERM or SIGHUP makes joblib end
    # all the others at once, before they have saved (train_cli._stop_workers waits for the busy
    # ones). So between jobs a worker ignores all three, and within a job they are
    # KeyboardInterrupt, which every stage of a job turns into its own stop (train()'s checkpoint,
    # the final evaluation's clean-up).

    def on_run_start(self, config, **kwargs) -> None:
        _made_by_hydra_for_this_launch(config, "hydra.run.dir")

    def on_job_start(self, config, **kwargs) -> None:
        from vaelab.train_cli import in_loky_worker

        if not in_loky_worker():
            return
        sweep_dir = Path(str(config.hydra.runtime.cwd), str(config.hydra.sweep.dir))
        if ckpt_io.sweep_stopping(sweep_dir):  # handed out while the stop waits for the running jobs
            run_dir = Path(str(config.hydra.runtime.output_dir))
            if run_dir.resolve() != sweep_dir.resolve() and {p.name for p in run_dir.iterdir()} <= {".hydra"}:
                shutil.rmtree(run_dir, ignore_errors=True)  # (only what Hydra put there: not a run)
            raise KeyboardInterrupt
        global _job_stopping
        _job_stopping = False
        from vaelab import train_cli
        if train_cli.worker_started_ignoring is None:  # (a worker not started by vaelab-train's backend)
            train_cli.worker_started_ignoring = train_cli.started_ignoring()
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # (the parent's stop: _stop_workers)
        for s, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGHUP, _raise_keyboard_interrupt)):
            if s not in train_cli.worker_started_ignoring:  # (ignored as the worker started: stays so)
                signal.signal(s, handler)

    def on_job_end(self, config, **kwargs) -> None:
        from vaelab.train_cli import in_loky_worker

        if in_loky_worker():  # (between jobs the parent stops the sweep: train_cli._worker_waits_for_a_job)
            for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
                signal.signal(s, signal.SIG_IGN)

    def on_multirun_start(self, config, **kwargs) -> None:
        self.started = time.time()
        _made_by_hydra_for_this_launch(config, "hydra.sweep.dir")
        # Held while the jobs run, so that `vaelab resume SWEEP_DIR` refuses a sweep that is still running,
        # and so does another launch into the folder (review: one begun with it passed the pre-flight check,
        # rewrote multirun.yaml and a job's config, then failed)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not ckpt_io.hold_sweep(sweep_dir):
            from vaelab.errors import SweepTaken
            raise SweepTaken(f"{sweep_dir}: another process is running a sweep in that folder now; give a new "
                             f"folder, or wait for it to end")  # (vaelab resume: not for an Optuna study's, review)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        ckpt_io.release_sweep(sweep_dir)
        logging.getLogger("tensorboard").setLevel(logging.ERROR)
        try:
            runs = find_runs([sweep_dir])
        except CompareError:
            return  # no job wrote a run folder (a dry run, --cfg): nothing to say
        from vaelab.workflow import SWEEP_CONTINUED

        continued = SWEEP_CONTINUED in (OmegaConf.select(config, "hydra.job.env_set") or {})
        if not continued:
            slack = 2.0  # file systems that store whole seconds
            runs = [r for r in runs if (r.path / ".hydra" / "config.yaml").is_file()
                    and (r.path / ".hydra" / "config.yaml").stat().st_mtime >= self.started - slack]
        states: dict[str, list[str]] = {}
        for r in runs:
            states.setdefault(r.state, []).append(r.name)
        counts = ", ".join(f"{len(v)} {k}" for k, v in sorted(states.items(), key=lambda kv: kv[0] != "done"))
        jobs = f"{len(runs)} job{'s' * (len(runs) != 1)}"
        trials = OmegaConf.select(config, "hydra.sweeper.n_trials", default=None)
        if isinstance(trials, int) and trials > len(runs) and not continued:  # (Optuna drew some values twice)
            jobs = (f"{trials} trials in {len(runs)} run{'s' * (len(runs) != 1)} (a trial that drew an earlier "
                    f"one's values carried its run on)")
        # the job with the lowest val_loss, the number vaelab-train returns and sweepers minimise
        done = [r for r in runs if r.state.startswith("done") and isinstance(r.metrics.get("val_loss"), (int, float))
                and math.isfinite(r.metrics["val_loss"])]
        best = min(done, key=lambda r: r.metrics["val_loss"], default=None)
        best_text = f"; lowest val_loss {best.metrics['val_loss']:.4f}: {best.name}" if best and len(runs) > 1 else ""
        why = not_comparable(done, "val_loss")
        if best_text and why in ("loss.recon", "data.binarize", "data"):
            best_text = f"; no lowest val_loss named: the jobs {NOT_COMPARABLE[why]}, whose losses do not compare"
        elif best_text and why == "split":
            evaluated = all(isinstance(r.metrics.get("test_nll_iwae"), (int, float)) for r in done)
            best_text = ("; no lowest val_loss named: the jobs measure val_loss on different splits "
                         "(data.val_size=0 uses the test split); compare test_nll_iwae in vaelab compare"
                         + ("" if evaluated else ", once vaelab eval JOB has made it for the jobs without"))
        print(f"sweep of {jobs}: {counts}{best_text}; table: vaelab compare {shlex.quote(str(sweep_dir))}")
        prog = "vaelab resume" if continued else "vaelab-train"  # the command the user typed
        if states.get("diverged"):
            print(f"{prog}: error: {len(states['diverged'])} of {len(runs)} jobs diverged "
                  f"(non-finite loss or weights): {'; '.join(states['diverged'])}", file=sys.stderr)
        # (vaelab resume SWEEP_DIR leaves a job whose saved config is gone as it is, with a warning)
        unconfigured = [r.name for r in runs if not (r.path / ".hydra" / "config.yaml").is_file()]
        if unconfigured:
            print(f"{prog}: error: {len(unconfigured)} of {len(runs)} jobs were left as they are, their saved config "
                  f"gone (each checkpoint keeps a copy, see above): {'; '.join(unconfigured)}", file=sys.stderr)
        if states.get("diverged") or unconfigured:
            sys.exit(1)  # Hydra's run_and_report lets SystemExit through: the exit status of vaelab-train


# --- vaelab compare --------------------------------------------------------------------------


def sweep_jobs(sweep_dir: Path) -> int | None:
    """How many jobs the sweep in `sweep_dir` launches, from the command line its multirun.yaml
    records (Hydra's basic sweeper: every combination of the swept values); None where that
    cannot be told (another sweeper, which draws its jobs; a glob over a config group)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        hc = OmegaConf.load(sweep_dir / "multirun.yaml").hydra
        if not str(OmegaConf.select(hc, "sweeper._target_", default="")).endswith(".BasicSweeper"):
            return None
        task = [str(o) for o in OmegaConf.to_container(hc.overrides.task, resolve=False)]
        params = OmegaConf.to_container(hc.sweeper.params, resolve=False) if hc.sweeper.get("params") else {}
        overrides = OverridesParser.create().parse_overrides([*(f"{k}={v}" for k, v in params.items()), *task])
    except Exception:  # (unreadable, or not what Hydra writes)
        return None
    last: dict[str, int] = {}  # the command line wins over hydra.sweeper.params, as in the sweeper
    for o in overrides:
        if not o.is_sweep_override():
            last[o.get_key_element()] = 1
            continue
        sweep = o.value()
        if all(isinstance(getattr(sweep, a, None), int) for a in ("start", "stop", "step")):
            last[o.get_key_element()] = len(range(sweep.start, sweep.stop, sweep.step))  # (not listed: range(1,10**6))
        elif type(sweep).__name__ == "Glob":
            return None
        else:  # (latent_size=2,2 is one job: one folder, which Hydra runs twice)
            last[o.get_key_element()] = len(set(o.sweep_string_iterator()))
    return math.prod(last.values())


def not_started_note(dirs, runs: list[Run]) -> str | None:
    """A line for each sweep at or under `dirs` with jobs that never started (a sweep stopped by
    Ctrl-C, a crash): the table lists only the jobs that have a folder."""
    sweeps: dict[Path, Path] = {}  # resolved -> as given
    for d in map(Path, dirs):
        for root, subdirs, _ in _walk(d):
            root = Path(root)
            if _is_run(root):
                subdirs.clear()
                continue
            subdirs[:] = sorted((s for s in subdirs if s not in _SKIP), key=_natural)
            if (root / "multirun.yaml").is_file():
                sweeps.setdefault(root.resolve(), root)
    lines = []
    for top, shown in sweeps.items():
        n = sweep_jobs(top)
        # its jobs: the runs under it, but not under another sweep inside it (a sweep run into its folder)
        inner = [s for s in sweeps if s != top and s.is_relative_to(top)]
        have = sum(1 for r in runs if r.path.is_relative_to(top) and not any(r.path.is_relative_to(s) for s in inner))
        if n is not None and have < n and ckpt_io.sweep_running(top):  # (resume is refused then: review)
            lines.append(f"note: {shown}: {have} of the sweep's {n} jobs started so far; the sweep is still running")
        elif n is not None and have < n:
            lines.append(f"note: {shown}: {have} of the sweep's {n} jobs started; the other {n - have} did not "
                         f"run (vaelab resume {shlex.quote(str(shown))} runs them)")
    return "\n".join(lines) or None


def _folder(text: str, what: str = "a folder") -> str:
    """DIR (or --out's PNG), not empty: vaelab compare "$RUNS" with RUNS unset searched the current folder."""
    if not text.strip():
        import argparse

        raise argparse.ArgumentTypeError(f"must be {what}, not empty (an unset shell variable?), got {text!r}")
    return text


def add_compare_arguments(p) -> None:
    p.add_argument("dirs", nargs="+", metavar="DIR", type=_folder,
                   help="folders to search for runs (a sweep, outputs/, a run; links to runs and sweeps are followed)")
    p.add_argument("--sort", metavar="METRIC",
                   help="sort the rows by this metric, e.g. val_loss, or setting, e.g. loss.beta (ascending), "
                   "or by run or state")
    p.add_argument("--desc", action="store_true", help="sort descending")
    p.add_argument("--where", metavar="KEY=VALUE", action="append", default=[],
                   help="only runs whose setting, state or metric is VALUE (loss.beta=4, state=done); repeat to "
                        "narrow further")
    p.add_argument("--plot", metavar="SCALAR", help="plot this scalar for every run: val_loss, train_loss, "
                   "active_units, ... or a full TensorBoard tag such as train/loss")
    p.add_argument("--out", metavar="PNG", type=lambda v: _folder(v, "a path"),
                   help="where --plot writes (default: curves.png)")


def compare_command(args) -> int:
    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # its notes on purged (resumed) events
    try:
        if args.desc and not args.sort:
            raise CompareError("--desc: give --sort METRIC too (--desc turns its order around)")
        runs = found = find_runs(args.dirs)
        if args.where:
            runs = where(runs, args.where)
            if not runs:
                raise CompareError(f"no run has {' and '.join(args.where)}")
        if args.sort:
            runs = sort_runs(runs, args.sort, args.desc)
        if args.out and not args.plot:
            raise CompareError(f"--out {args.out}: give --plot SCALAR too (--out says where the plot goes)")
        defaulted, args.out = not args.out, args.out or "curves.png"
        if args.plot:  # bad --out or --plot: one line before the table, not after it
            plot_path(args.out, defaulted)
            curves(runs, args.plot)
        # (the settings that differ among all the runs found: --where that kept one run left it no columns)
        print(table(runs, [args.sort] if args.sort else [], settings_of=found))
        missing = not_started_note(args.dirs, found)
        if missing:
            print(missing)
        if args.sort in COLUMNS and not any(r.metrics.get(args.sort) is not None for r in runs):
            print(f"note: --sort {args.sort}: no run has it{_not_yet(args.sort, runs)}; the table is in run order")
        why = not_comparable(runs, args.sort) if args.sort else None
        if why:  # (the sweep summary names no lowest val_loss for the same reasons)
            print(f"note: --sort {args.sort} orders numbers that do not compare: the runs {NOT_COMPARABLE[why]}")
        if args.plot and (found_curves := curves(runs, args.plot)) and \
                (why := not_comparable([r for r, _, _ in found_curves], found_curves[0][1], plotted=True)):
            # (one point a run: plot()'s dots)
            what = "points" if all(len(pts) == 1 for _, _, pts in found_curves) else "curves"
            print(f"note: --plot {args.plot} draws {what} that do not compare: the runs {NOT_COMPARABLE[why]}")
        if args.plot:
            out = plot(runs, args.plot, args.out, defaulted)
            print(f"wrote {out}")
    except CompareError as e:
        print(f"vaelab compare: error: {e}", file=sys.stderr)
        return 2
    return 0
