"""Guidance benchmark on digits: class agreement and Frechet distance against the guidance scale, and the cost of a
classifier-free guidance step.

    unifusion train digits_ve_cond            # the class-conditional EDM model (runs/digits_ve_cond)
    unifusion train digits_classifier         # the noise-conditional classifier (runs/digits_classifier)
    .venv/bin/python bench/guidance.py [--model runs/digits_ve_cond] [--classifier runs/digits_classifier]
    .venv/bin/python bench/guidance.py --quick      # a tiny check of the code path (seconds, nothing kept)

For each classifier-free guidance scale w (Ho & Salimans 2022) and each classifier guidance scale s (Dhariwal &
Nichol 2021; the classifier-free model's unconditional mode plus the classifier's gradient), `--n` samples are
drawn with EDM's Heun sampler (18 levels, 35 NFE), sample `i` asking for digit `i mod 10`, and scored with
`unifusion.metrics.digits_class_report`: the fraction the shipped digits classifier (not the guidance classifier)
assigns to the requested digit, the overall FD next to both floors (the stratified test split, which the balanced
labels match, and i.i.d. class counts), and the FD of each class at the test split's per-class count next to its
exact floor. The cost part times one guided evaluation at batch B against one unguided network call at batch 2B,
interleaved in one run (median of `--repeats`).

Results: `bench/results/guidance.json`, `guidance.md` (tables), `guidance_fd.png` and `guidance_agreement.png`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from unifusion.guidance import classifier, classifier_free, load_classifier
from unifusion.metrics import digits_class_report
from unifusion.plots import save_metric_vs_steps
from unifusion.train import load_model
from unifusion.train.generate import generate
from unifusion.utils import atomic_write

RESULTS = Path(__file__).resolve().parent / "results"
CFG_SCALES = (0.0, 0.5, 1.0, 2.0, 4.0)
CG_SCALES = (1.0, 2.0, 4.0, 8.0)


def _row(kind: str, scale: float, x: torch.Tensor, labels: torch.Tensor, seconds: float, seed: int) -> dict:
    rep = digits_class_report(x, labels, seed=seed)
    per, floors = ({str(c): v for c, v in rep[k].items()} for k in ("fd_per_class", "fd_floor_per_class"))
    return {"guidance": kind, "scale": scale, "agreement": rep["agreement"], "fd": rep["fd"],
            "fd_floor": rep["fd_floor"], "fd_floor_iid": rep["fd_floor_iid"],
            "fd_class_mean": sum(per.values()) / len(per),
            "fd_floor_class_mean": sum(floors.values()) / len(per), "fd_per_class": per, "fd_floor_per_class": floors,
            "agreement_per_class": {str(c): v for c, v in rep["agreement_per_class"].items()},
            "agreement_floor": rep["agreement_floor"],
            "confident": rep["confident_fraction"], "nn_ratio": rep["nn_ratio"], "copy_fraction": rep["copy_fraction"],
            "seconds": seconds}


def _sample(model, n: int, labels, seed: int, steps: int, batch: int):
    x, info = generate(model, n, (64,), sampler="heun", steps=steps, seed=seed, class_labels=labels, batch_size=batch)
    return x, info["seconds"], info["nfe"]


def _step_cost(model, batch: int, repeats: int, seed: int, steps: int = 10) -> dict:
    """Median seconds of one CFG evaluation at batch B, of one step of a CFG Euler sampler run at B (a run of
    `steps` steps, divided by `steps`) and of one unguided call at 2B (and at B), interleaved in one run."""
    from unifusion.grids import edm_grid
    from unifusion.samplers import sample_euler

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 64, generator=g)
    s = torch.full((batch,), 1.0, dtype=torch.float64)
    y = torch.arange(batch) % 10
    guided = classifier_free(model, 2.0)
    x2, s2, y2 = torch.cat([x, x]), torch.cat([s, s]), torch.cat([y, torch.full_like(y, -1)])
    grid = edm_grid(steps, 0.002, 80.0, zero=False)
    calls = {"cfg_B": lambda: guided(x, s, class_labels=y), "plain_2B": lambda: model(x2, s2, class_labels=y2),
             "plain_B": lambda: model(x, s, class_labels=y),
             "euler_step_B": lambda: sample_euler(guided, x, grid, model_kwargs={"class_labels": y})}
    times = {k: [] for k in calls}
    with torch.no_grad():
        for _ in range(3):
            for f in calls.values():
                f()
        for _ in range(repeats):
            for k, f in calls.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    med["euler_step_B"] /= steps - 1
    return {"batch": batch, "repeats": repeats, **{f"seconds_{k}": v for k, v in med.items()},
            "ratio_cfg_vs_plain_2B": med["cfg_B"] / med["plain_2B"],
            "ratio_cfg_vs_plain_B": med["cfg_B"] / med["plain_B"],
            "ratio_euler_step_vs_plain_2B": med["euler_step_B"] / med["plain_2B"]}


AGREEMENT_TARGET = 0.98


def _best(rows: list[dict]) -> dict:
    """The best scale: the lowest FD among the rows that reach `AGREEMENT_TARGET`, else the highest agreement."""
    ok = [r for r in rows if r["agreement"] >= AGREEMENT_TARGET]
    return min(ok, key=lambda r: r["fd"]) if ok else max(rows, key=lambda r: (r["agreement"], -r["fd"]))


def _tables(res: dict) -> list[str]:
    rows, cost = res["rows"], res["cost"]
    best_cfg = _best([r for r in rows if r["guidance"] == "classifier-free"])
    best_cg = _best([r for r in rows if r["guidance"] == "classifier"]) if any(r["guidance"] == "classifier"
                                                                               for r in rows) else None
    f0 = rows[0]
    out = [f"## Digits: guidance scale sweep ({res['n']} samples, Heun {res['nfe']} NFE, sample i asks for digit "
           f"i mod 10)", "",
           f"Model `{res['model']}` (step {res['model_step']}), guidance classifier `{res['classifier']}`; command: "
           f"`{res['command']}`. Agreement: the shipped digits classifier's label equals the requested digit (its "
           f"accuracy on the real test split, the ceiling: {f0['agreement_floor']:.1%}). FD: overall, in 360-sample "
           f"chunks that hold every class equally, next to the stratified floor {f0['fd_floor']:.2f} (what a "
           f"sampler of the test split's class counts scores) and the i.i.d.-class-count floor "
           f"{f0['fd_floor_iid']:.2f}; per class: the mean over the 10 classes of the FD at the test split's "
           f"per-class count (about 36), floor {f0['fd_floor_class_mean']:.2f}. NN ratio: median distance to the "
           f"nearest training digit over that of real test digits (< 0.5 flags memorization); copies: the fraction "
           f"closer to a training digit than any test digit is (fresh digits: 0.3 %). **best**: per kind of guidance, "
           f"the lowest FD among the scales whose agreement reaches {AGREEMENT_TARGET:.0%}.", "",
           "| guidance | scale | agreement | FD | FD / floor | FD / i.i.d. floor | FD per class (mean) "
           "| per-class / floor | NN ratio | copies | seconds |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mark = " **best**" if r is best_cfg or r is best_cg else ""
        out.append(f"| {r['guidance']}{mark} | {r['scale']:g} | {r['agreement']:.1%} | {r['fd']:.2f} | "
                   f"{r['fd'] / r['fd_floor']:.2f} | {r['fd'] / r['fd_floor_iid']:.2f} | {r['fd_class_mean']:.2f} | "
                   f"{r['fd_class_mean'] / r['fd_floor_class_mean']:.2f} | {r['nn_ratio']:.2f} | "
                   f"{r['copy_fraction']:.1%} | {r['seconds']:.0f} |")
    out += ["", "FD per class (floor in the last row):", "",
            "| guidance | scale | " + " | ".join(str(c) for c in range(10)) + " |", "|---|---:|" + "---:|" * 10]
    for r in rows:
        out.append(f"| {r['guidance']} | {r['scale']:g} | "
                   + " | ".join(f"{r['fd_per_class'][str(c)]:.1f}" for c in range(10)) + " |")
    out.append("| floor | – | " + " | ".join(f"{f0['fd_floor_per_class'][str(c)]:.1f}" for c in range(10)) + " |")
    out += ["", f"Cost of a classifier-free guidance evaluation (batch B = {cost['batch']}, median of "
            f"{cost['repeats']} interleaved timings in one run): one guided evaluation "
            f"{cost['seconds_cfg_B'] * 1e3:.1f} ms, one step of a guided Euler sampler run "
            f"{cost['seconds_euler_step_B'] * 1e3:.1f} ms, one unguided call at 2B "
            f"{cost['seconds_plain_2B'] * 1e3:.1f} ms, "
            f"at B {cost['seconds_plain_B'] * 1e3:.1f} ms. **Ratio to the 2B call: evaluation "
            f"{cost['ratio_cfg_vs_plain_2B']:.3f}, sampler step {cost['ratio_euler_step_vs_plain_2B']:.3f}** "
            f"(target <= 1.15); to the B call {cost['ratio_cfg_vs_plain_B']:.2f}.", ""]
    if "classifier_accuracy" in res:
        acc = res["classifier_accuracy"]
        out += ["Guidance classifier, test-split accuracy at noise level sigma: "
                + ", ".join(f"{s}: {a:.1%}" for s, a in acc.items()), ""]
    return out


def _classifier_accuracy(clf, seed: int) -> dict:
    from unifusion.data import load_digits
    x, y = load_digits("test")
    g = torch.Generator().manual_seed(seed)
    out = {}
    with torch.no_grad():
        for s in (0.05, 0.2, 0.5, 1.0, 2.0, 5.0):
            out[str(s)] = float((clf(x + s * torch.randn(x.shape, generator=g), s).argmax(1) == y).double().mean())
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="runs/digits_ve_cond", help="class-conditional checkpoint (digits_ve_cond)")
    p.add_argument("--classifier", default="runs/digits_classifier", help="noise-conditional classifier checkpoint "
                                                                          "('none': skip classifier guidance)")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--steps", type=int, default=18, help="Heun levels (18: 35 NFE)")
    p.add_argument("--cfg-scales", default=",".join(f"{w:g}" for w in CFG_SCALES))
    p.add_argument("--cg-scales", default=",".join(f"{w:g}" for w in CG_SCALES))
    p.add_argument("--interval", action="append", default=[], metavar="W:LO,HI",
                   help="also classifier-free guidance of scale W only for LO <= sigma <= HI (repeatable)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a tiny untrained model, 40 samples: checks the code path")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--render", action="store_true", help="only rewrite the tables and figures from guidance.json")
    args = p.parse_args(argv)
    if args.render:
        return _write(json.loads((args.out / "guidance.json").read_text()), args.out)
    torch.set_num_threads(args.threads)
    if args.quick:
        (model, clf), args.n, args.steps, args.repeats, args.batch = _quick_models(), 40, 3, 2, 20
    else:
        model = load_model(args.model)
        clf = None if args.classifier == "none" else load_classifier(args.classifier)
    labels = torch.arange(args.n) % 10
    rows, nfe = [], None
    for w in (float(v) for v in args.cfg_scales.split(",")):
        x, secs, nfe = _sample(classifier_free(model, w), args.n, labels, args.seed, args.steps, args.batch)
        rows.append(_row("classifier-free", w, x, labels, secs, args.seed))
        print(f"CFG w={w:g}: agreement {rows[-1]['agreement']:.3f}, FD {rows[-1]['fd']:.2f}", flush=True)
    for item in args.interval:
        w, lo, hi = (float(v) for v in item.replace(":", ",").split(","))
        x, secs, _ = _sample(classifier_free(model, w, interval=(lo, hi)), args.n, labels, args.seed, args.steps,
                             args.batch)
        rows.append(_row(f"classifier-free, sigma in [{lo:g}, {hi:g}]", w, x, labels, secs, args.seed))
        print(f"CFG w={w:g} on [{lo:g}, {hi:g}]: agreement {rows[-1]['agreement']:.3f}, FD {rows[-1]['fd']:.2f}",
              flush=True)
    if clf is not None:
        for sc in (float(v) for v in args.cg_scales.split(",")):
            x, secs, _ = _sample(classifier(model, clf, sc), args.n, labels, args.seed, args.steps, args.batch)
            rows.append(_row("classifier", sc, x, labels, secs, args.seed))
            print(f"classifier guidance s={sc:g}: agreement {rows[-1]['agreement']:.3f}, FD {rows[-1]['fd']:.2f}",
                  flush=True)
    res = {"n": args.n, "nfe": nfe, "model": str(args.model), "classifier": str(args.classifier),
           "model_step": getattr(model, "checkpoint_step", 0),
           "command": "python bench/guidance.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "rows": rows, "cost": _step_cost(model, args.batch, args.repeats, args.seed),
           "threads": args.threads, "torch": torch.__version__}
    if clf is not None:
        res["classifier_accuracy"] = _classifier_accuracy(clf, args.seed)
    if args.quick:
        print("\n".join(_tables(res)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "guidance.json", json.dumps(res, indent=2))
    return _write(res, args.out)


def _write(res: dict, out: Path) -> int:
    """`guidance.md` and the two figures from the results `res`."""
    rows = res["rows"]
    text = "\n".join(["# Guidance: benchmark results", "", "Written by `bench/guidance.py`; every number is in "
                      "`guidance.json`.", "", *_tables(res)])
    print(text)
    atomic_write(out / "guidance.md", text)
    curves = lambda key: {kind: [(r["scale"], r[key]) for r in rows if r["guidance"] == kind]
                          for kind in ("classifier-free", "classifier") if any(r["guidance"] == kind for r in rows)}
    floors = {"floor (stratified)": rows[0]["fd_floor"], "floor (i.i.d. counts)": rows[0]["fd_floor_iid"]}
    save_metric_vs_steps(curves("fd"), out / "guidance_fd.png", xlabel="guidance scale",
                         ylabel="digits FD (360-sample chunks)", floor=floors,
                         title=f"FD vs guidance scale ({res['n']} samples, Heun {res['nfe']} NFE)")
    save_metric_vs_steps(curves("agreement"), out / "guidance_agreement.png", xlabel="guidance scale",
                         ylabel="class agreement", floor={"real test digits": rows[0]["agreement_floor"]},
                         title="requested digit = classified digit")
    return 0


def _quick_models():
    """An untrained conditional model and classifier of the digits' shapes (random weights)."""
    from unifusion.guidance import NoiseClassifier
    from unifusion.nets import MLP
    from unifusion.parametrization import Denoiser
    torch.manual_seed(0)
    model = Denoiser(MLP(64, hidden=16, depth=1, emb_dim=8, num_classes=10), None, "edm", 0.75).eval()
    net = MLP(64, hidden=16, depth=1, emb_dim=8, out_dim=10)
    torch.nn.init.normal_(net.out.weight, std=0.1)
    return model, NoiseClassifier(Denoiser(net, None, "edm", 0.75), 10).eval().requires_grad_(False)


if __name__ == "__main__":
    sys.exit(main())
