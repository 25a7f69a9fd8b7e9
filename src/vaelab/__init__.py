"""vaelab: config-driven experiments with variational autoencoders."""
__version__ = "0.1.0"
