"""save_pretrained / from_pretrained: a self-contained folder (config.json + model.safetensors), written atomically,
loadable without the run, and every bad folder a one-line error."""
import json
import shutil

import pytest
import torch

from unifusion.cli import main
from unifusion.parametrization import Denoiser
from unifusion.processes import VP
from unifusion.train import CheckpointError, from_pretrained, load_model, save_pretrained


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pre") / "toy"
    assert main(["train", "toy_vp", "--out", str(out), "--set", "train.steps=3", "--set", "train.progress=false",
                 "--set", "net.hidden=16", "--set", "net.depth=1", "--set", "train.threads=1"]) == 0
    return out


def test_round_trip_holds_only_the_weights_and_needs_no_run(run, tmp_path):
    model = load_model(run)                          # the EMA weights
    folder = save_pretrained(model, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    from safetensors.torch import load_file
    assert set(load_file(str(folder / "model.safetensors"))) == set(model.net.state_dict())  # no optimiser / EMA copies
    meta = json.loads((folder / "config.json").read_text())
    assert meta["format"] == "unifusion-pretrained/1" and meta["data_shape"] == [2] and "train" not in meta
    moved = tmp_path / "elsewhere"
    shutil.copytree(folder, moved)
    shutil.rmtree(folder)
    again = from_pretrained(moved)
    x, s = torch.randn(5, 2), torch.full((5,), 3.0)
    torch.testing.assert_close(again(x, s), model(x, s), rtol=0, atol=0)
    assert again.data_shape == (2,) and isinstance(again.process, VP) and not again.training
    assert model.data_bound is not None and again.data_bound == model.data_bound     # generate clips to it
    assert again.config["sample"] == model.config["sample"]
    with pytest.raises(ValueError, match="latent diffusion model"):
        save_pretrained(model, tmp_path / "latent", config={**model.config, "latent": {"autoencoder": "runs/ae"}})
    assert not (tmp_path / "latent").exists()
    assert main(["sample", str(moved), "--n", "4", "--steps", "3", "--sampler", "euler",
                 "--out", str(tmp_path / "s.npz")]) == 0          # load_model reads pretrained folders too


def test_write_is_atomic_and_never_overwrites(run, tmp_path, monkeypatch):
    model = load_model(run)
    import safetensors.torch

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="No space"):
        save_pretrained(model, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []              # neither the folder nor a temporary one is left
    monkeypatch.undo()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="not an empty folder"):
        save_pretrained(model, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_bad_folders_are_one_line_errors(run, tmp_path):
    with pytest.raises(CheckpointError, match="not a unifusion pretrained folder"):
        from_pretrained(tmp_path / "missing")
    good = save_pretrained(load_model(run), tmp_path / "good")
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="truncated or not a safetensors"):
        from_pretrained(bad)
    shutil.copy(good / "model.safetensors", bad / "model.safetensors")
    meta = json.loads((good / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(dict(meta, format="other/9")))
    with pytest.raises(CheckpointError, match="format"):
        from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps(dict(meta, net=dict(meta["net"], hidden=32))))
    with pytest.raises(CheckpointError, match="does not match its config"):
        from_pretrained(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        from_pretrained(bad)
    with pytest.raises(ValueError, match="config and data shape"):
        save_pretrained(Denoiser(torch.nn.Identity(), VP()), tmp_path / "x")
