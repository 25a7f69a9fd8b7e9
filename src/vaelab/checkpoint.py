"""Checkpoints that survive a kill at any moment and explain themselves when they can't load.

A checkpoint is a plain dict (tensors, numbers, strings, lists): the model and optimizer
state, the step counters, every RNG state and the resolved config as a plain dict, so
`torch.load(weights_only=True)` reads it. It is written to a temporary file in the same folder,
fsynced, then renamed over the old one: a kill mid-write leaves the previous file intact
(and the folder is fsynced after the rename, so that a power cut does not undo it).
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import shlex
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable

if TYPE_CHECKING:
    import torch

# torch and numpy are imported where they are used: `vaelab compare` reads runs' JSON files
# through this module and answers in a fraction of a second without them.


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used. Its message names the file and says why, in one line."""


TMP_SUFFIX = ".tmp"  # .NAME.XXXXXXXX.tmp beside NAME while it is written


def remove_partial(folder: str | Path) -> int:
    """Delete the temporary files that a process killed mid-write left in `folder` (never read:
    the file they were to replace is intact). Only call it where no other process is writing.
    Returns how many there were."""
    stale = [p for p in Path(folder).glob(f".*{TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


class RunInUse(CheckpointError):
    """Another process holds the run's lock (only_process): it is training the run now."""


@contextlib.contextmanager
def only_process(run_dir: str | Path, waiting: Callable[[], Any] | None = None):
    """Hold an exclusive lock on the run folder while training it: a second process on the same
    run (a `vaelab resume` of a run still training) would write the same checkpoints. The lock
    is the kernel's (flock on the folder itself), so a killed process never leaves it held.
    Where flock is missing (Windows) it is a no-op. A held lock is a CheckpointError; with
    `waiting`, that is called and the lock waited for instead."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    if os.path.realpath(run_dir) in _held_runs:  # this process holds it already (hold_run: vaelab-train's launch)
        yield
        return
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is None:
                raise RunInUse(f"{run_dir}: another process is training this run now; "
                               f"let it finish or stop it (Ctrl-C) first") from None
            waiting()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


_held_runs: dict[str, int] = {}  # hold_run's locks: real path of the run folder -> descriptor


def hold_run(run_dir: str | Path) -> bool:
    """Take only_process's lock on the run folder (which must exist) until release_run, for this
    process's train() to run under: vaelab-train takes it before Hydra writes the run's config
    there, so that of two launches given one new folder at once, the refused one does not write
    its config over the run the other trains (review). False where another process holds it;
    True also where there is no flock."""
    try:
        import fcntl
    except ImportError:
        return True
    key = os.path.realpath(run_dir)
    if key in _held_runs:
        return True
    try:
        fd = os.open(key, os.O_RDONLY)
    except OSError:  # (Hydra's mkdir will say what is wrong)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    except OSError:  # no locks here (ENOLCK on NFS): as only_process, which would fail on its own
        os.close(fd)
        return True
    _held_runs[key] = fd
    return True


def release_run(run_dir: str | Path) -> None:
    """Let go of hold_run's lock on `run_dir`, if this process has it."""
    fd = _held_runs.pop(os.path.realpath(run_dir), None)
    if fd is not None:
        os.close(fd)


# A sweep's launching process holds a lock on this file in the sweep folder while its jobs run
# (hold_sweep), so that `vaelab resume SWEEP_DIR` can tell a running sweep (sweep_running). A file,
# not the folder itself: a job may run in the sweep folder (hydra.sweep.subdir=.), and its
# training locks its own folder.
SWEEP_LOCK = ".vaelab-sweep.lock"
# ... and this one once a Ctrl-C or SIGTERM has begun to stop it: a job that joblib hands a worker
# while the stop waits for the running ones does not start (mark_sweeps_stopping, sweep_stopping).
SWEEP_STOP = ".vaelab-sweep.stop"
_held: dict[Path, int] = {}  # hold_sweep's locks: folder -> descriptor


def hold_sweep(folder: str | Path) -> bool:
    """Take the sweep lock of `folder` (made if need be) until release_sweep(folder); kept if this
    process has it already. False only where another process holds it; True also where there is
    no flock or the file system refuses it (the lock only tells a running sweep apart: a sweep
    goes on without it)."""
    try:
        import fcntl
    except ImportError:
        return True
    folder = Path(os.path.realpath(folder))
    if folder in _held:
        return True
    for _ in range(10):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(folder / SWEEP_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by another process
            os.close(fd)
            return False
        except OSError:  # no locks here (ENOLCK on NFS)
            os.close(fd)
            return True
        # release_sweep removes the file before it lets go: a lock taken on the removed file in
        # between holds nothing, so it is taken again on the file there now
        try:
            if os.path.samestat(os.fstat(fd), os.stat(folder / SWEEP_LOCK)):
                break
        except OSError:  # (removed: made anew at the next try)
            pass
        os.close(fd)
    else:
        return True
    _held[folder] = fd
    (folder / SWEEP_STOP).unlink(missing_ok=True)  # (one a killed launch left: this launch is not stopping)
    return True


def release_sweep(folder: str | Path) -> None:
    """Let go of hold_sweep's lock on `folder`, if this process has it (a sweep that ended, or that
    a Ctrl-C stopped before it could say so), and remove its file."""
    folder = Path(os.path.realpath(folder))
    fd = _held.pop(folder, None)
    if fd is not None:
        (folder / SWEEP_STOP).unlink(missing_ok=True)
        (folder / SWEEP_LOCK).unlink(missing_ok=True)
        os.close(fd)


def mark_sweeps_stopping() -> None:
    """Mark every sweep this process holds as stopping: its jobs not begun yet do not start."""
    for folder in _held:
        try:
            (folder / SWEEP_STOP).touch()
        except OSError:
            pass


def sweep_stopping(folder: str | Path) -> bool:
    """Whether the sweep in `folder` is being stopped by the process that runs it."""
    return (Path(folder) / SWEEP_STOP).exists() and sweep_running(folder)


def first_to_tell_stop(folder: str | Path) -> bool:
    """Whether this job is the first of its stopping sweep's (mark_sweeps_stopping) to say that
    the sweep stops: each of joblib's running jobs stops, and the line came once per job. The
    stop file, empty until told, is the token; True where there is none, or no flock."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fd = os.open(Path(folder) / SWEEP_STOP, os.O_RDWR)
    except OSError:  # (no stop of the sweep's own launch: a job stopped by itself)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # (released with the descriptor)
        if os.fstat(fd).st_size:
            return False
        os.write(fd, b"told\n")
        return True
    except OSError:
        return True
    finally:
        os.close(fd)


def release_sweeps() -> None:
    """release_sweep of every folder this process holds (a sweep that a stop ended early)."""
    for folder in list(_held):
        release_sweep(folder)


def sweep_running(folder: str | Path) -> bool:
    """Whether a process holds the sweep lock of `folder` (hold_sweep): its sweep is running."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(Path(folder) / SWEEP_LOCK, os.O_RDONLY)
    except OSError:  # no such file: no sweep has held it, or the last one ended
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def check_not_in_use(run_dir: str | Path) -> None:
    """CheckpointError if another process is training the run now (see only_process)."""
    with only_process(run_dir):
        pass


def latest(ckpt_dir: str | Path) -> Path | None:
    """The checkpoint to carry a run on from: last.pt, unless best.pt or the newest epoch_N.pt
    trained further; failing last.pt, the one that trained furthest (furthest). At the end of an
    epoch best.pt and epoch_N.pt are written just before last.pt, with the same contents, so a
    stop between them (a kill, a full disk) leaves a complete checkpoint ahead of last.pt: carried
    on from last.pt, the run trained that epoch again, under any changed settings, beside a best.pt
    of weights its record no longer had (review). A last.pt that cannot be read is still the one
    (loading it says so, and which other one to move to). None if there is no checkpoint."""
    ckpt_dir = Path(ckpt_dir)
    last = ckpt_dir / "last.pt"
    if not last.is_file():
        return furthest(p for p in ckpt_dir.glob("*.pt") if p.is_file())
    numbered = [p for p in ckpt_dir.glob("epoch_*.pt") if p.is_file() and p.stem[6:].isdigit()]
    others = [p for p in (ckpt_dir / "best.pt", max(numbered, key=lambda p: int(p.stem[6:]), default=None))
              if p is not None and p.is_file()]
    if not others:
        return last
    seen = _examples(last)
    if seen is None:
        return last
    trained = {p: _examples(p) or -1 for p in others}  # (each file read once)
    ahead = max(others, key=trained.__getitem__)
    return ahead if trained[ahead] > seen else last


def _examples(path: Path) -> int | None:
    """The examples a checkpoint had seen, read without its tensors; None where it cannot be read."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state"]
        return int(state.get("examples", state.get("step", -1)))
    except Exception:  # noqa: BLE001  (loading it says why, if it is chosen)
        return None


def furthest(paths) -> Path | None:
    """Of these checkpoint files, the one that trained furthest (the examples it had seen, read
    without its tensors); between equals, and below every readable one those that cannot be
    read, the newest file. Not the newest file alone: a folder copied (cp -r, scp, an unzip) has
    its files' times in another order, and a resume from an early best.pt would have written its
    epochs over the later epoch_N.pt (review). None for none."""
    def trained(p: Path) -> tuple:
        n = _examples(p)
        return (-1 if n is None else n), p.stat().st_mtime
    paths = list(paths)
    return max(paths, key=trained) if paths else None


def carry_on(run_dir: str | Path) -> str:
    """The command that carries a stopped run on: `vaelab resume RUN_DIR` from its latest
    checkpoint, or, with none, the run started again from its saved config."""
    run_dir = Path(run_dir)
    if latest(run_dir / "checkpoints") is not None:
        return f"vaelab resume {shlex.quote(str(run_dir))}"
    return f"vaelab-train --config-dir {shlex.quote(str(run_dir / '.hydra'))} --config-name config"


def lower_lr(lr: float) -> str:
    """The override a divergence's hint suggests: a tenth of the run's learning rate, at most 1e-4
    (a tenth of 1e30 would diverge again)."""
    return f"optim.lr={min(lr / 10, 1e-4):g}"


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any], through_link: bool = False) -> Path:
    """Call write(f) on a temporary file beside `path`, fsync, then rename it over `path`:
    a kill at any moment leaves either the old file or the new one, never half of one. A link
    at `path` is replaced by the file (a run's last.pt linked to a checkpoint kept aside must not
    overwrite it), or with `through_link` (a picture the user named, as a plain write would) its
    target is, the link staying."""
    path = Path(os.path.realpath(path)) if through_link and os.path.islink(path) else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would, so that the
        # group can read the run's checkpoints and configs as they read the rest of it.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        # (a full disk fails write(), which names no file: the messages named the run's folder; not an
        # OSError of no errno, gzip's BadGzipFile, whose words a filename would replace)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            e.filename = str(path)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable: without it a power cut can bring back the old file."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # (a platform or file system without folders to open: Windows)
        return
    try:
        os.fsync(fd)
    except OSError:  # (file systems that do not fsync folders: the rename stands, only less durably)
        pass
    finally:
        os.close(fd)


def save_atomic(obj: dict, path: str | Path) -> Path:
    import io

    import torch

    # Serialised in memory first: torch.save writing to the file itself turns a write that fails
    # (a full disk) into a RuntimeError ("unexpected pos ..."), where this write raises the
    # OSError it is (No space left on device), which train() reports as a failed stop.
    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_atomic(path, lambda f: f.write(buf.getbuffer()))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """A run's JSON and YAML files (metrics.json, .hydra/config.yaml, ...), written like checkpoints."""
    return write_atomic(path, lambda f: f.write(text.encode()))


def read_json(path: str | Path) -> dict | None:
    """A run's JSON file (metrics.json, eval.json, stopped.json) as a dict; None if it is absent,
    unreadable or not an object (a hand-edited file)."""
    try:
        got = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return got if isinstance(got, dict) else None


def final_eval_missing(run_dir: str | Path) -> str | None:
    """Why a finished run lacks its final evaluation, or None: no eval.json, or one made before
    the run had trained all its epochs (a resume with more epochs, stopped during its final
    evaluation, keeps the evaluation before it, whichever checkpoint that one took). One made
    since, of any checkpoint (vaelab eval --checkpoint best), is the user's choice."""
    ev = read_json(Path(run_dir) / "eval.json")
    if ev is None:
        return "no eval.json"
    trained = (read_json(Path(run_dir) / "metrics.json") or {}).get("epochs")
    if not isinstance(trained, int):
        return None
    made = ev.get("made_when")
    at = made.get("run_epochs") if isinstance(made, dict) else None
    if isinstance(at, int):
        return f"its eval.json was made when the run had trained {at} of its {trained} epochs" if at < trained else None
    # (an eval.json from before 2026-11-26 says only which checkpoint it took, and of which epoch)
    if Path(str(ev.get("checkpoint", ""))).name == "last.pt" and isinstance(ev.get("epoch"), int) \
            and ev["epoch"] < trained:
        return f"its eval.json is of last.pt at epoch {ev['epoch']} of {trained}"
    return None


def is_run(folder: str | Path) -> bool:
    """A run folder: it holds the config Hydra saved for it."""
    return (Path(folder) / ".hydra" / "config.yaml").is_file()


def enclosing_run(path: str | Path) -> Path | None:
    """The run folder `path` is inside (RUN/checkpoints, RUN/.hydra/x), or None; with `..` and
    links resolved (RUN/samples/.. is not inside RUN; a link into RUN/samples is)."""
    return next((p for p in Path(os.path.realpath(path)).parents if is_run(p)), None)


# The folders of a run that vaelab writes: a picture from `vaelab compare` or `vaelab sample` is
# not to land in them (and replace what is there), except `vaelab sample`'s own eval/.
RUN_FOLDERS = ("samples", "eval", "checkpoints", ".hydra")


def inside_run_folder(path: str | Path) -> tuple[Path, str] | None:
    """(run, folder) when `path` is inside one of RUN_FOLDERS of a run, else None."""
    run = enclosing_run(path)
    if run is None:
        return None
    part = Path(os.path.realpath(path)).relative_to(run).parts[0]
    return (run, part) if part in RUN_FOLDERS else None


def holds_runs(folder: str | Path) -> bool:
    """Runs directly below `folder`: a sweep's folder."""
    folder = Path(folder)
    return folder.is_dir() and any(is_run(d) for d in folder.iterdir() if d.is_dir())


# In a run folder after an early stop (train() writes it, its next start removes it):
# {"state": "diverged" | "interrupted" | "failed", "reason": the one-line message}, and for "diverged" the
# "config" it trained with (run_dirs.another_jobs_run, train._train_sweep_job)
STOPPED = "stopped.json"
# One JSON line per finished epoch (train() writes it; `vaelab compare --plot` reads it where a run has
# no TensorBoard events): the epoch lines' numbers, the KL of each latent dimension and its variance.
EPOCHS = "epochs.jsonl"


def run_state(path: Path) -> tuple[str, dict | None, dict | None]:
    """(state, metrics.json, stopped.json) of the run in `path`: done (metrics.json and no early
    stop since), diverged, interrupted or failed (stopped.json), else unfinished."""
    metrics, stopped = read_json(path / "metrics.json"), read_json(path / STOPPED)
    if metrics is not None and stopped is None:
        return "done", metrics, stopped
    return (stopped or {}).get("state", "unfinished"), metrics, stopped


def load(path: str | Path, map_location: Any = "cpu") -> dict:
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        raise CheckpointError(f"{path}: not a checkpoint file (no zip header; {path.stat().st_size} bytes): "
                              f"corrupted, or written by something else")
    try:
        # torch.load does not check the archive's CRC-32s: bytes flipped inside a tensor load
        # as different weights without a word. testzip reads every member and checks them.
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
        if bad is not None:
            raise CheckpointError(f"{path}: corrupted checkpoint ({bad} fails its checksum)")
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except Exception as e:  # truncated zip, a pickle with foreign objects, ...
        # PyTorch's own message runs to many lines and suggests weights_only=False, which
        # would execute arbitrary pickled code: report its first sentence only.
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint (truncated or corrupted): {first[:160]}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path}: not a vaelab checkpoint (no 'model'/'config' entries)")
    return ckpt


def check_resumable(ckpt: dict, path: str | Path, needs: tuple[str, ...] = ("optimizer", "state", "rng")) -> None:
    """Refuse, in one line, a checkpoint that holds weights but not what carrying its training
    on needs (a file pruned to save space, say): the optimizer's state, the step counters, the RNG
    states. (A finished run's final evaluation needs only the counters: `needs`.)"""
    missing = [k for k in needs if not isinstance(ckpt.get(k), dict)]
    if missing:
        raise CheckpointError(f"{path}: holds the weights but no {'/'.join(repr(k) for k in missing)} "
                              f"entr{'ies' if len(missing) > 1 else 'y'}: it can be evaluated (vaelab eval), "
                              f"not resumed")


# Settings that change what a checkpoint's weights compute, or the objective they were
# trained for, without changing a tensor's shape.
SAME_AS_TRAINED = ("model.activation", "loss.recon", "data.binarize")
# ... and, to carry the training on, the data split and the seed: a resumed epoch's saved batch
# order and the validation draws depend on them (an evaluation does not: it has its own seed).
SAME_TO_RESUME = (*SAME_AS_TRAINED, "data.val_size", "data.split_seed", "seed", "model.init")  # (init: the
# weights the run started from; changed later it would only misrecord them)


class _NoDefault:
    """What a left-out constructor argument takes where no default can be read (one without a
    default, or one a **kwargs passes on somewhere unseen)."""

    def __str__(self) -> str:
        return "whatever the constructor does without it"


def _default_argument(cfg, name: str):
    """The default of the model constructor's argument `name` (model._target_'s; for a class, also
    its parents' __init__s, where a **kwargs passes it up; opts.a: the entry a of a dict default),
    or a _NoDefault. As the signatures say: a default set in the code (kwargs.setdefault) is not
    seen."""
    import inspect

    from hydra._internal.utils import _locate

    head, *inner = name.split(".")  # (opts.a: the argument opts, a dict)
    try:
        target = _locate(cfg.model._target_)
        funcs = [c.__init__ for c in target.__mro__ if "__init__" in vars(c)] if isinstance(target, type) else [target]
        for func in funcs:
            params = inspect.signature(func).parameters
            if head in params:
                default = params[head].default
                if default is inspect.Parameter.empty:
                    return _NoDefault()
                for part in inner:  # into a dict default; a default that is no dict (None) is the argument's value
                    if not isinstance(default, dict):
                        return default
                    if part not in default:
                        return _NoDefault()
                    default = default[part]
                return default
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):  # (passed no further up)
                break
    except Exception:  # noqa: BLE001 - not importable here, no signature: other checks say so
        pass
    return _NoDefault()


def _same(a, b) -> bool:
    """Whether a setting's two values are one: 1 and 1.0, [8, 4] and (8, 4) are (YAML and Hydra
    read the first of each, a constructor's default may be the second); enums by name."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b
    if isinstance(a, _NoDefault) or isinstance(b, _NoDefault):
        return False
    return str(a) == str(b)  # (an enum and the name a checkpoint stores for it)


def _as_typed(v):
    """A value as one writes it in a config or on the command line: true, null."""
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else v


# Settings of the machine a command runs on, not of the run (train._MAY_DIFFER's, but data.root,
# whose default would read other data)
_NOT_THE_RUNS = {"device", "trainer.progress"}


def check_config_whole(ckpt: dict, path: str | Path, cfg_path: str | Path, cfg, overrides: bool = True,
                       given_now: set[str] = frozenset()) -> None:
    """Refuse a run's saved config that lacks a setting its checkpoint was trained with, where the
    value the config takes in its place (the schema's default: load_run_config fills in what a
    config saved before a setting existed lacks) is another. A line cut out of the file or lost
    with its end would otherwise change the run unseen (trainer.batch_size: 32 gone, a resume went
    on at 128). `overrides`: the command takes KEY=VALUE, which can give the setting instead;
    `given_now`: the keys this command gives so, whatever the value (resume's rules for a change
    of setting then apply to it, as to any other)."""
    from omegaconf import OmegaConf

    from vaelab.config import ConfigError, leaves

    saved = dict(leaves(OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=False)))
    try:  # the keys the run's recorded overrides set to a value that is no dict (resume RUN model.kwargs.opts=null)
        from hydra.core.override_parser.overrides_parser import OverridesParser

        lines = [str(o) for o in OmegaConf.load(Path(cfg_path).parent / "overrides.yaml") or []]
        given = {o.key_or_group for o in OverridesParser.create().parse_overrides(lines)
                 if not isinstance(o.value(), dict)}
    except Exception:  # noqa: BLE001 - none saved, or unreadable: no such changes to know of
        given = set()
    for key, trained in leaves(ckpt.get("config") or {}):
        parts = key.split(".")
        ancestors = [".".join(parts[:i]) for i in range(1, len(parts))]
        if key in _NOT_THE_RUNS or key in saved or key in given_now or given_now.intersection(ancestors):
            continue  # (given now: "give KEY=VALUE" said so, and a value other than the trained one is a change)
        if any(a in saved and saved[a] != {} and a in given for a in ancestors):  # a dict set to a value since:
            continue  # a change, not a line lost (a bare `opts:` whose lines were lost reads as null too)
        if trained == {} and any(k.startswith(f"{key}.") for k in saved):  # (model.kwargs: {}, an argument added
            continue  # since: not a line lost, review; resume records it as a change)
        now = OmegaConf.select(cfg, key)
        now = getattr(now, "name", now)  # enum -> its name, as checkpoints store it
        if key.startswith("model.kwargs.") and now is None:  # a constructor argument left out takes its default
            head = ".".join(parts[:3])  # model.kwargs.opts: the argument (its entries: a dict the config gives whole)
            given_whole = any(k == head or k.startswith(head + ".") for k in saved)
            now = _NoDefault() if given_whole else _default_argument(cfg, key.removeprefix("model.kwargs."))
        if not _same(now, trained):
            trained, now = (_as_typed(v) for v in (trained, now))
            raise ConfigError(f"{cfg_path}: has no {key}; the run trained with {key}={trained} "
                              f"({Path(path).name}), and without it {key} would be {now}: is the file "
                              f"whole? put the line back" + (f", or give {key}=VALUE" if overrides else ""))


def check_compatible(ckpt: dict, model: torch.nn.Module, path: str | Path, cfg=None,
                     keys: tuple[str, ...] = SAME_AS_TRAINED) -> None:
    """Refuse a checkpoint whose weights don't fit `model`, naming the first mismatch; with the
    config the weights are about to be used under, also one trained with another value of one
    of `keys` (same shapes, other numbers)."""
    if cfg is not None:
        from omegaconf import OmegaConf

        theirs = OmegaConf.create(ckpt["config"])
        for key in keys:
            trained = OmegaConf.select(theirs, key)
            now = OmegaConf.select(cfg, key)
            now = getattr(now, "name", now)  # enum -> its name, as checkpoints store it
            if trained is not None and str(trained) != str(now):
                raise CheckpointError(f"{path}: trained with {key}={trained}, but the config says {key}={now}; "
                                      f"a checkpoint keeps the model, objective and data it was trained with "
                                      f"(start a new run to change {key})")
    own = model.state_dict()
    theirs = ckpt["model"]
    missing = [k for k in own if k not in theirs]
    extra = [k for k in theirs if k not in own]
    if missing or extra:
        raise CheckpointError(f"{path}: made for a different model (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in own.items():
        if not hasattr(v, "shape") or not hasattr(theirs[k], "shape"):  # (a model's get_extra_state(): no tensor)
            continue
        if tuple(theirs[k].shape) != tuple(v.shape):
            raise CheckpointError(f"{path}: made for a different model ({k} has shape "
                                  f"{tuple(theirs[k].shape)}, this config needs {tuple(v.shape)})"
                                  + _shape_keys_changed(ckpt, cfg))
    check_finite(ckpt, path, model)


def check_finite(ckpt: dict, path: str | Path, model: torch.nn.Module) -> None:
    """Refuse a checkpoint whose parameters (of `model`) hold nan or inf, or whose buffers hold
    nan (an inf buffer can be a model's own, a clamp's bound say). Training checks the
    parameters before each save, so such a file was changed after; without this, eval failed
    in a picture's SVD with a traceback, and sample wrote a grid of nan."""
    import torch

    weights = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not isinstance(weights, dict):  # (not a checkpoint of a run: check_resumable's to say)
        return

    def holds(key: str, bad) -> bool:
        v = weights.get(key)
        return isinstance(v, torch.Tensor) and v.is_floating_point() and bool(bad(v).any())
    # (every name of a tied parameter: a file may hold another tensor under each)
    bad = next((k for k, _ in model.named_parameters(remove_duplicate=False)
                if holds(k, lambda v: ~torch.isfinite(v))), None)
    bad = bad or next((k for k, _ in model.named_buffers(remove_duplicate=False) if holds(k, torch.isnan)), None)
    if bad is not None:
        raise CheckpointError(f"{path}: its weights hold nan or inf ({bad}), which training never saves (it "
                              f"checks them before each save): the file was changed since; use another checkpoint")


def _shape_keys_changed(ckpt: dict, cfg) -> str:
    """'; trained with latent_size=16, the config says latent_size=8' for the settings that give
    the model its shapes, so the user reads what they typed rather than a tensor's shape."""
    if cfg is None:
        return ""
    from omegaconf import OmegaConf

    from vaelab.models.mlp import SIZES

    def shape_settings(c) -> dict:
        hidden, size = OmegaConf.select(c, "model.hidden"), OmegaConf.select(c, "model.size")
        size = getattr(size, "name", size)
        widths = list(hidden) if hidden is not None else SIZES.get(str(size))  # as MLPVAE builds it
        return {"latent_size": OmegaConf.select(c, "latent_size"), "hidden widths": widths}

    theirs, now = shape_settings(OmegaConf.create(ckpt["config"])), shape_settings(cfg)
    changed = [k for k in theirs if theirs[k] is not None and theirs[k] != now[k]]
    if not changed:
        return ""
    return (f"; trained with {', '.join(f'{k} {theirs[k]}' for k in changed)}, "
            f"the config says {', '.join(f'{k} {now[k]}' for k in changed)}")


# --- RNG state: every generator a run draws from ----------------------------------------


def rng_state() -> dict:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]) + [random.getstate()[0], random.getstate()[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "mps": torch.mps.get_rng_state() if torch.backends.mps.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    py = state["python"]
    random.setstate((py[-2], tuple(py[:-2]), py[-1]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("mps") is not None and torch.backends.mps.is_available():  # absent before 2026-11-25
        torch.mps.set_rng_state(state["mps"])
