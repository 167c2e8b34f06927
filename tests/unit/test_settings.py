"""Settings: public variable names, CSV parsing, secrets, and docs generated from them."""

from __future__ import annotations

from pathlib import Path

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


def test_a_placeholder_signing_key_is_refused_in_dev_once_api_keys_are_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VQ_API_KEYS", "tenant-key-1")
    for placeholder in ("dev-insecure-signing-key", "changeme"):
        monkeypatch.setenv("VQ_SIGNING_KEY", placeholder)
        with pytest.raises(ValueError, match="VQ_SIGNING_KEY must be a random value"):
            Settings().check_secrets()
    monkeypatch.setenv("VQ_SIGNING_KEY", "")
    Settings().check_secrets()  # empty: a random key is generated into the data dir


def test_an_unset_signing_key_is_generated_once_per_data_dir_mode_0600(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from visionqueue.core.signing_key import key_file_path, signing_key

    monkeypatch.setenv("VQ_DATA_DIR", str(tmp_path / "data"))
    first = signing_key(Settings())
    assert len(first) >= 32 and first != b"dev-insecure-signing-key"
    assert signing_key(Settings()) == first  # another process on the data dir: the same key
    assert key_file_path(Settings()).stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("VQ_SIGNING_KEY", "dev-insecure-signing-key")
    assert signing_key(Settings()) == first  # the old built-in key never signs
    monkeypatch.setenv("VQ_SIGNING_KEY", "operator-key-9f3b")
    assert signing_key(Settings()) == b"operator-key-9f3b"
    monkeypatch.setenv("VQ_DATA_DIR", str(tmp_path / "other"))
    monkeypatch.delenv("VQ_SIGNING_KEY")
    assert signing_key(Settings()) != first


def test_production_with_api_keys_needs_a_metrics_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VQ_ENV", "production")
    monkeypatch.setenv("VQ_API_KEYS", "tenant-key-1")
    monkeypatch.setenv("VQ_SIGNING_KEY", "a-random-signing-key-5e2f")
    monkeypatch.setenv("VQ_WEBHOOK_SECRETS", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    with pytest.raises(ValueError, match=r"secrets: VQ_METRICS_TOKEN$"):
        Settings().check_secrets()
    monkeypatch.setenv("VQ_METRICS_TOKEN", "scrape-token-77a1")
    Settings().check_secrets()


def test_production_with_a_split_classifier_needs_its_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VQ_ENV", "production")
    monkeypatch.setenv("VQ_API_KEYS", "tenant-key-1")
    monkeypatch.setenv("VQ_SIGNING_KEY", "a-random-signing-key-5e2f")
    monkeypatch.setenv("VQ_WEBHOOK_SECRETS", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    monkeypatch.setenv("VQ_METRICS_TOKEN", "scrape-token-77a1")
    Settings().check_secrets()  # the classifier inside the front: no token needed
    monkeypatch.setenv("VQ_CLASSIFIER_URL", "http://classifier:3100")
    with pytest.raises(ValueError, match=r"secrets: VQ_CLASSIFIER_TOKEN$"):
        Settings().check_secrets()
    monkeypatch.setenv("VQ_CLASSIFIER_TOKEN", "classifier-token-31c9")
    Settings().check_secrets()
