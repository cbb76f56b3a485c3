"""Latent diffusion: the autoencoders, the latent scale, checkpoints, the latent path against pixel space and an exact
oracle, the diffusers adapter, the CLI end to end and its user errors."""
import numpy as np
import pytest
import torch

from unifusion.cli import main
from unifusion.data import digits32_to_digits, load_digits, load_digits32
from unifusion.data.digits32 import residual_rms, upsample_digits
from unifusion.latent import (Autoencoder, DiagonalGaussian, IdentityAutoencoder, KLAutoencoder, build_latent_run,
                              decode_samples, estimate_latent_scale, load_autoencoder, save_autoencoder,
                              train_from_config)
from unifusion.metrics import sliced_wasserstein
from unifusion.oracles import GaussianMixture
from unifusion.train import CheckpointError, load_config, load_model
from unifusion.train.generate import generate

from test_cli import _error     # one line on stderr, exit 2

TINY_AE = {"kind": "kl", "latent_channels": 4, "channels": 4, "channel_mult": [1, 2, 2], "num_blocks": 1}
TINY_UNET = {"kind": "unet", "model_channels": 8, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [],
             "dropout": 0.0}


# ---- data ------------------------------------------------------------------------------------------------
def test_digits32_round_trip_is_exact():
    x, _ = load_digits("test")
    x32, _ = load_digits32("test")
    assert x32.shape == (360, 1, 32, 32)
    assert torch.allclose(digits32_to_digits(x32), x, atol=1e-5)       # the least-squares inverse of bicubic
    assert residual_rms(x32) < 1e-5 and residual_rms(torch.randn(8, 1, 32, 32)) > 0.5
    assert torch.allclose(upsample_digits(x[:3]), x32[:3])


# ---- the autoencoder ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mult, latent", [((1, 2, 2), (4, 8, 8)), ((1, 2, 2, 2), (4, 4, 4))])
def test_kl_autoencoder_shapes(mult, latent):
    ae = KLAutoencoder((1, 32, 32), latent_channels=4, channels=4, channel_mult=mult)
    x = torch.randn(3, 1, 32, 32)
    post = ae.encode(x)
    assert isinstance(post, DiagonalGaussian) and ae.latent_shape == latent
    assert post.mean.shape == post.std.shape == (3, *latent)
    assert ae.decode(post.sample(torch.Generator().manual_seed(0))).shape == x.shape
    assert ae.latent_shape_of((1, 64, 16)) == (4, 64 // ae.factor, 16 // ae.factor)
    for bad in ((1, 30, 32), (3, 32, 32), (32, 32)):
        with pytest.raises(ValueError, match="do not fit this autoencoder"):
            ae.latent_shape_of(bad)


def test_kl_term_is_the_gaussian_closed_form():
    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(5, 4, 2, 2, generator=g, dtype=torch.float64), torch.randn(5, 4, 2, 2, generator=g,
                                                                                          dtype=torch.float64)
    post = DiagonalGaussian(mean, logvar)
    q, p = torch.distributions.Normal(mean, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0)
    ref = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    assert torch.allclose(post.kl(), ref, rtol=1e-12)
    # and a Monte Carlo estimate of E_q[log q - log p] for one example agrees within 5 standard errors
    z = DiagonalGaussian(mean[:1].expand(20000, -1, -1, -1), logvar[:1].expand(20000, -1, -1, -1)).sample(g)
    per = (torch.distributions.Normal(mean[0], (0.5 * logvar[0]).exp()).log_prob(z) - p.log_prob(z)).flatten(1).sum(1)
    assert abs(float(per.mean() - post.kl()[0])) < 5 * float(per.std()) / 20000 ** 0.5


@pytest.mark.parametrize("shift", [False, True])
def test_latent_scale_gives_unit_std(shift):
    torch.manual_seed(0)
    ae = KLAutoencoder((1, 32, 32), channels=4).eval().requires_grad_(False)
    data, _ = load_digits32("train")
    ae.scale_factor, ae.shift_factor = estimate_latent_scale(ae, data, torch.Generator().manual_seed(1), shift)
    assert (ae.shift_factor != 0.0) == shift
    with torch.no_grad():
        z = ae.latents_from_images(data, torch.Generator().manual_seed(2))   # fresh posterior draws
    assert abs(float(z.std()) - 1.0) < 0.05
    assert abs(float(z.mean())) < (0.05 if shift else 10.0)


def _ae_config(tmp_path, **sets):
    cfg = load_config(None, [f"out={tmp_path / 'ae'}", "data.name=digits32", "train.steps=3", "train.batch_size=8",
                             "train.progress=false", "train.ema_decays=[0.9]", "train.threads=1"])
    cfg["autoencoder"] = dict(TINY_AE, **sets)
    return cfg


def test_autoencoder_checkpoint_round_trip(tmp_path):
    cfg = _ae_config(tmp_path, perceptual_weight=0.1)
    res = train_from_config(cfg)
    ae = load_autoencoder(tmp_path / "ae")
    assert ae.checkpoint_step == 3 and ae.latent_shape == (4, 8, 8)
    # the stored scale is the one measured on the training set with the weights that are loaded
    data, _ = load_digits32("train")
    raw = load_autoencoder(res.checkpoint, scaled=False)
    assert (raw.scale_factor, raw.shift_factor) == (1.0, 0.0)
    assert ae.scale_factor == pytest.approx(estimate_latent_scale(raw, data, torch.Generator().manual_seed(0))[0])
    x = data[:4]
    assert torch.allclose(ae.images_from_latents(ae.latents_from_images(x, sample=False)),
                          raw.decode(raw.encode(x).mean), atol=1e-5)
    # save_autoencoder / load_autoencoder keep weights and scale
    ae.scale_factor, ae.shift_factor = 0.7, -0.2
    save_autoencoder(ae, tmp_path / "copy.safetensors", TINY_AE)
    back = load_autoencoder(tmp_path / "copy.safetensors")
    assert (back.scale_factor, back.shift_factor) == (0.7, -0.2)
    assert torch.equal(back.latents_from_images(x, sample=False), ae.latents_from_images(x, sample=False))
    (tmp_path / "bad.safetensors").write_bytes((tmp_path / "copy.safetensors").read_bytes()[:-10])
    with pytest.raises(CheckpointError):
        load_autoencoder(tmp_path / "bad.safetensors")


# ---- latent diffusion = a transform -------------------------------------------------------------------------
def _latent_config(tmp_path, name, autoencoder=None, **sets):
    base = [f"out={tmp_path / name}", "data.name=digits", "data.as_images=true", "process.name=edm",
            "model.target=edm", "loss.name=edm", "train.steps=3", "train.batch_size=16", "train.progress=false",
            "train.threads=1", "train.ema_decays=[0.9]"]
    cfg = load_config(None, base + [f"{k}={v}" for k, v in sets.items()])
    cfg["net"] = dict(TINY_UNET)
    if autoencoder is not None:
        cfg["latent"] = {"autoencoder": str(autoencoder)}
    return cfg


@pytest.mark.parametrize("encode", ["cache", "online"])
def test_identity_autoencoder_equals_pixel_space(tmp_path, encode):
    ae_path = save_autoencoder(IdentityAutoencoder((1, 8, 8)), tmp_path / "identity.safetensors")
    train_from_config(_latent_config(tmp_path, "pixel"))
    cfg = _latent_config(tmp_path, "latent", ae_path)
    cfg["latent"]["encode"] = encode
    train_from_config(cfg)
    pix, lat = load_model(tmp_path / "pixel", ema=False), load_model(tmp_path / "latent", ema=False)
    for a, b in zip(pix.net.state_dict().values(), lat.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)                       # same seed, same data: bit-identical training
    xs, _ = generate(pix, 6, (1, 8, 8), sampler="heun", steps=4, seed=3, clip_x0=False)  # latents record no bound
    zs, _ = generate(lat, 6, lat.data_shape, sampler="heun", steps=4, seed=3)
    images, shape = decode_samples(lat, tmp_path / "latent", zs)
    assert shape == (1, 8, 8) and torch.equal(images, xs)
    assert decode_samples(pix, tmp_path / "pixel", xs) == (xs, None)


class LinearAutoencoder(Autoencoder):
    """`decode(z) = W z + b`, `encode(x) = W^+ (x - b)`: a Gaussian mixture of latents decodes to an exact mixture."""

    def __init__(self, generator):
        super().__init__()
        self.image_shape, self.factor, self.latent_channels = (1, 4, 4), 2, 2
        self.W = torch.randn(16, 8, generator=generator, dtype=torch.float64) / 2
        self.b = torch.randn(16, generator=generator, dtype=torch.float64) / 4
        self.scale_factor, self.shift_factor = 0.5, 0.3

    def encode(self, x):
        return ((x.flatten(1) - self.b) @ torch.linalg.pinv(self.W).T).reshape(-1, 2, 2, 2)

    def decode(self, z):
        return (z.flatten(1) @ self.W.T + self.b).reshape(-1, 1, 4, 4)


def test_latent_oracle_decodes_to_the_exact_pixel_mixture():
    g = torch.Generator().manual_seed(0)
    ae = LinearAutoencoder(g)
    k, d = 3, 8
    means = 2 * torch.randn(k, d, generator=g, dtype=torch.float64)
    covs = torch.stack([torch.diag(0.05 + 0.3 * torch.rand(d, generator=g, dtype=torch.float64)) for _ in range(k)])
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    latent = GaussianMixture(weights, means, covs)                  # in the normalised latent space

    def denoiser(x, sigma, **unused):
        return latent(x.flatten(1), sigma).reshape(x.shape)

    n = 4000
    z, _ = generate(denoiser, n, ae.latent_shape, sampler="heun", steps=40, seed=1, sigma_min=0.002, sigma_max=80.0)
    images = ae.images_from_latents(z.double()).flatten(1)
    # the exact pixel mixture: x = W (z / s + shift) + b
    s, t = ae.scale_factor, ae.shift_factor
    pixel = GaussianMixture(weights, (means / s + t) @ ae.W.T + ae.b,
                            ae.W @ covs @ ae.W.T / s ** 2 + 1e-12 * torch.eye(16))
    ref = pixel.sample(n, torch.Generator().manual_seed(2))
    floor = np.mean([sliced_wasserstein(pixel.sample(n, torch.Generator().manual_seed(10 + i)), ref,
                                        generator=torch.Generator().manual_seed(i)) for i in range(3)])
    sw = np.mean([sliced_wasserstein(images, ref, generator=torch.Generator().manual_seed(i)) for i in range(3)])
    assert sw < 1.5 * floor, (sw, floor)


def test_cache_and_online_give_the_same_loss(tmp_path):
    ae = KLAutoencoder((1, 8, 8), channels=4, channel_mult=(1, 2)).eval()
    ae.scale_factor, ae.shift_factor = 2.0, 0.1
    path = save_autoencoder(ae, tmp_path / "ae.safetensors", {"kind": "kl", "channels": 4, "channel_mult": [1, 2]})
    losses = {}
    for encode in ("cache", "online", "cache"):
        cfg = _latent_config(tmp_path, "run", path)
        cfg["latent"]["encode"] = encode
        task, data, _ = build_latent_run(cfg)
        assert task.meta["data_shape"] == [4, 4, 4]
        losses.setdefault(encode, []).append(task.loss((data[:8], None), torch.Generator().manual_seed(5)))
    assert torch.allclose(losses["cache"][0], losses["online"][0], rtol=1e-4, atol=1e-5)
    assert torch.equal(losses["cache"][0], losses["cache"][1])                   # read back from the cache file
    assert len(list((tmp_path / "latents").glob("*.safetensors"))) == 1


# ---- the diffusers adapter ----------------------------------------------------------------------------------
def test_diffusers_autoencoder_round_trip(tmp_path):
    from diffusers import AutoencoderKL

    from unifusion.latent.diffusers_vae import DiffusersAutoencoder

    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                        latent_channels=4, norm_num_groups=4, sample_size=16, scaling_factor=0.6,
                        shift_factor=0.1).eval()
    ae = DiffusersAutoencoder(vae)
    assert ae.latent_shape == (4, 8, 8) and (ae.scale_factor, ae.shift_factor) == (0.6, 0.1)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        z = ae.latents_from_images(x, sample=False)
        assert torch.allclose(z, (dist.mean - 0.1) * 0.6)
        assert torch.allclose(ae.images_from_latents(z), vae.decode(dist.mean).sample, atol=1e-6)
        g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        eps = torch.randn(dist.mean.shape, generator=g2)
        assert torch.allclose(ae.encode(x).sample(g1), dist.mean + dist.std * eps)
    vae.save_pretrained(tmp_path / "vae")
    back = load_autoencoder(tmp_path / "vae")
    with torch.no_grad():
        assert torch.equal(back.latents_from_images(x, sample=False), z)
        assert torch.equal(back.images_from_latents(z), ae.images_from_latents(z))


# ---- the CLI ------------------------------------------------------------------------------------------------
def _tiny_ae_run(tmp_path):
    ae = tmp_path / "ae"
    sets = ["--set", "train.steps=2", "--set", "train.batch_size=8", "--set", "train.progress=false",
            "--set", "autoencoder.channels=4"]
    assert main(["train", "digits32_ae", "--out", str(ae), *sets]) == 0
    return ae


LATENT_TINY = ["--set", "train.steps=2", "--set", "train.batch_size=8", "--set", "train.progress=false",
               "--set", "net.model_channels=8", "--set", "sample.n=4", "--set", "sample.steps=2"]


@pytest.mark.slow
def test_cli_latent_train_sample_eval_distill(tmp_path, capsys):
    ae = _tiny_ae_run(tmp_path)
    run, cd = tmp_path / "edm", tmp_path / "cd"
    assert main(["train", "digits32_latent_edm", "--out", str(run), "--set", f"latent.autoencoder={ae}",
                 *LATENT_TINY]) == 0
    assert load_model(run).data_shape == (4, 8, 8)
    assert main(["sample", str(run), "--out", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as z:
        assert z["samples"].shape == (4, 1, 32, 32) and np.isfinite(z["samples"]).all()
    assert main(["eval", str(run), "--n", "8", "--steps", "2"]) == 0
    assert "Frechet" in capsys.readouterr().out
    assert main(["distill", str(run), "--out", str(cd), "--set", "train.steps=2", "--set", "train.batch_size=8",
                 "--set", "train.progress=false", "--set", "consistency.N=4"]) == 0
    assert main(["sample", str(cd), "--sampler", "consistency", "--n", "3", "--out", str(tmp_path / "c.npz")]) == 0
    with np.load(tmp_path / "c.npz") as z:
        assert z["samples"].shape == (3, 1, 32, 32)
    assert main(["eval", str(tmp_path / "c.npz")]) == 0
    # a class-conditional latent model with classifier-free guidance: labels in, decoded images out
    cond = tmp_path / "cond"
    assert main(["train", "digits32_latent_vp", "--out", str(cond), "--set", f"latent.autoencoder={ae}", *LATENT_TINY,
                 "--set", "net.num_classes=10", "--set", "net.label_dropout=0.1"]) == 0
    assert main(["sample", str(cond), "--class", "3,5", "--guidance", "2", "--n", "4",
                 "--out", str(tmp_path / "g.npz")]) == 0
    with np.load(tmp_path / "g.npz") as z:
        assert z["samples"].shape == (4, 1, 32, 32) and z["labels"].tolist() == [3, 3, 5, 5]
    # an autoencoder that changed since the model was trained is refused
    a = load_autoencoder(ae)
    a.scale_factor = 3.0
    save_autoencoder(a, ae / "checkpoint.safetensors", dict(TINY_AE, channels=4, channel_mult=[1, 2, 4]))
    assert "changed since" in _error(capsys, ["sample", str(run)])
    assert "changed since" in _error(capsys, ["train", "digits32_latent_edm", "--out", str(run), "--resume",
                                              "--set", f"latent.autoencoder={ae}", *LATENT_TINY,
                                              "--set", "train.steps=3"])


def test_cli_latent_user_errors(tmp_path, capsys):
    ae = _tiny_ae_run(tmp_path)
    out = tmp_path / "out"
    base = ["train", "digits32_latent_vp", "--out", str(out), *LATENT_TINY]
    err = _error(capsys, base + ["--set", f"latent.autoencoder={tmp_path / 'missing'}"])
    assert "no autoencoder checkpoint" in err
    err = _error(capsys, base + ["--set", f"latent.autoencoder={ae}", "--set", "net.in_channels=3"])
    assert "latents of shape [4, 8, 8]" in err and "net.in_channels=3" in err
    np.savez(tmp_path / "x30.npz", x=np.zeros((16, 1, 30, 30), np.float32))
    err = _error(capsys, base + ["--set", f"latent.autoencoder={ae}", "--set", f"data.name={tmp_path / 'x30.npz'}"])
    assert "[1, 30, 30]" in err and "divisible by its downsampling factor 4" in err
    err = _error(capsys, base + ["--set", f"latent.autoencoder={ae}", "--set", "latent.encode=sometimes"])
    assert "latent.encode" in err
    err = _error(capsys, base + ["--set", f"latent.autoencoder={ae}", "--set", "latent.typo=1"])
    assert "latent.typo" in err
    err = _error(capsys, base + ["--set", f"latent.autoencoder={tmp_path}", ])
    assert "no autoencoder checkpoint" in err or "not an autoencoder" in err
    run = tmp_path / "pix"
    assert main(["train", "toy_ve", "--out", str(run), "--set", "train.steps=1", "--set", "train.progress=false",
                 "--set", "net.hidden=8", "--set", "data.n=64"]) == 0
    assert "not an autoencoder checkpoint" in _error(capsys, base + ["--set", f"latent.autoencoder={run}"])
    assert not out.exists()


def test_class_conditional_latent_model_sees_labels(tmp_path):
    path = save_autoencoder(IdentityAutoencoder((1, 8, 8)), tmp_path / "identity.safetensors")
    cfg = _latent_config(tmp_path, "cond", path)
    cfg["net"]["num_classes"] = 10
    task, data, labels = build_latent_run(cfg)
    assert labels is not None and labels.shape == data.shape[:1]
    with torch.no_grad():
        for p in task.modules["net"].parameters():       # away from the zero-initialised output layer
            p.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    a = task.loss((data[:8], labels[:8]), torch.Generator().manual_seed(0))
    b = task.loss((data[:8], (labels[:8] + 1) % 10), torch.Generator().manual_seed(0))
    assert not torch.allclose(a, b)
