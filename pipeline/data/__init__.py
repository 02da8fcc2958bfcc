"""Bytes in and out: chunking, Zarr I/O, synthetic data, conversion."""
