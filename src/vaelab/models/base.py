"""The interface every vaelab VAE implements; the trainer and evaluator use only this.

A model maps x (B, D) in [0, 1] to the parameters of a diagonal Gaussian posterior
q(z|x) = N(mu, diag(exp(logvar))) and maps z (B, L) back to decoder *logits* (B, D). Keeping
logits (not probabilities) lets the Bernoulli likelihood use the stable
binary_cross_entropy_with_logits; `decode` applies the sigmoid for pictures and MSE.
"""
from __future__ import annotations

import torch
from torch import nn


class VAE(nn.Module):
    latent_size: int
    input_dim: int
    image_shape: tuple

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, D) -> mu (B, L), logvar (B, L)."""
        raise NotImplementedError

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L) -> logits (B, D)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L) -> decoder mean in [0, 1], (B, D)."""
        return torch.sigmoid(self.decode_logits(z))

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014, eq. 10)."""
        std = torch.exp(0.5 * logvar)
        # randn_like when no generator is given (the same draws): torch.compile cannot trace
        # randn(shape, generator=None) once the batch size is dynamic, e.g. a short last batch.
        eps = (torch.randn_like(std) if generator is None
               else torch.randn(std.shape, dtype=std.dtype, device=std.device, generator=generator))
        return mu + eps * std

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, D) -> (logits (B, D), mu (B, L), logvar (B, L)) with one sampled z per example."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar)
        return self.decode_logits(z), mu, logvar

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """n draws of the decoder mean from z ~ N(0, temperature^2 I): (n, D) in [0, 1]."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.latent_size, device=device, generator=generator) * temperature
        return self.decode(z)
