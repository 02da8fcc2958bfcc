"""gmm-pipeline: out-of-core, distributed Gaussian mixture models fitted by EM."""

from pipeline.model import GaussianMixture

__all__ = ["GaussianMixture"]
__version__ = "0.1.0"
