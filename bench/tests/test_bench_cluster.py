"""The cluster intake part: its selection in run.py, the phase sampler and the report."""

from __future__ import annotations

import cluster
import run


def test_the_cost_per_answer_less_the_idle_nodes() -> None:
    per = cluster._per_answer_ms({"node1": 3.0, "node2": 1.0, "api": 9.0}, ["node1", "node2"], 1000,
                                 {"node1": 0.05, "node2": 0.05}, 10.0)
    assert per == {"node1": 3.0, "node2": 1.0, "broker": 4.0, "less_idle": 3.0}


def test_the_ratio_compares_the_mean_rates_on_the_cluster() -> None:
    three = "3-node cluster (RabbitMQ 3.10.8), through the balancer"
    rows = [
        {"broker": "single node (RabbitMQ 3.10.8)", "queues": 1, "msgs_per_s": 9000.0},
        {"broker": three, "queues": 1, "msgs_per_s": 3000.0},
        {"broker": three, "queues": 3, "msgs_per_s": 2000.0},
        {"broker": three, "queues": 1, "msgs_per_s": 1000.0},
        {"broker": three, "queues": 3, "msgs_per_s": 3000.0},
    ]
    assert cluster.ratio_3q_1q(rows) == 1.25
    assert cluster.ratio_3q_1q(rows[:2]) is None


def test_only_cluster_intake_writes_results_of_its_own() -> None:
    assert run.parse_args(["--only", "cluster-intake"]).out == "cluster-intake"
    quick = run.parse_args(["--only", "cluster-intake", "--quick"])
    assert quick.out == "quick-cluster-intake" and quick.burst == 400
    assert quick.intake_channels == 8 and quick.intake_in_flight == 50 and quick.intake_bytes == 600


def test_the_sampler_reads_the_cores_between_the_nearest_samples() -> None:
    sampler = cluster.Sampler({})
    sampler.samples = [(t / 10, {"api": t / 20, "host": 9.0}) for t in range(21)]  # half a core

    assert sampler.cores(0.52, 1.48) == {"api": 0.5}


def _cores(**nodes: float) -> dict[str, float]:
    return {**nodes, "client": 0.3, "balancer": 0.05}


def test_the_report_has_one_row_per_measurement_and_marks_the_leaders() -> None:
    def publish(broker: str, queues: int, leaders: list[str], rate: float) -> dict[str, object]:
        return {
            "broker": broker, "queues": queues, "leaders": leaders, "placed": "balanced",
            "msgs_per_s": rate, "confirm_ms": {"p50": 100.0, "p99": 200.0},
            "cores": _cores(node1=0.5, node2=0.4, node3=0.4), "broker_us_per_msg": 400.0,
            "background_cores": 0.1,
        }

    single, three = "single node (RabbitMQ 3.10.8)", "3-node cluster (RabbitMQ 3.10.8), through the balancer"
    result = {
        "started_at": "now", "duration_s": 1.0,
        "machine": {"cores": 2, "cpu_model": "x", "rabbitmq": "3.10.8", "python": "3.11"},
        "config": {
            "commit": "abc", "burst": {"posts": 2000, "concurrency": 100, "read_timeout_s": 60.0},
            "streams": {"users": 50, "answers": 300, "tokens": 50, "tps": 50.0},
            "publish": {"channels": 8, "in_flight_per_channel": 50, "bytes": 600, "seconds": 10.0},
            "live": {"publishers": 4, "bytes": 400, "window": 2000},
        },
        "idle": [{"broker": three, "cores": {"node1": 0.03, "node2": 0.02, "node3": 0.01}}],
        "streams": [
            {
                "broker": three, "throughput_rps": 38.0, "ttft_ms": {"p50": 210.0, "p99": 260.0},
                "post_ms": {"p99": 20.0}, "errors": 0, "wrong": 0,
                "broker_ms_per_answer": {
                    "node1": 3.0, "node2": 2.0, "node3": 1.0, "broker": 6.0, "less_idle": 5.5
                },
                "live": {"frames_per_answer": 47.0, "frames_per_message": 1.5},
            }
        ],
        "burst": [
            {
                "broker": b, "enqueues_per_s": 300.0, "post_ms": {"p50": 300.0, "p99": 500.0},
                "error_kinds": {"timeout": 3} if b == three else {}, "correct": 1997, "requests": 2000,
                "read_s": 20.5, "post_phase_cores": {"api": 0.9, "worker": 0.3, "node1": 0.2},
                "background_cores": 0.1, "history_lookups": {"lookups": 1300, "failed": 12}, "api_stalls": 1,
                "task_queue_leaders": ["node1"],
            }
            for b in (single, three)
        ]
        + [
            {
                "broker": three, "task_shards": 3, "task_queue_leaders": ["node1", "node2", "node3"],
                "enqueues_per_s": 300.0, "post_ms": {"p50": 300.0, "p99": 500.0}, "error_kinds": {},
                "correct": 2000, "requests": 2000, "read_s": 9.0, "post_phase_cores": {},
                "background_cores": 0.1,
            }
        ],
        "publish": [
            publish(single, 1, ["node1"], 2500), publish(three, 3, ["node1", "node2", "node3"], 3000)
        ],
        "ratio_3q_1q": 0.97,
        "live": [
            {
                "broker": three, "msgs_per_s": 6000.0, "latency_ms": {"p50": 300.0, "p99": 400.0},
                "cores": _cores(node1=0.3, node2=0.2, node3=0.1), "broker_us_per_msg": 100.0,
                "background_cores": 0.2,
            }
        ],
    }

    text = cluster.markdown(result)

    row = (
        "| single node | node1 | 300.0 | 300.0 | 500.0 | 0.9 | 0.3 | 0.20 | - "
        "| 1997/2000 in 20.5 s | 0 | 1300 (12) | 1 |"
    )
    assert row in text
    assert "| timeout 3 |" in text
    assert "| cluster, TASK_SHARDS=3 | node1, node2, node3 | 300.0 |" in text
    assert "| cluster | 38.0 | 210.0 | 260.0 | 20.0 | 0 | 6.0 (3.00 / 2.00 / 1.00) | 5.5 | 47.0 | 1.5 |" in (
        text
    )
    assert "Idle, no client: cluster 0.03 / 0.02 / 0.01 cores." in text
    assert "| cluster | 3 | node1, node2, node3 (balanced) | 3000 |" in text
    assert "0.50* / 0.40* / 0.40*" in text and "x0.97" in text
    assert "| cluster | 6000.0 | 300.0 | 400.0 | 0.30 / 0.20 / 0.10 | 100.0 | 0.05 | 0.3 | 0.2 |" in text
