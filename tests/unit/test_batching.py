"""The greedy batch policy: learned waits never hold a lone request back."""

from __future__ import annotations

from bentoml._internal.marshal.dispatcher import Optimizer

from model_store.batching import apply_policy


def _loaded_optimizer() -> Optimizer:
    optimizer = Optimizer(max_latency=30.0)
    for _ in range(20):  # batches that waited 0.6 s in the queue (a burst of load)
        optimizer.log_outbound(n=16, wait=0.6, duration=0.4)
    return optimizer


def test_bentomls_own_policy_learns_a_wait_from_queueing() -> None:
    # the behaviour the greedy policy exists for (fails if BentoML changes it)
    optimizer = _loaded_optimizer()
    refresh = Optimizer.trigger_refresh
    getattr(refresh, "__wrapped__", refresh)(optimizer)  # BentoML's, patched or not
    assert optimizer.wait > 0.5


def test_greedy_policy_keeps_the_wait_at_zero_and_the_cost_model() -> None:
    apply_policy("greedy")
    optimizer = _loaded_optimizer()
    optimizer.trigger_refresh()
    assert optimizer.wait == 0
    assert optimizer.o_a > 0  # the per-image cost is still learned for the deadline checks
