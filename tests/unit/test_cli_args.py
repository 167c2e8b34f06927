"""The ``visionqueue`` command takes its common options before or after the command name."""

from __future__ import annotations

import pytest

from visionqueue.cli import build_parser

URL = "http://10.0.0.7:3100"


@pytest.mark.parametrize(
    "argv",
    [
        ["--url", URL, "--api-key", "k1", "--json", "--timeout", "5", "jobs"],
        ["jobs", "--url", URL, "--api-key", "k1", "--json", "--timeout", "5"],
        ["--url", URL, "--json", "jobs", "--api-key", "k1", "--timeout", "5"],
    ],
)
def test_common_options_anywhere(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.url, args.api_key, args.json, args.timeout) == (URL, "k1", True, 5.0)


def test_after_the_command_wins_over_before() -> None:
    args = build_parser().parse_args(["--url", "http://before", "status", "j1", "--url", URL])
    assert args.url == URL
    assert args.job_id == "j1"


def test_defaults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_URL", URL)
    monkeypatch.setenv("VQ_API_KEY", "from-env")
    args = build_parser().parse_args(["classify", "a.jpg"])
    assert (args.url, args.api_key, args.json, args.timeout) == (URL, "from-env", False, 60.0)
