"""scikit-learn-facing estimators: GaussianMixture, input validation, persistence."""
