"""Exceptions and warnings raised by gmm-pipeline.

Every error names what was wrong and where (file, YAML key, chunk index) and, where it can,
what to do about it.  All derive from :class:`GMMPipelineError` so callers can catch them together;
the ones about bad values also derive from :class:`ValueError`, as scikit-learn users expect.
"""

from sklearn.exceptions import ConvergenceWarning as _SklearnConvergenceWarning


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


class OutputExistsError(GMMPipelineError, FileExistsError):
    """An output would overwrite an earlier run's results and overwriting was not asked for."""


class CheckpointError(GMMPipelineError, ValueError):
    """A checkpoint cannot be used to resume this run (different config or data, or corrupt)."""


class CovarianceError(GMMPipelineError, ValueError):
    """A covariance matrix is not positive definite (a collapsed or degenerate component)."""


class ConvergenceWarning(_SklearnConvergenceWarning):
    """EM stopped at ``max_iter`` before the change of the mean log-likelihood fell below ``tol``.

    A subclass of :class:`sklearn.exceptions.ConvergenceWarning`, so that filters written for
    scikit-learn's estimators catch it too.
    """
