#!/usr/bin/env python
"""Passes over the data and wall time of a BIC sweep: a loop of single fits against
``GaussianMixtureIC`` (issue 12's measurement).

The data (400,000 x 8 float32 by default, generated as the demo's, in 16 Zarr chunks) is
streamed on every pass (``cache="none"``) through a counting identity, so the passes are
counted independently of the estimators' own ``n_passes_``; ``--read-cost`` adds a sleep per
chunk read, as an object store adds latency.  Threaded scheduler, BLAS on one thread per task.

    python scripts/bench_sweep.py [--rows 400000] [--read-cost 0.05] [--skip-loop] [--quick] [--variants]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dask  # noqa: E402
import numpy as np  # noqa: E402
from bench_common import Reads, blas_line, versions_line  # noqa: E402

from pipeline import GaussianMixture, GaussianMixtureIC, open_dataset  # noqa: E402
from pipeline.data.synthetic import generate_mixture  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=400_000)
    ap.add_argument("--read-cost", type=float, default=0.0, help="seconds of sleep per chunk read")
    ap.add_argument("--skip-loop", action="store_true", help="leave out the loop of single fits")
    ap.add_argument("--quick", action="store_true", help="only the default sweep and the candidates one by one")
    ap.add_argument("--variants", action="store_true",
                    help="also the sweeps with incremental EM (incremental_blocks 4, 8) and the Aitken stopping rule")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    ks, types = list(range(2, 9)), ["full", "diag"]
    print(blas_line())
    print(versions_line())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.zarr"
        generate_mixture(path, n_samples=args.rows, n_features=8, n_components=5, seed=0,
                         chunk_rows=args.rows // 16, dtype="float32", separation=2.0)
        rows = []
        with dask.config.set(scheduler="threads"):
            def data():
                reads = Reads(args.read_cost)
                return open_dataset(path, chunk_rows=args.rows // 16).map_blocks(reads, dtype=np.float32), reads

            if not (args.skip_loop or args.quick):
                X, reads = data()
                t, best = time.perf_counter(), None
                for ct in types:
                    for k in ks:
                        gm = GaussianMixture(k, covariance_type=ct, random_state=0, cache="none").fit(X)
                        ic = gm.information_criteria(X)
                        if best is None or ic["bic"] < best[0]:
                            best = (ic["bic"], k, ct, ic["loglik"])
                rows.append(("loop of GaussianMixture fits + bic()", reads.n, time.perf_counter() - t, best))
            sweeps = [("GaussianMixtureIC (default: starts from a 20,000-row sample)", {})]
            if not args.quick:
                sweeps.append(("GaussianMixtureIC, init_sample=None (starts on the data)", {"init_sample": None}))
            if args.variants:
                for b in (4, 8):
                    sweeps.append((f"  default, incremental_blocks={b}", {"incremental_blocks": b}))
                    sweeps.append((f"  init_sample=None, incremental_blocks={b}", {"init_sample": None,
                                                                                   "incremental_blocks": b}))
                sweeps.append(("  default, stopping='aitken'", {"stopping": "aitken"}))
                sweeps.append(("  init_sample=None, stopping='aitken'", {"init_sample": None, "stopping": "aitken"}))
            for label, kw in sweeps:
                X, reads = data()
                t = time.perf_counter()
                ic = GaussianMixtureIC(n_components=ks, covariance_type=types, random_state=0, cache="none",
                                       **kw).fit(X)
                sel = min(ic.criteria_, key=lambda c: c["bic"])
                rows.append((label, reads.n, time.perf_counter() - t,
                             (sel["bic"], sel["n_components"], sel["covariance_type"], sel["loglik"])))
                assert reads.n == ic.n_passes_, (reads.n, ic.n_passes_)
            X, reads = data()  # the same candidates, one sweep each: what sharing the passes saves
            t, best = time.perf_counter(), None
            for ct in types:
                for k in ks:
                    ic = GaussianMixtureIC(n_components=[k], covariance_type=[ct], random_state=0, cache="none").fit(X)
                    c = ic.criteria_[0]
                    if best is None or c["bic"] < best[0]:
                        best = (c["bic"], k, ct, c["loglik"])
            rows.append(("the 14 candidates one by one, each a GaussianMixtureIC of one", reads.n,
                         time.perf_counter() - t, best))
    print(f"{args.rows:,} x 8 float32, 16 chunks, 14 candidates (K = 2..8 x full, diag), read cost "
          f"{args.read_cost} s/chunk, threaded scheduler")
    print(f"{'':64s} {'passes':>7s} {'seconds':>8s}  selected  best mean log-likelihood")
    for label, n, s, (bic, k, ct, ll) in rows:
        print(f"{label:64s} {n:7d} {s:8.1f}  {ct},{k}    {ll:.6f}")


if __name__ == "__main__":
    main()
