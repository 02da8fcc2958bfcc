"""Covariance families: one registry, one class per covariance model.

``get_family(name)`` returns the family object for a ``covariance_type``; adding a family is a
class in one file and a line in :data:`_FAMILIES`.  Every ``covariance_type`` branch of the
project lives in this package.
"""

from __future__ import annotations

from pipeline.families.base import CHOLESKY_ADVICE, CovarianceFamily, warn_floored
from pipeline.families.sklearn import Diag, Full, Spherical, Tied

_FAMILIES: dict[str, CovarianceFamily] = {f.name: f for f in (Full(), Tied(), Diag(), Spherical())}

#: the accepted ``covariance_type`` names, in scikit-learn's order
COVARIANCE_TYPES: tuple[str, ...] = tuple(_FAMILIES)


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


__all__ = ["CHOLESKY_ADVICE", "COVARIANCE_TYPES", "CovarianceFamily", "get_family", "warn_floored"]
