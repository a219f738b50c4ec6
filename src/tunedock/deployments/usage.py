"""Usage of each deployment: Prometheus metrics at /metrics and totals for the detail view."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


@dataclass
class DeploymentUsage:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_seconds_total: float = 0.0
    latency_buckets: dict[str, int] = field(default_factory=dict)

    def ordered_latency_buckets(self) -> dict[str, int]:
        """Return the latency counts from the shortest bucket to the longest, leaving out empty ones."""
        names = [f"le_{bound:g}" for bound in LATENCY_BUCKETS] + ["le_inf"]
        return {name: self.latency_buckets[name] for name in names if name in self.latency_buckets}


@dataclass(frozen=True)
class _Series:
    """The metric children of one model, deployment, route and status."""

    requests: Counter
    latency: Histogram
    errors: Counter
    prompt_tokens: Counter
    completion_tokens: Counter


class InferenceMetrics:
    """Counts requests, errors, tokens and latency per model and deployment."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        labels = ("model", "deployment")
        self._requests = Counter("tunedock_inference_requests", "Inference requests answered by the gateway.",
                                 (*labels, "route", "status"), registry=self.registry)
        self._errors = Counter("tunedock_inference_errors", "Inference requests that ended with a 4xx or 5xx.",
                               labels, registry=self.registry)
        self._tokens = Counter("tunedock_inference_tokens", "Tokens processed, by kind (prompt or completion).",
                               (*labels, "kind"), registry=self.registry)
        self._latency = Histogram("tunedock_inference_latency_seconds", "Time from request to full response.",
                                  labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self._usage: dict[int, DeploymentUsage] = {}
        # The labelled children, looked up once per label set rather than on every request.
        self._series: dict[tuple[str, str, str, int], _Series] = {}

    def observe(self, model: str, deployment_id: int, deployment_name: str, route: str, status: int,
                seconds: float, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        series = self._series.get((model, deployment_name, route, status))
        if series is None:
            series = self._series[(model, deployment_name, route, status)] = self._new_series(
                model, deployment_name, route, status)
        series.requests.inc()
        series.latency.observe(seconds)
        usage = self._usage.get(deployment_id)
        if usage is None:
            usage = self._usage[deployment_id] = DeploymentUsage()
        usage.requests += 1
        usage.latency_seconds_total += seconds
        bucket = next((f"le_{bound:g}" for bound in LATENCY_BUCKETS if seconds <= bound), "le_inf")
        usage.latency_buckets[bucket] = usage.latency_buckets.get(bucket, 0) + 1
        if status >= 400:
            series.errors.inc()
            usage.errors += 1
        if prompt_tokens:
            series.prompt_tokens.inc(prompt_tokens)
            usage.prompt_tokens += prompt_tokens
        if completion_tokens:
            series.completion_tokens.inc(completion_tokens)
            usage.completion_tokens += completion_tokens

    def _new_series(self, model: str, deployment_name: str, route: str, status: int) -> _Series:
        labels = (model, deployment_name)
        return _Series(requests=self._requests.labels(*labels, route, str(status)),
                       latency=self._latency.labels(*labels), errors=self._errors.labels(*labels),
                       prompt_tokens=self._tokens.labels(*labels, "prompt"),
                       completion_tokens=self._tokens.labels(*labels, "completion"))

    def usage(self, deployment_id: int) -> DeploymentUsage:
        """Totals since this server process started."""
        return self._usage.get(deployment_id, DeploymentUsage())
