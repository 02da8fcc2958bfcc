"""Run configuration: defaults, overrides, and error messages that say what, where and how to fix."""

import json
import os
import textwrap

import pytest

from pipeline.batch.config import (
    ClusterConfig,
    ModelConfig,
    RunConfig,
    config_from_dict,
    load_config,
    parse_memory,
)
from pipeline.exceptions import ConfigError


def write_yaml(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def config_error(tmp_path, text, overrides=()):
    path = write_yaml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# ---------------------------------------------------------------------------- defaults


def test_minimal_file_gets_documented_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(write_yaml(tmp_path, "model: {}\n"))
    assert isinstance(cfg, RunConfig)
    assert cfg.source == str(tmp_path / "run.yaml")
    assert cfg.data.path == str(tmp_path / "data" / "demo.zarr")
    assert cfg.data.array is None and cfg.data.chunk_rows == "auto" and cfg.data.cache == "auto"
    assert cfg.data.generate is None
    assert cfg.model == ModelConfig()
    assert (cfg.model.n_components, cfg.model.covariance_type) == (5, "full")
    assert cfg.model.tol == 1e-3 and cfg.model.reg_covar == 1e-6 and cfg.model.random_state == 0
    assert cfg.cluster.kind == "local" and cfg.cluster.n_workers == 2
    assert cfg.cluster.memory_limit == 4 * 2**30
    assert cfg.cluster.security == {} and cfg.cluster.jobqueue == {}
    assert cfg.output.dir == str(tmp_path / "runs" / "demo")
    assert cfg.output.overwrite is False and cfg.output.labels is True
    assert cfg.checkpoint.every == 1


def test_relative_paths_resolve_against_cwd_not_the_yaml_dir(tmp_path, monkeypatch):
    conf_dir = tmp_path / "configs"
    conf_dir.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cfg = load_config(write_yaml(conf_dir, "data: {path: d/x.zarr}\noutput: {dir: out}\n"))
    assert cfg.data.path == str(work / "d" / "x.zarr")
    assert cfg.output.dir == str(work / "out")
    assert cfg.to_dict()["data"]["path"] == str(work / "d" / "x.zarr")


def test_url_paths_are_kept_as_given():
    cfg = config_from_dict({"data": {"path": "s3://bucket/x.zarr"}})
    assert cfg.data.path == "s3://bucket/x.zarr"


def test_to_dict_is_json_and_round_trips():
    cfg = config_from_dict(
        {
            "model": {"n_components": [2, 3], "covariance_type": ["full", "diag"]},
            "data": {"generate": {"n_samples": 100}},
            "cluster": {"jobqueue": {"cores": 4}},
        }
    )
    d = cfg.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d["model"]["n_components"] == [2, 3]
    assert set(d) == {"data", "model", "cluster", "output", "checkpoint"}
    again = config_from_dict(d)
    assert again.to_dict() == d
    assert again.model == cfg.model and again.data == cfg.data


def test_generate_section_fills_its_defaults():
    cfg = config_from_dict({"data": {"generate": {"n_samples": 1000, "seed": 3}}})
    g = cfg.data.generate
    assert (g.n_samples, g.seed, g.n_features, g.n_components, g.chunk_rows) == (
        1000, 3, 8, 5, 65536,
    )


def test_memory_and_float_spellings_are_accepted():
    cfg = config_from_dict(
        {"cluster": {"memory_limit": "512MiB", "timeout": 10}, "model": {"tol": "1e-4"}}
    )
    assert cfg.cluster.memory_limit == 512 * 2**20
    assert cfg.cluster.timeout == 10.0
    assert cfg.model.tol == 1e-4  # PyYAML reads 1e-4 (no dot) as a string


@pytest.mark.parametrize(
    "text, expected",
    [("4GiB", 4 * 2**30), ("4GB", 4 * 10**9), ("512MiB", 512 * 2**20), (1024, 1024)],
)
def test_parse_memory_reads_units_and_bytes(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("bad", ["lots", True, 0, -5, 1.5])
def test_parse_memory_rejects_nonsense(bad):
    with pytest.raises(ConfigError, match="memory size"):
        parse_memory(bad)


def test_model_lists_give_every_candidate():
    m = config_from_dict(
        {"model": {"n_components": [2, 4], "covariance_type": ["full", "diag"]}}
    ).model
    assert m.is_search
    assert m.candidates() == [(2, "full"), (4, "full"), (2, "diag"), (4, "diag")]
    single = ModelConfig()
    assert not single.is_search and single.candidates() == [(5, "full")]


def test_covariance_type_all_is_mclusts_14_and_two_names_of_one_model_are_refused(tmp_path):
    from pipeline.families import MCLUST_MODELS

    m = config_from_dict({"model": {"n_components": [2, 3], "covariance_type": "all"}}).model
    assert m.covariance_type == MCLUST_MODELS and len(m.candidates()) == 28
    assert config_from_dict({"model": {"covariance_type": "VEV"}}).model.candidates() == [(5, "VEV")]
    msg = config_error(tmp_path, """
        model:
          covariance_type: [full, EEV, VVV]
        """)
    assert "model.covariance_type" in msg and "names one model twice" in msg and "line 2" in msg


# ---------------------------------------------------------------------------- overrides


def test_overrides_parse_yaml_values_including_lists_null_and_bools(tmp_path):
    path = write_yaml(tmp_path, "model:\n  n_components: 3\n")
    cfg = load_config(
        path,
        [
            "model.n_components=[2, 4, 8]",
            "model.random_state=null",
            "output.plots=false",
            "model.tol=0.01",
            "cluster.jobqueue.cores=4",
            "data.generate.n_samples=500",
            "data.chunk_rows=null",
        ],
    )
    assert cfg.model.n_components == (2, 4, 8)
    assert cfg.model.random_state is None
    assert cfg.output.plots is False
    assert cfg.model.tol == 0.01
    assert cfg.cluster.jobqueue == {"cores": 4}
    assert cfg.data.generate.n_samples == 500
    assert cfg.data.chunk_rows is None  # the store's chunks
    assert load_config(path, ["data.chunk_rows=auto"]).data.chunk_rows == "auto"
    assert load_config(path, ["data.chunk_rows=4096"]).data.chunk_rows == 4096


def test_override_with_unknown_key_is_an_error_with_suggestion(tmp_path):
    msg = config_error(tmp_path, "model: {}\n", ["model.n_component=8"])
    assert "--set model.n_component=8" in msg
    assert "unknown key 'model.n_component'" in msg
    assert "Did you mean 'n_components'?" in msg


def test_override_with_bad_value_names_the_override(tmp_path):
    msg = config_error(tmp_path, "model:\n  max_iter: 10\n", ["model.max_iter=-1"])
    assert "--set model.max_iter=-1" in msg and "model.max_iter" in msg and "-1" in msg


def test_override_without_equals_sign_is_rejected(tmp_path):
    msg = config_error(tmp_path, "model: {}\n", ["model.n_components"])
    assert "expected 'section.key=value'" in msg


def test_override_below_a_scalar_key_is_rejected(tmp_path):
    msg = config_error(tmp_path, "model: {}\n", ["model.tol.x=1"])
    assert "model.tol" in msg and "single value" in msg


# ---------------------------------------------------------------------------- errors


def test_unknown_key_names_file_line_valid_keys_and_closest_match(tmp_path):
    msg = config_error(
        tmp_path,
        """
        data:
          path: x.zarr
        model:
          n_components: 3
          covariance_typ: full
        """,
    )
    assert "run.yaml" in msg
    assert "line 5" in msg
    assert "model.covariance_typ" in msg
    assert "Did you mean 'covariance_type'?" in msg
    assert "n_components, covariance_type, init_params" in msg  # the valid keys


def test_unknown_section_suggests_the_closest_section(tmp_path):
    msg = config_error(tmp_path, "model: {}\nclustre:\n  n_workers: 2\n")
    assert "line 2" in msg and "'clustre'" in msg and "Did you mean 'cluster'?" in msg


def test_bad_choice_names_key_line_value_and_accepted_values(tmp_path):
    msg = config_error(tmp_path, "model:\n  n_components: 3\n  covariance_type: fulll\n")
    assert "run.yaml, line 3" in msg
    assert "model.covariance_type" in msg
    assert "'fulll'" in msg
    assert "'full', 'tied', 'diag', 'spherical'" in msg
    assert "did you mean 'full'?" in msg


@pytest.mark.parametrize(
    "yaml_text, key, fragment",
    [
        ("model:\n  n_components: five\n", "model.n_components", "must be an integer"),
        ("model:\n  n_components: 0\n", "model.n_components", "too small"),
        ("model:\n  n_components: []\n", "model.n_components", "empty list"),
        ("model:\n  n_components: [2, 0]\n", "model.n_components[1]", "too small"),
        ("model:\n  n_components: true\n", "model.n_components", "not bool"),
        ("model:\n  max_iter: -1\n", "model.max_iter", "too small"),
        ("model:\n  n_init: 2.5\n", "model.n_init", "must be an integer"),
        ("model:\n  tol: -1.0e-3\n", "model.tol", "out of range"),
        ("model:\n  tol: .nan\n", "model.tol", "finite"),
        ("model:\n  reg_covar: -1.0e-6\n", "model.reg_covar", "out of range"),
        ("model:\n  dtype: float16\n", "model.dtype", "'float32', 'float64'"),
        ("model:\n  random_state: false\n", "model.random_state", "not bool"),
        ("model:\n  init_params: kmean\n", "model.init_params", "did you mean 'kmeans'"),
        ("model:\n  init_sample: 0\n", "model.init_sample", "too small"),
        ("model:\n  init_sample: lots\n", "model.init_sample", "an integer >= 1 or null"),
        ("model:\n  init_sample: 2.5\n", "model.init_sample", "must be an integer, not float"),
        ("data:\n  chunk_rows: 0\n", "data.chunk_rows", "too small"),
        ("data:\n  chunk_rows: big\n", "data.chunk_rows", "'auto' or null"),
        ("data:\n  chunk_rows: true\n", "data.chunk_rows", "not bool"),
        ("data:\n  cache: disk\n", "data.cache", "'auto', 'memory', 'none'"),
        ("data:\n  path: ''\n", "data.path", "non-empty string"),
        ("data:\n  generate: 5\n", "data.generate", "must be a mapping"),
        ("cluster:\n  n_workers: 0\n", "cluster.n_workers", "too small"),
        ("cluster:\n  n_workers: true\n", "cluster.n_workers", "not bool"),
        ("cluster:\n  memory_limit: lots\n", "cluster.memory_limit", "4GiB"),
        ("cluster:\n  kind: kubernetes\n", "cluster.kind", "'slurm'"),
        ("cluster:\n  security: yes-please\n", "cluster.security", "mapping"),
        ("output:\n  overwrite: 1\n", "output.overwrite", "true or false"),
        ("checkpoint:\n  every: -2\n", "checkpoint.every", "too small"),
    ],
)
def test_invalid_values_name_the_key_line_and_value(tmp_path, yaml_text, key, fragment):
    msg = config_error(tmp_path, yaml_text)
    assert "run.yaml, line 2" in msg
    assert f"{key} " in msg
    assert fragment in msg


def test_address_cluster_requires_an_address(tmp_path):
    msg = config_error(tmp_path, "cluster:\n  kind: address\n")
    assert "cluster.address" in msg and "is required when cluster.kind is 'address'" in msg
    assert "run.yaml, line 1" in msg  # the cluster section, as the key itself is absent
    cfg = config_from_dict({"cluster": {"kind": "address", "address": "tcp://h:8786"}})
    assert cfg.cluster == ClusterConfig(kind="address", address="tcp://h:8786")


def test_non_mapping_section_is_rejected(tmp_path):
    msg = config_error(tmp_path, "model: [1, 2]\n")
    assert "run.yaml, line 1" in msg and "model must be a mapping" in msg


def test_empty_section_means_defaults(tmp_path):
    cfg = load_config(write_yaml(tmp_path, "model:\ncluster:\n  n_workers: 3\n"))
    assert cfg.model == ModelConfig() and cfg.cluster.n_workers == 3


def test_empty_file_is_rejected(tmp_path):
    msg = config_error(tmp_path, "# only a comment\n")
    assert "run.yaml" in msg and "empty" in msg


def test_top_level_must_be_a_mapping(tmp_path):
    msg = config_error(tmp_path, "- model\n- data\n")
    assert "run.yaml" in msg and "top level must be a mapping" in msg


def test_yaml_syntax_error_reports_its_line(tmp_path):
    msg = config_error(tmp_path, "model:\n  n_components: 3\n  tol: [1, 2\ncluster: {}\n")
    assert "run.yaml, line" in msg and "YAML syntax error" in msg
    line = int(msg.split("line ")[1].split(":")[0])
    assert 3 <= line <= 5


def test_duplicate_key_is_rejected_with_both_lines(tmp_path):
    msg = config_error(tmp_path, "model:\n  tol: 0.1\n  tol: 0.2\n")
    assert "line 3" in msg and "duplicate key 'model.tol'" in msg and "line 2" in msg


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_config_from_dict_errors_name_the_source():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"model": {"max_iter": 0}}, source="api")
    assert str(info.value).startswith("api: model.max_iter")


def test_yaml_is_loaded_safely(tmp_path):
    msg = config_error(tmp_path, "model: !!python/object/apply:os.system ['echo hi']\n")
    assert "YAML" in msg
    assert not os.path.exists("hi")
