"""bench/throughput.py's parts: FLOPs counted on the meta device, datasheet peaks by card name, the loader rate, and
the table with GPU rows (a GPU run is checked on a GPU machine: bench/gpu.sh)."""
import pytest
import torch

from bench_scripts import load_bench

tp = load_bench("throughput")


def test_flops_per_image_of_the_cifar_unet():
    """Backward costs twice the forward (two matmuls per weight), less the input gradient of the first layer."""
    f = tp.model_flops()
    assert f["params_M"] == pytest.approx(38.3, abs=0.05)
    assert 2.9 < f["train_flops_per_image"] / f["forward_flops_per_image"] <= 3.0


def test_datasheet_peaks_by_card_name():
    assert tp.peak_bf16("NVIDIA H100 80GB HBM3") == 989.4e12
    assert tp.peak_bf16("NVIDIA H100 PCIe") == 756e12
    assert tp.peak_bf16("NVIDIA H200") == 989.4e12 and tp.peak_bf16("NVIDIA H200 NVL") == 835e12
    assert tp.peak_bf16("NVIDIA GeForce GTX 1080") is None


def test_loader_rate_and_table():
    from unifusion.data import ArrayDataset

    rate = tp.loader_rate(ArrayDataset(torch.zeros(64, 3, 4, 4, dtype=torch.uint8)), batch=16, steps=4, workers=0)
    assert rate > 0
    flops = {"params_M": 38.31, "train_flops_per_image": 37.3e9, "forward_flops_per_image": 12.4e9}
    gpu = {"gpu": "NVIDIA H100 80GB HBM3", "peak_bf16_flops": 989.4e12, "torch": "2.x",
           "train": [{"batch": 256, "compile": "default", "images_per_s": 8000.0, "mfu": 8000 * 37.3e9 / 989.4e12}],
           "loader_to_gpu_images_per_s": 50000.0, "sync_check": {"steps": 5, "blocking_calls": {},
                                                                 "sync_debug_error": None},
           "sampling": [{"batch": 512, "nfe": 35, "compile": "reduce-overhead", "images_per_s": 700.0,
                         "mfu": 700 * 35 * 12.4e9 / 989.4e12}]}
    text = tp.table({"flops": flops, "machine": {"cpus": 2, "load_average": 1.0}, "gpu": gpu})
    assert "| 256 | default | 8000 | 30.2% |" in text and "| 512 | 35 | reduce-overhead | 700.0 | 30.7% |" in text
