"""Latency recording in HDR histograms: fixed memory, exact to three significant digits.

Values are recorded in microseconds (the resolution that matters for sub-millisecond RPCs)
and reported in milliseconds. Percentiles come from `hdrhistogram`, never from sorting
arrays of samples, so a long run costs the same memory as a short one.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

# 1 us .. 10 minutes, 3 significant digits: 0.1% relative error at any value.
LOWEST_US = 1
HIGHEST_US = 600_000_000
SIGNIFICANT_DIGITS = 3
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}


class LatencyHistogram:
    """An HDR histogram of latencies, fed in nanoseconds, read in milliseconds."""

    def __init__(self) -> None:
        self._histogram = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)

    @property
    def count(self) -> int:
        return int(self._histogram.get_total_count())

    def record_ns(self, nanoseconds: int) -> None:
        micros = min(max(LOWEST_US, round(nanoseconds / 1000)), HIGHEST_US)
        self._histogram.record_value(micros)

    def record_ms(self, milliseconds: float) -> None:
        self.record_ns(round(milliseconds * 1e6))

    def merge(self, other: LatencyHistogram) -> None:
        self._histogram.add(other._histogram)

    def percentile_ms(self, percentile: float) -> float:
        return float(self._histogram.get_value_at_percentile(percentile)) / 1000.0

    def mean_ms(self) -> float:
        return float(self._histogram.get_mean_value()) / 1000.0

    def max_ms(self) -> float:
        # The highest equivalent value of the bucket: an upper bound, never an underestimate.
        return float(self._histogram.get_max_value()) / 1000.0

    def summary(self) -> dict[str, float]:
        """p50, p90, p99, p99.9 and max in ms (all 0.0 when nothing was recorded)."""
        if self.count == 0:
            return {**{name: 0.0 for name in PERCENTILES}, "max": 0.0}
        out = {name: round(self.percentile_ms(q), 4) for name, q in PERCENTILES.items()}
        out["max"] = round(self.max_ms(), 4)
        return out
