"""A missing prerequisite skips a test on a developer's machine and fails it in CI."""

from __future__ import annotations

import pytest

from tests.support import prerequisites


@pytest.mark.parametrize(
    ("env", "strict"),
    [
        ({}, False),
        ({"CI": "true"}, True),
        ({"CI": "false"}, False),
        ({"TEST_STRICT": "1"}, True),
        ({"CI": "", "TEST_STRICT": "yes"}, True),
    ],
)
def test_strict_under_ci_or_test_strict(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], strict: bool
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("TEST_STRICT", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert prerequisites.strict() is strict


def test_a_missing_binary_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("TEST_STRICT", raising=False)
    with pytest.raises(pytest.skip.Exception, match="vq-no-such-tool"):
        prerequisites.require_binary("vq-no-such-tool", "apt-get install it")


def test_a_missing_binary_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true or TEST_STRICT=1"):
        prerequisites.require_binary("vq-no-such-tool", "apt-get install it")
    with pytest.raises(pytest.fail.Exception, match="vq_no_such_module"):
        prerequisites.require_module("vq_no_such_module", "pip install it")


def test_a_present_prerequisite_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    assert prerequisites.require_binary("vq-no-such-tool", "-", "/bin/sh") == "/bin/sh"
    assert prerequisites.require_module("json", "-").dumps([]) == "[]"
