"""Synthetic Gaussian-mixture data written to Zarr chunk by chunk.

:func:`generate_mixture` writes a Gaussian mixture chunk by chunk; chunk ``i`` is drawn from
``np.random.default_rng([seed, i])``, so the data depends on ``(seed, chunk_rows)`` only, never on
the machine, and a 50 GB data set needs only one chunk of memory.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import zarr

from pipeline.exceptions import OutputExistsError
from pipeline.options import GENERATE_DEFAULTS
from pipeline.storage.atomic import write_dir_atomically
from pipeline.storage.stores import location_of, zarr_destination

#: parameters of :func:`generate_mixture` come from this stream, independent of every chunk's
_PARAMS_SPAWN_KEY = (1,)


def _mixture_parameters(
    n_features: int, n_components: int, seed: int, separation: float
) -> dict[str, np.ndarray]:
    """True weights (K,), means (K, D) and full covariances (K, D, D), all float64.

    Weights ~ Dirichlet(5, ..., 5) (no vanishing component); means ~ N(0, separation^2 I), so
    two means are typically ``separation * sqrt(2 D)`` apart; covariance k is
    ``Q_k diag(s_k^2) Q_k^T`` with a random rotation ``Q_k`` and scales ``s_k ~ U(0.5, 1.5)``.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=_PARAMS_SPAWN_KEY))
    weights = rng.dirichlet(np.full(n_components, 5.0))
    means = rng.normal(0.0, separation, size=(n_components, n_features))
    covariances = np.empty((n_components, n_features, n_features))
    for k in range(n_components):
        q, r = np.linalg.qr(rng.normal(size=(n_features, n_features)))
        q *= np.sign(np.diag(r))  # uniform (Haar) rotation
        scales = rng.uniform(0.5, 1.5, size=n_features)
        covariances[k] = (q * scales**2) @ q.T
    covariances = 0.5 * (covariances + covariances.transpose(0, 2, 1))
    return {"weights": weights, "means": means, "covariances": covariances}


def _mixture_chunk(
    params: dict[str, np.ndarray], n: int, rng: np.random.Generator, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` samples: X (n, D) of ``dtype`` and labels (n,) int32."""
    weights, means, covs = params["weights"], params["means"], params["covariances"]
    labels = rng.choice(len(weights), size=n, p=weights).astype(np.int32)
    z = rng.standard_normal(size=(n, means.shape[1]))
    x = np.empty_like(z)
    for k in range(len(weights)):
        rows = labels == k
        chol = np.linalg.cholesky(covs[k])
        x[rows] = means[k] + z[rows] @ chol.T
    return x.astype(dtype, copy=False), labels


def generate_mixture(
    out_path: str | os.PathLike,
    n_samples: int,
    n_features: int,
    n_components: int,
    seed: int = GENERATE_DEFAULTS["seed"],
    chunk_rows: int = GENERATE_DEFAULTS["chunk_rows"],
    dtype: str = GENERATE_DEFAULTS["dtype"],
    separation: float = GENERATE_DEFAULTS["separation"],
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> dict[str, Any]:
    """Write a synthetic Gaussian mixture to a new Zarr v3 group at ``out_path``.

    The group holds ``X`` (n_samples, n_features) ``dtype`` chunked ``(chunk_rows,
    n_features)``, ``labels`` (n_samples,) int32 (the true component of each row), and the true
    parameters ``weights`` (K,), ``means`` (K, D), ``covariances`` (K, D, D) as float64 arrays;
    the group attributes record the generator's arguments.  Chunk ``i`` is drawn from
    ``np.random.default_rng([seed, i])`` and written before the next is made, so memory is one
    chunk; the result is reproducible given ``(seed, chunk_rows)``.  Written to a temporary
    sibling and renamed into place; on an object store (``out_path`` a URL, with fsspec's
    ``storage_options``) written in place, the group's root metadata last.

    Returns
    -------
    dict with ``weights``, ``means``, ``covariances`` (NumPy float64) and ``seed``,
    ``n_samples``, ``n_features``, ``n_components``, ``separation``, ``path``.

    Raises
    ------
    OutputExistsError if ``out_path`` exists and ``overwrite`` is False; ValueError for bad sizes.
    """
    final = location_of(out_path, storage_options)
    for name, v in (("n_samples", n_samples), ("n_features", n_features),
                    ("n_components", n_components), ("chunk_rows", chunk_rows)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"generate_mixture: {name} must be an integer >= 1, got {v!r}")
    if n_components > n_samples:
        raise ValueError(
            f"generate_mixture: n_components ({n_components}) > n_samples ({n_samples})"
        )
    if final.exists() and not overwrite:
        raise OutputExistsError(
            f"{final} already exists; delete it, choose another path, or pass overwrite=True"
        )
    dtype = np.dtype(dtype)
    params = _mixture_parameters(n_features, n_components, seed, float(separation))
    attrs = {
        "generator": "pipeline.data.synthetic.generate_mixture",
        "seed": int(seed),
        "n_samples": int(n_samples),
        "n_features": int(n_features),
        "n_components": int(n_components),
        "chunk_rows": int(chunk_rows),
        "separation": float(separation),
        "dtype": dtype.name,
    }

    def write(tmp) -> None:
        with zarr_destination(tmp) as store:
            group = zarr.open_group(store, mode="w-", zarr_format=3, attributes=attrs)
            X = group.create_array("X", shape=(n_samples, n_features),
                                   chunks=(min(chunk_rows, n_samples), n_features), dtype=dtype)
            labels = group.create_array("labels", shape=(n_samples,),
                                        chunks=(min(chunk_rows, n_samples),), dtype=np.int32)
            for name, value in params.items():
                group.create_array(name, data=value)
            for i, start in enumerate(range(0, n_samples, chunk_rows)):
                stop = min(start + chunk_rows, n_samples)
                x, lab = _mixture_chunk(params, stop - start, np.random.default_rng([seed, i]), dtype)
                X[start:stop] = x
                labels[start:stop] = lab

    write_dir_atomically(final, write, overwrite=overwrite)
    return {**params, **{k: v for k, v in attrs.items() if k != "generator"}, "path": str(final)}
