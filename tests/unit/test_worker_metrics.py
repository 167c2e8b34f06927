"""Worker metrics: common failure series exist at zero before the first failure."""

from __future__ import annotations

import subprocess
import sys

from prometheus_client.parser import text_string_to_metric_families

from jobs.metrics import COMMON_JOB_FAILURES, COMMON_WEBHOOK_ERRORS

# A fresh process: this one's registry may hold failures other tests counted.
PRIME_AND_EXPOSE = (
    "import sys; from prometheus_client import generate_latest; "
    "from jobs.metrics import prime_failure_series; prime_failure_series(); "
    "sys.stdout.write(generate_latest().decode())"
)


def test_failure_series_are_primed_at_zero() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PRIME_AND_EXPOSE], capture_output=True, text=True, check=True
    ).stdout
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(out)
        for sample in family.samples
    }
    for code in COMMON_JOB_FAILURES:
        assert values[("image_task_failure_total", (("code", code),))] == 0
    for error in COMMON_WEBHOOK_ERRORS:
        assert values[("webhook_failure_total", (("error", error),))] == 0
