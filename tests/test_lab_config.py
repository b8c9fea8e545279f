from dataclasses import dataclass, field
from typing import Any

import pytest

from lab.config import ConfigError, apply_overrides, deep_merge, from_dict, require
from lab.io import read_json, write_json
from models.train import TrainConfig
from studies.preset import load_preset


@dataclass
class Inner:
    rate: float = 0.5
    names: list[str] = field(default_factory=list)


@dataclass
class Outer:
    steps: int = 1
    label: str = "x"
    flag: bool = False
    budget: int | None = None
    pair: tuple[int, int] = (0, 0)
    table: dict[str, Any] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        require(self.steps >= 1, f"steps must be >= 1, got {self.steps}")


def test_values_are_checked_and_converted():
    outer = from_dict(
        Outer,
        {"steps": 3, "budget": None, "pair": [1, 2], "inner": {"rate": 1, "names": ["a"]}},
        "cfg",
    )
    assert outer.inner.rate == 1.0 and isinstance(outer.inner.rate, float)
    assert outer.pair == (1, 2) and outer.budget is None


@pytest.mark.parametrize(
    "data, message",
    [
        ({"steps": "ten"}, r"cfg steps: expected int, got 'ten'"),
        ({"steps": True}, r"cfg steps: expected int, got True"),
        ({"steps": 0}, r"cfg: steps must be >= 1, got 0"),
        ({"label": 3}, r"cfg label: expected str, got 3"),
        ({"budget": "lots"}, r"cfg budget: expected int or None"),
        ({"pair": [1]}, r"cfg pair: expected a list of int"),
        ({"inner": {"names": "lstm"}}, r"cfg inner names: expected a list of str, got 'lstm'"),
        ({"inner": {"nmes": []}}, r"unknown field\(s\) \['nmes'\]; valid: \['names', 'rate'\]"),
        ({"table": 3}, r"expected a table"),
    ],
)
def test_bad_values_name_the_field_the_value_and_what_is_allowed(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data, "cfg")


def test_overrides_parse_literals_and_bare_words():
    data = apply_overrides({}, ["a.b=3", "a.c=[1, 2]", "d=transformer", "e=None", "f=1e-3"])
    assert data == {"a": {"b": 3, "c": [1, 2]}, "d": "transformer", "e": None, "f": 1e-3}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["steps"])
    with pytest.raises(ConfigError, match="'a' is not a table"):
        apply_overrides({"a": 1}, ["a.b=2"])


def test_deep_merge_merges_tables_and_replaces_the_rest():
    base = {"train": {"steps": 1, "lr": 2}, "models": ["a", "b"]}
    assert deep_merge(base, {"train": {"steps": 5}, "models": ["c"]}) == {
        "train": {"steps": 5, "lr": 2},
        "models": ["c"],
    }


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.steps=0", "train.steps must be a whole number >= 1, got 0"),
        ("train.batch_size=0", "train.batch_size must be a whole number >= 1"),
        ("train.log_every=0", "train.log_every must be a whole number >= 1"),
        ("train.steps=ten", "steps: expected int, got 'ten'"),
        ("train.lr=-1", "train.lr must be > 0"),
        ("train.device=tpu", "unknown device 'tpu'"),
        ("models=lstm", "models: expected a list of str, got 'lstm'"),
        ("experiment=../../escaped", "experiment must be one path component"),
        ("experiment=/abs", "experiment must be one path component"),
        ("probe.folds=1", "probe.folds must be >= 2"),
        ("probe.test_fraction=1.5", r"probe.test_fraction must be in \(0, 1\)"),
        ("census.n_shuffles=19", "census.n_shuffles=19 cannot reach p < alpha=0.05"),
        ("tune.lstm.steps=5", r"\[tune.lstm\] may set only"),
    ],
)
def test_presets_refuse_bad_values_at_load_time(override, message):
    with pytest.raises(ConfigError, match=message):
        load_preset("smoke", [override])


def test_train_config_defaults_are_valid():
    TrainConfig()


def test_json_files_are_atomic_and_named_in_errors(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    assert read_json(tmp_path / "a.json") == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    (tmp_path / "b.json").write_text('{"x": ')
    with pytest.raises(ValueError, match=r"b.json: not a readable run summary"):
        read_json(tmp_path / "b.json", "run summary")
    with pytest.raises(FileNotFoundError, match=r"c.json: no run config here"):
        read_json(tmp_path / "c.json", "run config")
