"""docker/: static checks of the image and the compose demo (no Docker engine is needed).

They check that what the files name exists: the programs and subcommands each service runs, the
config file the job runs, the files the Dockerfile copies, the console script it enters.
"""

from __future__ import annotations

import glob
import json
import shlex
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of docker/Dockerfile, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (DOCKER / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += " " + line
        if current.endswith("\\"):
            current = current[:-1]
            continue
        keyword, _, args = current.strip().partition(" ")
        lines.append((keyword.upper(), args.strip()))
        current = ""
    return lines


def instruction(name: str) -> list[str]:
    return [args for keyword, args in dockerfile_instructions() if keyword == name]


def exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def image_entrypoint() -> list[str]:
    (entrypoint,) = instruction("ENTRYPOINT")
    return exec_form(entrypoint)


def service_argv(service: dict) -> list[str]:
    """The argv a service runs: its entrypoint (or the image's) followed by its command."""
    entrypoint = service.get("entrypoint", image_entrypoint())
    command = service.get("command", [])
    as_list = lambda v: shlex.split(v) if isinstance(v, str) else list(v)  # noqa: E731
    return as_list(entrypoint) + as_list(command)


def job_config() -> dict:
    return yaml.safe_load((DOCKER / "job.yaml").read_text())


# --------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_builds_on_python_311_slim_and_installs_the_declared_extras():
    assert instruction("FROM") == ["python:3.11-slim"]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (install,) = [r for r in instruction("RUN") if "pip install" in r]
    assert '".[plots,jobqueue]"' in install
    assert {"plots", "jobqueue"} <= set(pyproject["project"]["optional-dependencies"])


def test_dockerfile_copies_files_that_exist_in_the_repo():
    copies = instruction("COPY")
    assert copies
    copied = set()
    for args in copies:
        *sources, _dest = exec_form(args)
        assert not any(s.startswith("--") for s in sources), f"unexpected COPY flag in {args!r}"
        matched = [m for s in sources for m in glob.glob(str(REPO / s))]
        for source in sources:
            if not glob.has_magic(source):
                assert (REPO / source).exists(), f"Dockerfile copies {source!r}, which is not in the repo"
        assert matched, f"COPY {args!r} copies nothing"
        copied.update(Path(m).relative_to(REPO).parts[0] for m in matched)
    assert {"pyproject.toml", "pipeline", "docker"} <= copied  # the package and the demo config


def test_dockerfile_entrypoint_is_the_gmm_pipeline_console_script():
    assert image_entrypoint() == ["gmm-pipeline"]
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["gmm-pipeline"].partition(":")
    source = REPO / (module.replace(".", "/") + ".py")
    if not source.exists():
        pytest.skip(f"{module} not written yet")
    assert f"def {function}(" in source.read_text()


# --------------------------------------------------------------------------------------------
# compose.yaml


def test_compose_builds_the_image_from_the_repo_root(compose):
    for name, service in compose["services"].items():
        build = service["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == REPO, name
        assert (context / build["dockerfile"]).resolve() == DOCKER / "Dockerfile", name


def test_compose_runs_a_dask_scheduler_two_workers_and_one_job(compose):
    services = compose["services"]
    argvs = {name: service_argv(s) for name, s in services.items()}
    roles = {name: (argv[0], argv[1]) for name, argv in argvs.items()}
    assert set(roles.values()) <= {("dask", "scheduler"), ("dask", "worker"), ("gmm-pipeline", "run")}, roles
    assert list(roles.values()).count(("dask", "scheduler")) == 1
    assert list(roles.values()).count(("dask", "worker")) == 2
    assert list(roles.values()).count(("gmm-pipeline", "run")) == 1

    (scheduler,) = [n for n, r in roles.items() if r == ("dask", "scheduler")]
    s_argv = argvs[scheduler]
    assert s_argv[s_argv.index("--host") + 1] == "0.0.0.0"
    port = s_argv[s_argv.index("--port") + 1] if "--port" in s_argv else "8786"
    address = f"tcp://{scheduler}:{port}"
    for name, (program, sub) in roles.items():
        if sub == "worker":
            w_argv = argvs[name]
            assert w_argv[2] == address
            assert w_argv[w_argv.index("--nthreads") + 1] == "1"
            assert w_argv[w_argv.index("--memory-limit") + 1] == "2GiB"
    assert job_config()["cluster"] == {"kind": "address", "address": address}


def test_compose_job_runs_the_repo_config_and_shares_data_and_output_volumes(compose):
    services = compose["services"]
    (job_name,) = [n for n, s in services.items() if service_argv(s)[:2] == ["gmm-pipeline", "run"]]
    config_path = service_argv(services[job_name])[2]
    (workdir,) = instruction("WORKDIR")
    # /app/docker/job.yaml in the image is docker/job.yaml in the repo (COPY docker ./docker).
    relative = Path(config_path).relative_to(workdir)
    assert (REPO / relative).is_file() and REPO / relative == DOCKER / "job.yaml"

    cfg = job_config()
    needed = {Path(cfg["data"]["path"]).parts[1], Path(cfg["output"]["dir"]).parts[1]}  # {"data", "runs"}
    for name, service in services.items():
        argv = service_argv(service)
        if argv[:2] == ["dask", "scheduler"]:
            continue
        mounts = {v.split(":")[1].strip("/") for v in service.get("volumes", [])}
        assert needed <= mounts, f"{name} must mount {needed} (workers read the data and write labels)"
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in compose["volumes"], volume


# --------------------------------------------------------------------------------------------
# job.yaml against the config schema


def test_job_yaml_has_the_documented_sections():
    cfg = job_config()
    assert set(cfg) == {"data", "model", "cluster", "output"}
    assert cfg["model"]["n_components"] == cfg["data"]["generate"]["n_components"] == 5


def test_job_yaml_validates_with_pipeline_config():
    from pipeline.batch.config import load_config

    run = load_config(DOCKER / "job.yaml")
    assert run.cluster.kind == "address"
    assert run.cluster.address == "tcp://scheduler:8786"
