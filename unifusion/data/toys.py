"""2-D toy data sets: exact where it matters, all sampled with a `torch.Generator`.

The Gaussian toys are draws from the oracles (`unifusion.oracles.eight_gaussians()`, `grid_gaussians()`), so
their true density, score and denoiser are known in closed form. The others are the classic shapes of the
flow/diffusion literature (two moons and the swiss roll of scikit-learn's generators, the checkerboard of
Grathwohl et al. 2019, FFJORD), written here in torch so that one generator drives them, scaled to about [-2, 2].
`toy_2d_labelled` also returns the class labels of the Gaussian toys: the mixture component of each point.
"""
from __future__ import annotations

import math

import torch

from ..oracles import eight_gaussians, grid_gaussians
from ..utils import check_choice, check_positive_int

__all__ = ["toy_2d", "toy_2d_labelled", "TOYS", "toy_oracle"]


def _eight_gaussians(n, g):
    return eight_gaussians().sample(n, generator=g)


def _grid(n, g):
    return grid_gaussians().sample(n, generator=g)


def _swiss_roll(n, g, noise=0.05):
    """Swiss roll in the plane: `t (cos t, sin t) / 5` with `t = 1.5 pi (1 + 2u)` (scikit-learn's `make_swiss_roll`)."""
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    x = torch.stack([t * t.cos(), t * t.sin()], 1) / 5
    return x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _moons(n, g, noise=0.05):
    """Two interleaving half circles (scikit-learn's `make_moons`), centred and doubled in scale."""
    u = math.pi * torch.rand(n, generator=g, dtype=torch.float64)
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper[:, None], torch.stack([u.cos(), u.sin()], 1),
                    torch.stack([1 - u.cos(), 0.5 - u.sin()], 1))
    x = 2 * (x - torch.tensor([0.5, 0.25], dtype=torch.float64))
    return x + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)


def _checkerboard(n, g):
    """Uniform on the 8 dark squares of a 4x4 board on [-2, 2]^2 (Grathwohl et al. 2019)."""
    x1 = 4 * torch.rand(n, generator=g, dtype=torch.float64) - 2
    x2 = torch.rand(n, generator=g, dtype=torch.float64) - 2 * torch.randint(2, (n,), generator=g) + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1)


TOYS = {"eight_gaussians": _eight_gaussians, "grid": _grid, "swiss_roll": _swiss_roll, "moons": _moons,
        "checkerboard": _checkerboard}

_ORACLES = {"eight_gaussians": eight_gaussians, "grid": grid_gaussians}


def toy_2d(name: str, n: int, generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """`n` points `[n, 2]` of the toy `name` (one of `TOYS`), drawn with `generator`."""
    check_choice(name, "toy", TOYS)
    check_positive_int(n, "n")
    return TOYS[name](n, generator).to(dtype)


def toy_2d_labelled(name: str, n: int, generator: torch.Generator | None = None,
                    dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`(points [n, 2], labels)`: the same points as `toy_2d` with the same generator, and for the Gaussian toys
    the component each point was drawn from (int64 `[n]`, the oracle's class label); None for the others."""
    if name not in _ORACLES:
        return toy_2d(name, n, generator, dtype), None
    check_positive_int(n, "n")
    x, k = _ORACLES[name]().sample_labelled(n, generator)
    return x.to(dtype), k


def toy_oracle(name: str):
    """The exact oracle (`GaussianMixture`) behind a Gaussian toy: "eight_gaussians" or "grid"."""
    if name not in _ORACLES:
        raise ValueError(f"toy={name!r} has no exact oracle; the ones that do are {sorted(_ORACLES)}")
    return _ORACLES[name]()
