"""The ``sctraj`` command line: fit / benchmark / demo write what they promise; bad arguments exit 2 with a message."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import pandas as pd
import pytest

from sctraj.cli import main

TINY = ["--n-steps", "10", "--param", "width=16", "--param", "depth=2"]


@pytest.fixture
def h5ad(adata_time, tmp_path):
    path = tmp_path / "in.h5ad"
    adata_time.write_h5ad(path)
    return path


def test_fit_writes_h5ad_figures_and_model(h5ad, tmp_path, capsys):
    out, figs, model = tmp_path / "out" / "fitted.h5ad", tmp_path / "figs", tmp_path / "m.pt"
    rc = main(["fit", str(h5ad), "--time-key", "time", "--method", "otcfm", "--use-rep", "X_pca", "--out", str(out),
               "--figures", str(figs), "--model", str(model), "--quiet", *TINY])
    assert rc == 0
    b = ad.read_h5ad(out)
    assert b.uns["sctraj"]["params"]["method"] == "otcfm"
    assert b.uns["sctraj"]["params"]["config"]["width"] == 16
    assert "sctraj_velocity_pca" in b.obsm and "sctraj_trajectory" in b.obsm
    assert {p.name for p in figs.glob("*.png")} >= {"velocity_stream.png", "trajectories.png", "marginals.png",
                                                     "training.png"}
    assert model.is_file()
    assert "wrote" in capsys.readouterr().out


def test_benchmark_writes_table_and_figure(h5ad, tmp_path):
    out, fig = tmp_path / "loo.csv", tmp_path / "loo.png"
    rc = main(["benchmark", str(h5ad), "--time-key", "time", "--methods", "icfm", "--use-rep", "X_pca",
               "--out", str(out), "--figure", str(fig), "--quiet", *TINY])
    assert rc == 0
    df = pd.read_csv(out)
    assert set(df["method"]) == {"icfm", "no_movement", "ot_interpolation"}
    assert (df["heldout"] == 1.0).all() and df["W1"].notna().all()
    assert fig.is_file()


def test_demo_writes_results_table_and_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--methods", "otcfm", "--n-steps", "5", "--max-cells", "600"])
    assert rc == 0
    printed = capsys.readouterr().out
    # one progress line per stage, each with the elapsed time, and the run's wall and CPU seconds at the end
    for stage in ("1/1 otcfm: fitting on all 600 cells", "1/1 otcfm: fitted in", "1/1 otcfm: leave-one-out fit",
                  "1/1 otcfm: W1 (held-out day 4) =", "writing the summary", "CPU seconds"):
        assert stage in printed, stage
    assert (out / "hematopoiesis_sctraj.h5ad").is_file()
    table = pd.read_csv(out / "summary.csv")
    assert list(table["method"]) == ["no_movement", "ot_interpolation", "otcfm"]
    assert table.loc[table.method == "otcfm", "W1 (held-out)"].notna().all()
    md = (out / "summary.md").read_text()
    assert "| otcfm |" in md and "held-out" in md
    pngs = {p.name for p in (out / "figures").glob("*.png")}
    assert {"benchmark_W1.png", "otcfm_velocity_stream.png", "otcfm_trajectories.png"} <= pngs
    b = ad.read_h5ad(out / "hematopoiesis_sctraj.h5ad")
    assert "otcfm" in b.uns and "otcfm_velocity_emb" in b.obsm


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "missing.h5ad", "--time-key", "day", "--out", "o.h5ad"], "does not exist"),
        (["fit", "{h5ad}", "--time-key", "day", "--out", "o.h5ad"], "time_key 'day'"),
        (["fit", "{h5ad}", "--time-key", "time", "--method", "nope", "--out", "o.h5ad"], "Unknown method"),
        (["fit", "{h5ad}", "--time-key", "time", "--use-rep", "X_umap", "--out", "o.h5ad"], "use_rep 'X_umap'"),
        (["fit", "{h5ad}", "--time-key", "time", "--out", "o.csv"], "must end with .h5ad"),
        (["fit", "{h5ad}", "--time-key", "time", "--out", "o.h5ad", "--param", "sigma"], "NAME=VALUE"),
        (["fit", "{h5ad}", "--time-key", "time", "--out", "o.h5ad", "--param", "bogus=1"], "bogus"),
        (["benchmark", "{h5ad}", "--time-key", "time", "--out", "r.csv", "--heldout", "0"], "intermediate"),
        (["demo", "--methods", "nope"], "Unknown method"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(h5ad, tmp_path, capsys, argv, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = main([a.format(h5ad=h5ad) for a in argv])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "error" in err
    assert not (tmp_path / "o.h5ad").exists()


def test_argparse_errors_and_no_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "x.h5ad"])  # --time-key and --out are required
    assert e.value.code == 2
    assert "--time-key" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["fit", "x.h5ad", "--time-key", "day", "--out", "o.h5ad", "--n-steps", "0"])
    assert e.value.code == 2
    assert main([]) == 2


def test_console_script_exit_status(tmp_path):
    r = subprocess.run([sys.executable, "-m", "sctraj.cli", "fit", str(tmp_path / "none.h5ad"), "--time-key", "day",
                        "--out", str(tmp_path / "o.h5ad")], capture_output=True, text=True)
    assert r.returncode == 2
    assert "does not exist" in r.stderr
