"""Prometheus metrics of dpmsfs-server: requests, bytes stored per tool, replication lag.

A tiny interface so the HTTP layer does not know prometheus_client:

    metrics = ServerMetrics(stored_bytes=lambda: {"tester-07": 123}, replication_lag=...)
    metrics.observe_request("objects:upload", "POST", 200, 0.012)   # after each request
    content_type, body = metrics.render()                            # GET /metrics

`endpoint` must be the route's template (e.g. "objects/<id>", "refs/<name>"), never the
raw path: label values must stay few. Stored bytes per tool and the replication lag
are read through callbacks at scrape time (a custom collector), so the server keeps no
second copy of those numbers. Each ServerMetrics has its own registry: several servers
in one test process do not mix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

# Latency buckets from 1 ms (a missing check) to 2 min (a 256 MiB upload on a slow link).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0)  # fmt: skip


class _ScrapeTime(Collector):
    def __init__(
        self,
        stored_bytes: Callable[[], dict[str, int]] | None,
        stored_objects: Callable[[], dict[str, int]] | None,
        replication_lag: Callable[[], float | None] | None,
    ) -> None:
        self.stored_bytes = stored_bytes
        self.stored_objects = stored_objects
        self.replication_lag = replication_lag

    def collect(self) -> Iterator[Metric]:
        for source, name, doc in (
            (self.stored_bytes, "dpmsfs_server_stored_bytes", "frame bytes mapped per tool"),
            (self.stored_objects, "dpmsfs_server_stored_objects", "objects mapped per tool"),
        ):
            if source is None:
                continue
            family = GaugeMetricFamily(name, doc, labels=["tool"])
            for tool, value in sorted(source().items()):
                family.add_metric([tool], float(value))
            yield family
        if self.replication_lag is not None:
            lag = self.replication_lag()
            if lag is not None:
                yield GaugeMetricFamily(
                    "dpmsfs_server_replication_lag_seconds",
                    "how far the peer is behind this server",
                    value=float(lag),
                )


class ServerMetrics:
    def __init__(
        self,
        stored_bytes: Callable[[], dict[str, int]] | None = None,
        replication_lag: Callable[[], float | None] | None = None,
        stored_objects: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dpmsfs_server_requests",
            "HTTP requests answered, per endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "dpmsfs_server_request_duration_seconds",
            "time to answer an HTTP request, per endpoint and method",
            ["endpoint", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_ScrapeTime(stored_bytes, stored_objects, replication_lag))

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint, method).observe(max(0.0, seconds))

    def render(self) -> tuple[str, bytes]:
        return CONTENT_TYPE_LATEST, generate_latest(self.registry)
