"""The ``sctraj`` command line: ``fit``, ``benchmark``, ``demo`` and ``methods``.

Examples
--------
.. code-block:: bash

    sctraj fit data.h5ad --time-key day --method otcfm --use-rep X_pca --out fitted.h5ad --figures figs/
    torchrun --standalone --nproc-per-node=2 -m sctraj.cli fit data.h5ad --time-key day --out fitted.h5ad --distributed
    sctraj benchmark data.h5ad --time-key day --methods icfm otcfm --use-rep X_pca --out loo.csv
    sctraj demo --out sctraj_demo          # bundled hematopoiesis data; SCTRAJ_FAST=1 for a quick run

Bad arguments print a message naming the fix and exit with status 2; a failure while running exits with 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(Exception):
    """A problem with the arguments or the input data (exit status 2)."""


def fast_mode() -> bool:
    """``SCTRAJ_FAST=1`` (or any value other than ``0``/empty) asks for a quick run."""
    return os.environ.get("SCTRAJ_FAST", "0").strip().lower() not in ("", "0", "false", "no")


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
def _parse_value(text: str):
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def _parse_params(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise UsageError(f"--param expects NAME=VALUE (e.g. --param sigma=0.2), got {item!r}.")
        k, v = item.split("=", 1)
        out[k.strip()] = _parse_value(v.strip())
    return out


def _read(path: str):
    import anndata as ad

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"Input file {path!r} does not exist.")
    if p.suffix != ".h5ad":
        raise UsageError(f"Input file {path!r} is not an .h5ad file (AnnData); save one with adata.write_h5ad(...).")
    return ad.read_h5ad(p)


def _check_out(path: str, suffixes: tuple[str, ...]) -> Path:
    p = Path(path)
    if p.suffix not in suffixes:
        raise UsageError(f"--out {path!r} must end with {' or '.join(suffixes)}.")
    return p


def _is_usage(e: Exception) -> bool:
    return isinstance(e, UsageError | KeyError | ValueError | TypeError | FileNotFoundError)


def _msg(e: Exception) -> str:
    # KeyError quotes its message; show it plainly
    return str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)


def save_figures(adata, key: str, outdir: Path, *, prefix: str = "", basis: str | None = None) -> list[Path]:
    """Write every plot that applies to the fit under ``key`` as PNG files; returns their paths."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    from . import pl
    from .pl._utils import basis_key, basis_name

    outdir.mkdir(parents=True, exist_ok=True)
    rec = adata.uns[key]
    use_rep = str(rec["params"]["use_rep"])
    time_key = str(rec["params"]["time_key"])
    if basis is None:
        basis = "umap" if "X_umap" in adata.obsm else use_rep
    bname = basis_name(basis_key(adata, basis))
    vkey = f"{key}_velocity"
    if f"{vkey}_{bname}" not in adata.obsm:
        from .tl import velocity_embedding

        velocity_embedding(adata, basis=bname, vkey=vkey)
    paths = []

    def _save(name, fn, **kw):
        path = outdir / f"{prefix}{name}.png"
        fn(adata, show=False, save=path, **kw)
        plt.close("all")
        paths.append(path)

    _save("velocity_stream", pl.velocity_stream, basis=bname, vkey=vkey, color=time_key)
    if f"{key}_trajectory" in adata.obsm:
        _save("trajectories", pl.trajectories, key=key, basis=bname)
        _save("marginals", pl.marginals, key=key)
    _save("training", pl.training, key=key)
    if "mass" in rec:
        _save("mass", pl.mass, key=key)
        _save("growth", pl.growth, key=key, basis=bname)
    return paths


def mass_error(rec) -> float:
    """Mean relative error of the predicted total mass at the observed time points after the first (NaN without)."""
    import numpy as np

    if "mass" not in rec:
        return float("nan")
    m = rec["mass"]
    t = np.asarray(m["time"], float)
    pred = np.asarray(m["predicted"], float)
    obs = np.asarray(m["observed"], float)
    if "observed_time" in m:
        t_obs = np.asarray(m["observed_time"], float)
    else:
        t_obs = t if len(obs) == len(t) else np.asarray(rec["params"]["times"], float)
    ok = np.isfinite(obs) & (obs > 0) & (t_obs > t_obs.min())
    if not ok.any():
        return float("nan")
    p = np.interp(t_obs[ok], t[np.argsort(t)], pred[np.argsort(t)])
    return float(np.mean(np.abs(p - obs[ok]) / obs[ok]))


def summary_table(loo, fits: dict[str, dict]):
    """One row per method: leave-one-out W1 (mean over held-out times/seeds), mass error and fit time."""
    import numpy as np
    import pandas as pd

    rows = []
    for m, g in loo.groupby("method", sort=False):
        info = fits.get(m, {})
        rows.append({
            "method": m,
            "W1 (held-out)": float(g["W1"].mean()),
            "W2 (held-out)": float(g["W2"].mean()),
            "mass error": info.get("mass_error", np.nan),
            "fit seconds (all days)": info.get("fit_seconds", np.nan),
            "fit seconds (leave-one-out)": float(g["fit_seconds"].mean()) if m in fits else np.nan,
            "training steps": info.get("n_steps", 0),
        })
    return pd.DataFrame(rows)


def to_markdown(df, *, floatfmt: str = ".4g") -> str:
    """A GitHub Markdown table (no tabulate dependency)."""
    import math

    def fmt(v):
        if isinstance(v, float):
            return "–" if math.isnan(v) else format(v, floatfmt)
        return str(v)

    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------------------------
def _not_input(out: Path, inp: str, what: str = "--out") -> None:
    """Refuse to overwrite the input file (the fit would replace the user's data with the annotated copy)."""
    if out.resolve() == Path(inp).resolve() or (out.exists() and Path(inp).exists() and out.samefile(inp)):
        raise UsageError(f"{what} {str(out)!r} is the input file; sctraj never overwrites its input. Pass another "
                         f"path, e.g. {what} {out.with_name(out.stem + '_sctraj' + out.suffix)}.")


def cmd_fit(args) -> int:
    out = _check_out(args.out, (".h5ad",))
    _not_input(out, args.input)
    if args.model:
        _not_input(Path(args.model), args.input, "--model")
    params = _parse_params(args.param)
    adata = _read(args.input)
    import sctraj

    if args.figures and args.basis is not None:  # checked before the fit, not after it
        from .pl._utils import basis_key

        basis_key(adata, args.basis)

    model = sctraj.tl.fit_flow(
        adata, args.time_key, method=args.method, use_rep=args.use_rep, n_dims=args.n_dims,
        exclude_times=args.exclude_times, population_key=args.population_key, n_steps=args.n_steps,
        batch_size=args.batch_size, device=args.device, random_state=args.seed, key_added=args.key_added,
        progress=not args.quiet, distributed=True if args.distributed else None, **params,
    )
    from .engine import distributed

    if distributed.rank() != 0:  # data-parallel run: rank 0 writes every output
        return 0
    if args.figures:
        paths = save_figures(adata, args.key_added, Path(args.figures), basis=args.basis)
        print(f"wrote {len(paths)} figures to {args.figures}/")
    out.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(out)
    print(f"wrote {out}")
    if args.model:
        model.save(args.model)
        print(f"wrote {args.model}")
    return 0


def cmd_benchmark(args) -> int:
    out = _check_out(args.out, (".csv", ".md"))
    params = _parse_params(args.param)
    adata = _read(args.input)
    import sctraj

    df = sctraj.tl.leave_one_out(
        adata, args.time_key, methods=args.methods, use_rep=args.use_rep, n_dims=args.n_dims, heldout=args.heldout,
        seeds=args.seeds, n_steps=args.n_steps, progress=not args.quiet, n_jobs=args.n_jobs, **params,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        df.to_csv(out, index=False)
    else:
        out.write_text(to_markdown(df))
    print(to_markdown(df))
    print(f"wrote {out}")
    if args.figure:
        import matplotlib

        matplotlib.use("agg")
        sctraj.pl.benchmark(df, show=False, save=args.figure, time_label=f"held-out {args.time_key}")
        print(f"wrote {args.figure}")
    return 0


def cmd_methods(args) -> int:
    """List the methods, or one method's settings; read from the sources, so torch is not imported."""
    from ._catalog import describe_text, methods

    if args.name is not None and args.name not in methods():
        raise UsageError(f"Unknown method {args.name!r}. Available methods: {', '.join(methods())}.")
    print(describe_text(args.name), end="" if args.name else "\n")
    return 0


def demo_methods(adata, requested: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """The registered methods that apply to the demo data (no population labels needed), and why others don't."""
    from .models import available_methods, get_method

    names = requested if requested else available_methods()
    use, skip = [], {}
    for m in names:
        cls = get_method(m)
        if getattr(cls, "needs_population", False):
            skip[m] = "needs population labels (population_key); the demo data has one population"
        else:
            use.append(m)
    return use, skip


def cmd_demo(args) -> int:
    import numpy as np
    import pandas as pd
    from tqdm.auto import tqdm

    import sctraj

    from ._settings import settings

    out = Path(args.out)
    fast = args.fast or fast_mode()
    n_steps = args.n_steps if args.n_steps is not None else (150 if fast else None)
    adata = sctraj.datasets.hematopoiesis()
    max_cells = args.max_cells if args.max_cells is not None else (3000 if fast else None)
    subsampled = max_cells is not None and max_cells < adata.n_obs
    if subsampled:
        rng = np.random.default_rng(0)
        adata = adata[np.sort(rng.choice(adata.n_obs, max_cells, replace=False))].copy()
    methods, skipped = demo_methods(adata, args.methods)
    if not methods:
        raise UsageError("No method applies to the demo data: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    out.mkdir(parents=True, exist_ok=True)
    figdir = out / "figures"
    settings.verbosity = "warning"
    print(f"sctraj demo: hematopoiesis (Weinreb et al. 2020), {adata.n_obs} cells, days 2/4/6, embedding X_emb"
          + (" [quick run: subsampled and/or few steps]" if fast or subsampled else ""))
    for m, why in skipped.items():
        print(f"  skipping {m}: {why}")
    fits: dict[str, dict] = {}
    loo_parts = []
    failed = {}
    t_start, c_start = time.perf_counter(), time.process_time()

    def stage(text: str) -> None:  # one progress line per stage, with the elapsed wall time
        tqdm.write(f"[{time.perf_counter() - t_start:5.0f}s] {text}")

    stage(f"{len(methods)} method(s) at their defaults: {', '.join(methods)}; per method a fit on days 2/4/6, "
          "figures, and a fit without day 4 scored on day 4")
    for i, m in enumerate(methods, 1):
        tag = f"{i}/{len(methods)} {m}"
        try:
            t0 = time.perf_counter()
            stage(f"{tag}: fitting on all {adata.n_obs} cells")
            sctraj.tl.fit_flow(adata, "day", method=m, use_rep="X_emb", n_steps=n_steps, key_added=m,
                               random_state=args.seed, progress=True)
            rec = adata.uns[m]
            fits[m] = {"mass_error": mass_error(rec), "fit_seconds": float(rec["params"]["fit_seconds"]),
                       "n_steps": int(rec["params"]["n_steps"])}
            stage(f"{tag}: fitted in {fits[m]['fit_seconds']:.0f}s; drawing figures")
            save_figures(adata, m, figdir, prefix=f"{m}_")
            stage(f"{tag}: leave-one-out fit without day 4")
            loo = sctraj.tl.leave_one_out(adata, "day", methods=[m], use_rep="X_emb", heldout=4.0,
                                          seeds=(args.seed,), references=not loo_parts, n_steps=n_steps,
                                          progress=True)
            loo_parts.append(loo)
            stage(f"{tag}: W1 (held-out day 4) = {loo.loc[loo.method == m, 'W1'].mean():.4f}; "
                  f"{time.perf_counter() - t0:.0f}s for this method")
        except Exception as e:  # noqa: BLE001 - one failing method must not stop the demo; reported below
            failed[m] = f"{type(e).__name__}: {e}"
            stage(f"{tag} FAILED: {failed[m]}")
    if not loo_parts:
        raise RuntimeError("every method failed: " + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    stage("writing the summary, the benchmark figure and the annotated AnnData")
    loo = pd.concat(loo_parts, ignore_index=True)
    loo.to_csv(out / "leave_one_out.csv", index=False)
    table = summary_table(loo, fits)
    table.to_csv(out / "summary.csv", index=False)
    import matplotlib

    matplotlib.use("agg")
    sctraj.pl.benchmark(loo, show=False, save=figdir / "benchmark_W1.png", time_label="held-out day")
    h5 = out / "hematopoiesis_sctraj.h5ad"
    adata.write_h5ad(h5)
    note = [
        "# sctraj demo: mouse hematopoiesis (Weinreb et al. 2020)",
        "",
        f"{adata.n_obs} cells, days 2, 4, 6, 2-d embedding `X_emb`; sctraj {sctraj.__version__}; "
        f"training steps: {'method defaults' if n_steps is None else n_steps}"
        + (f" (quick run on a {adata.n_obs}-cell subsample: numbers are not representative)" if subsampled else "")
        + ".",
        "",
        "- **W1 / W2 (held-out)**: leave-one-out, fit without day 4, push every day-2 cell to day 4 (100 Euler steps), "
        "exact Wasserstein distance to the observed day-4 cells (lower is better). `no_movement` and "
        "`ot_interpolation` are untrained references.",
        "- **mass error**: growth-aware methods only; mean relative error of the predicted total mass at days 4 and 6.",
        "- **fit seconds**: wall time of one fit on this machine.",
        "",
        to_markdown(table),
    ]
    if skipped or failed:
        note += ["", "Not run: " + "; ".join(f"`{k}` ({v})" for k, v in {**skipped, **failed}.items())]
    (out / "summary.md").write_text("\n".join(note) + "\n")
    print()
    print(to_markdown(table))
    print(f"wrote {h5}, {out / 'summary.md'}, {out / 'summary.csv'}, {out / 'leave_one_out.csv'} and "
          f"{len(list(figdir.glob('*.png')))} figures in {figdir}/")
    stage(f"done: {time.perf_counter() - t_start:.0f}s wall, {time.process_time() - c_start:.0f} CPU seconds "
          f"(this process, every thread) since the data were loaded")
    return EXIT_FAILURE if failed else 0


# ---------------------------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sctraj",
        description="Flow-matching trajectory and growth inference for single-cell time courses (AnnData in, "
                    "AnnData out).",
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"sctraj {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    from ._catalog import help_epilog

    f = sub.add_parser("fit", help="fit a method and write the annotated AnnData (and figures)",
                       epilog=help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("input", metavar="IN.h5ad")
    f.add_argument("--time-key", required=True, help="obs column with each cell's sampling time (numeric)")
    f.add_argument("--method", default="otcfm", help="method name (listed below); default otcfm")
    f.add_argument("--use-rep", default="X_pca", help="obsm key of the embedding to fit in; default X_pca")
    f.add_argument("--out", required=True, metavar="OUT.h5ad")
    f.add_argument("--figures", metavar="DIR", help="write every applicable plot as PNG into DIR")
    f.add_argument("--basis", help="embedding for the figures (default: umap if present, else --use-rep)")
    f.add_argument("--n-dims", type=int, help="use the first N dimensions of --use-rep")
    f.add_argument("--n-steps", type=int, help="training steps (method default)")
    f.add_argument("--batch-size", type=int)
    f.add_argument("--exclude-times", type=float, nargs="+", metavar="T", help="time points left out of training")
    f.add_argument("--population-key", help="obs column with population labels (metafm)")
    f.add_argument("--key-added", default="sctraj", help="prefix of the written keys; default sctraj")
    f.add_argument("--model", metavar="MODEL.pt", help="also save the model")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", default="auto")
    f.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="method setting, repeatable (names below; meanings and defaults: sctraj methods METHOD)")
    f.add_argument("--quiet", action="store_true", help="no progress bars")
    f.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the processes started by torchrun (rank 0 writes the outputs); "
                        "e.g. torchrun --standalone --nproc-per-node=2 -m sctraj.cli fit ... --distributed")
    f.set_defaults(func=cmd_fit)

    b = sub.add_parser("benchmark", help="leave-one-time-point-out benchmark of several methods")
    b.add_argument("input", metavar="IN.h5ad")
    b.add_argument("--time-key", required=True)
    b.add_argument("--methods", nargs="+", default=["icfm", "otcfm", "sbcfm"])
    b.add_argument("--use-rep", default="X_pca")
    b.add_argument("--n-dims", type=int)
    b.add_argument("--heldout", type=float, nargs="+", metavar="T", help="time points to hold out (all interior)")
    b.add_argument("--seeds", type=int, nargs="+", default=[0])
    b.add_argument("--n-steps", type=int)
    b.add_argument("--out", required=True, metavar="RESULTS.csv|.md")
    b.add_argument("--figure", metavar="FILE.png", help="also draw sctraj.pl.benchmark")
    b.add_argument("--n-jobs", type=int, help="fits run in parallel in this many local processes (joblib); "
                   "default serial")
    b.add_argument("--param", action="append", metavar="NAME=VALUE")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=cmd_benchmark)

    d = sub.add_parser("demo", help="fit every applicable method on bundled real data; write results and figures")
    d.add_argument("--out", default="sctraj_demo", metavar="DIR")
    d.add_argument("--methods", nargs="+", help="subset of methods (default: every registered one that applies)")
    d.add_argument("--n-steps", type=int, help="training steps for every method (default: each method's own)")
    d.add_argument("--fast", action="store_true", help="quick run (same as SCTRAJ_FAST=1)")
    d.add_argument("--max-cells", type=int, help="subsample the data to this many cells (3000 in a quick run)")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    m = sub.add_parser("methods", help="list the methods, or every setting of one (default and meaning)")
    m.add_argument("name", nargs="?", metavar="METHOD", help="show this method's settings")
    m.set_defaults(func=cmd_methods)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    for name in ("n_steps", "n_dims", "batch_size", "max_cells", "n_jobs"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer, got {v}.")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("sctraj: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - turned into a message and an exit status
        if _is_usage(e):
            print(f"sctraj {args.command}: error: {_msg(e)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"sctraj {args.command}: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
