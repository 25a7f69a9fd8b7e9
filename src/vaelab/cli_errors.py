"""Turn a bad command line into one clear line, before Hydra starts any job.

Hydra reports composition errors as several lines plus a hint about HYDRA_FULL_ERROR. We
compose the same config first with Hydra's compose API (same files, same schema, same
override grammar) and, on failure, say in one line which override was wrong and what is
allowed. For a sweep (`latent_size=2,8`) every listed value is checked the same way.
"""
from __future__ import annotations

import difflib
import errno
import functools
import os
import re
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, RangeSweep
from omegaconf import DictConfig, OmegaConf

from vaelab.checkpoint import CheckpointError, check_not_in_use, enclosing_run, holds_runs, is_run, sweep_running
from vaelab.config import (CONF_DIR, Config, ConfigError, absolute, choices, hydra_section, integer_as_bool,
                           integer_as_bool_in_files, leaves, register_configs, typed, validate)

# Hydra's own flags; those in _WITH_VALUE take the next argument as their value.
_WITH_VALUE = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c",
               "--package", "-p", "--experimental-rerun"}


# All of them, as Hydra 1.3's argparse defines them (hydra/_internal/utils.py, get_args_parser).
_LONG_FLAGS = ("--help", "--hydra-help", "--version", "--cfg", "--resolve", "--package", "--run", "--multirun",
               "--shell-completion", "--config-path", "--config-name", "--config-dir", "--experimental-rerun", "--info")
_SHORT_FLAGS = {"-h", "-c", "-p", "-r", "-m", "-sc", "-cp", "-cn", "-cd", "-i"}

_FLAG_EXAMPLES = {"--config-path": "/abs/folder", "-cp": "/abs/folder", "--config-name": "config", "-cn": "config",
                  "--config-dir": "RUN_DIR/.hydra", "-cd": "RUN_DIR/.hydra", "--cfg": "job", "-c": "job",
                  "--package": "_global_", "-p": "_global_"}

# --info takes an optional value, one of these (Hydra's argparse choices).
_INFO = {"--info", "-i"}
_INFO_VALUES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}


def _positions(argv: list[str]) -> tuple[list[int], dict[str, str | None]]:
    """Indices of the overrides in argv, and Hydra's flags with their values."""
    where, flags = [], {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-"):
            if "=" in a and a.split("=", 1)[0] in _WITH_VALUE | _INFO:
                k, v = a.split("=", 1)
                flags[k] = v
            elif (a in _WITH_VALUE and i + 1 < len(argv)) or (
                    a in _INFO and i + 1 < len(argv) and argv[i + 1] in _INFO_VALUES):
                flags[a] = argv[i + 1]
                i += 1
            else:
                flags[a] = None
        else:
            where.append(i)
        i += 1
    return where, flags


def split_args(argv: list[str]) -> tuple[list[str], dict[str, str | None]]:
    """Separate overrides from Hydra flags."""
    where, flags = _positions(argv)
    return [argv[i] for i in where], flags


def overrides_first(argv: list[str]) -> list[str]:
    """argv with its overrides together, first, and the flags after them in their order: Hydra's
    argparse takes the overrides as one run of positionals (`latent_size=2,4 -m trainer.epochs=1`
    ended in its usage block), and a flag with an optional value (--info) would take an override
    that followed it as that value."""
    where, _ = _positions(argv)
    rest = set(range(len(argv))) - set(where)
    return [argv[i] for i in where] + [argv[i] for i in sorted(rest)]


def add_overrides(argv: list[str], extra: list[str]) -> list[str]:
    """argv with `extra` overrides placed right after the user's last override (first if there
    is none): Hydra's argparse takes the overrides as one run of positionals, so one appended
    after a flag (`latent_size=16 --cfg job EXTRA`, `--info EXTRA`) breaks the command."""
    where, _ = _positions(argv)
    at = where[-1] + 1 if where else 0
    return argv[:at] + extra + argv[at:]


def _keys_of(node) -> list[str]:
    return list(node.keys()) if isinstance(node, DictConfig) else []


def _explain(exc: Exception, override: str, composed: DictConfig | None = None) -> str:
    """One line for a failed composition; `composed`: the config as it was before this override
    (with Hydra's section), whose keys are listed for an unknown key outside our schema."""
    cause = exc.__cause__ or exc
    lines = str(cause).strip().splitlines()
    msg = lines[0] if lines else type(cause).__name__
    if msg.endswith(":") and len(lines) > 1:  # "In 'experiment/mine': ConfigKeyError raised while composing config:"
        msg = f"{msg} {lines[1].strip()}"  # (what it raised is on the next line: "Key 'latent_sz' not in 'Config'")
    mark = getattr(cause, "problem_mark", None)
    if isinstance(cause, yaml.MarkedYAMLError) and mark is not None and cause.problem:
        # A YAML file of one's own that does not parse: its first line, "while parsing a flow sequence",
        # named neither the file nor the line; they are on the lines after it
        began = cause.context_mark
        msg = (f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}: {cause.problem}"
               + (f" ({cause.context}{f' begun on line {began.line + 1}' if began is not None else ''})"
                  if cause.context else ""))
    full_key = getattr(cause, "full_key", None)
    given_in = f"override '{override}'"
    # A config group file of one's own with a key its section does not have: Hydra names the file and
    # the schema's class, not the key (no full_key), and the line had none of the hints below.
    in_file = re.match(r"In '([^']+)': (?:ConfigKeyError raised while composing config: Key '([^']+)' not in "
                       r"'(\w+)'|Could not override '[^'@]+@([^'.]+)\.)", msg)
    if in_file and not full_key:
        file, key, cls, under = in_file.groups()
        # the file's group: the override's (experiment=sub/mine: sub/ is part of the option's name), or
        # for a file another one's defaults list chose, its first folder
        chosen = override.split("=", 1)[0].lstrip("+~")
        group = chosen if file.startswith(f"{chosen}/") else file.split("/", 1)[0]
        section = _schema_sections().get(cls) if cls else None
        if under == group or (section == "" and key == group):  # experiment/mine.yaml without its header
            return (f"override '{override}': {file}.yaml is read into '{group}.', where vaelab has no settings; "
                    f"start the file with the line '# @package _global_', as conf/{group}/*.yaml do")
        if section is not None and key == group.replace("/", ".") == section:  # model/mine.yaml with a model: level
            return (f"override '{override}': {file}.yaml is read into '{section}.' already: leave out its "
                    f"'{key}:' level and write its keys at the top of the file")
        if section is not None:
            full_key, given_in = f"{section}.{key}" if section else key, f"{file}.yaml (override '{override}')"
    if override.startswith("~") and "does not support deletion" in msg:  # a key of a typed section
        return _cannot_delete(override)
    if "not in" in msg and full_key:  # unknown key: suggest the closest known ones
        parent, _, leaf = full_key.rpartition(".")
        schema = composed if composed is not None and full_key.startswith("hydra.") else OmegaConf.structured(Config)
        node = OmegaConf.select(schema, parent) if parent else schema
        known = _keys_of(node)
        if leaf in known and given_in.startswith("override"):  # in the schema, not in the config composed: a
            # saved run's, older than the key
            return (f"'{full_key}' is not in this config (it was saved before vaelab had that key); add it "
                    f"with a leading +: '+{override.lstrip('+~')}'")
        # as full keys: the closest in its own section, ...
        close = [f"{parent}.{k}" if parent else k for k in difflib.get_close_matches(leaf, known, n=1)]
        if not full_key.startswith("hydra"):
            leaves = _setting_keys()  # (schema is vaelab's own here, not Hydra's section)
            # ... unless the key itself is in one other section (optim.epochs: trainer.epochs, not optim.eps;
            # lr: optim.lr; trainer.latent_size: latent_size, which model.latent_size follows)
            named = [k for k in leaves if k.rpartition(".")[2] == leaf]
            named = [k for k in named if "." not in k] or named
            if not parent:  # a section's key with its dot left out: lossbeta
                dotted = {k.replace(".", ""): k for k in leaves}
                close = ([dotted[m] for m in difflib.get_close_matches(leaf, dotted, n=1, cutoff=0.85)]
                         or (named if len(named) == 1 else []) or close)
            elif len(named) == 1:
                close = named
        if not close and isinstance(node, DictConfig) and OmegaConf.get_type(node) is dict:  # hydra.job.env_set
            return (f"unknown key '{full_key}' in override '{override}': '{parent}' takes new keys with a "
                    f"leading +, as in '+{override.lstrip('+~')}'")
        hint = f" did you mean '{close[0]}'?" if close else ""
        where = f"'{parent}'" if parent else "the top level"
        own = " (a model of one's own takes its arguments under model.kwargs)" if parent == "model" and not close \
            else ""
        return (f"unknown key '{full_key}' in {given_in};{hint} keys allowed at {where}: "
                f"{', '.join(known)}{own}{_other_launcher_hint(full_key)}")
    if override.lstrip("+~").startswith("hydra.sweeper.params") and "NoneType" in msg:
        # Hydra's basic sweeper has no params until a config file gives them (its own error said
        # "'NoneType' object has no attribute 'get'", review)
        return (f"override '{override}': Hydra's basic sweeper takes hydra.sweeper.params from a config file only; "
                f"sweep on the command line as KEY=a,b (latent_size=2,16), or put the params in a primary config of "
                f"one's own (--config-dir DIR --config-name NAME)")
    if "Could not append to config. An item is already at" in msg:  # +latent_size=8
        return f"override '{override}': {msg.rstrip('.')}; a leading + adds a new key: set it with '{override[1:]}'"
    if "Config group override must be a string or a list" in msg:  # experiment=null
        group = override.split("=", 1)[0].lstrip("+~")
        if not group:  # =3: Hydra took the empty key for the primary config's group
            return no_key(override)
        # (hydra/...: Hydra's and its plugins' options, which conf/ lists only in part)
        options = [] if group.startswith("hydra/") else sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        return (f"override '{override}': {group} is a config group: choose one of its options"
                f"{' (' + ', '.join(options) + ')' if options else ''}, or leave it out")
    if "Could not find" in str(exc):  # unknown config group option, e.g. experiment=sed
        lines = str(exc).splitlines()
        opts = [ln.strip() for ln in lines if ln.startswith("\t") and "provider=" not in ln]
        return f"override '{override}': {lines[0].split(': ', 1)[-1]}; available: {', '.join(opts)}"
    if "is not Optional" in msg and full_key:  # device=null: say what it takes instead
        allowed = choices().get(full_key)
        t = _setting_type(full_key)
        named = {"device": "auto, cpu, cuda, cuda:N or mps", "name": "a name for the run's folder, e.g. name=mine",
                 "data.root": "the folder that holds MNIST/raw/"}
        takes = (f"one of {', '.join(allowed)}" if allowed else named.get(full_key) or
                 {int: "an integer", float: "a number", str: "a text", bool: "true or false"}.get(t, "a value"))
        return f"override '{override}': {full_key} cannot be null; give {takes}"
    if full_key is None and cause is exc:  # a value in a group file of one's own: Hydra names the file, and the
        full_key = getattr(exc.__context__, "full_key", None)  # key only on the lines after (review)
    if full_key:
        return f"override '{override}': {msg} (key '{full_key}'){_what_it_takes(full_key, msg)}"
    return f"override '{override}': {msg}"


@functools.lru_cache(maxsize=1)
def _schema_sections() -> dict[str, str]:
    """{the schema's class name: its section}: ModelConfig -> 'model', Config -> '' (Hydra's words
    for a group file's unknown key name the class)."""
    import dataclasses

    found = {Config.__name__: ""}

    def walk(cls, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            kind = f.default_factory if f.default_factory is not dataclasses.MISSING else None
            if isinstance(kind, type) and dataclasses.is_dataclass(kind):
                found.setdefault(kind.__name__, f"{prefix}{f.name}")
                walk(kind, f"{prefix}{f.name}.")
    walk(Config, "")
    return found


def _what_it_takes(key: str, msg: str) -> str:
    """What a setting takes, after OmegaConf's words for a value of the wrong type, where those
    do not say it: a boolean's two values, a list's brackets, or (data.binarize=true, which
    Hydra reads as a boolean before the setting sees it) the choices as text."""
    import typing

    t = _setting_type(key)
    if t is bool and "not a valid bool" in msg:
        return "; give true or false"
    if list in (typing.get_origin(t), *map(typing.get_origin, typing.get_args(t))) and "is not a ListConfig" in msg:
        return f"; give a list in brackets, e.g. {key}=[512]" if key == "model.hidden" else "; give a list in brackets"
    if key in choices() and ("'True'" in msg or "'False'" in msg):
        return " (Hydra reads true and false as booleans)"
    if "could not be converted to Integer" in msg:  # (1e3 reads as the float 1000.0; review)
        return "; give a whole number (1000, not 1e3 or 1000.0)"
    if "could not be converted to Float" in msg:
        return "; give a number (0.5, 1e-3)"
    return ""


def _config_file_error(exc: Exception, primary: tuple[str, str]) -> str:
    """One line for a primary config that does not load: the file, YAML's reason and where."""
    path = Path(primary[0]) / f"{primary[1]}.yaml"
    cause = exc.__cause__ or exc
    lines = [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
    where = next((m.group(1) for ln in reversed(lines) if (m := re.search(r"(line \d+, column \d+)", ln))), None)
    if getattr(cause, "full_key", None):  # OmegaConf's: the reason first, then its details
        reason = lines[0] if lines else type(cause).__name__
        if "not in" in reason:  # a key the schema does not have
            reason = f"unknown key '{cause.full_key}'"
        else:  # a value of the wrong type: which key, as an override's error says
            reason += f" (key '{cause.full_key}')"
    elif type(cause).__name__ == "MissingConfigException" and lines:  # its defaults list names what is not found;
        # the lines after are the search path (--config-path leaves vaelab's own conf/ out of it)
        reason = lines[0].split(": ", 1)[-1].rstrip(".")
        if "Could not load 'config'" in lines[0]:  # (not "In 'config': Could not find 'trainer/x'": review)
            reason += "; a primary config of one's own that starts from vaelab's ('config') is given with --config-dir"
    else:  # YAML's: where it began, then what it found
        reason = next((ln for ln in reversed(lines) if not ln.startswith("in ")), type(cause).__name__)
    return f"{path}: {reason}{f' ({where})' if where else ''}"


def _group_options(group: str) -> list[str]:
    """The options of a config group as Hydra lists them (conf/, the schema's, installed
    plugins'); none for a key that is not a group."""
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            return GlobalHydra.instance().config_loader().get_group_options(group)
    finally:
        GlobalHydra.instance().clear()


class _FileValueError(ConfigError):
    """A value in a config file of one's own that composing reads as another (one line naming the file)."""


def _compose(overrides: list[str], hydra_section: bool = False,
             primary: tuple[str, str] = (str(CONF_DIR), "config"), searchpath: list[str] = ()) -> DictConfig:
    """`primary`: the folder and name of the primary config (a saved run's for a re-run);
    `searchpath`: the command line's hydra.searchpath=[...] (config groups of one's own), which
    the run's composition searches too."""
    register_configs()  # the schema conf/config.yaml names (idempotent; main() has usually done it)
    overrides = [*(o for o in searchpath if o not in overrides), *overrides]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(primary[0], version_base="1.3"):
            cfg = compose(primary[1], overrides=overrides, return_hydra_config=hydra_section)
            # files of one's own: progress: 2 in one, which composing took for true
            line = integer_as_bool_in_files(primary[1], overrides) if searchpath or primary[0] != str(CONF_DIR) \
                else None
        if line:
            raise _FileValueError(line)
    finally:
        GlobalHydra.instance().clear()
    if not hydra_section:
        # Hydra lets `+key=` / `++key=` add keys past the schema; the run merges onto it (typed),
        # so an added key the schema lacks fails there: check it here, while it is one line.
        typed(cfg)
    return cfg


def too_long(path: str | Path) -> str | None:
    """Why the file system would refuse `path` whatever it holds (ENAMETOOLONG), or None: a name of
    over 255 bytes (name= of 300 letters), over 4096 in all. (A traceback from the first stat, review.)"""
    if len(os.fsencode(str(path))) >= 4096:
        return "that path is longer than the file system allows (4096 bytes)"
    if any(len(os.fsencode(part)) > 255 for part in Path(path).parts):
        return "a name in that path is longer than the file system allows (255 bytes)"
    return None


def unwritable(folder: Path) -> str | None:
    """Why run folders cannot be made at `folder` (its nearest existing part decides), or None."""
    if (long := too_long(absolute(folder))) is not None:
        return long
    path = Path(absolute(folder))  # (missing/../x: x, where Hydra's mkdir goes; .parents would skip the ..)
    there = next((p for p in (path, *path.parents) if p.exists()), None)
    if there is None:
        return None
    if not there.is_dir():
        return f"{there} is a file, not a folder"
    try:  # a real try, not os.access: root passes that on read-only mounts (/proc, a ro bind)
        os.rmdir(tempfile.mkdtemp(prefix=".vaelab-probe-", dir=there))
    except OSError as e:  # ENOENT in a folder that exists: /proc, /sys, whose "No such file" misleads
        why = "" if e.errno == errno.ENOENT else f" ({e.strerror or e})"
        return f"cannot make folders in {there}{why}"
    return None


@dataclass
class _CommandLine:
    """What precheck reads off vaelab-train's arguments, once."""
    parsed: list  # every override, Hydra's own included (hydra.*, hydra/launcher=...)
    flags: dict[str, str | None]
    task: list = field(init=False)  # the job's overrides
    modes: list[str] = field(init=False)  # --multirun, --run, --cfg, --info, ... as given
    helps: list[str] = field(init=False)
    swept: list[str] = field(init=False)  # overrides listing several values, as typed
    multirun: bool = field(init=False)  # -m given
    optuna: bool = field(init=False)  # hparams_search=optuna: a sweep without -m
    optuna_draws: bool = field(init=False)  # Optuna's sweeper draws the values (hparams_search or hydra/sweeper)
    folders: dict = field(init=False)  # hydra.run.dir / hydra.sweep.dir as given
    continuing: Path | None = None  # a stopped sweep's folder that this command carries on
    val_sizes: dict = field(default_factory=dict)  # data.root -> the largest data.val_size of a job (filled later)

    def taken(self, folder: Path, sweep: bool) -> str | None:
        """_taken, except for the sweep folder `vaelab resume SWEEP_DIR` carries on."""
        if sweep and self.continuing is not None and folder.resolve() == self.continuing.resolve():
            return None
        return _taken(folder, sweep)

    def __post_init__(self):
        self.task = [o for o in self.parsed if not o.is_hydra_override()]
        self.modes = [f for f in self.flags if f in ("--multirun", "-m", "--run", "-r", "--cfg", "-c", "--info", "-i",
                                                     "--shell-completion", "-sc")]
        self.helps = [f for f in self.flags if f in ("--help", "-h", "--hydra-help")]
        self.swept = [o.input_line for o in self.task if o.is_sweep_override()]
        self.multirun = bool({"--multirun", "-m"} & set(self.flags))
        self.optuna = any(o.key_or_group == "hparams_search" and str(o.value()) == "optuna" for o in self.task)
        # whether Optuna draws the sweep's values (its own ranges): hparams_search=optuna, or its sweeper by hand
        self.optuna_draws = self.optuna or any(o.key_or_group == "hydra/sweeper" and str(o.value()) == "optuna"
                                               for o in self.parsed)
        self.folders = {o.key_or_group: o.value() for o in self.parsed  # (~KEY: _cannot_delete's)
                        if o.key_or_group in ("hydra.run.dir", "hydra.sweep.dir") and not o.is_delete()}

    def given(self, key: str) -> str | None:
        return str(self.folders[key]) if key in self.folders else None


def precheck(argv: list[str], fetch_data: bool = False, continuing: Path | None = None,
             where: dict | None = None) -> str | None:
    """None if the command line composes and validates; else one line saying what is wrong.
    fetch_data: also make sure each job's MNIST is there (downloading it once if allowed).
    continuing: the folder of a stopped sweep that this command line carries on, whose runs
    are expected there. where: filled, for a command line that can run in a folder it did not
    name (conf/config.yaml's ${now:...} default), with that folder's key and resolved path.
    The steps: the arguments as given; which primary config; each job's config (a sweep's
    values in turn); Hydra's own section (launcher, sweeper, logging); the folders Hydra will
    make; the data."""
    err = _flag_error(argv)
    if err:
        return err
    overrides, flags = split_args(argv)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # OverrideParseException
        return parse_error(overrides, e)
    cmd = _CommandLine(parsed, flags, continuing)
    err = _argument_error(cmd)
    if err:
        return err
    primary = _primary_config(cmd)
    if primary is None:  # Hydra's to handle
        return None
    if (Path(primary[0]) / "hydra.yaml").is_file():  # a re-run of a run's saved config: its groups are chosen
        for o in cmd.task:
            group = o.key_or_group.lstrip("+")
            if group == "hydra" or not (CONF_DIR / group).is_dir() or isinstance(o.value(), dict):
                continue  # (optim={lr:0.01} sets its keys)
            new_run = f"start a new run from conf/: vaelab-train {o.input_line.lstrip('+')} ..."
            if group in ("experiment", "hparams_search"):  # (they set keys all over, hydra's too)
                return f"override '{o.input_line}': a saved config is a whole config already; {new_run}"
            return (f"override '{o.input_line}': a saved config has its {group} settings already, not conf/'s "
                    f"choices; change its keys ({_example_key(group)}=...), or {new_run}")
    searchpath = [o.input_line for o in cmd.parsed if o.is_hydra_override() and not o.is_sweep_override()
                  and o.key_or_group == "hydra.searchpath"]
    for o in cmd.parsed:  # a folder that is not there: Hydra warns in two lines, then cannot find what it holds
        if o.input_line in searchpath and isinstance(o.value(), list):
            for entry in map(str, o.value()):
                folder = entry.removeprefix("file://")
                if "://" not in folder and not Path(folder).is_dir():
                    return (f"override '{o.input_line}': {entry}: no such folder; hydra.searchpath takes folders "
                            f"of config groups of one's own, as file:///abs/path or file://relative/path")
    config_dir = cmd.flags.get("--config-dir") or cmd.flags.get("-cd")
    if config_dir and primary == (str(CONF_DIR), "config"):  # as Hydra searches it: after conf/ and hydra.searchpath
        given = next((list(o.value()) for o in cmd.parsed if o.input_line in searchpath), [])  # (Hydra keeps the first)
        paths = [*map(str, given), f"file://{os.path.abspath(config_dir)}"]
        searchpath = [f"hydra.searchpath=[{','.join(paths)}]"]
    compose_ = functools.partial(_compose, primary=primary, searchpath=searchpath)
    if primary != (str(CONF_DIR), "config") and not (Path(primary[0]) / "hydra.yaml").is_file():
        err = _not_from_vaelabs(compose_, primary)
        if err:
            return err
    try:
        base, candidates, swept_from = _job_overrides(cmd)
    except ConfigError as e:
        return str(e)
    err, data_roots = _jobs_error(compose_, candidates, cmd, swept_from)
    if err:
        return err
    err, composed, launcher = _hydra_section_error(compose_, base, cmd)
    if err or {"--cfg", "-c", "--help", "-h"} & set(flags):
        return err
    # Hydra makes the run's folder first, and fails there with a traceback
    full = composed if composed is not None else compose_(base, hydra_section=True)
    mode = OmegaConf.select(full, "hydra.mode")
    multirun = cmd.multirun or str(getattr(mode, "name", mode)) == "MULTIRUN"
    given = {"hydra.run.dir": cmd.given("hydra.run.dir"), "hydra.sweep.dir": cmd.given("hydra.sweep.dir")}
    err = (_folder_error(full, multirun, given, cmd.taken)
           or _other_folder_error(full, multirun) or (multirun and _job_folders_error(full, cmd))
           or _optuna_settings_error(full, cmd) or _optuna_storage_error(full))
    if err:
        return err
    if fetch_data and not launcher.endswith("SlurmLauncher"):  # SLURM's nodes may see other paths
        # The data once, here, before any job: a sweep's jobs would each fail on missing data
        # (submitit with a traceback) or download the same files into one folder at once.
        from vaelab.data import DataError, fetch_mnist, mnist_train_size, val_size_error

        for root, download in data_roots.items():
            if (long := too_long(root)) is not None:
                return f"data.root={root}: {long}"
            try:
                fetch_mnist(root, download)
                n = mnist_train_size(root)
            except DataError as e:
                return str(e)
            # (every job's data.val_size against every root: a sweep pairs each value with each)
            val = max(cmd.val_sizes.values(), default=0)
            if n is not None and (why := val_size_error(val, n, root)):  # (a sweep's job failed there after the
                return why                                                 # others had trained)
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = OmegaConf.select(full, key, throw_on_resolution_failure=False)
    if where is not None and folder is not None:
        if not multirun:  # (launch() holds its lock from before Hydra writes the run's config there)
            where.update(run_dir=Path(os.path.normpath(Path.cwd() / Path(str(folder)).expanduser())))
            try:  # a folder of the user's named by the clock, x/${now:%H-%M-%S}: Hydra resolves it again later,
                raw = OmegaConf.to_container(full.hydra.run, resolve=False).get("dir")
            except Exception:  # noqa: BLE001
                raw = None
            # (any interpolation: x/${name} with name=${now:...} named another folder too, review; not Hydra's
            # own, ${hydra.job.override_dirname} say, which it resolves with what launch() adds after this)
            if "${" in str(raw) and "${hydra" not in str(raw) and not _by_the_clock(full, key, given):
                where.update(pin=True)  # (launch() gives Hydra the folder it holds, as for the default's)
        if _by_the_clock(full, key, given):
            where.update(key=key, folder=Path(str(folder)))
        elif not Path(str(folder)).expanduser().exists():  # a folder named for this launch, which Hydra makes
            where.update(new=Path(os.path.normpath(Path.cwd() / Path(str(folder)).expanduser())))
    return None


def claim_folder(folder: Path, named: bool = False) -> list[Path]:
    """Make the folder a run or sweep will use, atomically: two vaelab-train started in the same
    second resolve conf/config.yaml's ${now:...} to one folder, and would write into each other's
    runs. One already there (another launch's) gives FOLDER_1, _2, ...; for a folder the user
    `named` (hydra.run.dir=DIR, not there at the pre-flight), FileExistsError: another launch made
    it just now (launch() then lets the run folder's lock decide which one runs there).
    Returns the folder, then each parent this call made (to remove, innermost first, if nothing
    runs in it)."""
    made = [p for p in folder.absolute().parents if not p.exists()]
    out, n = folder, 1
    while True:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.mkdir()
            return [out, *made]
        except FileExistsError:
            if named or not out.parent.is_dir():  # (a link to nothing above it: FOLDER_1, _2, ... all fail)
                raise
            out, n = folder.with_name(f"{folder.name}_{n}"), n + 1
        except FileNotFoundError:  # another launch removed a parent it had made: make it again
            continue


def no_key(override: str) -> str:
    """=3: Hydra's grammar takes it, with the empty key."""
    return f"override '{override}': no key before the '=': an override is KEY=VALUE, as in latent_size=16"


def parse_error(overrides: list[str], exc: Exception) -> str:
    """One line for overrides Hydra's grammar rejects. Hydra parses them as one list and names
    none of them, so parse them one by one to name the first that fails, with Hydra's reason
    and a hint where the cause is a common one."""
    parser = OverridesParser.create()
    for i, ov in enumerate(overrides):
        try:
            parser.parse_overrides([ov])
        except Exception as e:
            return f"override '{ov}': cannot parse it ({_parse_reason(e, ov)}){_parse_hint(overrides, i)}"
    return f"cannot parse the overrides: {_parse_reason(exc, ' '.join(overrides))}"


_LEXER_ERROR = "LexerNoViableAltException: "


def _parse_reason(exc: Exception, override: str) -> str:
    """Hydra's reason, short: without its set of expected tokens (a dozen names of the grammar)
    and its link; for a character the lexer rejects, which one (Hydra prints the override and a
    ^ under that character on the next line)."""
    lines = [ln for ln in str(exc).splitlines()
             if ln.strip() and not ln.startswith(("Error parsing override", "See https://"))]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith(_LEXER_ERROR):
        caret = next((ln.index("^") for ln in lines[1:] if ln.strip() == "^"), None)
        at = -1 if caret is None else caret - len(_LEXER_ERROR)
        return f"unexpected {override[at]!r} at character {at + 1}" if 0 <= at < len(override) else lines[0]
    return re.sub(r" expecting \{.*\}$", "", lines[0])


# Hydra's own config groups (hydra/launcher and hydra/sweeper are conf/'s too): a name typed without
# its =VALUE, not a folder of that name here
_HYDRA_GROUPS = {f"hydra/{g}" for g in ("launcher", "sweeper", "job_logging", "hydra_logging", "help", "hydra_help",
                                        "env", "output", "callbacks")}


def _key_path(key: str, path: str) -> str:
    """KEY=PATH as one types it in a shell: quoted for Hydra's grammar where a character of the
    path means something there (a comma, a space, brackets), and the whole for the shell."""
    if re.fullmatch(r"[\w./+-]+", path, re.ASCII):  # (Hydra's grammar takes é, 中 only quoted)
        return f"{key}={path}"
    from vaelab.train_cli import override_value  # (train_cli imports this module)

    typed = f"{key}={override_value(path)}"
    return f'"{typed}"' if not re.search(r'["$`\\!]', typed) else shlex.quote(typed)  # (! : bash's history)


def comma_path_hint(line: str) -> str:
    """For an override Hydra reads as a sweep, KEY=/a/x,y/b: where its value is a path with a
    comma in it, how to quote it as one value."""
    key, _, value = line.partition("=")
    if "," not in value or not ("/" in value or os.path.exists(value)):  # (a folder here: a,b)
        return ""
    return f" (if it is one path with a comma in it, quote it for Hydra: {_key_path(key, value)})"


def _parse_hint(overrides: list[str], i: int) -> str:
    """Why overrides[i] does not parse, where the cause is recognisable: a value starting with `~`
    (the shell expands `~` only at the start of a word, and Hydra's grammar rejects it), or a
    value the shell split at spaces (`latent_size=2, 16, 32` or `model.hidden=[256, 128]`
    arrive as pieces ending or starting with a comma)."""
    ov = overrides[i]
    key, eq, value = ov.partition("=")
    if not eq and (Path(ov) / ".hydra" / "config.yaml").is_file():  # (a run's folder, given as to vaelab COMMAND)
        return f"; vaelab-train takes no run folder: vaelab resume {shlex.quote(ov)} carries that run on"
    # a path (not `hydra/launcher` as typed: a config group's name, which may be a folder here too)
    group = not ov.startswith((".", "/")) and not ov.endswith("/") and ((CONF_DIR / ov).is_dir() or
                                                                        ov in _HYDRA_GROUPS)
    if not eq and "/" in ov and Path(ov).is_dir() and not group:
        # (data.root is the folder that holds MNIST/raw/)
        root = str(Path(ov).parent) if Path(ov).name == "MNIST" and (Path(ov) / "raw").is_dir() else ov
        return (f"; vaelab-train takes a folder as a setting: {_key_path('data.root', root)} (where MNIST is) or "
                f"{_key_path('hydra.run.dir', ov)} (where the run goes)")
    # latent_size, hydra/launcher; not a file's name (conf/experiment/seed.yaml)
    if not eq and re.fullmatch(r"[+~]?\w[\w./]*", ov) and not re.search(r"\.(ya?ml|py|json|pt|png|txt)$", ov):
        return f"; an override is KEY=VALUE, as in {ov.rstrip('/')}=VALUE"  # (data/ tab-completed, not a folder here)
    if "~" in value:
        # A sweep's values (a,b: review) each quoted where it has a ~, each ~/ written out; a value with
        # quotes or brackets of its own (choice(...), '~/b' already quoted) is not split, nor rewritten
        plain = re.fullmatch(r"[^'\"()\[\]{}\s]*", value) is not None
        parts = value.split(",") if plain else [value]
        each = ",".join(f"'{p}'" if "~" in p else p for p in parts)
        if not value.startswith("~"):  # elsewhere in a value Hydra's grammar takes ~ only quoted
            return f"; quote a value with ~ in it, as in \"{key}={each}\"" if plain else \
                "; quote each value with a ~ in it for Hydra, as in '~/a'"
        homes = [f"$HOME{p[1:]}" if p.startswith("~/") else p for p in parts]
        written = plain and all(not h.startswith("~") for h in homes)  # (~user/...: no $HOME for it)
        example = f", e.g. {key}={','.join(homes)}" if written else ""
        # (quoted, the ~ stays a ~: data.root's vaelab expands; hydra.run.dir's made a folder named ~, review)
        quoted = f", or quote it for Hydra: \"{key}={each}\"" if plain and key.lstrip("+") == "data.root" else ""
        return f"; Hydra does not expand ~: write the path out{example}{quoted}"
    if "=" in value and _parses(f"{key}='{value}'"):  # a path through a sweep's job, latent_size=2/
        return f"; quote a value with = in it, as in \"{key}='{value}'\" (the outer quotes are the shell's)"
    if "/" in value and not _parses(ov):  # a path with a letter Hydra's grammar takes only quoted: é, ', ...
        quoted = _key_path(key, value)
        if _parses(shlex.split(quoted)[0]):
            return f"; quote a path for Hydra, as in {quoted}"
    glued = lambda a, b: a.endswith(",") or b.startswith(",")  # noqa: E731
    first = i
    while first > 0 and "=" not in overrides[first] and glued(overrides[first - 1], overrides[first]):
        first -= 1  # back to the piece with the key
    last = first
    while last + 1 < len(overrides) and "=" not in overrides[last + 1] and glued(overrides[last], overrides[last + 1]):
        last += 1
    if last == first and not glued(overrides[first], ""):  # nothing split here
        return ""
    joined = "".join(overrides[first:last + 1])
    if last > first and _parses(joined):
        return f"; the shell split that value at its spaces: write it without them (or quote it), as in {joined}"
    return f"; a comma with nothing after it: drop it, or list the values without spaces, as in {key or 'key'}=a,b"


def _parses(override: str) -> bool:
    try:
        OverridesParser.create().parse_overrides([override])
    except Exception:  # OverrideParseException
        return False
    return True


def _float_interval_error(given: str, key: str, sweep) -> str | None:
    """An Optuna interval on an integer setting that would be drawn as floats, or None."""
    if isinstance(sweep.start, int) and isinstance(sweep.end, int):
        return None
    if "int" not in sweep.tags and _setting_type(key) is not int:
        return None
    log = "log" in sweep.tags
    return (f"{given}: Optuna would draw floats such as {sweep.start + 0.37 * (sweep.end - sweep.start):.2f} from it "
            f"({key} takes integers); write {key}={'tag(log,' if log else ''}int(interval({int(sweep.start)},"
            f"{int(sweep.end)})){')' if log else ''}, or choice(...) or range(...)")


def _example_key(group: str) -> str:
    """A setting of a config group, for a message: model.hidden, optim.lr, ..."""
    keys = [k for k in _setting_keys() if k.startswith(group + ".") and not k.startswith(group + "._")]
    return keys[0] if keys else f"{group}.KEY"


def _setting_type(key: str, schema=Config):
    """The type the schema gives a dotted setting (int for latent_size), or None if it has none."""
    import dataclasses
    import typing

    head, _, rest = key.partition(".")
    if not dataclasses.is_dataclass(schema) or head not in {f.name for f in dataclasses.fields(schema)}:
        return None
    t = typing.get_type_hints(schema)[head]
    return _setting_type(rest, t) if rest else t


def _setting_keys(schema=Config, prefix: str = "") -> list[str]:
    """Every setting of the config schema, dotted (trainer.epochs, latent_size, ...)."""
    import dataclasses
    import typing

    out = []
    for f, t in ((f, typing.get_type_hints(schema)[f.name]) for f in dataclasses.fields(schema)):
        out += _setting_keys(t, f"{prefix}{f.name}.") if dataclasses.is_dataclass(t) else [f"{prefix}{f.name}"]
    return out


def _flag_error(argv: list[str]) -> str | None:
    """A flag that is not Hydra's, as one line: argparse would end in its usage block, and only
    after the config and the data had been checked (a --device cpu's 'cpu' was first refused as
    an override that does not parse)."""
    where, _ = _positions(argv)
    for i, arg in enumerate(argv):
        name = arg.split("=", 1)[0]
        if name == "--experimental-rerun":  # Hydra's pickle of a job, with a traceback for any bad file
            return ("--experimental-rerun: not supported; re-run a run from the config it saved with "
                    "vaelab reproduce RUN_DIR (or vaelab-train --config-dir RUN_DIR/.hydra --config-name config)")
        if name in _WITH_VALUE and "=" not in arg and (i + 1 >= len(argv) or argv[i + 1].startswith("-")):
            # (argparse's 9-line usage block)
            return f"argument {name}: expected a value after it, as in {name} {_FLAG_EXAMPLES.get(name, 'VALUE')}"
        if i in where or not arg.startswith("-") or name in _LONG_FLAGS or name in _SHORT_FLAGS:
            continue
        # argparse would also take a flag's unambiguous start (--multi) or short flags run together
        # (-mr), but the checks here read each flag by its whole name
        meant = [f for f in _LONG_FLAGS if f.startswith(name) and name.startswith("--")]
        if len(meant) == 1:
            return f"unrecognized argument {arg}: give the flag in full, {meant[0]}"
        # a setting written as a flag: --device cpu, --latent_size=3, --epochs 5
        key = name.lstrip("-").replace("-", "_")
        keys = _setting_keys()
        match = [k for k in keys if k == key] or [k for k in keys if k.rsplit(".", 1)[-1] == key]
        if len(match) == 1:
            value = arg.split("=", 1)[1] if "=" in arg else (
                argv[i + 1] if i + 1 in where and "=" not in argv[i + 1] else "VALUE")
            return f"unrecognized argument {arg}: settings are given as key=value, here {match[0]}={value}"
        # a flag misspelt (--multirn, --cfgg), where no setting is as near (--resme is trainer.resume's, not
        # --resolve's: review); near several flags (--config), the list
        flags = [f for f in _LONG_FLAGS if f != "--experimental-rerun"]  # (not supported: not to be suggested)
        close = difflib.get_close_matches(name, flags, n=2, cutoff=0.75) if name.startswith("--") else []
        leaf = difflib.get_close_matches(key, {k.rsplit(".", 1)[-1] for k in keys}, n=1, cutoff=0.75)
        if len(close) == 1 and not (leaf and difflib.SequenceMatcher(None, key, leaf[0]).ratio() >=
                                    difflib.SequenceMatcher(None, name.lstrip("-"), close[0].lstrip("-")).ratio()):
            return f"unrecognized argument {arg}: did you mean {close[0]}?"
        return (f"unrecognized argument {arg}: an override is key=value, e.g. trainer.epochs=5; Hydra's flags are "
                f"--help, --hydra-help, --version, --cfg/-c, --resolve, --package/-p, --run/-r, --multirun/-m, "
                f"--shell-completion/-sc, --config-path/-cp, --config-name/-cn, --config-dir/-cd, --info/-i (each "
                f"apart, in full)")
    return None


def _argument_error(cmd: _CommandLine) -> str | None:
    """What is wrong with the arguments as given, before any config is composed."""
    if len(cmd.modes) > 1:  # Hydra raises a ValueError (a traceback) for this
        return (f"{' and '.join(cmd.modes)}: only one of --multirun/-m, --run/-r, --cfg/-c, --info/-i and "
                "--shell-completion may be given (for --cfg, drop -m and give one value per key)")
    for o in cmd.parsed:  # Hydra sets the node to a string and fails later ("no _target_"), with a traceback
        if o.key_or_group in ("hydra.launcher", "hydra.sweeper") and isinstance(o.value(), str):
            group = o.key_or_group.replace(".", "/")
            return (f"override '{o.input_line}': {group} is a config group: choose one with a /, as in "
                    f"{group}={o.value()}")
    for o in cmd.parsed:  # Hydra refuses these only once the sweep starts, in several lines
        prefix = "hydra.sweeper.params."
        nested = o.key_or_group.startswith(prefix) and "." in o.key_or_group[len(prefix):]  # (params' keys are flat)
        if o.is_hydra_override() and (o.is_sweep_override() or nested):
            if o.key_or_group.startswith(prefix):
                spec = o.value() if isinstance(o.value(), str) else o.input_line.split("=", 1)[1]  # unquoted
                why = ("Hydra takes no sweep syntax in its own hydra.* keys" if o.is_sweep_override() else
                       "hydra.sweeper.params takes the search space's keys whole, not as nested keys")
                return (f"override '{o.input_line}': {why}; give the search space as "
                        f"{o.key_or_group[len(prefix):]}={spec}")
            return (f"override '{o.input_line}': Hydra cannot sweep its own settings (hydra.*); give one value, "
                    f"and sweep the run's settings (latent_size=2,16, ...)" + comma_path_hint(o.input_line))
    seen: dict[str, object] = {}
    for o in cmd.parsed:  # Hydra keeps the last: `-m latent_size=2,4 latent_size=8` ran one job, silently
        first = seen.setdefault(o.key_or_group, o)
        if first is not o and (first.is_sweep_override() or o.is_sweep_override()):
            return (f"override '{o.input_line}': {o.key_or_group} is given already, as '{first.input_line}' (Hydra "
                    f"would keep only the last); give it once, with every value in one list")
    if "name" in {o.key_or_group for o in cmd.task if o.is_sweep_override()}:
        return ("override 'name' lists several values: name names the sweep's folder "
                "(outputs/multirun/<name>/...), give it one value and sweep other keys")
    for key, value in cmd.folders.items():
        # Hydra would run in the current folder, past the guards below (an unset $DIR, typically)
        if value is None or not str(value).strip():
            return f"{key}={'null' if value is None else value}: empty; give a folder, e.g. {key}=runs/first"
    given = {key: cmd.given(key) for key in ("hydra.sweep.dir", "hydra.run.dir")}
    # (conf/config.yaml's own folders, passed on by a re-run of a saved config: launch() makes them)
    sweep_dir, run_dir = (None if _clock_default(given.get(k), k, given) else given[k]
                          for k in ("hydra.sweep.dir", "hydra.run.dir"))
    # As given (also for --config-dir re-runs, which are not composed below); the folders as
    # Hydra resolves them (${oc.env:...}, a sweep that hparams_search starts) are checked at the end.
    if not cmd.helps and not ({"--cfg", "-c", "--info", "-i"} & set(cmd.flags)):
        for key, folder, applies in (("hydra.sweep.dir", sweep_dir, cmd.multirun),
                                     ("hydra.run.dir", run_dir, not cmd.optuna and
                                      all(m in ("--run", "-r") for m in cmd.modes))):
            taken = cmd.taken(Path(folder), sweep=key == "hydra.sweep.dir") if folder and applies else None
            if taken:
                return f"{key}={folder}: {taken}"
    if cmd.helps and cmd.swept:  # Hydra composes one job's config for --help, and raises on a sweep
        return f"override '{cmd.swept[0]}' lists several values: {cmd.helps[0]} shows one job, give one value per key"
    return None


def _not_from_vaelabs(compose_, primary: tuple[str, str]) -> str | None:
    """One line for a primary config of one's own that does not start from vaelab's: its run had
    none of vaelab's settings, and failed with a traceback (Key 'data' is not in struct), or was
    told to add them one by one as if it were a config saved by an older vaelab (review)."""
    try:
        cfg = compose_([])
    except Exception:  # noqa: BLE001  (composing it with the overrides says why, below)
        return None
    lacks = [group for group in ("data", "model", "loss", "optim", "trainer") if group not in cfg]
    if not lacks:
        return None
    return (f"--config-name {primary[1]}: {Path(primary[0]) / primary[1]}.yaml has no {', '.join(lacks)} settings: "
            f"a primary config of one's own starts from vaelab's, with 'defaults: [config, _self_]' at its top, "
            f"given with --config-dir (--config-path leaves vaelab's own configs out of the search)")


def _primary_config(cmd: _CommandLine) -> tuple[str, str] | None:
    """(folder, name) of the primary config to check against, or None where precheck stops.
    A re-run of a saved config arrives as --config-path SAVED_FOLDER (train_cli.saved_config_argv)
    and is checked like any command line; another primary config, or a --config-dir of extra
    groups, is Hydra's to handle, as are the informational flags."""
    flags = cmd.flags
    path, name = flags.get("--config-path") or flags.get("-cp"), flags.get("--config-name") or flags.get("-cn")
    primary = (str(CONF_DIR), "config")
    config_dir = flags.get("--config-dir") or flags.get("-cd")
    if path and os.path.isabs(path) and (Path(path) / f"{name or 'config'}.yaml").is_file():
        primary = (path, name or "config")
    elif config_dir and not path and not name:  # conf/'s config, and groups of one's own beside conf/'s
        pass  # (checked with the folder on the search path: precheck)
    elif path or name or config_dir:
        return None
    if any(f in flags for f in ("--hydra-help", "--version", "--info", "-i", "--shell-completion", "-sc")):
        return None  # (--help shows the composed config: its overrides are checked like a run's)
    return primary


def _job_overrides(cmd: _CommandLine) -> tuple[list[str], list[list[str]], dict[str, str]]:
    """The first job's overrides, the jobs to check (each override, with a sweep replaced by each
    of its values in turn, not every combination), and {a job's override: the sweep it is one
    value of}, so that a key wrong in itself is named as the user typed it."""
    base: list[str] = []
    variants: list[tuple[int, list[str]]] = []
    swept_from: dict[str, str] = {}
    for o in cmd.task:
        key = o.get_key_element()
        if o.is_sweep_override():
            sweep = o.value()
            if isinstance(sweep, Glob):  # it filters a config group's options: Hydra launched 0 jobs, exit 0
                options = _group_options(key.replace(".", "/"))
                values = [f"{key}={v}" for v in sweep.filter(options)]
                if not values:
                    has = f"{key} has {', '.join(options)}" if options else f"{key} is not a config group"
                    raise ConfigError(f"override '{o.input_line}': the sweep gives no values (glob() matches the "
                                      f"options of a config group, and {has})")
                variants.append((len(base), values))
                base.append(values[0])
                continue
            if cmd.optuna_draws and isinstance(sweep, RangeSweep) and not (sweep.step > 0 and sweep.start < sweep.stop):
                raise ConfigError(f"override '{o.input_line}': Optuna draws from range(low, high, step) with low "
                                  f"below high and a step above 0, as in range(1,10,3)")
            try:
                # (a number's checks are ranges; a text's, data.root=range(1,5), look at each folder)
                ends = _range_ends(sweep) if _setting_type(key.lstrip("+~")) in (int, float) else None
                values = [f"{key}={v}" for v in (ends if ends is not None else o.sweep_string_iterator())]
                if cmd.optuna_draws and hasattr(sweep, "stop"):  # Optuna's range(a, b) draws b too, Hydra's not
                    values.append(f"{key}={sweep.stop}")
            except Exception as e:  # an interval (Optuna) cannot be listed: check its ends (the checks are ranges)
                if isinstance(sweep, RangeSweep):  # range(1,5,0): Hydra's traceback once the sweep starts
                    raise ConfigError(f"override '{o.input_line}': {' '.join(str(e).split())}; give range(start, "
                                      f"stop, step) a step other than 0") from None
                if not (hasattr(sweep, "start") and hasattr(sweep, "end")):
                    continue
                if not cmd.optuna_draws:  # Hydra's basic sweeper failed on it with a traceback
                    raise ConfigError(f"override '{o.input_line}': an interval is a range for Optuna to draw from: "
                                      f"add hparams_search=optuna, or list values (a,b,c) or a range(start,stop,step)")
                # The sweeper draws integers only where both ends are ints, which int(interval(2, 64))
                # makes; Hydra reads interval(2, 64)'s ends as floats, and a tag(int, ...) means nothing to it.
                err = _float_interval_error(f"override '{o.input_line}'", key, sweep)
                if err:
                    raise ConfigError(err)
                as_int = isinstance(sweep.start, int) and isinstance(sweep.end, int)
                values = [f"{key}={int(v) if as_int else v}" for v in (sweep.start, sweep.end)]
            if not values:  # range(2, 0): the sweep would run nothing of it
                raise ConfigError(f"override '{o.input_line}': the sweep gives no values (range(start, stop, step) "
                                  f"stops before stop: check the order of the two and the step's sign, as in "
                                  f"range(2,8) or range(8,2,-2))")
            variants.append((len(base), values))
            base.append(values[0])
            swept_from.update((v, o.input_line) for v in values)
        else:
            base.append(o.input_line)
    jobs = [base] + [base[:i] + [v] + base[i + 1:] for i, values in variants for v in values[1:]]
    return base, jobs, swept_from


def _unknown_key_as_typed(exc: Exception, override: str, swept_from: dict[str, str]) -> str:
    """`override`, or the sweep it is a value of where the composition failed on its key."""
    cause = exc.__cause__ or exc
    unknown_key = "not in" in str(cause) and getattr(cause, "full_key", None)
    return swept_from.get(override, override) if unknown_key else override


def _range_ends(sweep) -> list | None:
    """The first and last values of an integer range() sweep (none if it is empty), else None. A
    range is checked at its ends: the checks are ranges too (>= 1, < 2**31, ...), and composing a
    job takes ~0.2 s: range(1,200) waited 22 s before Hydra printed a line."""
    if not isinstance(sweep, RangeSweep) or not all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)) \
            or sweep.step == 0:  # (Hydra's own error says why)
        return None
    r = range(sweep.start, sweep.stop, sweep.step)
    return [r[0], r[-1]] if len(r) > 1 else list(r)


def _jobs_error(compose_, candidates: list[list[str]], cmd: _CommandLine,
                swept_from: dict[str, str]) -> tuple[str | None, dict[str, bool]]:
    """Compose and validate each job to check; (why one fails or None, {data.root: may download})."""
    names: dict[str, str] = {}  # name -> the overrides that give it
    data_roots: dict[str, bool] = {}  # data.root -> whether a job may download there
    val_sizes = cmd.val_sizes
    for ovs in candidates:
        line = integer_as_bool(ovs)  # (composing would take trainer.cuda_graph=2 for true)
        if line:
            return line, data_roots
        try:
            cfg = compose_(ovs)
        except _FileValueError as e:  # (it names the file: no override to blame)
            return str(e), data_roots
        except Exception as e:
            try:  # the primary config itself (a saved run's config.yaml, edited by hand)
                compose_([])
            except Exception as e0:  # noqa: BLE001 - named with its file, not as "override ''"
                return _config_file_error(e0, compose_.keywords["primary"]), data_roots
            # Find the first override that breaks composition, to name it.
            for j, ov in enumerate(ovs):
                try:
                    compose_(ovs[: j + 1])
                except Exception as e2:
                    # A key that no value of its sweep can set is named as typed (loss.betta=1,4);
                    # a value that cannot be set is named alone (latent_size=abc of 2,abc).
                    return _explain_plugin(e2, _unknown_key_as_typed(e2, ov, swept_from)), data_roots
            return _explain(e, " ".join(ovs)), data_roots
        err = _deleted_key_error(cfg, ovs)
        if err:
            return err, data_roots
        try:
            validate(typed(cfg))  # as the run reads it (a saved config lacking a newer setting: its default)
        except ConfigError as e:
            return str(e), data_roots
        if not str(cfg.data.root).strip():  # (it read as the current folder, and downloaded there)
            return ("data.root is empty (as it is when VAELAB_DATA is set to nothing): give the folder that holds "
                    "MNIST/raw/"), data_roots
        names.setdefault(cfg.name, " ".join(ovs))
        data_roots[str(cfg.data.root)] = data_roots.get(str(cfg.data.root), False) or bool(cfg.data.download)
        val_sizes[str(cfg.data.root)] = max(val_sizes.get(str(cfg.data.root), 0), int(cfg.data.val_size))
    if len(names) > 1 and (cmd.multirun or cmd.optuna):  # -m experiment=seed,iwae_paper_vae
        return (f"the jobs of this sweep would have different names ({', '.join(names)}), and name names the "
                f"sweep's folder (outputs/multirun/<name>/...); give one, e.g. name=compare"), data_roots
    return None, data_roots


_ABSENT = object()


def _deleted_key_error(cfg: DictConfig, overrides: list[str]) -> str | None:
    """`~KEY` of a key the schema has. Below the top level Hydra refuses it at composition
    ('does not support deletion', see _explain), but it deletes a top-level key (latent_size,
    seed, name, device) and the job then fails on the missing key with a traceback. `~model`
    drops a config group's file: the schema's values stay, the config composes, and the run
    trains as if it were not given: refused too."""
    if not any(ov.startswith("~") for ov in overrides):  # (the schema costs ~5 ms, once per job checked)
        return None
    schema = OmegaConf.structured(Config)
    for ov in overrides:
        key = ov[1:].split("=", 1)[0] if ov.startswith("~") else ""
        if key and "." not in key and OmegaConf.is_dict(OmegaConf.select(schema, key, default=None)):
            # `~model`: the group's file is dropped, its settings stay the schema's: the run would
            # train what it always does, as though the override were not there
            options = _group_options(key)
            example = f", as in {key}={options[0]}" if options else ""
            return (f"override '{ov}': {key} is a config group the run needs; choose one of its options "
                    f"({', '.join(options) or 'none found'}) instead{example}")
        if (key and OmegaConf.select(schema, key, default=_ABSENT) is not _ABSENT
                and OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT):
            return _cannot_delete(ov)
    return None


def _cannot_delete(override: str) -> str:
    key = override[1:].split("=", 1)[0]
    return f"override '{override}': {key} cannot be deleted (the config needs it); set it instead, as in {key}=VALUE"


def _hydra_section_error(compose_, base: list[str], cmd: _CommandLine) -> tuple[str | None, DictConfig | None, str]:
    """Hydra's own groups (launchers, sweepers) only compose with the hydra section: check them
    when they are chosen, and whether a sweep given without -m is one the config runs anyway.
    Returns (why not or None, the config with its hydra section if composed, the launcher)."""
    hydra_ovs = [o.input_line for o in cmd.parsed if o.is_hydra_override() and not o.is_sweep_override()]
    no_m = cmd.swept and not cmd.multirun
    if not (hydra_ovs or no_m or any(o.key_or_group == "hparams_search" for o in cmd.task)):
        return None, None, ""
    try:
        composed = compose_(base + hydra_ovs, hydra_section=True)
        mode = composed.hydra.mode
    except Exception as e:
        # Name the first Hydra override that breaks it, and list the keys that were there.
        try:
            good = compose_(base, hydra_section=True)
        except Exception as e2:  # hparams_search=... needs a sweeper plugin that is missing
            return _explain_plugin(e2, " ".join(o.input_line for o in cmd.task
                                                if o.key_or_group == "hparams_search")), None, ""
        for j, ov in enumerate(hydra_ovs):
            try:
                good = compose_(base + hydra_ovs[: j + 1], hydra_section=True)
            except Exception as e3:
                return _explain_plugin(e3, ov, good), None, ""
        return _explain_plugin(e, " ".join(hydra_ovs), good), None, ""
    launcher = str(OmegaConf.select(composed, "hydra.launcher._target_") or "")
    launches = not cmd.helps and not ({"--cfg", "-c", "--info", "-i"} & set(cmd.flags))  # (--cfg: only shows it)
    if launches and launcher.endswith("SlurmLauncher") and shutil.which("srun") is None:  # submitit: a traceback
        given = next((o.input_line for o in cmd.parsed if o.key_or_group == "hydra/launcher"), "hydra/launcher=slurm")
        return (f"{given}: SLURM's srun is not on PATH here; launch the sweep from a SLURM login "
                "node, or run it on this machine with hydra/launcher=joblib or submitit_local"), composed, launcher
    err = _bad_log_level(composed)
    name = OmegaConf.select(composed, "hydra.job.name", default=None, throw_on_resolution_failure=False)
    if not err and isinstance(name, str) and ("/" in name or too_long(f"{name}.log")):  # (logging's traceback once
        err = (f"hydra.job.name={name}: Hydra names the run's log file <hydra.job.name>.log in the run folder; give "
               f"one file name, without '/', of at most 251 bytes")  # the job starts: review)
    if not err and OmegaConf.select(composed, "hydra.launcher.n_jobs") == 0:  # joblib: a traceback mid-sweep
        err = "hydra.launcher.n_jobs=0: give the number of jobs to run at once (>= 1, or -1 for one per core)"
    timeout = OmegaConf.select(composed, "hydra.launcher.timeout_min") if "submitit" in launcher else None
    if not err and isinstance(timeout, (int, float)) and timeout < 1:  # submitit kills each job at once: a traceback
        err = (f"hydra.launcher.timeout_min={timeout}: the minutes submitit lets each job run before it kills it; "
               f"give 1 or more")
    if not err and no_m and str(getattr(mode, "name", mode)) != "MULTIRUN":  # hparams_search=optuna sets MULTIRUN
        if {"--cfg", "-c"} & set(cmd.flags):
            err = (f"override '{cmd.swept[0]}' lists several values: --cfg shows one job, give one value per key"
                   + comma_path_hint(cmd.swept[0]))
        else:
            err = (f"override '{cmd.swept[0]}' lists several values: add -m (--multirun) to run one job per value"
                   + comma_path_hint(cmd.swept[0]))
    return err, composed, launcher


_LOG_LEVELS = ("NOTSET", "DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL", "FATAL")


def _bad_log_level(composed: DictConfig) -> str | None:
    """A level in Hydra's logging sections that logging.config would reject with a traceback
    once the job starts (hydra.job_logging.root.level=debug: the names are upper case)."""
    def levels(tree, key):
        for k, v in tree.items():
            if isinstance(v, dict):
                yield from levels(v, f"{key}.{k}")
            elif k == "level":
                yield f"{key}.{k}", v

    for section in ("job_logging", "hydra_logging"):
        tree = OmegaConf.to_container(composed.hydra[section], resolve=False) if section in composed.hydra else {}
        for key, value in levels(tree or {}, f"hydra.{section}"):
            if not (isinstance(value, int) or value in _LOG_LEVELS or str(value).startswith("${")):
                return f"{key}={value}: not a logging level; allowed: {', '.join(_LOG_LEVELS)}"
    return None


def _taken(folder: Path, sweep: bool) -> str | None:
    """Why a run (or a sweep) must not start in `folder`: it holds a run (an earlier sweep's runs).
    Hydra writes the composed config into the folder before vaelab's code runs, over the run's
    own; the jobs of a sweep named like the old ones would carry those runs on under new settings."""
    # missing/../run: the kernel cannot follow it until Hydra has made missing/, and then it is run
    folder = Path(absolute(folder))
    if (long := too_long(folder)) is not None:
        return long
    inside = enclosing_run(folder)
    if inside is not None:  # its runs would be hidden: compare and resume see the run around them
        return f"that folder is inside the run {inside}; give a folder outside it"
    if sweep:
        if sweep_running(folder):  # (its jobs not begun yet: no run there to tell it by, review)
            return "another process is running a sweep in that folder now; give a new folder, or wait for it to end"
        if is_run(folder):
            return "that folder holds a run already; give a new folder"
        if holds_runs(folder):
            job = shlex.quote(str(folder / "JOB"))
            if not (folder / "multirun.yaml").is_file():  # an Optuna study's (its sweeper writes none)
                return (f"that folder holds runs of an earlier study already; give a new folder (carry one of "
                        f"its trials on with 'vaelab resume {job} [KEY=VALUE ...]')")
            return (f"that folder holds runs of an earlier sweep already; give a new folder (carry that sweep on "
                    f"with 'vaelab resume {shlex.quote(str(folder))}', one of its runs with "
                    f"'vaelab resume {job} [KEY=VALUE ...]')")
        # (Hydra writes its multirun.yaml there, over one of the user's; one of a sweep that ran no job is no loss)
        return foreign(folder, "sweep", ignore={"multirun.yaml"} if _hydras(folder / "multirun.yaml") else set())
    sweeps = _hydras(folder / "multirun.yaml")
    if holds_runs(folder):  # (a sweep's, or a project folder with its outputs/)
        return ("that folder holds a sweep's runs; give a new folder" if sweeps
                else "that folder holds runs, in folders under it; give a new folder")
    if sweeps:
        return "that folder is a sweep's (its multirun.yaml, no run yet); give a new folder"
    if not is_run(folder):
        return foreign(folder)
    try:
        check_not_in_use(folder)
    except CheckpointError:  # (resume, which the lines below suggest, would be refused for the same reason)
        return "another process is training a run in that folder now; give another folder"
    if not any((folder / "checkpoints").glob("*.pt")):
        return (f"that folder holds a run already (stopped before its first checkpoint); start it again "
                f"elsewhere: vaelab-train --config-dir {shlex.quote(str(folder / '.hydra'))} --config-name config")
    return (f"that folder holds a run already; carry it on with 'vaelab resume {shlex.quote(str(folder))} "
            f"[KEY=VALUE ...]', or give another folder")


def taken_folder_error(folder: Path) -> str | None:
    """Why a single run must not start in `folder` (_taken), looked at again once launch() holds it."""
    return _taken(folder, sweep=False)


def _hydras(path: Path) -> bool:
    """Whether `path` is a multirun.yaml Hydra wrote (a mapping with its hydra: section)."""
    try:
        return isinstance((yaml.safe_load(path.read_text()) or {}).get("hydra"), dict)
    except (OSError, yaml.YAMLError, AttributeError, UnicodeDecodeError):
        return False


def foreign(folder: Path, what: str = "run", ignore: frozenset | set = frozenset()) -> str | None:
    """A folder that is not a run (a sweep) but holds files (hydra.run.dir=/, a project folder, a
    run whose .hydra/ was deleted, its checkpoints left): the run's checkpoints, logs and
    metrics.json (a sweep's multirun.yaml and job folders) would land among them."""
    try:
        # (hidden files aside: a .gitkeep, or the .hydra/ of a run whose config.yaml went)
        names = sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []
    except OSError:  # unreadable: unwritable() says so
        return None
    if not set(names) - set(ignore):
        return None
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"that folder holds files ({shown}) and is not a vaelab {what}; give a new or empty folder"


def _job_folders_error(composed: DictConfig, cmd: _CommandLine) -> str | None:
    """hydra.sweep.subdir with no part of each job's own (${hydra.job.num}, ...): every job ran in
    one folder, the second finding the first's run there only after it had trained; and as an
    absolute path (hydra.sweep.subdir=/) a job ran in whatever folder that is."""
    try:
        raw = OmegaConf.to_container(composed.hydra.sweep, resolve=False).get("subdir")
    except Exception:
        return None
    if raw is None or "${" in str(raw):
        return None
    trials = OmegaConf.select(composed, "hydra.sweeper.n_trials", default=1)
    if any(o.is_sweep_override() for o in cmd.task) or (cmd.optuna_draws and isinstance(trials, int) and trials > 1):
        return (f"hydra.sweep.subdir={raw}: every job of this sweep would run in that one folder; give it a part "
                f"of each job's own, e.g. hydra.sweep.subdir=job${{hydra.job.num}}")
    if cmd.continuing is not None:  # vaelab resume SWEEP_DIR: its one job's folder holds its run
        return None
    try:
        folder = Path(str(OmegaConf.select(composed, "hydra.sweep.dir"))) / str(raw)  # (an absolute raw wins)
    except Exception:
        return None
    err = _taken(folder, sweep=False)
    return f"hydra.sweep.subdir={raw}: {err}" if err else None


def _folder_error(composed: DictConfig, multirun: bool, given: dict, taken) -> str | None:
    """Why the folder this command would run in (hydra.run.dir, or hydra.sweep.dir for a sweep,
    resolved: ${name}, ${now:...}, ${oc.env:...}) cannot be made, or None. taken: _taken, or
    _CommandLine.taken where a stopped sweep is carried on."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        folder = OmegaConf.select(composed, key)
    except Exception:  # an interpolation only the running app can resolve: Hydra will say
        return None
    if folder is None:
        return None
    if not str(folder).strip():  # e.g. ${oc.env:DIR,''}: Hydra would run in the current folder
        return f"{key} resolves to an empty path; give a folder, e.g. {key}=runs/first"
    # (a default folder, ${now:...}, that holds a run is another launch's of the same second:
    # launch() makes the next free one, FOLDER_1, instead)
    path = Path(str(folder)).expanduser()
    if (long := too_long(path)) is not None:  # (as typed: the kernel meets a long name before a '..' after it)
        return f"{key}={given.get(key) or folder}: {long}"
    # (Hydra's mkdir met a link to nothing, the folder or one above it, with a FileExistsError's traceback; a
    # sweep's makes the link's folder, review)
    dangling = next((p for p in (path, *path.parents) if p.is_symlink() and not p.exists()), None)
    if dangling is not None:  # (a sweep's default folder under one: claim_folder tried FOLDER_1, _2, ... forever)
        return (f"{key}={given.get(key) or folder}: {dangling} is a link to {os.readlink(dangling)}, which is not "
                f"there; make that folder, or give another")
    err = unwritable(Path(str(folder))) or (None if _by_the_clock(composed, key, given)
                                            else taken(Path(str(folder)), sweep=key == "hydra.sweep.dir"))
    if err is None:
        return None
    what = "sweep" if key == "hydra.sweep.dir" else "run"
    return f"{key}={given[key]}: {err}" if _typed(key, given) else f"cannot make the {what} folder {folder}: {err}"


def _typed(key: str, given: dict) -> bool:
    """Whether the user named this folder (a re-run of a saved config gets conf/config.yaml's
    folders as overrides: not the user's words)."""
    return bool(given.get(key)) and given[key] != _default_folders().get(key)


def _clock_default(raw, key: str, given: dict) -> bool:
    """Whether `raw`, the folder's unresolved value, is a default named by the clock (conf/config.yaml's
    ${now:...}), which launch() makes itself; any other folder is checked for runs as it is."""
    return raw is not None and "${now:" in str(raw) and not _typed(key, given)


def _by_the_clock(composed: DictConfig, key: str, given: dict) -> bool:
    section, leaf = key.rsplit(".", 1)
    try:
        raw = OmegaConf.to_container(OmegaConf.select(composed, section), resolve=False).get(leaf)
    except Exception:
        return False
    return _clock_default(raw, key, given)


def _other_folder_error(composed: DictConfig, multirun: bool) -> str | None:
    """A folder besides the run's or sweep's that Hydra or its launcher makes, given as an
    absolute path that cannot be made: the config's copy (hydra.output_subdir), a sweep's job
    folders (hydra.sweep.subdir) and submitit's logs (hydra.launcher.submitit_folder). Relative
    ones land in the run or sweep folder, checked above. Hydra would fail with a traceback,
    after making folders."""
    keys = ["hydra.output_subdir"]
    if multirun:
        keys += ["hydra.sweep.subdir", "hydra.launcher.submitit_folder"]
    for key in keys:
        try:  # ${hydra:job.override_dirname} and the like resolve only in the job
            value = OmegaConf.select(composed, key)
        except Exception:
            continue
        if value is None or not Path(str(value)).is_absolute():
            continue
        err = unwritable(Path(str(value)))
        if err:
            return f"{key}={value}: {err}"
    return None


def _default_folders() -> dict[str, str]:
    return {"hydra.run.dir": hydra_section()["run"]["dir"], "hydra.sweep.dir": hydra_section()["sweep"]["dir"]}


# Hydra plugins behind our launcher/sweeper choices, and the extra that installs each.
_PLUGIN_EXTRAS = {"ray": "ray", "joblib": "sweep", "optuna": "sweep", "submitit_slurm": "slurm",
                  "submitit_local": "slurm"}


@functools.lru_cache(maxsize=None)
def _launcher_keys() -> dict[str, frozenset]:
    """The keys each choice of hydra/launcher takes (conf/hydra/launcher/*.yaml and the
    installed plugins' configs), composed. A config whose plugin is missing (ray_local without
    the Ray launcher) does not compose: its own file's keys stand in."""
    names = _group_options("hydra/launcher")
    keys = {}
    for name in names:
        try:
            keys[name] = frozenset(_compose([f"hydra/launcher={name}"], hydra_section=True).hydra.launcher)
        except Exception:
            own = CONF_DIR / "hydra" / "launcher" / f"{name}.yaml"
            keys[name] = frozenset(OmegaConf.load(own)) - {"defaults"} if own.is_file() else frozenset()
    return keys


def _other_launcher_hint(full_key: str) -> str:
    """For an unknown hydra.launcher.KEY: the launchers that take KEY, which the user most
    likely meant to select (hydra.launcher.n_jobs=2 without hydra/launcher=joblib)."""
    if not full_key.startswith("hydra.launcher."):
        return ""
    leaf = full_key.split(".")[2]
    takers = [name for name, keys in _launcher_keys().items() if leaf in keys]
    if not takers:
        return ""
    if len(takers) == 1:
        return f"; {leaf} is a setting of the {takers[0]} launcher (hydra/launcher={takers[0]})"
    return (f"; {leaf} is a setting of the {', '.join(takers[:-1])} and {takers[-1]} launchers "
            f"(hydra/launcher={takers[0]}, ...)")


def _optuna_settings_error(composed: DictConfig, cmd: _CommandLine) -> str | None:
    """Optuna sweeper settings that fail only once the study runs, each with a traceback: a
    count below 1, a direction other than minimize/maximize, a search space on a key the config
    does not have, an interval whose low end is not below its high end."""
    sweeper = composed.hydra.sweeper
    if not OmegaConf.is_dict(sweeper) or not str(sweeper.get("_target_") or "").endswith("OptunaSweeper"):
        return None
    for key, what in (("n_trials", "trials in all"), ("n_jobs", "trials to draw at once")):
        value = sweeper.get(key)
        if not isinstance(value, int) or value < 1:
            return f"hydra.sweeper.{key}={value}: give the number of {what}, an integer >= 1"
    sampler = sweeper.get("sampler")
    if OmegaConf.is_dict(sampler) and sampler.get("_target_"):  # the sweeper builds it only once the study starts
        from hydra.utils import instantiate

        try:
            instantiate(sampler)
        except Exception as e:  # noqa: BLE001 - Hydra's InstantiationException, several lines deep
            cause = e.__cause__ or e
            why = " ".join(str(cause).split()) or type(cause).__name__
            return f"hydra.sweeper.sampler ({sampler.get('_target_')}): cannot be made: {why[:200]}"
    directions = sweeper.get("direction")
    # (the plugin's own default is its Direction enum, Direction.minimize)
    named = [str(getattr(d, "name", d)).rsplit(".", 1)[-1] for d in (directions if isinstance(directions, list) or
                                                                     OmegaConf.is_list(directions) else [directions])]
    if any(d not in ("minimize", "maximize") for d in named):
        return f"hydra.sweeper.direction={directions}: allowed: minimize, maximize"
    # The search space: the sweeper's params (its yaml's, and hydra.sweeper.params.KEY=... given,
    # which the composed section leaves out when it is a sweep), and the swept overrides.
    prefix = "hydra.sweeper.params."
    params = OmegaConf.to_container(sweeper.params, resolve=False) if OmegaConf.is_dict(sweeper.get("params")) else {}
    params.update((o.key_or_group[len(prefix):], o.value() if isinstance(o.value(), str) else
                   o.input_line.split("=", 1)[1]) for o in cmd.parsed if o.key_or_group.startswith(prefix))
    space = [(f"{prefix}{k}", k, v) for k, v in params.items()] + [
        (o.key_or_group, o.key_or_group, o.input_line.split("=", 1)[1]) for o in cmd.task if o.is_sweep_override()]
    for given, key, spec in space:
        group = (CONF_DIR / key.replace(".", "/")).is_dir()  # experiment=choice(seed,...): a group, not a key
        if not group and OmegaConf.select(composed, key, default="<missing>") == "<missing>":
            known = [k for k, _ in leaves(OmegaConf.to_container(composed, resolve=False)) if not k.startswith("hydra.")]
            close = difflib.get_close_matches(key, known, n=1)
            return (f"{given}={spec}: {key} is not in the config, so the study has nothing to set"
                    + (f"; did you mean '{close[0]}'?" if close else ""))
        try:
            value = OverridesParser.create().parse_overrides([f"{key}={spec}"])[0].value()
        except Exception:  # Hydra's grammar: the sweeper will say
            continue
        start, end = getattr(value, "start", None), getattr(value, "end", None)
        if isinstance(start, (int, float)) and isinstance(end, (int, float)) and start > end:
            return f"{given}={spec}: an interval's low end must be below its high end, as in interval({end}, {start})"
        if isinstance(start, (int, float)) and isinstance(end, (int, float)) and given != key:  # the params'
            # (an override's interval was checked with the jobs: _job_overrides)
            err = _float_interval_error(f"{given}={spec}", key, value)
            if err:
                return err
    return None


def _optuna_storage_error(composed: DictConfig) -> str | None:
    """A study kept in a database (hydra.sweeper.storage) that the Optuna sweeper cannot open.
    It fails in optuna.create_study, after Hydra has made the sweep folder, with a long
    traceback: optuna 2.x (all the sweeper allows) runs its database code on SQLAlchemy 1.x only
    (the optuna-db extra pins it), and SQLite makes the database file but not its folder."""
    sweeper = composed.hydra.sweeper
    if not OmegaConf.is_dict(sweeper) or not str(sweeper.get("_target_") or "").endswith("OptunaSweeper"):
        return None
    raw = OmegaConf.to_container(sweeper, resolve=False).get("storage")
    if not raw:
        return None
    given = f"hydra.sweeper.storage={raw}"
    optuna, sqlalchemy = _version("optuna"), _version("sqlalchemy")
    rdb = not str(raw).startswith("redis")  # optuna.storages.get_storage: redis URLs skip SQLAlchemy
    if rdb and optuna and sqlalchemy and int(optuna.split(".")[0]) < 3 and int(sqlalchemy.split(".")[0]) >= 2:
        return (f"{given}: the Optuna sweeper needs optuna 2.x ({optuna} here), whose database code fails on "
                f"SQLAlchemy 2 ({sqlalchemy} here); for a study kept in a database install SQLAlchemy < 2 "
                f"with: pip install -e '.[optuna-db]'")
    try:  # ${...} that only the running app resolves: the sweeper will say
        url = str(OmegaConf.select(composed, "hydra.sweeper.storage"))
    except Exception:
        return None
    m = re.fullmatch(r"sqlite:///([^?]+)(\?.*)?", url)
    if not m or m.group(1) == ":memory:":
        return None
    folder = Path(m.group(1)).parent  # relative to the folder vaelab-train starts in (hydra.job.chdir=false)
    if not folder.is_dir():
        return f"{given}: the folder {folder} does not exist (SQLite makes the database file, not its folder)"
    err = unwritable(folder)
    return f"{given}: {err}, where SQLite would make the database" if err else None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _explain_plugin(exc: Exception, override: str, composed: DictConfig | None = None) -> str:
    """A launcher or sweeper that does not compose: name the missing plugin's extra if that is why."""
    m = re.search(r"Could not (?:load|find) 'hydra/(launcher|sweeper)/(\w+)'", str(exc))
    if m and m.group(2) in _PLUGIN_EXTRAS:
        return (f"override '{override}': Hydra's {m.group(2)} {m.group(1)} plugin is not installed; "
                f"install it with: pip install -e '.[{_PLUGIN_EXTRAS[m.group(2)]}]'")
    return _explain(exc, override, composed)
