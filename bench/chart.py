"""Draw throughput and p50/p99 latency against concurrency (PNG for docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

from bench.load import LoadResult
from bench.raw import RawResult


def draw(served: dict[str, list[LoadResult]], raw: list[RawResult], path: Path) -> None:
    """Write a two-panel PNG: req/s and p50/p99 latency vs concurrency, per served backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = max(r.images_per_s for r in raw)
    single = min(r.p50_ms for r in raw if r.batch == 1)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    levels: list[int] = []
    for backend, sync in served.items():
        levels = [s.concurrency for s in sync]
        left.plot(levels, [s.per_s for s in sync], "o-", label=f"/predict ({backend})")
        right.plot(levels, [s.p50_ms for s in sync], "o-", label=f"p50 ({backend})")
        right.plot(levels, [s.p99_ms for s in sync], "s--", label=f"p99 ({backend})")
    left.axhline(best, color="grey", linestyle="--", label="best raw pipeline")
    left.set(xlabel="concurrency", ylabel="requests/s", xscale="log", title="Throughput")
    left.set_ylim(bottom=0)
    left.legend()
    right.axhline(single, color="grey", linestyle="--", label="raw single image")
    right.set(xlabel="concurrency", ylabel="ms", xscale="log", yscale="log", title="Latency")
    right.legend()
    for axis in (left, right):
        axis.set_xticks(levels, [str(c) for c in levels])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
