"""Small generated data sets shared by the tests (no downloads)."""

import os
import signal
import subprocess

import numpy as np


def blobs(n_per=2000, centres=((0, 0, 0), (6, 6, 0), (0, 9, 4)), seed=0, offset=0.0):
    """Anisotropic Gaussian clusters; returns (X (n, D) float64, labels (n,))."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k, c in enumerate(centres):
        d = len(c)
        a = rng.normal(size=(d, d)) * 0.6 + np.eye(d)
        xs.append(rng.normal(size=(n_per, d)) @ a + np.asarray(c, dtype=float))
        ys.append(np.full(n_per, k))
    perm = rng.permutation(n_per * len(centres))
    return (np.concatenate(xs) + offset)[perm], np.concatenate(ys)[perm]


def sklearn_initial_params(X, k, covariance_type, seed=0):
    """Initial (weights, means, precisions) from scikit-learn's own k-means initialisation."""
    import warnings

    from sklearn.mixture import GaussianMixture as SK

    sk = SK(k, covariance_type=covariance_type, max_iter=0, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk.fit(X)
    return sk.weights_, sk.means_, sk.precisions_


def kill_run_at(command, marker: str) -> list[str]:
    """Start ``command`` (a ``gmm-pipeline run``) in its own session, read its output until a
    line contains ``marker``, then SIGKILL the whole session (the driver and its local cluster,
    at once); returns the lines seen, after checking that it died of the kill."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            os.killpg(proc.pid, signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)
    return seen
