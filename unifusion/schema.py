"""The one config schema: every section of a run's config declared once, by the module that owns it, and checked
by one function.

A *section* is a mapping of options. Its keys come from a signature: a dataclass's fields (`train:` is
`TrainConfig`) or a builder's keyword arguments (`model:` is the `Denoiser`'s); a *choice* section also has a head
key (`name`, `kind`) whose value picks a builder whose keyword arguments are the rest of the keys (`net: {kind:
unet, ...}` takes `UNet`'s). Types come from the annotations (`int`, `float`, `bool`, `str`, `X | None`,
`tuple[float, ...]`, `Literal[...]`, a nested dataclass: a nested mapping), else from the default's type.
Owners call `register_section` when they are imported; `unifusion.train.config` imports them all.

Why plain dataclasses and signatures, not OmegaConf structured configs: the options already live in signatures
(`UNet.__init__`, `get_process`'s classes, the losses), so a choice section is typed by the builder it names with
nothing declared twice, and OmegaConf's structured configs cannot express "the keys depend on the value of `kind`"
(no unions of dataclasses); YAML stays plain (read by PyYAML with YAML 1.2 floats), and the errors stay one line.

`check(cfg)` fills in the defaults of the fixed keys (a builder's own defaults apply to the options a config leaves
out, when it is called) and raises one `ValueError` line for an unknown key (naming the valid ones), a value of
the wrong type (naming the type), or a section's own check; `set_key(cfg, "a.b.c", value)` overrides
at any depth, checked the same way.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Section", "register_section", "register_key", "owners", "choice_of", "SECTIONS", "KEYS", "options_of",
           "check", "defaults", "set_key", "plain", "conforms", "describe"]

REQUIRED = inspect.Parameter.empty      # an option without a default (filled in by the run, e.g. `net.dim`)


@dataclass(frozen=True)
class Section:
    """One section of a config.

    Attributes:
        name:    the section's key.
        options: a dataclass or callable whose signature gives the fixed keys (None: none).
        head:    the key that picks a builder (choice sections), e.g. "name" or "kind".
        choices: `choices(value, cfg) -> builder` for the head's value (`cfg`: the whole config, for choices that
                 depend on another key, e.g. the losses of a `task`); raises `ValueError` naming the valid values.
        default: the head's default value (choice sections).
        skip:    builder parameters the run supplies itself (not config keys), e.g. `process`.
        check:   semantic checks of the filled-in section, `check(section_dict)` raising `ValueError`.
        optional: the section is absent unless a config gives it (null and absent are the same).
        excludes: sections that do not apply when this one is present (they must be absent then).
    """
    name: str
    options: Callable | None = None
    head: str | None = None
    choices: Callable[[str], Callable] | None = None
    default: Any = None
    skip: tuple = ()
    check: Callable[[dict], Any] | None = None
    optional: bool = False
    excludes: tuple = ()


SECTIONS: dict[str, Section] = {}
_OWNERS: dict[str, bool] = {}           # modules that register sections: imported before the first check
ORDER = ("data", "process", "model", "net", "loss", "train", "sample")    # how a checked config lists its sections
KEYS: dict[str, tuple[Any, Any, Callable | None]] = {}       # top-level scalars: name -> (type, default, check)


def register_section(name: str, options=None, *, head=None, choices=None, default=None, skip=(), check=None,
                     optional: bool = False, excludes=()) -> Section:
    """Declare section `name` (see `Section`); the owning module calls this once when it is imported."""
    if name in KEYS:
        raise ValueError(f"config key {name!r} is already a top-level value")
    SECTIONS[name] = Section(name, options, head, choices, default, tuple(skip), check, optional, tuple(excludes))
    return SECTIONS[name]


def owners(*modules: str) -> None:
    """Name the modules that register sections (`"unifusion.latent"`); `check` imports them before it checks, so
    a section is known however the program started (a module still being imported registers when it finishes)."""
    for m in modules:
        _OWNERS.setdefault(m, False)


def _import_owners() -> None:
    import importlib

    for m, done in list(_OWNERS.items()):
        if not done:
            _OWNERS[m] = True
            importlib.import_module(m)


def register_key(name: str, type_, default, check: Callable | None = None) -> None:
    """Declare a top-level scalar key (`seed`, `out`, `task`)."""
    KEYS[name] = (type_, default, check)


def choice_of(registry: dict, what: str) -> Callable[[str, dict], Callable]:
    """`choices` for a section whose head names an entry of `registry` (`what` names the key in errors)."""
    def choose(name: str, cfg: dict | None = None) -> Callable:
        if name not in registry:
            raise ValueError(f"{what}={name!r} is not one of {sorted(registry)}")
        return registry[name]
    return choose


# ---- signatures -> options ---------------------------------------------------------------------------------------
def _hints(fn) -> dict:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 -- an annotation that does not resolve: fall back to the defaults' types
        return {}


def options_of(fn, skip=()) -> dict[str, tuple[Any, Any]]:
    """`{key: (type, default)}` of the keyword arguments of `fn` (a class: its constructor), without `skip`;
    `default` is `REQUIRED` for an argument without one."""
    hints = _hints(fn)
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if name in skip or name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = hints.get(name)
        if ann is None:
            ann = Any if p.default in (REQUIRED, None) else type(p.default)
        out[name] = (ann, p.default)
    return out


def _takes_any(fn) -> bool:
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())


# ---- types -------------------------------------------------------------------------------------------------------
def _is_dataclass_type(t) -> bool:
    return inspect.isclass(t) and dataclasses.is_dataclass(t)


def conforms(value, t) -> bool:
    """Whether config value `value` has type `t` (an annotation; see the module docstring)."""
    if t is Any or t is REQUIRED or t is object:
        return True
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if t is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is str:
        return isinstance(value, str)
    if t in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(conforms(v, a) for v, a in zip(value, args, strict=True))
        return all(conforms(v, args[0]) for v in value)
    if t is dict or origin is dict or _is_dataclass_type(t):
        return isinstance(value, dict)
    return True          # a type the config cannot spell (a module, a process): not checked here


def describe(t) -> str:
    """Type `t` in words, for error messages ("an integer", "a list of numbers", ...)."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null",
             dict: "a mapping"}
    if t in names:
        return names[t]
    if t in (tuple, list) or origin in (tuple, list):
        return f"a list of {describe(args[0]).removeprefix('an ').removeprefix('a ')}s" if args and \
            args[0] is not Any else "a list"
    return "a mapping" if _is_dataclass_type(t) else getattr(t, "__name__", str(t))


def plain(v):
    """`v` with tuples as lists and dataclasses as dicts (what YAML and JSON hold)."""
    if dataclasses.is_dataclass(v) and not inspect.isclass(v):
        v = dataclasses.asdict(v)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


# ---- the one check -----------------------------------------------------------------------------------------------
def _fields(section: Section, value: dict, where: str, cfg: dict) -> tuple[dict, dict, Callable | None]:
    """`(fixed, chosen, builder)`: the `{key: (type, default)}` of a section's fixed keys (head included) and of the
    builder its head picks (choice sections; `builder` None otherwise)."""
    fixed = dict(options_of(section.options, section.skip)) if section.options is not None else {}
    if section.head is None:
        return fixed, {}, None
    head = value.get(section.head, section.default)
    if not isinstance(head, str):
        raise ValueError(f"config key '{where}.{section.head}' must be a string, got {head!r}")
    builder = section.choices(head, cfg)
    fixed = {section.head: (str, section.default), **fixed}
    chosen = {k: v for k, v in options_of(builder, section.skip).items() if k not in fixed}
    return fixed, chosen, builder


def _check_mapping(value, fields: dict, where: str, chosen: dict | None = None, open_: bool = False) -> dict:
    """`value` checked: every key known (unless `open_`) and of its type, nested dataclasses too; the defaults of
    `fields` filled in (those of `chosen`, a builder's options, apply when the builder is called)."""
    if not isinstance(value, dict):
        raise ValueError(f"config section '{where}' must be a mapping, got {value!r}")
    known = {**(chosen or {}), **fields}
    unknown = [k for k in value if k not in known]
    if unknown and not open_:
        raise ValueError(f"unknown config key '{where}.{unknown[0]}'; valid keys in '{where}' are {sorted(known)}")
    out = {}
    for k, (t, default) in fields.items():
        if k in value:
            out[k] = _check_value(value[k], t, f"{where}.{k}")
        elif _is_dataclass_type(t):
            out[k] = _check_value({}, t, f"{where}.{k}")
        elif default is not REQUIRED:
            out[k] = plain(copy.deepcopy(default))
    for k, (t, _) in (chosen or {}).items():
        if k in value:
            out[k] = _check_value(value[k], t, f"{where}.{k}")
    for k in unknown:
        out[k] = copy.deepcopy(value[k])
    return out


def _check_value(v, t, where: str):
    if _is_dataclass_type(t) and isinstance(v, dict):
        return _check_mapping(v, options_of(t), where)
    if not conforms(v, t):
        raise ValueError(f"config key '{where}' must be {describe(t)}, got {v!r}")
    return plain(copy.deepcopy(v))


def _check_section(section: Section, value, cfg: dict, semantic: bool = True) -> dict | None:
    if value is None and section.optional:
        return None
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise ValueError(f"config section {section.name!r} must be a mapping, got {value!r}")
    fixed, chosen, builder = _fields(section, value, section.name, cfg)
    out = _check_mapping(value, fixed, section.name, chosen, open_=builder is not None and _takes_any(builder))
    if semantic and section.check is not None:
        section.check(out)
    return out


def check(cfg: dict, semantic: bool = True) -> dict:
    """`cfg` with every fixed key's default filled in; one `ValueError` line for an unknown key (naming the valid
    ones), a value of the wrong type (naming the type expected) or (`semantic`) a failed section check."""
    if not isinstance(cfg, dict):
        raise ValueError(f"a config must be a mapping of sections, got {type(cfg).__name__}")
    _import_owners()
    valid = sorted(set(KEYS) | set(SECTIONS))
    for k in cfg:
        if k not in KEYS and k not in SECTIONS:
            raise ValueError(f"unknown config key {k!r}; valid top-level keys are {valid}")
    out = {}
    for k, (t, default, fn) in KEYS.items():
        v = cfg.get(k, default)
        if not conforms(v, t):
            raise ValueError(f"config key {k!r} must be {describe(t)}, got {v!r}")
        if semantic and fn is not None:
            fn(v)
        out[k] = copy.deepcopy(v)
    present = [s for s in SECTIONS.values() if cfg.get(s.name) is not None]
    excluded = {x: s.name for s in present for x in s.excludes}
    for x, by in excluded.items():
        if cfg.get(x) is not None:
            raise ValueError(f"config section {x!r} does not apply to a config with a {by!r} section; remove it")
    for name in sorted(SECTIONS, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        if name in excluded:
            continue
        section = _check_section(SECTIONS[name], cfg.get(name), out, semantic)
        if section is not None:                     # an optional section a config does not give stays out
            out[name] = section
    return out


def defaults() -> dict:
    """The config of an empty file: every key at its default."""
    return check({})


# ---- overrides ---------------------------------------------------------------------------------------------------
def set_key(cfg: dict, key: str, value, semantic: bool = True) -> dict:
    """A copy of the checked `cfg` with `key` (dotted, any depth: `train.lr`, `net.channel_mult`, `a.b.c`) set to
    `value`, checked (`semantic=False`: keys and types only, for one of several overrides). Setting a section's
    head (`net.kind`, `data.name`) clears its other builder options."""
    _import_owners()
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"--set key {key!r} must be dotted names, e.g. train.lr")
    cfg = copy.deepcopy(cfg)
    top = parts[0]
    if top not in KEYS and top not in SECTIONS:
        raise ValueError(f"unknown config key {top!r}; valid top-level keys are {sorted(set(KEYS) | set(SECTIONS))}")
    if len(parts) == 1:
        cfg[top] = value
        return check(cfg, semantic)
    if top in KEYS:
        raise ValueError(f"config key {key.strip()!r}: {top!r} has no sub-keys")
    section = SECTIONS[top]
    node = cfg.get(top) or {}
    if len(parts) == 2 and section.head is not None and parts[1] == section.head:
        fixed = options_of(section.options, section.skip) if section.options is not None else {}
        node = {k: v for k, v in node.items() if k in fixed}       # another builder: its options no longer apply
    cfg[top] = node
    for i, p in enumerate(parts[1:-1], start=1):
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            if nxt is not None or p not in _keys_of(cfg, parts[:i + 1]):
                raise ValueError(f"config key {key.strip()!r}: {'.'.join(parts[:i + 1])!r} has no sub-keys")
            nxt = node[p] = {}
        node = nxt
    node[parts[-1]] = value
    return check(cfg, semantic)


def _keys_of(cfg: dict, parts: list[str]) -> set:
    """The keys one level above `parts[-1]` accepts (for creating a nested mapping that `cfg` lacks)."""
    section = SECTIONS[parts[0]]
    fixed, chosen, _ = _fields(section, cfg.get(parts[0]) or {}, parts[0], cfg)
    fields = {**chosen, **fixed}
    for p in parts[1:-1]:
        t = fields.get(p, (Any, None))[0]
        fields = options_of(t) if _is_dataclass_type(t) else {}
    return set(fields)
