"""`unifusion seminar` (and `make seminar`): every claim of the seminar measured, as `report.md` with PNG figures
and the same as one self-contained `report.html` (figures inlined), with PASS or FAIL per claim.

The report only calls the claim functions of `oracle_claims` and `digits_claims` and lays out what they return.
Scheduling: the digits models train in `budget.workers` processes of one CPU thread while this process checks
the oracle claims; consistency distillation then runs in a worker process while this process evaluates the
other digits claims. Exit code 0 if every claim passes, 1 if any fails.
"""
from __future__ import annotations

import base64
import html
import os
import re
import resource
import sys
import threading
import time
from pathlib import Path

import torch

from ..utils import atomic_write
from .common import Budget, ClaimResult

__all__ = ["add_arguments", "run", "build_report", "to_markdown", "to_html"]


def add_arguments(p) -> None:
    """The options of `unifusion seminar` on an argparse (sub)parser."""
    p.add_argument("--out", default="runs/seminar", help="report folder (default: runs/seminar)")
    p.add_argument("--quick", action="store_true", help="tiny models and sample counts: a smoke run of a minute "
                                                        "(its digits claims are not expected to pass)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, help="training processes at once (default 2; quick: 1)")


class _LoadSampler:
    """The machine's 1-minute load average, sampled every `every` seconds while the report runs (a shared machine
    makes the wall time pessimistic: the report says by how much it was shared)."""

    def __init__(self, every: float = 15.0):
        self.every, self.samples, self._stop = every, [os.getloadavg()[0]], threading.Event()

    def _run(self):
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> str:
        s = sorted(self.samples)
        return f"median {s[len(s) // 2]:.1f} (range {s[0]:.1f}-{s[-1]:.1f})"


def _cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def build_report(out: Path, budget: Budget, seed: int = 0) -> list[ClaimResult]:
    """Measure every claim into `out`; returns the results in the seminar's order (1, 2a, 2b, 3, ..., 7)."""
    import concurrent.futures as cf
    import multiprocessing as mp

    from ..train import load_model
    from . import digits_claims as dc
    from . import oracle_claims as oc

    out.mkdir(parents=True, exist_ok=True)
    small = dict(n=200, steps=(4, 8, 16)) if budget.quick else {}      # the smoke run's oracle claims
    with cf.ThreadPoolExecutor(1) as threads:
        training = threads.submit(dc.train_models, out, budget)
        r1, r2a = oc.same_endpoints(out, seed=seed, **small), oc.exact_conversions(seed=seed)
        r3 = oc.sde_ode_marginals(out, seed=seed, **(dict(n=500, sde_steps=100, ode_steps=16, pairs=2)
                                                     if budget.quick else {}))
        r4 = oc.error_vs_nfe(out, seed=seed, **small)
        trained = training.result()
    teacher = trained["edm"][0][0]
    with cf.ProcessPoolExecutor(1, mp_context=mp.get_context("spawn"), initializer=torch.set_num_threads,
                                initargs=(1,)) as procs:   # its own process, one thread
        cd = procs.submit(dc.consistency_distillation, teacher, out, budget, seed)
        r2b = dc.targets_same_fd(trained, out, budget, seed)
        names = {"eps": "VP (eps)", "edm": "EDM", "v": "VP (v)", "x0": "VP (x0)"}   # seed 0 of each target
        models = {names[t]: load_model(trained[t][0][0]) for t in names}
        r5 = dc.denoiser_error_vs_sigma(models["EDM"], out, seed=seed, label="trained EDM model")
        scores = {names[t]: r2b.data["scores"][t][0] for t in names}
        r7 = dc.likelihoods(models, out, budget, seed, scores, judged=("VP (eps)", "EDM"))
        r6 = cd.result()
    train_s = sum(s for runs in trained.values() for _, s in runs)
    r2b.measured += f" ({sum(len(v) for v in trained.values())} models, {train_s:.0f} s of training in all)"
    return [r1, r2a, r2b, r3, r4, r5, r6, r7]


def to_markdown(results: list[ClaimResult], header: list[str]) -> str:
    """The report as Markdown: a summary table, then one section per claim (test, measured, table, figures)."""
    lines = [*header, "", "| claim | result | measured | seconds |", "|---|---|---|---:|"]
    lines += [f"| {r.number}. {r.title} | **{'PASS' if r.passed else 'FAIL'}** | {r.measured} | {r.seconds:.0f} |"
              for r in results]
    for r in results:
        lines += ["", f"## {r.number}. {r.title}: {'PASS' if r.passed else 'FAIL'}", "",
                  f"*Test:* {r.test}.", "", f"*Measured:* {r.measured}.", ""]
        if r.table:
            lines += [*r.table, ""]
        lines += [f"![claim {r.number}]({Path(f).name})" for f in r.figures]
    return "\n".join(lines) + "\n"


def _inline(text: str) -> str:
    """Markdown inline markup of the report (bold, italics, code) as HTML."""
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    text = re.sub(r"\*(.+?)\*", r"<i>\1</i>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def to_html(markdown: str, folder: Path) -> str:
    """The report's Markdown (headings, paragraphs, pipe tables, images) as one HTML page with the PNGs inlined."""
    body, table = [], []

    def flush():
        if table:
            rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in table if not set(ln) <= set("|-: ")]
            body.append("<table>" + "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{_inline(c)}</{'th' if i == 0 else 'td'}>" for c in row)
                + "</tr>" for i, row in enumerate(rows)) + "</table>")
            table.clear()

    for ln in markdown.splitlines():
        if ln.startswith("|"):
            table.append(ln)
            continue
        flush()
        image = re.fullmatch(r"!\[(.*)\]\((.+)\)", ln.strip())
        if image:
            data = base64.b64encode((folder / image.group(2)).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(image.group(1))}" src="data:image/png;base64,{data}">')
        elif ln.startswith("#"):
            level = len(ln) - len(ln.lstrip("#"))
            body.append(f"<h{level}>{_inline(ln[level:].strip())}</h{level}>")
        elif ln.strip():
            body.append(f"<p>{_inline(ln)}</p>")
    flush()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;line-height:1.4}table{border-collapse:"
             "collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #ccc;padding:3px 7px}img{max-width:100%;"
             "margin:.5em .5em .5em 0;vertical-align:top}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>unifusion seminar report</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def run(args) -> int:
    """`unifusion seminar`: measure every claim, write `report.md` and `report.html`, print the summary; exit 1 if
    any claim fails."""
    out, t0, cpu0 = Path(args.out), time.perf_counter(), _cpu_seconds()
    budget = Budget.quick_budget() if args.quick else Budget()
    if args.workers is not None:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        budget.workers = args.workers
    with _LoadSampler() as load:
        results = build_report(out, budget, args.seed)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    passed = sum(r.passed for r in results)
    header = ["# The two formulations of diffusion models, measured", "",
              "Each claim of the seminar (DESIGN.md) reproduced by `unifusion.seminar`: exact oracles where the truth "
              "is known, models trained on scikit-learn's digits where one is needed. FD: Frechet distance in the "
              "shipped digits classifier's features (lower is better); pixel FD: the same in raw pixels; copy "
              "fraction: samples closer to a training digit than every test digit is (a fresh sampler scores about "
              "0.003; above 0.5 a model is flagged as memorizing).", "",
              f"**{passed} of {len(results)} claims pass.** Runtime {wall:.0f} s wall, {cpu:.0f} s CPU (all "
              f"processes, one thread each), 1-minute load average {load.summary()} on {os.cpu_count()} cores; "
              f"command `unifusion seminar{' --quick' if budget.quick else ''} --out {out}`; budget: {budget}."]
    md = to_markdown(results, header)
    atomic_write(out / "report.md", md)
    atomic_write(out / "report.html", to_html(md, out))
    for r in results:
        print(f"claim {r.number:3s} {'PASS' if r.passed else 'FAIL'}  {r.measured}")
    print(f"{passed}/{len(results)} claims pass; {wall:.0f} s wall, {cpu:.0f} s CPU; report: {out / 'report.md'}, "
          f"{out / 'report.html'}", file=sys.stdout)
    return 0 if passed == len(results) else 1
