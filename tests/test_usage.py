"""Usage totals of a deployment as the detail view shows them."""

from __future__ import annotations

from tunedock.deployments.usage import InferenceMetrics


def test_latency_buckets_ordered_by_bound() -> None:
    metrics = InferenceMetrics()
    for seconds in (0.03, 0.04, 0.007, 2.0, 0.001):
        metrics.observe("flan-t5", 1, "Flan T5_v1", "completions", 200, seconds)

    assert list(metrics.usage(1).ordered_latency_buckets()) == ["le_0.005", "le_0.01", "le_0.05", "le_2.5"]


def test_latency_buckets_keep_counts() -> None:
    metrics = InferenceMetrics()
    for seconds in (0.03, 0.04):
        metrics.observe("flan-t5", 1, "Flan T5_v1", "completions", 200, seconds)

    assert metrics.usage(1).ordered_latency_buckets() == {"le_0.05": 2}


def test_metrics_text_counts_requests_by_status() -> None:
    from prometheus_client import generate_latest

    metrics = InferenceMetrics()
    metrics.observe("flan-t5", 1, "Flan T5_v1", "completions", 200, 0.01)
    metrics.observe("flan-t5", 1, "Flan T5_v1", "completions", 200, 0.02)
    metrics.observe("flan-t5", 1, "Flan T5_v1", "completions", 503, 0.02)

    text = generate_latest(metrics.registry).decode()
    assert ('tunedock_inference_requests_total{deployment="Flan T5_v1",model="flan-t5",route="completions",'
            'status="200"} 2.0') in text
