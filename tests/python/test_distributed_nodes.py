"""compare(executor='ray') on a Ray cluster of several nodes on this machine (ray.cluster_utils.Cluster):
a worker node removed while a task runs on it. Its own module: the cluster replaces
test_distributed.py's one-node Ray instance."""
import threading
import time

import pytest
import ray  # a test requirement (requirements.txt): these tests run, never skip
from ray.cluster_utils import Cluster

import postsvd
from postsvd import distributed
from distributed_helpers import BASE, INSTRUCT, assert_same_results

pytestmark = pytest.mark.ray  # starts Ray clusters: slow (conftest.py)


def test_a_node_lost_mid_run_is_retried_elsewhere_and_the_tables_are_equal(tmp_path, monkeypatch):
    local = postsvd.compare(BASE, INSTRUCT, dtype="float64", progress=False)
    # The head runs no task (0 CPUs); two worker nodes of one CPU each. A short health check: the
    # lost node is noticed in about a second instead of Ray's default 30 s.
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 2}})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    try:
        marker = tmp_path / "held"
        monkeypatch.setenv(distributed.FAULT_VARIABLE, f"hold-once:{marker}")  # the first task waits on its node
        results, errors = [], []

        def run():
            try:
                results.append(postsvd.compare(BASE, INSTRUCT, dtype="float64", progress=False, executor="ray"))
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 120
        while not (marker.exists() and len(marker.read_text().split()) == 2) and time.monotonic() < deadline:
            time.sleep(0.1)
        node_id = marker.read_text().split()[1]
        held = [node for node in workers if node.node_id == node_id]
        assert len(held) == 1, (node_id, [node.node_id for node in workers])
        cluster.remove_node(held[0], allow_graceful=False)  # the node dies with the task on it
        thread.join(timeout=distributed.HOLD_SECONDS)
        assert not thread.is_alive() and not errors, errors
        # The task may finish on the other node before the control plane has marked the lost one dead:
        # wait for that (seconds with the short health check above), then check it.
        deadline = time.monotonic() + 60
        while True:
            alive = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
            if node_id not in alive or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert node_id not in alive and len(alive) == 2  # the head and the other worker
        assert_same_results(local, results[0])
    finally:
        ray.shutdown()
        cluster.shutdown()
