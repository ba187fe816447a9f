"""OT-CFM leave-one-out on hematopoiesis for block-plan settings, many seeds (issue 7: speed vs accuracy).

Hematopoiesis snapshots exceed ``ot_full_size`` (1024 cells), so ``otcfm`` couples them with exact plans on random
blocks of ``ot_block_size`` cells, each serving ``ot_refresh`` steps. A longer refresh halves the OT work per step
(the background solve that bounds throughput on large data, see ``throughput_profile.md``); this prints the held-out
day-4 W1 per seed for each setting so the accuracy cost can be read against seed noise.

Usage: ``python benchmarks/bench_ot_refresh.py --seeds 0 1 2 3 --settings 512:25 512:50``
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    import sctraj

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--settings", nargs="+", default=["512:25", "512:50"], help="BLOCK:REFRESH pairs")
    args = ap.parse_args()
    a = sctraj.datasets.hematopoiesis()
    for s in args.settings:
        bs, rf = (int(v) for v in s.split(":"))
        r = sctraj.tl.leave_one_out(a, "day", methods=["otcfm"], use_rep="X_emb", heldout=[4.0], seeds=args.seeds,
                                    references=False, progress=False, ot_block_size=bs, ot_refresh=rf)
        w = r["W1"].to_numpy(float)
        print(f"block {bs} refresh {rf}: W1 per seed {np.round(w, 4).tolist()}, mean {w.mean():.4f}, "
              f"sd {w.std(ddof=1):.4f}, mean fit s {r['fit_seconds'].mean():.1f}", flush=True)


if __name__ == "__main__":
    main()
