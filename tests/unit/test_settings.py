"""Settings: public variable names, CSV parsing, secrets, and docs generated from them."""

from __future__ import annotations

import pytest

from visionqueue.config_docs import (
    CONFIG_DOC,
    ENV_EXAMPLE,
    README,
    render_env_example,
    render_markdown,
    render_readme,
)
from visionqueue.core.settings import Settings

CONTRACT = [
    "VQ_PORT",
    "VQ_WEIGHTS",
    "VQ_DATABASE_URL",
    "VQ_BROKER_URL",
    "VQ_S3_ENDPOINT",
    "VQ_S3_ACCESS_KEY",
    "VQ_S3_SECRET_KEY",
    "VQ_S3_BUCKET",
    "VQ_WEBHOOK_SECRETS",
    "VQ_WEBHOOK_RETRY_SCHEDULE",
    "VQ_WEBHOOK_ALLOWED_HOSTS",
    "VQ_API_KEYS",
]


def test_env_example_and_config_doc_are_generated_from_settings() -> None:
    assert ENV_EXAMPLE.read_text() == render_env_example(), "run python -m visionqueue.config_docs"
    assert CONFIG_DOC.read_text() == render_markdown(), "run python -m visionqueue.config_docs"
    readme = README.read_text()
    assert readme == render_readme(readme), "run python -m visionqueue.config_docs"


@pytest.mark.parametrize("name", CONTRACT)
def test_public_variable_names_exist(name: str) -> None:
    assert f"\n{name}=" in render_env_example()


def test_variables_are_read_with_their_public_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_PORT", "3100")
    monkeypatch.setenv("VQ_WEIGHTS", "random")
    monkeypatch.setenv("VQ_DATABASE_URL", "postgresql+psycopg://db/vq")
    monkeypatch.setenv("VQ_S3_ENDPOINT", "http://minio:9000")
    monkeypatch.setenv("VQ_WEBHOOK_SECRETS", "whsec_a, whsec_b")
    monkeypatch.setenv("VQ_WEBHOOK_RETRY_SCHEDULE", "1,2.5,10")
    monkeypatch.setenv("VQ_WEBHOOK_ALLOWED_HOSTS", "127.0.0.1")
    monkeypatch.setenv("VQ_API_KEYS", "k1,k2")
    s = Settings()
    assert s.server.port == 3100
    assert s.model.weights == "random"
    assert s.database_url == "postgresql+psycopg://db/vq"
    assert s.s3.endpoint == "http://minio:9000"
    assert [x.get_secret_value() for x in s.webhook.secrets] == ["whsec_a", "whsec_b"]
    assert s.webhook.retry_schedule == [1.0, 2.5, 10.0]
    assert s.webhook.allowed_hosts == ["127.0.0.1"]
    assert [k.get_secret_value() for k in s.server.api_keys] == ["k1", "k2"]


def test_embedded_default_when_backends_are_unset() -> None:
    s = Settings()
    assert s.database_url.startswith("sqlite:///")
    assert s.broker_url == "filesystem://localhost//"
    assert s.s3.endpoint == ""


def test_production_refuses_placeholder_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_ENV", "production")
    with pytest.raises(ValueError, match="VQ_SIGNING_KEY") as info:
        Settings().check_secrets()
    assert "VQ_WEBHOOK_SECRETS" in str(info.value)
    assert "VQ_API_KEYS" in str(info.value)
    assert "VQ_CLASSIFIER_TOKEN" not in str(info.value)  # optional: empty is no token


def test_production_refuses_a_placeholder_classifier_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_ENV", "production")
    monkeypatch.setenv("VQ_CLASSIFIER_TOKEN", "changeme")
    with pytest.raises(ValueError, match="VQ_CLASSIFIER_TOKEN"):
        Settings().check_secrets()
    monkeypatch.setenv("VQ_CLASSIFIER_TOKEN", "a-real-random-token")
    with pytest.raises(ValueError) as info:
        Settings().check_secrets()  # the other secrets are still missing
    assert "VQ_CLASSIFIER_TOKEN" not in str(info.value)


def test_malformed_webhook_secret_is_refused_in_any_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_WEBHOOK_SECRETS", "not-a-whsec-secret")
    with pytest.raises(ValueError, match="VQ_WEBHOOK_SECRETS entry 1"):
        Settings().check_secrets()


def test_secrets_are_not_in_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_API_KEYS", "super-secret-key")
    assert "super-secret-key" not in repr(Settings())


def test_the_workers_front_url_keeps_its_former_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_WORKER_CLASSIFIER_URL", "http://front-old:3000/")
    assert Settings().front_url == "http://front-old:3000"
    monkeypatch.setenv("VQ_WORKER_FRONT_URL", "http://front:3000")
    assert Settings().front_url == "http://front:3000"  # the new name wins
    monkeypatch.setenv("VQ_CLASSIFIER_URL", "http://classifier:3001")  # another concept
    assert Settings().front_url == "http://front:3000"
    assert Settings().model.classifier_url == "http://classifier:3001"
