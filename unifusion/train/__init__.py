"""Training: the generic loop (`fit` over a *task*), EMA, checkpoints, torchrun DDP, logs, configs.

`fit(task, data, ...)` trains anything that exposes trainable modules and a per-example loss (see `loop`);
`DiffusionTask` is the task of a denoising loss; `train_from_config` runs a whole config; `load_model` gives back
the trained `Denoiser`; `save_pretrained` / `from_pretrained` write and read it as a self-contained folder.
docs/training.md is the user guide.
"""
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .distributed import DistInfo, DistributedFailure, init_distributed, launch_local
from .ema import EMA, ema_update
from .loop import CHECKPOINT_NAME, FitResult, TrainConfig, TrainingDiverged, fit, micro_batch_seed
from .config import apply_overrides, check_config, config_files, load_config
from .pretrained import from_pretrained, save_pretrained
from .task import DiffusionTask, build_denoiser, build_run, load_model, train_from_config

__all__ = ["fit", "TrainConfig", "FitResult", "TrainingDiverged", "DistributedFailure", "EMA", "ema_update",
           "CheckpointError", "save_checkpoint", "read_checkpoint", "init_distributed", "launch_local", "DistInfo",
           "micro_batch_seed", "CHECKPOINT_NAME",
           "load_config", "apply_overrides", "check_config", "config_files", "DiffusionTask",
           "build_run", "build_denoiser", "train_from_config", "load_model", "save_pretrained", "from_pretrained"]


def __getattr__(name):
    if name == "DEFAULTS":          # computed on first use: every section's owner must be importable by then
        from .config import DEFAULTS
        return DEFAULTS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
