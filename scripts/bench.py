#!/usr/bin/env python
"""Benchmark of one EM iteration: gmm-pipeline against scikit-learn and Spark MLlib.

Everything is measured in the same run, on the same synthetic data (seeded, in memory, float64
and a float32 copy), from the same initial parameters, with ``tol=0`` so every implementation
runs exactly ``--iters`` EM iterations.  The script prints (and with ``--json`` writes):

1. the machine (cores, BLAS via threadpoolctl, load) and the measured tall-GEMM throughput
   ``A (65536 x D) @ B (D x D)``, best of several runs with NumPy's default threads;
2. the main table, full covariance: seconds per EM iteration (initialisation excluded),
   GFLOP/s under the FLOP model ``4 N K D^2`` per iteration, % of the measured GEMM peak of the
   same dtype, and the speed-up against scikit-learn (same dtype) and Spark MLlib (float64);
   plus the largest relative difference of the log-likelihood trajectories;
3. with ``--scaling``: s/iteration against N (also on the LocalCluster) and against K;
4. LocalCluster against threaded at N = ``--dist-n`` (1e7): ``--dist-rounds`` alternating pairs
   of fits per dtype and the median of their ratios;
5. diag and spherical covariance: rows/s of an EM iteration against a pass that only reads
   and sums the same array (in memory and from a Zarr copy).

How each figure is timed:

- gmm-pipeline: median of ``info.seconds`` over the fit's per-iteration callbacks (E step over
  all chunks, reduction, M step on the driver; the data summary and the initialisation are
  outside).  Chunks: ``--chunk-rows`` or, by default, what the estimator would choose for X
  (``pipeline.data.chunking.auto_chunk_rows``).  Threaded scheduler: X is
  ``da.from_array(X, chunks=(chunk_rows, -1))`` persisted, and BLAS is limited to 1 thread
  (threadpoolctl) inside Dask's threads unless the row says otherwise.  LocalCluster: 2 worker processes x 1 thread on 127.0.0.1, the chunks
  scattered to the workers before the fit (as persisted data would be).
- scikit-learn: a subclass records the clock at the end of ``_initialize`` and at the end of
  every EM iteration (``_print_verbose_msg_iter_end``, called after E step, M step and lower
  bound); the median of the differences.  sklearn's own initialisation (it always runs one,
  here the cheap ``random_from_data``, before applying the given ``*_init``) and its final
  E step are thereby excluded.  Falls back to ``(t(iters) - t(1)) / (iters - 1)`` if those
  private hooks disappear.
- Spark MLlib: the RDD API (``trainGaussianMixtureModel`` with an initial model, the only Spark
  GMM API that accepts initial parameters), the data cached in the JVM as ``RDD[Vector]`` and
  counted before timing; ``(t(maxIterations=iters) - t(maxIterations=1)) / (iters - 1)`` after a
  warm-up run, which cancels Spark's per-run setup (conversion to Breeze vectors and caching).
  Spark does not report its log-likelihood: the mean log-likelihood of its final model is
  computed here (NumPy/SciPy) and compared with that of our final model.

Run:  python scripts/bench.py [--quick] [--scaling] [--json bench.json]
Needs the ``bench`` extra (scikit-learn, pyspark, psutil) and Java 17 for Spark.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import dask  # noqa: E402
import dask.array as da  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from pipeline import GaussianMixture  # noqa: E402
from pipeline.data.chunking import auto_chunk_rows  # noqa: E402

SEED = 12345
GEMM_ROWS = 65536


# ----------------------------------------------------------------------------------------------
# data and initial parameters
# ----------------------------------------------------------------------------------------------


def make_data(n: int, d: int, k: int, seed: int = SEED, block: int = 1_000_000) -> np.ndarray:
    """Synthetic Gaussian mixture (n, d) float64: k components, random means and covariances."""
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 3.0, size=(k, d))
    chols = []
    for _ in range(k):
        a = rng.standard_normal((d, d))
        chols.append(np.linalg.cholesky(a @ a.T / d + 0.25 * np.eye(d)))
    weights = rng.dirichlet(np.full(k, 5.0))
    X = np.empty((n, d))
    for start in range(0, n, block):
        stop = min(start + block, n)
        lab = rng.choice(k, size=stop - start, p=weights)
        z = rng.standard_normal((stop - start, d))
        out = X[start:stop]
        for j in range(k):
            rows = lab == j
            out[rows] = means[j] + z[rows] @ chols[j].T
    return X


def initial_params(X: np.ndarray, k: int, covariance_type: str, seed: int = SEED) -> dict:
    """weights_init (K,), means_init (K, D), precisions_init for ``covariance_type``.

    Means are K distinct random rows, weights uniform, covariances the data's covariance (on a
    sample of at most 200 000 rows) for every component: cheap, deterministic and shared by all
    implementations.
    """
    rng = np.random.default_rng(seed + k)
    n, d = X.shape
    means = X[np.sort(rng.choice(n, size=k, replace=False))].astype(np.float64)
    sample = X[: min(n, 200_000)].astype(np.float64)
    cov = np.cov(sample, rowvar=False)
    if covariance_type in ("full", "tied"):  # tied: K equal matrices, accepted for the mclust names
        prec = np.linalg.inv(cov)
        prec = 0.5 * (prec + prec.T)
        precisions = np.repeat(prec[None], k, axis=0)
    elif covariance_type == "diag":
        precisions = np.repeat((1.0 / np.diag(cov))[None], k, axis=0)
    elif covariance_type == "spherical":
        precisions = np.full(k, 1.0 / np.mean(np.diag(cov)))
    else:
        raise ValueError(covariance_type)
    return {"weights_init": np.full(k, 1.0 / k), "means_init": means, "precisions_init": precisions}


def covariances_of(init: dict) -> np.ndarray:
    """Full covariances (K, D, D) from full precisions_init."""
    return np.stack([np.linalg.inv(p) for p in init["precisions_init"]])


def mean_loglik_full(X: np.ndarray, weights, means, covariances, block: int = 65536) -> float:
    """Mean log-likelihood of X under a full-covariance mixture (float64, by blocks of rows)."""
    from scipy import linalg
    from scipy.special import logsumexp

    k, d = means.shape
    chols = [linalg.cholesky(np.asarray(c, dtype=np.float64), lower=True) for c in covariances]
    const = np.log(weights) - 0.5 * d * math.log(2 * math.pi) - np.array([np.log(np.diag(c)).sum() for c in chols])
    total = 0.0
    for start in range(0, X.shape[0], block):
        x = np.asarray(X[start : start + block], dtype=np.float64)
        lp = np.empty((x.shape[0], k))
        for j in range(k):
            y = linalg.solve_triangular(chols[j], (x - means[j]).T, lower=True)
            lp[:, j] = const[j] - 0.5 * np.einsum("ij,ij->j", y, y)
        total += float(logsumexp(lp, axis=1).sum())
    return total / X.shape[0]


def max_rel_diff(a, b) -> float | None:
    """Largest |a_i - b_i| / |b_i| over the common prefix of two trajectories."""
    if a is None or b is None:
        return None
    m = min(len(a), len(b))
    if m == 0:
        return None
    a, b = np.asarray(a[:m], dtype=np.float64), np.asarray(b[:m], dtype=np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


# ----------------------------------------------------------------------------------------------
# machine and GEMM peak
# ----------------------------------------------------------------------------------------------


def machine_info() -> dict:
    info = {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "dask": dask.__version__,
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "blas": [
            {k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture", "threading_layer")}
            for p in threadpool_info()
        ],
    }
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    for mod in ("sklearn", "distributed", "pyspark"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            info[mod] = None
    return info


def measure_gemm(d: int, rounds: int = 5, round_seconds: float = 0.2) -> dict:
    """Best GFLOP/s of A (65536 x d) @ B (d x d) per dtype: all cores, and 1 thread for reference.

    A 2-thread GEMM this small (~1 ms) collapses whenever another process takes a core, so the
    all-core figure is the best over ``rounds`` rounds of at least ``round_seconds`` each.  Also,
    for reference only, a square 1024^3 GEMM with all cores.
    """
    rng = np.random.default_rng(0)
    flop = 2.0 * GEMM_ROWS * d * d
    out = {}
    for dtype in ("float64", "float32"):
        a = rng.standard_normal((GEMM_ROWS, d)).astype(dtype)
        b = rng.standard_normal((d, d)).astype(dtype)
        c = np.empty((GEMM_ROWS, d), dtype=dtype)

        def best_time(n_rounds):
            best = math.inf
            for _ in range(n_rounds):
                t_end = time.perf_counter() + round_seconds
                while time.perf_counter() < t_end:
                    t0 = time.perf_counter()
                    np.matmul(a, b, out=c)
                    best = min(best, time.perf_counter() - t0)
                time.sleep(0.05)
            return best

        out[dtype] = flop / best_time(rounds) / 1e9
        with threadpool_limits(1):
            out[f"one_thread_{dtype}"] = flop / best_time(2) / 1e9
        sq = rng.standard_normal((1024, 1024)).astype(dtype)
        best = math.inf
        for _ in range(8):
            t0 = time.perf_counter()
            sq @ sq
            best = min(best, time.perf_counter() - t0)
        out[f"square_{dtype}"] = 2.0 * 1024**3 / best / 1e9
    return out


# ----------------------------------------------------------------------------------------------
# gmm-pipeline
# ----------------------------------------------------------------------------------------------


def fit_ours(X, k, covariance_type, init, dtype, iters, blas_threads=1, cache="auto", score_X=None,
             sample_weight=None, **params) -> dict:
    """Fit gmm-pipeline's GaussianMixture for exactly ``iters`` iterations; time per iteration.

    X : a Dask array (already persisted or Zarr-backed) or a NumPy array.  ``blas_threads``:
    threadpoolctl limit in this process (None leaves BLAS alone).
    """
    from pipeline.exceptions import ConvergenceWarning

    model = GaussianMixture(
        k, covariance_type=covariance_type, tol=0.0, max_iter=iters, init_params="random_from_data",
        random_state=0, dtype=dtype, cache=cache, **init, **params,
    )
    secs, m_secs = [], []

    def record(info):
        secs.append(info.seconds)
        m_secs.append(info.m_step_seconds)

    limit = threadpool_limits(blas_threads) if blas_threads else contextlib.nullcontext()
    with limit, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        model.fit(X, callback=record, sample_weight=sample_weight)
        total = time.perf_counter() - t0
        final_ll = model.score(score_X) if score_X is not None else None
    return {
        "s_iter": statistics.median(secs),
        "iter_seconds": secs,
        "m_step_seconds": m_secs,
        "fit_seconds": total,
        "history": list(model.history_),
        "final_mean_loglik": final_ll,
    }


def chunk_rows_for(X: np.ndarray, chunk_rows: int | None) -> int:
    """``chunk_rows``, or the pipeline's automatic size for X (what an estimator given X uses)."""
    return chunk_rows or auto_chunk_rows(X.shape[0], X.shape[1], X.dtype.itemsize)


def dask_persisted(X: np.ndarray, chunk_rows: int | None) -> da.Array:
    rows = chunk_rows_for(X, chunk_rows)
    return da.from_array(X, chunks=(min(rows, X.shape[0]), -1)).persist(scheduler="threads")


def scatter_to_cluster(client, X: np.ndarray, chunk_rows: int | None) -> tuple[da.Array, list]:
    """A Dask array whose chunks live on the workers (scattered round-robin), and the futures."""
    chunk_rows = chunk_rows_for(X, chunk_rows)
    starts = list(range(0, X.shape[0], chunk_rows))
    parts = [np.ascontiguousarray(X[s : s + chunk_rows]) for s in starts]
    futures = client.scatter(parts, broadcast=False, hash=False)
    blocks = [da.from_delayed(f, shape=p.shape, dtype=p.dtype) for f, p in zip(futures, parts)]
    return da.concatenate(blocks, axis=0), futures


class Cluster:
    """A LocalCluster of 2 worker processes x 1 thread, started on first use, closed by close()."""

    def __init__(self):
        self.client = None
        self.cluster = None

    def get(self):
        if self.client is None:
            from distributed import Client, LocalCluster

            self.cluster = LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=":0",
            )
            self.client = Client(self.cluster)
        return self.client

    def worker_blas(self):
        def probe():
            from threadpoolctl import threadpool_info

            return [p.get("num_threads") for p in threadpool_info()]

        return self.get().run(probe)

    def close(self):
        if self.client is not None:
            self.client.close()
            self.cluster.close()
            self.client = self.cluster = None


def fit_ours_distributed(cluster: Cluster, X, k, covariance_type, init, dtype, iters, chunk_rows, score_X=None):
    client = cluster.get()
    Xd, futures = scatter_to_cluster(client, X, chunk_rows)
    try:
        with client.as_current():
            return fit_ours(Xd, k, covariance_type, init, dtype, iters, blas_threads=None, score_X=score_X)
    finally:
        del Xd
        client.cancel(futures)  # drop the scattered data


# ----------------------------------------------------------------------------------------------
# scikit-learn
# ----------------------------------------------------------------------------------------------


def fit_sklearn(X: np.ndarray, k, covariance_type, init, iters) -> dict:
    """scikit-learn GaussianMixture from the same initial parameters; per-iteration times."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGM

    hooks = hasattr(SkGM, "_initialize") and hasattr(SkGM, "_print_verbose_msg_iter_end")

    class TimedGM(SkGM):
        def _initialize(self, *args, **kwargs):
            super()._initialize(*args, **kwargs)
            self.bench_marks_ = [time.perf_counter()]

        def _print_verbose_msg_iter_end(self, n_iter, diff_ll):
            self.bench_marks_.append(time.perf_counter())
            super()._print_verbose_msg_iter_end(n_iter, diff_ll)

    def run(max_iter):
        cls = TimedGM if hooks else SkGM
        m = cls(
            k, covariance_type=covariance_type, tol=0.0, max_iter=max_iter, init_params="random_from_data",
            random_state=0, **init,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            t0 = time.perf_counter()
            m.fit(X)
            return m, time.perf_counter() - t0

    model, total = run(iters)
    if hooks and len(getattr(model, "bench_marks_", [])) == iters + 1:
        secs = list(np.diff(model.bench_marks_))
        s_iter, method = statistics.median(secs), "hooks"
    else:
        _, t1 = run(1)
        secs = []
        s_iter, method = (total - t1) / max(iters - 1, 1), "difference"
    return {
        "s_iter": s_iter,
        "iter_seconds": secs,
        "fit_seconds": total,
        "timing": method,
        "history": [float(v) for v in model.lower_bounds_],
        "model": model,
    }


# ----------------------------------------------------------------------------------------------
# Spark MLlib
# ----------------------------------------------------------------------------------------------


def fit_spark(X: np.ndarray, k, init, iters, partitions, driver_memory="8g", warmup_rows=20_000) -> dict:
    """Spark MLlib (RDD API) GaussianMixture in local[2] mode from the same initial model.

    Returns {"skipped": reason} when pyspark or Java is unavailable.
    """
    try:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        from pyspark.sql import SparkSession
    except ImportError as exc:
        return {"skipped": f"pyspark not installed ({exc}); pip install 'gmm-pipeline[bench]'"}
    try:
        spark = (
            SparkSession.builder.master("local[2]")
            .appName("gmm-pipeline-bench")
            .config("spark.driver.memory", driver_memory)
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .getOrCreate()
        )
    except Exception as exc:  # Java missing or too old, port trouble, ...
        return {"skipped": f"Spark did not start ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"}
    try:
        from pyspark.mllib.clustering import GaussianMixtureModel
        from pyspark.mllib.common import _to_java_object_rdd, callMLlibFunc
        from pyspark.mllib.linalg import DenseMatrix, DenseVector

        sc = spark.sparkContext
        sc.setLogLevel("ERROR")
        t0 = time.perf_counter()
        step = -(-X.shape[0] // partitions)
        parts = [np.ascontiguousarray(X[s : s + step], dtype=np.float64) for s in range(0, X.shape[0], step)]
        rdd = sc.parallelize(parts, len(parts)).flatMap(lambda c: [DenseVector(r) for r in c])
        jrdd = _to_java_object_rdd(rdd).cache()
        count = jrdd.count()
        load_seconds = time.perf_counter() - t0
        assert count == X.shape[0], (count, X.shape)

        d = X.shape[1]
        weights = [float(w) for w in init["weights_init"]]
        mus = [DenseVector(m) for m in init["means_init"]]
        sigmas = [DenseMatrix(d, d, np.asarray(c).T.ravel().tolist()) for c in covariances_of(init)]

        def run(max_iter, data):
            t = time.perf_counter()
            jm = callMLlibFunc("trainGaussianMixtureModel", data, k, 0.0, max_iter, SEED, weights, mus, sigmas)
            model = GaussianMixtureModel(jm)
            w = np.asarray(model.weights, dtype=np.float64)  # the fit has finished when this is back
            return time.perf_counter() - t, model, w

        # warm-up (JIT, job machinery) on a small sample, so that it costs little at any N
        sample = np.ascontiguousarray(X[:warmup_rows], dtype=np.float64)
        jsample = _to_java_object_rdd(sc.parallelize([sample], 1).flatMap(lambda c: [DenseVector(r) for r in c])).cache()
        run(2, jsample)
        jsample.unpersist()
        t1, _, _ = run(1, jrdd)
        tn, model, w = run(iters, jrdd)
        means = np.stack([np.asarray(g.mu.toArray()) for g in model.gaussians])
        covs = np.stack([g.sigma.toArray() for g in model.gaussians])
        return {
            "s_iter": (tn - t1) / max(iters - 1, 1),
            "iters": iters,
            "t_maxiter_1": t1,
            f"t_maxiter_{iters}": tn,
            "load_seconds": load_seconds,
            "partitions": len(parts),
            "final": {"weights": w, "means": means, "covariances": covs},
        }
    except Exception as exc:
        return {"skipped": f"Spark failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"}
    finally:
        spark.stop()


# ----------------------------------------------------------------------------------------------
# read-only passes (diag / spherical bound)
# ----------------------------------------------------------------------------------------------


def time_read_pass(Xd: da.Array, repeats: int = 5) -> float:
    """Median seconds of ``Xd.sum(axis=0).compute()`` over ``repeats`` runs after a warm-up
    (threaded, BLAS 1 thread): the same statistic as the EM rows' median per iteration."""
    secs = []
    with threadpool_limits(1):
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            Xd.sum(axis=0).compute(scheduler="threads")
            if i:
                secs.append(time.perf_counter() - t0)
    return statistics.median(secs)


# ----------------------------------------------------------------------------------------------
# printing
# ----------------------------------------------------------------------------------------------


def fmt(v, spec=".3g", none="-"):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, spec)


def print_table(title, header, rows, notes=()):
    cols = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    print(f"\n{title}")
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths)))
    print(line)
    print("-" * len(line))
    for r in cols[1:]:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for n in notes:
        print(f"  {n}")
    sys.stdout.flush()


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=None, help="rows (default 1_000_000; 100_000 with --quick)")
    p.add_argument("--d", type=int, default=16, help="features (default 16)")
    p.add_argument("--k", type=int, default=16, help="components (default 16)")
    p.add_argument("--iters", type=int, default=5, help="EM iterations timed (default 5)")
    p.add_argument("--chunk-rows", type=int, default=None,
                   help="rows per Dask chunk (default: the pipeline's automatic size for each N and dtype, "
                        "pipeline.data.chunking.auto_chunk_rows: ~64 MiB and at most 262,144 rows, at least 16 chunks; "
                        "62,500 rows at N=1e6, D=16)")
    p.add_argument("--dist-n", type=int, default=None,
                   help="rows of the distributed-against-threaded comparison (default 10_000_000; 200_000 with --quick)")
    p.add_argument("--dist-rounds", type=int, default=3,
                   help="alternating threaded / LocalCluster fits per dtype in that comparison (default 3)")
    p.add_argument("--skip-spark", action="store_true")
    p.add_argument("--skip-sklearn", action="store_true")
    p.add_argument("--skip-distributed", action="store_true")
    p.add_argument("--skip-blas-default", action="store_true",
                   help="skip the threaded run with BLAS at its default thread count (oversubscribed, slow)")
    p.add_argument("--skip-models", action="store_true",
                   help="skip the table of the 14 mclust covariance models (s/iteration and the M step's share)")
    p.add_argument("--skip-weights", action="store_true",
                   help="skip the weighted-against-unweighted comparison (full, float64)")
    p.add_argument("--skip-missing", action="store_true",
                   help="skip nan_policy='marginalize' with 10%% of values missing against complete data")
    p.add_argument("--only", choices=SECTIONS, default=None,
                   help="run only this section (no main table): " + ", ".join(SECTIONS))
    p.add_argument("--scaling", action="store_true", help="also run the scaling tables in N and K")
    p.add_argument("--scaling-n", type=int, nargs="+", default=None,
                   help="N values (default 100000 1000000 10000000; 25000 50000 100000 with --quick)")
    p.add_argument("--scaling-k", type=int, nargs="+", default=None, help="K values (default 4 8 16 32)")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run (n=100_000)")
    p.add_argument("--spark-driver-memory", default="8g")
    p.add_argument("--spark-iters", type=int, default=3,
                   help="Spark per-iteration time = (t(maxIter=this) - t(maxIter=1)) / (this - 1) (default 3; "
                        "Spark is slow, more iterations mostly add minutes)")
    p.add_argument("--json", type=Path, default=None, help="also write all figures as JSON to this path")
    args = p.parse_args(argv)
    if args.n is None:
        args.n = 100_000 if args.quick else 1_000_000
    if args.dist_n is None:
        args.dist_n = 200_000 if args.quick else 10_000_000
    if args.dist_rounds < 1:
        p.error("--dist-rounds must be at least 1")
    if args.scaling_n is None:
        args.scaling_n = [25_000, 50_000, 100_000] if args.quick else [100_000, 1_000_000, 10_000_000]
    if args.scaling_k is None:
        args.scaling_k = [4, 8, 16] if args.quick else [4, 8, 16, 32]
    if args.iters < 1:
        p.error("--iters must be at least 1")
    if args.spark_iters < 2:
        p.error("--spark-iters must be at least 2 (Spark's per-iteration time is a difference of two fits)")
    return args


#: the row the trajectories and the Spark comparison refer to
BASE_ROW = ("gmm-pipeline threaded, BLAS 1 thread", "float64")


def main(argv=None) -> int:
    args = parse_args(argv)
    d = args.d
    flops = lambda nn, kk: 4.0 * nn * kk * d * d  # noqa: E731  FLOP model per iteration, full
    out = {"args": {k_: (str(v) if isinstance(v, Path) else v) for k_, v in vars(args).items()}}
    t_start = time.perf_counter()
    mi = out["machine"] = machine_info()
    print_machine(args, mi, flops)
    gemm_start = first_gemm_peak(d)
    X_all, X64, X32, init = prepare_data(args, out)
    if args.only:
        out[args.only] = SECTIONS[args.only](args, X64, args.k, args.iters)
        finish(args, out, mi, t_start)
        return 0

    rows = {}  # (name, dtype) -> result dict
    cluster = Cluster()
    try:
        run_threaded(args, rows, X64, X32, init)
        if not args.skip_distributed:
            run_local_cluster(args, rows, out, cluster, X64, X32, init)
        if not args.skip_sklearn:
            run_sklearn(args, rows, X64, X32, init)
        spark_note = run_spark(args, rows, X64, init)
        gemm = final_gemm_peak(out, d, gemm_start)
        print_main_table(args, rows, gemm, flops, spark_note)
        print_trajectories(rows)
        print_spark_comparison(rows)
        print("BLAS inside Dask threads: the 'BLAS 1 thread' rows are the recommended setting "
              "(2 Dask threads x 1 BLAS thread); LocalCluster workers' BLAS threads: "
              f"{out.get('cluster_worker_blas_threads', '-')}")
        out["main"] = {f"{name} | {dtype}": r for (name, dtype), r in rows.items()}
        run_sections(args, out, cluster, X_all, X64, init, flops, gemm)
    finally:
        cluster.close()
    finish(args, out, mi, t_start)
    return 0


def print_machine(args, mi: dict, flops) -> None:
    """The machine, the versions and the problem."""
    n, d, k, iters = args.n, args.d, args.k, args.iters
    print("gmm-pipeline benchmark: one EM iteration, same data, same initial parameters")
    print(f"machine: {mi['nproc']} CPUs (affinity {mi['affinity']}), {mi.get('memory_gb', '?')} GB, {mi['platform']}")
    print(f"load average at start: {', '.join(f'{v:.2f}' for v in mi['loadavg_start'] or [])}")
    for b in mi["blas"]:
        print(f"BLAS: {b['internal_api']} {b['version']} ({b['threading_layer'] or '-'}), {b['num_threads']} threads, {b['architecture']}")
    print(f"versions: python {mi['python']}, numpy {mi['numpy']}, dask {mi['dask']}, distributed {mi['distributed']}, "
          f"scikit-learn {mi['sklearn']}, pyspark {mi['pyspark']}")
    print(f"problem: N={n:,} D={d} K={k}, {iters} EM iterations timed, "
          f"chunk_rows={args.chunk_rows or 'auto'} ({args.chunk_rows or auto_chunk_rows(n, d, 8):,} rows "
          f"at N={n:,} float64), tol=0")
    print(f"FLOP model per EM iteration (full covariance): 4*N*K*D^2 = {flops(n, k) / 1e9:.2f} GFLOP")


def first_gemm_peak(d: int) -> dict:
    log("measuring GEMM peak")
    gemm_start = measure_gemm(d)
    print(f"tall GEMM ({GEMM_ROWS} x {d}) @ ({d} x {d}), all cores, best run of 5 rounds x 0.2 s: "
          f"{gemm_start['float64']:.1f} GFLOP/s float64, {gemm_start['float32']:.1f} GFLOP/s float32; "
          f"1 thread: {gemm_start['one_thread_float64']:.1f} / {gemm_start['one_thread_float32']:.1f}; "
          f"square 1024^3 GEMM for reference: {gemm_start['square_float64']:.1f} / {gemm_start['square_float32']:.1f}. "
          "Measured again after the main runs; the better of the two is the peak.")
    return gemm_start


def prepare_data(args, out: dict):
    """(rows for every section, the main N float64 rows, their float32 copy, initial parameters)."""
    n, d, k = args.n, args.d, args.k
    n_data = max([n] + (args.scaling_n if args.scaling else []) + ([] if args.skip_distributed else [args.dist_n]))
    log(f"generating {n_data:,} x {d} rows")
    X_all = make_data(n_data, d, k)
    X64 = X_all[:n]
    X32 = X64.astype(np.float32)
    init = initial_params(X64, k, "full")
    out["init"] = {"method": "K random rows as means, uniform weights, data covariance for all components"}
    return X_all, X64, X32, init


def run_threaded(args, rows: dict, X64, X32, init) -> None:
    """gmm-pipeline on the threaded scheduler, BLAS 1 thread (and default threads, float64)."""
    iters = args.iters
    for dtype, X in (("float64", X64), ("float32", X32)):
        Xd = dask_persisted(X, args.chunk_rows)
        for blas in (1, None):
            if blas is None and (dtype != "float64" or args.skip_blas_default):
                continue
            # BLAS default threads inside 2 Dask threads oversubscribes the cores and can be
            # tens of times slower: measured on float64 only, with at most 3 iterations
            name = f"gmm-pipeline threaded, BLAS {'1 thread' if blas else 'default threads'}"
            log(f"{name} {dtype}")
            with dask.config.set(scheduler="threads"):
                rows[(name, dtype)] = fit_ours(Xd, args.k, "full", init, dtype, iters if blas else min(iters, 3),
                                               blas_threads=blas,
                                               score_X=X64 if (dtype == "float64" and blas == 1) else None)
        del Xd


def run_local_cluster(args, rows: dict, out: dict, cluster, X64, X32, init) -> None:
    cluster.get()
    out["cluster_worker_blas_threads"] = {w: v for w, v in cluster.worker_blas().items()}
    for dtype, X in (("float64", X64), ("float32", X32)):
        name = "gmm-pipeline LocalCluster 2 procs x 1 thread"
        log(f"{name} {dtype}")
        rows[(name, dtype)] = fit_ours_distributed(cluster, X, args.k, "full", init, dtype, args.iters, args.chunk_rows)


def run_sklearn(args, rows: dict, X64, X32, init) -> None:
    try:
        import sklearn  # noqa: F401

        for dtype, X in (("float64", X64), ("float32", X32)):
            log(f"scikit-learn {dtype}")
            r = fit_sklearn(X, args.k, "full", init, args.iters)
            r.pop("model")
            rows[("scikit-learn GaussianMixture", dtype)] = r
    except ImportError as exc:
        print(f"\nscikit-learn skipped: {exc}")


def run_spark(args, rows: dict, X64, init) -> str | None:
    """Spark MLlib float64; returns the note of the main table when it was skipped."""
    if args.skip_spark:
        return "Spark MLlib skipped (--skip-spark)"
    log("Spark MLlib float64 (starting a local[2] JVM)")
    partitions = max(2, -(-args.n // chunk_rows_for(X64, args.chunk_rows)))
    r = fit_spark(X64, args.k, init, args.spark_iters, partitions, args.spark_driver_memory)
    if "skipped" in r:
        return f"Spark MLlib skipped: {r['skipped']}"
    fin = r.pop("final")
    r["final_mean_loglik"] = mean_loglik_full(X64, fin["weights"], fin["means"], fin["covariances"])
    rows[("Spark MLlib GaussianMixture (RDD API)", "float64")] = r
    return None


def final_gemm_peak(out: dict, d: int, gemm_start: dict) -> dict:
    """The better of a measurement before and one after the runs."""
    log("measuring GEMM peak again")
    gemm_end = measure_gemm(d)
    gemm = {key: max(gemm_start[key], gemm_end[key]) for key in gemm_start}
    out["gemm_gflops"] = {"peak": gemm, "start": gemm_start, "end": gemm_end}
    print(f"\nGEMM peak (tall, all cores): {gemm['float64']:.1f} GFLOP/s float64, {gemm['float32']:.1f} GFLOP/s float32 "
          f"(before: {gemm_start['float64']:.1f} / {gemm_start['float32']:.1f}, after: {gemm_end['float64']:.1f} / {gemm_end['float32']:.1f})")
    return gemm


def _sklearn_rows(rows: dict) -> dict:
    return {dt: rows.get(("scikit-learn GaussianMixture", dt)) for dt in ("float64", "float32")}


def _spark_row(rows: dict):
    return rows.get(("Spark MLlib GaussianMixture (RDD API)", "float64"))


def print_main_table(args, rows: dict, gemm: dict, flops, spark_note: str | None) -> None:
    n, d, k, iters = args.n, args.d, args.k, args.iters
    sk, spark = _sklearn_rows(rows), _spark_row(rows)
    table = []
    for (name, dtype), r in rows.items():
        gf = flops(n, k) / r["s_iter"] / 1e9
        r["gflops"] = gf
        r["pct_gemm_peak"] = 100.0 * gf / gemm[dtype]
        r["x_vs_sklearn"] = sk[dtype]["s_iter"] / r["s_iter"] if sk[dtype] else None
        r["x_vs_spark"] = spark["s_iter"] / r["s_iter"] if spark else None
        table.append([name, dtype, fmt(r["s_iter"], ".4f"), fmt(n / r["s_iter"] / 1e6, ".2f"), fmt(gf, ".2f"),
                      fmt(r["pct_gemm_peak"], ".0f"), fmt(r["x_vs_sklearn"], ".2f"), fmt(r["x_vs_spark"], ".2f")])
    notes = [
        "s/iter: median per-iteration time, initialisation excluded (Spark: (t(maxIter=%d) - t(maxIter=1)) / %d)."
        % (args.spark_iters, args.spark_iters - 1),
        "GFLOP/s: 4*N*K*D^2 per iteration / (s/iter) (an 'effective' rate: gmm-pipeline's kernel does 4*N*K*(D(D+1)/2+D+1),",
        "  about 60% of those FLOPs, using the symmetry of the outer products); % peak: of the tall GEMM of the same dtype.",
        "x sklearn: scikit-learn s/iter (same dtype) / row's s/iter; x Spark: Spark float64 s/iter / row's s/iter.",
    ]
    if spark_note:
        notes.append(spark_note)
    print_table(
        f"Full covariance, N={n:,} D={d} K={k}, {iters} iterations from the same initial parameters",
        ["implementation", "dtype", "s/iter", "Mrows/s", "GFLOP/s", "% GEMM peak", "x sklearn", "x Spark"],
        table, notes,
    )


def print_trajectories(rows: dict) -> None:
    ours = rows[BASE_ROW]
    traj = []
    sk64 = _sklearn_rows(rows)["float64"]
    for (name, dtype), r in rows.items():
        if "history" in r and sk64 and (name, dtype) != ("scikit-learn GaussianMixture", "float64"):
            r["traj_rel_diff_vs_sklearn64"] = max_rel_diff(r["history"], sk64["history"])
            traj.append([name, dtype, fmt(r["traj_rel_diff_vs_sklearn64"], ".2e")])
    if traj:
        print_table("Log-likelihood trajectories: max relative difference from scikit-learn float64",
                    ["implementation", "dtype", "max |ll - ll_sklearn| / |ll_sklearn|"], traj,
                    [f"scikit-learn float64 lower_bounds_: {', '.join(f'{v:.6f}' for v in sk64['history'])}",
                     f"gmm-pipeline float64 history_:      {', '.join(f'{v:.6f}' for v in ours['history'])}"])


def print_spark_comparison(rows: dict) -> None:
    spark = _spark_row(rows)
    if not spark:
        return
    ours = rows[BASE_ROW]
    m = spark["iters"]
    # our mean log-likelihood under the parameters after m iterations
    ours_ll = ours["history"][m] if m < len(ours["history"]) else ours["final_mean_loglik"]
    if m > len(ours["history"]):
        ours_ll = None
    spark["ours_mean_loglik_same_iter"] = ours_ll
    spark["final_ll_rel_diff_vs_ours"] = abs(spark["final_mean_loglik"] - ours_ll) / abs(ours_ll) if ours_ll else None
    print(f"\nMean log-likelihood of the model after {m} iterations: gmm-pipeline float64 {fmt(ours_ll, '.8f')}, "
          f"Spark MLlib {spark['final_mean_loglik']:.8f} (relative difference {fmt(spark['final_ll_rel_diff_vs_ours'], '.2e')})")
    if spark["final_ll_rel_diff_vs_ours"] is not None and spark["final_ll_rel_diff_vs_ours"] > 1e-3:
        print("  Spark's E step uses EPSILON + w_k * pdf_k in linear space (EPSILON ~ 2.2e-16): rows whose densities are all\n"
              "  below ~1e-16 (log-density < ~-36, common at D=16) get nearly uniform responsibilities, so Spark's\n"
              "  trajectory departs from exact EM on this data; it also adds no reg_covar.")
    print(f"Spark: data loaded and cached as RDD[Vector] in {spark['load_seconds']:.1f} s ({spark['partitions']} partitions); "
          f"fit maxIter=1: {spark['t_maxiter_1']:.2f} s, maxIter={m}: {spark[f't_maxiter_{m}']:.2f} s")


def run_sections(args, out: dict, cluster, X_all, X64, init, flops, gemm: dict) -> None:
    """Scaling, LocalCluster against threaded, diag / spherical (each when asked for)."""
    k, d, iters = args.k, args.d, args.iters
    if args.scaling:
        out["scaling_n"] = scaling_n(args, X_all, init, k, d, iters, cluster, flops)
        out["scaling_k"] = scaling_k(args, X64, k, iters, flops)
    if not args.skip_distributed:
        out["distributed_vs_threaded"] = distributed_vs_threaded(args, X_all, init, k, d, iters, cluster)
    # diag / spherical (threaded only: no idle worker processes beside the runs)
    cluster.close()
    out["diag_spherical"] = diag_spherical(args, X64, k, iters, gemm)
    if not args.skip_models:
        out["mclust_models"] = mclust_models(args, X64, k, iters)
    if not args.skip_weights:
        out["weights"] = weighted_against_unweighted(args, X64, k, iters)
    if not args.skip_missing:
        out["missing"] = missing_against_complete(args, X64, k, iters)


def finish(args, out: dict, mi: dict, t_start: float) -> None:
    """The closing line and, with --json, the figures."""
    mi["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    out["total_seconds"] = time.perf_counter() - t_start
    print(f"\nload average at end: {', '.join(f'{v:.2f}' for v in mi['loadavg_end'] or [])}; "
          f"total benchmark time {out['total_seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=_json_default))
        print(f"figures written to {args.json}")


def scaling_n(args, X_all, init, k, d, iters, cluster, flops) -> list:
    res = []
    table = []
    for nn in args.scaling_n:
        X = X_all[:nn]
        log(f"scaling N={nn:,} threaded")
        cluster.close()  # no idle worker processes beside the threaded run
        Xd = dask_persisted(X, args.chunk_rows)
        with dask.config.set(scheduler="threads"):
            r = fit_ours(Xd, k, "full", init, "float64", iters, blas_threads=1)
        del Xd
        row = {"n": nn, "s_iter": r["s_iter"], "s_iter_per_1e6": r["s_iter"] / nn * 1e6,
               "gflops": flops(nn, k) / r["s_iter"] / 1e9}
        if not args.skip_distributed:
            log(f"scaling N={nn:,} LocalCluster")
            rd = fit_ours_distributed(cluster, X, k, "full", init, "float64", iters, args.chunk_rows)
            row["distributed_s_iter"] = rd["s_iter"]
            row["distributed_over_threaded"] = rd["s_iter"] / r["s_iter"]
        res.append(row)
        table.append([f"{nn:,}", fmt(row["s_iter"], ".4f"), fmt(row["s_iter_per_1e6"], ".4f"), fmt(row["gflops"], ".2f"),
                      fmt(row.get("distributed_s_iter"), ".4f"), fmt(row.get("distributed_over_threaded"), ".2f")])
    print_table(f"Scaling in N (full, D={d}, K={k}, float64; threaded = 2 Dask threads x BLAS 1 thread)",
                ["N", "s/iter", "s/iter per 1e6 rows", "GFLOP/s", "LocalCluster s/iter", "LocalCluster / threaded"],
                table, ["linear in N <=> constant 's/iter per 1e6 rows'"])
    return res


def distributed_vs_threaded(args, X_all, init, k, d, iters, cluster) -> list:
    """s/iteration on the LocalCluster against the threaded scheduler at N = ``--dist-n``.

    The two are alternated ``--dist-rounds`` times per dtype (which one goes first alternates
    too), so that the slow drifts of a shared VM (10-30% over minutes, seen here) fall on both;
    the figure is the median of the per-round ratios.  The LocalCluster is closed during the
    threaded fits (its idle processes take a few % of a core each) and started again after."""
    nn = args.dist_n
    res, table = [], []
    for dtype in ("float64", "float32"):
        X = X_all[:nn] if dtype == "float64" else X_all[:nn].astype(np.float32)
        rows = chunk_rows_for(X, args.chunk_rows)
        threaded, dist = [], []
        for rnd in range(args.dist_rounds):
            for which in ("threaded", "dist") if rnd % 2 == 0 else ("dist", "threaded"):
                log(f"distributed vs threaded N={nn:,} {dtype} round {rnd + 1}: {which}")
                if which == "threaded":
                    cluster.close()  # no idle worker processes beside the threaded run
                    Xd = dask_persisted(X, rows)
                    with dask.config.set(scheduler="threads"):
                        threaded.append(fit_ours(Xd, k, "full", init, dtype, iters, blas_threads=1)["s_iter"])
                    del Xd
                else:
                    dist.append(fit_ours_distributed(cluster, X, k, "full", init, dtype, iters, rows)["s_iter"])
        ratios = [b / a for a, b in zip(threaded, dist)]
        row = {"n": nn, "dtype": dtype, "chunk_rows": rows, "n_chunks": -(-nn // rows),
               "chunk_mib": rows * d * X.dtype.itemsize / 2**20, "threaded_s_iter": threaded,
               "distributed_s_iter": dist, "ratios": ratios, "median_ratio": statistics.median(ratios)}
        res.append(row)
        table.append([dtype, f"{rows:,} x {row['n_chunks']} ({row['chunk_mib']:.0f} MiB)",
                      ", ".join(f"{v:.3f}" for v in threaded), ", ".join(f"{v:.3f}" for v in dist),
                      ", ".join(f"{v:.2f}" for v in ratios), fmt(row["median_ratio"], ".3f")])
        del X
    print_table(f"LocalCluster (2 worker processes x 1 thread) against threaded (2 threads), full, N={nn:,} D={d} K={k}",
                ["dtype", "chunk rows x chunks", "threaded s/iter", "LocalCluster s/iter", "ratio per round",
                 "median ratio"], table,
                [f"{args.dist_rounds} rounds per dtype, threaded and LocalCluster fits alternating (each s/iter: median "
                 f"of {iters} iterations); target: median ratio <= 1.15",
                 "the LocalCluster's scheduler, client and worker event loops share the same 2 cores as its two "
                 "compute threads; each chunk is one task per iteration (a few ms of scheduling each)"])
    return res


def scaling_k(args, X64, k0, iters, flops) -> list:
    n, d = X64.shape
    res, table = [], []
    Xd = dask_persisted(X64, args.chunk_rows)
    for kk in args.scaling_k:
        log(f"scaling K={kk}")
        init = initial_params(X64, kk, "full")
        with dask.config.set(scheduler="threads"):
            r = fit_ours(Xd, kk, "full", init, "float64", iters, blas_threads=1)
        row = {"k": kk, "s_iter": r["s_iter"], "s_iter_per_k": r["s_iter"] / kk, "gflops": flops(n, kk) / r["s_iter"] / 1e9}
        res.append(row)
        table.append([str(kk), fmt(row["s_iter"], ".4f"), fmt(row["s_iter_per_k"], ".5f"), fmt(row["gflops"], ".2f")])
    print_table(f"Scaling in K (full, N={n:,} D={d}, float64, threaded)", ["K", "s/iter", "s/iter per K", "GFLOP/s"],
                table, ["linear in K <=> constant 's/iter per K'"])
    return res


def diag_spherical(args, X64, k, iters, gemm) -> list:
    """EM rows/s for diag and spherical against read-and-sum passes (memory and Zarr), float64
    data with float64 compute and float32 data with float32 compute.

    Also the GEMM floor: the kernel's two GEMMs per block do ``4 N K (Q + D)`` FLOPs (Q = D
    squares for diag, one squared norm for spherical), which take at least that many FLOPs at
    the measured tall-GEMM peak of the dtype (``gemm``), whatever the data source."""
    from pipeline.core.plan import n_quadratic
    from pipeline.data.zarr_io import write_array_zarr

    n, d = X64.shape
    res, table = [], []
    tmp = Path(tempfile.mkdtemp(prefix="gmm-bench-"))
    try:
        for dtype in ("float64", "float32"):
            Xmem = dask_persisted(X64.astype(dtype), args.chunk_rows)
            with dask.config.set(scheduler="threads"):
                write_array_zarr(Xmem, tmp / f"x-{dtype}.zarr")
            Xzarr = da.from_zarr(str(tmp / f"x-{dtype}.zarr"))
            reads = {"memory": time_read_pass(Xmem), "zarr": time_read_pass(Xzarr)}
            for cov in ("diag", "spherical"):
                init = initial_params(X64, k, cov)
                for source, Xd, cache in (("memory", Xmem, "auto"), ("zarr", Xzarr, "none")):
                    log(f"{cov} {dtype} from {source}")
                    with dask.config.set(scheduler="threads"):
                        r = fit_ours(Xd, k, cov, init, dtype, iters, blas_threads=1, cache=cache)
                    em_rate = n / r["s_iter"]
                    read_rate = n / reads[source]
                    q = n_quadratic("diag" if cov == "diag" else "sphere", d)
                    floor = 4.0 * n * k * (q + d) / (gemm[dtype] * 1e9)
                    row = {"covariance_type": cov, "dtype": dtype, "source": source, "s_iter": r["s_iter"],
                           "em_rows_per_s": em_rate, "read_sum_seconds": reads[source],
                           "read_rows_per_s": read_rate, "read_over_em": read_rate / em_rate,
                           "gemm_floor_seconds": floor, "gemm_floor_over_read": floor / reads[source]}
                    res.append(row)
                    table.append([cov, dtype, source, fmt(r["s_iter"], ".4f"), fmt(em_rate / 1e6, ".2f"),
                                  fmt(read_rate / 1e6, ".2f"), fmt(read_rate / em_rate, ".2f"),
                                  fmt(floor, ".4f"), fmt(floor / reads[source], ".2f")])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(f"diag / spherical (N={n:,} D={d} K={k}, threaded, BLAS 1 thread)",
                ["covariance", "dtype", "data", "s/iter", "EM Mrows/s", "read+sum Mrows/s", "read / EM",
                 "GEMM floor s", "floor / read"], table,
                ["read+sum: median of 5 runs (after a warm-up) of X.sum(axis=0).compute() on the same Dask array (of the row's dtype); "
                 "'zarr' streams the chunks from a Zarr copy every iteration (cache='none')",
                 "target: read / EM <= 2",
                 "GEMM floor: the kernel's 4 N K (Q + D) GEMM FLOPs (Q = D diag, 1 spherical) at the measured "
                 "tall-GEMM peak; floor / read > 2 means no kernel doing those FLOPs can meet the target "
                 "on that data source"])
    return res


def mclust_models(args, X64, k, iters) -> list:
    """Every mclust model (float64, data in memory, threaded, BLAS 1 thread): s/iteration and
    the share of it the driver's M step takes (the iterative ones iterate there, warm-started
    from the previous EM iteration; the first M step starts cold)."""
    from pipeline.families import MCLUST_MODELS, get_family

    n, d = X64.shape
    Xmem = dask_persisted(X64, args.chunk_rows)
    res, table = [], []
    for name in MCLUST_MODELS:
        family = get_family(name)
        kind = {"ellipsoidal": "full", "diagonal": "diag", "scalar": "spherical"}[family.structure]
        init = initial_params(X64, k, kind)
        log(f"mclust model {name}")
        with dask.config.set(scheduler="threads"):
            r = fit_ours(Xmem, k, name, init, "float64", iters, blas_threads=1)
        m_med, m_max = statistics.median(r["m_step_seconds"]), max(r["m_step_seconds"])
        row = {"model": name, "structure": family.structure, "iterative": family.iterative,
               "s_iter": r["s_iter"], "m_step_median_s": m_med, "m_step_max_s": m_max,
               "m_step_share": m_med / r["s_iter"], "history": r["history"]}
        res.append(row)
        table.append([name, family.structure, "yes" if family.iterative else "-", fmt(r["s_iter"], ".4f"),
                      fmt(m_med * 1e3, ".2f"), fmt(m_max * 1e3, ".2f"), fmt(100 * m_med / r["s_iter"], ".2f")])
    print_table(f"mclust models (N={n:,} D={d} K={k}, float64, memory, threaded, BLAS 1 thread, {iters} iterations)",
                ["model", "E-step structure", "iterative M step", "s/iter", "M step ms (median)", "M step ms (max)",
                 "M step % of iter"], table,
                ["M step: the driver's time from the reduced statistics to the new parameters "
                 "(IterationInfo.m_step_seconds), included in s/iter; max is usually the first, cold, M step"])
    return res


def alternating_s_iter(what, rounds, fits) -> list[list[float]]:
    """s/iteration of every ``(label, fit)`` of ``fits`` (``fit()`` returns :func:`fit_ours`'s
    result), on the threaded scheduler, alternating for ``rounds`` rounds: one list per fit."""
    out = [[] for _ in fits]
    for r in range(rounds):
        for (label, fit), into in zip(fits, out):
            log(f"{what} round {r + 1}: {label}")
            with dask.config.set(scheduler="threads"):
                into.append(fit()["s_iter"])
    return out


def weighted_against_unweighted(args, X64, k, iters, rounds=3) -> dict:
    """s/iteration of a fit with sample weights against the same fit without (full, float64,
    data and weights in memory, threaded, BLAS 1 thread), alternating ``rounds`` pairs."""
    n, d = X64.shape
    Xmem = dask_persisted(X64, args.chunk_rows)
    w = da.from_array(np.random.default_rng(SEED).uniform(0.5, 2.0, size=n), chunks=(Xmem.chunks[0],)).persist()
    init = initial_params(X64, k, "full")
    plain, weighted = alternating_s_iter("weights", rounds, [
        ("unweighted", lambda: fit_ours(Xmem, k, "full", init, "float64", iters, blas_threads=1)),
        ("weighted", lambda: fit_ours(Xmem, k, "full", init, "float64", iters, blas_threads=1, sample_weight=w)),
    ])
    res = {"unweighted_s_iter": statistics.median(plain), "weighted_s_iter": statistics.median(weighted),
           "rounds": rounds, "unweighted_all": plain, "weighted_all": weighted}
    res["ratio"] = res["weighted_s_iter"] / res["unweighted_s_iter"]
    print_table(f"sample weights (N={n:,} D={d} K={k}, full, float64, memory, threaded, BLAS 1 thread, "
                f"median of {rounds} alternating rounds)",
                ["fit", "s/iter", "ratio"],
                [["unweighted", fmt(res["unweighted_s_iter"], ".4f"), "1"],
                 ["weighted", fmt(res["weighted_s_iter"], ".4f"), fmt(res["ratio"], ".3f")]],
                ["target: weighted within 10% of unweighted"])
    return res


def missing_against_complete(args, X64, k, iters, rounds=3, fraction=0.1) -> dict:
    """s/iteration of nan_policy="marginalize" with ``fraction`` of the values missing
    completely at random against the same fit of the complete data (full, float64, in memory,
    threaded, BLAS 1 thread, the same start), alternating ``rounds`` pairs."""
    n, d = X64.shape
    rng = np.random.default_rng(SEED + 1)
    Xnan = X64.copy()
    for start in range(0, n, 1_000_000):  # the mask block by block: bounded memory
        block = Xnan[start : start + 1_000_000]
        block[rng.random(block.shape) < fraction] = np.nan
    empty = np.isnan(Xnan).all(axis=1)
    Xnan[empty, 0] = X64[empty, 0]  # a row needs one observed value
    incomplete = float(np.isnan(Xnan).any(axis=1).mean())
    Xfull, Xmiss = dask_persisted(X64, args.chunk_rows), dask_persisted(Xnan, args.chunk_rows)
    del Xnan
    init = initial_params(X64, k, "full")
    complete, marginal = alternating_s_iter("missing values", rounds, [
        (label, lambda X=X: fit_ours(X, k, "full", init, "float64", iters, blas_threads=1, nan_policy="marginalize"))
        for label, X in (("complete", Xfull), ("marginalize", Xmiss))
    ])
    res = {"complete_s_iter": statistics.median(complete), "marginalize_s_iter": statistics.median(marginal),
           "rounds": rounds, "fraction_missing": fraction, "rows_incomplete": incomplete,
           "complete_all": complete, "marginalize_all": marginal}
    res["ratio"] = res["marginalize_s_iter"] / res["complete_s_iter"]
    print_table(f"missing values (N={n:,} D={d} K={k}, full, float64, memory, threaded, BLAS 1 thread, "
                f"median of {rounds} alternating rounds)",
                ["data", "s/iter", "ratio"],
                [["complete", fmt(res["complete_s_iter"], ".4f"), "1"],
                 [f"{fraction:.0%} of values missing at random ({incomplete:.1%} of rows)",
                  fmt(res["marginalize_s_iter"], ".4f"), fmt(res["ratio"], ".3f")]],
                ["nan_policy='marginalize' on both; target: within 3x of complete data"])
    return res


#: sections ``--only`` runs by themselves
SECTIONS = {
    "weights": weighted_against_unweighted,
    "missing": missing_against_complete,
    "models": mclust_models,
}


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
