"""vaelab: config-driven experiments with variational autoencoders."""
# numpy before torch, and from Python: torch._C imports numpy from C++, where a Ctrl-C in the
# first second of a command (vaelab-train, vaelab resume) could leave numpy half-made and the
# command going on, to fail later with an ImportError or a missing numpy function (an epoch
# lost). Imported here first, a Ctrl-C during it is a KeyboardInterrupt like any other.
import numpy

del numpy  # (loaded; vaelab.numpy is not an API)

__version__ = "0.1.0"
