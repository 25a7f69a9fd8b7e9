"""`vaelab COMMAND ...`: everything around a run directory (training itself is vaelab-train).

Each command lives in the module that does the work; for command NAME that module provides
`add_NAME_arguments(parser)` and `NAME_command(args) -> exit code`; this file only dispatches.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import re
import sys

from vaelab import STOPPED_LOADING, __version__

COMMANDS = {
    "eval": ("vaelab.evaluate_run", "test-set ELBO, IWAE NLL, active units and pictures of a run"),
    "sample": ("vaelab.evaluate_run", "decode samples from the prior into a PNG grid"),
    "reproduce": ("vaelab.workflow", "re-run a run from its saved config and compare the metrics"),
    "resume": ("vaelab.workflow", "continue a run from its last checkpoint"),
    "compare": ("vaelab.compare", "table (and curves) of the runs under some folders"),
}

# What a Ctrl-C that a command does not answer itself leaves: one while it loads torch and the
# data, say (resume and reproduce answer the ones that come once the training has begun).
LEFT_AS_IT_WAS = {
    "eval": "interrupted; the run's eval.json, eval/ and TensorBoard keep the evaluation they held",
    "sample": "interrupted; nothing was written",
    "reproduce": "interrupted before the reproduction began; nothing was written",
    "resume": "interrupted; the run keeps what it had",
    "compare": "interrupted; nothing was written",
}


def one_line_errors(prog: str):
    """A replacement for ArgumentParser.error: argparse prints the usage block as well, vaelab
    commands answer a bad command line in one line (and exit 2, as argparse does)."""
    def error(message: str):
        wrong = re.search(r"argument COMMAND: invalid choice: '([^']*)'", message)
        if wrong:  # (vaelab evl, vaelab train: review)
            close = difflib.get_close_matches(wrong.group(1), list(COMMANDS), n=1)
            trains = wrong.group(1).startswith("train") or difflib.get_close_matches(wrong.group(1), ["train"], n=1)
            message += ("; training is vaelab-train's" if trains else f"; did you mean {close[0]}?" if close else "")
        print(f"{prog}: error: {message} (see {prog} --help)", file=sys.stderr)
        sys.exit(2)
    return error


def interrupted_on_the_way_in(line: str):
    """A Ctrl-C while a command's modules load (hydra, torch: its first second or two) is one line
    and exit status 130, not a KeyboardInterrupt traceback through the imports: nothing has run."""
    print(line, file=sys.stderr)
    sys.exit(130)


def train_main() -> None:
    """Console script `vaelab-train` (vaelab.train_cli.main), with the loading of its modules
    under the same one-line Ctrl-C."""
    try:
        from vaelab.train_cli import main as train_cli_main
    except KeyboardInterrupt:
        interrupted_on_the_way_in(STOPPED_LOADING["vaelab-train"])  # (as train_cli says)
    train_cli_main()


def main(argv: list[str] | None = None) -> None:
    try:
        mod, args = _parse(argv)
        from vaelab.errors import leaving_after_a_stop, when_the_reader_has_gone
    except KeyboardInterrupt:  # (once the command runs, it answers a Ctrl-C itself)
        interrupted_on_the_way_in(STOPPED_LOADING["vaelab"])
    try:
        code = when_the_reader_has_gone(lambda: getattr(mod, f"{args.command}_command")(args))
    except OSError as e:
        import errno
        import os

        if e.errno != errno.ENAMETOOLONG:
            raise
        # (a path given with a name of over 255 bytes, or over 4096 in all: a traceback from wherever it was
        # first looked at, review)
        name = os.fsdecode(e.filename) if isinstance(e.filename, (str, bytes)) else "a path given"
        print(f"vaelab {args.command}: error: {name}: a name in it is longer than the file system allows (255 "
              f"bytes a name, 4096 a path)", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:  # one the command did not answer itself (while it loads torch, say)
        print(f"vaelab {args.command}: {LEFT_AS_IT_WAS.get(args.command, 'interrupted')}", file=sys.stderr)
        code = 130
    if code == 130:  # stopped, and saved: a late signal on the way out changes nothing
        leaving_after_a_stop()
    sys.exit(code or 0)


def _parse(argv: list[str] | None):
    """The command's module, imported, and its parsed arguments (one line and exit 2 for bad ones)."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    chosen = next((a for a in argv if not a.startswith(("-", "\u2013", "\u2014"))), None)  # (a pasted dash: below)
    parser = argparse.ArgumentParser(prog="vaelab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    parser.error = one_line_errors("vaelab")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parsers = {}
    for name, (module, help_) in COMMANDS.items():
        p = parsers[name] = sub.add_parser(name, help=help_, description=help_)
        p.error = one_line_errors(f"vaelab {name}")
        p.set_defaults(_module=module)
        if name == chosen:  # only the command being run imports its module (most import torch, ~2 s)
            getattr(importlib.import_module(module), f"add_{name}_arguments")(p)
    # vaelab's own options come before the command, and take no value: one it does not know is
    # answered here, before argparse would ask for a missing COMMAND or the command's RUN_DIR
    # instead (`vaelab --versoin`, `vaelab --verison eval`)
    # (argparse's own rules stand: --vers is --version, and -h or --version anywhere wins: review)
    head = argv[:argv.index(chosen)] if chosen is not None else argv
    options = list(parser._option_string_actions)

    def known(arg: str) -> str | None:
        name = arg.split("=", 1)[0]
        starts = [o for o in options if o.startswith(name) and name.startswith("--")]
        return name if name in options else starts[0] if len(starts) == 1 else None
    # (-h: every parser has it; --version: vaelab's own, so before the command only, review)
    if not ({"-h", "--help"} & {known(a) for a in argv} or "--version" in {known(a) for a in head}) and (
            wrong := [a for a in head if known(a) is None and a != "--"]):  # ("--": argparse's to answer)
        parser.error(f"unrecognized arguments: {' '.join(wrong)}{_did_you_mean(wrong, parser)}")
    # argparse leaves a command's unknown options to the top-level parser, which would name
    # neither the command nor its options: the command's own parser reports them.
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        own = parsers[args.command]
        # (data.root=DIR is how vaelab-train and resume take it; eval, sample and reproduce take an option)
        hint = ("; the data folder is given as --data-root DIR" if "--data-root" in own.format_usage()
                and any(u.startswith("data.root=") for u in unknown) else "")
        own.error(f"unrecognized arguments: {' '.join(unknown)}{hint}{_did_you_mean(unknown, own)}")
    return importlib.import_module(args._module), args


def _did_you_mean(unknown: list[str], parser: argparse.ArgumentParser) -> str:
    """"; did you mean --checkpoint?" for the options of `parser` closest to those in `unknown`
    (--checkpont: review; each unknown option, -N and -checkpoint too), or ""."""
    options = list(parser._option_string_actions)
    # (an en or em dash, pasted from typeset text, is a --; a letter's case is a near miss too: --K, -N)
    flags = [re.sub(r"^[\u2013\u2014]", "--", u).split("=", 1)[0] for u in unknown if u[:1] in "-\u2013\u2014"]
    close = [next((o for o in options if o.lower() == f.lower()), None) or
             next(iter(difflib.get_close_matches(f, options, n=1, cutoff=0.7)), None) for f in flags
             if len(f) > 2 or f.lower() in map(str.lower, options)]
    close = [c for c in close if c]
    return f"; did you mean {', '.join(dict.fromkeys(close))}?" if close else ""


if __name__ == "__main__":
    main()
