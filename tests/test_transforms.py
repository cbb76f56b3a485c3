"""Denoiser transforms: static and dynamic thresholding (Saharia et al. 2022) against their definitions; the identity
on an exact denoiser of data inside the bound; the transformed denoiser is again a denoiser (samplers, attributes)."""
import pytest
import torch

from unifusion import VP, Denoiser, grids
from unifusion import samplers as S
from unifusion.oracles import EmpiricalData
from unifusion.transforms import clip_x0, dynamic_threshold

# a finite data set in [-0.9, 0.9]^3: its exact denoiser, a convex combination of the points, stays in the box
BOUNDED = EmpiricalData(0.9 * (2 * torch.rand(50, 3, generator=torch.Generator().manual_seed(0)) - 1))


def constant(value):
    """A denoiser that returns `value` (one row per example) whatever its input."""
    return lambda x, sigma, **kw: value.to(x.dtype)


def test_clip_x0_is_a_clamp_and_keeps_data_inside():
    d = torch.tensor([[-3.0, -0.5, 0.9, 2.0]])
    torch.testing.assert_close(clip_x0(constant(d), 1.0)(torch.zeros(1, 4), 1.0), d.clamp(-1, 1))
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for s in (0.01, 1.0, 100.0):
        torch.testing.assert_close(clip_x0(BOUNDED, 1.0)(10 * x, s), BOUNDED(10 * x, s), rtol=0, atol=0)


def test_dynamic_threshold_follows_imagen():
    """`s = max(bound, quantile_p |D|)` per example, `D' = clamp(D, -s, s) * bound / s` (Saharia et al. 2022)."""
    g = torch.Generator().manual_seed(1)
    d = torch.randn(5, 200, generator=g) * torch.tensor([0.2, 0.5, 1.0, 2.0, 4.0])[:, None]
    for p, bound in ((0.995, 1.0), (0.9, 1.0), (0.995, 2.5), (1.0, 1.0)):
        out = dynamic_threshold(constant(d), p, bound)(torch.zeros_like(d), 1.0)
        for row, o in zip(d, out, strict=True):
            s = max(bound, torch.quantile(row.abs(), p).item())
            torch.testing.assert_close(o, row.clamp(-s, s) * (bound / s))
        assert out.abs().max() <= bound * (1 + 1e-6)
        assert d[0].abs().max() < 1.0
        torch.testing.assert_close(out[0], d[0])  # row 0 lies inside every bound: unchanged
    # an example with at most a fraction 1 - p of entries out of range is clipped, not shrunk
    row = torch.cat([torch.full((999,), 0.5), torch.tensor([7.0])])[None]
    torch.testing.assert_close(dynamic_threshold(constant(row), 0.995)(row, 1.0), row.clamp(-1, 1))


def test_transformed_denoiser_is_a_denoiser():
    """It samples like the original where the original stays in range, in float32 too, and reads the wrapped
    denoiser's attributes (a sampler or `generate` finds its process)."""
    vp = VP()
    d = Denoiser(BOUNDED.process_model(vp, "eps"), vp, target="eps")
    x = 80 * torch.randn(64, 3, generator=torch.Generator().manual_seed(2))
    sig = grids.edm_grid(12, 0.002, 80.0)
    plain = S.sample_heun(d, x, sig)
    for t in (clip_x0(d, 1.0), dynamic_threshold(d, 0.995, 1.0)):
        assert t.process is vp and t.target == "eps"
        torch.testing.assert_close(S.sample_heun(t, x, sig), plain)
    with pytest.raises(AttributeError):
        _ = clip_x0(d).no_such_attribute


@pytest.mark.parametrize("bad", [0.0, -1.0, float("inf"), float("nan"), "1", True])
def test_bad_bounds_are_named(bad):
    with pytest.raises(ValueError, match="bound"):
        clip_x0(BOUNDED, bad)
    with pytest.raises(ValueError, match="bound"):
        dynamic_threshold(BOUNDED, 0.995, bad)
    with pytest.raises(ValueError, match="percentile"):
        dynamic_threshold(BOUNDED, 1.5)
    with pytest.raises(ValueError, match="callable"):
        clip_x0("not a model")
