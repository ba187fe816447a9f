"""leave_one_out's fits in parallel through joblib: a Dask cluster gives exactly the serial result (issue 17)."""

from __future__ import annotations

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY

import sctraj

# three methods that read different inputs: plain OT-CFM, VGFM (growth weights in the score) and Meta FM (needs the
# population column shipped to the workers)
KW = dict(methods=["otcfm", "vgfm", "metafm"], use_rep="X_pca", seeds=(0, 1), population_key="replicate",
          references=False, **{**TINY, "n_steps": 12})


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    # every column but the wall time must be identical
    pd.testing.assert_frame_equal(a.drop(columns="fit_seconds"), b.drop(columns="fit_seconds"), check_exact=True)


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]


def test_leave_one_out_on_dask_equals_serial(adata_time):
    from dask.distributed import Client, LocalCluster, get_task_stream

    serial = sctraj.tl.leave_one_out(adata_time, "time", **KW)
    assert len(serial) == 6 and np.isfinite(serial["W1"]).all()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # a parent setting the tasks must not leave changed
    blas = _blas_threads()
    try:
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
                Client(cluster) as client, get_task_stream(client) as stream:
            with joblib.parallel_backend("dask"):
                par = sctraj.tl.leave_one_out(adata_time, "time", n_jobs=2, **KW)
            assert torch.get_num_threads() == 2
            assert _blas_threads() == blas
            workers = set(client.scheduler_info()["workers"])
        ran_on = {task["worker"] for task in stream.data}
        assert ran_on and ran_on <= workers  # the fits really ran as tasks on the cluster's workers
    finally:
        torch.set_num_threads(threads)
    _same(serial, par)
    assert "X_pca" not in adata_time.obsm or "_sctraj_loo" not in adata_time.uns  # the user's AnnData untouched


def test_leave_one_out_ships_only_needed_columns(adata_time):
    from sctraj.tl._benchmark import _task_obs

    obs = _task_obs(adata_time, "time", {"population_key": "replicate", "n_steps": 3, "method_like": "not_a_column"})
    assert list(obs.columns) == ["time", "replicate"]


def test_leave_one_out_n_jobs_errors(adata_time):
    with pytest.raises(ValueError, match="threads_per_task"):
        sctraj.tl.leave_one_out(adata_time, "time", methods=["icfm"], use_rep="X_pca", threads_per_task=0, **TINY)
