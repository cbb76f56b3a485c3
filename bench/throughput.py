"""Training at scale: does the data pipeline keep up, and how much of the GPU does the CIFAR U-Net use?

CPU rows (every machine): images/s that `unifusion.data`'s loader delivers with 2 worker processes (a folder of
32x32 PNGs, the same images as WebDataset tar shards, and as a memory-mapped uint8 `.npz`; batches of 128 made
ready for the network: uint8 -> [-1, 1] and the random x-flip), against the optimiser-step rate of the CIFAR-10
U-Net (`configs/cifar10_unet.yaml`, 38.3M parameters) on the same machine, 1 thread; the ratio is the target
(>= 5: the loader keeps up).

GPU rows (when CUDA is available): the U-Net's training images/s and model FLOP utilisation (MFU) over batch sizes
(bf16 autocast, channels-last, `torch.compile`, fused AdamW; data resident on the device), the same step fed by the
loader from pinned host memory, the host-device synchronisations inside a step (counted by the profiler and checked
with `torch.cuda.set_sync_debug_mode("error")`), and Heun sampling with 35 network evaluations (EDM's 18-step grid)
at batch 512 with the network compiled. MFU = images/s x model FLOPs per image / the card's dense bf16 peak; FLOPs
are counted by `torch.utils.flop_counter.FlopCounterMode` (matmuls, convolutions, attention: forward + backward for
training, forward x 35 for sampling); the peak is the datasheet's dense (not 2:4-sparse) bf16 tensor-core number.

    nice python bench/throughput.py                      # CPU rows; writes bench/results/throughput.{json,md}
    python bench/throughput.py --gpu                     # on a GPU machine: GPU rows as well
    python bench/throughput.py --quick                   # seconds: checks the script, not the targets
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from unifusion.data import ArrayDataset, ImageFolder, TarShards, open_npz
from unifusion.data.loader import StepLoader, flip_mask, to_device
from unifusion.losses import build_loss
from unifusion.train import TrainConfig, load_config
from unifusion.train.distributed import DistInfo
from unifusion.train.step import TrainStep
from unifusion.train.task import DiffusionTask, build_denoiser

RESULTS = Path(__file__).resolve().parent / "results"

# Dense (no 2:4 sparsity) bf16 tensor-core peaks from NVIDIA's datasheets, in FLOP/s. Longest match wins.
PEAK_BF16 = {
    "H100 PCIe": 756e12,          # H100 PCIe: 1,513 TFLOPS with sparsity
    "H100 NVL": 835e12,           # H100 NVL: 1,671 TFLOPS with sparsity (per GPU)
    "H100": 989.4e12,             # H100 SXM5 ("NVIDIA H100 80GB HBM3"): 1,979 TFLOPS with sparsity
    "H200 NVL": 835e12,           # H200 NVL: 1,671 TFLOPS with sparsity
    "H200": 989.4e12,             # H200 SXM: 1,979 TFLOPS with sparsity
    "A100": 312e12,               # A100 SXM / PCIe: 624 TFLOPS with sparsity
}


def peak_bf16(name: str) -> float | None:
    """The datasheet's dense bf16 peak of the card called `name` (None if not in `PEAK_BF16`)."""
    hits = [k for k in PEAK_BF16 if k in name]
    return PEAK_BF16[max(hits, key=len)] if hits else None


# ---- data -------------------------------------------------------------------------------------------------------
def make_images(root: Path, n: int, size: int = 32, seed: int = 0) -> dict:
    """`n` smooth random RGB images `size x size` as a PNG folder (10 class folders), 4 tar shards, and an
    uncompressed `.npz`; returns their paths."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 3, 4, 4)).astype(np.float32)
    pics = torch.nn.functional.interpolate(torch.from_numpy(base), size=(size, size), mode="bilinear")
    pics = (pics + torch.from_numpy(rng.normal(0, 8, (n, 3, size, size)).astype(np.float32))).clamp(0, 255)
    pics = pics.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    folder, shards = root / "png", root / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    per_shard = -(-n // 4)
    tf = None
    for i, p in enumerate(pics):
        d = folder / f"class{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(p).save(buf, format="PNG")
        (d / f"{i:06d}.png").write_bytes(buf.getvalue())
        if i % per_shard == 0:
            if tf is not None:
                tf.close()
            tf = tarfile.open(shards / f"shard-{i // per_shard:06d}.tar", "w")
        for name, payload in ((f"{i:06d}.png", buf.getvalue()), (f"{i:06d}.cls", str(i % 10).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    tf.close()
    np.savez(root / "images.npz", images=pics.transpose(0, 3, 1, 2), labels=np.arange(n) % 10)
    return {"png folder": folder, "tar shards": shards, "npz (memory-mapped)": root / "images.npz"}


def loader_rate(dataset, batch: int, steps: int, workers: int, device="cpu", pin=False) -> float:
    """Images/s the loader delivers, made ready for the network on `device` (the first batch, which starts the
    workers, excluded)."""
    loader = StepLoader(dataset, batch_size=batch, stop=steps + 1, num_workers=workers, pin_memory=pin)
    t0 = None
    for s, _, x, y, _ in loader:
        x, y = to_device(x, y, device, flip_mask(0, s, batch))
        if t0 is None:
            if device != "cpu":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
    if device != "cpu":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


# ---- model ------------------------------------------------------------------------------------------------------
def unet_task(device="cpu", sets=()):
    cfg = load_config("cifar10_unet", list(sets))
    with torch.device(device):
        den = build_denoiser(cfg, (3, 32, 32))
    return DiffusionTask(den, build_loss("ddpm", den.process)), den


def model_flops(sets=()) -> dict:
    """FLOPs per image of the U-Net: one training step (forward + backward) and one forward, counted on the meta
    device (no arithmetic is done) by `FlopCounterMode`."""
    from torch.utils.flop_counter import FlopCounterMode

    _, den = unet_task("meta", sets)
    b = 4
    x, c = torch.zeros(b, 3, 32, 32, device="meta"), torch.ones(b, device="meta")
    with FlopCounterMode(display=False) as fc:
        den.net(x, c).sum().backward()
    train = fc.get_total_flops() / b
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        den.net(x, c)
    return {"train_flops_per_image": train, "forward_flops_per_image": fc.get_total_flops() / b,
            "params_M": round(sum(p.numel() for p in den.net.parameters()) / 1e6, 2)}


def step_rate(device: str, batch: int, steps: int, warmup: int = 1, precision="fp32", compile=False,
              channels_last=False, compile_mode="default", sets=()) -> float:
    """Optimiser steps/s of the U-Net's `TrainStep` on device-resident random data (`warmup` steps excluded)."""
    if compile:
        torch._dynamo.reset()                      # a static compile for this batch size, not a dynamic recompile
    task, _ = unet_task("cpu", sets)
    tc = TrainConfig(batch_size=batch, precision=precision, compile=compile, ema_decays=(0.9999,),
                     channels_last=channels_last, compile_mode=compile_mode)
    step = TrainStep(task, tc, DistInfo(0, 1, 0, torch.device(device)), seed=0)
    step.train_mode()
    x = (torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    x, _ = to_device(x, None, device, memory_format=step.memory_format or torch.contiguous_format)
    sync = torch.cuda.synchronize if device != "cpu" else (lambda: None)
    for s in range(warmup):
        step(s, [(x, None)])
    sync()
    t0 = time.perf_counter()
    for s in range(warmup, warmup + steps):
        step(s, [(x, None)])
    sync()
    return steps / (time.perf_counter() - t0)


# ---- GPU only ---------------------------------------------------------------------------------------------------
def sync_check(batch: int, steps: int = 5) -> dict:
    """Host-device synchronisations inside compiled bf16 training steps: the profiler's count of blocking CUDA calls
    (`cudaStreamSynchronize`, `cudaDeviceSynchronize`, `cudaEventSynchronize`, blocking `cudaMemcpy`), and whether the
    steps run under `torch.cuda.set_sync_debug_mode("error")`."""
    from torch.profiler import ProfilerActivity, profile

    task, _ = unet_task("cpu")
    tc = TrainConfig(batch_size=batch, precision="bf16", compile=True, ema_decays=(0.9999,), channels_last=True)
    step = TrainStep(task, tc, DistInfo(0, 1, 0, torch.device("cuda")), seed=0)
    step.train_mode()
    x, _ = to_device(torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8), None, "cuda",
                     memory_format=torch.channels_last)
    for s in range(3):
        step(s, [(x, None)])
    torch.cuda.synchronize()
    blocking = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for s in range(3, 3 + steps):
            step(s, [(x, None)])
    counts = {}
    for e in prof.events():
        if e.name in blocking:
            counts[e.name] = counts.get(e.name, 0) + 1
    torch.cuda.synchronize()
    error = None
    torch.cuda.set_sync_debug_mode("error")
    try:
        for s in range(3 + steps, 3 + 2 * steps):
            step(s, [(x, None)])
    except RuntimeError as e:
        error = str(e).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    return {"steps": steps, "blocking_calls": counts, "sync_debug_error": error}


def heun_rate(batch: int, compile_mode: str | None, repeats: int = 3) -> float:
    """Images/s of Heun's method on EDM's 18-level grid (35 evaluations) with the U-Net in bf16 autocast, the network
    compiled with `compile_mode` (None: eager)."""
    from unifusion import grids
    from unifusion.samplers import sample_heun

    _, den = unet_task("cuda")
    den.eval().requires_grad_(False)
    torch._dynamo.reset()
    if compile_mode is not None:
        den.net.compile(mode=None if compile_mode == "default" else compile_mode)
    sig = grids.edm_grid(18, 0.002, 80.0)
    x = 80.0 * torch.randn(batch, 3, 32, 32, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        sample_heun(den, x, sig)                    # compiles (and records CUDA graphs with "reduce-overhead")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(repeats):
            sample_heun(den, x, sig)
        torch.cuda.synchronize()
    return repeats * batch / (time.perf_counter() - t0)


# ---- tables -----------------------------------------------------------------------------------------------------
def cpu_rows(a, flops) -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), a.images)
        sources = {"png folder": ImageFolder(paths["png folder"]), "tar shards": TarShards(paths["tar shards"]),
                   "npz (memory-mapped)": open_npz(paths["npz (memory-mapped)"])}
        sources["in-memory tensor"] = ArrayDataset(sources["npz (memory-mapped)"].tensors()[0])
        steps = max(1, 2 * a.images // a.batch)
        loader = {name: loader_rate(ds, a.batch, steps, a.workers) for name, ds in sources.items()}
    sps = step_rate("cpu", a.unet_batch, a.unet_steps)
    train_ips = sps * a.unet_batch
    return {"threads": 1, "workers": a.workers, "images": a.images, "loader_batch": a.batch,
            "loader_images_per_s": loader, "unet_batch": a.unet_batch, "unet_steps_per_s": sps,
            "unet_images_per_s": train_ips, "unet_gflop_per_s": train_ips * flops["train_flops_per_image"] / 1e9,
            "ratio": {name: v / train_ips for name, v in loader.items()}}


def gpu_rows(a, flops) -> dict:
    name = torch.cuda.get_device_name()
    peak = peak_bf16(name)
    out = {"gpu": name, "peak_bf16_flops": peak, "torch": torch.__version__, "train": [], "sampling": []}
    mfu = (lambda ips, f: ips * f / peak if peak else None)
    for b in a.gpu_batches:
        for mode in a.compile_modes:
            sps = step_rate("cuda", b, a.gpu_steps, warmup=5, precision="bf16", compile=mode != "eager",
                            channels_last=True, compile_mode=mode if mode != "eager" else "default")
            out["train"].append({"batch": b, "compile": mode, "steps_per_s": sps, "images_per_s": sps * b,
                                 "mfu": mfu(sps * b, flops["train_flops_per_image"])})
            print(out["train"][-1], flush=True)
    best = max(out["train"], key=lambda r: r["images_per_s"])
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_images(Path(tmp), a.images)
        out["loader_to_gpu_images_per_s"] = loader_rate(open_npz(paths["npz (memory-mapped)"]), best["batch"],
                                                        max(1, 4 * a.images // best["batch"]), a.gpu_workers,
                                                        device="cuda", pin=True)
    out["sync_check"] = sync_check(best["batch"])
    nfe = 35
    for mode in a.sample_modes:
        ips = heun_rate(a.sample_batch, None if mode == "eager" else mode)
        out["sampling"].append({"batch": a.sample_batch, "nfe": nfe, "compile": mode, "images_per_s": ips,
                                "mfu": mfu(ips, nfe * flops["forward_flops_per_image"])})
        print(out["sampling"][-1], flush=True)
    return out


def table(result: dict) -> str:
    f, c = result["flops"], result.get("cpu")
    lines = [f"CIFAR-10 U-Net: {f['params_M']}M parameters, {f['train_flops_per_image'] / 1e9:.1f} GFLOP per training "
             f"image (forward + backward), {f['forward_flops_per_image'] / 1e9:.1f} GFLOP per forward "
             f"(FlopCounterMode)"]
    if c:
        lines += ["", f"CPU ({result['machine']['cpus']} cores, load average {result['machine']['load_average']:.1f}; "
                      f"U-Net: {c['threads']} thread, batch {c['unet_batch']}; loader: {c['workers']} workers, batch "
                      f"{c['loader_batch']}, {c['images']} 32x32 images)", "",
                  "| source | loader images/s | U-Net training images/s | ratio (target >= 5) |", "|---|---|---|---|"]
        for name, v in c["loader_images_per_s"].items():
            lines.append(f"| {name} | {v:.0f} | {c['unet_images_per_s']:.2f} | {c['ratio'][name]:.0f} |")
    g = result.get("gpu")
    if g:
        peak = f"{g['peak_bf16_flops'] / 1e12:.0f} TFLOP/s dense bf16 (datasheet)" if g["peak_bf16_flops"] else \
            "peak unknown"
        lines += ["", f"GPU: {g['gpu']}, {peak}, torch {g['torch']}", "",
                  "| training batch | compile | images/s | MFU |", "|---|---|---|---|"]
        for r in g["train"]:
            lines.append(f"| {r['batch']} | {r['compile']} | {r['images_per_s']:.0f} | "
                         f"{(r['mfu'] or float('nan')):.1%} |")
        lines += ["", f"loader -> GPU (pinned, uint8): {g['loader_to_gpu_images_per_s']:.0f} images/s", "",
                  f"blocking CUDA calls in {g['sync_check']['steps']} steps: {g['sync_check']['blocking_calls']}; "
                  f"sync debug mode error: {g['sync_check']['sync_debug_error']}", "",
                  "| Heun sampling batch | NFE | compile | images/s | MFU |", "|---|---|---|---|---|"]
        for r in g["sampling"]:
            lines.append(f"| {r['batch']} | {r['nfe']} | {r['compile']} | {r['images_per_s']:.1f} | "
                         f"{(r['mfu'] or float('nan')):.1%} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the script, not the targets")
    p.add_argument("--images", type=int, default=4096, help="32x32 images in the generated data set")
    p.add_argument("--batch", type=int, default=128, help="loader batch")
    p.add_argument("--workers", type=int, default=2, help="loader worker processes (CPU rows)")
    p.add_argument("--unet-batch", type=int, default=8)
    p.add_argument("--unet-steps", type=int, default=3)
    p.add_argument("--gpu", action="store_true", help="also the GPU rows (needs CUDA)")
    p.add_argument("--no-cpu", action="store_true", help="skip the CPU rows (on a GPU machine: only the GPU rows)")
    p.add_argument("--gpu-batches", type=int, nargs="+", default=[128, 256, 512, 1024])
    p.add_argument("--gpu-steps", type=int, default=30)
    p.add_argument("--gpu-workers", type=int, default=8)
    p.add_argument("--compile-modes", nargs="+", default=["default"],
                   help="torch.compile modes of the training rows ('eager': none; e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--sample-batch", type=int, default=512)
    p.add_argument("--sample-modes", nargs="+", default=["eager", "default", "reduce-overhead"])
    p.add_argument("--out", default=str(RESULTS / "throughput"), help="output stem (.json and .md)")
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.batch, a.unet_batch, a.unet_steps = 256, 32, 2, 1
    if a.gpu and not torch.cuda.is_available():
        print("--gpu: CUDA is not available", file=sys.stderr)
        return 2
    flops = model_flops()
    result = {"flops": flops, "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}}
    if not a.no_cpu:
        result["cpu"] = cpu_rows(a, flops)
    if a.gpu:
        result["gpu"] = gpu_rows(a, flops)
    text = table(result)
    print(text)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
