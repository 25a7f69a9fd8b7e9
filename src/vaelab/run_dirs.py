"""The folders vaelab-train's Hydra app runs in: a sweep job's folder name (job_name), the
config a job that `vaelab resume SWEEP_DIR` starts saves, a job folder another job of the sweep
already holds, and the removal of the folders of runs and sweeps that never started (a refusal,
a Ctrl-C before training, a bug in a model of one's own), which `vaelab compare` would otherwise
list as unfinished runs. It imports no torch, so a command that only looks at folders need not."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vaelab import checkpoint as ckpt_io
from vaelab.config import leaves, to_plain
from vaelab.workflow import SWEEP_CONTINUED


_HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes into a run's .hydra/


def made_for_this_launch(folder: Path) -> bool:
    """Whether vaelab-train made `folder` for this launch (train_cli.LAUNCH_MADE_ENV): the default
    one, or a named one that did not exist before; not a link."""
    from vaelab.train_cli import LAUNCH_MADE_ENV

    made = os.environ.get(LAUNCH_MADE_ENV)
    return bool(made) and not folder.is_symlink() and os.path.realpath(made) == os.path.realpath(folder)


def remove_if_never_started(run_dir: Path, hc) -> str | None:
    """A run that never started would list in `vaelab compare` as an unfinished run: when its
    folder holds nothing but what Hydra put there, remove the folder ("folder") if it was made
    for this launch (or is a sweep's job folder), else only Hydra's files in it, .hydra/'s three
    and train.log ("contents": a folder that was there before, which may be the current one, or
    a link, stays, with what else it holds, a .gitkeep say). None where it removed nothing."""
    if not run_dir.is_dir():
        return None
    sweep = sweep_dir(hc) if hc.mode.name == "MULTIRUN" else None
    made = made_for_this_launch(run_dir) or (
        sweep is not None and not run_dir.is_symlink() and os.path.realpath(run_dir) != os.path.realpath(sweep)
        and Path(os.path.realpath(run_dir)).is_relative_to(os.path.realpath(sweep)))

    def others() -> set[str]:  # what the run did not put there (a folder that was there before: its hidden files)
        names = {p.name for p in run_dir.iterdir()} - {".hydra", "train.log"}
        return names if made else {n for n in names if not n.startswith(".")}
    if others():
        return None
    try:
        with ckpt_io.only_process(run_dir):  # not a run another process has just begun there
            if others():  # (looked at again, held)
                return None
            if made:
                shutil.rmtree(run_dir, ignore_errors=True)
            else:
                for name in _HYDRA_FILES:
                    (run_dir / ".hydra" / name).unlink(missing_ok=True)
                try:
                    (run_dir / ".hydra").rmdir()
                except OSError:  # (files of the user's in it: they stay)
                    pass
                (run_dir / "train.log").unlink(missing_ok=True)
    except ckpt_io.CheckpointError:
        return None
    if made:
        _remove_name_folder_if_empty(run_dir.parent, hc.runtime.cwd)
        return None if run_dir.exists() else "folder"
    return None if any((run_dir / ".hydra" / n).exists() for n in _HYDRA_FILES) else "contents"


def remove_sweep_refused_part_way(sweep: Path, cwd: str) -> None:
    """After a sweep stopped at a job's refusal: joblib ends the jobs running beside that one
    where they are, before their own clean-up, so their folders held Hydra's files alone, and the
    sweep folder made for this launch (`sweep`) its multirun.yaml besides (Optuna's sweeper writes
    none); a refused job in a nested hydra.sweep.subdir (a/${hydra.job.num}/b) left its a/N/. Such
    job folders go, then the folders left empty outside any run's, and the sweep folder if nothing
    else is left (a job that had trained stays, and so does the sweep folder around it, for
    vaelab resume SWEEP_DIR). A single run's folder (.hydra/ at its top) is not a sweep's."""
    if not sweep.is_dir() or sweep.is_symlink() or (sweep / ".hydra").exists():
        return
    for hydra_dir in sorted(sweep.rglob(".hydra"), key=lambda p: len(p.parts), reverse=True):
        job = hydra_dir.parent
        if (job.is_symlink() or {p.name for p in job.iterdir()} - {".hydra", "train.log"}
                or {p.name for p in hydra_dir.iterdir()} - set(_HYDRA_FILES)):
            continue
        try:
            with ckpt_io.only_process(job):  # (not a job that is training after all)
                shutil.rmtree(job, ignore_errors=True)
        except ckpt_io.CheckpointError:
            continue
    runs = {p.parent for p in sweep.rglob(".hydra")}
    for root, _, _ in os.walk(sweep, topdown=False):  # deepest first: a/0/ once its b/ has gone, then a/
        folder = Path(root)
        if folder != sweep and not any(folder == r or r in folder.parents for r in runs):
            try:
                folder.rmdir()
            except OSError:  # (not empty: the user's files, say)
                pass
    if {p.name for p in sweep.iterdir()} <= SWEEP_OWN_FILES:
        remove_sweep(sweep, cwd)


# What a sweep's launch writes into its folder, besides its jobs' folders
SWEEP_OWN_FILES = {"multirun.yaml", ckpt_io.SWEEP_LOCK, ckpt_io.SWEEP_STOP}


def remove_sweep(sweep: Path, cwd: str) -> None:
    """A sweep folder made for this launch that holds nothing of a job, and the name folder
    around it if that is left empty."""
    shutil.rmtree(sweep, ignore_errors=True)
    _remove_name_folder_if_empty(sweep.parent, cwd)


def _remove_name_folder_if_empty(folder: Path, cwd: str) -> None:
    """outputs/runs/<name>/ or outputs/multirun/<name>/, made for a run that never started, goes
    when empty; the parent of a folder the user named (hydra.run.dir=mine/r1) stays."""
    if folder.parent not in (Path(cwd, "outputs", "runs"), Path(cwd, "outputs", "multirun")):
        return
    try:
        folder.rmdir()
    except OSError:  # not empty (or gone): leave it
        pass


def another_jobs_run(cfg: DictConfig, run_dir: Path) -> str | None:
    """Why this fresh sweep job must not train in run_dir: the folder holds the run of another
    job of the sweep, which got the same folder name (the keys the jobs differ in are left out
    of it: hydra.job.config.override_dirname.exclude_keys, a hydra.sweep.subdir of one's own).
    train() would carry that run on as this job's, under this job's config. Hydra has already
    written this job's config over the other's: put back the one its checkpoint was trained with.
    A job that submitit requeues comes back to its own run, with the same config: None."""

    last = ckpt_io.latest(run_dir / "checkpoints")
    if last is None:  # a run that diverged before its first checkpoint keeps its settings in stopped.json (review:
        # a job of other values trained over it silently)
        saved = (ckpt_io.read_json(run_dir / ckpt_io.STOPPED) or {}).get("config")
        if not isinstance(saved, dict):
            return None
    else:
        try:
            saved = ckpt_io.load(last, map_location="cpu")["config"]
        except (ckpt_io.CheckpointError, KeyError):  # train() reports a damaged checkpoint itself
            return None
    mine, theirs = dict(leaves(to_plain(cfg))), dict(leaves(saved))
    differ = sorted(k for k in {**mine, **theirs} if mine.get(k) != theirs.get(k))
    if not differ:
        return None
    from vaelab.train_cli import override_value

    def theirs_in(overrides: list) -> list:  # this job's overrides, with the other job's values
        out = []
        for o in overrides:
            given, key = o.split("=", 1)[0], o.split("=", 1)[0].lstrip("+~")
            out.append(f"{given}={override_value(theirs[key])}" if "=" in o and key in differ and key in theirs else o)
        return out
    hydra_dir = run_dir / ".hydra"
    ckpt_io.write_text_atomic(hydra_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(saved)))
    for name, path in (("overrides.yaml", None), ("hydra.yaml", "hydra.overrides.task")):
        if (hydra_dir / name).is_file():
            node = OmegaConf.load(hydra_dir / name)
            # (as plain strings: an override may hold ${...}, which a list item would resolve)
            if path is None:
                node = OmegaConf.create(theirs_in(OmegaConf.to_container(node, resolve=False)))
            elif OmegaConf.select(node, path) is not None:
                given = OmegaConf.to_container(OmegaConf.select(node, path), resolve=False)
                OmegaConf.update(node, path, theirs_in(given), merge=False)
            ckpt_io.write_text_atomic(hydra_dir / name, OmegaConf.to_yaml(node))
    shown = ", ".join(f"{k}={mine.get(k)} (theirs {theirs.get(k)})" for k in differ[:3])
    return (f"{run_dir} holds the run of another job of this sweep, which got the same folder name: they differ "
            f"in {shown}{', ...' if len(differ) > 3 else ''}, which the folder name leaves out "
            f"(hydra.job.config.override_dirname.exclude_keys, or hydra.sweep.subdir); give each job a folder of "
            f"its own. That run is left as it was, its config put back")


def from_launch_folder(cfg: DictConfig, hc) -> DictConfig:
    """A relative data.root is relative to the folder vaelab-train was started in (the pre-flight
    looked there, and `vaelab eval` and `resume` read it so), also with hydra.job.chdir=true,
    which makes the run folder the current one. In place; the saved config keeps it relative."""
    root = Path(os.path.expanduser(str(cfg.data.root)))  # (~nosuchuser: as it is)
    if hc.job.chdir and not root.is_absolute():
        cfg.data.root = str(Path(hc.runtime.cwd) / root)
    return cfg


def sweep_dir(hc) -> Path:
    return Path(os.path.normpath(Path(hc.runtime.cwd, hc.sweep.dir)))


def save_job_config(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra writes into a job's .hydra/ (hydra.core.utils.run_job), for a job that
    `vaelab resume SWEEP_DIR` starts: that launch sets hydra.output_subdir=null so that Hydra
    leaves the jobs that began alone. hydra.yaml records the folder and env as a first launch would."""
    hydra_cfg = OmegaConf.create({"hydra": OmegaConf.to_container(HydraConfig.get(), resolve=False)})
    hydra_cfg.hydra.output_subdir = ".hydra"
    hydra_cfg.hydra.job.env_set.pop(SWEEP_CONTINUED, None)
    ours = ("hydra.output_subdir=null", f"++hydra.job.env_set.{SWEEP_CONTINUED}=1")  # workflow.sweep_command_line's
    # (as plain strings: an override that holds ${...}, as a re-run of a saved config's
    # ++hydra.run.dir=outputs/runs/${name}/... does, would be resolved, and fail, as a list item)
    given = OmegaConf.to_container(hydra_cfg.hydra.overrides.hydra, resolve=False)
    hydra_cfg.hydra.overrides.hydra = [o for o in given if o not in ours]
    out = run_dir / ".hydra"
    out.mkdir(parents=True, exist_ok=True)
    for name, node in (("config.yaml", cfg), ("hydra.yaml", hydra_cfg),
                       ("overrides.yaml", HydraConfig.get().overrides.task)):
        ckpt_io.write_text_atomic(out / name, OmegaConf.to_yaml(node))


def job_name(override_dirname: str, job_num) -> str:
    """Folder name of one sweep job: Hydra's override_dirname (its overrides, sorted, minus
    hydra.job.config.override_dirname.exclude_keys), e.g. 'latent_size=16,loss.beta=4'; a '/'
    in a value would make subfolders, so it is written %2F (and '%' %25: two values never share
    a folder). A name past the file system's 255 bytes keeps its start and a hash of the
    whole. With nothing left: job<N>."""
    name = str(override_dirname).replace("%", "%25").replace("/", "%2F")
    if len(name.encode()) > 200:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = name.encode()[:180].decode(errors="ignore") + f"...{digest}"
    return name or f"job{job_num}"
