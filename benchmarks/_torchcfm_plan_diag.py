"""Diagnostic: what torchcfm's minibatch OT plans look like in one of ``bench_torchcfm.py``'s torchcfm fits.

Runs ``_torchcfm_runner.py`` unchanged inside ``benchmarks/_venvs/torchcfm``, with torchcfm's
``OTPlanSampler.get_map`` wrapped to record, for every plan, the total mass the solver returned (1 for a plan that
meets its marginals) and the effective share of the 256 source and target cells that the normalised plan uses
(inverse Simpson index of its marginals over 256: 1 = every cell equally, 1/256 = one cell). torchcfm samples its
training pairs from the plan divided by its sum, so a failed solve that still returns mass above its 1e-8 cut-off
decides which pairs are trained on.

Usage (after a ``bench_torchcfm.py`` run has written its inputs to ``benchmarks/_work``):
``benchmarks/_venvs/torchcfm/bin/python benchmarks/_torchcfm_plan_diag.py benchmarks/_work/tcfm_EB_19.5_sbcfm_0.npz OUT.json``
"""

import sys
import warnings
from pathlib import Path

import numpy as np
import torchcfm.optimal_transport as otm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _torchcfm_runner  # noqa: E402

_get_map = otm.OTPlanSampler.get_map
stats: dict[str, list[float]] = {"plan mass": [], "source share": [], "target share": []}
uniform = [0]  # plans torchcfm replaced by the uniform plan (solver mass below 1e-8)


def get_map(self, x0, x1):
    p = _get_map(self, x0, x1)
    q = p / p.sum()
    n = p.shape[0]
    uniform[0] += bool(np.all(p == p.flat[0]))
    stats["plan mass"].append(float(p.sum()))
    stats["source share"].append(float(1 / (q.sum(1) ** 2).sum() / n))
    stats["target share"].append(float(1 / (q.sum(0) ** 2).sum() / n))
    return p


if __name__ == "__main__":
    otm.OTPlanSampler.get_map = get_map
    warnings.simplefilter("ignore")
    _torchcfm_runner.main(sys.argv[1], sys.argv[2])
    print(f"{len(stats['plan mass'])} plans, {uniform[0]} replaced by the uniform plan; 5th / 50th / 95th percentiles:")
    for k, v in stats.items():
        print(f"  {k}: " + " / ".join(f"{x:.3g}" for x in np.percentile(v, [5, 50, 95])))
