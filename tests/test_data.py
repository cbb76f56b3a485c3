"""Data sets: toys are what they claim (the Gaussian ones are exact oracle draws), files load exactly, and
every bad input is one error naming the value."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from unifusion.data import DATASETS, TOYS, ImageFolder, get_dataset, load_digits, load_npz, toy_2d, toy_oracle


@pytest.mark.parametrize("name", sorted(TOYS))
def test_toys_are_deterministic_in_the_generator(name):
    a = toy_2d(name, 500, torch.Generator().manual_seed(0))
    b = toy_2d(name, 500, torch.Generator().manual_seed(0))
    c = toy_2d(name, 500, torch.Generator().manual_seed(1))
    assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.abs().max() < 4


@pytest.mark.parametrize("name", ["eight_gaussians", "grid"])
def test_gaussian_toys_follow_their_oracle(name):
    """Each component gets its weight's share of points, and the within-component deviations are N(0, std^2):
    the toy is a draw from the exact oracle (chi-square and variance checks)."""
    oracle, n = toy_oracle(name), 40000
    x = toy_2d(name, n, torch.Generator().manual_seed(0), dtype=torch.float64)
    k = oracle.component(x)
    counts = torch.bincount(k, minlength=oracle.K).double()
    expected = n * oracle.weights
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < oracle.K + 6 * math.sqrt(2 * oracle.K)
    r = x - oracle.means[k]
    var = oracle.lam[k, 0]
    z2 = (r ** 2 / var[:, None]).mean()
    assert abs(z2 - 1) < 0.03
    assert oracle.log_prob(x).mean() > oracle.log_prob(x + 0.2).mean()


def test_checkerboard_moons_swiss_roll_shapes():
    g = torch.Generator().manual_seed(0)
    cb = toy_2d("checkerboard", 5000, g, dtype=torch.float64)
    assert ((cb.floor().sum(1) % 2) == 0).all() and cb.abs().max() <= 2  # dark squares only
    fl = cb.floor()
    assert len({(int(a), int(b)) for a, b in fl}) == 8
    m = toy_2d("moons", 5000, g, dtype=torch.float64) / 2 + torch.tensor([0.5, 0.25], dtype=torch.float64)
    d_upper = (m.norm(dim=1) - 1).abs()
    d_lower = ((m - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs()
    assert (torch.minimum(d_upper, d_lower) < 0.05 / 2 * 6).all()  # within 6 noise std of one of the arcs
    sr = toy_2d("swiss_roll", 5000, g, dtype=torch.float64)
    radius = sr.norm(dim=1) * 5
    assert radius.min() > 1.5 * math.pi - 1 and radius.max() < 4.5 * math.pi + 1


def test_digits_through_the_registry():
    x, y = get_dataset("digits")
    x2, y2 = load_digits("train")
    assert torch.equal(x, x2) and torch.equal(y, y2) and x.shape == (1437, 64)
    xi, _ = get_dataset("digits", split="test", as_images=True)
    assert xi.shape == (360, 1, 8, 8) and xi.min() >= -1 and xi.max() <= 1


def test_npz_round_trip_and_keys(tmp_path):
    a = np.random.default_rng(0).normal(size=(20, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=a, y=np.arange(20))
    x, y = get_dataset(str(tmp_path / "a.npz"))
    assert torch.equal(x, torch.from_numpy(a)) and torch.equal(y, torch.arange(20))
    np.savez(tmp_path / "b.npz", foo=a, bar=a[:, 0])
    with pytest.raises(ValueError, match=r"arrays \['bar', 'foo'\]; pass key="):
        load_npz(tmp_path / "b.npz")
    x, y = load_npz(tmp_path / "b.npz", key="bar")
    assert x.shape == (20, 4, 4) and y is None
    with pytest.raises(ValueError, match="no array 'baz'"):
        load_npz(tmp_path / "b.npz", key="baz")
    np.savez(tmp_path / "c.npz", np.arange(5.0))
    assert load_npz(tmp_path / "c.npz")[0].shape == (5, 1)


@pytest.mark.parametrize("bad,word", [(np.nan, "NaN"), (np.inf, "Inf")])
def test_npz_rejects_non_finite(tmp_path, bad, word):
    a = np.zeros((4, 2))
    a[2, 1] = bad
    np.savez(tmp_path / "n.npz", x=a)
    with pytest.raises(ValueError, match=f"'x' of .*n.npz' contains {word}"):
        get_dataset(str(tmp_path / "n.npz"))


def test_npz_refuses_pickles_and_garbage(tmp_path):
    np.savez(tmp_path / "o.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ValueError, match="pickled objects"):
        load_npz(tmp_path / "o.npz")
    (tmp_path / "g.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_npz(tmp_path / "g.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        get_dataset(str(tmp_path / "missing.npz"))


def _png(path, size=(4, 4), mode="RGB", value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 255 - value, 0)).save(path)


def test_image_folder_values_labels_and_jpeg(tmp_path):
    _png(tmp_path / "cat" / "a.png", value=0)
    _png(tmp_path / "cat" / "b.png", value=255)
    _png(tmp_path / "dog" / "c.png", value=51)
    Image.new("RGB", (4, 4), (128, 128, 128)).save(tmp_path / "dog" / "d.jpg", quality=100)
    ds = ImageFolder(tmp_path)
    assert len(ds) == 4 and ds.classes == ["cat", "dog"] and ds.labels.tolist() == [0, 0, 1, 1]
    x = ds.data
    assert x.shape == (4, 3, 4, 4) and x.dtype == torch.float32
    assert torch.equal(x[0, 0], torch.full((4, 4), -1.0)) and torch.equal(x[0, 1], torch.full((4, 4), 1.0))
    assert torch.allclose(x[2, 0], torch.full((4, 4), 51 / 127.5 - 1))
    assert (x[3] - (128 / 127.5 - 1)).abs().max() < 3 / 127.5  # JPEG decodes to about the grey it holds
    xi, label = ds[2]                                   # one image, decoded on demand, still uint8
    assert xi.dtype == torch.uint8 and torch.equal(xi.float() / 127.5 - 1, x[2]) and label == 1
    xg, yg = get_dataset(str(tmp_path))
    assert torch.equal(xg, x) and torch.equal(yg, ds.labels)


def test_image_folder_greyscale_and_flat(tmp_path):
    for i in range(3):
        _png(tmp_path / f"{i}.png", mode="L", value=10 * i)
    ds = ImageFolder(tmp_path)
    assert ds.data.shape == (3, 1, 4, 4) and ds.labels is None
    assert ImageFolder(tmp_path, channels=3).data.shape == (3, 3, 4, 4)


def test_image_folder_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image folder"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        ImageFolder(tmp_path / "empty")
    _png(tmp_path / "mixed" / "a.png", size=(4, 4))
    _png(tmp_path / "mixed" / "b.png", size=(8, 4))
    with pytest.raises(ValueError, match=r"mixed sizes: .*b.png' is 8x4"):
        ImageFolder(tmp_path / "mixed")
    _png(tmp_path / "broken" / "a.png")
    (tmp_path / "broken" / "b.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="cannot decode image .*b.png"):
        ImageFolder(tmp_path / "broken")


def test_registry_errors():
    with pytest.raises(ValueError, match="'mnist' is not one of .*'checkerboard'.*'digits'"):
        get_dataset("mnist")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['size'\] for data set 'moons'"):
        get_dataset("moons", size=3)
    x, y = get_dataset("moons", n=100, seed=3)
    assert x.shape == (100, 2) and y is None and torch.equal(x, get_dataset("moons", n=100, seed=3)[0])
    assert set(DATASETS) == set(TOYS) | {"digits", "digits32", "mixture_64d"}


def test_mixture_data_sets_are_labelled_by_component():
    """The Gaussian toys and mixture_64d carry the component each point was drawn from (the oracle's class
    labels); the points are those of `toy_2d` with the same seed, and the other toys have no labels."""
    from unifusion.data import toy_2d_labelled
    from unifusion.oracles import mixture_64d
    for name in ("eight_gaussians", "grid"):
        x, y = get_dataset(name, n=3000, seed=4)
        assert torch.equal(x, toy_2d(name, 3000, torch.Generator().manual_seed(4)))
        assert y.dtype == torch.int64 and (toy_oracle(name).component(x.double()) == y).double().mean() > 0.99
    assert get_dataset("moons", n=10)[1] is None and toy_2d_labelled("moons", 10)[1] is None
    x, y = get_dataset("mixture_64d", n=2000, seed=1)
    assert x.shape == (2000, 64) and x.dtype == torch.float32 and y.shape == (2000,)
    assert (mixture_64d().component(x.double()) == y).double().mean() > 0.99
    with pytest.raises(ValueError, match="unknown option"):
        get_dataset("mixture_64d", dim=3)
