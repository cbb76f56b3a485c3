#!/usr/bin/env bash
# The GPU checks (GPU tests, U-Net throughput), as one script for a machine with a CUDA GPU (no install: the
# machine's python3 has torch and every dependency). Writes into ${OUT:-bench/results/gpu}: the GPU tests' log and the CIFAR-sized U-Net's img/s table.
#   OUT=/tmp/gpu bash bench/gpu.sh
set -uo pipefail
out=${OUT:-bench/results/gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/gpu_machine.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu_machine.txt"
# GPU tests (tests/test_gpu.py: autocast training learns, resume, samplers on CUDA == CPU)
timeout 240 python3 -m pytest tests/test_gpu.py -p no:cacheprovider -x 2>&1 | tee "$out/gpu_tests.log" | tail -5
# CIFAR-10-sized U-Net: bf16 autocast (the default on a GPU) and fp32 for the ratio, each eager and compiled,
# batch 128 (the config's)
timeout 420 python3 bench/train_digits.py --skip ve --skip vp --unet-device cuda --unet-batch 128 --unet-steps 40 \
    --unet-precision bf16 fp32 --unet-compile --out "$out" --tag _unet_gpu 2>&1 | tail -8
# Training at scale (bench/throughput.py): the U-Net's training images/s and MFU over batch sizes (bf16, channels-last,
# compiled, fused AdamW), the loader feeding the GPU, the host-device syncs inside a step, Heun-35 sampling at batch 512
timeout 540 python3 bench/throughput.py --gpu --no-cpu --out "$out/throughput" 2>&1 | tail -30
