"""Whole runs through each way of getting workers: the result equals the `local` run's."""

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import GaussianMixture
from pipeline.batch.config import config_from_dict
from pipeline.batch.runner import run
from tests.test_cli import small_config


def _fit(tmp_path, name, cluster):
    _, cfg = small_config(tmp_path)
    cfg["model"].update(tol=1e-6, dtype="float64")
    cfg["output"].update(dir=str(tmp_path / name), plots=False)
    cfg["cluster"] = {**cfg["cluster"], **cluster}
    result = run(config_from_dict(cfg))
    return GaussianMixture.load(result.out_dir / "model.npz"), result


def _same(a, b):
    np.testing.assert_array_equal(a.history_, b.history_)
    for attr in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=1e-12, atol=1e-14)


def test_kind_address_uses_an_existing_scheduler_and_equals_local(tmp_path, dask_processes):
    local, _ = _fit(tmp_path, "local", {"kind": "local"})
    remote, result = _fit(tmp_path, "address", {"kind": "address", "address": dask_processes})
    _same(remote, local)
    report = json.loads((result.out_dir / "report.json").read_text())
    assert report["cluster"]["scheduler_address"] == dask_processes
    assert report["cluster"]["n_workers"] == 2


@pytest.mark.slurm
def test_kind_slurm_fits_through_real_batch_jobs_and_equals_local(tmp_path, slurm):
    local, _ = _fit(tmp_path, "local", {"kind": "local"})
    jobqueue = {"queue": slurm, "walltime": "00:10:00", "log_directory": str(tmp_path / "slurm-logs"),
                "job_name": "gmm-fit-test"}
    batch, result = _fit(tmp_path, "slurm", {"kind": "slurm", "n_workers": 2, "jobqueue": jobqueue, "timeout": 120})
    _same(batch, local)
    assert result.report["cluster"]["n_workers"] == 2
    assert any(Path(tmp_path / "slurm-logs").iterdir())  # the workers really ran as SLURM jobs
