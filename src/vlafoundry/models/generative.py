"""Generative action heads over chunks of K continuous actions: flow matching and diffusion.

Both model the distribution of the expert's chunk given the fused features (B, D), so a policy trained on
demonstrations that go left of an obstacle half of the time and right the other half samples one side or the other
instead of regressing to the middle (as pi0 / SmolVLA do with flow matching, Octo / Diffusion Policy with diffusion).

* ``model.head flow`` -- rectified flow: ``x_t = (1 - t) noise + t x``, the network predicts the velocity
  ``x - noise`` (MSE); acting integrates ``dx/dt = v(x_t, t, c)`` from noise with ``model.flow_steps`` Euler steps.
* ``model.head diffusion`` -- DDPM with ``model.diffusion_train_steps`` noise levels (``cosine`` or ``linear`` beta
  schedule, ``model.diffusion_schedule``), epsilon prediction (MSE); acting runs deterministic DDIM with
  ``model.diffusion_steps`` steps.

Both fit the head contract of :class:`~vlafoundry.models.components.ActionHead` without a special case in the
policy: ``forward`` returns the condition (the features, (B, D)); ``entry_loss`` draws the noise and the time (with
the global RNG, which the trainer checkpoints) and returns the per-entry loss (B, K), so ``bc_loss`` masks and
averages it like any other head's (DDP included); ``pick`` draws the initial noise from the acting generator, so
``reset()`` makes a rollout reproducible. Actions are normalised to [-1, 1] with the spec's bounds inside the head
and clipped to the bounds on output. The number of sampling steps is read from the policy config when sampling, so
``policy.cfg.flow_steps = 5`` changes it at acting time (or pass ``steps=`` to :meth:`GenerativeHead.sample`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from vlafoundry.models.components import ActionHead, register_head

#: Seed of the generator that offline metrics (``entry_scores``) sample with: the same numbers on every pass.
SCORE_SEED = 1234


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) times in [0, 1] -> (B, dim) sinusoidal features (frequencies 1 .. 1000, as in DDPM / pi0)."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=t.device, dtype=torch.float32))  # (half,)
    ang = t.float().unsqueeze(-1) * freqs * (2 * math.pi)  # (B, half)
    return torch.cat([ang.sin(), ang.cos()], dim=-1)  # (B, dim)


class ChunkDenoiser(nn.Module):
    """(noisy chunk (B, K, A), time (B,) in [0, 1], condition (B, D)) -> (B, K, A).

    An MLP over the flattened chunk with residual blocks, each modulated (FiLM: scale and shift) by the condition
    plus the time embedding; the output layer starts at zero."""

    def __init__(self, d_cond: int, chunk: int, action_dim: int, hidden: int, layers: int, time_dim: int = 64) -> None:
        super().__init__()
        self.chunk, self.action_dim, self.time_dim = chunk, action_dim, time_dim
        flat = chunk * action_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.cond_proj = nn.Sequential(nn.LayerNorm(d_cond), nn.Linear(d_cond, hidden))
        self.inp = nn.Linear(flat + 2 * hidden, hidden)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden, elementwise_affine=False) for _ in range(layers))
        self.films = nn.ModuleList(nn.Linear(hidden, 2 * hidden) for _ in range(layers))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))
                                  for _ in range(layers))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, flat)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        temb = self.time_mlp(time_embedding(t, self.time_dim).to(x.dtype))  # (B, H)
        c = self.cond_proj(cond) + temb  # (B, H)
        h = self.inp(torch.cat([x.reshape(b, -1), temb, c], dim=-1))  # (B, H)
        for norm, film, mlp in zip(self.norms, self.films, self.mlps):
            scale, shift = film(torch.nn.functional.gelu(c)).chunk(2, dim=-1)  # (B, H) each
            h = h + mlp(norm(h) * (1 + scale) + shift)
        return self.out(self.out_norm(h)).view(b, self.chunk, self.action_dim)  # (B, K, A)


class GenerativeHead(ActionHead):
    """Shared part of the flow and diffusion heads: bounds, normalisation, noise, the contract methods.

    Subclasses implement :meth:`training_loss` (normalised target (B, K, A) -> per-entry loss (B, K)) and
    :meth:`integrate` (initial noise (B, K, A), condition, steps -> normalised chunk (B, K, A))."""

    samples = True
    steps_key: ClassVar[str] = ""

    def __init__(self, d_model: int, spec: Any, cfg: Any) -> None:
        if spec.action_type != "continuous":
            raise ValueError(f"model.head: {type(self).kind!r} generates continuous action chunks; the data's action "
                             f"space is {spec.action_type} (use model.head discrete or binned)")
        super().__init__(d_model, spec, cfg)
        a = self.action_dim
        low = torch.tensor(spec.action_low if spec.action_low is not None else [-1.0] * a, dtype=torch.float32)
        high = torch.tensor(spec.action_high if spec.action_high is not None else [1.0] * a, dtype=torch.float32)
        if not bool(torch.isfinite(low).all() and torch.isfinite(high).all() and (high > low).all()):
            raise ValueError(f"model.head {type(self).kind}: needs finite action bounds with high > low, got "
                             f"low={low.tolist()} high={high.tolist()}")
        self.register_buffer("low", low, persistent=False)  # (A,)
        self.register_buffer("high", high, persistent=False)  # (A,)
        self.cfg = cfg  # sampling steps are read from here when sampling (settable at acting time)
        self.net = ChunkDenoiser(d_model, self.chunk, a, int(cfg.gen_hidden), int(cfg.gen_layers))

    # ---------------------------------------------------------------- normalisation
    def normalize(self, action: torch.Tensor) -> torch.Tensor:
        """(..., A) in [low, high] -> [-1, 1]."""
        return (2 * (action.float() - self.low) / (self.high - self.low) - 1).clamp(-1.0, 1.0)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """(..., A) in [-1, 1] (clipped) -> [low, high]."""
        return self.low + (x.clamp(-1.0, 1.0) + 1) * 0.5 * (self.high - self.low)

    # ---------------------------------------------------------------- the contract
    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return fused  # (B, D): the condition the denoiser reads

    def entry_loss(self, out: torch.Tensor, action: torch.Tensor, loss_cfg: Any) -> torch.Tensor:
        return self.training_loss(self.normalize(action), out)  # (B, K)

    def entry_scores(self, out: torch.Tensor, action: torch.Tensor) -> tuple[None, torch.Tensor]:
        """L1 (B, K) of one sample drawn with a fixed seed (:data:`SCORE_SEED`). In training mode one integration
        step (cheap; a logged progress signal), otherwise the configured steps (offline metrics)."""
        gen = torch.Generator().manual_seed(SCORE_SEED)
        with torch.no_grad():
            pred = self.sample(out.detach(), gen, steps=1 if self.training else None)
        return None, (pred - action.float()).abs().mean(-1)

    def pick(self, out: torch.Tensor, sample: bool, temperature: float, generator: torch.Generator) -> torch.Tensor:
        """A chunk (B, K, A) from noise drawn with ``generator`` (generative heads always sample; ``temperature``
        does not apply)."""
        return self.sample(out, generator)

    # ---------------------------------------------------------------- sampling
    def default_steps(self) -> int:
        """The sampling steps the policy config asks for now (``model.flow_steps`` / ``model.diffusion_steps``)."""
        raise NotImplementedError

    def sample(self, cond: torch.Tensor, generator: torch.Generator, steps: int | None = None) -> torch.Tensor:
        """Condition (B, D) -> actions (B, K, A) within the spec's bounds; the noise comes from ``generator``."""
        n = int(steps if steps is not None else self.default_steps())
        if n < 1:
            raise ValueError(f"model.{self.steps_key}: expected an integer >= 1, got {n}")
        shape = (cond.shape[0], self.chunk, self.action_dim)
        noise = torch.randn(shape, generator=generator, device=generator.device).to(cond.device, torch.float32)
        return self.unnormalize(self.integrate(noise, cond.float(), n))  # (B, K, A)

    def training_loss(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def integrate(self, noise: torch.Tensor, cond: torch.Tensor, steps: int) -> torch.Tensor:
        raise NotImplementedError


@register_head("flow")
class FlowMatchingHead(GenerativeHead):
    """Rectified flow over the chunk: ``x_t = (1 - t) noise + t x``, target velocity ``x - noise``."""

    steps_key = "flow_steps"

    def default_steps(self) -> int:
        return int(self.cfg.flow_steps)

    def training_loss(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(x)  # (B, K, A)
        t = torch.rand(x.shape[0], device=x.device)  # (B,)
        tt = t.view(-1, 1, 1)
        xt = (1 - tt) * noise + tt * x
        v = self.net(xt, t, cond)  # (B, K, A)
        return ((v - (x - noise)) ** 2).mean(-1)  # (B, K)

    def integrate(self, noise: torch.Tensor, cond: torch.Tensor, steps: int) -> torch.Tensor:
        x, dt = noise, 1.0 / steps
        for i in range(steps):  # Euler from t = 0 (noise) to t = 1 (data)
            t = torch.full((x.shape[0],), i * dt, device=x.device)
            x = x + dt * self.net(x, t, cond)
        return x  # (B, K, A)


def beta_schedule(kind: str, steps: int) -> torch.Tensor:
    """(T,) betas: ``cosine`` (Nichol & Dhariwal, capped at 0.999) or ``linear`` (DDPM's 1e-4 .. 0.02 scaled to
    ``T`` steps so that the last level is pure noise for any T)."""
    if kind == "cosine":
        s = 0.008
        u = torch.linspace(0, steps, steps + 1, dtype=torch.float64) / steps
        ab = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - ab[1:] / ab[:-1]).clamp(max=0.999).float()
    if kind == "linear":
        scale = 1000.0 / steps
        return torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), steps, dtype=torch.float64).float()
    raise ValueError(f"model.diffusion_schedule: expected one of ['cosine', 'linear'], got {kind!r}")


@register_head("diffusion")
class DiffusionHead(GenerativeHead):
    """DDPM training (epsilon prediction) and DDIM sampling (deterministic given the initial noise)."""

    steps_key = "diffusion_steps"

    def default_steps(self) -> int:
        return int(self.cfg.diffusion_steps)

    def __init__(self, d_model: int, spec: Any, cfg: Any) -> None:
        super().__init__(d_model, spec, cfg)
        self.num_train_steps = int(cfg.diffusion_train_steps)
        ab = torch.cumprod(1 - beta_schedule(cfg.diffusion_schedule, self.num_train_steps), 0)
        self.register_buffer("alpha_bar", ab, persistent=False)  # (T,)

    def training_loss(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(x)  # (B, K, A)
        k = torch.randint(0, self.num_train_steps, (x.shape[0],), device=x.device)  # (B,)
        ab = self.alpha_bar[k].view(-1, 1, 1)
        xt = ab.sqrt() * x + (1 - ab).sqrt() * noise
        eps = self.net(xt, k.float() / self.num_train_steps, cond)
        return ((eps - noise) ** 2).mean(-1)  # (B, K)

    def timesteps(self, steps: int) -> list[int]:
        """The noise levels DDIM visits, from T - 1 down to 0 (at most T of them)."""
        t = torch.linspace(self.num_train_steps - 1, 0, min(steps, self.num_train_steps)).round().long()
        return list(dict.fromkeys(t.tolist()))

    def integrate(self, noise: torch.Tensor, cond: torch.Tensor, steps: int) -> torch.Tensor:
        x, levels = noise, self.timesteps(steps)
        for i, k in enumerate(levels):
            ab = self.alpha_bar[k]
            ab_prev = self.alpha_bar[levels[i + 1]] if i + 1 < len(levels) else x.new_tensor(1.0)
            t = torch.full((x.shape[0],), k / self.num_train_steps, device=x.device)
            eps = self.net(x, t, cond)
            x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1.0, 1.0)
            eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
        return x  # (B, K, A)


__all__ = ["ChunkDenoiser", "DiffusionHead", "FlowMatchingHead", "GenerativeHead", "beta_schedule", "time_embedding"]
