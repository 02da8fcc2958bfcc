"""Initialisation kernels work block by block: same results as on the whole chunk at once,
with temporaries bounded whatever the chunk size."""

import tracemalloc

import numpy as np
import pytest

from pipeline.engine import init


@pytest.fixture
def chunk():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 3)).astype(np.float32) + 100.0
    centres = rng.normal(size=(7, 3)) + 100.0
    return x, centres, np.full(3, 100.0)


def _kernels(x, centres, shift):
    return {
        "cost": init._cost_kernel(x, None, centres, shift),
        "sample": init._sample_kernel(x, None, centres, shift, 0.5, 3, 1),
        "count": init._count_kernel(x, None, centres, shift),
        "lloyd": init._lloyd_kernel(x, None, centres, shift),
        "labels": init._labels_stats_kernel(x, None, centres, shift, "full", "float64"),
        "random": init._random_resp_stats_kernel(x, None, centres, shift, "diag", "float64", 5, block_id=(2, 0)),
    }


def test_blocked_kernels_match_one_block(chunk, monkeypatch):
    x, centres, shift = chunk
    whole = _kernels(x, centres, shift)  # 5000 rows: one block at the default size
    monkeypatch.setattr(init, "INIT_BLOCK_BYTES", 1)  # 256-row blocks: 20 of them
    assert len(list(init._row_blocks(x.shape[0], 7))) == 20
    blocked = _kernels(x, centres, shift)
    for name in ("sample", "count"):
        np.testing.assert_array_equal(blocked[name], whole[name], err_msg=name)
    for name in ("cost", "lloyd", "labels", "random"):
        np.testing.assert_allclose(blocked[name], whole[name], rtol=1e-12, atol=1e-9, err_msg=name)
    # the nearest centre by brute force
    d2 = ((x.astype(np.float64)[:, None, :] - centres[None]) ** 2).sum(axis=2)
    np.testing.assert_array_equal(blocked["count"], np.bincount(d2.argmin(axis=1), minlength=7))
    np.testing.assert_allclose(blocked["cost"][0], d2.min(axis=1).sum(), rtol=1e-9)


def test_kmeans_parallel_kernels_memory_does_not_grow_with_the_chunk():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300_000, 16))
    centres = rng.normal(size=(161, 16))  # k-means|| candidates for K = 16
    shift = np.zeros(16)
    for kernel in (init._count_kernel, init._cost_kernel, init._lloyd_kernel):
        tracemalloc.start()
        kernel(x, None, centres, shift)  # (block, weights, ...): unweighted
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        # one (300k x 161) float64 temporary would be 386 MB; blocks keep a few 8 MiB ones
        # plus (n,) vectors
        assert peak < 60 * 2**20, (kernel.__name__, peak / 2**20)
