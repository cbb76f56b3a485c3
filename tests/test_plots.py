"""Figures: the grid layout exactly, every figure written as a real, non-blank PNG through an atomic rename, and
one-line errors for bad input."""
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from unifusion import EDM, VE, VP, DDPM, eight_gaussians
from unifusion.plots import (make_grid, save_error_vs_nfe, save_image_grid, save_metric_vs_steps, save_scatter,
                             save_schedules, save_trajectories)


def read_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) > 100
    assert img[..., :3].std() > 0.05, "blank figure"
    return img


def only_png(folder: Path):
    assert [p.name for p in folder.rglob("*") if p.is_file() and p.suffix != ".png"] == [], "temp file left"


def test_make_grid_layout_is_exact():
    imgs = torch.stack([torch.full((1, 2, 3), v) for v in (-1.0, 0.0, 1.0)])  # black, grey, white, 2x3 pixels
    g = make_grid(imgs, nrow=2, pad=1)
    assert g.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
    assert (g[1:3, 1:4] == 0).all() and (g[1:3, 5:8] == 0.5).all() and (g[4:6, 1:4] == 1).all()
    assert (g[0] == 0.5).all() and (g[4:6, 5:8] == 0.5).all()  # padding and the empty cell stay grey
    digits = make_grid(torch.linspace(-2, 2, 64).repeat(4, 1), pad=0)  # [N, 64] -> 8x8, clipped to [-1, 1]
    assert digits.shape == (16, 16, 1) and digits.min() == 0 and digits.max() == 1
    assert make_grid(np.zeros((5, 3, 4, 4))).shape == (2 * 5 + 1, 3 * 5 + 1, 3)


def test_every_figure_is_a_png_written_atomically(tmp_path):
    g = torch.Generator().manual_seed(0)
    o = eight_gaussians()
    ref = o.sample(500, generator=g)
    paths = torch.cumsum(torch.randn(20, 16, 2, generator=g, dtype=torch.float64) * 0.1, 0)
    nfe = np.array([4, 8, 16, 32])
    out = [
        save_image_grid(torch.rand(10, 1, 8, 8, generator=g) * 2 - 1, tmp_path / "grid.png", nrow=5, title="t"),
        save_image_grid(torch.rand(4, 3, 32, 32, generator=g) * 2 - 1, tmp_path / "rgb.png"),
        save_scatter(o.sample(300, generator=g), tmp_path / "scatter.png", reference=ref, title="eight"),
        save_trajectories(paths, paths * 0.5, tmp_path / "traj.png", reference=ref),
        save_schedules({"VP": VP(), "DDPM": DDPM(), "VE": VE(), "EDM": EDM()}, tmp_path / "sched.png"),
        save_error_vs_nfe({"euler": list(zip(nfe, 1 / nfe, strict=True)), "heun": {"nfe": nfe, "error": 1 / nfe ** 2}},
                          tmp_path / "nfe.png", slopes=(1, 2)),
        save_metric_vs_steps({"vp": [(1, 9.0), (2, 4.0)], "ve": {"step": [1, 2], "value": [8.0, 3.0]}},
                             tmp_path / "sub" / "steps.png", floor=2.5, logy=True),
    ]
    for p in out:
        assert p.is_file()
        read_png(p)
    only_png(tmp_path)
    assert save_schedules([VP(), EDM()], tmp_path / "s.pdf").read_bytes()[:4] == b"%PDF"


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    p = save_scatter(np.zeros((3, 2)) + [[0, 0], [1, 1], [2, 0]], tmp_path / "a.png")
    before = p.read_bytes()

    def boom(self, *a, **k):
        raise OSError("No space left on device")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(OSError, match="No space"):
        save_scatter(np.ones((3, 2)), p)
    assert p.read_bytes() == before
    only_png(tmp_path)


@pytest.mark.parametrize("call,match", [
    (lambda d: save_image_grid(torch.zeros(2, 63), d / "x.png"), "square"),
    (lambda d: save_image_grid(torch.zeros(2, 2, 8, 8), d / "x.png"), r"C in \(1, 3\)"),
    (lambda d: save_image_grid(torch.full((2, 64), float("nan")), d / "x.png"), "NaN"),
    (lambda d: save_image_grid(torch.zeros(2, 64), d / "x.png", nrow=0), "nrow"),
    (lambda d: save_image_grid(torch.zeros(2, 64), d / "x.jpg"), "must end in"),
    (lambda d: save_scatter(torch.zeros(5, 3), d / "x.png"), r"\[N, 2\]"),
    (lambda d: save_trajectories(torch.zeros(1, 4, 2), torch.zeros(3, 4, 2), d / "x.png"), "T >= 2"),
    (lambda d: save_schedules([], d / "x.png"), "NoiseProcess"),
    (lambda d: save_error_vs_nfe({"a": [(1, 0.0)]}, d / "x.png"), "> 0 on log axes"),
    (lambda d: save_error_vs_nfe({"a": {"nfe": [1, 2]}}, d / "x.png"), "keys"),
    (lambda d: save_metric_vs_steps({}, d / "x.png"), "non-empty"),
    (lambda d: save_metric_vs_steps({"a": [(1, float("inf"))]}, d / "x.png"), "Inf"),
])
def test_bad_input_is_a_one_line_value_error(tmp_path, call, match):
    with pytest.raises(ValueError, match=match) as e:
        call(tmp_path)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_figures_touch_no_global_state(tmp_path):
    """Figures come from `Figure` + Agg: drawing every kind in a fresh interpreter imports no pyplot and leaves the
    user's backend as it was (a non-default one here)."""
    code = (
        "import sys, matplotlib, torch\n"
        "from unifusion import VP, plots\n"
        "d = sys.argv[1]\n"
        "plots.save_image_grid(torch.rand(4, 64), d + '/g.png')\n"
        "plots.save_scatter(torch.randn(50, 2), d + '/s.png', reference=torch.randn(50, 2))\n"
        "plots.save_trajectories(torch.randn(5, 8, 2), torch.randn(5, 8, 2), d + '/t.png')\n"
        "plots.save_schedules([VP()], d + '/p.png')\n"
        "plots.save_error_vs_nfe({'a': [(1, 1.0), (2, 0.5)]}, d + '/e.png')\n"
        "plots.save_metric_vs_steps({'a': [(1, 1.0), (2, 0.5)]}, d + '/m.png', floor=0.4)\n"
        "print('pyplot' if 'matplotlib.pyplot' in sys.modules else 'no pyplot', matplotlib.get_backend())\n")
    env = {**os.environ, "MPLBACKEND": "svg"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["no", "pyplot", "svg"]
    assert len(list(tmp_path.glob("*.png"))) == 6


def test_figures_drawn_in_threads_equal_those_drawn_in_turn(tmp_path):
    """No shared drawing state: eight figures drawn from four threads at once are byte-identical to the same figures
    drawn one after another."""
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(256, 2, generator=g, dtype=torch.float64) * (1 + i) for i in range(8)]

    def draw(i, folder):
        if i % 2:
            return save_scatter(data[i], folder / f"{i}.png", title=f"set {i}").read_bytes()
        return save_image_grid(data[i].reshape(-1, 64)[:4], folder / f"{i}.png").read_bytes()

    (tmp_path / "turn").mkdir()
    (tmp_path / "threads").mkdir()
    in_turn = [draw(i, tmp_path / "turn") for i in range(8)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        at_once = list(pool.map(draw, range(8), [tmp_path / "threads"] * 8))
    assert at_once == in_turn and len(set(in_turn)) == 8
