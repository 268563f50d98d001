"""Cluster configurations, and a real submit to a multi-node cluster on this machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.checks import check_output

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"


@pytest.mark.parametrize("name, marker", [("aws-spot.yaml", "InstanceMarketOptions"), ("gcp-preemptible.yaml", "scheduling")])
def test_launcher_configs_validate_against_rays_schema(name, marker):
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((CLUSTER / name).read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # what `ray up` checks: defaults filled, then validated
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"]["CPU"] == 0
    workers = {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}
    assert {v["resources"]["CPU"] for v in workers.values()} == {2, 4, 8}
    for worker in workers.values():
        assert worker["min_workers"] == 0 and marker in worker["node_config"]
    assert config["idle_timeout_minutes"] > 0
    setup = " ".join(config["setup_commands"])
    assert "requirements/models.txt" in setup and "--require-hashes" in setup and "models --prepare" in setup
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])


def test_kuberay_rayjob_has_what_the_operator_requires():
    job = yaml.safe_load((CLUSTER / "kuberay-rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python jobs/transcribe.py ") and "--output" in spec["entrypoint"]
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] and any(p.startswith("faster-whisper") for p in runtime_env["pip"])
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"].startswith("2.60") and cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["containers"][0]["image"].startswith("rayproject/ray:2.60")
    (group,) = cluster["workerGroupSpecs"]
    assert group["groupName"] and group["minReplicas"] == 0 and group["maxReplicas"] >= 1
    container = group["template"]["spec"]["containers"][0]
    assert container["resources"]["requests"]["cpu"] == container["resources"]["limits"]["cpu"]
    assert {"name": "RAY_AUTH_MODE", "value": "token"} in container["env"]


def test_local_cluster_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(CLUSTER / "local-cluster.sh")], check=True)


class LocalCluster:
    """`cluster/local-cluster.sh` on ports of its own, its state in a test's folder.

    Its ports are one of `SLOTS` blocks, held with a lock for the cluster's life, so that
    two test sessions on one machine (two checkouts, or the suite run twice at once)
    never start clusters on the same ports.
    """

    SLOTS = 4

    def __init__(self, folder: Path, env: dict[str, str] | None = None):
        self._slot_lock, slot = _claim_slot(self.SLOTS)
        head_port, dashboard_port = 6400 + 10 * slot, 8300 + slot
        self.env = {**os.environ, "BULKSCRIBE_CLUSTER_DIR": str(folder), "RAY_HEAD_PORT": str(head_port),
                    "RAY_DASHBOARD_PORT": str(dashboard_port), "RAY_NODE_PORT_BASE": str(20000 + 4000 * slot),
                    **(env or {})}
        self.address = f"127.0.0.1:{head_port}"
        self.dashboard = f"http://127.0.0.1:{dashboard_port}"

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> str:
        """Run the script; `env`: more environment for it, and so for the nodes it starts."""
        done = subprocess.run([str(CLUSTER / "local-cluster.sh"), *args], env={**self.env, **(env or {})},
                              timeout=300, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def stop(self) -> None:
        try:
            subprocess.run([str(CLUSTER / "local-cluster.sh"), "stop"], env=self.env, timeout=120)
        finally:
            self._slot_lock.close()


def _claim_slot(slots: int):
    """An open, exclusively locked file of the first free slot, and its number."""
    import fcntl
    import tempfile

    for slot in range(slots):
        lock = open(Path(tempfile.gettempdir()) / f"bulkscribe-test-cluster-{slot}.lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        return lock, slot
    raise RuntimeError(f"all {slots} local cluster slots are in use")


@pytest.fixture
def cluster_script(tmp_path):
    """Start nodes with `cluster_script("start", ...)`; every node is stopped at the end.
    Nodes inherit BULKSCRIBE_SHARD_PAUSE_S, so each shard lasts long enough for a node
    to join or leave while shards are still waiting."""
    cluster = LocalCluster(tmp_path / "cluster", env={"BULKSCRIBE_SHARD_PAUSE_S": "4"})
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def local_cluster(tmp_path):
    """A head with 0 CPUs and workers of 1 and 2 CPUs, each a separate `ray start`."""
    cluster = LocalCluster(tmp_path / "cluster")
    cluster("start", "1", "2")
    try:
        yield cluster.dashboard
    finally:
        cluster.stop()


@pytest.mark.slow
def test_submit_to_a_multi_node_cluster(local_cluster, corpus, reference, tmp_path):
    from tests.helpers import FAULT_RUN_OPTIONS

    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "submit", str(corpus), "--output", str(out),
         "--address", local_cluster, "--wait", *FAULT_RUN_OPTIONS,
         # The nodes share this machine's environment, which has bulkscribe. (With pip, every
         # node here would build the same pip environment in the one shared session folder
         # at the same moment, and Ray's builds trample each other.)
         "--no-pip"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "submitted raysubmit_" in done.stdout and "ray job logs --address" in done.stdout
    assert "SUCCEEDED" in done.stdout
    check_output(out, reference)
    import duckdb

    per_node = dict(duckdb.sql(f"select node, count(*) from '{out}/files/*.parquet' group by 1").fetchall())
    assert len(per_node) == 2, per_node  # both worker nodes transcribed; the head (0 CPUs) did not
    assert len(actors_per_node(local_cluster)) == 2
    # The cluster bulkscribe submitted to kept Ray's token authentication: its job API
    # refuses a request without the token, or with another one.
    import urllib.error
    import urllib.request

    for headers in ({}, {"Authorization": "Bearer not-the-token"}):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(f"{local_cluster}/api/jobs/", headers=headers), timeout=30)
        assert refused.value.code in (401, 403), headers


def nodes_of(out: Path) -> dict[str, int]:
    import duckdb

    return dict(duckdb.sql(f"select node, count(*) from '{out}/files/*.parquet' group by 1").fetchall())


def threads_by_node(out: Path) -> dict[str, tuple[int, ...]]:
    """The distinct `cpu_threads` of the actors of each node, from the `files` rows."""
    import duckdb

    rows = duckdb.sql(f"select node, list(distinct cpu_threads order by cpu_threads) "
                      f"from '{out}/files/*.parquet' group by 1").fetchall()
    return {node: tuple(threads) for node, threads in rows}


@pytest.mark.slow
def test_nodes_join_and_leave_mid_run(cluster_script, corpus, reference, tmp_path):
    """A node added mid-run gets actors and commits shards, with its own tuning profile
    (2 threads per actor, where the first node has none: 1); the node that then leaves
    loses nothing: the output is exactly once and equal to an undisturbed run's."""
    from pipeline.tune import node_shape, shape_key
    from tests.helpers import finish, markers_in, start, wait_until

    cluster_script("start", "1")
    out = tmp_path / "out"
    run = start(corpus, out, "--address", cluster_script.address, env={"RAY_AUTH_MODE": "token"})
    wait_until(lambda: markers_in(out) >= 1, what="a first commit")
    first = set(nodes_of(out))
    profiles = tmp_path / "worker-2-profiles"
    profiles.mkdir()
    (profiles / f"{shape_key(node_shape())}.json").write_text(
        json.dumps({"best": {"threads": 2, "actors": 1}, "measured_at": "by the test"}))
    assert "worker-2 joined" in cluster_script("add", "2", env={"BULKSCRIBE_PROFILE_DIR": str(profiles)})
    wait_until(lambda: set(nodes_of(out)) - first, timeout=60, what="a commit by the node that joined")
    cluster_script("remove", "worker-1")
    code, _, stderr = finish(run)
    assert code == 0, stderr[-3000:]
    check_output(out, reference)
    threads = threads_by_node(out)
    assert len(threads) == 2
    assert {threads[node] for node in first} == {(1,)} and {threads[n] for n in set(threads) - first} == {(2,)}


@pytest.mark.slow
def test_a_cluster_with_no_workers_runs_once_one_joins(cluster_script, corpus, reference, tmp_path):
    """No `--actors`: the job plans, waits for CPUs (asking an autoscaler for them), and
    runs on the worker that joins."""
    from tests.helpers import finish, start, wait_until

    cluster_script("start", "0")
    out = tmp_path / "out"
    run = start(corpus, out, "--address", cluster_script.address, env={"RAY_AUTH_MODE": "token"})
    wait_until(lambda: (out / "_plan").exists(), what="the plan")
    assert run.poll() is None  # waiting, not failed
    cluster_script("add", "2")
    code, _, stderr = finish(run)
    assert code == 0, stderr[-3000:]
    check_output(out, reference)


def actors_per_node(dashboard: str) -> dict[str, int]:
    """How many ShardWorker actors the cluster ran on each node (Ray's state API keeps dead ones)."""
    script = (
        "import collections, json, sys\n"
        "from ray.util.state import list_actors\n"
        "actors = list_actors(address=sys.argv[1], detail=True, limit=1000)\n"
        "print(json.dumps(collections.Counter(a.node_id for a in actors if 'ShardWorker' in a.class_name)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script, dashboard], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_AUTH_MODE": "token"}, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])
