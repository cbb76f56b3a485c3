"""`generate`: default grids for every process, clipping to the training data's range, and non-finite samples refused
with one line that names the sampler, the step and the likely cause (and the CLI then writes nothing)."""
import math

import pytest
import torch

from unifusion import Denoiser, grids
from unifusion.cli import main
from unifusion.data import get_dataset
from unifusion.oracles import eight_gaussians
from unifusion.processes import PROCESSES, get_process
from unifusion.train import load_model, read_checkpoint, save_checkpoint
from unifusion.train.generate import generate

MIX = eight_gaussians()


@pytest.mark.parametrize("process", sorted(PROCESSES))
def test_default_range_and_defaults_sample_every_process(process):
    """`default_sigma_range` is positive for every process (rectified flow and the cosine schedule reach
    sigma~ = 0), and the default sampler on its default grid lands on the data."""
    p = get_process(process)
    lo, hi = grids.default_sigma_range(p)
    assert 0 < lo < hi < math.inf and lo == max(p.sigma_ve_min, grids.SIGMA_MIN) and hi == p.sigma_ve_max
    x, info = generate(Denoiser(MIX.process_model(p, "eps"), p, target="eps"), 200, (2,), steps=10)
    assert info["clip_x0"] is None and (x.norm(dim=1) - 2).abs().max() < 0.5  # the circle of radius 2


def test_clip_x0_uses_the_recorded_data_bound():
    vp = get_process("vp")
    d = Denoiser(MIX.process_model(vp, "eps"), vp, target="eps")
    d.data_bound = 1.5  # as `load_model` sets it; DDIM's last step is x = D, so the samples are clipped D's
    x, info = generate(d, 100, (2,), sampler="ddim", steps=5)
    assert info["clip_x0"] == 1.5 and x.abs().max() <= 1.5
    x, info = generate(d, 100, (2,), sampler="ddim", steps=5, clip_x0=False)
    assert info["clip_x0"] is None and x.abs().max() > 1.5
    assert generate(d, 100, (2,), sampler="ddim", steps=5, clip_x0=1.0)[0].abs().max() <= 1.0


def test_non_finite_samples_raise_one_line_naming_sampler_step_and_cause():
    def nan_below(s0):  # the exact denoiser of N(0, I) data, NaN below sigma = s0
        return lambda x, sigma, **kw: torch.where(sigma[:, None] < s0, float("nan"), x / (1 + sigma[:, None] ** 2))

    with pytest.raises(ValueError) as e:
        generate(nan_below(1.0), 10, (2,), sampler="heun", grid="edm", steps=8)
    msg = str(e.value)
    s = grids.edm_grid(8, 0.002, 80.0).tolist()
    first = next(i for i in range(8) if s[i + 1] < 1.0)  # Heun's corrector meets the model's NaN a step early
    assert "\n" not in msg and "'heun'" in msg and f"from step {first + 1} of 8" in msg, msg
    assert f"the model returned NaN or Inf at sigma {s[first + 1]:.4g} on a finite input" in msg, msg

    calls = []

    def alternating(x, sigma, **kw):  # finite outputs +-3e38; LMS's derivatives (x - D) / sigma overflow
        calls.append(1)
        return torch.full_like(x, 3e38 * (-1) ** len(calls))

    with pytest.raises(ValueError, match="'lms' returned non-finite samples from step 2 of 4 .*update overflowed"):
        generate(alternating, 10, (2,), sampler="lms", grid="edm", steps=4)


def test_cli_writes_nothing_for_non_finite_samples(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "toy_vp", "--out", str(run), "--set", "train.steps=2", "--set", "train.batch_size=16",
                 "--set", "train.progress=false", "--set", "net.hidden=8", "--set", "data.n=64"]) == 0
    data, _ = get_dataset("eight_gaussians", n=64, seed=0)  # the config's data
    assert load_model(run).data_bound == pytest.approx(data.abs().max().item())
    path = run / "checkpoint.safetensors"
    tensors, meta = read_checkpoint(path)
    nan = {k: v * float("nan") if v.is_floating_point() and ".net." in k else v for k, v in tensors.items()}
    save_checkpoint(path, nan, {k: v for k, v in meta.items() if k not in ("sha256", "format")})
    before = sorted(p.name for p in run.iterdir())
    capsys.readouterr()
    assert main(["sample", str(run), "--steps", "3", "--n", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "non-finite" in err and "the model returned NaN" in err, err
    assert sorted(p.name for p in run.iterdir()) == before
