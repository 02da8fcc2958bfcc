"""The `gmm-pipeline` command as a user runs it: YAML config in; model, labels, report out."""

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr

from pipeline import GaussianMixture
from pipeline.batch.config import config_from_dict
from pipeline.batch.runner import run
from pipeline.data.zarr_io import open_dataset
from pipeline.families import MCLUST_MODELS, get_family

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "pipeline.batch.cli"]


def gmm(*args, cwd=None, timeout=300):
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def small_config(tmp_path, **sections):
    """The demo config, scaled down, written into tmp_path."""
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["data"]["path"] = str(tmp_path / "data.zarr")
    cfg["data"]["chunk_rows"] = 5000
    cfg["data"]["generate"].update(n_samples=20000, n_features=4, n_components=3, chunk_rows=5000, separation=6.0)
    cfg["model"]["n_components"] = 3
    cfg["cluster"].update(n_workers=2, memory_limit="1GiB")
    cfg["output"]["dir"] = str(tmp_path / "run")
    for k, v in sections.items():
        cfg[k].update(v)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit="1GiB") as c, Client(c) as cl:
        yield cl


def test_demo_config_end_to_end_through_the_command(tmp_path):
    config, cfg = small_config(tmp_path)
    r = gmm("run", config)
    assert r.returncode == 0, r.stderr
    assert "iter    1" in r.stdout and "rows/s" in r.stdout and "dashboard: http://127.0.0.1:" in r.stdout
    # the progress line counts the lockstep EM passes over the data, as report.json does
    passes = [int(p) for p in re.findall(r" iter +\d+ .* rows/s  EM pass (\d+)$", r.stdout, flags=re.M)]
    report = json.loads((Path(cfg["output"]["dir"]) / "report.json").read_text())
    assert passes[0] == 1 and passes == sorted(passes)
    assert passes[-1] == report["passes"]["em"] - 1  # (the last pass only scores the runs that stopped)
    out = Path(cfg["output"]["dir"])
    for name in ("model.npz", "report.json", "report.md", "labels.zarr", "responsibilities.zarr",
                 "loglik.png", "clusters.png"):
        assert (out / name).exists(), name
    X = open_dataset(cfg["data"]["path"])
    labels = zarr.open_array(out / "labels.zarr")
    resp = zarr.open_array(out / "responsibilities.zarr")
    assert labels.shape == (20000,) and labels.dtype == np.int32
    assert resp.shape == (20000, 3) and resp.dtype == np.float32
    assert labels.chunks == (5000,) and resp.chunks == (5000, 3)
    np.testing.assert_allclose(resp[:].sum(axis=1), 1.0, rtol=1e-5)
    report = json.loads((out / "report.json").read_text())
    model = GaussianMixture.load(out / "model.npz")
    assert report["selected"]["loglik"] == pytest.approx(model.score(X), rel=1e-12)
    np.testing.assert_array_equal(labels[:], model.predict(X).compute())
    assert report["data"]["shape"] == [20000, 4]
    assert report["config"]["model"]["n_components"] == 3
    assert report["versions"]["numpy"] == np.__version__
    assert len(report["history"]) == report["selected"]["n_iter"]
    true = zarr.open_group(cfg["data"]["path"])["labels"][:]
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(true, labels[:]) > 0.99
    # info on the finished run, predict with the saved model reproduces the labels
    info = gmm("info", out)
    assert info.returncode == 0 and "k3-full" in info.stdout
    pred = gmm("predict", out, cfg["data"]["path"], tmp_path / "pred.zarr")
    assert pred.returncode == 0, pred.stderr
    np.testing.assert_array_equal(zarr.open_group(tmp_path / "pred.zarr")["labels"][:], labels[:])


def test_existing_run_dir_is_never_overwritten_without_overwrite_true(tmp_path, client):
    config, cfg = small_config(tmp_path)
    run(config_from_dict(cfg), client=client)
    model = Path(cfg["output"]["dir"]) / "model.npz"
    before = digest(model)
    r = gmm("run", config)
    assert r.returncode != 0
    assert "already holds an earlier run" in r.stderr and "output.overwrite: true" in r.stderr
    assert digest(model) == before
    # a run that fails (NaN in its data) with overwrite leaves the earlier outputs intact
    bad = tmp_path / "bad.zarr"
    z = zarr.create_array(bad, shape=(100, 4), chunks=(50, 4), dtype="f8")
    z[:] = np.where(np.arange(400).reshape(100, 4) == 7, np.nan, 1.0)
    r = gmm("run", config, "--set", f"data.path={bad}", "--set", "data.generate=null",
            "--set", "output.overwrite=true")
    assert r.returncode != 0
    assert "bad.zarr: 1 NaN and 0 inf values in 1 of 1 row chunks: row chunk 0 (rows 0-99)" in r.stderr, r.stderr
    assert digest(model) == before
    # with overwrite: true the outputs are replaced
    cfg2 = {**cfg, "model": {**cfg["model"], "covariance_type": "diag"}, "output": {**cfg["output"], "overwrite": True}}
    run(config_from_dict(cfg2), client=client)
    assert GaussianMixture.load(model).covariance_type == "diag"


def test_bic_selects_the_true_number_of_components(tmp_path, client):
    config, cfg = small_config(tmp_path)
    cfg["model"]["n_components"] = [2, 3, 4, 5]
    cfg["output"]["plots"] = True
    result = run(config_from_dict(cfg), client=client)
    assert result.report["selected"]["n_components"] == 3
    bics = {c["n_components"]: c["bic"] for c in result.report["candidates"]}
    assert min(bics, key=bics.get) == 3 and len(bics) == 4
    assert (result.out_dir / "bic.png").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["model"].update(n_componets=3), "n_componets.*Did you mean 'n_components'"),
        (lambda c: c["model"].update(max_iter="many"), "model.max_iter"),
        (lambda c: c["model"].update(covariance_type="round"), "model.covariance_type"),
        (lambda c: c["model"].update(tol=-1), "model.tol"),
        (lambda c: c["model"].update(init_sample=0), r"model.init_sample is too small: got 0; accepted: an integer >= 1 or null"),
    ],
)
def test_config_errors_exit_nonzero_naming_the_key(tmp_path, edit, message):
    config, cfg = small_config(tmp_path)
    edit(cfg)
    config.write_text(yaml.safe_dump(cfg))
    r = gmm("run", config)
    assert r.returncode == 2
    assert "config.yaml" in r.stderr
    import re

    assert re.search(message, r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_data_errors_exit_nonzero_with_the_reason(tmp_path):
    config, cfg = small_config(tmp_path)
    r = gmm("run", config, "--set", f"data.path={tmp_path / 'nowhere.zarr'}", "--set", "data.generate=null")
    assert r.returncode == 1 and "nowhere.zarr does not exist" in r.stderr
    empty = tmp_path / "empty.zarr"
    zarr.create_array(empty, shape=(0, 4), chunks=(10, 4), dtype="f8")
    r = gmm("run", config, "--set", f"data.path={empty}", "--set", "data.generate=null")
    assert r.returncode == 1 and "empty.zarr: the array is empty, shape (0, 4)" in r.stderr, r.stderr
    assert not Path(cfg["output"]["dir"]).exists()


def test_generate_convert_and_info_commands(tmp_path):
    r = gmm("generate", "--n-samples", 3000, "--n-features", 3, "--n-components", 2, "--chunk-rows", 1000,
            "--out", tmp_path / "g.zarr")
    assert r.returncode == 0, r.stderr
    X = open_dataset(tmp_path / "g.zarr")
    assert X.shape == (3000, 3) and X.chunks[0] == (1000, 1000, 1000)
    np.save(tmp_path / "x.npy", X.compute())
    r = gmm("convert", tmp_path / "x.npy", tmp_path / "x.zarr", "--chunk-rows", 700)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(open_dataset(tmp_path / "x.zarr").compute(), X.compute())
    r = gmm("info", tmp_path)
    assert r.returncode == 1 and "not a gmm-pipeline run directory" in r.stderr


def test_two_runs_never_share_an_output_dir(tmp_path):
    from pipeline.batch.runner import run_lock
    from pipeline.exceptions import OutputExistsError

    _, cfg = small_config(tmp_path)
    with run_lock(Path(cfg["output"]["dir"])):  # as if another run were going on
        with pytest.raises(OutputExistsError, match="another gmm-pipeline run is using output.dir"):
            run(config_from_dict(cfg))
    assert not Path(cfg["output"]["dir"]).exists()


def test_output_dir_check_refuses_results_and_files_before_any_work(tmp_path):
    from pipeline.batch.runner import check_output_dir
    from pipeline.exceptions import OutputExistsError

    _, cfg = small_config(tmp_path)
    out = Path(cfg["output"]["dir"])
    out.mkdir()
    assert check_output_dir(config_from_dict(cfg), resume=False)[0] == out  # empty: fine
    out.mkdir()
    (out / "model.npz").write_text("{}")
    with pytest.raises(OutputExistsError) as info:
        check_output_dir(config_from_dict(cfg), resume=False)
    assert str(out) in str(info.value) and "output.overwrite: true" in str(info.value)
    overwrite = {**cfg, "output": {**cfg["output"], "overwrite": True}}
    assert check_output_dir(config_from_dict(overwrite), resume=False)[0] == out
    assert (out / "model.npz").read_text() == "{}"  # nothing deleted before the run succeeds
    afile = {**cfg, "output": {**cfg["output"], "dir": str(tmp_path / "f")}}
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_output_dir(config_from_dict(afile), resume=False)


def test_predict_chunk_rows_accepts_auto_store_and_integers(capsys):
    from pipeline.batch.cli import _parser

    def parsed(*extra):
        return _parser().parse_args(["predict", "run", "data.zarr", "out.zarr", *extra]).chunk_rows

    assert parsed() == "auto" and parsed("--chunk-rows", "auto") == "auto"
    assert parsed("--chunk-rows", "store") is None and parsed("--chunk-rows", "4096") == 4096
    for bad in ("0", "big"):
        with pytest.raises(SystemExit):
            parsed("--chunk-rows", bad)
        assert "--chunk-rows" in capsys.readouterr().err


def _blobs_with_a_duplicated_point(path):
    """Three blobs and 40 copies of one far point: without regularisation every model whose
    components have volumes or shapes of their own collapses there."""
    from pipeline.data.zarr_io import write_array_zarr

    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(size=(400, 3)) + c for c in ((0, 0, 0), (7, 0, 0), (0, 7, 0))]
                       + [np.tile([[40.0, 40.0, 40.0]], (40, 1))])
    write_array_zarr(X[rng.permutation(len(X))], path)


def test_all_models_give_bic_and_icl_tables_and_failed_candidates_are_recorded(tmp_path, client):
    _blobs_with_a_duplicated_point(tmp_path / "dup.zarr")
    config, cfg = small_config(tmp_path)
    cfg["data"] = {"path": str(tmp_path / "dup.zarr"), "chunk_rows": 400}
    cfg["model"].update(n_components=[3, 4], covariance_type="all", reg_covar=0.0, dtype="float64", init_sample=None)
    cfg["output"]["plots"] = True
    result = run(config_from_dict(cfg), client=client)
    table = result.report["criteria"]
    assert table["models"] == list(MCLUST_MODELS) and table["n_components"] == [3, 4]
    assert len(result.report["candidates"]) == 28
    failed = table["failed"]
    # equal volume and shape (EII, EEI, EEE, EEV): the other components keep the collapsed
    # one's covariance positive definite.  The others collapse, and fail where a factorisation
    # or positivity check sees it (as in scikit-learn, rounding can leave a variance of 1e-13
    # positive instead: VEI here): 9 of those 10 models at both G
    assert not {"EII", "EEI", "EEE", "EEV"} & {n.split("-")[1] for n in failed}
    assert all(get_family(n.split("-")[1]).own_scatter for n in failed), sorted(failed)
    assert len(failed) >= 18, sorted(failed)
    assert all("increase reg_covar" in reason for reason in failed.values())
    for k, bic_row, icl_row in zip(table["n_components"], table["bic"], table["icl"]):
        for m, b, i in zip(table["models"], bic_row, icl_row):
            assert (b is None) == (i is None) == (f"k{k}-{m}" in failed)
            assert b is None or i >= b  # ICL adds the classification entropy
    sel = result.report["selected"]
    best = min((c for c in result.report["candidates"] if c["status"] == "ok"), key=lambda c: c["bic"])
    assert sel["name"] == best["name"] and sel["name"] not in failed
    md = (result.out_dir / "report.md").read_text()
    assert "BIC over G x model" in md and "ICL over G x model" in md and "| failed |" in md
    assert (result.out_dir / "bic.png").stat().st_size > 0
    info = gmm("info", result.out_dir)
    assert info.returncode == 0, info.stderr
    assert f"candidate k3-VVV: failed: {failed['k3-VVV']}" in info.stdout and "ICL" in info.stdout


def test_a_run_whose_every_candidate_fails_is_one_clear_error(tmp_path):
    _blobs_with_a_duplicated_point(tmp_path / "dup.zarr")
    config, cfg = small_config(tmp_path)
    cfg["data"] = {"path": str(tmp_path / "dup.zarr"), "chunk_rows": 400}
    cfg["model"].update(n_components=[3, 4], covariance_type="VVV", reg_covar=0.0)
    cfg["cluster"].update(n_workers=1)
    config.write_text(yaml.safe_dump(cfg))
    r = gmm("run", config)
    assert r.returncode != 0
    assert "every candidate failed (k3-VVV, k4-VVV)" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run").exists()  # nothing published (the staging directory stays for --resume)


def test_resume_keeps_failed_candidates_without_refitting_them(tmp_path, client):
    import pipeline.batch.runner as run_mod

    _blobs_with_a_duplicated_point(tmp_path / "dup.zarr")
    config, cfg = small_config(tmp_path)
    cfg["data"] = {"path": str(tmp_path / "dup.zarr"), "chunk_rows": 400}
    cfg["model"].update(n_components=3, covariance_type=["VVV", "EEE"], reg_covar=0.0, max_iter=5, init_sample=None)

    class Stop(Exception):
        pass

    def boom(*a, **k):
        raise Stop

    import pipeline.estimators.selection as selection_mod

    original_outputs, original_fit = run_mod._write_point_outputs, selection_mod._starts
    fitted = []

    def counting_fit(est, *args, **kwargs):  # the candidates initialised (and so fitted) by the run
        fitted.append(run_mod.candidate_name(est.n_components, est.covariance_type))
        return original_fit(est, *args, **kwargs)

    try:
        run_mod._write_point_outputs = boom  # interrupted after both candidates, before outputs
        with pytest.raises(Stop):
            run(config_from_dict(cfg), client=client)
        run_mod._write_point_outputs, selection_mod._starts = original_outputs, counting_fit
        result = run(config_from_dict(cfg), resume=True, client=client)
    finally:
        run_mod._write_point_outputs, selection_mod._starts = original_outputs, original_fit
    assert "k3-VVV" not in fitted  # its failure came from the checkpoint
    by_name = {c["name"]: c for c in result.report["candidates"]}
    assert by_name["k3-VVV"]["status"] == "failed" and "increase reg_covar" in by_name["k3-VVV"]["reason"]
    assert result.report["selected"]["name"] == "k3-EEE"


def test_data_weights_in_the_group_or_their_own_store_weigh_the_run(tmp_path, client):
    from pipeline.data.zarr_io import write_array_zarr

    config, cfg = small_config(tmp_path)
    cfg["model"].update(n_components=[2, 3], max_iter=30, dtype="float64", init_sample=None)
    X = open_dataset(run(config_from_dict(cfg), client=client).out_dir.parent / "data.zarr")  # generated
    w = np.random.default_rng(0).integers(0, 3, size=X.shape[0]).astype(np.float64)
    zarr.open_group(cfg["data"]["path"], mode="r+").create_array("w", data=w, chunks=(3000,))
    write_array_zarr(w, tmp_path / "w.zarr")
    expected = GaussianMixture(3, random_state=0, max_iter=30, tol=cfg["model"]["tol"], reg_covar=cfg["model"]["reg_covar"],
                               dtype="float64").fit(X, sample_weight=w)
    for i, weights in enumerate(("w", {"path": str(tmp_path / "w.zarr")})):
        cfg["data"]["weights"] = weights
        cfg["output"]["dir"] = str(tmp_path / f"weighted{i}")
        result = run(config_from_dict(cfg), client=client)
        sel = result.report["selected"]
        assert sel["n_components"] == 3
        np.testing.assert_allclose(result.model.means_, expected.means_, rtol=1e-10)
        assert sel["loglik"] == pytest.approx(expected.score(X, sample_weight=w), rel=1e-12)
        assert sel["bic"] == pytest.approx(expected.bic(X, sample_weight=w), rel=1e-12)
        assert result.report["config"]["data"]["weights"]["array"] == ("w" if i == 0 else None)
    for weights, message in (("v", "data.weights: .* has no array 'v'"),
                             ({"path": str(tmp_path / "nowhere.zarr")}, "does not exist")):
        cfg["data"]["weights"] = weights
        cfg["output"]["dir"] = str(tmp_path / "bad")
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(cfg))
        r = gmm("run", path)
        assert r.returncode != 0 and re.search(message, r.stderr) and "Traceback" not in r.stderr, r.stderr


def test_resume_refuses_other_weights(tmp_path, client):
    import pipeline.batch.runner as run_mod
    from pipeline.exceptions import CheckpointError

    config, cfg = small_config(tmp_path)
    cfg["model"].update(max_iter=3)
    run(config_from_dict(cfg), client=client)  # generates the data
    group = zarr.open_group(cfg["data"]["path"], mode="r+")
    group.create_array("w", data=np.ones(group["X"].shape[0]), chunks=(5000,))
    cfg["data"]["weights"] = "w"
    cfg["output"]["dir"] = str(tmp_path / "weighted")

    class Stop(Exception):
        pass

    def boom(*a, **k):
        raise Stop

    original = run_mod._write_point_outputs
    try:
        run_mod._write_point_outputs = boom
        with pytest.raises(Stop):
            run(config_from_dict(cfg), client=client)
    finally:
        run_mod._write_point_outputs = original
    group["w"][7] = 2.0
    with pytest.raises(CheckpointError, match="sha256_weight_moments"):
        run(config_from_dict(cfg), resume=True, client=client)
    group["w"][7] = 1.0
    resumed = run(config_from_dict(cfg), resume=True, client=client).report["selected"]
    cfg["output"]["dir"] = str(tmp_path / "uninterrupted")
    fresh = run(config_from_dict(cfg), client=client).report["selected"]
    assert (resumed["n_iter"], resumed["loglik"]) == (fresh["n_iter"], fresh["loglik"])


def test_nan_policy_in_the_yaml_omits_or_marginalizes_and_the_report_says_so(tmp_path, client):
    from pipeline.data.zarr_io import write_array_zarr

    config, cfg = small_config(tmp_path)
    cfg["model"].update(max_iter=40, dtype="float64", init_sample=None)
    X = open_dataset(run(config_from_dict(cfg), client=client).out_dir.parent / "data.zarr").compute()  # generated
    X = X.astype(np.float64)
    X[np.random.default_rng(1).random(X.shape) < 0.1] = np.nan
    X[np.isnan(X).all(axis=1), 0] = 0.0
    import dask.array as da

    write_array_zarr(da.from_array(X, chunks=(5000, -1)), tmp_path / "nan.zarr")
    cfg["data"]["path"] = str(tmp_path / "nan.zarr")
    cfg["data"].pop("generate")
    incomplete = int(np.isnan(X).any(axis=1).sum())
    for policy in ("omit", "marginalize"):
        cfg["model"]["nan_policy"] = policy
        cfg["output"]["dir"] = str(tmp_path / policy)
        result = run(config_from_dict(cfg), client=client)
        m = cfg["model"]
        expected = GaussianMixture(3, random_state=0, max_iter=40, tol=m["tol"], reg_covar=m["reg_covar"], dtype="float64",
                                   nan_policy=policy, chunk_rows=5000).fit(X)
        np.testing.assert_allclose(result.model.means_, expected.means_, rtol=1e-10)
        assert result.report["selected"]["bic"] == pytest.approx(expected.bic(X), rel=1e-12)
        missing = result.report["data"]["missing"]
        assert missing == {"nan_policy": policy, "n_missing_values": int(np.isnan(X).sum()),
                           "n_incomplete_rows": incomplete, "n_rows": len(X)}
        assert f"in {incomplete:,} of {len(X):,} rows" in (result.out_dir / "report.md").read_text()
        labels = zarr.open_array(str(result.out_dir / "labels.zarr"), mode="r")[:]
        np.testing.assert_array_equal(labels, expected.predict(X))
        assert (labels == -1).sum() == (incomplete if policy == "omit" else 0)
    cfg["model"]["nan_policy"] = "raise"
    cfg["output"]["dir"] = str(tmp_path / "raise")
    path = tmp_path / "raise.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = gmm("run", path)
    assert r.returncode != 0 and "NaN" in r.stderr and "nan_policy" in r.stderr and "Traceback" not in r.stderr, r.stderr
    cfg["model"]["nan_policy"] = "drop"
    path.write_text(yaml.safe_dump(cfg))
    r = gmm("run", path)
    assert r.returncode != 0 and "model.nan_policy" in r.stderr and "marginalize" in r.stderr, r.stderr


def test_a_yaml_run_fits_its_candidates_in_lockstep_with_the_one_by_one_figures(tmp_path, client):
    """6 candidates (k 2-4 x full, diag), 2 restarts each, from a YAML run: every candidate's
    log-likelihood, BIC, AIC, ICL, history, n_iter and best restart are those of
    ``GaussianMixture(k, covariance_type=ct, ...).fit`` + ``information_criteria`` (1e-10), and
    the model that of the selected one; the EM costs the slowest run's iterations + 1 passes
    (its scoring), fewer than the one-by-one sum (iterations + 1 criteria pass per candidate)."""
    from pipeline.data.zarr_io import dataset_from_config

    config, cfg = small_config(tmp_path)
    cfg["model"].update(n_components=[2, 3, 4], covariance_type=["full", "diag"], n_init=2, max_iter=40,
                        dtype="float64", init_params="random_from_data", init_sample=None)
    cfg["output"].update(plots=False, responsibilities=False)
    config.write_text(yaml.safe_dump(cfg))
    r = gmm("run", config)
    assert r.returncode == 0, r.stderr
    report = json.loads((Path(cfg["output"]["dir"]) / "report.json").read_text())
    X = dataset_from_config(config_from_dict(cfg).data)
    m = cfg["model"]
    one_by_one = slowest = 0
    assert [c["name"] for c in report["candidates"]] == [f"k{k}-{ct}" for ct in ("full", "diag") for k in (2, 3, 4)]
    for c in report["candidates"]:
        ref = GaussianMixture(c["n_components"], covariance_type=c["covariance_type"], n_init=2,
                              max_iter=m["max_iter"], tol=m["tol"], reg_covar=m["reg_covar"], dtype="float64",
                              init_params="random_from_data", random_state=m["random_state"]).fit(X)
        ic = ref.information_criteria(X)
        assert c["status"] == "ok" and (c["n_iter"], c["best_init"], c["converged"]) == (
            ref.n_iter_, ref.best_init_, ref.converged_), c["name"]
        assert c["n_parameters"] == ic["n_parameters"]
        for key in ("loglik", "bic", "aic", "icl"):
            np.testing.assert_allclose(c[key], ic[key], rtol=1e-10, err_msg=f"{c['name']} {key}")
        np.testing.assert_allclose(c["history"], ref.history_, rtol=1e-10, err_msg=c["name"])
        np.testing.assert_allclose(c["lower_bound"], ref.lower_bound_, rtol=1e-10)
        one_by_one += sum(len(h) for h in ref.init_history_) + 1  # each restart's iterations, then the criteria
        slowest = max([slowest] + [len(h) for h in ref.init_history_])
        if c["name"] == report["selected"]["name"]:
            model = GaussianMixture.load(Path(cfg["output"]["dir"]) / "model.npz")
            for attr in ("weights_", "means_", "covariances_"):
                np.testing.assert_allclose(getattr(model, attr), getattr(ref, attr), rtol=1e-10, atol=1e-12)
    passes = report["passes"]
    assert passes["em"] == slowest + 1  # the slowest run's iterations, then the pass that scores it
    assert passes["summary"] == 1 and passes["initialisation"] >= 1 and passes["outputs"] == 1
    assert passes["total"] == passes["summary"] + passes["initialisation"] + passes["em"] + passes["outputs"]
    assert passes["em"] < one_by_one / 3, (passes, one_by_one)  # here the sum is 6 x 2 runs' iterations + 6
    assert f"passes over the data: {passes['total']} " in r.stdout
    assert r.stdout.count(" restart 1 iter    1 ") == 6  # every run's progress lines, as before


def test_a_yaml_run_with_init_sample_starts_as_gaussian_mixture_ic_and_initialises_in_no_pass(tmp_path, client):
    """model.init_sample: the runner draws the sample in its summary pass and starts its
    candidates from it as ``GaussianMixtureIC(init_sample=...)`` does (one start per candidate,
    the best of 10 * n_init short EM runs on the sample): the same selection, every candidate's
    log-likelihood, BIC, ICL and n_iter, and the selected model's parameters (1e-10).
    report.json: the summary 1 pass (the data cached by it), initialisation 0, the EM those of
    GaussianMixtureIC's lockstep."""
    from pipeline import GaussianMixtureIC
    from pipeline.data.zarr_io import dataset_from_config

    _, cfg = small_config(tmp_path)
    cfg["model"].update(n_components=[2, 3, 4], covariance_type=["full", "diag"], n_init=2, max_iter=40,
                        dtype="float64", init_sample=3000)
    cfg["output"].update(plots=False, responsibilities=False)
    result = run(config_from_dict(cfg), client=client)
    report, m = result.report, cfg["model"]
    X = dataset_from_config(config_from_dict(cfg).data)  # (generated by the run)
    ic = GaussianMixtureIC(n_components=m["n_components"], covariance_type=m["covariance_type"], n_init=2,
                           max_iter=m["max_iter"], tol=m["tol"], reg_covar=m["reg_covar"], init_params=m["init_params"],
                           random_state=m["random_state"], dtype="float64", init_sample=3000).fit(X)
    assert ic.init_sample_rows_ < 0.2 * X.shape[0]  # a sample, not the data
    assert [c["name"] for c in report["candidates"]] == [f"k{c['n_components']}-{c['covariance_type']}"
                                                         for c in ic.criteria_]
    assert report["selected"]["name"] == f"k{ic.n_components_}-{ic.covariance_type_}"
    for c, ref in zip(report["candidates"], ic.criteria_):
        assert c["status"] == ref["status"] == "ok" and c["n_iter"] == ref["n_iter"] and c["best_init"] == 0, c["name"]
        for key in ("loglik", "bic", "icl", "aic"):
            np.testing.assert_allclose(c[key], ref[key], rtol=1e-10, err_msg=f"{c['name']} {key}")
        est = ic.estimators_[ref["n_components"], ref["covariance_type"]]
        np.testing.assert_allclose(c["history"], est.history_, rtol=1e-10, err_msg=c["name"])
    best = ic.best_estimator_
    for attr in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(result.model, attr), getattr(best, attr), rtol=1e-10, atol=1e-12)
    passes = report["passes"]
    assert (passes["summary"], passes["initialisation"], passes["em"]) == (1, 0, ic.n_em_passes_), passes
    assert passes["total"] == 1 + passes["em"] + passes["outputs"]
