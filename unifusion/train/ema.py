"""Exponential moving averages of a model's weights, with one or several decays.

Owns the update `theta_ema <- d theta_ema + (1 - d) theta` (`ema_update`; Polyak & Juditsky 1992; the EMA of
DDPM, Ho et al. 2020, App. B, and of EDM, Karras et al. 2022, App. F.1; the target network `theta-` of consistency
distillation, Song et al. 2023, Algorithm 2) and `EMA`: shadow copies updated after every optimiser step.
With `warmup=True` the decay at update `n` is `min(d, (1 + n) / (10 + n))` (the `num_updates` rule of
TensorFlow's `ExponentialMovingAverage`, which the DDPM and Score SDE code bases use), so early averages are
not dominated by the random initialisation.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA", "ema_update"]


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, mu: float) -> None:
    """`theta_target <- mu theta_target + (1 - mu) theta_online` for the parameters, in one fused `lerp` (a
    per-tensor loop costs a kernel launch per tensor on a GPU); buffers (e.g. normalisation statistics) are copied.
    `mu = 0` makes `target` a copy of `online`, `mu = 1` leaves it unchanged."""
    if not (0.0 <= mu <= 1.0):
        raise ValueError(f"mu must lie in [0, 1], got {mu!r}")
    tp, op = list(target.parameters()), list(online.parameters())
    if len(tp) != len(op):
        raise ValueError(f"target and online models differ: {len(tp)} vs {len(op)} parameters")
    if tp:
        torch._foreach_lerp_(tp, [o.detach() for o in op], 1.0 - mu)
    for tb, ob in zip(target.buffers(), online.buffers(), strict=True):
        tb.copy_(ob)


class EMA:
    """Shadow copies of `modules` (a name -> module dict) for every decay in `decays`.

    `update(n)` after optimiser step `n` (0-based); `averaged(i)[name]` is the averaged module of decay `i`;
    `state_tensors()` / `load_state_tensors()` move every shadow tensor in and out of a flat dict
    (keys `ema{i}.{name}.{param}`) for checkpoints. Buffers (e.g. normalisation statistics) are copied, not averaged.
    """

    def __init__(self, modules: dict[str, nn.Module], decays=(0.999,), warmup: bool = True):
        for d in decays:
            if not (0.0 < float(d) < 1.0):
                raise ValueError(f"EMA decays must lie in (0, 1), got {d!r}")
        self.decays = [float(d) for d in decays]
        self.warmup = bool(warmup)
        self.modules = modules
        self.shadows = [{name: copy.deepcopy(m).requires_grad_(False).eval() for name, m in modules.items()}
                        for _ in self.decays]

    def decay_at(self, i: int, n: int) -> float:
        """Decay of average `i` at update `n` (0-based)."""
        d = self.decays[i]
        return min(d, (1.0 + n) / (10.0 + n)) if self.warmup else d

    def update(self, n: int) -> None:
        """Fold the current weights into every average (call once after optimiser step `n`)."""
        for i, shadow in enumerate(self.shadows):
            for name, m in self.modules.items():
                ema_update(shadow[name], m, self.decay_at(i, n))

    def averaged(self, i: int = 0) -> dict[str, nn.Module]:
        """The averaged modules of decay index `i`."""
        return self.shadows[i]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every shadow tensor under `ema{i}.{module}.{key}`."""
        return {f"ema{i}.{name}.{k}": v for i, shadow in enumerate(self.shadows)
                for name, m in shadow.items() for k, v in m.state_dict().items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of `state_tensors` (strict: every key must be present)."""
        for i, shadow in enumerate(self.shadows):
            for name, m in shadow.items():
                prefix = f"ema{i}.{name}."
                m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
