"""Faults survived, nothing lost: a worker killed mid-fit (and three times in a run of 20
candidates), the driver killed mid-run, the scheduler lost mid-run, resume checks."""

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import yaml

from pipeline import GaussianMixture
from tests.helpers import blobs, kill_run_at
from tests.test_cli import CLI, small_config


@pytest.mark.filterwarnings("ignore::pipeline.exceptions.ConvergenceWarning")
def test_worker_killed_with_sigkill_mid_fit_gives_the_uninterrupted_result():
    from distributed import Client, LocalCluster

    X, _ = blobs(4000, centres=((0, 0, 0), (3, 3, 0), (0, 4, 3)), seed=40)
    kw = dict(n_components=3, random_state=0, tol=0, max_iter=12, means_init=X[:3] + 0.1)
    reference = GaussianMixture(**kw).fit(da.from_array(X, chunks=(1500, 3)))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None, memory_limit="1GiB") as cluster, Client(cluster) as client:
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        killed = []

        def kill_soon(info):
            if info.n_iter == 4:  # kill during the 5th iteration's computation
                def kill():
                    os.kill(victim, signal.SIGKILL)
                    killed.append(time.time())
                threading.Timer(0.02, kill).start()

        Xd = da.from_array(X, chunks=(1500, 3))
        fit = GaussianMixture(**kw).fit(Xd, callback=kill_soon)
        assert killed, "the worker was not killed"
        assert victim not in client.run(os.getpid).values()  # it is really gone (nanny restarted one)
    np.testing.assert_allclose(fit.history_, reference.history_, rtol=1e-10)
    for a in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(fit, a), getattr(reference, a), rtol=1e-10, atol=1e-12)


def _slow_config(tmp_path, name, **model):
    config, cfg = small_config(tmp_path)
    cfg["data"]["generate"].update(n_samples=30000, separation=1.5, n_components=4)
    cfg["model"].update(n_components=4, tol=0.0, max_iter=25, dtype="float64", init_params="random_from_data", **model)
    cfg["output"].update(dir=str(tmp_path / name), plots=False, responsibilities=False)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


@pytest.mark.parametrize("model", [{"init_sample": None}, {"init_sample": 5000, "n_init": 2}],
                         ids=["starts-on-the-data", "starts-from-the-sample"])
def test_driver_killed_mid_run_resumes_to_the_same_model(tmp_path, model):
    """With init_sample, the resumed run takes every run's start from the checkpoint: no sample
    is drawn again, and report.json counts no initialisation pass."""
    from pipeline.estimators.gaussian_mixture import GaussianMixture as GM

    ref_cfg, ref = _slow_config(tmp_path, "reference", **model)
    r = subprocess.run([*CLI, "run", ref_cfg], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr

    cfg_path, cfg = _slow_config(tmp_path, "killed", **model)
    kill_run_at([*CLI, "run", cfg_path], "iter    6")  # the driver and its local cluster, at once
    out = Path(cfg["output"]["dir"])
    assert not out.exists()  # nothing half-written was published
    info = subprocess.run([*CLI, "info", out], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and "running (or interrupted) run" in info.stdout and "iteration 6" in info.stdout
    again = subprocess.run([*CLI, "run", cfg_path], capture_output=True, text=True, timeout=600)
    assert again.returncode == 1 and "--resume" in again.stderr  # the checkpoint is not discarded silently
    resumed = subprocess.run([*CLI, "run", cfg_path, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint" in resumed.stdout
    assert "iter    1 " not in resumed.stdout.split("resuming")[1]
    if model["init_sample"] is not None:
        assert "on a sample of" in r.stdout and "on a sample of" not in resumed.stdout
        for d in (out, Path(ref["output"]["dir"])):
            assert json.loads((d / "report.json").read_text())["passes"]["initialisation"] == 0
    a = GM.load(out / "model.npz")
    b = GM.load(Path(ref["output"]["dir"]) / "model.npz")
    assert a.n_iter_ == b.n_iter_ == 25
    np.testing.assert_array_equal(a.history_, b.history_)
    for attr in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(a, attr), getattr(b, attr), rtol=1e-10, atol=1e-12)


def _wait_for(condition, timeout: float, what: str, interval: float = 0.01):
    """Poll ``condition()`` until it is truthy (returned) or ``timeout`` seconds passed (fails)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return value


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _write_config(tmp_path, cfg, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _assert_same_result(out: Path, reference: Path):
    """report.json (selection, every candidate's criteria and history) and model.npz of ``out``
    equal those of ``reference`` to 1e-10 (and the labels exactly, if written)."""
    from pipeline.estimators.gaussian_mixture import GaussianMixture as GM

    a, b = (json.loads((d / "report.json").read_text()) for d in (out, reference))
    assert a["selected"]["name"] == b["selected"]["name"]
    assert [c["name"] for c in a["candidates"]] == [c["name"] for c in b["candidates"]]
    for x, y in zip(a["candidates"], b["candidates"]):
        assert (x["status"], x["n_iter"], x["n_parameters"]) == (y["status"], y["n_iter"], y["n_parameters"]), x["name"]
        for key in ("loglik", "bic", "aic", "icl"):
            if y[key] is None:
                assert x[key] is None, (x["name"], key)
            else:
                np.testing.assert_allclose(x[key], y[key], rtol=1e-10, err_msg=f"{x['name']} {key}")
        np.testing.assert_allclose(x["history"], y["history"], rtol=1e-10, err_msg=x["name"])
    ma, mb = GM.load(out / "model.npz"), GM.load(reference / "model.npz")
    assert (ma.n_components, ma.covariance_type, ma.n_iter_) == (mb.n_components, mb.covariance_type, mb.n_iter_)
    for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        np.testing.assert_allclose(getattr(ma, attr), getattr(mb, attr), rtol=1e-10, atol=1e-12, err_msg=attr)
    if (reference / "labels.zarr").exists():
        import zarr

        np.testing.assert_array_equal(zarr.open_array(out / "labels.zarr")[:], zarr.open_array(reference / "labels.zarr")[:])


def _twenty_candidates_config(tmp_path, name, address):
    """5 x 4 candidates (k 1-5; full, diag, tied, spherical) of 24 EM iterations (in lockstep:
    24 passes) on 80,000 x 3 rows in 8 chunks, on the cluster at ``address``."""
    config, cfg = small_config(tmp_path)
    cfg["data"]["chunk_rows"] = 10000
    cfg["data"]["generate"].update(n_samples=80000, n_features=3, chunk_rows=10000)
    cfg["model"].update(n_components=[1, 2, 3, 4, 5], covariance_type=["full", "diag", "tied", "spherical"],
                        tol=0.0, max_iter=24, dtype="float64", init_params="random_from_data")
    cfg["cluster"] = {"kind": "address", "address": address, "timeout": 30}
    cfg["output"].update(dir=str(tmp_path / name), plots=False, responsibilities=False)
    return _write_config(tmp_path, cfg, name), cfg


@pytest.mark.filterwarnings("ignore::pipeline.exceptions.ConvergenceWarning")
def test_a_worker_sigkilled_three_times_in_a_run_of_20_candidates_gives_the_uninterrupted_result(tmp_path, start_dask_processes):
    """A scheduler and two workers under nannies (OS processes on 127.0.0.1). During a run of
    20 candidates a worker busy with the run's tasks is SIGKILLed three times, at moments drawn
    from a seeded generator (a candidate, an iteration of it, a delay into the next one); its
    nanny starts a new one each time. The run finishes with the uninterrupted run's selection,
    criteria, parameters and labels."""
    from distributed import Client

    from pipeline.batch.config import config_from_dict
    from pipeline.batch.runner import candidate_name

    cluster = start_dask_processes(2)
    ref_path, ref = _twenty_candidates_config(tmp_path, "reference", cluster.address)
    r = subprocess.run([*CLI, "run", ref_path], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    names = [candidate_name(k, ct) for k, ct in config_from_dict(ref).model.candidates()]
    assert len(names) == 20
    rng = random.Random(14)
    # the candidates go in lockstep: one kill after a random EM pass among 2-5, 8-11 and 14-17 each
    # (all three well before the run's end), seen on a random candidate's line of that pass
    moments = [(names[rng.randrange(0, 20)], rng.randrange(lo, lo + 4), rng.uniform(0.0, 0.1)) for lo in (2, 8, 14)]
    triggers = {f"  {name} restart 0 iter {it:4d} ": (name, it, delay) for name, it, delay in moments}

    cfg_path, cfg = _twenty_candidates_config(tmp_path, "killed", cluster.address)
    kills = []
    with Client(cluster.address, timeout=30) as client:
        proc = subprocess.Popen([*CLI, "run", cfg_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            seen = []
            for line in proc.stdout:
                seen.append(line)
                moment = next((m for t, m in triggers.items() if line.startswith(t)), None)
                if moment is None:
                    continue
                time.sleep(moment[2])  # the random moment itself, not a synchronisation
                busy = _wait_for(lambda: sorted(a for a, keys in client.processing().items() if keys), 20,
                                 "a worker computing the run's tasks")
                victim = rng.choice(busy)
                pid = client.run(os.getpid, workers=[victim])[victim]  # (the worker's event loop answers)
                running = proc.poll() is None
                os.kill(pid, signal.SIGKILL)
                kills.append({"moment": moment, "worker": victim, "pid": pid, "run_was_running": running})
                # the killed process is gone and its nanny has started a new worker in its place
                _wait_for(lambda: _pid_gone(pid), 30, f"worker pid {pid} to exit")
                _wait_for(lambda: len(workers := client.scheduler_info(n_workers=-1)["workers"]) == 2
                          and victim not in workers, 60, "the nanny to restart the killed worker")
            proc.wait(timeout=300)
            stderr = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        alive = set(client.run(os.getpid).values())
    assert proc.returncode == 0 and "Traceback" not in stderr, stderr + "".join(seen[-20:])
    assert len(kills) == 3, (moments, kills)
    assert all(k["run_was_running"] for k in kills), kills
    assert len({k["pid"] for k in kills}) == 3 and not alive & {k["pid"] for k in kills}, (kills, alive)
    assert all(_pid_gone(k["pid"]) for k in kills)
    # every kill came before the run's last candidate was fitted
    assert sum(line.startswith("candidate ") and ": log-likelihood" in line for line in seen) == 20
    _assert_same_result(Path(cfg["output"]["dir"]), Path(ref["output"]["dir"]))


def _two_candidates_config(tmp_path, name, address):
    """k 3 and 4 (full) of 12 EM iterations each on 30,000 x 4 rows, on the cluster at ``address``."""
    _, cfg = _slow_config(tmp_path, name)
    cfg["model"].update(n_components=[3, 4], max_iter=12)
    cfg["cluster"] = {"kind": "address", "address": address, "timeout": 20}
    return _write_config(tmp_path, cfg, name), cfg


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_lost_scheduler_is_one_line_keeps_the_checkpoint_and_resume_on_a_new_cluster_finishes(
        tmp_path, start_dask_processes, sig):
    """The `dask scheduler` of a kind: address cluster killed (or stopped) during the two
    candidates' EM iterations (in lockstep): the run exits 1 with one line naming the scheduler's address,
    the checkpoint and its iteration and --resume; nothing is published and the staging
    directory keeps the checkpoint. --resume on a new scheduler and workers (another address,
    given by --set: the cluster is not part of the checkpoint's fingerprint) finishes the run
    with the result of an uninterrupted one."""
    from pipeline.batch.runner import CHECKPOINT_NAME, staging_dir
    from pipeline.estimators.persistence import load_sweep_checkpoint

    first = start_dask_processes(2)
    cfg_path, cfg = _two_candidates_config(tmp_path, "lost", first.address)
    proc = subprocess.Popen([*CLI, "run", cfg_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("  k4-full restart 0 iter    4 "):
                first.scheduler.send_signal(sig)
                break
        first.scheduler.wait(timeout=60)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert seen[-1].startswith("  k4-full restart 0 iter    4 "), "".join(seen)  # during the EM iterations
    lines = stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, stderr
    out, stage = Path(cfg["output"]["dir"]), staging_dir(Path(cfg["output"]["dir"]))
    assert not out.exists()  # nothing was published
    state, meta = load_sweep_checkpoint(stage / CHECKPOINT_NAME)  # kept, and whole
    # both candidates in lockstep: the checkpoint names the first run still going
    assert [r.candidate for r in state.runs] == ["k3-full", "k4-full"] and state.candidate == "k3-full"
    assert all(len(r.history) == len(state.history) >= 4 and r.status == "running" for r in state.runs)
    assert lines[0].startswith(f"gmm-pipeline: error: lost the Dask scheduler at {first.address}: "), lines[0]
    assert (f"the checkpoint {stage / CHECKPOINT_NAME} (candidate k3-full, restart 0, iteration {len(state.history)}) "
            "is kept") in lines[0], lines[0]
    assert "run again with --resume" in lines[0] and "Traceback" not in stderr
    first.stop()

    second = start_dask_processes(2)
    assert second.address != first.address
    resumed = subprocess.run([*CLI, "run", cfg_path, "--resume", "--set", f"cluster.address={second.address}"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint: candidate k3-full" in resumed.stdout
    for name in ("k3-full", "k4-full"):
        assert f"{name} restart 0 iter    1 " not in resumed.stdout and f"{name} restart 0 iter   12 " in resumed.stdout
    assert json.loads((out / "report.json").read_text())["cluster"]["scheduler_address"] == second.address
    ref_path, ref = _two_candidates_config(tmp_path, "reference", second.address)
    r = subprocess.run([*CLI, "run", ref_path], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    _assert_same_result(out, Path(ref["output"]["dir"]))


@pytest.mark.parametrize("when", ["after checkpoint 2", "before the summary pass"])
def test_a_scheduler_lost_between_two_computations_is_a_scheduler_lost_error_too(
        tmp_path, start_dask_processes, monkeypatch, when):
    """The scheduler SIGKILLed while no computation is pending (the driver writes a checkpoint,
    or is about to start the run's first pass): the next computation waits for a reconnection up
    to the client's timeout, then is cancelled without a reason; that too is a
    SchedulerLostError, naming the checkpoint, or saying there is none yet."""
    from distributed import Client

    import pipeline.batch.runner as run_mod
    from pipeline.batch.config import config_from_dict
    from pipeline.exceptions import SchedulerLostError

    cluster = start_dask_processes(1)
    _, cfg = _two_candidates_config(tmp_path, "between", cluster.address)
    cfg["model"]["n_components"] = 3

    def lose_the_scheduler():
        cluster.scheduler.kill()
        cluster.scheduler.wait(timeout=30)
        _wait_for(lambda: client.status != "running", 30, "the client to notice the loss")

    save, summarize = run_mod.save_checkpoint, run_mod.summarize

    def save_then_lose_the_scheduler(path, state, meta):
        save(path, state, meta)
        if len(state.history) == 2:
            lose_the_scheduler()

    def lose_the_scheduler_then_summarize(*args, **kwargs):
        lose_the_scheduler()
        return summarize(*args, **kwargs)

    if when == "after checkpoint 2":
        monkeypatch.setattr(run_mod, "save_checkpoint", save_then_lose_the_scheduler)
    else:
        monkeypatch.setattr(run_mod, "summarize", lose_the_scheduler_then_summarize)
    with Client(cluster.address, timeout=3) as client:
        with pytest.raises(SchedulerLostError) as err:
            run_mod.run(config_from_dict(cfg), client=client)
    message = str(err.value)
    assert message.startswith(f"lost the Dask scheduler at {cluster.address}: it stopped or cannot be reached ("), message
    checkpoint = run_mod.staging_dir(Path(cfg["output"]["dir"])) / run_mod.CHECKPOINT_NAME
    if when == "after checkpoint 2":
        assert f"the checkpoint {checkpoint} (candidate k3-full, restart 0, iteration 2) is kept" in message
        assert message.endswith("run again with --resume to continue from it") and checkpoint.is_file()
    else:
        assert message.endswith("no checkpoint had been written yet: start a Dask scheduler and workers again "
                                "(a new address: --set cluster.address=...) and run again"), message
        assert not checkpoint.exists()


def test_only_a_lost_connection_to_the_scheduler_counts_as_a_lost_scheduler():
    """distributed's errors of a lost scheduler (the futures cancelled for that reason; any
    cancellation, comm, OS, timeout or "ConnectionPool is closed" error once the client is no
    longer running) count; the same errors while the client runs, and our own errors, do not."""
    from types import SimpleNamespace

    from distributed.client import FutureCancelledError
    from distributed.comm import CommClosedError

    from pipeline.batch.cluster import scheduler_lost
    from pipeline.exceptions import DataError

    running, lost = SimpleNamespace(status="running"), SimpleNamespace(status="connecting")
    connection_lost = FutureCancelledError("k", "scheduler-connection-lost", "Client lost the connection")
    assert scheduler_lost(connection_lost, running) and scheduler_lost(connection_lost, lost)
    for exc in (FutureCancelledError("k", None), CommClosedError("in <TCP>: Stream is closed"), OSError("Timed out"),
                TimeoutError(), RuntimeError("ConnectionPool is closed")):
        assert scheduler_lost(exc, lost), exc
        assert scheduler_lost(exc, SimpleNamespace(status="closed")), exc
        assert not scheduler_lost(exc, running), exc
    assert not scheduler_lost(FutureCancelledError("k", "cancelled by the user"), running)
    assert not scheduler_lost(DataError("data.zarr: rows 0-9 hold NaN"), lost)
    assert not scheduler_lost(ValueError("bad"), lost)


def test_resume_refuses_a_checkpoint_of_another_config_or_data(tmp_path):
    from pipeline.batch.config import config_from_dict
    from pipeline.batch.runner import CHECKPOINT_NAME, run, staging_dir
    from pipeline.exceptions import CheckpointError

    cfg_path, cfg = _slow_config(tmp_path, "r")
    cfg["model"]["max_iter"] = 3
    cfg["cluster"]["kind"] = "local"

    class Stop(Exception):
        pass

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        import pipeline.batch.runner as run_mod

        original = run_mod._write_point_outputs

        def boom(*a, **k):
            raise Stop

        run_mod._write_point_outputs = boom
        try:
            with pytest.raises(Stop):
                run(config_from_dict(cfg), client=client)
        finally:
            run_mod._write_point_outputs = original
        stage = staging_dir(Path(cfg["output"]["dir"]))
        assert (stage / CHECKPOINT_NAME).is_file()
        other_model = {**cfg, "model": {**cfg["model"], "n_components": 5}}
        with pytest.raises(CheckpointError, match=r"model.n_components: 4 in the checkpoint, 5 now"):
            run(config_from_dict(other_model), resume=True, client=client)
        other_start = {**cfg, "model": {**cfg["model"], "init_sample": None}}  # (the sample of the demo config)
        with pytest.raises(CheckpointError, match=r"model.init_sample: 20000 in the checkpoint, None now"):
            run(config_from_dict(other_start), resume=True, client=client)
        other_data = {**cfg, "data": {**cfg["data"], "path": str(tmp_path / "other.zarr"),
                                      "generate": {**cfg["data"]["generate"], "seed": 1}}}
        with pytest.raises(CheckpointError, match="data.sha256_chunk_moments"):
            run(config_from_dict(other_data), resume=True, client=client)
        # the same config, but one value in the middle of the data changed in place
        import zarr

        X = zarr.open_group(cfg["data"]["path"], mode="r+")["X"]
        original = X[15000, 1]
        X[15000, 1] = original + 1.0
        with pytest.raises(CheckpointError, match="data.sha256_chunk_moments") as err:
            run(config_from_dict(cfg), resume=True, client=client)
        assert "model." not in str(err.value) and "data.path" not in str(err.value)
        X[15000, 1] = original
        # the same config and data resume and finish
        result = run(config_from_dict(cfg), resume=True, client=client)
        assert result.report["selected"]["n_iter"] == 3


def test_a_corrupted_chunk_file_is_one_line_naming_the_array_chunk_rows_and_file(tmp_path):
    """A truncated chunk file (its zstd frame cut): the run exits 1 with one line on stderr that
    names the array, the rows, the stored chunk and its file; no traceback, not even the one a
    worker logs for a failed task, unless --debug (then both)."""
    from pipeline.data.synthetic import generate_mixture

    config, cfg = small_config(tmp_path)
    generate_mixture(cfg["data"]["path"], n_samples=20000, n_features=4, n_components=3, chunk_rows=5000)
    chunk = Path(cfg["data"]["path"]) / "X" / "c" / "2" / "0"
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 3])
    r = subprocess.run([*CLI, "run", str(config)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "(array 'X'): cannot read rows 10000-14999 (stored chunk 2, " in lines[0]
    assert f"{chunk}): RuntimeError: Zstd decompression error" in lines[0]
    assert not Path(cfg["output"]["dir"]).exists()
    r = subprocess.run([*CLI, "--debug", "run", str(config)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" in r.stderr and "Compute Failed" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == lines[0]


@pytest.fixture
def small_disk(tmp_path):
    """A 400 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _digests(root: Path) -> dict:
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_full_disk_or_read_only_output_is_one_line_removes_the_staging_and_keeps_earlier_outputs(tmp_path, small_disk):
    """output.dir on a 400 KiB tmpfs: the first run fits (about 210 KB); a second one with
    overwrite: true runs out of space while writing. It exits 1 with one line naming
    output.dir and the reason, the staging directory is gone, and the first run's outputs are
    byte-identical. On the same disk remounted read-only, a run is one line too."""
    config, cfg = small_config(tmp_path, output={"dir": str(small_disk / "run")})
    first = subprocess.run([*CLI, "run", str(config)], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    before = _digests(small_disk / "run")
    cfg["output"]["overwrite"] = True
    config.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([*CLI, "run", str(config)], capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert f"output.dir {small_disk / 'run'}: No space left on device" in lines[0]
    assert "nothing was published, earlier outputs are unchanged and the staging directory" in lines[0]
    assert not (small_disk / ".run.partial").exists()
    assert _digests(small_disk / "run") == before
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    cfg["output"]["dir"] = str(small_disk / "other")
    config.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([*CLI, "run", str(config)], capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert f"output.dir {small_disk / 'other'}: Read-only file system" in lines[0], lines[0]
    assert _digests(small_disk / "run") == before


def test_only_failures_to_write_the_outputs_count_as_output_errors():
    """A forbidden path counts only if it is the output's own (staging, lock, results, parent
    directories); a full disk or a read-only file system always does; reading the data never."""
    import errno

    from pipeline.batch.runner import _is_output_failure

    out = Path("/srv/runs/demo")
    cases = {
        "/srv/runs/.demo.partial/model.npz": True, "/srv/runs/demo/report.json": True, "/srv/runs/.demo.lock": True,
        "/srv/runs": True, "/srv/runs/data.zarr/X/c/0/0": False, "/srv/runs/demo2/x": False, "/elsewhere/x": False,
    }
    for name, expected in cases.items():
        assert _is_output_failure(OSError(errno.EACCES, "Permission denied", name), out) is expected, name
    assert _is_output_failure(OSError(errno.ENOSPC, "No space left on device"), out)
    assert _is_output_failure(OSError(errno.EROFS, "Read-only file system", "/anywhere"), out)
    assert not _is_output_failure(OSError(errno.EIO, "Input/output error", "/srv/runs/demo/x"), out)
