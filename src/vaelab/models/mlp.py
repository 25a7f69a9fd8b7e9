"""Fully connected VAE: the seed script's model, with the widths taken from the config.

With hidden=[512] and latent_size=256 it is the seed's network exactly: 784 -> 512 (ReLU)
-> (mu, logvar) each 256, and 256 -> 512 (ReLU) -> 784 (sigmoid). The seed's two heads fc2,
fc3 are one Linear(512, 2*L) here: the same function and the same init distribution
(PyTorch's default depends only on fan_in), computed in one matmul instead of two.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vaelab.config import SIZES
from vaelab.models.base import VAE
from vaelab.models.linear import Linear

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "elu": nn.ELU}


def _mlp(widths: Sequence[int], act: type[nn.Module], impl: str) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [Linear(a, b, impl=impl), act()]
    return layers


class MLPVAE(VAE):
    def __init__(self, latent_size: int, hidden: Sequence[int] | None = None, size: str = "base",
                 activation: str = "relu", input_dim: int = 784,
                 image_shape: Sequence[int] = (1, 28, 28), linear: str = "onednn", init: str = "torch") -> None:
        super().__init__()
        size = getattr(size, "value", size)  # accepts the config's enum as well as a str
        linear = getattr(linear, "value", linear)
        init = getattr(init, "value", init)
        hidden = list(hidden) if hidden is not None else SIZES[size]
        act = _ACTIVATIONS[activation]
        self.latent_size, self.input_dim, self.image_shape = latent_size, input_dim, tuple(image_shape)
        self.hidden = hidden
        # linear="onednn": CPU float32 products on oneDNN (models/linear.py); "aten": F.linear
        self.encoder = nn.Sequential(*_mlp([input_dim, *hidden], act, linear))
        self.head = Linear(hidden[-1], 2 * latent_size, impl=linear)  # -> [mu | logvar]
        self.decoder = nn.Sequential(*_mlp([latent_size, *hidden[::-1]], act, linear),
                                     Linear(hidden[0], input_dim, impl=linear))  # -> logits
        if init == "glorot":
            self._glorot()
        elif init != "torch":
            raise ValueError(f"init={init!r}: torch or glorot")

    @torch.no_grad()
    def _glorot(self) -> None:
        """Glorot & Bengio (2010)'s uniform weights, U(+-sqrt(6 / (fan_in + fan_out))), and zero
        biases, as Burda et al. (2016) initialise. The head's two halves, mu's and logvar's, are
        two layers there (fan_out latent_size each), one Linear here: each half on its own."""
        layers = [m for m in self.modules() if isinstance(m, nn.Linear)]
        for m in layers:
            halves = m.weight.chunk(2, dim=0) if m is self.head else (m.weight,)
            for w in halves:
                nn.init.xavier_uniform_(w)
            nn.init.zeros_(m.bias)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.encoder(x)).chunk(2, dim=-1)  # (B, L), (B, L)
        return mu, logvar

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)
