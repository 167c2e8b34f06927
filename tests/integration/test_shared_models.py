"""Two classifier replicas, each with its own model store, on one database and one bucket.

What a Kubernetes deployment of the classifier tier relies on (docs/kubernetes.md): a model
imported once (on a third "host", the import Job) is published to the shared bucket
(``VQ_S3_MODELS_BUCKET``); each replica starts with an empty BentoML store and fetches the
version it serves; ``visionqueue models promote`` (from a fourth store) records the promotion
in the database, and both replicas switch, under load, with no failed request.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from minio import Minio

from model_store.serving import tag_id
from persistence.promotions_repo import DatabasePromotions
from tests.support import checkpoints
from tests.support.postgres import throwaway_postgres_url
from tests.support.servers import BIN, BentoServer
from tests.support.stack import backend_env, migrate, s3_server_process
from tests.support.waiting import wait_until
from visionqueue.dataplane.crops_wire import pack_crops

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "shared-pets"
BUCKET = "vq-models"
CLIENTS_PER_REPLICA = 2


@dataclass
class Shared:
    """The backends both replicas share, and the two versions published to the bucket."""

    env: dict[str, str]
    folder: Path
    v1: str
    v2: str
    replicas: list[BentoServer] = field(default_factory=list)


def _host_env(env: dict[str, str], folder: Path, host: str) -> dict[str, str]:
    """A "host" of its own: an empty BentoML store and data folder."""
    home = folder / host / "bentoml"
    (home / "models").mkdir(parents=True, exist_ok=True)
    return {**env, "BENTOML_HOME": str(home), "VQ_DATA_DIR": str(folder / host / "data")}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )


def _import(env: dict[str, str], weights: Path, labels: Path) -> str:
    command = ["import", NAME, "--weights", str(weights), "--labels", str(labels), "--json"]
    done = _run([str(BIN / "python"), "-m", "model_store", *command], env)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout.strip().splitlines()[-1])["tag"])


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    folder = tmp_path_factory.mktemp("shared-models")
    with throwaway_postgres_url() as db_url, s3_server_process(folder / "s3.log") as s3:
        env = {
            **backend_env(db_url, "redis://127.0.0.1:6379/12", s3.url),
            "VQ_S3_MODELS_BUCKET": BUCKET,
            "VQ_INFERENCE_BACKEND": "eager",
            "VQ_TORCH_THREADS": "1",
            "VQ_BATCH_MAX_SIZE": "4",
            "VQ_PROMOTION_POLL_S": "0.5",
        }
        migrate(env)
        # the import Job's host: imports both versions once and publishes them
        importer = _host_env(env, folder, "importer")
        weights, labels, _ = checkpoints.resnet18_pets(folder, seed=1)
        v1 = _import(importer, weights, labels)
        weights, labels, _ = checkpoints.resnet18_pets(folder / "importer", seed=5)
        v2 = _import(importer, weights, labels)
        state = Shared(env, folder, v1, v2)
        try:
            for index in (1, 2):
                # each serves v2 (an exact tag: only that version is fetched at start)
                replica_env = {**_host_env(env, folder, f"replica{index}"), "VQ_MODELS": v2}
                server = BentoServer(
                    replica_env,
                    folder / f"replica{index}.log",
                    service="service:Classifier",
                    timeout=300,
                )
                state.replicas.append(server)
                server.start()
            yield state
        finally:
            for server in state.replicas:
                server.stop()


def _classify(http: httpx.Client, url: str, crops: np.ndarray) -> tuple[int, list[list[float]]]:
    resp = http.post(
        f"{url}/packed_classify",
        json={"crops": pack_crops(crops)},
        headers={"Content-Type": "application/json"},
    )
    return resp.status_code, (resp.json() if resp.status_code == 200 else [])


def _served_tag(url: str) -> str:
    resp = httpx.post(f"{url}/model_info", json={"name": NAME}, timeout=30)
    resp.raise_for_status()
    return str(resp.json()["tag"])


def _stored_versions(host: Path) -> set[str]:
    folder = host / "bentoml" / "models" / NAME
    return {p.name for p in folder.iterdir() if p.is_dir()} if folder.exists() else set()


def _crops(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 224, 224, 3), dtype=np.uint8)


def test_a_model_imported_once_is_served_by_both_replicas(shared: Shared) -> None:
    # the bucket holds each version once, published by the one import
    client = Minio(
        shared.env["VQ_S3_ENDPOINT"].removeprefix("http://"),
        shared.env["VQ_S3_ACCESS_KEY"],
        shared.env["VQ_S3_SECRET_KEY"],
        secure=False,
    )
    keys = sorted(o.object_name for o in client.list_objects(BUCKET, recursive=True))
    v1, v2 = (t.split(":")[1] for t in (shared.v1, shared.v2))
    assert keys == sorted([f"{NAME}/{v1}.bentomodel", f"{NAME}/{v2}.bentomodel"])
    # each replica fetched the version it serves from the bucket into its empty store
    crops = _crops(2, seed=7)
    answers = []
    with httpx.Client(timeout=120) as http:
        for replica in shared.replicas:
            assert _served_tag(replica.url) == shared.v2
            status, rows = _classify(http, replica.url, crops)
            assert status == 200
            answers.append(np.asarray(rows))
    for index in (1, 2):
        assert _stored_versions(shared.folder / f"replica{index}") == {v2}
    # the same weights on both: the same probabilities for the same crops
    assert answers[0].shape == (2, len(checkpoints.PETS) + 2)
    np.testing.assert_allclose(answers[0][:, :-2], answers[1][:, :-2], rtol=1e-4, atol=1e-5)
    assert set(answers[0][:, -1]) == set(answers[1][:, -1]) == {float(tag_id(shared.v2))}


def test_a_promote_under_load_switches_both_replicas_with_no_failed_request(
    shared: Shared,
) -> None:
    """Roll both back to v1 (a version neither replica has stored: fetched on the promote)."""
    for index in (1, 2):
        assert shared.v1.split(":")[1] not in _stored_versions(shared.folder / f"replica{index}")
    results: dict[str, list[tuple[float, int, float]]] = {r.url: [] for r in shared.replicas}
    lock = threading.Lock()
    stop = threading.Event()

    def load(url: str, seed: int) -> None:
        with httpx.Client(timeout=120) as http:
            for i in itertools.count():
                if stop.is_set():
                    return
                status, rows = _classify(http, url, _crops(1, seed * 1000 + i))
                ids = {row[-1] for row in rows}
                with lock:
                    results[url].append((time.monotonic(), status, ids.pop() if ids else -1.0))

    threads = [
        threading.Thread(target=load, args=(replica.url, n * 10 + k))
        for n, replica in enumerate(shared.replicas)
        for k in range(CLIENTS_PER_REPLICA)
    ]
    for thread in threads:
        thread.start()
    old, new = float(tag_id(shared.v2)), float(tag_id(shared.v1))
    try:
        wait_until(
            lambda: all(any(r[2] == old for r in rows) for rows in results.values()),
            120,
            "both replicas answering on the served version",
        )
        # a fourth host, with an empty store of its own, promotes
        promoter = _host_env(shared.env, shared.folder, "promoter")
        done = _run(
            [str(BIN / "visionqueue"), "models", "promote", shared.v1, "--no-wait"], promoter
        )
        assert done.returncode == 0, done.stderr
        for replica in shared.replicas:
            wait_until(lambda r=replica: _served_tag(r.url) == shared.v1, 180, "the switch")
        switched_at = time.monotonic()
        wait_until(
            lambda: all(
                sum(1 for r in rows if r[0] > switched_at and r[2] == new) >= 3
                for rows in results.values()
            ),
            120,
            "answers on the promoted version from both replicas",
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(120)
    for url, rows in results.items():
        assert [r for r in rows if r[1] != 200] == [], f"{url}: failed requests"
        ordered = [tag for _, _, tag in sorted(rows)]
        # one switch, old to new, and never back: a batch runs wholly on one version
        assert ordered[0] == old and ordered[-1] == new, url
        assert sum(1 for a, b in itertools.pairwise(ordered) if a != b) == 1, url
        assert {tag for done_at, _, tag in rows if done_at > switched_at} == {new}, url
    for index in (1, 2):  # each replica fetched the promoted version into its own store
        assert shared.v1.split(":")[1] in _stored_versions(shared.folder / f"replica{index}")
    # one row in the shared database says so; a listing from yet another empty store
    # fetches the versions and marks the promoted one
    entry = DatabasePromotions(shared.env["VQ_DATABASE_URL"]).entries()[NAME]
    assert (entry["tag"], entry["previous"]) == (shared.v1, None)
    lister = _host_env(shared.env, shared.folder, "lister")
    done = _run([str(BIN / "visionqueue"), "models", "list", NAME], lister)
    assert done.returncode == 0, done.stderr
    assert f"* {shared.v1}" in done.stdout and shared.v2 in done.stdout
