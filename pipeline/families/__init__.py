"""Covariance families: one registry, one class per covariance model.

``get_family(name)`` returns the family object for a ``covariance_type``; adding a family is a
class in one file and a line here.  scikit-learn's names (full, tied, diag, spherical) and
mclust's (VVV, EEE, VVI, VII) name the same four family objects.  Every ``covariance_type`` branch of the
project lives in this package.
"""

from __future__ import annotations

import numpy as np

from pipeline.families.base import CHOLESKY_ADVICE, CovarianceFamily, warn_floored
from pipeline.families.mclust import EEI, EEV, EII, EVE, EVI, EVV, VEE, VEI, VEV, VVE
from pipeline.families.sklearn import Diag, Full, Spherical, Tied

_SKLEARN = (Full(), Tied(), Diag(), Spherical())
_OTHERS = {f.name: f for f in (EII(), EEI(), VEI(), EVI(), VEE(), EVE(), VVE(), EEV(), VEV(), EVV())}

#: R mclust's 14 models, in mclust's order (its ``mclust.options("emModelNames")``)
MCLUST_MODELS: tuple[str, ...] = (
    "EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE", "VEE", "EVE", "VVE", "EEV", "VEV", "EVV", "VVV",
)

_FAMILIES: dict[str, CovarianceFamily] = {f.name: f for f in _SKLEARN}
_FAMILIES.update({f.mclust_name: f for f in _SKLEARN})  # VVV, EEE, VVI, VII: aliases
_FAMILIES.update(_OTHERS)
assert set(MCLUST_MODELS) <= set(_FAMILIES)

#: the accepted ``covariance_type`` names: scikit-learn's four, then mclust's 14
COVARIANCE_TYPES: tuple[str, ...] = tuple(f.name for f in _SKLEARN) + MCLUST_MODELS


def get_family(name) -> CovarianceFamily:
    """The family of ``covariance_type`` ``name`` (a family object is returned as it is).

    Raises ValueError naming the accepted names.
    """
    if isinstance(name, CovarianceFamily):
        return name
    try:
        return _FAMILIES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"covariance_type must be one of {', '.join(COVARIANCE_TYPES)}; got {name!r}"
        ) from None


def to_family_form(name, array, n_components: int, n_features: int, what: str = "precisions_init"):
    """``array`` (float64) in the storage of family ``name``.  For mclust's model names (K, D, D)
    matrices are accepted for every model and reduced to its storage (diagonals, scalars, the
    shared matrix), a ValueError if they lack its structure; other arrays, and every array
    for scikit-learn's names, are returned as they are (their shape is checked by callers)."""
    array = np.asarray(array, dtype=np.float64)
    family = get_family(name)
    full = (n_components, n_features, n_features)
    if name in MCLUST_MODELS and array.shape == full != family.covariance_shape(n_components, n_features):
        return family.from_full_matrices(array, what)
    return array


__all__ = ["CHOLESKY_ADVICE", "COVARIANCE_TYPES", "MCLUST_MODELS", "CovarianceFamily", "get_family", "to_family_form", "warn_floored"]
