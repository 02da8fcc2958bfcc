"""Passes over the data with Dask: graphs, summary, EM loop, initialisation, resources."""
