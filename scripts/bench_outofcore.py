#!/usr/bin/env python
"""Benchmark: EM on Zarr-streamed vs persisted data, against the raw Zarr read rate.

For each size, on a LocalCluster of worker processes (127.0.0.1):

- ``read+sum``: one pass that only reads, decompresses and sums the Zarr array (the floor for
  any streamed algorithm);
- ``EM streamed``: per-iteration time of EM with ``cache="none"`` (every iteration re-reads Zarr);
- ``EM persisted``: the same with ``cache="memory"`` (read once, kept in worker memory);
- peak resident memory of any worker during the streamed fit (VmHWM) next to its memory_limit.

Usage::

    python scripts/bench_outofcore.py                     # sizes 1e6, 4e6, 1.6e7 rows x 16 float32
    python scripts/bench_outofcore.py --rows 1e6 2e6 --k 4 --covariance-type diag

Timings exclude initialisation (the per-iteration seconds come from the fit's callback; the
median over ``--iters`` iterations is shown).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def peak_rss(dask_worker=None):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak(dask_worker=None):
    """Reset the kernel's high-water mark of this process (Linux: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=float, nargs="+", default=[1e6, 4e6, 1.6e7])
    p.add_argument("--d", type=int, default=16)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--covariance-type", default="full")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--chunk-rows", type=int, default=65536)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--memory-limit", default="4GiB")
    p.add_argument("--dir", default=None, help="where to write the Zarr data (default: a temp dir)")
    args = p.parse_args(argv)

    from dask.utils import format_bytes, parse_bytes
    from distributed import Client, LocalCluster

    from pipeline import GaussianMixture
    from pipeline.data.synthetic import generate_mixture
    from pipeline.data.zarr_io import open_dataset

    base = Path(args.dir or tempfile.mkdtemp(prefix="gmm-bench-"))
    limit = parse_bytes(args.memory_limit)
    rows_out = []
    print(f"# machine: {os.cpu_count()} cores; {args.workers} worker processes x 1 thread, memory_limit "
          f"{format_bytes(limit)} each; D={args.d} K={args.k} {args.covariance_type} float32, chunk {args.chunk_rows} rows")
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit=limit) as cluster, Client(cluster) as client:
        for n in (int(r) for r in args.rows):
            path = base / f"bench-{n}x{args.d}.zarr"
            if not path.exists():
                t = time.perf_counter()
                truth = generate_mixture(path, n_samples=n, n_features=args.d, n_components=args.k, seed=0,
                                         chunk_rows=args.chunk_rows, dtype="float32", separation=3.0)
                gen_s = time.perf_counter() - t
            else:
                import zarr

                g = zarr.open_group(path, mode="r")
                truth = {"means": g["means"][:]}
                gen_s = float("nan")
            X = open_dataset(path)
            on_disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

            X.sum(axis=0, dtype="float64").compute()  # warm-up (page cache, worker imports)
            t = time.perf_counter()
            X.sum(axis=0, dtype="float64").compute()
            read_s = time.perf_counter() - t

            result = {"rows": n, "nbytes": X.nbytes, "on_disk": on_disk, "read_s": read_s, "gen_s": gen_s}
            for cache in ("none", "memory"):
                client.run(reset_peak)
                secs = []
                gm = GaussianMixture(args.k, covariance_type=args.covariance_type, dtype="float32",
                                     max_iter=args.iters, tol=0, means_init=truth["means"] + 0.05, cache=cache)
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    gm.fit(X, callback=lambda info: secs.append(info.seconds))
                result[f"{cache}_s"] = statistics.median(secs)
                result[f"{cache}_peak"] = max(client.run(peak_rss).values())
                client.cancel(list(client.futures))  # drop persisted data before the next size
            rows_out.append(result)
            print(f"  done {n:,} rows", flush=True)
    print()
    hdr = ("rows", "data", "zarr on disk", "read+sum s", "read rows/s", "EM streamed s/it", "streamed rows/s",
           "EM persisted s/it", "persisted rows/s", "streamed/read", "peak worker mem (streamed)")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in rows_out:
        n = r["rows"]
        print(
            f"| {n:,} | {format_bytes(r['nbytes'])} | {format_bytes(r['on_disk'])} | {r['read_s']:.2f} | "
            f"{n / r['read_s']:,.0f} | {r['none_s']:.2f} | {n / r['none_s']:,.0f} | {r['memory_s']:.2f} | "
            f"{n / r['memory_s']:,.0f} | {r['none_s'] / r['read_s']:.2f} | "
            f"{format_bytes(r['none_peak'])} of {format_bytes(limit)} |"
        )
    if args.dir is None:
        shutil.rmtree(base, ignore_errors=True)
    return rows_out


if __name__ == "__main__":
    main()
