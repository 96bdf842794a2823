"""A two-node Ray cluster in a process of its own, for test_ray_job.py.

Started from the test process, Ray's ``Cluster`` forks its node processes out of a pytest process that earlier tests
left with many threads; once, in CI, such a fork never reached ``exec`` and the test hung. Here the fork happens in a
fresh interpreter. Arguments: the dashboard port and the logical CPUs of each node. Prints ``ready`` once both nodes
are up, then holds the cluster until its standard input closes, and shuts it down.
"""

import sys

from ray.cluster_utils import Cluster


def main() -> None:
    port, cpus = int(sys.argv[1]), int(sys.argv[2])
    head = {
        "num_cpus": cpus,
        "num_gpus": 1,
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": port,
    }
    cluster = Cluster(initialize_head=True, connect=False, head_node_args=head)
    try:
        cluster.add_node(num_cpus=cpus, num_gpus=1)
        cluster.wait_for_nodes()
        print("ready", flush=True)
        sys.stdin.read()  # until the test closes it
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
