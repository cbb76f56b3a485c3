"""Run configurations: YAML files plus `--set key=value` overrides, checked against one schema.

Owns the config schema (`DEFAULTS`) and its checks. A config has fixed sections whose keys and types are
known here (`seed`, `out`, `model`, `train`, `sample`) and open sections whose keys are the keyword arguments
of the builder they name (`data` -> `unifusion.data.get_dataset(name, ...)`, `process` -> `get_process(name, ...)`,
`net` -> `unifusion.nets.build_net(kind, ...)`, `loss` -> `unifusion.losses.build_loss(name, process, ...)`),
which check them when the run is built. Sections whose default is `None` (`latent`, `autoencoder`) belong to
another module, which checks them when it builds the run (`unifusion.latent`). An unknown key is named with the
list of valid ones; a value of the wrong type is named with the type expected. Numbers such as `1e-3` are read as
floats (YAML 1.2), unlike PyYAML's YAML 1.1 default.
"""
from __future__ import annotations

import copy
import re
from dataclasses import asdict
from pathlib import Path

import yaml

from .loop import TrainConfig

__all__ = ["DEFAULTS", "TASKS", "OPEN_SECTIONS", "load_config", "config_path", "apply_overrides", "check_config",
           "train_config", "parse_value", "config_files", "merge"]

OPEN_SECTIONS = ("data", "process", "net", "loss")

TASKS = ("diffusion", "classifier")       # what `unifusion train` trains: a denoiser, or a noise-conditional classifier

DEFAULTS: dict = {
    "task": None,                           # one of TASKS; None = "diffusion" (so older runs' configs still match)
    "seed": 0,                              # every random draw of training derives from it
    "out": "runs/train",                    # run folder: checkpoint.safetensors, log.jsonl, config.yaml
    "data": {"name": "digits"},             # get_dataset(name, **rest)
    "process": {"name": "ddpm"},            # get_process(name, **rest)
    "model": {                              # the Denoiser wrapping the net
        "target": "eps",                    # what the net predicts: eps, x0, score, v, flow, edm
        "sigma_data": 0.5,                  # EDM preconditioning's data std
        "noise_cond": "t",                  # "t" (process time x time_scale) or "log_sigma"
        "time_scale": 1.0,
    },
    "net": {"kind": "mlp"},                 # build_net(kind, **rest); dim / img_resolution / in_channels from data
    "loss": {"name": "ddpm"},               # build_loss(name, process, **rest)
    "train": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(TrainConfig()).items()},
    "sample": {                             # defaults of `unifusion sample`
        "sampler": None,                    # None: unifusion.samplers.DEFAULT_SAMPLER
        "grid": None,                       # None: the sampler's RECOMMENDED grid
        "steps": None,                      # grid points; None: 35 for ODE samplers... (the sampler's default)
        "n": 64,                            # samples to draw
        "batch_size": 1000,                 # samples per network batch
        "seed": 0,
        "ema": True,                        # sample with the EMA weights (first decay)
    },
    "latent": None,                         # latent diffusion: {autoencoder: checkpoint, ...} (unifusion.latent)
    "autoencoder": None,                    # an autoencoder config: {kind: kl, ...} (unifusion.latent)
}



class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def parse_value(text: str):
    """A `--set` value: YAML scalars / lists (`1e-3`, `true`, `[0.999, 0.9999]`, `null`), else the string itself."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge (`update` wins); returns a new dict."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _type_ok(default, value) -> tuple[bool, str]:
    if default is None or value is None and not isinstance(default, (bool, int, float)):
        return True, ""
    if isinstance(default, bool):
        return isinstance(value, bool), "true or false"
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool), "an integer"
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    if isinstance(default, str):
        return isinstance(value, str), "a string"
    if isinstance(default, list):
        return isinstance(value, (list, tuple)), "a list"
    return True, ""


def check_config(cfg: dict) -> dict:
    """Raise `ValueError` on an unknown key (listing the valid ones) or a value of the wrong type; return `cfg`."""
    if not isinstance(cfg, dict):
        raise ValueError(f"a config must be a mapping of sections, got {type(cfg).__name__}")
    for k, v in cfg.items():
        if k not in DEFAULTS:
            raise ValueError(f"unknown config key {k!r}; valid top-level keys are {sorted(DEFAULTS)}")
        d = DEFAULTS[k]
        if isinstance(d, dict):
            if not isinstance(v, dict):
                raise ValueError(f"config section {k!r} must be a mapping, got {v!r}")
            head = "kind" if k == "net" else "name"
            if k in OPEN_SECTIONS:
                if not isinstance(v.get(head), str):
                    raise ValueError(f"{k}.{head} must be a string, got {v.get(head)!r}")
                continue
            for kk, vv in v.items():
                if kk not in d:
                    raise ValueError(f"unknown config key '{k}.{kk}'; valid keys in {k!r} are {sorted(d)}")
                ok, what = _type_ok(d[kk], vv)
                if not ok:
                    raise ValueError(f"config key '{k}.{kk}' must be {what}, got {vv!r}")
        else:
            ok, what = _type_ok(d, v)
            if not ok:
                raise ValueError(f"config key {k!r} must be {what}, got {v!r}")
    _check_values(cfg)
    return cfg


def _check_values(cfg: dict) -> None:
    """The value checks of the fixed keys that no builder sees before training starts (`train:` is checked by
    `TrainConfig.validate`)."""
    from ..samplers import SAMPLERS
    from ..utils import check_choice, check_positive_int
    from .generate import GRIDS

    if cfg.get("task") is not None and cfg["task"] not in TASKS:
        raise ValueError(f"config key 'task' must be one of {list(TASKS)}, got {cfg['task']!r}")
    if "seed" in cfg and cfg["seed"] < 0:
        raise ValueError(f"config key 'seed' must be an integer >= 0, got {cfg['seed']!r}")
    if "out" in cfg and not str(cfg["out"]).strip():
        raise ValueError("config key 'out' must name a folder, got an empty string")
    sample = cfg.get("sample", {})
    for k in ("n", "batch_size", "steps"):
        if sample.get(k) is not None:
            check_positive_int(sample[k], f"sample.{k}")
    if sample.get("seed") is not None and not (isinstance(sample["seed"], int) and sample["seed"] >= 0):
        raise ValueError(f"config key 'sample.seed' must be an integer >= 0, got {sample['seed']!r}")
    if sample.get("sampler") is not None:
        check_choice(sample["sampler"], "sample.sampler", SAMPLERS)
    if sample.get("grid") is not None:
        check_choice(sample["grid"], "sample.grid", GRIDS)


def apply_overrides(cfg: dict, sets) -> dict:
    """Apply `key=value` strings (`train.lr=1e-3`, `net.hidden=512`) to a copy of `cfg`, checking each key."""
    cfg = copy.deepcopy(cfg)
    for item in sets or ():
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) > 2 or not all(parts):
            raise ValueError(f"--set key {key!r} must be 'key' or 'section.key'")
        if parts[0] not in DEFAULTS:
            raise ValueError(f"unknown config key {parts[0]!r}; valid top-level keys are {sorted(DEFAULTS)}")
        if len(parts) == 1:
            cfg[parts[0]] = parse_value(text)
        else:
            if DEFAULTS[parts[0]] is not None and not isinstance(DEFAULTS[parts[0]], dict):
                raise ValueError(f"config key {parts[0]!r} has no sub-keys")
            if cfg.get(parts[0]) is None:
                cfg[parts[0]] = {}          # a section another module owns (default None)
            if parts[0] in OPEN_SECTIONS and parts[1] in ("name", "kind"):
                cfg[parts[0]] = {}          # another builder: its options no longer apply
            cfg.setdefault(parts[0], {})[parts[1]] = parse_value(text)
        check_config(cfg)
    return cfg


def config_path(name) -> Path:
    """The file a config argument names: a bare name of a shipped config (no folder, no extension: `digits_vp`) is
    always that shipped file, whatever lies in the working directory (write `./digits_vp` for a file of that name);
    anything else is a path, which must be a file."""
    text, shipped = str(name), config_files()
    if text in shipped:
        return shipped[text]
    p = Path(text)
    if p.is_file():
        return p
    if p.exists():
        raise ValueError(f"config {text!r} is a {'folder' if p.is_dir() else 'special file'}, not a YAML file")
    raise ValueError(f"config file {text} does not exist (shipped configs: {sorted(shipped)})")


def load_config(path=None, sets=()) -> dict:
    """`DEFAULTS` merged with the YAML file at `path` (a path, or the name of a shipped config such as
    `digits_vp`: `config_path`) and the `--set` overrides, checked."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = config_path(path)
        try:
            user = yaml.load(p.read_text(), Loader=_Loader) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        except UnicodeDecodeError:
            raise ValueError(f"config file {p} is not a text (YAML) file") from None
        check_config(user)
        for sec in OPEN_SECTIONS:       # an open section given in the file replaces the default one
            if sec in user:
                cfg[sec] = {}
        cfg = merge(cfg, user)
    cfg = check_config(apply_overrides(cfg, sets))
    train_config(cfg)
    return cfg


def train_config(cfg: dict) -> TrainConfig:
    """The checked `TrainConfig` of a config's `train:` section (raises `ValueError` naming a bad value)."""
    t = dict(cfg["train"])
    t["betas"], t["ema_decays"] = tuple(t["betas"]), tuple(t["ema_decays"])
    return TrainConfig(**t).validate()


def config_files() -> dict[str, Path]:
    """The configs shipped in `unifusion/configs/`, by name (file name without `.yaml`)."""
    root = Path(__file__).resolve().parent.parent / "configs"
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}
