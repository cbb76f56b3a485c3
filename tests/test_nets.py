"""Networks: shapes and conditioning contracts, zero-initialised outputs, embeddings that resolve every
`noise_cond` range, label handling, config building and safetensors round trips."""
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from unifusion.nets import MLP, NETS, FourierEmbedding, PositionalEmbedding, UNet, build_net
from unifusion.nets.unet import Attention


def _randomise_outputs(net):
    """Zero-initialised layers make a fresh network constant; give them weights to test conditioning."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if (p == 0).all():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return net


def test_mlp_shapes_and_zero_init():
    torch.manual_seed(0)
    net = MLP(5, hidden=32, depth=2, emb_dim=16)
    x = torch.randn(7, 5)
    out = net(x, torch.rand(7))
    assert out.shape == (7, 5) and (out == 0).all()  # output layer starts at zero (EDM init_zero)
    assert net(x, torch.tensor(0.3)).shape == (7, 5)  # a scalar noise_cond broadcasts


@pytest.mark.parametrize("res,mult,attn", [(8, (1, 2), (4,)), (32, (1, 2, 2, 2), (16,))], ids=["8x8", "32x32"])
def test_unet_shapes_and_attention_levels(res, mult, attn):
    torch.manual_seed(0)
    net = UNet(res, 3, out_channels=2, model_channels=16, channel_mult=mult, num_blocks=1, attn_resolutions=attn,
               dropout=0.0)
    x = torch.randn(2, 3, res, res)
    out = net(x, torch.rand(2))
    assert out.shape == (2, 2, res, res) and (out == 0).all()
    n_attn = sum(isinstance(m, Attention) for m in net.modules())
    # one per block at each attention resolution (encoder num_blocks, decoder num_blocks + 1) and one in the middle
    assert n_attn == len(attn) * (1 + 2) + 1


def test_unet_is_a_function_of_noise_cond_and_uses_skips():
    """Different noise levels give different outputs; every parameter gets a gradient (no dead branch)."""
    torch.manual_seed(0)
    net = _randomise_outputs(UNet(8, 1, model_channels=16, channel_mult=(1, 2), attn_resolutions=(4,), dropout=0.0))
    x = torch.randn(3, 1, 8, 8)
    a, b = net(x, torch.full((3,), -1.0)), net(x, torch.full((3,), 0.5))
    assert (a - b).abs().mean() > 1e-3 * a.abs().mean()
    net(x, torch.rand(3)).square().sum().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None or (p.grad == 0).all()]
    assert not dead, f"parameters without gradient: {dead}"


def test_batch_independence_in_eval_mode():
    """Example i's output does not depend on example j (no batch statistics leak across examples)."""
    torch.manual_seed(0)
    net = _randomise_outputs(UNet(8, 1, model_channels=16, channel_mult=(1, 2), attn_resolutions=(8,))).eval()
    x, c = torch.randn(4, 1, 8, 8), torch.rand(4)
    full = net(x, c)
    one = net(x[1:2], c[1:2])
    assert torch.allclose(full[1:2], one, atol=1e-5)


RANGES = {  # what the Denoiser passes for noise_cond (see nets.embedding)
    "ddpm integer t": torch.linspace(0, 999, 1000),
    "continuous t in [0,1]": torch.linspace(1e-3, 1, 1000),
    "ln(sigma)/4, sigma in [0.002, 80]": torch.linspace(math.log(0.002) / 4, math.log(80) / 4, 1000),
}


# The default positional embedding on every range; Fourier features (scale 16) only where the docs recommend
# them: on [0, 1000] they alias, so they are not offered there.
EMB_CASES = [("positional", r) for r in RANGES] + [("fourier", r) for r in list(RANGES)[1:]]


@pytest.mark.parametrize("kind,rng", EMB_CASES, ids=[f"{k}-{r}" for k, r in EMB_CASES])
def test_embedding_resolves_each_range(kind, rng):
    """Neighbouring noise levels get distinct features, the ends of the range very distinct ones, and the
    features are not degenerate: the Gram matrix over the range has many significant directions."""
    emb = PositionalEmbedding(128) if kind == "positional" else FourierEmbedding(128)
    c = RANGES[rng]
    e = emb(c)
    step = (e[1:] - e[:-1]).norm(dim=1)
    assert step.min() > 1e-3 * math.sqrt(128)
    assert (e[0] - e[-1]).norm() > 0.5 * math.sqrt(128)
    sv = torch.linalg.svdvals(e.double())
    assert (sv > 1e-2 * sv[0]).sum() >= 8


def test_ddpm_embedding_alone_does_not_resolve_log_sigma():
    """Control for the test above: DDPM's own setting (frequencies 1 .. 1e-4) collapses the log-sigma range to
    a few directions, which is why the default covers 1000 .. 1e-4."""
    e = PositionalEmbedding(128, scale=1.0, max_positions=1e4)(RANGES["ln(sigma)/4, sigma in [0.002, 80]"])
    sv = torch.linalg.svdvals(e.double())
    assert (sv > 1e-2 * sv[0]).sum() < 8


def test_fourier_frequencies_are_saved_and_reproducible():
    a, b = FourierEmbedding(32, seed=0), FourierEmbedding(32, seed=0)
    assert torch.equal(a.freqs, b.freqs) and "freqs" in a.state_dict()
    assert "freqs" not in PositionalEmbedding(32).state_dict()  # a pure function of its arguments


def test_class_labels_and_label_dropout():
    torch.manual_seed(0)
    net = _randomise_outputs(MLP(3, hidden=32, depth=1, emb_dim=16, num_classes=4, label_dropout=0.5)).eval()
    x, c = torch.randn(6, 3), torch.rand(6)
    none = net(x, c)
    assert torch.equal(none, net(x, c, torch.full((6,), -1)))  # -1 = no label = None
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    cond = net(x, c, y)
    assert not torch.allclose(cond, none)
    assert torch.equal(cond, net(x, c, y))  # eval mode: labels are never dropped
    net.train()
    torch.manual_seed(1)
    dropped = [torch.allclose(r, n, atol=1e-6) for r, n in zip(net(x.repeat(50, 1), c.repeat(50), y.repeat(50)),
                                                                none.repeat(50, 1), strict=True)]
    frac = sum(dropped) / len(dropped)
    assert abs(frac - 0.5) < 4 * math.sqrt(0.25 / 300)
    with pytest.raises(ValueError, match="class_labels must lie in"):
        net(x, c, torch.full((6,), 4))
    with pytest.raises(ValueError, match="num_classes=0"):
        MLP(3)(x, c, y)


def test_build_net_from_config_values():
    net = build_net("unet", img_resolution=8, in_channels=1, model_channels=16, channel_mult=[1, 2],
                    attn_resolutions=[4], num_classes=10)
    assert isinstance(net, UNet) and set(NETS) == {"mlp", "unet", "mixture_oracle", "diffusers_unet2d"}
    assert isinstance(build_net("mlp", dim=64, hidden=64), MLP)
    with pytest.raises(ValueError, match="'resnet' is not one of"):
        build_net("resnet")
    with pytest.raises(ValueError, match=r"unknown mlp option\(s\) \['width'\]"):
        build_net("mlp", dim=2, width=3)
    with pytest.raises(ValueError, match="not divisible"):
        UNet(10, 1, channel_mult=(1, 2, 2))
    with pytest.raises(ValueError, match=r"expects x of shape \[B, 2\]"):
        MLP(2)(torch.zeros(3, 4), torch.zeros(3))


def test_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    a = _randomise_outputs(UNet(8, 1, model_channels=16, channel_mult=(1, 2), embedding="fourier", num_classes=3))
    save_file(a.state_dict(), tmp_path / "w.safetensors")
    torch.manual_seed(1)
    b = UNet(8, 1, model_channels=16, channel_mult=(1, 2), embedding="fourier", num_classes=3)
    b.load_state_dict(load_file(tmp_path / "w.safetensors"))
    x, c = torch.randn(2, 1, 8, 8), torch.rand(2)
    assert torch.equal(a.eval()(x, c), b.eval()(x, c))


def test_bf16_autocast_runs():
    net = _randomise_outputs(UNet(8, 1, model_channels=16, channel_mult=(1, 2), attn_resolutions=(4,)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(2, 1, 8, 8), torch.rand(2))
    assert out.shape == (2, 1, 8, 8) and torch.isfinite(out.float()).all()
