"""Discoverability: every method setting listed with default and meaning, without importing torch for the CLI."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys

import pytest

import sctraj.models as M
from sctraj import _catalog
from sctraj.cli import main


@pytest.mark.parametrize("method", M.available_methods())
def test_catalog_matches_the_registry(method):
    """The source-parsed catalog lists exactly each config's fields, with the same defaults, each with a meaning."""
    cls = M.get_method(method)
    info = _catalog.method_info(method)
    cfg = {f.name: f.default for f in dataclasses.fields(cls.Config)}
    listed = {s.name: s for s in info.settings if s.kind != "input"}
    assert set(listed) == set(cfg)
    for name, default in cfg.items():
        assert ast.literal_eval(listed[name].default) == default, name
        assert len(listed[name].meaning) > 10, f"{method}.{name} has no documented meaning"
    for s in info.settings:
        if s.kind == "input":
            assert len(s.meaning) > 10, f"{method} input {s.name} has no documented meaning"
    assert info.default_n_steps == cls.default_n_steps and info.default_batch_size == cls.default_batch_size
    assert info.has_growth == cls.has_growth and info.needs_population == cls.needs_population
    assert set(_catalog.methods()) == set(M.available_methods())


def test_describe():
    import sctraj

    assert sctraj.models.describe is M.describe  # sctraj.models on first use, without an explicit import
    df = M.describe("vgfm")
    assert {"total_mass", "weight_key", "lambda_mass", "width", "lr_schedule"} <= set(df.index)
    assert df.loc["lr_schedule", "default"] == "'cosine'" and df.loc["total_mass", "kind"] == "input"
    assert "population size" in df.loc["total_mass", "meaning"]
    assert M.describe("metricfm").loc["land_gamma", "default"] == "'scott'"
    assert M.describe().loc["vgfm", "growth"]
    with pytest.raises(ValueError, match="Available methods"):
        M.describe("nope")


def test_cli_lists_methods_and_params_without_torch(capsys):
    code = ("import sys; from sctraj.cli import main; main(['methods']); main(['methods', 'vgfm']); "
            "assert 'torch' not in sys.modules, 'sctraj methods imported torch'")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "otcfm" in out and "total_mass" in out and "lambda_mass = 1.0" in out
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    help_text = capsys.readouterr().out
    assert all(m in help_text for m in M.available_methods())
    assert "land_gamma" in help_text and "ot_refresh" in help_text
    assert main(["methods", "nope"]) == 2
