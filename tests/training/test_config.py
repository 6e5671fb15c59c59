"""The typed TOML config loader: defaults, file, overrides, errors that name the key, round trip."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from training.config import config_to_dict, dump_toml, load_config, parse_overrides
from training.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    width: int = 8
    rate: float = 0.5
    names: tuple[str, ...] = ("a",)


@dataclass(frozen=True)
class Outer:
    mode: str = "hidvae"
    seed: int | None = None
    inner: Inner = field(default_factory=Inner)


def test_defaults_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('mode = "rqvae"\n[inner]\nwidth = 16\n')
    config = load_config(Outer, path, ["inner.rate=2", "inner.names=['x', 'y']", "seed=3"])
    assert config == Outer(mode="rqvae", seed=3, inner=Inner(width=16, rate=2.0, names=("x", "y")))


def test_bare_string_override() -> None:
    assert load_config(Outer, None, ["mode=rqvae"]).mode == "rqvae"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["inner.depth=3"], "unknown config key inner.'depth'"),
        (["inner.width=wide"], "inner.width: expected int"),
        (["inner.width=true"], "inner.width: expected int"),
        (["novalue"], "not of the form key=value"),
        (["inner=3"], "inner: expected a table"),
    ],
)
def test_bad_overrides_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(Outer, None, overrides)


def test_missing_and_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("mode = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(Outer, bad)


def test_dump_round_trip(tmp_path: Path) -> None:
    config = Outer(mode="x", seed=None, inner=Inner(width=4, rate=0.25, names=("p", "q")))
    text = dump_toml(config_to_dict(config))
    path = tmp_path / "effective.toml"
    path.write_text(text)
    assert tomllib.loads(text)["inner"]["names"] == ["p", "q"]
    assert load_config(Outer, path) == config


def test_parse_overrides_nests() -> None:
    assert parse_overrides(["a.b.c=1", "a.d='s'"]) == {"a": {"b": {"c": 1}, "d": "s"}}
