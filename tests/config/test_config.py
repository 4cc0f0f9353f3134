"""Config defaults, resolution and the errors unknown keys produce."""

import subprocess
import sys
import textwrap

import ml_collections
import pytest
from timeouts import seconds

from framework import config as config_lib
from framework.config import ConfigError, defaults, resolve


def test_defaults_have_the_documented_keys():
    c = defaults()
    for key in [
        "seed",
        "batch_size",
        "epochs",
        "steps_per_execution",
        "log_every_steps",
        "jit_compile",
        "deterministic",
        "precision",
        "distribution.strategy",
        "distribution.cpu_devices",
        "optimizer.name",
        "optimizer.learning_rate",
        "optimizer.clipnorm",
        "optimizer.global_clipnorm",
        "grad_accum_steps",
        "checkpoint.every_steps",
    ]:
        node = c
        for part in key.split("."):
            node = node[part]


def test_defaults_reject_a_misspelt_key_at_assignment():
    c = defaults()
    with pytest.raises(AttributeError, match='Did you mean "batch_size"'):
        c.batchsize = 32
    c.model.anything = 3  # free-form sections accept new keys
    assert resolve(c).model.anything == 3


def test_resolve_fills_missing_keys_from_defaults():
    c = resolve({"batch_size": 8, "optimizer": {"name": "sgd"}})
    assert c.batch_size == 8 and c.optimizer.name == "sgd"
    assert c.optimizer.learning_rate == defaults().optimizer.learning_rate


@pytest.mark.parametrize(
    "given, expected",
    [
        (
            {"batchsize": 8},
            r"Unknown config key 'batchsize'\. Did you mean 'batch_size'\?.*Valid keys here:.*epochs",
        ),
        (
            {"optimizer": {"learning_rat": 0.1}},
            r"'optimizer\.learning_rat'.*'learning_rate'.*Valid keys here: alpha, boundaries, clipnorm, decay_steps, ema, global_clipnorm, learning_rate, name, options, rates",
        ),
        ({"epochs": "ten"}, r"config\.epochs='ten' has the wrong type"),
        ({"precision": "float64"}, r"config\.precision='float64' is not one of float32"),
        ({"batch_size": 0}, r"config\.batch_size=0 must be an integer >= 1"),
        ({"distribution": {"strategy": "mirror"}}, r"config\.distribution\.strategy='mirror'"),
        ({"optimizer": 3}, r"config\.optimizer must be a section"),
        ({"grad_accum_steps": 0}, r"config\.grad_accum_steps=0 must be an integer >= 1"),
        ({"optimizer": {"clipnorm": -1.0}}, r"config\.optimizer\.clipnorm=-1\.0 must be >= 0"),
        (
            {"optimizer": {"clipnorm": 1.0, "global_clipnorm": 1.0}},
            r"clipnorm and .*global_clipnorm are both set",
        ),
    ],
)
def test_resolve_errors_name_the_key(given, expected):
    with pytest.raises(ConfigError, match=expected):
        resolve(given)


def test_resolve_accepts_a_plain_config_dict_not_built_from_defaults():
    c = ml_collections.ConfigDict({"epochs": 2, "data": {"path": "x"}})
    resolved = resolve(c)
    assert resolved.epochs == 2 and resolved.data.path == "x"


def _launch(tmp_path, *args):
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent("""
        import framework

        class T(framework.Trainer):
            def build_model(self):
                raise AssertionError("no work may start before the config is checked")

        framework.run(T)
    """)
    )
    return subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=seconds(600),
    )


def test_unknown_override_flag_fails_before_work(tmp_path):
    result = _launch(
        tmp_path,
        "--config=configs/digits.py",
        f"--workdir={tmp_path}/w",
        "--config.optimizer.learning_rat=0.1",
    )
    assert result.returncode == 2, result.stderr
    assert "config.optimizer has no key 'learning_rat'" in result.stderr
    assert "Did you mean 'learning_rate'" in result.stderr
    assert not (tmp_path / "w").exists()


def test_unknown_key_in_config_file_fails_before_work(tmp_path):
    cfg = tmp_path / "bad.py"
    cfg.write_text(
        textwrap.dedent("""
        from framework.config import defaults
        def get_config():
            c = defaults()
            c.epoch = 3
            return c
    """)
    )
    result = _launch(tmp_path, f"--config={cfg}", f"--workdir={tmp_path}/w")
    assert result.returncode != 0
    assert 'Did you mean "epochs"' in result.stderr
    assert "AssertionError" not in result.stderr


def test_check_values_is_exposed_for_modules():
    assert config_lib.PRECISIONS[0] == "float32"


def test_parse_arg_reads_flags_typed_values_and_choices():
    spec = dict(smoke=False, width=128, rate=0.5, name="a", loss=("bce", "focal"))
    assert config_lib.parse_arg(None, **spec).to_dict() == {
        "smoke": False,
        "width": 128,
        "rate": 0.5,
        "name": "a",
        "loss": "bce",
    }
    got = config_lib.parse_arg("smoke, width=64,rate=1e-2,name=b,focal", **spec)
    assert got.to_dict() == {"smoke": True, "width": 64, "rate": 0.01, "name": "b", "loss": "focal"}
    assert type(got.width) is int and type(got.rate) is float
    assert config_lib.parse_arg("loss=focal,smoke=false", **spec).to_dict()["loss"] == "focal"
    assert config_lib.parse_arg("smoke=1", smoke=False).smoke is True


@pytest.mark.parametrize(
    "arg, match",
    [
        ("nope", r"configs/x.py: unknown variant 'nope'; valid: smoke, width=<int>, loss=bce\|focal"),
        ("width", r"unknown variant 'width'"),  # a non-boolean key needs a value
        ("width=wide", r"width='wide' is not int"),
        ("smoke=maybe", r"smoke='maybe' is not a boolean"),
        ("loss=dice", r"loss='dice' is not one of bce, focal"),
    ],
)
def test_parse_arg_names_the_file_and_the_valid_keys(arg, match):
    with pytest.raises(ValueError, match=match):
        config_lib.parse_arg(arg, "configs/x.py", smoke=False, width=128, loss=("bce", "focal"))
