"""Run configurations: YAML files plus `--set key=value` overrides, checked by the one schema (`unifusion.schema`).

Owns the top-level keys of a run (`task`, `seed`, `out`), the reading of config files and overrides, and the
shipped configs (`unifusion/configs/*.yaml`). The sections are declared by the modules that own them: `data`
(`unifusion.data`: the data set's options and the loader's), `process` (`unifusion.processes`), `model`
(`unifusion.parametrization.Denoiser`), `net` (`unifusion.nets`), `loss` (`unifusion.losses`; the names a `task`
accepts come from `LOSS_FAMILIES`: `diffusion`, and `classifier` from `unifusion.guidance`), `train`
(`unifusion.train.loop.TrainConfig`), `sample` (`unifusion.train.generate.SampleConfig`), `consistency`
(`unifusion.consistency.task`), `latent` and `autoencoder` (`unifusion.latent`). An unknown key is one error line
naming the valid ones; a value of the wrong type is named with the type expected. Numbers such as `1e-3` are read
as floats (YAML 1.2), unlike PyYAML's YAML 1.1 default.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

from .. import schema
from .loop import TrainConfig

__all__ = ["TASKS", "load_config", "config_path", "apply_overrides", "check_config", "train_config",
           "parse_value", "config_files", "merge", "dump_config", "read_yaml"]


def _check_seed(v) -> None:
    if v < 0:
        raise ValueError(f"config key 'seed' must be an integer >= 0, got {v!r}")


def _check_out(v) -> None:
    if not v.strip():
        raise ValueError("config key 'out' must name a folder, got an empty string")


TASKS = ("diffusion", "classifier")     # what `unifusion train` trains: a denoiser, or a noise-conditional classifier


def _check_task(v) -> None:
    if v is not None and v not in TASKS:
        raise ValueError(f"config key 'task' must be one of {list(TASKS)}, got {v!r}")


schema.owners("unifusion.data", "unifusion.processes", "unifusion.parametrization", "unifusion.nets",
              "unifusion.losses", "unifusion.train.loop", "unifusion.train.generate", "unifusion.consistency.task",
              "unifusion.guidance.noise_classifier", "unifusion.latent")      # the modules that own the sections
schema.register_key("task", str | None, None, _check_task)       # one of TASKS; None = "diffusion"
schema.register_key("seed", int, 0, _check_seed)                  # every random draw of training derives from it
schema.register_key("out", str, "runs/train", _check_out)         # run folder: checkpoint, log.jsonl, config.yaml


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


def check_config(cfg: dict) -> dict:
    """`cfg` checked against the schema, with the defaults of every fixed key filled in (`unifusion.schema.check`):
    `ValueError` on an unknown key (listing the valid ones), a value of the wrong type or a bad value."""
    return schema.check(cfg)


def apply_overrides(cfg: dict, sets) -> dict:
    """Apply `key=value` strings (`train.lr=1e-3`, `net.channel_mult=[1,2]`, any depth) to a copy of `cfg`, each
    checked; setting `data.name`, `process.name`, `net.kind` or `loss.name` clears that section's other options."""
    for item in sets or ():
        key, eq, text = str(item).partition("=")
        if not eq or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        cfg = schema.set_key(cfg, key, parse_value(text), semantic=False)
    return check_config(cfg)


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


def read_yaml(path) -> dict:
    """The mapping in YAML file `path` (one-line `ValueError` if it is not YAML or not a mapping)."""
    p = Path(path)
    try:
        user = yaml.load(p.read_text(), Loader=_Loader) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {p} is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise ValueError(f"config file {p} is not a text (YAML) file") from None
    if not isinstance(user, dict):
        raise ValueError(f"config file {p} must hold a mapping of sections, got {type(user).__name__}")
    return user


def load_config(path=None, sets=()) -> dict:
    """The config of the YAML file at `path` (a path, or the name of a shipped config such as `digits_vp`:
    `config_path`; None: every default) with the `--set` overrides, checked and with every fixed key's default
    filled in."""
    user = read_yaml(config_path(path)) if path is not None else {}
    return apply_overrides(schema.check(user, semantic=False), sets)


def train_config(cfg: dict) -> TrainConfig:
    """The checked `TrainConfig` of a config's `train:` section."""
    t = dict(cfg["train"])
    t["betas"], t["ema_decays"] = tuple(t["betas"]), tuple(t["ema_decays"])
    return TrainConfig(**t).validate()


def dump_config(cfg: dict) -> str:
    """`cfg` as YAML text (what `config.yaml` and `--print-config` hold; `load_config` reads it back equal)."""
    return yaml.safe_dump(schema.plain(cfg), sort_keys=False)


def config_files() -> dict[str, Path]:
    """The configs shipped in `unifusion/configs/`, by name (file name without `.yaml`)."""
    root = Path(__file__).resolve().parent.parent / "configs"
    return {p.stem: p for p in sorted(root.glob("*.yaml"))}


def __getattr__(name):
    if name == "DEFAULTS":          # the config of an empty file, computed on first use (after every owner's import)
        return schema.defaults()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
