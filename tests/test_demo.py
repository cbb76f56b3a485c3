"""`unifusion demo --quick`: every artefact of the demo is written, and the table has every row it promises."""
import torch

from unifusion import demo


def test_quick_demo_writes_report_and_figures(tmp_path):
    n = torch.get_num_threads()
    calls = []

    @demo.register_rows
    def extra(ctx):          # the extension point the consistency helper uses
        calls.append(sorted(ctx.models))
        x = torch.zeros(ctx.n, 64) - 1
        ev = ctx.evaluate(x, "blank")
        return [{"model": "VE", "sampler": "blank", "role": "hook row", "nfe": 0, "fd": ev["fd"],
                 "confident": ev["confident"], "seconds": 0.0, "picture": ev["picture"]}]

    try:
        report = demo.main(out=tmp_path, quick=True, n=100)
    finally:
        demo._HOOKS.remove(extra)
        torch.set_num_threads(n)
    text = report.read_text()
    assert calls == [["VE", "VP"]]
    for name in ("schedules.png", "trajectories.png", "samples_vp_heun_35nfe.png", "samples_ve_heun_35nfe.png",
                 "samples_blank.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    rows = [ln for ln in text.splitlines() if ln.startswith("| VP") or ln.startswith("| VE")]
    own = [r for r in rows if r.split("|")[1].strip() in ("VP", "VE")]      # other hooks may add more rows
    assert len(own) == 9 and "| floor |" in text and any("| blank | hook row |" in r for r in own)
    for model in ("VP", "VE"):
        roles = " ".join(r for r in rows if r.startswith(f"| {model}"))
        assert all(w in roles for w in ("own sampler", "reverse SDE", "PF-ODE")), roles
    assert "VE sampler (EDM Heun" in text and "VP sampler (DDPM ancestral" in text
    fds = [float(r.split("|")[5]) for r in rows]
    assert all(f > 0 for f in fds)
    guided = [r for r in rows if r.startswith("| VE-cond")]          # the guidance rows: one per scale
    assert len(guided) == 4 and all("class agreement" in r for r in guided) and "w=2:" in guided[2]
    assert (tmp_path / "samples_ve_cond_cfg2.png").stat().st_size > 1000
