"""Draw throughput and p50/p99 latency against concurrency (PNG for docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

from bench.load import LoadResult
from bench.raw import RawResult


def draw(sync: list[LoadResult], raw: list[RawResult], path: Path, label: str = "eager") -> None:
    """Write a two-panel PNG: req/s vs concurrency, and p50/p99 latency vs concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [s.concurrency for s in sync]
    best = max(r.images_per_s for r in raw)
    single = next(r.p50_ms for r in raw if r.batch == 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(levels, [s.per_s for s in sync], "o-", label=f"/predict ({label})")
    left.axhline(best, color="grey", linestyle="--", label="best raw pipeline")
    left.set(xlabel="concurrency", ylabel="requests/s", xscale="log", title="Throughput")
    left.set_ylim(bottom=0)
    left.legend()
    right.plot(levels, [s.p50_ms for s in sync], "o-", label="p50")
    right.plot(levels, [s.p99_ms for s in sync], "s-", label="p99")
    right.axhline(single, color="grey", linestyle="--", label="raw single image")
    right.set(xlabel="concurrency", ylabel="ms", xscale="log", yscale="log", title="Latency")
    right.legend()
    for axis in (left, right):
        axis.set_xticks(levels, [str(c) for c in levels])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
