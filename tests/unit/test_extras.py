"""A missing optional package is a one-line error naming the extra that brings it."""

from __future__ import annotations

import importlib.util

import pytest

from fedray import extras
from fedray.config import ConfigError
from fedray.validate import validate
from tests.conftest import compose_plain


def test_installed_module_passes_and_missing_one_names_its_extra():
    extras.require("anything", "numpy")  # installed: no error
    with pytest.raises(ConfigError) as err:
        extras.require("dp=central", "numpy", "no_such_module_fedray_xyz")
    assert str(err.value).startswith("dp=central needs no_such_module_fedray_xyz: pip install")


def test_every_extra_module_names_a_pyproject_extra():
    for module, (pip_name, extra) in extras.EXTRAS.items():
        assert extra in ("privacy", "sweep", "app")
        assert f"fedray[{extra}]" in extras.hint(module) and pip_name in extras.hint(module)


def test_dp_without_dp_accounting_fails_in_validation(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "dp_accounting" else real(name, *a),
    )
    cfg = compose_plain(["+experiment=smoke", "dp=central"])
    cfg["run_dir"] = "unused"
    with pytest.raises(
        ConfigError, match=r'dp=central needs dp-accounting: pip install "fedray\[privacy\]"'
    ):
        validate(cfg)
