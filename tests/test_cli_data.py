"""`unifusion train` on data from disk: an image folder trains with workers and x-flip, unreadable images are skipped
with a count when asked, and every bad data input is one line with exit code 2 and no run folder written."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from unifusion.cli import main
from unifusion.train import read_checkpoint

TINY_UNET = ["net.kind=unet", "net.model_channels=8", "net.channel_mult=[1]", "net.num_blocks=1",
             "net.attn_resolutions=[]", "process.name=edm", "model.target=edm", "loss.name=edm",
             "train.steps=4", "train.batch_size=8", "train.log_every=2", "train.progress=false", "train.device=cpu",
             "train.ema_decays=[0.9]", "train.threads=1"]


def _sets(*items):
    return [a for s in (*TINY_UNET, *items) for a in ("--set", s)]


def _folder(root, n=12, size=8, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


def _error(capsys, argv):
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("unifusion train: error: "), err
    return lines[0]


def test_an_image_folder_trains_with_workers_and_flips(tmp_path, capsys):
    data = _folder(tmp_path / "png")
    assert main(["train", "toy_ve", "--out", str(tmp_path / "run"),
                 *_sets(f"data.name={data}", "data.num_workers=2", "data.x_flip=true")]) == 0
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4]
    _, meta = read_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert meta["data"] == {"step": 4, "epoch": 2, "offset": 8, "examples_seen": 32, "n": 12, "x_flip": True}
    assert meta["data_shape"] == [3, 8, 8]


def test_unreadable_images_are_skipped_with_a_count(tmp_path, capsys):
    data = _folder(tmp_path / "png")
    (data / "003.png").write_bytes(b"not an image")                       # found when the folder is opened
    good = (data / "005.png").read_bytes()
    (data / "005.png").write_bytes(good[:60])                             # found when it is decoded
    assert main(["train", "toy_ve", "--out", str(tmp_path / "run"),
                 *_sets(f"data.name={data}", "data.on_error=skip", "train.steps=6")]) == 0
    log = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "unreadable_skipped" and log[0]["count"] == 1 and log[0]["first"].endswith("003.png")
    assert log[-1]["skipped_examples"] >= 1                                 # 005.png was replaced when read
    line = _error(capsys, ["train", "toy_ve", "--out", str(tmp_path / "r2"), *_sets(f"data.name={data}")])
    assert "cannot decode image" in line and "003.png" in line and "data.on_error=skip" in line


@pytest.mark.parametrize("case", ["missing", "empty", "mixed", "workers", "corrupt-tar", "flip-vectors", "option"])
def test_bad_data_is_one_line_exit_2(case, tmp_path, capsys):
    name, extra = str(tmp_path / "png"), []
    if case == "missing":
        name, want = str(tmp_path / "nope"), "no such data file or folder"
    elif case == "empty":
        (tmp_path / "png").mkdir()
        want = "holds no"
    elif case == "mixed":
        _folder(tmp_path / "png", n=3)
        Image.new("RGB", (6, 6)).save(tmp_path / "png" / "odd.png")
        want = "mixed sizes: .*odd.png' is 6x6.*set data.resolution"
    elif case == "workers":
        _folder(tmp_path / "png", n=3)
        extra, want = ["data.num_workers=-1"], "data.num_workers must be an integer >= 0, got -1"
    elif case == "corrupt-tar":
        (tmp_path / "png").mkdir()
        (tmp_path / "png" / "shard-000000.tar").write_bytes(b"\x1f\x8b" + b"\0" * 1000)
        want = "not an uncompressed tar shard"
    elif case == "flip-vectors":
        name, extra, want = "eight_gaussians", ["net.kind=mlp", "data.x_flip=true"], "data.x_flip needs images"
    else:
        _folder(tmp_path / "png", n=3)
        extra, want = ["data.resolutoin=4"], "unknown config key 'data.resolutoin'; valid keys in 'data' are"
    line = _error(capsys, ["train", "toy_ve", "--out", str(tmp_path / "run"), *_sets(f"data.name={name}", *extra)])
    assert re.search(want, line), line
    assert not (tmp_path / "run").exists()
