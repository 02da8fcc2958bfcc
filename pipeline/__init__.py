"""gmm-pipeline: out-of-core, distributed Gaussian mixture models fitted by EM.

Public entry points: :class:`GaussianMixture`, :class:`GaussianMixtureIC` (a model-selection
sweep in shared passes) and :func:`open_dataset` (imported lazily, so
that ``import pipeline.families`` does not pull in Dask).  The package is layered; each layer
imports only the ones below it (enforced by ``tests/test_layers.py``)::

    batch/        the application: config, cluster, runner, report, plots, cli
    estimators/   scikit-learn-facing: GaussianMixture, GaussianMixtureIC, validation, persistence
    engine/       Dask: passes over row-chunked arrays, summary, EM loop, init, resources
    kernels/      per-chunk NumPy run on the workers
    core/         driver-side NumPy: parameters, E-step plan, statistics algebra, updaters
    options       one source of truth for choices and defaults
    families/     covariance models: the registry, one class per family
    data/         chunking, Zarr I/O, synthetic data, conversion
    storage/      atomic writes, checksummed archives
    exceptions    one exception tree
"""

import logging

__version__ = "0.1.0"
__all__ = ["GaussianMixture", "GaussianMixtureIC", "open_dataset"]

# One logger for the package ("pipeline"; modules log to children of it).  A library prints
# nothing by default: the NullHandler keeps Python's last-resort stderr handler out of the
# way; ``gmm-pipeline`` (pipeline.batch.cli) installs the handlers that print.
logging.getLogger("pipeline").addHandler(logging.NullHandler())


def __getattr__(name):
    if name == "GaussianMixture":
        from pipeline.estimators.gaussian_mixture import GaussianMixture

        return GaussianMixture
    if name == "GaussianMixtureIC":
        from pipeline.estimators.selection import GaussianMixtureIC

        return GaussianMixtureIC
    if name == "open_dataset":
        from pipeline.data.zarr_io import open_dataset

        return open_dataset
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
