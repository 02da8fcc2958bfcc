"""Driver-side NumPy between passes: parameters, E-step plan, statistics algebra, updaters."""
