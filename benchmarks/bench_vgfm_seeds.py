"""VGFM leave-one-out on hematopoiesis over several seeds, with three weightings of the pushed cells (issue 3).

Fits ``vgfm`` (defaults) on days 2 and 6 of ``sctraj.datasets.hematopoiesis()`` (``X_emb``), pushes every day-2 cell
to day 4 and to day 6 with 100 Euler steps (positions and log-mass), and scores the day-4 prediction against the
observed day-4 cells with exact W1 (``sctraj.tl.evaluate``) under three weightings of the pushed cells:

* ``mass at day 4``: each cell's predicted mass at day 4 - the model's prediction of the day-4 population, the
  number reported everywhere else ("weights included");
* ``uniform``: every pushed cell counts once (growth ignored);
* ``mass at day 6``: each cell's predicted mass at day 6, i.e. its share of the day-6 population. This is the
  weighting of an OT *interpolation* that samples pairs from the plan (moscot's ``compute_interpolated_distance``
  samples interpolated cells in proportion to the plan's mass, which is the mass at the later time point). It is
  not the model's day-4 population; it is printed to compare with such interpolations on their own terms.

Also prints the relative error of the predicted total mass at day 6 (observed: 5788 / 1429 cells).

Usage: ``python benchmarks/bench_vgfm_seeds.py [JSON_PARAMS] [SEEDS]``, e.g.
``python benchmarks/bench_vgfm_seeds.py '{}' 0,1,2,3,4`` or ``'{"n_steps": 1000}' 0,1,2``.
"""

from __future__ import annotations

import json
import sys
import time
import warnings

import numpy as np


def main() -> None:
    import sctraj

    warnings.filterwarnings("ignore")
    a = sctraj.datasets.hematopoiesis()
    d = a.obs["day"].astype(float).to_numpy()
    train = a[d != 4].copy()
    X0, Xm = a.obsm["X_emb"][d == 2], a.obsm["X_emb"][d == 4]
    params = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    seeds = [int(s) for s in (sys.argv[2].split(",") if len(sys.argv) > 2 else ["0"])]
    for seed in seeds:
        t, c = time.perf_counter(), time.process_time()
        m = sctraj.tl.fit_flow(train, "day", method="vgfm", use_rep="X_emb", random_state=seed, progress=False,
                               trajectory_n_grid=0, **params)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        xs, lw = m.push(X0, 2.0, np.array([4.0, 6.0]), n_steps=100)
        row = {name: round(sctraj.tl.evaluate(xs[0], Xm, weights=w)["W1"], 4)
               for name, w in (("mass at day 4", np.exp(lw[0])), ("uniform", None), ("mass at day 6", np.exp(lw[1])))}
        err = float(np.exp(lw[1]).mean() / (5788 / 1429) - 1)
        print(params, seed, row, "mass err d6", round(err, 4), "fit s", round(wall, 1), "CPU s", round(cpu, 1),
              flush=True)


if __name__ == "__main__":
    main()
