"""The one config schema: every key of every section round-trips through YAML, every section's unknown key is one
line naming the valid ones, `--set` reaches any depth with type checks, and `--print-config` prints what a run
uses."""
import dataclasses
import inspect

import pytest
import yaml

from unifusion import schema
from unifusion.cli import main
from unifusion.train.config import check_config, dump_config, load_config

OPTIONAL = {"consistency": {"mode": "cd", "teacher": "runs/teacher"}, "latent": {"autoencoder": "runs/ae"},
            "autoencoder": {}}


def _plain_default(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str)) or (
        isinstance(v, (list, tuple)) and all(isinstance(x, (bool, int, float, str)) for x in v))


def _choices(section: schema.Section) -> list[str]:
    """The values a choice section's head can take (named ones; paths are covered by the data tests)."""
    from unifusion.data import NAMED
    from unifusion.latent import AUTOENCODERS
    from unifusion.losses import LOSSES
    from unifusion.nets import NETS
    from unifusion.processes import PROCESSES

    return {"data": NAMED, "process": PROCESSES, "net": NETS, "loss": LOSSES, "autoencoder": AUTOENCODERS}[
        section.name]


def _configs():
    """One config per section and choice, with every option that has a default set to that default explicitly."""
    check_config({})                                  # the owners register their sections
    base = {}
    for name, section in schema.SECTIONS.items():
        fixed = schema.options_of(section.options, section.skip) if section.options is not None else {}
        values = {k: schema.plain(d) for k, (_, d) in fixed.items() if d is not schema.REQUIRED}
        values.update(OPTIONAL.get(name, {}))
        heads = _choices(section) if section.head is not None else [None]
        for head in heads:
            sec = dict(values)
            if head is not None:
                sec[section.head] = head
                builder = section.choices(head, {})
                sec.update({k: schema.plain(d) for k, (_, d) in schema.options_of(builder, section.skip).items()
                            if d is not schema.REQUIRED and _plain_default(d) and k not in sec})
            cfg = {**base, name: sec}
            if name == "consistency":
                cfg["loss"] = None                    # a distill config has no loss section
            if name == "autoencoder" and head == "identity":
                continue                              # no options beyond the fixed ones
            yield f"{name}-{head}" if head else name, cfg


@pytest.mark.parametrize("case", list(_configs()), ids=lambda c: c[0])
def test_every_key_round_trips_through_yaml(case, tmp_path):
    _, cfg = case
    cfg = {k: v for k, v in cfg.items() if v is not None}
    checked = check_config(cfg)
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(checked))
    assert load_config(path) == checked
    for name, sec in cfg.items():                      # every key given is kept, at its value
        assert all(checked[name][k] == v for k, v in sec.items()), name


def test_every_section_names_its_valid_keys_for_an_unknown_one(tmp_path):
    check_config({})
    cases = {name: dict(OPTIONAL.get(name, {}), nonsense=1) for name in schema.SECTIONS}
    for name, sec in cases.items():
        cfg = {name: sec, **({"loss": None} if name == "consistency" else {})}
        cfg = {k: v for k, v in cfg.items() if v is not None}
        with pytest.raises(ValueError) as e:
            check_config(cfg)
        msg = str(e.value)
        assert "\n" not in msg and f"unknown config key '{name}.nonsense'; valid keys in '{name}' are [" in msg, msg
        sec = schema.SECTIONS[name]
        fixed = schema.options_of(sec.options, sec.skip) if sec.options else {}
        assert all(repr(k) in msg for k in fixed), msg
    for argv in (["--set", "train.lrr=1"], ["--set", "net.widthh=3"], ["--set", "data.num_worker=2"]):
        assert main(["train", "toy_ve", *argv, "--print-config"]) == 2


def test_set_reaches_any_depth_with_type_checks():
    @dataclasses.dataclass
    class Inner:
        rate: float = 0.5
        names: tuple = ("a",)

    @dataclasses.dataclass
    class Outer:
        inner: Inner = dataclasses.field(default_factory=Inner)
        depth: int = 1

    schema.register_section("nested_test", Outer, optional=True)
    try:
        cfg = schema.set_key(check_config({}), "nested_test.inner.rate", 0.25)
        assert cfg["nested_test"] == {"inner": {"rate": 0.25, "names": ["a"]}, "depth": 1}
        with pytest.raises(ValueError, match=r"^config key 'nested_test.inner.rate' must be a number, got 'x'$"):
            schema.set_key(cfg, "nested_test.inner.rate", "x")
        with pytest.raises(ValueError, match=r"unknown config key 'nested_test.inner.rat'; valid keys in "
                                             r"'nested_test.inner' are \['names', 'rate'\]"):
            schema.set_key(cfg, "nested_test.inner.rat", 1.0)
        with pytest.raises(ValueError, match="'nested_test.depth' has no sub-keys"):
            schema.set_key(cfg, "nested_test.depth.x", 1)
    finally:
        del schema.SECTIONS["nested_test"]
    cfg = load_config("cifar10_unet", ["net.channel_mult=[1,2]", "data.x_flip=true", "train.channels_last=true"])
    assert cfg["net"]["channel_mult"] == [1, 2] and cfg["data"]["x_flip"] and cfg["train"]["channels_last"]
    with pytest.raises(ValueError, match="'net.channel_mult' must be a list"):
        load_config("cifar10_unet", ["net.channel_mult=2"])
    assert load_config("toy_ve", ["net.kind=unet"])["net"] == {"kind": "unet"}      # a new kind drops mlp's options


def test_print_config_is_what_load_config_reads(tmp_path, capsys):
    assert main(["train", "toy_ve", "--set", "train.lr=1e-3", "--set", "data.num_workers=2", "--print-config"]) == 0
    text = capsys.readouterr().out
    printed = yaml.safe_load(text)
    assert printed["train"]["lr"] == 1e-3 and printed["data"]["num_workers"] == 2
    (tmp_path / "p.yaml").write_text(text)
    assert load_config(tmp_path / "p.yaml") == load_config("toy_ve", ["train.lr=1e-3", "data.num_workers=2"])
    assert not (tmp_path / "runs").exists()


def test_sections_are_declared_once_by_their_owners():
    """Each section's fixed keys are its owner's dataclass or signature: nothing is repeated in a table."""
    check_config({})
    from unifusion.consistency.task import ConsistencyConfig
    from unifusion.data.loader import LoaderOptions
    from unifusion.parametrization import Denoiser
    from unifusion.train.generate import SampleConfig
    from unifusion.train.loop import TrainConfig

    owners = {"train": TrainConfig, "sample": SampleConfig, "consistency": ConsistencyConfig, "data": LoaderOptions,
              "model": Denoiser}
    for name, owner in owners.items():
        assert schema.SECTIONS[name].options is owner
    keys = set(inspect.signature(TrainConfig).parameters)
    assert set(check_config({})["train"]) == keys
