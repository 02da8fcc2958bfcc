"""docker/: static checks of the image and the compose demo, and one run of the demo for real.

The static checks (no container engine needed) check that what the files name exists: the programs
and subcommands each service runs, the config file the job runs, the files the Dockerfile copies, the
console script it enters.  test_compose_runs_the_demo_for_real builds the image and runs
docker/compose.yaml with podman and podman-compose (scripts/setup_podman: root + apt); elsewhere it
skips, unless GMM_REQUIRE_CONTAINER=1 (CI) makes that a failure.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from tests.helpers import set_up_or_skip

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


# --------------------------------------------------------------------------------------------
# compose.yaml for real: podman + podman-compose (scripts/setup_podman)

SETUP_PODMAN = REPO / "scripts" / "setup_podman"


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _run_logged(argv: list[str], log: Path, timeout: float) -> int:
    """Run argv with stdout+stderr to log; on timeout end its whole process group and return -9."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=20)
                    break
                except subprocess.TimeoutExpired:
                    pass
            out.write(f"\n[test] timed out after {timeout:g} s\n".encode())
            return -9


def _build_context(dest: Path) -> Path:
    """The files git tracks, as they are in the work tree (a fresh clone's content: no .venv, runs/,
    caches or other untracked files), copied to dest; the repo root itself when git is unavailable."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return REPO
    for name in filter(None, listed.decode().split("\0")):
        source = REPO / name
        if source.is_file():  # not deleted in the work tree
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def compose_image(compose, tmp_path_factory):
    """(path of podman-compose, image name) once scripts/setup_podman has run and the image that
    docker/compose.yaml names has been built from the repo.  Skips when podman cannot be set up,
    unless GMM_REQUIRE_CONTAINER=1 (CI), where that is a failure."""
    podman_compose = set_up_or_skip(SETUP_PODMAN, "set up podman", "GMM_REQUIRE_CONTAINER", timeout=600)

    # Build once (`up --build` would build the same image once per service, four at a time).
    (image,) = {service["image"] for service in compose["services"].values()}
    tmp = tmp_path_factory.mktemp("podman_build")
    context = _build_context(tmp / "context")
    log = tmp / "build.log"
    rc = _run_logged(["podman", "build", "-f", str(context / "docker" / "Dockerfile"), "-t", image, str(context)],
                     log, timeout=600)
    assert rc == 0, f"podman build of {image} failed (exit {rc}):\n{_tail(log)}"
    return podman_compose, image


@pytest.mark.slow
@pytest.mark.timeout(1800)  # on a fresh machine about 7 min: setup_podman, the image build, the run
def test_compose_runs_the_demo_for_real(compose, compose_image, tmp_path):
    """docker/compose.yaml under podman-compose: the scheduler, two workers and the job run, the
    job exits 0, and its outputs in the runs volume are a real fit of docker/job.yaml."""
    import numpy as np
    import zarr

    from pipeline import GaussianMixture

    podman_compose, image = compose_image
    project = f"gmm-test-{uuid.uuid4().hex[:8]}"  # own containers, network and volumes
    # The dashboard on a free loopback port: 8787 may be taken on a shared machine.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    override = tmp_path / "compose.override.yaml"
    override.write_text(f'services:\n  scheduler:\n    ports: !override\n      - "127.0.0.1:{port}:8787"\n')
    base = [podman_compose, "-p", project, "-f", str(DOCKER / "compose.yaml"), "-f", str(override)]
    log = tmp_path / "compose.log"
    cfg = job_config()
    try:
        rc = _run_logged(base + ["up", "--abort-on-container-exit", "--exit-code-from", "job"], log, timeout=600)
        assert rc == 0, f"compose up: the job exited {rc}:\n{_tail(log)}"

        runs = subprocess.run(["podman", "volume", "inspect", "--format", "{{.Mountpoint}}", f"{project}_runs"],
                              capture_output=True, text=True, timeout=60)
        assert runs.returncode == 0, runs.stderr
        out = Path(runs.stdout.strip()) / Path(cfg["output"]["dir"]).relative_to("/runs")
        assert out.is_dir(), f"no {cfg['output']['dir']} in the runs volume:\n{_tail(log)}"

        report = json.loads((out / "report.json").read_text())
        selected = report["selected"]
        k, covariance_type = cfg["model"]["n_components"], cfg["model"]["covariance_type"]
        assert selected["name"] == f"k{k}-{covariance_type}"
        assert (selected["n_components"], selected["covariance_type"]) == (k, covariance_type)
        assert math.isfinite(selected["loglik"]) and math.isfinite(selected["bic"])
        assert selected["n_iter"] >= 1
        assert math.isclose(sum(selected["weights"]), 1.0, rel_tol=1e-9)
        generated = cfg["data"]["generate"]
        assert report["data"]["shape"] == [generated["n_samples"], generated["n_features"]]
        assert report["cluster"]["scheduler_address"].endswith(":8786")
        assert report["cluster"]["n_workers"] == 2  # both compose workers served the fit
        assert report["cluster"]["worker_memory_limit"] == 2 * 2**30  # their --memory-limit 2GiB

        model = GaussianMixture.load(out / "model.npz")
        assert model.means_.shape == (k, generated["n_features"])
        assert np.allclose(model.means_, np.asarray(selected["means"]))
        labels = zarr.open_array(str(out / "labels.zarr"), mode="r")[:]
        assert labels.shape == (generated["n_samples"],)
        assert labels.min() >= 0 and labels.max() < k
        assert len(np.unique(labels)) == k  # five well-separated generated clusters, five labels
    finally:
        _run_logged(base + ["down", "-v"], log, timeout=300)
        for volume in compose["volumes"]:  # in case `down` failed half-way
            subprocess.run(["podman", "volume", "rm", "-f", f"{project}_{volume}"], capture_output=True, timeout=60)
