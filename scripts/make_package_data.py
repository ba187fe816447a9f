"""Convert the raw files in ``../shared/data`` into the compact package data of :mod:`sctraj.datasets`.

Run from the repository root: ``python scripts/make_package_data.py [path/to/shared/data]``.
The outputs are committed; nothing is downloaded at run time.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
dst = Path("sctraj/datasets/_data")
dst.mkdir(parents=True, exist_ok=True)

# Weinreb hematopoiesis (2-d embedding, 3 days)
df = pd.read_csv(src / "weinreb_hematopoiesis/mouse_hematopoiesis.csv")
np.savez_compressed(
    dst / "hematopoiesis.npz",
    X=df[["x1", "x2"]].to_numpy(np.float32),
    t=df["samples"].to_numpy(np.int8),
)

# EB subset (NLSB val + test, 100-d)
parts = [np.load(src / f"eb_nlsb_subset/{name}_rna.npz") for name in ("val", "test")]
np.savez_compressed(
    dst / "eb.npz",
    X=np.concatenate([p["X"] for p in parts]).astype(np.float32),
    t=np.concatenate([p["ts"] for p in parts]).astype(np.int8),
    idx=np.concatenate([p["idx"] for p in parts]).astype(np.int32),
    split=np.array(["val"] * len(parts[0]["ts"]) + ["test"] * len(parts[1]["ts"])),
)

# iPSC qPCR (8 time points, 4 dims)
arr = np.load(src / "ipsc_bargaje_qpcr/Bifurcation.npy", allow_pickle=True)[0]
np.savez_compressed(
    dst / "ipsc.npz",
    X=np.concatenate(list(arr)).astype(np.float32),
    t=np.concatenate([np.full(len(a), k) for k, a in enumerate(arr)]).astype(np.int8),
)

# moscot proliferation / apoptosis gene sets (BSD-3)
for f in (src / "genesets_moscot").glob("*.txt"):
    shutil.copy(f, dst / f.name)
print(sorted(p.name for p in dst.iterdir()))
