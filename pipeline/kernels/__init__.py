"""Per-chunk NumPy kernels run on the workers."""
