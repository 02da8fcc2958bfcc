"""The hand-built per-chunk graphs of pipeline.engine.graph: tree reduction, order, block ids, errors."""

import dask
import dask.array as da
import numpy as np
import pytest

from pipeline.engine.graph import SPLIT_EVERY, per_block, reduce_blocks


def _stats(block, scale, offset=0.0):
    x = np.asarray(block, dtype=np.float64)
    return np.concatenate([[x.shape[0]], scale * x.sum(axis=0) + offset])


@pytest.mark.parametrize("n_chunks", [1, 2, SPLIT_EVERY, SPLIT_EVERY + 1, 3 * SPLIT_EVERY * SPLIT_EVERY + 5])
def test_tree_reduction_equals_direct_sum_for_any_number_of_chunks(n_chunks):
    """No sum level (one chunk), one, two and three levels of the fan-in-16 tree all give the
    plain sum."""
    rng = np.random.default_rng(n_chunks)
    X = rng.normal(size=(n_chunks * 3, 4))
    Xd = da.from_array(X, chunks=(3, -1))
    assert Xd.numblocks[0] == n_chunks
    scale = dask.delayed(np.float64(2.0), pure=True)
    with dask.config.set(scheduler="threads"):
        total = reduce_blocks(Xd, _stats, 5, scale, offset=1.0)
    np.testing.assert_allclose(total[0], X.shape[0])
    np.testing.assert_allclose(total[1:], 2.0 * X.sum(axis=0) + Xd.numblocks[0], rtol=1e-12)


def test_per_block_rows_come_in_chunk_order_with_block_ids():
    X = np.arange(40, dtype=np.float64).reshape(20, 2)
    Xd = da.from_array(X, chunks=(6, -1))  # 6, 6, 6, 2 rows

    def first_and_id(block, block_id=None):
        return [block[0, 0], block.shape[0], block_id[0], block_id[1]]

    rows = per_block(Xd, first_and_id, 4, pass_block_id=True)
    np.testing.assert_array_equal(rows, [[0, 6, 0, 0], [12, 6, 1, 0], [24, 6, 2, 0], [36, 2, 3, 0]])


def test_kernel_returning_the_wrong_length_is_an_error_naming_it():
    Xd = da.from_array(np.ones((10, 2)), chunks=(5, -1))

    def too_short(block):
        return np.zeros(2)

    with pytest.raises(ValueError, match="too_short returned shape"):
        reduce_blocks(Xd, too_short, 3)
    with pytest.raises(ValueError, match="too_short returned rows"):
        per_block(Xd, too_short, 3)


def test_unsupported_arguments_are_refused_with_a_clear_error():
    Xd = da.from_array(np.ones((10, 2)), chunks=(5, -1))
    with pytest.raises(TypeError, match="only dask.delayed"):
        reduce_blocks(Xd, _stats, 3, da.ones(3))
    with pytest.raises(TypeError, match="positional"):
        reduce_blocks(Xd, _stats, 3, 1.0, offset=dask.delayed(1.0))
    with pytest.raises(ValueError, match="chunked along rows only"):
        reduce_blocks(da.from_array(np.ones((10, 4)), chunks=(5, 2)), _stats, 5, 1.0)
