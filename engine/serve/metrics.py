"""The server's figures, in Prometheus' text format (``GET /metrics``).

Request counts by model and status, the queue (waiting and running), and histograms
of time to first token and total time per model, as the server saw them (from the
request's arrival to its first and last token). Written by the event loop only, so
no lock is needed.
"""

from __future__ import annotations

from collections import defaultdict

#: Histogram bucket bounds, in seconds (a baked answer's first token ~0.07 s, a RAG one's ~1 s).
BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    """Cumulative bucket counts, a sum and a count (Prometheus' histogram)."""

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS_S)
        self.total = 0
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        for i, bound in enumerate(BUCKETS_S):
            if seconds <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum_s += seconds


class Metrics:
    """What ``/metrics`` reports; the app records into it."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.ttft: dict[str, Histogram] = defaultdict(Histogram)
        self.total: dict[str, Histogram] = defaultdict(Histogram)
        self.cancelled: dict[str, int] = defaultdict(int)

    def request(self, model: str, status: int) -> None:
        self.requests[(model, status)] += 1

    def render(self, waiting: int, running: int, max_waiting: int) -> str:
        """The exposition text (format 0.0.4)."""
        lines = ["# HELP bakeoff_requests_total Chat completion requests by model and HTTP status.",
                 "# TYPE bakeoff_requests_total counter"]
        lines += [f'bakeoff_requests_total{{model="{m}",status="{s}"}} {n}'
                  for (m, s), n in sorted(self.requests.items())]
        lines += ["# HELP bakeoff_cancelled_total Requests stopped before their last token, by reason.",
                  "# TYPE bakeoff_cancelled_total counter"]
        lines += [f'bakeoff_cancelled_total{{reason="{r}"}} {n}' for r, n in sorted(self.cancelled.items())]
        lines += ["# HELP bakeoff_queue_depth Requests waiting for the model.", "# TYPE bakeoff_queue_depth gauge",
                  f"bakeoff_queue_depth {waiting}",
                  "# HELP bakeoff_queue_capacity Requests that may wait; one more is refused with 429.",
                  "# TYPE bakeoff_queue_capacity gauge", f"bakeoff_queue_capacity {max_waiting}",
                  "# HELP bakeoff_running Requests being answered (at most one).", "# TYPE bakeoff_running gauge",
                  f"bakeoff_running {running}"]
        for name, helptext, histograms in (
                ("bakeoff_ttft_seconds", "Arrival to first token, by model.", self.ttft),
                ("bakeoff_total_seconds", "Arrival to last token, by model.", self.total)):
            lines += [f"# HELP {name} {helptext}", f"# TYPE {name} histogram"]
            for model, h in sorted(histograms.items()):
                for bound, count in zip(BUCKETS_S, h.counts):
                    lines.append(f'{name}_bucket{{model="{model}",le="{bound}"}} {count}')
                lines += [f'{name}_bucket{{model="{model}",le="+Inf"}} {h.total}',
                          f'{name}_sum{{model="{model}"}} {h.sum_s:.6f}', f'{name}_count{{model="{model}"}} {h.total}']
        return "\n".join(lines) + "\n"
