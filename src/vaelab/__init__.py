"""vaelab: config-driven experiments with variational autoencoders."""
import os as _os
import sys as _sys

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
    _STOPPED_LOADING = {"vaelab-train": "vaelab-train: interrupted before any run started",
                        "vaelab": "vaelab: interrupted before the command began; nothing was written"}
    _line = _STOPPED_LOADING.get(_os.path.splitext(_os.path.basename(_sys.argv[0] if _sys.argv else ""))[0])
    if _line is None:
        raise
    print(_line, file=_sys.stderr)
    raise SystemExit(130) from None

del numpy  # (loaded; vaelab.numpy is not an API)

__version__ = "0.1.0"
