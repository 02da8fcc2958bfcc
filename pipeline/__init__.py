"""gmm-pipeline: out-of-core, distributed Gaussian mixture models fitted by EM."""

__version__ = "0.1.0"
__all__ = ["GaussianMixture"]


def __getattr__(name):  # lazy, so that `import pipeline.stats` does not pull in Dask
    if name == "GaussianMixture":
        from pipeline.model import GaussianMixture

        return GaussianMixture
    raise AttributeError(name)
