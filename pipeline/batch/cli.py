"""The ``gmm-pipeline`` command.

::

    gmm-pipeline run CONFIG [--set KEY=VALUE ...] [--resume]
    gmm-pipeline generate --n-samples N --n-features D --n-components K --out X.zarr
    gmm-pipeline convert IN.npy|IN.parquet|IN.csv OUT.zarr [--columns A,B,C] [--weights COL]
    gmm-pipeline predict RUN_DIR|MODEL.npz DATA.zarr OUT.zarr
    gmm-pipeline info RUN_DIR

Paths may be URLs (``s3://bucket/prefix``): ``--storage-option KEY=VALUE`` sets the store's
endpoint, region, anonymous or profile (credentials come from the environment or
``~/.aws/credentials``, never from the command line).

Failures exit non-zero with a one-line reason on stderr (``--debug`` shows the traceback):
2 for a bad config or usage, 1 for anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from contextlib import contextmanager

from pipeline.exceptions import ConfigError, GMMPipelineError
from pipeline.options import DTYPES, GENERATE_DEFAULTS, STORE_CHUNK_ROWS


def _chunk_rows(text: str):
    """``--chunk-rows``: "auto", "store" (None: the store's chunks) or an integer >= 1."""
    if text in ("auto", "store"):
        return None if text == "store" else text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, store or an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _add_storage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-option", dest="storage_options", action="append", default=[], metavar="KEY=VALUE",
                   help="for s3:// URLs: endpoint=URL, region=NAME, anonymous=true or profile=NAME (repeatable)")


def _storage_options(args) -> dict:
    """fsspec's options of ``--storage-option KEY=VALUE ...`` (values read as YAML scalars)."""
    import yaml

    from pipeline.exceptions import ConfigError
    from pipeline.storage.stores import check_storage_options, fsspec_options

    given = {}
    for text in args.storage_options:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--storage-option {text}: expected KEY=VALUE, e.g. endpoint=http://127.0.0.1:9000")
        given[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return fsspec_options(check_storage_options(given, "--storage-option"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gmm-pipeline", description="Out-of-core, distributed Gaussian mixture models by EM.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on failure")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="fit the model(s) a YAML config describes; write model, labels, report")
    r.add_argument("config", help="YAML run configuration")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.n_components=8 (repeatable)")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    r.add_argument("--quiet", action="store_true", help="no progress lines")

    g = sub.add_parser("generate", help="write a synthetic Gaussian mixture to Zarr, chunk by chunk")
    g.add_argument("--n-samples", type=int, required=True)
    g.add_argument("--n-features", type=int, required=True)
    g.add_argument("--n-components", type=int, required=True)
    g.add_argument("--seed", type=int, default=GENERATE_DEFAULTS["seed"])
    g.add_argument("--chunk-rows", type=int, default=GENERATE_DEFAULTS["chunk_rows"])
    g.add_argument("--dtype", default=GENERATE_DEFAULTS["dtype"], choices=DTYPES)
    g.add_argument("--separation", type=float, default=GENERATE_DEFAULTS["separation"])
    g.add_argument("--out", required=True, help="output Zarr group (X, labels, true parameters)")
    g.add_argument("--overwrite", action="store_true")
    _add_storage_options(g)

    c = sub.add_parser("convert", help="convert .npy (memory-mapped), Parquet or CSV (streamed) to Zarr")
    c.add_argument("input", help=".npy, .parquet, or delimited text .csv/.tsv/.txt (header optional)")
    c.add_argument("output", help="the Zarr array to write; with --weights a Zarr group of the arrays X and w")
    c.add_argument("--chunk-rows", type=int, default=STORE_CHUNK_ROWS)
    c.add_argument("--columns", type=lambda text: [name.strip() for name in text.split(",")], metavar="A,B,C",
                   help="Parquet/CSV: the columns of X, in this order, by name (or 0-based number; a CSV "
                        "without a header has only numbers); default: all but --weights")
    c.add_argument("--weights", metavar="COLUMN",
                   help="Parquet/CSV: store this column as the 1-D float64 array w beside X, "
                        "for the run config's data.weights: w")
    c.add_argument("--overwrite", action="store_true")
    _add_storage_options(c)

    pr = sub.add_parser("predict", help="labels and responsibilities of new data with a saved model")
    pr.add_argument("model", help="a run directory or a model .npz")
    pr.add_argument("data", help="Zarr array or group with the data")
    pr.add_argument("output", help="output Zarr group (labels, responsibilities)")
    pr.add_argument("--array", default=None, help="array name inside a data group")
    pr.add_argument("--chunk-rows", type=_chunk_rows, default="auto",
                    help="rows per Dask chunk: auto (default: whole stored chunks, ~64 MiB / at most "
                         "262,144 rows, at least 16 chunks), an integer, or store (the store's chunks)")
    pr.add_argument("--no-responsibilities", action="store_true")
    pr.add_argument("--overwrite", action="store_true")
    _add_storage_options(pr)

    i = sub.add_parser("info", help="summary of a finished or running run")
    i.add_argument("run_dir")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    _add_storage_options(i)
    return p


def _handler(stream, level: int, below: int | None = None) -> logging.Handler:
    """Bare messages on ``stream``, flushed after each line, from ``level`` up (to ``below``)."""
    h = logging.StreamHandler(stream)
    h.setLevel(level)
    h.setFormatter(logging.Formatter("%(message)s"))
    if below is not None:
        h.addFilter(lambda record: record.levelno < below)
    return h


@contextmanager
def console_logging(quiet: bool = False):
    """Print the package's log (logger "pipeline") while the command runs: INFO lines (progress)
    on stdout, none with --quiet; warnings and errors on stderr.  Installed for one ``main()``
    call and removed after it, so calling main() again in one process never doubles a line."""
    logger = logging.getLogger("pipeline")
    handlers = [] if quiet else [_handler(sys.stdout, logging.INFO, below=logging.WARNING)]
    handlers.append(_handler(sys.stderr, logging.WARNING))
    level = logger.level
    logger.setLevel(logging.INFO)
    for h in handlers:
        logger.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            logger.removeHandler(h)
        logger.setLevel(level)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        with console_logging(quiet=getattr(args, "quiet", False)):
            return {"run": _run, "generate": _generate, "convert": _convert, "predict": _predict, "info": _info}[
                args.command
            ](args)
    except KeyboardInterrupt:
        print("gmm-pipeline: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one line for the user; the traceback on request
        if args.debug:
            traceback.print_exc()
        msg = " ".join(str(exc).split()) or type(exc).__name__
        kind = "" if isinstance(exc, GMMPipelineError) else f"{type(exc).__name__}: "
        print(f"gmm-pipeline: error: {kind}{msg}", file=sys.stderr)
        if not isinstance(exc, GMMPipelineError) and not args.debug:
            print("gmm-pipeline: (run with --debug for the traceback)", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1


def _run(args) -> int:
    from pipeline.batch.config import load_config
    from pipeline.batch.runner import run

    cfg = load_config(args.config, args.overrides)
    result = run(cfg, resume=args.resume, debug=args.debug)
    sel = result.report["selected"]
    print(f"done: {sel['name']} mean log-likelihood {sel['loglik']:.6f} -> {result.out_dir}", flush=True)
    return 0


def _generate(args) -> int:
    from pipeline.data.synthetic import generate_mixture

    t = time.perf_counter()
    info = generate_mixture(
        args.out, n_samples=args.n_samples, n_features=args.n_features, n_components=args.n_components,
        seed=args.seed, chunk_rows=args.chunk_rows, dtype=args.dtype, separation=args.separation,
        overwrite=args.overwrite, storage_options=_storage_options(args),
    )
    print(f"wrote {args.n_samples:,} x {args.n_features} ({args.n_components} components) to "
          f"{info.get('path', args.out)} in {time.perf_counter() - t:.1f} s")
    return 0


def _convert(args) -> int:
    from pipeline.data.convert import convert

    shape = convert(args.input, args.output, chunk_rows=args.chunk_rows, overwrite=args.overwrite,
                    columns=args.columns, weights=args.weights, storage_options=_storage_options(args))
    weights = "" if args.weights is None else f" as X, and column {args.weights!r} as the weights w"
    print(f"wrote {shape[0]:,} x {shape[1]} to {args.output}{weights}")
    return 0


def _model_path(p: str, storage_options: dict):
    """The model file of a run directory (on a store: of its published generation), or ``p``."""
    from pipeline.storage.stores import StoreOutput, StorePath, location_of

    path = location_of(p, storage_options)
    if isinstance(path, StorePath) and not path.name.endswith(".npz"):
        return StoreOutput(path).verified() / "model.npz"
    return path / "model.npz" if path.is_dir() else path


def _predict(args) -> int:
    import zarr

    from pipeline.batch.runner import write_point_outputs
    from pipeline.data.zarr_io import open_dataset
    from pipeline.estimators.gaussian_mixture import GaussianMixture
    from pipeline.exceptions import OutputExistsError
    from pipeline.storage.atomic import write_dir_atomically
    from pipeline.storage.stores import location_of, metadata_last, zarr_kwargs

    options = _storage_options(args)
    model = GaussianMixture.load(_model_path(args.model, options))
    X = open_dataset(args.data, array=args.array, chunk_rows=args.chunk_rows, storage_options=options)
    out = location_of(args.output, options)
    if out.exists() and not args.overwrite:
        raise OutputExistsError(f"{out} exists; pass --overwrite to replace it")

    def write(tmp) -> None:
        zarr.open_group(str(tmp), mode="w", **zarr_kwargs(tmp))
        write_point_outputs(
            model, X, labels_to=(tmp, "labels"),
            responsibilities_to=None if args.no_responsibilities else (tmp, "responsibilities"),
            hold=metadata_last(tmp),
        )

    write_dir_atomically(out, write, overwrite=args.overwrite)
    print(f"wrote labels{'' if args.no_responsibilities else ' and responsibilities'} of {X.shape[0]:,} rows to {out}")
    return 0


def _info(args) -> int:
    from pipeline.batch.runner import PROGRESS_NAME, staging_dir
    from pipeline.storage.stores import StoreOutput, StorePath, location_of

    d = location_of(args.run_dir, _storage_options(args))
    if isinstance(d, StorePath):  # a store: the published generation, else the one in progress
        store = StoreOutput(d)
        published = store.manifest() is not None
        report = store.verified() / "report.json" if published else d / "report.json"
        stage = None if published else store.staging()
        progress = stage / PROGRESS_NAME if stage is not None else d / PROGRESS_NAME
    else:
        report, progress = d / "report.json", staging_dir(d) / PROGRESS_NAME
    if report.is_file():
        r = json.loads(report.read_text())
        if args.json:
            print(json.dumps(r, indent=2))
            return 0
        sel = r["selected"]
        print(f"finished run {d}")
        print(f"  data: {r['data']['path']} {r['data']['shape']} {r['data']['dtype']}")
        print(f"  selected: {sel['name']}  loglik {sel['loglik']:.6f}  BIC {sel['bic']:.6g}  "
              f"{sel['n_iter']} iterations  converged {sel['converged']}")
        for c in r["candidates"]:
            if c.get("status") == "failed":
                print(f"  candidate {c['name']}: failed: {c['reason']}")
            else:
                icl = f" ICL {c['icl']:.6g}" if c.get("icl") is not None else ""
                print(f"  candidate {c['name']}: loglik {c['loglik']:.6f} BIC {c['bic']:.6g}{icl} n_iter {c['n_iter']}")
        print(f"  total time {r['timings'].get('total_s', float('nan')):.1f} s")
        return 0
    if progress.is_file():
        p = json.loads(progress.read_text())
        age = time.time() - p["time"]
        print(f"running (or interrupted) run {d}: candidate {p['candidate']} restart {p['restart']} "
              f"iteration {p['iteration']} loglik {p['mean_loglik']:.8f}, last update {age:.0f} s ago"
              + (f" (pass {p['pass']}, {p['live']} EM runs going)" if "pass" in p else ""))
        return 0
    from pipeline.exceptions import DataError

    raise DataError(f"{d} is not a gmm-pipeline run directory (no report.json, no run in progress)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
