"""Exceptions and warnings raised by gmm-pipeline.

Every error names what was wrong and where (file, YAML key, chunk index) and, where it can,
what to do about it.  All derive from :class:`GMMPipelineError` so callers can catch them together;
the ones about bad values also derive from :class:`ValueError`, as scikit-learn users expect.
"""


class GMMPipelineError(Exception):
    """Base class of all gmm-pipeline errors."""


class ConfigError(GMMPipelineError, ValueError):
    """A run configuration (YAML file or ``--set`` override) is invalid."""


class DataError(GMMPipelineError, ValueError):
    """Input data is unusable: wrong shape or dtype, empty, or non-finite values."""


class ModelFileError(GMMPipelineError, ValueError):
    """A saved model file is missing, truncated, tampered with or of an unknown version."""


class ClusterError(GMMPipelineError, RuntimeError):
    """A Dask cluster could not be created, reached or scaled."""


class SchedulerLostError(ClusterError):
    """The Dask scheduler went away during a run (stopped, killed or unreachable); nothing was
    published and the staging directory, with its checkpoint, was kept for ``--resume``."""


class OutputExistsError(GMMPipelineError, FileExistsError):
    """An output would overwrite an earlier run's results and overwriting was not asked for."""


class CheckpointError(GMMPipelineError, ValueError):
    """A checkpoint cannot be used to resume this run (different config or data, or corrupt)."""


class CovarianceError(GMMPipelineError, ValueError):
    """A covariance matrix is not positive definite (a collapsed or degenerate component)."""


class OutputWriteError(GMMPipelineError, OSError):
    """The outputs could not be written (a full disk, a read-only or forbidden location);
    nothing was published and the run's staging directory was removed."""


def _convergence_warning():
    from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning

    class ConvergenceWarning(SklearnConvergenceWarning):
        """EM stopped at ``max_iter`` before the change of the mean log-likelihood fell below ``tol``.

        A subclass of :class:`sklearn.exceptions.ConvergenceWarning`, so that filters written for
        scikit-learn's estimators catch it too.
        """

    ConvergenceWarning.__module__ = __name__
    ConvergenceWarning.__qualname__ = "ConvergenceWarning"
    return ConvergenceWarning


def __getattr__(name):
    # ConvergenceWarning is made on first use: importing scikit-learn costs ~40 MB, which Dask
    # workers (they import this module through the kernels) must not pay
    if name == "ConvergenceWarning":
        globals()[name] = cls = _convergence_warning()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class MemoryBudgetError(GMMPipelineError, MemoryError):
    """What a computation would hold does not fit the memory it may use (a worker's memory
    limit, the driver's memory): raised before any pass, with the figures and what to change."""
