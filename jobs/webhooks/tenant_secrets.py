"""Which secrets sign a job's webhook: the tenant's own, the shared ones, or both.

With API keys, every job belongs to the owner of the key that submitted it, and each owner
has its own signing secret derived from ``VQ_WEBHOOK_SECRETS`` (``tenant_secret``), shown
to that owner only (``GET /v1/webhook-secret``). ``VQ_WEBHOOK_TENANT_SECRETS`` says which
sign a tenant's events:

- ``shared``: the configured secrets, as before (any tenant can forge another's events);
- ``both`` (default): the tenant's secrets and the shared ones, one ``v1,`` entry each, so
  receivers that verify with the shared secret keep working while they switch;
- ``tenant``: the tenant's own secrets only; a shared secret no longer verifies them.

Rotating ``VQ_WEBHOOK_SECRETS`` (a new secret first, the old one after it) rotates every
tenant's secret the same way: both derived secrets sign until the old one is removed.
Jobs with no owner (API keys off) are signed with the shared secrets in every mode.
"""

from __future__ import annotations

from visionqueue.core.secrets import SecretLike, tenant_secret
from visionqueue.core.settings import WebhookSettings


def tenant_secrets(hook: WebhookSettings, owner: str) -> list[str]:
    """Return ``owner``'s secrets, current first (one per configured shared secret)."""
    return [tenant_secret(master, owner) for master in hook.secrets]


def signing_secrets(hook: WebhookSettings, owner: str | None) -> list[SecretLike]:
    """Return the secrets that sign an event of a job filed under ``owner``."""
    shared: list[SecretLike] = list(hook.secrets)
    if not owner or hook.tenant_secrets == "shared":
        return shared
    own: list[SecretLike] = list(tenant_secrets(hook, owner))
    return own if hook.tenant_secrets == "tenant" else own + shared
