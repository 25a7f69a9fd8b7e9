"""vaelab: config-driven experiments with variational autoencoders."""
# What the console scripts say of a Ctrl-C before their command has begun (cli, train_cli, and
# below, while this package loads numpy), by program.
STOPPED_LOADING = {"vaelab-train": "vaelab-train: interrupted before any run started",
                   "vaelab": "vaelab: interrupted before the command began; nothing was written"}

# numpy before torch, and from Python: torch._C imports numpy from C++, where a Ctrl-C in the
# first second of a command (vaelab-train, vaelab resume) could leave numpy half-made and the
# command going on, to fail later with an ImportError or a missing numpy function (an epoch
# lost). Imported here first, a Ctrl-C during it is a KeyboardInterrupt like any other.
try:
    import numpy
except KeyboardInterrupt:
    # The console scripts import this package before cli's own one-line answer to a Ctrl-C
    # (cli.interrupted_on_the_way_in) can run: theirs, here too. A script's or a notebook's
    # `import vaelab` gets its KeyboardInterrupt.
    import os
    import sys

    _prog = os.path.splitext(os.path.basename(sys.argv[0] if sys.argv else ""))[0]
    _argv = getattr(sys, "orig_argv", [])  # (`python -m vaelab.train`: sys.argv[0] is "-m" while this loads)
    if _prog == "-m" and any(a == "-m" and b in ("vaelab.train", "vaelab.train_cli") for a, b in zip(_argv, _argv[1:])):
        _prog = "vaelab-train"
    _line = STOPPED_LOADING.get(_prog)
    if _line is None:
        raise
    print(_line, file=sys.stderr)
    raise SystemExit(130) from None

del numpy  # (loaded; vaelab.numpy is not an API)

__version__ = "0.1.0"
