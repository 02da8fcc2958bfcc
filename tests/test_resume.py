"""A fit interrupted at any point and resumed from its checkpoint ends with the same model."""

import numpy as np
import pytest

from pipeline import GaussianMixture
from pipeline.estimators.persistence import load_checkpoint, save_checkpoint
from pipeline.exceptions import CheckpointError
from tests.helpers import blobs


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("stop_at", [(0, 3), (1, 1), (1, 6), (2, 2)])
def test_fit_resumed_from_a_checkpoint_equals_the_uninterrupted_fit(tmp_path, stop_at):
    X, _ = blobs(600, centres=((0, 0), (4, 0), (0, 4), (4, 4)), seed=30)
    kw = dict(n_components=4, n_init=3, init_params="k-means++", random_state=7, tol=1e-4, max_iter=60, chunk_rows=500)
    full = GaussianMixture(**kw).fit(X)
    ck = tmp_path / "ck.npz"
    seen = []

    def checkpoint_then_maybe_stop(info):
        save_checkpoint(ck, info.state, {"note": "test"})
        seen.append((info.state.init, info.n_iter))
        if (info.state.init, info.n_iter) == stop_at:
            raise Interrupt

    with pytest.raises(Interrupt):
        GaussianMixture(**kw).fit(X, callback=checkpoint_then_maybe_stop)
    state, meta = load_checkpoint(ck)
    assert meta["note"] == "test" and state.init == stop_at[0] and len(state.history) == stop_at[1]
    resumed = GaussianMixture(**kw).fit(X, resume=state)
    assert resumed.best_init_ == full.best_init_
    np.testing.assert_array_equal(resumed.history_, full.history_)
    np.testing.assert_array_equal(resumed.means_, full.means_)
    np.testing.assert_array_equal(resumed.covariances_, full.covariances_)
    assert [h[-1] for h in resumed.init_history_] == [h[-1] for h in full.init_history_]


def test_damaged_checkpoint_is_refused(tmp_path):
    ck = tmp_path / "ck.npz"
    ck.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="ck.npz"):
        load_checkpoint(ck)
