"""Issue 25 on the production stack with workers: an elongated PNG fails its job once, with
a code (item 2); each tenant's webhooks verify with its own secret only (item 6), sent by a
worker that holds no tenant's API key, only the service token (item 10)."""

from __future__ import annotations

import dataclasses
import json
import uuid

import httpx
import pytest
import standardwebhooks

from tests.integration.webhook_receiver import WebhookReceiver
from tests.support import images
from tests.support.servers import bento_server
from tests.support.waiting import wait_for_job
from visionqueue.core.secrets import generate_secret


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a keyed front of its own


def test_an_elongated_png_fails_its_job_once_and_the_worker_goes_on(stack, worker) -> None:  # type: ignore[no-untyped-def]
    tall = images.png(1, 1500)  # 92 bytes of pixels; 256x384000 once resized
    resp = httpx.post(f"{stack.url}/v1/jobs", files={"images": ("t.png", tall)}, timeout=30)
    assert resp.status_code == 202, resp.text  # acceptance reads only the header
    job_id = resp.json()["jobs"][0]["id"]
    final = wait_for_job(stack.url, job_id)
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "image_too_elongated", final
    assert "16777216" in final["error"]["message"]
    assert final["attempts"] == 1
    assert worker.poll() is None  # the worker survived it
    after = httpx.post(
        f"{stack.url}/v1/jobs", files={"images": ("ok.png", images.png(64, 48))}, timeout=30
    )
    assert wait_for_job(stack.url, after.json()["jobs"][0]["id"])["status"] == "completed"


# --- item 6: each tenant's webhooks verify with its own secret only --------------------------


def test_each_tenant_verifies_its_webhooks_with_its_own_secret_and_workers_hold_no_key(
    stack,
) -> None:  # type: ignore[no-untyped-def]
    key_a, key_b = (f"vq-key-{n}-{uuid.uuid4().hex}" for n in "ab")
    shared = generate_secret()
    env = {
        **stack.env,
        "VQ_API_KEYS": f"{key_a},{key_b}",
        "VQ_BROKER_QUEUE_PREFIX": f"s{uuid.uuid4().hex[:8]}-",
        "VQ_WEBHOOK_SECRETS": shared,
        "VQ_WEBHOOK_TENANT_SECRETS": "tenant",
        "VQ_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        "VQ_SERVICE_TOKEN": f"vq-service-{uuid.uuid4().hex}",  # item 10
    }
    env.pop("VQ_WORKER_CLASSIFIER_URL", None)
    with bento_server(env, stack.log_dir / f"bento-tenants-{uuid.uuid4().hex[:6]}.log") as url:
        # the worker holds no tenant's key: it calls /predict with the service token
        worker_env = {**env, "VQ_WORKER_CLASSIFIER_URL": url, "VQ_API_KEYS": ""}
        tenants = dataclasses.replace(stack, url=url, env=worker_env, workers=[])
        tenants.start_worker(concurrency=2, name=f"tenants-{uuid.uuid4().hex[:6]}")
        try:
            assert httpx.get(f"{url}/v1/webhook-secret", timeout=30).status_code == 401
            own = {
                key: httpx.get(f"{url}/v1/webhook-secret", headers=bearer(key), timeout=30)
                for key in (key_a, key_b)
            }
            assert all(r.status_code == 200 for r in own.values()), own
            secret_a, secret_b = (own[k].json()["secrets"][0] for k in (key_a, key_b))
            assert len({secret_a, secret_b, shared}) == 3
            with WebhookReceiver() as receiver:
                resp = httpx.post(
                    f"{url}/v1/jobs",
                    files={"images": ("a.jpg", images.jpeg(64, 48, seed=6))},
                    data={"webhook_url": receiver.url()},
                    headers=bearer(key_a),
                    timeout=30,
                )
                assert resp.status_code == 202, resp.text
                [event] = receiver.wait_for_requests(1, timeout_s=90)
        finally:
            tenants.stop_workers()
    assert json.loads(event.body)["type"] == "job.completed", event.body  # item 10
    headers = {k: v for k, v in event.headers.items() if k.startswith("webhook-")}

    def verifies(secret: str) -> bool:
        try:
            standardwebhooks.Webhook(secret).verify(event.body, headers)
        except standardwebhooks.WebhookVerificationError:
            return False
        return True

    assert verifies(secret_a)  # tenant A checks its own event
    assert not verifies(secret_b)  # B's secret (all B knows) cannot forge or verify it
    assert not verifies(shared)  # nor can the old shared secret, in 'tenant' mode
