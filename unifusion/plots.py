"""Figures for the demo, the benchmarks and `unifusion sample`: each function writes one PNG and returns its path.

This module owns every matplotlib call of the project:
* `make_grid` / `save_image_grid`: a grid of images (digits, CIFAR-sized RGB);
* `save_scatter`: 2-D samples over an exact reference draw;
* `save_trajectories`: 2-D paths of the reverse SDE next to those of the probability-flow ODE from the same
  noise (Song et al. 2021, "Score-Based Generative Modeling through SDEs", Fig. 1 and 2);
* `save_schedules`: `alpha_t` and `sigma_t` of VP against VE processes, and `sigma~ = sigma/alpha` on a log
  axis (Karras et al. 2022, "EDM", Table 1 and Fig. 1: every process is a VE process in these coordinates);
* `save_error_vs_nfe`: error against the number of function evaluations, log-log, with optional order guides
  (the convergence plots of Karras et al. 2022, Fig. 2);
* `save_metric_vs_steps`: a metric along training with its noise floor.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas: no pyplot, no global backend switch, safe
in threads and on machines without a display. Files are written atomically (temp file in the same folder, then
rename), so a crash never leaves a half-written PNG behind.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

from .utils import atomic_write

__all__ = ["make_grid", "save_image_grid", "save_scatter", "save_trajectories", "save_schedules", "save_error_vs_nfe",
           "save_metric_vs_steps", "FORMATS"]

FORMATS = ("png", "pdf", "svg")
DPI = 120


# ----------------------------------------------------------------------------------------------------------
# helpers

def _figure(ncols: int = 1, width: float = 4.0, height: float = 4.0):
    fig = Figure(figsize=(width * ncols, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _check_path(path) -> Path:
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise ValueError(f"path {str(path)!r} must end in one of {['.' + f for f in FORMATS]}")
    return path


def _save(fig: Figure, path: Path) -> Path:
    """Write `fig` to `path` through a temp file in the same folder and an atomic rename (`utils.atomic_write`)."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lower().lstrip("."), dpi=DPI))


def _array(x, name: str) -> np.ndarray:
    """`x` (tensor, array or nested sequence) as a finite float64 numpy array, else a one-line `ValueError`."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numbers (a tensor or an array), got {type(x).__name__}") from e
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains {'NaN' if np.isnan(a).any() else 'Inf'}; finite values are required")
    return a


def _points(x, name: str) -> np.ndarray:
    a = _array(x, name)
    if a.ndim != 2 or a.shape[1] != 2 or a.shape[0] < 1:
        raise ValueError(f"{name} must have shape [N, 2] with N >= 1, got {a.shape}")
    return a


def _limits(*sets: np.ndarray, margin: float = 0.1) -> tuple[tuple[float, float], tuple[float, float]]:
    """Square axis limits that hold the central 99% of the given point sets, plus a margin."""
    pts = np.concatenate(sets)
    lo, hi = np.quantile(pts, 0.005, axis=0), np.quantile(pts, 0.995, axis=0)
    c, r = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6) * (1 + margin)
    return (c[0] - r, c[0] + r), (c[1] - r, c[1] + r)


def _plain_log_ticks(ax, x_values=None) -> None:
    """Log axes with plain numbers: ticks at the data's x values (NFE, steps), no minor labels. Of a run of x values
    each within 15% of the previous (e.g. NFE 19 beside 20), only the most frequent gets a tick, so labels never
    overlap."""
    if x_values is not None:
        values, counts = np.unique(x_values, return_counts=True)
        runs = np.split(np.arange(len(values)), np.nonzero(values[1:] > 1.15 * values[:-1])[0] + 1)
        ticks = [values[r[np.argmax(counts[r])]] for r in runs]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_minor_formatter(NullFormatter())


def _series(label, data, xname: str, yname: str) -> tuple[np.ndarray, np.ndarray]:
    """One curve: `[(x, y), ...]` or `{xname: [...], yname: [...]}` as two sorted arrays."""
    if isinstance(data, Mapping):
        if xname not in data or yname not in data:
            raise ValueError(f"curve {label!r} must have keys {xname!r} and {yname!r}, got {sorted(data)}")
        x, y = _array(data[xname], f"{label}.{xname}"), _array(data[yname], f"{label}.{yname}")
    else:
        a = _array(data, f"curve {label!r}")
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"curve {label!r} must be a list of ({xname}, {yname}) pairs, got shape {a.shape}")
        x, y = a[:, 0], a[:, 1]
    if x.ndim != 1 or x.shape != y.shape or x.size == 0:
        raise ValueError(f"curve {label!r} needs equal-length, non-empty {xname} and {yname}, got {x.shape} and "
                         f"{y.shape}")
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def _curves(results, xname: str, yname: str) -> dict:
    if not isinstance(results, Mapping) or not results:
        raise ValueError(f"results must be a non-empty mapping label -> [({xname}, {yname}), ...], got "
                         f"{type(results).__name__}")
    return {str(k): _series(k, v, xname, yname) for k, v in results.items()}


# ----------------------------------------------------------------------------------------------------------
# images and points

def make_grid(images, nrow: int | None = None, value_range: tuple[float, float] = (-1.0, 1.0),
              pad: int = 1) -> np.ndarray:
    """Tile images into one `[H', W', C]` array with values in [0, 1] (torchvision's `make_grid`, channels last).

    images:      `[N, C, H, W]` (C = 1 grey or 3 RGB), `[N, H, W]`, or `[N, D]` with `D` a square (8x8 digits).
    nrow:        images per row (None: `ceil(sqrt(N))`, a square-ish grid).
    value_range: the values mapped to 0 (black) and 1 (white); values outside are clipped.
    pad:         pixels of grey (0.5) around and between images.
    """
    a = _array(images, "images")
    if a.ndim == 2:
        side = math.isqrt(a.shape[1])
        if side * side != a.shape[1]:
            raise ValueError(f"images of shape [N, D] need D a square number (e.g. 64 = 8x8), got D={a.shape[1]}")
        a = a.reshape(-1, 1, side, side)
    elif a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4 or a.shape[1] not in (1, 3) or a.shape[0] < 1:
        raise ValueError(f"images must be [N, C, H, W] with C in (1, 3), [N, H, W] or [N, D], got shape {a.shape}")
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range!r}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}")
    n, c, h, w = a.shape
    ncol = math.ceil(math.sqrt(n)) if nrow is None else nrow
    if isinstance(ncol, bool) or not isinstance(ncol, int) or ncol < 1:
        raise ValueError(f"nrow must be an integer >= 1 or None, got {nrow!r}")
    ncol = min(ncol, n)
    rows = math.ceil(n / ncol)
    grid = np.full((rows * (h + pad) + pad, ncol * (w + pad) + pad, c), 0.5)
    a = np.clip((a - lo) / (hi - lo), 0.0, 1.0).transpose(0, 2, 3, 1)
    for i in range(n):
        r, q = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[top:top + h, left:left + w] = a[i]
    return grid


def save_image_grid(images, path, nrow: int | None = None, value_range: tuple[float, float] = (-1.0, 1.0),
                    title: str | None = None, pad: int = 1) -> Path:
    """Save images as one grid (`make_grid`, same arguments), shown pixel for pixel; returns the path."""
    path = _check_path(path)
    grid = make_grid(images, nrow, value_range, pad)
    inches = min(12.0, max(2.0, 0.06 * grid.shape[1]))  # about 7 screen pixels per image pixel at small sizes
    fig, (ax,) = _figure(width=inches, height=inches * grid.shape[0] / grid.shape[1] + (0.3 if title else 0))
    ax.imshow(grid[..., 0] if grid.shape[2] == 1 else grid, cmap="gray" if grid.shape[2] == 1 else None,
              vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def save_scatter(points, path, reference=None, title: str | None = None, lim: float | None = None,
                 size: float = 2.0, labels: tuple[str, str] = ("samples", "reference")) -> Path:
    """Scatter 2-D `points` `[N, 2]` over an optional `reference` draw `[M, 2]` (grey); returns the path.

    lim: half-width of the square view around 0 (None: the central 99% of the points shown, plus 10%).
    """
    path = _check_path(path)
    p = _points(points, "points")
    ref = None if reference is None else _points(reference, "reference")
    fig, (ax,) = _figure(width=4.5, height=4.5)
    if ref is not None:
        ax.scatter(ref[:, 0], ref[:, 1], s=size, c="0.75", lw=0, label=labels[1], rasterized=True)
    ax.scatter(p[:, 0], p[:, 1], s=size, c="C0", lw=0, label=labels[0], rasterized=True)
    xl, yl = ((-lim, lim), (-lim, lim)) if lim else _limits(p, *(() if ref is None else (ref,)))
    ax.set(xlim=xl, ylim=yl, aspect="equal", title=title or "")
    if ref is not None:
        ax.legend(loc="upper right", fontsize=8, markerscale=4)
    return _save(fig, path)


def save_trajectories(paths_sde, paths_ode, path, reference=None, n_show: int = 32,
                      titles: tuple[str, str] = ("reverse SDE", "probability-flow ODE"),
                      title: str | None = None) -> Path:
    """Two panels of 2-D sampling paths, the reverse SDE next to the PF-ODE; returns the path.

    paths_sde, paths_ode: `[T, N, 2]` (T states along the sampler, first = noise, last = sample); the ODE
                          paths are deterministic curves, the SDE paths jitter but end on the same distribution.
    reference:            optional exact draw `[M, 2]`, drawn in grey under both panels.
    n_show:               particles drawn per panel (the first `n_show`).
    The view holds the end points and the reference; early, high-noise states leave it.
    """
    path = _check_path(path)
    paths = []
    for name, x in (("paths_sde", paths_sde), ("paths_ode", paths_ode)):
        a = _array(x, name)
        if a.ndim != 3 or a.shape[2] != 2 or a.shape[0] < 2 or a.shape[1] < 1:
            raise ValueError(f"{name} must have shape [T, N, 2] with T >= 2, N >= 1, got {a.shape}")
        paths.append(a[:, :n_show])
    ref = None if reference is None else _points(reference, "reference")
    xl, yl = _limits(paths[0][-1], paths[1][-1], *(() if ref is None else (ref,)), margin=0.25)
    fig, axes = _figure(ncols=2, width=4.2, height=4.4)
    for ax, a, name in zip(axes, paths, titles, strict=True):
        if ref is not None:
            ax.scatter(ref[:, 0], ref[:, 1], s=1.5, c="0.8", lw=0, rasterized=True)
        ax.plot(a[:, :, 0], a[:, :, 1], lw=0.6, alpha=0.55, c="C0")
        ax.scatter(a[-1, :, 0], a[-1, :, 1], s=8, c="C3", lw=0, zorder=3, label="end (sample)")
        ax.set(xlim=xl, ylim=yl, aspect="equal", title=name)
    axes[0].legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------------
# schedules and curves

def save_schedules(processes, path, n: int = 400, title: str | None = None) -> Path:
    """`alpha_t`, `sigma_t` and `sigma~_t = sigma_t / alpha_t` of several processes against normalised time
    `u = (t - t_min)/(t_max - t_min)`; sigma and sigma~ on log axes; returns the path.

    processes: a mapping `label -> NoiseProcess`, or a sequence of processes (labelled by their repr).
    """
    path = _check_path(path)
    if isinstance(processes, Mapping):
        items = list(processes.items())
    elif isinstance(processes, Sequence) and not isinstance(processes, str):
        items = [(repr(p), p) for p in processes]
    else:
        items = [(repr(processes), processes)]
    if not items or any(not all(hasattr(p, a) for a in ("alpha", "sigma", "sigma_ve", "t_min", "t_max"))
                        for _, p in items):
        raise ValueError("processes must be a non-empty mapping or sequence of NoiseProcess objects")
    u = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    fig, axes = _figure(ncols=3, width=3.9, height=3.5)
    for i, (label, p) in enumerate(items):
        t = p.t_min + u * (p.t_max - p.t_min)
        style = dict(label=label, c=f"C{i}", ls="-" if getattr(p, "variance_preserving", False) else "--")
        axes[0].plot(u, p.alpha(t).numpy(), **style)
        axes[1].plot(u, p.sigma(t).numpy(), **style)
        axes[2].plot(u, p.sigma_ve(t).numpy(), **style)
    axes[0].set(title=r"$\alpha_t$", xlabel="normalised time $u$", ylim=(-0.03, 1.05))
    axes[1].set(title=r"$\sigma_t$", xlabel="normalised time $u$", yscale="log")
    axes[2].set(title=r"$\tilde\sigma_t = \sigma_t / \alpha_t$ (VE coordinates)", xlabel="normalised time $u$",
                yscale="log")
    axes[0].legend(fontsize=7, loc="lower left")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def save_error_vs_nfe(results, path, title: str | None = None, ylabel: str = "error",
                      slopes: Sequence[float] = (), styles: Mapping[str, Mapping] | None = None) -> Path:
    """Error against NFE on log-log axes, one line per method; returns the path.

    results: `label -> [(nfe, error), ...]` or `label -> {"nfe": [...], "error": [...]}`; errors must be > 0.
    slopes:  orders `p` to draw as dotted guides `C * NFE^-p`, starting at twice the first curve's first point
             (a method of order p runs parallel to its guide).
    styles:  `label -> matplotlib line properties` that override a curve's defaults, e.g. `{"ls": "--"}` for a
             group of methods or `{"lw": 2.5}` to pick one out; every label must be one of `results`.
    """
    path = _check_path(path)
    curves = _curves(results, "nfe", "error")
    styles = dict(styles or {})
    if set(styles) - set(curves):
        raise ValueError(f"styles names curves that results does not have: {sorted(set(styles) - set(curves))}")
    for label, (x, y) in curves.items():
        if (x <= 0).any() or (y <= 0).any():
            raise ValueError(f"curve {label!r}: nfe and error must be > 0 on log axes, got min nfe {x.min():g}, "
                             f"min error {y.min():g}")
    fig, (ax,) = _figure(width=5.2 if len(curves) <= 8 else 7.0, height=4.0 if len(curves) <= 8 else 5.0)
    for i, (label, (x, y)) in enumerate(curves.items()):
        ax.plot(x, y, **{"marker": "o", "ms": 3.5, "lw": 1.2, "c": f"C{i}", "label": label, **styles.get(label, {})})
    x0, y0 = next(iter(curves.values()))
    xs = np.array([min(x.min() for x, _ in curves.values()), max(x.max() for x, _ in curves.values())])
    for p in slopes:
        guide = 2 * y0[0] * (xs / x0[0]) ** (-float(p))
        ax.plot(xs, guide, ls=":", c="0.4", lw=1)
        ax.annotate(f"order {p:g}", (xs[-1], guide[-1]), fontsize=7, color="0.3", ha="right", va="bottom")
    ax.set(xscale="log", yscale="log", xlabel="NFE (network evaluations)", ylabel=ylabel, title=title or "")
    _plain_log_ticks(ax, np.concatenate([x for x, _ in curves.values()]))
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8 if len(curves) <= 8 else 6, ncol=1 if len(curves) <= 8 else 2)
    return _save(fig, path)


def save_metric_vs_steps(curves, path, floor: float | Mapping[str, float] | None = None, ylabel: str = "metric",
                         xlabel: str = "training step", logy: bool = False, title: str | None = None) -> Path:
    """A metric along training (or along any step count), one line per run, with its noise floor; returns the path.

    curves: `label -> [(step, value), ...]` or `label -> {"step": [...], "value": [...]}`.
    floor:  the metric's noise floor (a number, or `label -> number` for several), drawn dashed; None: no line.
    """
    path = _check_path(path)
    data = _curves(curves, "step", "value")
    if logy and any((y <= 0).any() for _, y in data.values()):
        raise ValueError("logy=True needs every value > 0")
    fig, (ax,) = _figure(width=5.2, height=3.8)
    for i, (label, (x, y)) in enumerate(data.items()):
        ax.plot(x, y, marker="o", ms=3, lw=1.2, c=f"C{i}", label=label)
    floors = {} if floor is None else (dict(floor) if isinstance(floor, Mapping) else {"noise floor": floor})
    for j, (label, v) in enumerate(floors.items()):
        v = float(_array(v, f"floor {label!r}"))
        ax.axhline(v, ls="--", lw=1, c=f"C{len(data) + j}" if len(floors) > 1 else "0.3", label=str(label))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title or "", yscale="log" if logy else "linear")
    if logy:
        ax.yaxis.set_major_formatter(ScalarFormatter())
        _plain_log_ticks(ax)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)
