"""The keyless front's Host check: its own names, loopback names and IP literals only."""

from __future__ import annotations

import pytest

from visionqueue.api.middleware.hosts import allowed_host_names, host_allowed, host_name

NAMES = allowed_host_names("https://vq.example.com", "0.0.0.0", ["ci-runner", "Lab.Example:8080"])


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:3000",
        "[::1]:3000",
        "::1",
        "10.1.2.3",
        "localhost",
        "LOCALHOST:3000",
        "app.localhost:3000",
        "vq.example.com",
        "vq.example.com.:443",
        "ci-runner:3000",
        "lab.example",
    ],
)
def test_own_names_loopback_names_and_ip_literals_pass(host: str) -> None:
    assert host_allowed(host, NAMES)


@pytest.mark.parametrize(
    "host", ["rebind.attacker.example", "rebind.attacker.example:3000", "localhost.evil", "vq"]
)
def test_other_names_are_refused(host: str) -> None:
    assert not host_allowed(host, NAMES)


def test_a_star_allows_any_name() -> None:
    assert host_allowed("anything.example", allowed_host_names("", "127.0.0.1", ["*"]))


def test_host_name_drops_port_and_brackets() -> None:
    assert host_name("[::1]:8080") == "::1"
    assert host_name("Example.COM:80") == "example.com"
    assert host_name("example.com") == "example.com"
