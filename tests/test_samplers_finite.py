"""Every sampler x every process x float32 / bfloat16 x 1, 2, 10, 35 steps, on the exact oracle seen through each
process's eps-prediction `Denoiser` and the sampler's default grid (`RECOMMENDED` between
`grids.default_sigma_range`): finite samples of the input's dtype, or a one-line `ValueError` raised before the
first model evaluation. The process-time samplers likewise, on their own time grids."""
from functools import partial

import pytest
import torch

from unifusion import DDPM, Denoiser, grids
from unifusion import samplers as S
from unifusion.oracles import eight_gaussians
from unifusion.processes import PROCESSES, get_process

MIX = eight_gaussians()
STEPS = (1, 2, 10, 35)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
BATCH = 6
FAST = {"langevin": {"n_steps_each": 5}}  # per-step stability does not depend on the steps per level (T = 100 below)


def _finite_or_refused(fn, model, x, *args) -> str:
    """Run `fn(model, x, *args)`: "ok" if its output is finite and of `x`'s dtype, "refused" if it raised a one-line
    `ValueError` before the first model evaluation, else what went wrong."""
    counted = S.count_nfe(model)
    try:
        out = fn(counted, x, *args)
    except ValueError as e:
        return "refused" if counted.nfe == 0 and "\n" not in str(e) else f"ValueError after {counted.nfe} NFE: {e}"
    if out.dtype != x.dtype or out.shape != x.shape:
        return f"{out.dtype} {tuple(out.shape)} out of {x.dtype} {tuple(x.shape)}"
    return "ok" if torch.isfinite(out).all() else "non-finite"


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_every_sampler_on_every_process_is_finite(process, dtype):
    p = get_process(process)
    d = Denoiser(MIX.process_model(p, "eps"), p, target="eps")
    lo, hi = grids.default_sigma_range(p)
    outcomes = {}
    for name, fn in S.SAMPLERS.items():
        for n in STEPS:
            sigmas = S.RECOMMENDED[name](n, lo, hi)
            x = (sigmas[0].item() * torch.randn(BATCH, 2, generator=torch.Generator().manual_seed(n))).to(DTYPES[dtype])
            run = partial(fn, generator=torch.Generator().manual_seed(1), **FAST.get(name, {}))
            outcomes[name, n] = _finite_or_refused(run, d, x, sigmas)
    assert all(v in ("ok", "refused") for v in outcomes.values()), {k: v for k, v in outcomes.items() if v != "ok"}


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_process_time_samplers_are_finite(process, dtype):
    p = get_process(process)
    eps_model = MIX.process_model(p, "eps")
    g = torch.Generator().manual_seed(1)
    ddim = lambda m, x, ts: S.sample_ddim_discrete(m, p, x, ts, generator=g)  # noqa: E731
    em = lambda m, x, ts: S.sample_euler_maruyama_t(m, p, x, ts, generator=g)  # noqa: E731
    for n in STEPS:
        x = p.prior_sample((BATCH, 2), generator=torch.Generator().manual_seed(n), dtype=DTYPES[dtype])
        ts = grids.ddim_timesteps(p.num_timesteps, n, "trailing") if isinstance(p, DDPM) else \
            torch.linspace(p.t_max, p.t_min, n + 1, dtype=torch.float64)
        assert _finite_or_refused(ddim, eps_model, x, ts) == "ok"
        ts = torch.linspace(p.t_max, p.t_min, n + 1, dtype=torch.float64)
        assert _finite_or_refused(em, eps_model, x, ts) == "ok"
    if isinstance(p, DDPM):
        x = p.prior_sample((BATCH, 2), generator=torch.Generator().manual_seed(0), dtype=DTYPES[dtype])
        assert _finite_or_refused(lambda m, x: S.sample_ddpm(m, p, x, generator=g), eps_model, x) == "ok"


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_langevin_defaults_on_every_default_grid(process):
    """Annealed Langevin with its defaults (100 steps per level) on the recommended grid of each process's default
    range ends near the data (the exact denoiser; the final step is `x = D`, so only a diverged chain lands far)."""
    lo, hi = grids.default_sigma_range(get_process(process))
    sigmas = S.RECOMMENDED["langevin"](10, lo, hi)
    x = sigmas[0].item() * torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    out = S.sample_langevin(MIX, x, sigmas, generator=torch.Generator().manual_seed(1))
    assert out.norm(dim=1).max() < 3.0  # the eight Gaussians lie on the circle of radius 2, std 0.1
