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

__all__ = ["DEFAULTS", "OPEN_SECTIONS", "load_config", "apply_overrides", "check_config", "parse_value",
           "config_files", "merge"]

OPEN_SECTIONS = ("data", "process", "net", "loss")

DEFAULTS: dict = {
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
    return cfg


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


def load_config(path=None, sets=()) -> dict:
    """`DEFAULTS` merged with the YAML file at `path` (a path, or the name of a shipped config such as
    `digits_vp`) and the `--set` overrides, checked."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        p = Path(path)
        if not p.exists():
            shipped = config_files()
            if str(path) in shipped:
                p = shipped[str(path)]
            else:
                raise ValueError(f"config file {path} does not exist (shipped configs: {sorted(shipped)})")
        try:
            user = yaml.load(p.read_text(), Loader=_Loader) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
        check_config(user)
        for sec in OPEN_SECTIONS:       # an open section given in the file replaces the default one
            if sec in user:
                cfg[sec] = {}
        cfg = merge(cfg, user)
    cfg = apply_overrides(cfg, sets)
    return check_config(cfg)


def config_files() -> dict[str, Path]:
    """The configs shipped in `unifusion/configs/`, by name (file name without `.yaml`)."""
    root = Path(__file__).resolve().parent.parent / "configs"
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}
