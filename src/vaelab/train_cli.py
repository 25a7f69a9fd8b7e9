"""vaelab-train's command line: check it, then hand over to Hydra and vaelab.train.

    vaelab-train [OVERRIDES] [-m] [HYDRA FLAGS]        (also: python -m vaelab.train ...)

Nothing here imports torch: a command line that cannot run is refused in about half a second
(the pre-flight in cli_errors), and only one that can pays for torch and the training code.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import sys
import time
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

from vaelab import STOPPED_LOADING
from vaelab import checkpoint as ckpt_io
from vaelab.cli_errors import (_WITH_VALUE, add_overrides, claim_folder, overrides_first, precheck, split_args,
                               taken_folder_error)
from vaelab.config import CONF_DIR, hydra_section, leaves, register_configs


SWEEP_NAME_KEY = "hydra.job.config.override_dirname.exclude_keys"


def sweep_name_override(argv: list[str]) -> list[str]:
    """The override that keeps sweep folder names short: exclude from override_dirname every
    key given one value on the command line (data.root=..., trainer.epochs=2) and the seed
    unless it is swept. It travels inside each job's config, so workers on other machines
    (submitit, Ray) name their folders the same way. Nothing if the user set the list."""
    key = SWEEP_NAME_KEY
    overrides, _ = split_args(argv)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:  # precheck has already reported it
        return []
    if any(o.key_or_group == key for o in parsed):
        return []
    task = [o for o in parsed if not o.is_hydra_override()]
    swept = {o.key_or_group for o in task if o.is_sweep_override()}
    fixed = [o.key_or_group for o in task if not o.is_sweep_override()]
    exclude = dict.fromkeys(fixed + ([] if "seed" in swept else ["seed"]))
    return [f"{key}=[{','.join(repr(k) for k in exclude)}]"]


def saved_config_argv(argv: list[str]) -> list[str]:
    """Make `vaelab-train --config-dir RUN_DIR/.hydra --config-name config` re-run a saved run.

    Hydra searches a --config-dir *after* conf/, so conf/config.yaml would shadow the saved
    config.yaml of the same name. Make the saved folder the primary config path instead, keep
    conf/ searchable (hydra/launcher=..., hydra/sweeper=...) and keep conf/config.yaml's
    output folders, which the saved config (it has no hydra: section) does not carry."""
    overrides, flags = split_args(argv)
    folder = flags.get("--config-dir") or flags.get("-cd")
    name = flags.get("--config-name") or flags.get("-cn") or "config"
    if not folder or "--config-path" in flags or "-cp" in flags or not (Path(folder) / f"{name}.yaml").is_file() \
            or _has_defaults(Path(folder) / f"{name}.yaml"):
        # no saved config there (a saved one is composed already: it has no defaults list, where a
        # primary config of one's own, `defaults: [config, _self_]`, has one): Hydra's own meaning
        return argv
    i = next(i for i, a in enumerate(argv) if a.split("=", 1)[0] in ("--config-dir", "-cd"))
    rest = argv[i + 1:] if "=" in argv[i] else argv[i + 2:]
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    # Every setting of conf/config.yaml's hydra: section (folders, job name, the sweep summary
    # callback and its exit status, logging), as ++key=value, except the folder-name key that
    # main() derives from this command line.
    keep = {"hydra.searchpath": f"['file://{CONF_DIR}']"}
    keep.update((k, override_value(v)) for k, v in leaves(hydra_section(), "hydra") if k != SWEEP_NAME_KEY)
    return add_overrides(argv[:i] + ["--config-path", os.path.abspath(folder)] + rest,
                         [f"++{k}={v}" for k, v in keep.items() if k not in given])


def _has_defaults(path: Path) -> bool:
    try:
        import yaml
        return "defaults" in (yaml.safe_load(path.read_text()) or {})
    except Exception:  # (not YAML, not a mapping: the saved-config path says what is wrong with it)
        return False


def config_dir_error(argv: list[str]) -> str | None:
    """--config-dir given a run's folder instead of its .hydra/ (Hydra would then compose
    conf/'s defaults and start a fresh run, silently), or a path that is not a folder; a
    --config-name or an absolute --config-path that names nothing (Hydra's several lines)."""
    _, flags = split_args(argv)
    folder = flags.get("--config-dir") or flags.get("-cd")
    name = (flags.get("--config-name") or flags.get("-cn") or "config").removesuffix(".yaml")  # (Hydra takes both)
    path_flag = flags.get("--config-path") or flags.get("-cp")
    if path_flag and not os.path.isabs(path_flag) and "://" not in path_flag:  # (inside the vaelab package)
        return (f"--config-path {path_flag}: give an absolute folder, as in --config-path {os.path.abspath(path_flag)} "
                f"(a relative one is read inside the vaelab package)")
    if path_flag and os.path.isabs(path_flag) and not os.path.isdir(path_flag):
        return f"--config-path {path_flag}: no such folder"
    if path_flag and os.path.isabs(path_flag) and not (Path(path_flag) / f"{name}.yaml").is_file():
        return f"--config-name {name}: no {name}.yaml in {path_flag}"
    if not folder:
        group, _, option = name.rpartition("/")
        if not path_flag and group and (CONF_DIR / f"{name}.yaml").is_file():  # a part, not a whole config
            return (f"--config-name {name}: that is an option of the config group {group}, not a whole config; "
                    f"choose it with {group}={option}")
        if not path_flag and not (CONF_DIR / f"{name}.yaml").is_file():
            return (f"--config-name {name}: vaelab's configs have no {name}.yaml; to re-run a saved run: "
                    f"--config-dir RUN_DIR/.hydra --config-name config")
        return None
    path = Path(folder)
    # (a folder of one's own config groups, or a run's saved config: the two uses of the flag)
    what = "give a folder of config groups of one's own, or a run's saved config folder, RUN_DIR/.hydra"
    if not path.exists():
        return f"--config-dir {folder}: no such folder; {what}"
    if not path.is_dir():
        return f"--config-dir {folder}: not a folder; {what}"
    if not (path / f"{name}.yaml").is_file() and (path / ".hydra" / f"{name}.yaml").is_file():
        return (f"--config-dir {folder}: that is a run's folder; its saved config is in {path / '.hydra'}: "
                f"--config-dir {path / '.hydra'} --config-name {name} (or vaelab reproduce {folder})")
    saved = (path / "config.yaml").is_file() and (path / "hydra.yaml").is_file()  # a run's .hydra/
    if saved and name in ("hydra", "overrides"):  # (a traceback from deep in the composition)
        return (f"--config-name {name}: {path / (name + '.yaml')} is Hydra's record of how the run was launched, "
                f"not its settings; those are config.yaml: --config-dir {folder} --config-name config")
    if not (path / f"{name}.yaml").is_file() and not (CONF_DIR / f"{name}.yaml").is_file():
        return (f"--config-name {name}: no {name}.yaml in {folder}"
                + (" (a run's saved config is config.yaml: --config-name config)" if saved else ""))
    return None


def override_value(v) -> str:
    """A YAML value as Hydra's override grammar reads it back ('quoted' strings keep ${...}).
    In a quoted value a backslash stands for itself, except in a run of them before a quote or
    at the end, where each is written twice; a quote is written \\'."""
    if isinstance(v, str):
        return "'" + re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), v) + "'"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, list):
        return "[" + ",".join(override_value(x) for x in v) + "]"
    return "null" if v is None else str(v)


def main() -> None:
    """Console script `vaelab-train`: check the overrides, then hand over to Hydra."""
    from vaelab.errors import when_the_reader_has_gone

    if PRINT_ONLY.intersection(a.split("=", 1)[0] for a in sys.argv[1:]) and hasattr(signal, "SIGPIPE"):
        # (`vaelab-train --cfg job | head`: Hydra reports a BrokenPipeError as a failure, with its
        # traceback, before it reaches us; nothing runs, so end as Unix tools do, on the spot)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(when_the_reader_has_gone(_launch_unless_stopped))


def _launch_unless_stopped() -> int:
    """launch(), where a Ctrl-C before Hydra runs (the checks, the imports: the first second or
    two) ended in a KeyboardInterrupt traceback; once it runs, _run_hydra says how a stop ended."""
    try:
        return launch(sys.argv[1:])
    except KeyboardInterrupt:
        print(STOPPED_LOADING["vaelab-train"], file=sys.stderr)
        return 130


# Hydra's flags that print and run nothing
PRINT_ONLY = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}


# The run or sweep folder made for this launch (the default ${now:...} one, or a named one that
# did not exist), for Hydra's app and a joblib sweep's workers: a run that never started may
# remove it whole; a folder that was there before (the current one, say) keeps all but what the
# run wrote in it.
LAUNCH_MADE_ENV = "VAELAB_LAUNCH_MADE"


def _home_expanded(arg: str) -> str:
    """data.root='~/mnist' as this shell's home, before Hydra records the override (a sweep's
    multirun.yaml, which `vaelab resume SWEEP_DIR` launches its jobs that never started from,
    perhaps in another user's shell or on another node; pin_environment does the same for each
    run's saved config). Any other argument as it is."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, QuotedString

    if arg.startswith("-") or arg.split("=", 1)[0].lstrip("+") != "data.root":
        return arg
    try:
        [o] = OverridesParser.create().parse_overrides([arg])
        value = o.value()
    except Exception:  # noqa: BLE001 - the pre-flight has read it
        return arg
    # one value, or a sweep's as a,b (choice(...), Optuna's, stays as given)
    values = value.list if isinstance(value, ChoiceSweep) and value.simple_form else [value]
    values = [v.text if isinstance(v, QuotedString) else v for v in values]
    if not all(isinstance(v, str) for v in values) or all(os.path.expanduser(v) == v for v in values):
        return arg
    return f"{arg.split('=', 1)[0]}={','.join(override_value(os.path.expanduser(v)) for v in values)}"


def launch(argv: list[str], prog: str = "vaelab-train", continuing: Path | None = None) -> int:
    """Check vaelab-train's arguments, then run the Hydra app on them in this process; returns
    the exit status. continuing: the folder of a stopped sweep that these arguments carry on
    (`vaelab resume SWEEP_DIR`), which may hold runs."""
    # (Hydra's flag: it printed "Hydra 1.3.8" alone, which says nothing of vaelab's; not a flag's value:
    # --cfg --version is the pre-flight's to refuse, review)
    if any(a == "--version" and (i == 0 or argv[i - 1] not in _WITH_VALUE) for i, a in enumerate(argv)):
        from hydra import __version__ as hydra_version

        from vaelab import __version__
        print(f"vaelab {__version__} (Hydra {hydra_version})")
        return 0
    register_configs()
    err = config_dir_error(argv)
    argv = saved_config_argv(argv)
    where: dict = {}
    err = err or precheck(argv, fetch_data=True, continuing=continuing, where=where)
    if err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    argv = [_home_expanded(a) for a in argv]
    pinned, claimed = [], []
    if "folder" in where:  # the default ${now:...} folder, made now and given to Hydra as made (in
        # place of the default itself, which a re-run of a saved config passes as ++KEY=...)
        argv = [a for a in argv if a.split("=", 1)[0].lstrip("+") != where["key"]]
        claimed = claim_folder(where["folder"])
        pinned = [f"{where['key']}={override_value(str(claimed[0]))}"]
    elif "new" in where:  # a folder named for this launch, not there at the pre-flight: made now
        try:
            claimed = claim_folder(where["new"], named=True)
        except OSError:  # (another launch's just now: the lock below decides; else Hydra's mkdir says why)
            pass
    made = claimed[0].absolute() if claimed else where.get("new")
    if where.get("pin"):  # (resolved again by Hydra a second later, it named another folder than the one held)
        argv = [a for a in argv if a.split("=", 1)[0].lstrip("+") != "hydra.run.dir"]
        pinned = [f"hydra.run.dir={override_value(str(claimed[0] if claimed else where['run_dir']))}"]
    held = None
    if "run_dir" in where and (run_dir := claimed[0] if claimed else where["run_dir"]).is_dir():
        # One run: its folder held from before Hydra writes the run's config there until the run ends (two
        # launches given one new folder at once both passed the pre-flight, and the refused one's config
        # went over the run the other trained: review); looked at again once held.
        err = None if ckpt_io.hold_run(run_dir) else ("another process is starting or training a run in that "
                                                      "folder now; give another folder")
        held = run_dir if err is None else None
        err = err or taken_folder_error(run_dir)
        if err:  # (what this launch made stays: the folder is the other launch's now, or holds a run)
            if held is not None:
                ckpt_io.release_run(held)
            print(f"{prog}: error: hydra.run.dir={run_dir}: {err}", file=sys.stderr)
            return 2
    if made is not None:
        os.environ[LAUNCH_MADE_ENV] = str(made)
    # Hydra reads its arguments from sys.argv
    sys.argv[1:] = add_overrides(overrides_first(argv), [*pinned, *sweep_name_override(argv)])
    try:
        return _run_hydra(prog)
    finally:  # nothing ran in it (Hydra refused the command line): don't leave it, nor what it made
        os.environ.pop(LAUNCH_MADE_ENV, None)
        for folder in claimed:  # (while still held: let go first, another launch could take it, then lose it)
            try:
                folder.rmdir()
            except FileNotFoundError:  # the refused job's clean-up removed it already
                continue
            except OSError:  # not empty: a run (or another launch's) is there
                break
        if held is not None:
            ckpt_io.release_run(held)


LOKY_WORKER = "joblib.externals.loky.backend.popen_loky"  # (in a joblib worker's command line)


def in_loky_worker() -> bool:
    """Whether this process is a joblib (loky) worker: a job of a sweep under hydra/launcher=joblib,
    beside others that share its terminal."""
    try:
        return LOKY_WORKER in Path("/proc/self/cmdline").read_bytes().decode(errors="replace")
    except OSError:  # (no /proc: not Linux)
        return False


def loky_workers() -> list[int]:
    """The process ids of this process's joblib (loky) workers, read from /proc: the running
    jobs of a sweep under hydra/launcher=joblib. [] elsewhere (no /proc: not Linux)."""
    me, pids = str(os.getpid()), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = stat.read_text().rsplit(")", 1)[1].split()[1]  # (after the command's name, which may hold spaces)
            if ppid == me and LOKY_WORKER in (stat.parent / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):  # a process that ended while it was read
            continue
    return pids


_waiting = False  # _stop_workers is waiting: a second Ctrl-C or SIGTERM stops at once


def _stop_workers(signum: int = signal.SIGINT, limit_s: float = 60.0,
                  again_stops_at_once: bool = True) -> bool | None:
    """Ctrl-C, SIGTERM or a hang-up to vaelab-train stops a joblib sweep, and this process,
    joblib's parent, lets its running jobs save first: each busy worker (one that holds a run: its
    training holds the run folder's lock) gets a SIGTERM, or the hang-up this process had (a
    worker that had the terminal's Ctrl-C or hang-up already keeps that one stop), and this
    process waits (up to `limit_s`, saying so) until each has saved a checkpoint after its
    current step and let go of its run. joblib's shutdown ends the workers at
    once: one still saving lost its partial epoch; and a SIGTERM passed to an idle worker ended it,
    which made joblib end the busy ones too. Called again while waiting, it stops at once (a
    second Ctrl-C), or (again_stops_at_once=False: a SIGTERM or hang-up after a Ctrl-C) returns
    False and the wait goes on."""
    global _waiting
    if _waiting:
        if again_stops_at_once:
            raise KeyboardInterrupt
        return False
    from vaelab.checkpoint import mark_sweeps_stopping
    from vaelab.errors import say_while_stopping
    mark_sweeps_stopping()  # (a job joblib hands out while this waits does not start)
    _waiting, deadline, said, told = True, time.monotonic() + limit_s, False, set()
    try:
        while time.monotonic() < deadline:
            busy = _busy_workers(loky_workers())
            for pid in set(busy) - told:  # (again each time round: one that began its job just now)
                try:
                    os.kill(pid, signal.SIGHUP if signum == signal.SIGHUP else signal.SIGTERM)
                except ProcessLookupError:
                    pass
                told.add(pid)
            held = sorted({run for runs in busy.values() for run in runs})
            if not held:
                return
            if not said:
                # (from a hang-up's handler: the terminal may close under this line, errors.say_while_stopping)
                say_while_stopping(f"vaelab-train: waiting for {len(held)} job{'s' * (len(held) != 1)} to save a "
                                   f"checkpoint: {', '.join(Path(r).name for r in held)} (Ctrl-C stops at once)")
                said = True
            time.sleep(0.1)
    finally:
        _waiting = False


@contextlib.contextmanager
def _ctrl_c_lets_workers_save():
    """A Ctrl-C stopped joblib's parent at once, and joblib's shutdown ended the workers before
    they had saved: it now waits for them first (_stop_workers). Only where SIGINT has Python's
    default handler (train() sets its own while it trains in this process), and only in the main
    thread."""
    def stop(signum, frame):
        if loky_workers():
            _stop_workers()
        raise KeyboardInterrupt
    try:
        before = signal.signal(signal.SIGINT, stop) if signal.getsignal(signal.SIGINT) is signal.default_int_handler \
            else None
    except ValueError:  # not the main thread
        before = None
    try:
        yield
    finally:
        if before is not None and signal.getsignal(signal.SIGINT) is stop:  # (not over a SIG_IGN set since)
            signal.signal(signal.SIGINT, before)


def _busy_workers(pids: list[int]) -> dict[int, list[str]]:
    """Of these processes, those that hold a run folder open, with the folders: a run's training
    holds its folder's lock (checkpoint.only_process) until it has saved and stopped. From /proc."""
    from vaelab.checkpoint import is_run

    busy = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:  # ended
            continue
        runs = []
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("/") and is_run(target):
                runs.append(target)
        if runs:
            busy[pid] = runs
    return busy


def _worker_waits_for_a_job() -> None:
    """In each joblib (loky) worker as it starts, before its first job: the terminal's Ctrl-C and
    hang-up, and a SIGTERM to the whole group (scancel, a time limit, kill -TERM -PGID), are the
    parent's to handle (see _stop_workers). loky starts all n_jobs workers at once (-1, Hydra's
    default, is one per core), however few jobs a sweep has; one that never got a job died on
    the signal, and joblib then ended every other worker, jobs still saving their checkpoints
    included. A job sets its own handlers (compare.SweepSummary.on_job_start); loky ends its
    workers with SIGKILL."""
    global worker_started_ignoring
    worker_started_ignoring = started_ignoring()
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN)


def started_ignoring() -> frozenset:
    """Of the Ctrl-C and the hang-up, those this process ignores now: nohup's hang-up, and the
    Ctrl-C that a script's `vaelab-train ... &` (no job control) leaves to the script; its
    jobs keep them ignored, as a run in one process does (train._StopFlag)."""
    return frozenset(s for s in (signal.SIGINT, signal.SIGHUP) if signal.getsignal(s) is signal.SIG_IGN)


worker_started_ignoring = None  # in a joblib worker: started_ignoring() as it started


def _workers_wait_for_a_job() -> None:
    """hydra/launcher=joblib's workers start with _worker_waits_for_a_job: the launcher asks joblib
    for backend 'loky' by name, which names this subclass in this process from here on."""
    try:
        from joblib import register_parallel_backend
        from joblib._parallel_backends import LokyBackend
    except ImportError:  # (no joblib launcher installed)
        return

    class WorkersWaitForAJob(LokyBackend):
        def configure(self, *args, **kwargs):
            kwargs.setdefault("initializer", _worker_waits_for_a_job)
            return super().configure(*args, **kwargs)

    register_parallel_backend("loky", WorkersWaitForAJob)
    _a_killed_worker_is_one_line()


def _a_study(hydra) -> bool:
    """Whether the launch's hydra section says a sweep whose sweeper draws its jobs (Optuna's),
    which vaelab resume SWEEP_DIR refuses; not known: False."""
    from omegaconf import OmegaConf

    try:
        sweeper = str(OmegaConf.select(hydra, "sweeper._target_", default="") or "")
    except Exception:  # noqa: BLE001
        return False
    return bool(sweeper) and not sweeper.endswith(".BasicSweeper")


def _a_killed_worker_is_one_line() -> None:
    """A joblib worker killed under its job (kill -9, the kernel's out-of-memory killer) ended the
    sweep with loky's TerminatedWorkerError, some 30 lines of traceback through Hydra's (review):
    one line instead, with what to do. (loky ends the other workers where they are.)"""
    try:
        from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
        from joblib.externals.loky.process_executor import TerminatedWorkerError
    except ImportError:
        return
    if getattr(JoblibLauncher.launch, "vaelab_one_line", False):
        return
    launch = JoblibLauncher.launch

    def launch_saying_a_killed_worker(self, *args, **kwargs):
        try:
            return launch(self, *args, **kwargs)
        except TerminatedWorkerError as e:
            import shlex

            from omegaconf import OmegaConf

            from vaelab.errors import SweepWorkerDied

            sweep = shlex.quote(str(OmegaConf.select(self.config, "hydra.sweep.dir", default=None) or "SWEEP_DIR"))
            codes = re.search(r"exit codes of the workers are \{([^}]*)\}", str(e))  # ({SIGKILL(-9)})
            why = f"{codes.group(1)}: " if codes else ""
            # (vaelab resume refuses a study: its sweeper would draw new trials, review)
            hydra = OmegaConf.select(self.config, "hydra", default=None) if self.config is not None else None
            again = (f"vaelab resume {sweep}/TRIAL carries a stopped trial on, and a study goes on only as a new "
                     f"one" if hydra is not None and _a_study(hydra) else
                     f"vaelab resume {sweep} carries the sweep on from their checkpoints")
            raise SweepWorkerDied(f"a worker process of the sweep died under its job ({why}killed, or out of "
                                  f"memory); the jobs running beside it stopped where they were; {again}") from None
    launch_saying_a_killed_worker.vaelab_one_line = True
    JoblibLauncher.launch = launch_saying_a_killed_worker


def _run_hydra(prog: str) -> int:
    """The Hydra app on sys.argv; its exit status."""
    from vaelab.train import hydra_main  # torch and the rest: only for a command line that can run

    cwd = os.getcwd()  # (the launch folder: outputs/ lies there)
    # After a stop of a joblib sweep, loky's resource tracker (a process of its own, which reads
    # this at its start) warned of "2 leaked semaphore objects to clean up at shutdown": those
    # of the workers the stop ended, which it does clean up. The sweep's own lines say what it left.
    quiet, warnings_as_they_were = "ignore:resource_tracker:UserWarning", os.environ.get("PYTHONWARNINGS")
    if quiet not in (warnings_as_they_were or ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, (warnings_as_they_were, quiet)))

    _workers_wait_for_a_job()

    from vaelab.errors import SweepTaken, SweepWorkerDied, stop_signals_as_ctrl_c

    root = logging.getLogger()
    handlers_were, level_was = root.handlers[:], root.level
    try:
        # (train() takes both over while it trains; the Ctrl-C handler first, so that a SIGTERM
        # after a Ctrl-C is the same stop)
        with _ctrl_c_lets_workers_save(), \
                stop_signals_as_ctrl_c(first=functools.partial(_stop_workers, again_stops_at_once=False)):
            hydra_main()
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training (joblib's parent, setup)
        from vaelab.errors import leaving_after_a_stop
        leaving_after_a_stop()
        # (an Optuna study goes on only as a new one: vaelab resume refuses one, review; its sweeper as the
        # launch composed it, where Hydra got that far)
        from hydra.core.hydra_config import HydraConfig

        study = _a_study(HydraConfig.get()) if HydraConfig.initialized() else \
            any(a.split("=", 1)[0].lstrip("+") == "hparams_search" for a in sys.argv[1:])
        print(f"{prog}: interrupted; a run keeps the checkpoints it had completed "
              f"(vaelab resume RUN_DIR carries it on from them, "
              + ("a study goes on only as a new one" if study else "vaelab resume SWEEP_DIR a whole sweep")
              + "; a run without any starts again with vaelab-train --config-dir RUN_DIR/.hydra --config-name "
                "config)", file=sys.stderr)
        return 130
    except SweepTaken as e:  # (nothing of this launch's written: no clean-up)
        print(f"{prog}: error: {e.code}", file=sys.stderr)
        return 2
    except SweepWorkerDied as e:
        print(f"{prog}: error: {e.code}", file=sys.stderr)
        return 1
    except SystemExit as e:  # hydra.main exits with its app's status (the sweep summary's 1, a job's 2 or 130)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        made = os.environ.get(LAUNCH_MADE_ENV)
        if e.code == 2 and made:  # a job refused (bad input): in a joblib sweep, the jobs beside it ended part-way
            from vaelab.run_dirs import remove_sweep_refused_part_way
            remove_sweep_refused_part_way(Path(made), cwd)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:  # a sweep that a stop ended before its end callback: its lock file goes too
        from vaelab.checkpoint import release_sweeps
        release_sweeps()
        _put_back_logging(root, handlers_were, level_was)
        if warnings_as_they_were is None:  # (main() called from a script: its later processes as they were)
            os.environ.pop("PYTHONWARNINGS", None)
        else:
            os.environ["PYTHONWARNINGS"] = warnings_as_they_were
    return 0


def _put_back_logging(root: logging.Logger, handlers: list[logging.Handler], level: int) -> None:
    """Hydra's logging setup outlives hydra.main: its console handler kept writing to the stdout
    of its time. From Python (`vaelab resume SWEEP_DIR` runs the app in-process, or main() in a
    script) a later run's console log went there, a closed stream by then in a notebook's or
    pytest's capture, and was lost. The caller's root logger is put back as it was."""
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
            h.close()  # (a FileHandler's file; a StreamHandler leaves its stream open)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


if __name__ == "__main__":  # `python -m vaelab.train_cli`, as `python -m vaelab.train`
    main()
