"""The benchmark's request builders, and how it refuses to run without the dev dependencies."""

from __future__ import annotations

import io
import sys
from typing import Any

import numpy as np
import pytest
from PIL import Image
from python_multipart.multipart import MultipartParser

from bench import __main__ as bench_main
from bench.load import unique_jpeg, v2_infer_request
from bench.wrk import BOUNDARY, multipart
from tests.support import images
from visionqueue import cli
from visionqueue.api.protocols import v2_tensors


def test_unique_jpeg_changes_the_bytes_not_the_pixels() -> None:
    data = images.jpeg(64, 48)
    first, second = unique_jpeg(data, 1), unique_jpeg(data, 2)
    assert len({data, first, second}) == 3  # three distinct stored objects
    pixels = np.asarray(Image.open(io.BytesIO(data)))
    for variant in (first, second):
        assert (np.asarray(Image.open(io.BytesIO(variant))) == pixels).all()
    with pytest.raises(ValueError):
        unique_jpeg(images.png(8, 8), 1)


def test_wrk_bodies_are_one_well_formed_image_part() -> None:
    data = images.jpeg(32, 24)
    parts: list[tuple[bytes, bytes]] = []
    header = [b""]
    chunks: list[bytes] = []

    def on_header_value(buf: bytes, start: int, end: int) -> None:
        header[0] += buf[start:end]

    def on_part_data(buf: bytes, start: int, end: int) -> None:
        chunks.append(buf[start:end])

    def on_part_end() -> None:
        parts.append((header[0], b"".join(chunks)))
        header[0] = b""
        chunks.clear()

    parser = MultipartParser(
        BOUNDARY.encode(),
        {
            "on_header_value": on_header_value,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    parser.write(multipart(data))
    parser.finalize()
    assert len(parts) == 1
    disposition, body = parts[0]
    assert b'name="image"' in disposition and body == data


def test_missing_dev_dependencies_names_each_missing_module_and_its_use() -> None:
    needed = {"json": "here", "vq_no_such_module": "a chart", "vq_no_such_pkg.sub": "a stack"}
    assert bench_main.missing_dev_dependencies(needed) == [
        "vq_no_such_module (a chart)",
        "vq_no_such_pkg.sub (a stack)",
    ]


def test_bench_refuses_before_measuring_when_a_dev_dependency_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(bench_main.DEV_DEPENDENCIES, "vq_no_such_module", "draws the chart")

    def measured(*_: object) -> None:
        raise AssertionError("the benchmark started measuring")

    monkeypatch.setattr(bench_main, "raw_phase", measured)
    assert bench_main.main(["--output", "/nonexistent/benchmarks.md"]) == 2
    err = capsys.readouterr().err
    assert "vq_no_such_module (draws the chart)" in err and "make bench" in err


def test_visionqueue_bench_without_the_benchmark_says_where_it_lives(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "bench.__main__", None)  # as in an installed product
    assert cli.main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "not installed with the product" in err and "make bench" in err


def test_the_v2_requests_are_what_tritonclient_sends_for_one_image() -> None:
    data = images.jpeg(32, 24)
    headers, body = v2_infer_request(data)
    request = v2_tensors.parse_infer_request(body, headers["Inference-Header-Content-Length"])
    assert request.images == [data]
    assert request.output == v2_tensors.RequestedOutput(binary=True, classification=5)


def test_the_two_routes_alternate_and_each_sums_its_halves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench import load

    calls: list[tuple[str | None, float]] = []
    numbers = iter([(100, 500.0, 900.0), (80, 600.0, 1300.0), (90, 700.0, 1000.0),
                    (110, 300.0, 800.0)])  # fmt: skip

    def fake_run_load(
        url: str, payloads: list[bytes], c: int, seconds: float, v2_model: str | None = None
    ) -> load.LoadResult:
        calls.append((v2_model, seconds))
        done, p50, p99 = next(numbers)
        return load.LoadResult(c, done, 1, seconds, p50, p99, generator="wrk")

    monkeypatch.setattr(load, "run_load", fake_run_load)
    predict, v2 = load.compare_routes("http://x", [b"img"], "resnet18", 32, 20.0)
    assert calls == [(None, 10.0), ("resnet18", 10.0), ("resnet18", 10.0), (None, 10.0)]
    assert (predict.requests, predict.errors, predict.seconds) == (210, 2, 20.0)
    assert (predict.p50_ms, predict.p99_ms) == (400.0, 900.0)
    assert (v2.requests, v2.p50_ms, v2.p99_ms) == (170, 650.0, 1300.0)
    assert v2.per_s == 8.4 and v2.generator == "wrk"


def test_model_rows_report_the_runs_own_noise_next_to_the_idle_model_ratio() -> None:
    import argparse

    from bench.load import LoadResult
    from bench.models import render

    def load(per_s: float) -> LoadResult:
        return LoadResult(16, int(per_s * 10), 0, 10.0, 100.0, 200.0)

    rows = [{"arch": "resnet18", "model": "bench-resnet18", "prep": "256/224 bilinear",
             "raw": 50.0, "served": load(40.0)}]  # fmt: skip
    args = argparse.Namespace(
        load_start=0.0, concurrency=16, seconds=10.0, first="bench-resnet18", second="bench-b"
    )
    text = render(rows, {"alone": load(36.0), "beside": load(35.0)}, args)
    assert "| resnet18 | 256/224 bilinear | 50.0 | 40.0 | 0.80 | 100 | 0 |" in text
    assert "Ratio: 0.97." in text
    assert "measured 40.0 req/s in the table above and 36.0 req/s here (10% apart" in text
    assert "was shared" not in text


def test_the_benchmark_page_says_which_options_a_reduced_run_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    import bench.__main__ as bench_main

    seen: list[str] = []
    monkeypatch.setattr(bench_main, "missing_dev_dependencies", lambda deps: ["stop here"])
    real_parse = argparse.ArgumentParser.parse_args

    def record(self: argparse.ArgumentParser, *a: Any, **k: Any) -> argparse.Namespace:
        ns = real_parse(self, *a, **k)
        seen.append(bench_main.command_line(self, ns))
        return ns

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", record)
    bench_main.main([])
    bench_main.main(["--levels", "1,32", "--served", "onnxruntime", "--output", "/tmp/x.md"])
    assert seen == ["make bench", "python -m bench --levels 1,32 --served onnxruntime"]


@pytest.mark.parametrize(
    ("cmdline", "role"),
    [
        (["/venv/bin/bentoml", "serve", "service:VisionQueue", "--port", "3000"], "front"),
        (["/venv/bin/bentoml", "serve", "service:Classifier", "--port", "3100"], "classifier"),
        (["python", "-m", "_bentoml_impl.worker.service", "service:Classifier"], "classifier"),
        (
            ["python", "-m", "x", "service:VisionQueue", "--service-name", "classifier"],
            "classifier",
        ),
        (["/venv/bin/celery", "-A", "jobs.celery_app:app", "worker"], "celery worker"),
        # the classifier's lane process: its job and bulk passes are the classifier's work
        (["python", "-m", "visionqueue.dataplane.lane_process", "--nice", "10", "5"], "classifier"),
    ],
)
def test_stack_processes_are_named_by_role(cmdline: list[str], role: str) -> None:
    from bench.lone import process_role

    assert process_role(cmdline) == role


def test_bench_int8_takes_photos_spread_over_a_folder(tmp_path: Any) -> None:
    import argparse

    from bench.int8 import image_sets

    for name, folder in (("calib", "c"), ("held", "h")):
        (tmp_path / folder).mkdir()
        for i in range(10):
            (tmp_path / folder / f"{name}{i:02d}.jpg").write_bytes(images.jpeg(40, 30))
    args = argparse.Namespace(
        calibration_dir=tmp_path / "c", holdout_dir=tmp_path / "h", calibration=5, held=20
    )
    calib, held, described = image_sets(args, tmp_path / "work")
    assert [p.resolve().name for p in calib] == [f"calib{i:02d}.jpg" for i in (0, 2, 4, 6, 8)]
    assert len(held) == 10 and described["independent"] == "10"  # no more than the folder has
    assert not {p.resolve() for p in calib} & {p.resolve() for p in held}


def test_bench_int8_measures_a_given_weights_file_and_names_it(tmp_path: Any) -> None:
    import argparse

    import torch
    from torchvision.models import squeezenet1_1

    from bench.int8 import fp32_version
    from model_store.weights import file_sha256

    torch.manual_seed(0)
    weights = tmp_path / "squeezenet.pt"
    torch.save(squeezenet1_1(weights=None).state_dict(), weights)
    args = argparse.Namespace(
        weights=weights,
        arch="squeezenet1_1",
        mean="0.4824,0.4588,0.4078",
        std="0.0039,0.0039,0.0039",
    )
    stored, name, text = fp32_version(args, tmp_path)
    assert name == "bench-fp32" and str(stored.tag).startswith("bench-fp32:")
    assert stored.weights_origin == f"file:{file_sha256(weights)}"
    prep = stored.metadata["preprocessing"]
    assert prep["mean"] == [0.4824, 0.4588, 0.4078] and prep["std"] == [0.0039] * 3
    assert "`squeezenet.pt` (torchvision.models.squeezenet1_1, 1000 classes)" in text
    assert "mean 0.4824, 0.4588, 0.4078 and std 0.0039, 0.0039, 0.0039" in text


def test_bench_int8_refuses_a_description_without_weights() -> None:
    from bench.int8 import main

    with pytest.raises(SystemExit) as exc:
        main(["--arch", "resnet50"])
    assert exc.value.code == 2


def test_the_priority_bench_reads_the_server_timing_predict_writes() -> None:
    from bench.priority import server_timing as parse
    from visionqueue.api.predict import server_timing
    from visionqueue.dataplane.requests import Timing

    header = server_timing(Timing(decode_s=0.0027, classify_s=0.0186, forward_s=0.0165))
    assert parse(header) == {"decode": 2.7, "classify": 18.6, "forward": 16.5}
    assert parse("") == {}


def test_the_priority_bench_says_where_its_slowest_requests_spent_their_time() -> None:
    from bench.priority import slowest

    quick = [(0.030, {"decode": 5.0, "classify": 20.0, "forward": 18.0})] * 198
    slow = [
        (0.300, {"decode": 10.0, "classify": 250.0, "forward": 60.0}),
        (0.200, {"decode": 30.0, "classify": 150.0, "forward": 40.0}),
    ]
    tail = slowest(quick + slow[::-1], share=0.01)
    assert tail == pytest.approx(
        {"total": 250.0, "decode": 20.0, "classify": 200.0, "forward": 50.0, "rest": 30.0}
    )
    assert slowest([]) == {}


def test_the_priority_bench_gives_its_ratios_an_interval_that_holds_them() -> None:
    import random

    from bench.priority import ratio_interval

    rng = random.Random(1)
    idle = [rng.lognormvariate(-3.0, 0.5) for _ in range(600)]
    busy = [2 * x for x in idle[:500]]  # the same traffic, every request twice as slow
    for q in (0.5, 0.99):
        low, high = ratio_interval(idle, busy, q)
        assert low < 2.0 < high
        assert high - low < (0.6 if q == 0.5 else 2.0)
    low, high = ratio_interval(idle, idle, 0.5)
    assert low < 1.0 < high


def test_the_priority_bench_pools_its_rounds_and_shows_each() -> None:
    from bench import cpu_share
    from bench.priority import Round, Traffic, pooled, render

    def window(latencies_ms: list[float], classify_ms: float, errors: int = 0) -> Traffic:
        answered = tuple((ms / 1000, {"classify": classify_ms}) for ms in latencies_ms)
        return Traffic(tuple(a[0] for a in answered), errors, ("interactive",), answered)

    cpu = dict.fromkeys(cpu_share.PARTS, 0.5)
    first = Round(window([10.0] * 99 + [50.0], 8.0), window([20.0] * 100, 16.0), 10, 8, cpu, cpu)
    second = Round(window([30.0] * 100, 24.0), window([30.0] * 100, 24.0, 1), 30, 30, cpu, cpu)
    assert first.ratios == pytest.approx((2.0, 0.4, 0.8))
    both = pooled([first.busy, second.busy])
    assert both.sent == 200 and both.errors == 1 and both.classes == ("interactive",)
    assert both.p50_ms == pytest.approx(25.0)  # every request of both windows
    assert both.parts["classify"][1] == pytest.approx(24.0)  # the second window's, at p90
    assert both.tail["total"] == pytest.approx(30.0)  # its 2 slowest: the second window's
    result = {
        "when": "now", "machine": "m", "load_start": 0.0, "load_end": 0.0, "rate": 5.0,
        "jobs": 100, "per_request": 10, "priority": "normal", "backlog": "jobs",
        "idle": pooled([first.idle, second.idle]), "busy": both,
        "solo": 15.0, "shared": 12.0, "cpu": {"alone": cpu, "beside the traffic": cpu},
        "rounds": [first, second], "settings": {},
    }  # fmt: skip
    text = render(result)
    assert "2 rounds on one stack" in text
    assert "| 1 | 2.00x | 0.40x | 0.80x |" in text and "| 2 | 1.00x | 1.00x | 1.00x |" in text
    assert "rounds on one stack" not in render({**result, "rounds": [first]})
