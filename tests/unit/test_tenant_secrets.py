"""Per-tenant webhook secrets: derived per owner, verified by standardwebhooks, rotated."""

from __future__ import annotations

import time

import pytest
import standardwebhooks
from pydantic import SecretStr

from jobs.webhooks.signing import signed_headers
from jobs.webhooks.tenant_secrets import signing_secrets, tenant_secrets
from visionqueue.api.middleware.auth import key_owner
from visionqueue.core.secrets import decode_secret, generate_secret, tenant_secret
from visionqueue.core.settings import WebhookSettings

OLD, NEW = generate_secret(), generate_secret()
A, B = key_owner("tenant-a-key"), key_owner("tenant-b-key")
BODY = b'{"type":"job.completed"}'


def hook(mode: str, *secrets: str) -> WebhookSettings:
    return WebhookSettings(secrets=list(secrets), tenant_secrets=mode)  # type: ignore[arg-type]


def plain(secrets: list[object]) -> list[str]:
    return [s.get_secret_value() if isinstance(s, SecretStr) else str(s) for s in secrets]


def verifies(secret: str, secrets: list[object]) -> bool:
    headers = signed_headers(secrets, "msg_1", int(time.time()), BODY)  # type: ignore[arg-type]
    try:
        standardwebhooks.Webhook(secret).verify(BODY, headers)
    except standardwebhooks.WebhookVerificationError:
        return False
    return True


def test_each_owner_gets_its_own_valid_secret_deterministically() -> None:
    a, b = tenant_secret(NEW, A), tenant_secret(NEW, B)
    assert a != b and a == tenant_secret(NEW, A)
    assert len(decode_secret(a)) == 32 and a not in (NEW, OLD)
    with pytest.raises(ValueError):
        tenant_secret(NEW, "")


def test_tenant_mode_signs_so_only_the_owners_secret_verifies() -> None:
    signing = signing_secrets(hook("tenant", NEW), A)
    assert verifies(tenant_secret(NEW, A), signing)
    assert not verifies(tenant_secret(NEW, B), signing)  # another tenant cannot forge
    assert not verifies(NEW, signing)  # the shared secret no longer does either


def test_both_mode_keeps_receivers_on_the_shared_secret_working() -> None:
    signing = signing_secrets(hook("both", NEW), A)
    assert verifies(NEW, signing) and verifies(tenant_secret(NEW, A), signing)
    assert plain(signing_secrets(hook("shared", NEW), A)) == [NEW]


def test_rotating_the_shared_secret_rotates_every_tenants_secret() -> None:
    during = hook("tenant", NEW, OLD)
    assert tenant_secrets(during, A) == [tenant_secret(NEW, A), tenant_secret(OLD, A)]
    signing = signing_secrets(during, A)
    assert verifies(tenant_secret(OLD, A), signing) and verifies(tenant_secret(NEW, A), signing)
    assert not verifies(tenant_secret(OLD, A), signing_secrets(hook("tenant", NEW), A))


def test_jobs_without_an_owner_use_the_shared_secrets() -> None:
    assert plain(signing_secrets(hook("tenant", NEW), "")) == [NEW]
    assert plain(signing_secrets(hook("tenant", NEW), None)) == [NEW]
