"""Grafana: the dashboard matches Grafana's schema, its datasource, and metrics that exist."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.grafana import (
    COUNTERS,
    GAUGES,
    HISTOGRAMS,
    KNOWN_METRIC_NAMES,
    all_panels,
    all_targets,
    load_dashboard,
    promql_metric_names,
)

ROOT = Path(__file__).resolve().parents[2]
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards" / "visionqueue.yml"
SCHEMA = ROOT / "tests" / "schemas" / "grafana-dashboard.schema.json"
COMPOSE = ROOT / "docker-compose.yml"


def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def provisioned_datasource() -> dict[str, Any]:
    config = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))
    [datasource] = config["datasources"]
    assert isinstance(datasource, dict)
    return datasource


def test_dashboard_validates_against_grafana_schema() -> None:
    errors = sorted(validator().iter_errors(load_dashboard()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def _panels_not_a_list(d: dict[str, Any]) -> None:
    d["panels"] = {"requests": d["panels"][1]}


def _grid_pos_wrong_type(d: dict[str, Any]) -> None:
    d["panels"][1]["gridPos"] = "12x8"


def _grid_pos_missing_height(d: dict[str, Any]) -> None:
    del d["panels"][1]["gridPos"]["h"]


def _misspelt_panel_key(d: dict[str, Any]) -> None:
    d["panels"][1]["fieldconfig"] = d["panels"][1].pop("fieldConfig")


def _schema_version_string(d: dict[str, Any]) -> None:
    d["schemaVersion"] = "42"


@pytest.mark.parametrize(
    ("breakage", "where"),
    [
        (_panels_not_a_list, ["panels"]),
        (_grid_pos_wrong_type, ["panels", 1]),
        (_grid_pos_missing_height, ["panels", 1]),
        (_misspelt_panel_key, ["panels", 1]),
        (_schema_version_string, ["schemaVersion"]),
    ],
)
def test_broken_dashboard_fails_schema(breakage: Any, where: list[Any]) -> None:
    broken = copy.deepcopy(load_dashboard())
    breakage(broken)
    errors = list(validator().iter_errors(broken))
    assert errors, "the schema accepted a broken dashboard"
    assert any(list(e.absolute_path)[: len(where)] == where for e in errors), [
        (list(e.absolute_path), e.message) for e in errors
    ]


def test_panels_use_the_provisioned_datasource() -> None:
    datasource = provisioned_datasource()
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    expected = {"type": "prometheus", "uid": datasource["uid"]}
    dashboard = load_dashboard()
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == expected, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == expected, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_dashboard_layout_is_consistent() -> None:
    dashboard = load_dashboard()
    panels = list(all_panels(dashboard))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps another panel"
                cells.add((x, y))
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40


def test_dashboard_queries_only_known_metrics() -> None:
    unknown: dict[str, set[str]] = {}
    for target in all_targets(load_dashboard()):
        names = promql_metric_names(target["expr"])
        assert names, f"no metric found in {target['expr']!r}"
        if names - KNOWN_METRIC_NAMES:
            unknown[target["expr"]] = names - KNOWN_METRIC_NAMES
    assert not unknown, unknown


def test_dashboard_covers_every_metric_family() -> None:
    used: set[str] = set()
    for target in all_targets(load_dashboard()):
        used |= promql_metric_names(target["expr"])
    families = {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    missing = set(COUNTERS + GAUGES + HISTOGRAMS) - families
    assert not missing, f"no panel shows {sorted(missing)}"


def test_latency_panels_show_percentiles() -> None:
    exprs = [target["expr"] for target in all_targets(load_dashboard())]
    for histogram in (
        "bentoml_service_request_duration_seconds",
        "vq_inference_batch_seconds",
        "image_task_latency_seconds",
        "webhook_latency_seconds",
    ):
        quantiles = {
            m.group(1)
            for expr in exprs
            if f"{histogram}_bucket" in expr
            for m in re.finditer(r"histogram_quantile\(\s*([0-9.]+)", expr)
        }
        assert {"0.5", "0.95", "0.99"} <= quantiles, histogram


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "histogram_quantile(0.95, sum by (le, endpoint) "
            '(rate(http_seconds_bucket{endpoint!~"/(livez|readyz)"}[$__rate_interval])))',
            {"http_seconds_bucket"},
        ),
        ("sum(rate(a_total[5m])) / on (job) group_left (instance) b", {"a_total", "b"}),
        ("max by (queue) (celery_queue_depth) > bool 0", {"celery_queue_depth"}),
        ('sum(up{job="worker"}) offset 5m', {"up"}),
        ("sum without (le) (x:recorded:rate5m) and ignoring (a) y", {"x:recorded:rate5m", "y"}),
        ("1e3 * vector(1)", set()),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


def test_provisioning_matches_compose_mounts() -> None:
    config = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))
    [provider] = config["providers"]
    assert provider["type"] == "file"
    volumes = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['options']['path']}:ro" in volumes
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in volumes
