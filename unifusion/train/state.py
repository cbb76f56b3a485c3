"""The checkpoint writer and reader of a training run: everything a bit-exact resume needs, in one checkpoint.

Owns what goes into a run's checkpoint and back: the task's modules (`model.<module>.*`), the EMA (`ema<i>.*`),
the optimiser state (`optim.*`) and hyper-parameters, the gradient scaler, the task's own state (`task.*`), and
in the metadata the run's config, step, seed, micro-batches per step and data position; and the checks that a
checkpoint may be continued by a run (same config up to the keys a resumed run may change, the same learning
rate at every step already taken, the same micro-batches per step, the same data set size). The file format
itself (atomic, checksummed safetensors) is `checkpoint`'s.
"""
from __future__ import annotations

from pathlib import Path

from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .schedule import first_lr_change

__all__ = ["write_state", "read_resumable", "restore_state", "config_difference", "RESUMABLE"]

# config keys a resumed run may change (they do not change the arithmetic of the steps)
RESUMABLE = {"train.steps", "train.log_every", "train.ckpt_every", "train.progress", "train.device",
             "train.tensorboard", "train.threads", "train.compile", "train.compile_mode", "train.preview_every",
             "train.preview_n", "train.eval_every", "train.eval_n", "train.dist_timeout", "data.num_workers",
             "data.prefetch", "out"}
_SCHEDULE = {"train.decay_start", "train.decay_end"}   # resumable while the steps already taken keep their lr
_LR_KEYS = ("lr", "warmup", "decay_start", "decay_end")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _normal(cfg: dict) -> dict:
    """A run config with the schema's defaults filled in (so keys added since a checkpoint was written compare
    equal at their defaults); any other dict as it is."""
    from .. import schema
    try:
        return schema.check(cfg)
    except (ValueError, TypeError):
        return cfg


def config_difference(a: dict, b: dict, ignore=RESUMABLE) -> list[str]:
    """Keys whose values differ between two (nested) configs, except those a resumed run may change."""
    fa, fb = _flat(_normal(a)), _flat(_normal(b))
    return sorted(k for k in set(fa) | set(fb) if k not in ignore and fa.get(k) != fb.get(k))


def write_state(path: Path, step, info: dict) -> Path:
    """Save the run of `step` (a `TrainStep`: its task, optimiser, EMA and scaler) with the metadata `info` (which
    holds at least `step` and `seed`) to `path`, atomically."""
    task, opt = step.task, step.opt
    tensors = {f"model.{name}.{k}": v for name, m in task.modules.items() for k, v in m.state_dict().items()}
    if step.ema is not None:
        tensors.update(step.ema.state_tensors())
    osd = opt.state_dict()
    tensors.update({f"optim.{pid}.{k}": v for pid, st in osd["state"].items() for k, v in st.items()})
    if hasattr(task, "state_tensors"):
        tensors.update({f"task.{k}": v for k, v in task.state_tensors().items()})
    info = dict(info, param_groups=[{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
                                    for g in osd["param_groups"]],
                scaler=step.scaler.state_dict() if step.scaler is not None else None,
                rng={"seed": info["seed"], "next_step": info["step"],
                     "scheme": "SeedSequence([seed, step, micro_batch]); data order SeedSequence([seed, epoch])"})
    return save_checkpoint(path, tensors, info)


def read_resumable(path: Path, config: dict, n_micro: int, n_data: int | None) -> tuple[dict, dict] | None:
    """`(tensors, info)` of the checkpoint at `path` if a run of `config` with `n_micro` micro-batches per step on a
    data set of `n_data` examples can continue it bit-exactly (else `CheckpointError` naming why); None if there
    is no checkpoint."""
    if not path.exists():
        return None
    tensors, info = read_checkpoint(path)
    diff = config_difference(info.get("config", {}), config, RESUMABLE | _SCHEDULE)
    if diff:
        raise CheckpointError(f"checkpoint {path} comes from another config (differs in: {', '.join(diff[:8])}); "
                              f"use another `out` folder or the same config")
    old, new = info.get("config", {}).get("train"), config.get("train")
    if isinstance(old, dict) and isinstance(new, dict):
        lr_old = {k: old[k] for k in _LR_KEYS if k in old}
        lr_new = {k: new[k] for k in _LR_KEYS if k in new}
        changed = first_lr_change(lr_old, lr_new, int(info["step"])) if lr_old != lr_new else None
        if changed is not None:
            raise CheckpointError(f"checkpoint {path}: train.decay_start/decay_end change the learning rate of step "
                                  f"{changed + 1}, which it already took; a decay may only start at or after step "
                                  f"{info['step']}")
    if info.get("micro_batches") != n_micro:
        raise CheckpointError(f"checkpoint {path} was trained with {info.get('micro_batches')} micro-batches per step "
                              f"(world_size x grad_accum), this run has {n_micro}; bit-exact resume needs the same")
    seen = (info.get("data") or {}).get("n")
    if seen is not None and n_data is not None and seen != n_data:
        raise CheckpointError(f"checkpoint {path} was trained on a data set of {seen} examples, this one has "
                              f"{n_data}; the data order (and so a bit-exact resume) needs the same data")
    return tensors, info


def restore_state(path: Path, state: tuple[dict, dict], step) -> int:
    """Load a checkpoint's `(tensors, info)` into `step` (a `TrainStep`); return the step to continue from."""
    tensors, info = state
    task, opt = step.task, step.opt
    try:
        for name, m in task.modules.items():
            pre = f"model.{name}."
            m.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)})
        if step.ema is not None:
            step.ema.load_state_tensors(tensors)
        optim = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                optim.setdefault(int(pid), {})[key] = v
        groups = info["param_groups"]
        for g in groups:
            g["betas"] = tuple(g["betas"])
        opt.load_state_dict({"state": optim, "param_groups": groups})
        if step.scaler is not None and info.get("scaler"):
            step.scaler.load_state_dict(info["scaler"])
        if hasattr(task, "load_state_tensors"):
            task.load_state_tensors({k[5:]: v for k, v in tensors.items() if k.startswith("task.")})
    except (RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {str(e).splitlines()[0]}") from None
    return int(info["step"])
