"""One source of truth for the options shared by the YAML config, the estimator and the CLI:
their accepted values, defaults and meaning.  (Covariance types come from the family registry,
:data:`pipeline.families.COVARIANCE_TYPES`.)"""

from __future__ import annotations

import numbers

#: ``init_params``: k-means|| + Lloyd on the chunked data, k-means++ on a sample, random
#: responsibilities, K random rows as means
INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")
#: ``nan_policy``: what NaN in the data means.  "raise": an error naming the chunks; "omit":
#: rows with a NaN are left out of the fit; "marginalize": NaN are values missing at random,
#: marginalised by EM (:mod:`pipeline.kernels.missing`)
NAN_POLICIES = ("raise", "omit", "marginalize")
#: ``init_sample`` (GaussianMixtureIC, YAML ``model.init_sample``): the rows of the uniform
#: sample, drawn in the summary pass, that a sweep's candidates start from (None: every restart
#: starts on the data, as ``GaussianMixture.fit``)
INIT_SAMPLE_DEFAULT = 20_000
#: compute precision of the E step (statistics are accumulated in float64 whatever it is)
DTYPES = ("float32", "float64")
#: ``cache``: keep the data in (worker) memory between passes
CACHE_MODES = ("auto", "memory", "none")
#: ``cluster.kind``
CLUSTER_KINDS = ("local", "address", "slurm", "pbs", "sge", "lsf", "htcondor")

#: ``chunk_rows``: "auto" (the default everywhere) sizes chunks from the data alone
#: (:func:`pipeline.data.chunking.auto_chunk_rows`); None (YAML ``null``, CLI ``store``) keeps
#: the source's own chunks (a Zarr store's chunks, a Dask array's chunks, one chunk for a NumPy
#: array); an integer >= 1 sets the rows per chunk.
CHUNK_ROWS_DEFAULT = "auto"
CHUNK_ROWS_WORDS = ("auto",)
CHUNK_ROWS_ACCEPTED = "None, 'auto' or an integer >= 1"

#: written chunks of Zarr stores we create (``generate``, ``convert``): rows per stored chunk
STORE_CHUNK_ROWS = 65536
#: defaults of synthetic data: :func:`pipeline.data.synthetic.generate_mixture`, YAML
#: ``data.generate`` and ``gmm-pipeline generate``
GENERATE_DEFAULTS = {"seed": 0, "chunk_rows": STORE_CHUNK_ROWS, "dtype": "float32", "separation": 8.0}

#: defaults of a cluster section (YAML ``cluster:``) and of :func:`pipeline.batch.cluster.connect`
CLUSTER_DEFAULTS = {
    "kind": "local",
    "n_workers": 2,
    "threads_per_worker": 1,
    "memory_limit": 4 * 2**30,
    "address": None,
    "host": "127.0.0.1",
    "dashboard": True,
    "security": {},
    "jobqueue": {},
    "timeout": 300.0,
}


def check_chunk_rows(value, name: str = "chunk_rows"):
    """``value`` as accepted by every ``chunk_rows`` (returns "auto", None or an int >= 1).

    Raises ValueError naming ``name`` and the accepted values.
    """
    if value is None or (isinstance(value, str) and value in CHUNK_ROWS_WORDS):
        return value
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return int(value)
    raise ValueError(f"{name} must be {CHUNK_ROWS_ACCEPTED} (None: the source's own chunks); got {value!r}")
