"""VAE models. Each takes explicit constructor arguments, so a config's `_target_` maps to one
class and a test can build a model without Hydra."""
from vaelab.models.base import VAE
from vaelab.models.mlp import MLPVAE, SIZES

__all__ = ["VAE", "MLPVAE", "SIZES"]
