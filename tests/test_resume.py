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


def test_a_sweep_checkpoint_round_trips_and_an_old_one_is_refused_clearly(tmp_path):
    """Every run of a sweep (params or none, history, status, reason, scores, n_iter) comes back
    exactly; the lead run names the checkpoint; a one-candidate checkpoint of the earlier format
    is refused with a CheckpointError saying to run without --resume."""
    from pipeline.estimators.persistence import SweepRunState, SweepState, load_sweep_checkpoint, save_sweep_checkpoint

    X = blobs(300, seed=2)[0]
    fit = GaussianMixture(2, random_state=0, max_iter=3).fit(X)
    p = fit._params()
    runs = [SweepRunState("k2-full", 0, p, [-3.0, -2.5], "converged", None, (-750.0, 300.0, -1.5), 2),
            SweepRunState("k2-full", 1, None, [], "failed", "initialisation: collapsed", None, 0),
            SweepRunState("k3-full", 0, p, [-3.1], "running", None, None, 1)]
    ck = tmp_path / "sweep.npz"
    save_sweep_checkpoint(ck, SweepState(runs, 2, 1.5, {"k2-full": 0.7}), {"config": {"a": 1}})
    state, meta = load_sweep_checkpoint(ck)
    assert meta["config"] == {"a": 1} and (state.n_pass, state.elapsed, state.seconds) == (2, 1.5, {"k2-full": 0.7})
    for a, b in zip(state.runs, runs):
        assert (a.candidate, a.restart, a.history, a.status, a.reason, a.scores, a.n_iter) == (
            b.candidate, b.restart, b.history, b.status, b.reason, b.scores, b.n_iter)
        assert (a.params is None) == (b.params is None)
        if a.params is not None:
            np.testing.assert_array_equal(a.params.means, b.params.means)
            np.testing.assert_array_equal(a.params.precisions_cholesky, b.params.precisions_cholesky)
    assert (state.candidate, state.init, state.history) == ("k3-full", 0, [-3.1])
    old = tmp_path / "old.npz"
    fit2 = GaussianMixture(2, random_state=0, max_iter=2)
    fit2.fit(X, callback=lambda info: save_checkpoint(old, info.state, {}))
    with pytest.raises(CheckpointError, match="fitted the candidates one after another.*run without --resume"):
        load_sweep_checkpoint(old)
