"""Step grids: each definition against its formula, the DDIM subsequences against their published values."""
import math

import pytest
import torch

from unifusion import grids
from unifusion.processes import DDPM, VP, VPCosine


def test_edm_grid_formula_and_shape():
    s = grids.edm_grid(10, 0.002, 80.0, rho=7.0)
    assert s.dtype == torch.float64 and s.shape == (11,) and s[-1] == 0
    assert math.isclose(s[0].item(), 80.0, rel_tol=1e-14) and math.isclose(s[-2].item(), 0.002, rel_tol=1e-12)
    root = s[:-1] ** (1 / 7)  # Karras et al. eq. 5: linear in sigma^(1/rho)
    torch.testing.assert_close(root[1:] - root[:-1],
                               torch.full((9,), (root[-1] - root[0]).item() / 9, dtype=torch.float64))
    torch.testing.assert_close(grids.edm_grid(5, 1.0, 5.0, rho=1.0, zero=False),
                               torch.linspace(5, 1, 5, dtype=torch.float64))


def test_geometric_and_log_snr_grids():
    s = grids.geometric_grid(8, 0.01, 50.0)
    assert s.shape == (8,) and s[0].item() == pytest.approx(50.0) and s[-1].item() == pytest.approx(0.01)
    ratio = s[1:] / s[:-1]
    torch.testing.assert_close(ratio, ratio[:1].expand(7))
    lam = -2 * torch.log(grids.log_snr_grid(8, 0.01, 50.0)[:-1])  # uniform in log-SNR
    torch.testing.assert_close(lam[1:] - lam[:-1], (lam[1] - lam[0]).expand(7))
    assert grids.log_snr_grid(8, 0.01, 50.0)[-1] == 0


@pytest.mark.parametrize("p", [VP(), VPCosine(), DDPM()], ids=["vp", "cosine", "ddpm"])
def test_uniform_t_grid_is_uniform_in_t(p):
    s = grids.uniform_t_grid(p, 12)
    t = p.t_from_sigma_ve(s[:12])  # the cosine schedule's sigma~(t_min = 0) is already the final 0
    torch.testing.assert_close(t, torch.linspace(p.t_max, p.t_min, 12, dtype=torch.float64), atol=1e-7, rtol=1e-7)
    assert s[-1] == 0 and (s[1:] < s[:-1]).all()


def test_ddim_timesteps_published_values():
    # Lin et al. 2024, Table 2 (T = 1000, 10 steps), as in diffusers' DDIMScheduler.
    assert grids.ddim_timesteps(1000, 10, "leading").tolist() == list(range(900, -1, -100))
    assert grids.ddim_timesteps(1000, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert grids.ddim_timesteps(1000, 10, "linspace").tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert grids.ddim_timesteps(1000, 10, "leading", steps_offset=1).tolist()[0] == 901
    with pytest.raises(ValueError, match="spacing"):
        grids.ddim_timesteps(1000, 10, "middle")
    with pytest.raises(ValueError, match="n=2000"):
        grids.ddim_timesteps(1000, 2000)


def test_sigmas_from_timesteps_and_lists():
    p = DDPM()
    ts = grids.ddim_timesteps(1000, 5, "trailing")
    s = grids.sigmas_from_timesteps(p, ts)
    torch.testing.assert_close(s[:-1], p.sigma_ve(ts.double()))
    assert s[-1] == 0
    torch.testing.assert_close(grids.grid_from_list([3.0, 1.0, 0.5], zero=True),
                               torch.tensor([3.0, 1.0, 0.5, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("bad, match", [([1.0, 2.0], "descending"), ([2.0, 0.0, 1.0], "> 0"), ([1.0, -1.0], "> 0"),
                                        ([float("nan"), 1.0], "NaN"), ([float("inf"), 1.0], "finite"),
                                        ([1.0], "N >= 1")])
def test_grid_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        grids.grid_from_list(bad)


def test_bad_arguments():
    with pytest.raises(ValueError, match="sigma_min"):
        grids.edm_grid(5, 1.0, 0.5)
    with pytest.raises(ValueError, match="n must"):
        grids.edm_grid(0)
    with pytest.raises(ValueError, match="per-example"):
        grids.check_sigmas(torch.ones(3, 4).cumsum(0).flip(0), batch=5)


@pytest.mark.parametrize("sampler", sorted(grids.TUNED))
def test_tuned_grid_shape_and_bounds(sampler):
    for n in (1, 2, 3, 5, 7, 10, 20, 35, 50, 100):
        s = grids.tuned_grid(n, 0.002, 80.0, sampler=sampler)
        assert s.shape == (n + 1,) and s[0].item() == 80.0 and s[-1] == 0
        grids.check_sigmas(s)
        assert s[-2] >= 0.002
    for n, (hi, lo, _rho) in grids.TUNED[sampler].items():  # the tuned n are reproduced exactly
        s = grids.tuned_grid(n, 0.002, 80.0, sampler=sampler)
        assert s[1].item() == pytest.approx(hi) and s[-2].item() == pytest.approx(lo)
    narrow = grids.tuned_grid(10, 0.5, 2.0, sampler=sampler)  # clipped into the caller's range
    assert narrow[0].item() == 2.0 and narrow[-2].item() >= 0.5 and (narrow[1:-1] < 2.0).all()
    with pytest.raises(ValueError, match="sampler"):
        grids.tuned_grid(10, sampler="nope")


def test_hybrid_switch_table_interpolation():
    """The tabled n are reproduced, values in between lie between their neighbours (log-log), ends are held."""
    for n, v in grids.HYBRID_SWITCH.items():
        assert grids.hybrid_switch(n) == pytest.approx(v)
    assert grids.hybrid_switch(1) == pytest.approx(grids.HYBRID_SWITCH[min(grids.HYBRID_SWITCH)])
    assert grids.hybrid_switch(1000) == pytest.approx(grids.HYBRID_SWITCH[max(grids.HYBRID_SWITCH)])
    assert 0.05 < grids.hybrid_switch(40) < 0.1
    with pytest.raises(ValueError, match="-3"):
        grids.hybrid_switch(-3)


def test_ddim_timesteps_keep_linspace_fractions_when_asked():
    ts = grids.ddim_timesteps(1000, 8, "linspace", integer=False)
    assert ts.dtype == torch.float64
    torch.testing.assert_close(ts, torch.linspace(0, 999, 8, dtype=torch.float64).flip(0), rtol=0, atol=1e-12)
    assert torch.equal(grids.ddim_timesteps(1000, 8, "linspace"), torch.round(ts).to(torch.int64))
