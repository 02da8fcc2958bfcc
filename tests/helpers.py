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


def set_up_or_skip(script, what: str, require_env: str, timeout: float) -> str:
    """Run a ``scripts/setup_*`` script and return the last line it prints (what it set up: a
    partition, a path).  When it fails, skip the test, unless ``require_env`` is "1" in the
    environment (CI), where that is a failure; either way the message names ``what`` failed
    and ends with the script's last line of output."""
    import pytest

    name, result = f"scripts/{os.path.basename(str(script))}", ""
    try:
        out = subprocess.run([str(script)], capture_output=True, text=True, timeout=timeout)
        output = f"exit code {out.returncode}\n{out.stderr}\n{out.stdout}"
        if out.returncode == 0 and out.stdout.strip():
            result = out.stdout.strip().splitlines()[-1]
    except (OSError, subprocess.TimeoutExpired) as exc:
        output = f"{type(exc).__name__}: {exc}"
    if not result:
        message = f"{name} could not {what}:\n{output}"
        if os.environ.get(require_env) == "1":
            pytest.fail(message + f"\n({require_env}=1, so this is a failure, not a skip)")
        pytest.skip(message.splitlines()[0] + " " + output.strip().splitlines()[-1][:200]
                    + f" (set {require_env}=1 to make this a failure)")
    return result
