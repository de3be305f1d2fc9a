"""Prometheus metrics of one server, in their own registry (several apps can live in one process, e.g. in tests)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("openllm_requests", "HTTP requests by route and status code", ["route", "status"],
                                registry=r)
        self.request_latency = Histogram("openllm_request_duration_seconds",
                                         "Time from request to the last byte of the response", ["route"],
                                         buckets=LATENCY_BUCKETS, registry=r)
        self.first_token_latency = Histogram("openllm_time_to_first_token_seconds",
                                             "Time from admission to the queue to the first generated token",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("openllm_queue_depth", "Requests waiting to join the batch", registry=r)
        self.running = Gauge("openllm_running_requests", "Requests in the running batch", registry=r)
        self.batch_size = Histogram("openllm_batch_size", "Rows in each decode step",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.prompt_tokens = Counter("openllm_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self.generated_tokens = Counter("openllm_generated_tokens", "Tokens generated", registry=r)
        self.tokens_per_second = Gauge("openllm_generated_tokens_per_second",
                                       "Tokens generated per second over the last 10 seconds", registry=r)
        self.finished = Counter("openllm_generations_finished", "Generations by finish reason", ["reason"],
                                registry=r)
