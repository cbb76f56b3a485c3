"""The shipped eps-prediction toys, trained as shipped and sampled as `unifusion sample` does with their configs'
default deterministic samplers: within 1.5x the SW2 noise floor, and no sample beyond 5x the data's radius.

Without the clean-data estimate clipped to the training data's range (`generate(clip_x0=True)`, the default), the
0.3% of starts with |z| > 3.4 follow paths on which the eps network extrapolates at every level above sigma~ ~ 1,
and `D = x~ - sigma~ eps` carries that error times sigma~: samples land up to 25x the radius, 3-15x the floor."""
import pytest
import torch

from unifusion import metrics
from unifusion import samplers as S
from unifusion.data import toy_2d
from unifusion.train import load_config, load_model, train_from_config
from unifusion.train.generate import generate

N = 4000


@pytest.mark.slow
@pytest.mark.parametrize("config", ["toy_vp", "toy_ddpm"])
def test_default_deterministic_sampler_of_an_eps_toy_is_at_the_floor(config, tmp_path):
    cfg = load_config(config, ["train.progress=false"])
    train_from_config(cfg, out=tmp_path)
    d = load_model(tmp_path)
    sc = d.config["sample"]
    assert d.config["model"]["target"] == "eps" and sc["sampler"] in S.DETERMINISTIC
    x, info = generate(d, N, d.data_shape, sampler=sc["sampler"], grid=sc["grid"], steps=sc["steps"], seed=0)
    name = d.config["data"]["name"]
    ref = toy_2d(name, 20000, torch.Generator().manual_seed(123))
    floor = metrics.vector_floor(lambda m, g: toy_2d(name, m, g), ref, N, generator=torch.Generator().manual_seed(5))
    sw2 = metrics.vector_report(x, ref, generator=torch.Generator().manual_seed(5))["sw2"]
    radius = ref.norm(dim=1).max().item()
    assert info["clip_x0"] == pytest.approx(d.data_bound)
    assert sw2 < 1.5 * floor["sw2"], (sw2, floor)
    assert x.norm(dim=1).max() < 5 * radius
