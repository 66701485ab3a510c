"""DDIM (Song et al.) on a Gaussian process: the step x_t -> x_{t-1} with eta, and the reverse-ODE inversion step."""

from __future__ import annotations

import torch

__all__ = ["DDIMSteps"]


class DDIMSteps:
    """DDIM's steps, as methods of [`~guided_diffusers.schedulers.gaussian.GaussianDiffusion`] (which mixes this in);
    they read the process's float64 tables through ``extract``.
    """

    def ddim_sigma(self, t: int | torch.Tensor, like: torch.Tensor, eta: float) -> torch.Tensor:
        """DDIM's noise scale: eta * sqrt((1 - ab_prev) / (1 - ab)) * sqrt(1 - ab / ab_prev), ab = alpha_bar."""
        alpha_bar = self.extract(self.tables.alphas_cumprod, t, like)
        alpha_bar_prev = self.extract(self.tables.alphas_cumprod_prev, t, like)
        return eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)

    def ddim_step(
        self,
        pred_original_sample: torch.Tensor,
        x_t: torch.Tensor,
        t: int | torch.Tensor,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
        noise_pred: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One DDIM step x_t -> x_{t-1} (Song et al., equation 12), epsilon re-derived from x_0 unless given.

        Args:
            pred_original_sample (`torch.Tensor`): the (clipped, possibly guided) x_0 prediction.
            x_t (`torch.Tensor`): the sample at step t.
            t (`int` or `torch.Tensor`): steps of this process.
            eta (`float`, defaults to 0.0): 0 is deterministic DDIM, 1 matches the DDPM posterior variance.
            noise (`torch.Tensor`, *optional*): the standard normal noise (needed when eta > 0).
            noise_pred (`torch.Tensor`, *optional*): the epsilon of the direction to x_t; re-derived from
                ``pred_original_sample`` when absent (guided-diffusion's DDIM).
        """
        if noise_pred is None:
            noise_pred = self.predict_noise_from_start(x_t, t, pred_original_sample)
        alpha_bar_prev = self.extract(self.tables.alphas_cumprod_prev, t, x_t)
        sigma = self.ddim_sigma(t, x_t, eta)
        mean = pred_original_sample * torch.sqrt(alpha_bar_prev) + torch.sqrt(
            (1 - alpha_bar_prev - sigma**2).clamp(min=0)
        ) * noise_pred
        if noise is None:
            if eta != 0:
                raise ValueError(f"DDIM with eta={eta} needs noise, got None")
            return mean
        if noise.shape != x_t.shape:
            raise ValueError(f"noise must have the sample's shape {tuple(x_t.shape)}, got {tuple(noise.shape)}")
        return mean + self._nonzero_mask(t, x_t) * sigma * noise

    def ddim_reverse_step(
        self, pred_original_sample: torch.Tensor, x_t: torch.Tensor, t: int | torch.Tensor
    ) -> torch.Tensor:
        """The deterministic DDIM inversion step x_t -> x_{t+1} (the reverse ODE; alpha_bar after the last step is 0).

        Args:
            pred_original_sample (`torch.Tensor`): the x_0 prediction at step t.
            x_t (`torch.Tensor`): the sample at step t.
            t (`int` or `torch.Tensor`): steps of this process.
        """
        noise_pred = (
            self.extract(self.tables.sqrt_recip_alphas_cumprod, t, x_t) * x_t - pred_original_sample
        ) / self.extract(self.tables.sqrt_recipm1_alphas_cumprod, t, x_t)
        alpha_bar_next = self.extract(self.tables.alphas_cumprod_next, t, x_t)
        return pred_original_sample * torch.sqrt(alpha_bar_next) + torch.sqrt(1 - alpha_bar_next) * noise_pred
