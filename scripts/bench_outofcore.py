#!/usr/bin/env python
"""Benchmark: EM on Zarr-streamed vs persisted data, against the raw Zarr read rate; with
``--sweep``, a 40-candidate BIC sweep on data 4x the workers' memory limit (issue 12).

Default mode, for each size, on a LocalCluster of worker processes (127.0.0.1):

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

Sweep mode (``--sweep``): generated Zarr data (float32, ``--d`` features, a mixture of
``--true-k`` components) of ``--data-factor`` (4) x the workers' total memory limit, written
once (kept and reused with ``--dir``), streamed from Zarr on every pass (``cache="none"``) on a
LocalCluster of ``--workers`` processes x ``--threads-per-worker`` bound to 127.0.0.1 with
``--memory-limit`` each.  Two sides, on the same data, each through a counting identity over
the chunks (``scripts/bench_common.py``, as ``scripts/bench_sweep.py``) that counts the passes:

- ``GaussianMixtureIC(n_components=range(1, 11), covariance_type=["full", "tied", "diag",
  "spherical"], random_state=--seed, cache="none")``, otherwise its defaults: passes (counted,
  and its ``n_passes_``), wall seconds, the selected candidate;
- the loop users write today, for each candidate of ``--loop-candidates`` (default 4 of the 40,
  one per covariance type: full,1 tied,4 diag,7 spherical,10; ``all`` for the 40, see below):
  ``GaussianMixture(k, covariance_type=ct, random_state=--seed, cache="none").fit(X)`` then the
  one pass of ``.bic(X)`` (``information_criteria``, which also gives the log-likelihood):
  passes, wall seconds and BIC per candidate, the selected one.  A subset is printed as such,
  with the sweep's choice among the same candidates; nothing is extrapolated.

For each side: the peak resident memory of every worker (VmHWM, reset before the side) against
its memory limit and distributed's spill/pause fractions; whether any worker spilled (the
cumulative ``disk-write`` count and bytes of its SpillBuffer, ``worker.data.cumulative_metrics``:
distributed's own spill counters, which its Prometheus ``spill_count`` reports; every key written
to disk counts, whether the managed-memory target or the memory monitor evicted it), paused (the
warnings in its log) or was restarted (its pid).  Also printed: the data, the
workers' BLAS kernel (threadpoolctl) and ``OPENBLAS_CORETYPE``, the versions and the load
average at the start and the end (the figures of a loaded machine are not comparable).

Usage::

    python scripts/bench_outofcore.py --sweep --dir /tmp/gmm-bench      # defaults below; data kept for reruns
    python scripts/bench_outofcore.py --sweep --dir /tmp/gmm-bench --loop-candidates all   # the loop over all 40
    python scripts/bench_outofcore.py --sweep --dir /tmp/gmm-bench --loop-candidates 8     # 8 of the 40, spread
    python scripts/bench_outofcore.py --sweep --loop-candidates 5:full,5:diag,6:full
    python scripts/bench_outofcore.py --sweep --loop-candidates none                     # the sweep only
    python scripts/bench_outofcore.py --sweep --loop-candidates 1:diag --only loop                 # one side
    python scripts/bench_outofcore.py --sweep --data-factor 0.01 --ks 1 2 --types full diag   # a check of the script

Sweep defaults: 1 worker process x 2 threads with memory_limit 352 MiB, 8 features, chunks of
65,536 rows (2 MiB), so the data is 4 x 352 MiB = 1.375 GiB (46,137,344 rows).  Why so: a worker
holds about 105 MiB once the pipeline's kernels are imported, and the loop's single fits reach
about 215 MiB with 2 threads (their k-means|| initialisation on the data: ~26 MiB of row-block
temporaries per thread, against ~15 MiB for the sweep's lockstep passes, whose starts come from
the in-memory sample); 352 MiB keeps both under distributed's spill fraction (70%), so neither
side spills and the times compare.  One worker with 2 threads rather than 2 x 1: the data is 4x
the *total* limit, so a second worker process would double the data for the same per-worker
headroom.  8 features rather than fewer: per byte of data the kernels cost least around D = 8.

How long (measured on the 2-core development machine while others' tests ran, load average
about 5; a quiet machine is faster): with ``--data-factor 0.25`` (88 MiB, 2,883,584 rows) and
otherwise the defaults, the sweep of 40 took 174.6 s and 6 passes (49.0 s to its first lockstep
pass, then 5 lockstep passes, 125.6 s), and the loop over the default 4 candidates 129 passes in
514.6 s (3.99 s per pass).  The default data are 16x that; if a pass costs in proportion to the
data (an extrapolation, not a measurement) the default run takes about 16 x 125.6 + 50 = 2,060 s
for the sweep and 16 x 514.6 = 8,230 s for its loop of 4, nearly 3 hours in all on that loaded
machine, and ``--loop-candidates all`` (1,205 passes on 400,000 x 4 rows with the threaded
scheduler, where the 4 candidates above made 104 rather than 129: some 1,200 to 1,500 passes)
about 1,200 to 1,500 x 16 x 3.99 s = 21 to 27 hours.  Under half an hour with data 4x the
memory limit cannot be had on 2 cores: the limit cannot go much below 352 MiB (see above), so
the data cannot go much below 1.4 GiB, and the loop's 1,200 passes over it take hours.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_common, also for the spawned workers

from bench_common import Reads, blas_kernel, blas_line, versions_line  # noqa: E402


def peak_rss(dask_worker=None):
    """This process's peak resident memory since its start or :func:`reset_peak` (VmHWM, bytes)."""
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


#: the covariance types of the sweep, in its order
SWEEP_TYPES = ("full", "tied", "diag", "spherical")


def memory_state(dask_worker):
    """This worker's pid, resident memory now (bytes), and its spill and pause record: the
    SpillBuffer's cumulative ``disk-write`` count and bytes (ever-increasing: every key spilled,
    whether by the managed-memory target or by the memory monitor), the bytes on disk now, and
    the warnings of its log that say it paused or held unmanaged memory above the spill fraction."""
    rss = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    data = dask_worker.data
    metrics = getattr(data, "cumulative_metrics", None)  # distributed.spill.SpillBuffer; None: spilling off
    logs = [msg for _, msg in dask_worker.get_logs()]
    return {
        "pid": os.getpid(),
        "rss": rss,
        "spill_enabled": metrics is not None,
        "disk_writes": int(metrics.get(("disk-write", "count"), 0)) if metrics is not None else 0,
        "disk_write_bytes": int(metrics.get(("disk-write", "bytes"), 0)) if metrics is not None else 0,
        "on_disk": int(data.spilled_total.disk) if metrics is not None else 0,
        "pauses": sum("Pausing worker" in m for m in logs),
        "unmanaged_warnings": sum("Unmanaged memory use is high" in m for m in logs),
    }


class Watch:
    """The workers' memory over one side of the benchmark: VmHWM reset at the start; at the end
    the peak and what changed in :func:`memory_state` (spills, pauses, restarts)."""

    def __init__(self, client):
        self.client = client
        client.run(reset_peak)
        self.before = client.run(memory_state)

    def finish(self) -> dict:
        peaks = self.client.run(peak_rss)
        after = self.client.run(memory_state)
        restarted = sorted(set(self.before) ^ set(after)) + [a for a in after if a in self.before
                                                             and after[a]["pid"] != self.before[a]["pid"]]
        common = [a for a in after if a in self.before and a not in restarted]
        delta = {key: sum(after[a][key] - self.before[a][key] for a in common)
                 for key in ("disk_writes", "disk_write_bytes", "pauses", "unmanaged_warnings")}
        return {"peaks": peaks, "start_rss": {a: m["rss"] for a, m in self.before.items()}, "restarted": restarted,
                "on_disk": sum(m["on_disk"] for m in after.values()),
                "spill_enabled": all(m["spill_enabled"] for m in after.values()), **delta}


class PassLog(logging.Handler):
    """The per-pass lines that ``GaussianMixtureIC(verbose=2)`` logs ("pass n: E EM runs, S scored,
    t s"), kept with the clock: where a sweep's time goes (its start, every lockstep pass)."""

    PATTERN = re.compile(r"\s*pass (\d+): (\d+) EM runs, (\d+) scored, ([0-9.]+) s")

    def __init__(self):
        super().__init__(logging.INFO)
        self.passes = []  # (perf_counter at the log, EM runs, runs scored, seconds of the pass)

    def emit(self, record):
        m = self.PATTERN.match(record.getMessage())
        if m:
            self.passes.append((time.perf_counter(), int(m[2]), int(m[3]), float(m[4])))

    @contextmanager
    def attached(self):
        log = logging.getLogger("pipeline")
        level = log.level
        log.addHandler(self)
        log.setLevel(logging.INFO)
        try:
            yield self
        finally:
            log.removeHandler(self)
            log.setLevel(level)


def loop_candidates(spec: str, candidates: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The loop's candidates from ``--loop-candidates``: "all", "none", an integer N (N of the
    candidates at even steps through them ordered by K then type, so both vary), or a list
    "K:type,K:type" (each one of ``candidates``)."""
    spec = spec.strip().lower()
    if spec == "all":
        return list(candidates)
    if spec in ("none", "0"):
        return []
    if spec.isdigit():
        n = min(int(spec), len(candidates))
        by_k = sorted(candidates, key=lambda c: (c[0], SWEEP_TYPES.index(c[1]) if c[1] in SWEEP_TYPES else 99))
        picks = sorted({round(i * (len(by_k) - 1) / max(n - 1, 1)) for i in range(n)})
        return [c for c in candidates if c in {by_k[i] for i in picks}]
    out = []
    for item in spec.split(","):
        k, _, ct = item.strip().partition(":")
        if not k.isdigit() or (int(k), ct) not in candidates:
            raise SystemExit(f"--loop-candidates: {item!r} is not K:type of a candidate of the sweep "
                             f"(K in {sorted({c[0] for c in candidates})}, type in {sorted({c[1] for c in candidates})})")
        out.append((int(k), ct))
    return out


def sweep_data(base: Path, args, nbytes: int):
    """The sweep's Zarr data (float32, at least ``nbytes``): generated unless ``base`` already
    holds it.  Returns (path, rows, seconds to generate or None when reused)."""
    rows = -(-nbytes // (args.d * 4))
    path = base / f"sweep-{rows}x{args.d}-k{args.true_k}-sep{args.separation:g}-c{args.chunk_rows}-seed0.zarr"
    if path.exists():
        return path, rows, None
    from pipeline.data.synthetic import generate_mixture

    t = time.perf_counter()
    generate_mixture(path, n_samples=rows, n_features=args.d, n_components=args.true_k, seed=0,
                     chunk_rows=args.chunk_rows, dtype="float32", separation=args.separation)
    return path, rows, time.perf_counter() - t


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _memory_line(w: dict, limit: int, fractions: dict) -> str:
    peak = max(w["peaks"].values())
    start = max(w["start_rss"].values())
    spilled = ("spilling disabled" if not w["spill_enabled"] else
               f"spilled {w['disk_writes']} keys, {_mib(w['disk_write_bytes'])}" if w["disk_writes"] else "no spill")
    flags = [spilled, f"{w['pauses']} pauses" if w["pauses"] else "no pause",
             f"restarted: {', '.join(w['restarted'])}" if w["restarted"] else "no worker restarted"]
    if w["unmanaged_warnings"]:
        flags.append(f"{w['unmanaged_warnings']} 'unmanaged memory' warnings (above the spill fraction)")
    if w["on_disk"]:
        flags.append(f"{_mib(w['on_disk'])} on disk now")
    verdict = "within" if peak < limit else "OVER"
    return (f"peak worker RSS {_mib(peak)} = {peak / limit:.0%} of the {_mib(limit)} limit ({verdict}; spill at "
            f"{fractions['spill']:.0%}, pause {fractions['pause']:.0%}), {_mib(start)} at the start; " + "; ".join(flags))


def run_sweep(args):
    """The ``--sweep`` mode (see the module docstring)."""
    import dask
    from dask.utils import format_bytes, parse_bytes
    from distributed import Client, LocalCluster

    from pipeline.data.zarr_io import open_dataset

    warnings.simplefilter("ignore")  # ConvergenceWarning of max_iter candidates, distributed's chatter
    limit = parse_bytes(args.memory_limit)
    total_limit = args.workers * limit
    candidates = [(k, ct) for ct in args.types for k in args.ks]  # GaussianMixtureIC's order
    loop = [] if args.only == "sweep" else loop_candidates(args.loop_candidates, candidates)
    fractions = {f: dask.config.get(f"distributed.worker.memory.{f}") for f in ("target", "spill", "pause", "terminate")}

    print(blas_line(), "(driver)")
    print(versions_line())
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (1 min) at the start")
    base = Path(args.dir or tempfile.mkdtemp(prefix="gmm-bench-sweep-"))
    base.mkdir(parents=True, exist_ok=True)
    path, rows, gen_s = sweep_data(base, args, math.ceil(args.data_factor * total_limit))
    nbytes = rows * args.d * 4
    print(f"data: {path} ({'generated in %.1f s' % gen_s if gen_s is not None else 'reused'}): {rows:,} rows x "
          f"{args.d} float32 = {format_bytes(nbytes)} = {nbytes / total_limit:.2f} x the workers' total memory limit "
          f"({args.workers} x {format_bytes(limit)}); {args.true_k} true components, chunks of {args.chunk_rows:,} "
          f"rows ({format_bytes(args.chunk_rows * args.d * 4)}), streamed from Zarr every pass (cache='none')")
    print(f"cluster: LocalCluster, {args.workers} worker processes x {args.threads_per_worker} threads on 127.0.0.1, "
          f"memory_limit {format_bytes(limit)} each; distributed's fractions " +
          ", ".join(f"{k} {v}" for k, v in fractions.items()))
    if args.only != "loop":
        print(f"sweep side: GaussianMixtureIC over {len(candidates)} candidates: n_components {args.ks} x "
              f"covariance_type {args.types}, random_state={args.seed}, cache='none', verbose=2 (its per-pass times, "
              "logged to this script only), other parameters default")
    else:
        print("sweep side: not run (--only loop)")
    print(f"loop side: {len(loop)} of the {len(candidates)} candidates" +
          (" (all)" if len(loop) == len(candidates) else f": {', '.join(f'{k}:{ct}' for k, ct in loop)}" if loop else ""))
    sides, sweep, per = [], None, []
    with LocalCluster(n_workers=args.workers, threads_per_worker=args.threads_per_worker, processes=True,
                      host="127.0.0.1", dashboard_address=None, memory_limit=limit,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        print("BLAS on the workers:", "; ".join(sorted(set(client.run(blas_kernel).values()))))
        X0 = open_dataset(path)
        t = time.perf_counter()
        X0.sum(axis=0, dtype="float64").compute()  # warm-up: the workers' imports, the page cache
        print(f"warm-up read+sum pass: {time.perf_counter() - t:.1f} s; worker RSS after it: " +
              ", ".join(_mib(m["rss"]) for m in client.run(memory_state).values()), flush=True)
        if args.only != "loop":
            sweep = ic_side(args, client, X0, candidates)
            sides.append(sweep)
        if loop:
            side, per = loop_side(args, client, X0, loop)
            sides.append(side)
    if args.dir is None:
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nload average {os.getloadavg()[0]:.2f} (1 min) at the end\n")
    report(sides, sweep, per, loop, candidates, limit, fractions)
    return sides


def counted(X0):
    """``X0`` through a fresh counting identity (:class:`bench_common.Reads`), and the counter."""
    reads = Reads()
    return X0.map_blocks(reads, dtype=X0.dtype), reads


def ic_side(args, client, X0, candidates) -> dict:
    """(a) ``GaussianMixtureIC`` over every candidate: passes, seconds, selection, memory."""
    from pipeline import GaussianMixtureIC

    X, reads = counted(X0)
    watch, t = Watch(client), time.perf_counter()
    with PassLog().attached() as log:  # verbose=2 only logs each pass (to `log`, not stdout)
        ic = GaussianMixtureIC(n_components=args.ks, covariance_type=args.types, random_state=args.seed,
                               cache="none", verbose=2).fit(X)
    seconds = time.perf_counter() - t
    sel = min((c for c in ic.criteria_ if c["status"] == "ok"), key=lambda c: c["bic"])
    print(f"  done the sweep: {seconds:.1f} s, {ic.n_passes_} passes ({ic.n_em_passes_} EM), "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    split = None
    if log.passes:
        start_s = log.passes[0][0] - log.passes[0][3] - t
        split = (f"the sweep's {seconds:.1f} s: {start_s:.1f} s to its first lockstep pass (the summary pass, the starts "
                 f"on the {getattr(ic, 'init_sample_rows_', 0):,}-row sample), then lockstep passes of (EM runs + runs "
                 "scored, seconds): " + ", ".join(f"({e}+{sc}, {sec:.1f})" for _, e, sc, sec in log.passes))
    return {"label": f"GaussianMixtureIC, {len(candidates)} candidates", "passes": reads.total(client),
            "own": ic.n_passes_, "seconds": seconds, "selected": (sel["n_components"], sel["covariance_type"]),
            "bic": sel["bic"], "memory": watch.finish(), "split": split,
            "criteria": {(c["n_components"], c["covariance_type"]): c for c in ic.criteria_}}


def loop_side(args, client, X0, loop) -> tuple[dict, list]:
    """(b) the loop of single fits, one ``GaussianMixture(k, covariance_type=ct).fit(X)`` and its
    ``.bic(X)`` per candidate of ``loop``: the side's figures and one line per candidate."""
    from pipeline import GaussianMixture

    X, reads = counted(X0)
    watch, t, per = Watch(client), time.perf_counter(), []
    for k, ct in loop:
        before, t1 = reads.total(client), time.perf_counter()
        try:
            gm = GaussianMixture(k, covariance_type=ct, random_state=args.seed, cache="none").fit(X)
            crit = gm.information_criteria(X)  # the one pass of gm.bic(X)
            entry = {"bic": float(crit["bic"]), "n_iter": gm.n_iter_, "own": gm.n_passes_ + 1}
        except Exception as exc:  # noqa: BLE001 - a failed candidate is reported, the loop goes on
            entry = {"bic": math.inf, "n_iter": None, "own": 0, "error": f"{type(exc).__name__}: {exc}"}
        per.append({"k": k, "ct": ct, "passes": reads.total(client) - before, "seconds": time.perf_counter() - t1,
                    **entry})
        print(f"  loop {len(per)}/{len(loop)}: {ct},{k} {per[-1]['passes']} passes {per[-1]['seconds']:.1f} s", flush=True)
    seconds = time.perf_counter() - t
    best = min(per, key=lambda r: r["bic"])
    side = {"label": f"loop of GaussianMixture fits + bic(), {len(loop)} candidates", "passes": reads.total(client),
            "own": sum(r["own"] for r in per), "seconds": seconds, "selected": (best["k"], best["ct"]),
            "bic": best["bic"], "memory": watch.finish()}
    return side, per


def report(sides, sweep, per, loop, candidates, limit, fractions) -> None:
    """The table of both sides, the sweep's time split, and the loop's candidates one by one."""
    print(f"{'':52s} {'passes':>7s} {'(own)':>6s} {'seconds':>9s} {'s/pass':>7s}  selected      BIC")
    for side in sides:
        k, ct = side["selected"]
        print(f"{side['label']:52s} {side['passes']:7d} {side['own']:6d} {side['seconds']:9.1f} "
              f"{side['seconds'] / max(side['passes'], 1):7.2f}  {ct + ',' + str(k):12s}  {side['bic']:.7g}")
        print(f"    {_memory_line(side['memory'], limit, fractions)}")
    if sweep and sweep["split"]:
        print(f"\n{sweep['split']}")
    if per and len(loop) < len(candidates):
        line = (f"\nthe loop ran {len(loop)} of the {len(candidates)} candidates: its passes and seconds are theirs only "
                "(not extrapolated)")
        if sweep:
            sub = [sweep["criteria"][c] for c in loop if sweep["criteria"][c]["status"] == "ok"]
            pick = min(sub, key=lambda c: c["bic"]) if sub else None
            line += (f"; the sweep's choice among the same {len(loop)}: " +
                     (f"{pick['covariance_type']},{pick['n_components']}" if pick else "none fitted"))
        print(line)
    if per:
        print(f"\n{'candidate':14s} {'loop passes':>11s} {'loop s':>8s} {'loop n_iter':>11s} {'loop BIC':>14s}" +
              (f" {'sweep n_iter':>12s} {'sweep BIC':>14s}" if sweep else ""))
        for r in per:
            line = (f"{r['ct'] + ',' + str(r['k']):14s} {r['passes']:11d} {r['seconds']:8.1f} {str(r['n_iter']):>11s} "
                    f"{r['bic']:14.7g}")
            if sweep:
                c = sweep["criteria"][r["k"], r["ct"]]
                line += f" {str(c['n_iter']):>12s} {c['bic'] if c['bic'] is not None else math.nan:14.7g}"
            print(line + (f"  loop failed: {r['error']}" if "error" in r else ""))
    mismatch = [s["label"] for s in sides if s["passes"] != s["own"]]
    if mismatch:
        print(f"\nNOTE: the counted passes differ from the estimators' own n_passes_ for: {'; '.join(mismatch)}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", action="store_true", help="the 40-candidate sweep on data 4x the workers' memory (see above)")
    p.add_argument("--rows", type=float, nargs="+", default=[1e6, 4e6, 1.6e7], help="sizes (default mode only)")
    p.add_argument("--d", type=int, default=None, help="features (default 16; --sweep: 8)")
    p.add_argument("--k", type=int, default=8, help="components of the fit (default mode only)")
    p.add_argument("--covariance-type", default="full", help="(default mode only)")
    p.add_argument("--iters", type=int, default=3, help="(default mode only)")
    p.add_argument("--chunk-rows", type=int, default=None, help="rows per stored and Dask chunk (default 65536)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default 2; --sweep: 1)")
    p.add_argument("--threads-per-worker", type=int, default=None, help="(default 1; --sweep: 2)")
    p.add_argument("--memory-limit", default=None, help="per worker (default 4GiB; --sweep: 352MiB)")
    p.add_argument("--dir", default=None, help="where to write the Zarr data, kept and reused (default: a temp dir, "
                   "deleted at the end)")
    sw = p.add_argument_group("--sweep")
    sw.add_argument("--data-factor", type=float, default=4.0, help="data bytes / the workers' total memory limit (4)")
    sw.add_argument("--true-k", type=int, default=5, help="components of the generated mixture (5)")
    sw.add_argument("--separation", type=float, default=3.0, help="of the generated mixture's means (3.0)")
    sw.add_argument("--ks", type=int, nargs="+", default=list(range(1, 11)), help="n_components tried (1..10)")
    sw.add_argument("--types", nargs="+", default=list(SWEEP_TYPES), help="covariance types tried (the four)")
    sw.add_argument("--loop-candidates", default="4", help="which candidates the loop of single fits runs: N (N of "
                    "them spread over K and type; default 4: full,1 tied,4 diag,7 spherical,10), all, none, or a list "
                    "K:type,K:type,...")
    sw.add_argument("--seed", type=int, default=0, help="random_state of both sides (the data's seed is 0)")
    sw.add_argument("--only", choices=("sweep", "loop"), default=None, help="run one side only")
    args = p.parse_args(argv)
    sweep = args.sweep
    for name, plain, swept in (("d", 16, 8), ("chunk_rows", 65536, 65536), ("workers", 2, 1),
                               ("threads_per_worker", 1, 2), ("memory_limit", "4GiB", "352MiB")):
        if getattr(args, name) is None:
            setattr(args, name, swept if sweep else plain)
    return run_sweep(args) if sweep else run_sizes(args)


def run_sizes(args):
    """The default mode: the table of read+sum, streamed and persisted EM per size."""
    from dask.utils import format_bytes, parse_bytes
    from distributed import Client, LocalCluster

    from pipeline import GaussianMixture
    from pipeline.data.synthetic import generate_mixture
    from pipeline.data.zarr_io import open_dataset

    base = Path(args.dir or tempfile.mkdtemp(prefix="gmm-bench-"))
    limit = parse_bytes(args.memory_limit)
    rows_out = []
    print(f"# machine: {os.cpu_count()} cores; {args.workers} worker processes x {args.threads_per_worker} threads, memory_limit "
          f"{format_bytes(limit)} each; D={args.d} K={args.k} {args.covariance_type} float32, chunk {args.chunk_rows} rows")
    with LocalCluster(n_workers=args.workers, threads_per_worker=args.threads_per_worker, processes=True,
                      host="127.0.0.1", dashboard_address=None, memory_limit=limit) as cluster, Client(cluster) as client:
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
