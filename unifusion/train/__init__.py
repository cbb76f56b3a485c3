"""Training: the generic loop (`fit` over a *task*), EMA, checkpoints, torchrun DDP, logs, configs.

`fit(task, data, ...)` trains anything that exposes trainable modules and a per-example loss (see `loop`);
`DiffusionTask` is the task of a denoising loss; `train_from_config` runs a whole config; `load_model` gives back
the trained `Denoiser`; `save_pretrained` / `from_pretrained` write and read it as a self-contained folder.
docs/training.md is the user guide.
"""
from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .distributed import DistInfo, init_distributed
from .ema import EMA
from .loop import CHECKPOINT_NAME, FitResult, TrainConfig, TrainingDiverged, fit, micro_batch_seed

__all__ = ["fit", "TrainConfig", "FitResult", "TrainingDiverged", "EMA", "CheckpointError", "save_checkpoint",
           "read_checkpoint", "init_distributed", "DistInfo", "micro_batch_seed", "CHECKPOINT_NAME"]
from .config import DEFAULTS, apply_overrides, check_config, config_files, load_config
from .pretrained import from_pretrained, save_pretrained
from .task import DiffusionTask, build_denoiser, build_run, load_model, train_from_config

__all__ += ["DEFAULTS", "load_config", "apply_overrides", "check_config", "config_files", "DiffusionTask",
            "build_run", "build_denoiser", "train_from_config", "load_model", "save_pretrained", "from_pretrained"]
