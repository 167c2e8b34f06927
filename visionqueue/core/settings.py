"""Typed settings for every process, read from ``VQ_*`` environment variables.

One object, nested per concern; each nested group reads its own prefix so the public
variable names (``VQ_DATABASE_URL``, ``VQ_S3_ENDPOINT``, ...) stay flat and stable.
Unset backends mean the embedded default: SQLite file, local image directory and the
``filesystem://`` Celery transport, all under ``VQ_DATA_DIR``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "minioadmin", "secret", "password"}


INFERENCE_BACKENDS = ("auto", "eager", "channels_last", "compile", "onnxruntime", "openvino")


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class _Group(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", env_file=None)


class ServerSettings(_Group):
    """HTTP front: where it listens and what it accepts."""

    model_config = SettingsConfigDict(env_prefix="VQ_")

    host: str = Field("127.0.0.1", description="Interface the HTTP front binds to.")
    port: int = Field(3000, ge=1, le=65535, description="Port of the HTTP front.")
    public_url: str = Field(
        "",
        description="Base URL clients use to reach the service (signed image URLs); "
        "empty means http://HOST:PORT.",
    )
    max_upload_bytes: int = Field(
        20 * 1024 * 1024, ge=1024, description="Largest accepted request body (413 above)."
    )
    max_image_pixels: int = Field(
        60_000_000, ge=1, description="Largest accepted image (width x height); bombs refused."
    )
    front_workers: int = Field(1, ge=1, description="Worker processes of the front service.")
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="With no API keys, the front answers only requests whose Host is an IP "
        "address, a loopback name, the VQ_PUBLIC_URL host or one of these comma-separated "
        "names ('*' = any; guards against DNS rebinding).",
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; when set, job and predict routes need "
        "'Authorization: Bearer KEY'.",
    )
    service_token: SecretStr = Field(
        SecretStr(""),
        description="The workers' own credential for their calls to the front (/predict, a "
        "chunk's POST /v1/batches/crops and GET /v1/batches/crops/classifier, GET /v1/models) "
        "and nothing else: give the front and the workers the same value; the workers then "
        "need no tenant's API key. Empty = workers send the first of VQ_API_KEYS.",
    )
    signing_key: SecretStr = Field(
        SecretStr(""),
        description="HMAC key for signed local image URLs; empty = a random key generated "
        "once into VQ_DATA_DIR/signing-key (0600). Required with VQ_API_KEYS or in "
        "production.",
    )
    image_url_ttl_s: int = Field(3600, ge=1, description="Lifetime of image URLs in seconds.")
    max_backlog: int = Field(
        0,
        ge=0,
        description="Most unfinished (pending + processing) jobs; a submission that would go "
        "past it gets 429 (0 = unlimited).",
    )
    env: Literal["dev", "production"] = Field(
        "dev", description="'production' refuses placeholder secrets."
    )
    metrics_token: SecretStr = Field(
        SecretStr(""),
        description="When set, /metrics needs 'Authorization: Bearer TOKEN' (Prometheus: "
        "'authorization: {credentials_file: ...}'); empty = open, for a private network. "
        "Required in production when VQ_API_KEYS is set.",
    )
    health_cache_s: float = Field(
        2.0,
        ge=0,
        description="Seconds each front worker reuses its database, broker and store answers "
        "for /readyz and the /metrics backlog gauges, whatever the request rate (0 = query "
        "on every request).",
    )

    @field_validator("api_keys", "allowed_hosts", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        return _split_csv(value)


class ModelSettings(_Group):
    """Which weights the classifier serves and how it batches."""

    model_config = SettingsConfigDict(env_prefix="VQ_")

    weights: str = Field(
        "imagenet1k_v1",
        description="'imagenet1k_v1' (torchvision, needs network once), a checkpoint path, "
        "or 'random' (seeded demo model).",
    )
    random_seed: int = Field(0, description="Seed for 'random' weights.")
    model_name: str = Field("resnet18", description="Name of the model in the BentoML store.")
    model_tag: str = Field(
        "", description="Exact model tag to serve; empty = MODEL_NAME:latest ('make run' sets it)."
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated models to serve, each NAME (its latest version) or "
        "NAME:TAG; the first is the default. Empty = the one ResNet18 of VQ_MODEL_NAME/"
        "VQ_MODEL_TAG/VQ_WEIGHTS. A promoted version (visionqueue models promote) wins.",
    )
    model_memory_limit_mb: int = Field(
        0,
        ge=0,
        description="Memory the served models may take in all classifier workers together; "
        "a configuration estimated above it fails at start, naming the models "
        "(0 = the memory available when it starts).",
    )
    promotion_poll_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="How often classifier workers look for a promoted model version.",
    )
    inference_backend: Literal[
        "auto", "eager", "channels_last", "compile", "onnxruntime", "openvino"
    ] = Field(
        "auto",
        description="How the classifier runs a model: auto (on CUDA: ONNX Runtime's CUDA "
        "provider, else torch; on the CPU: onnxruntime), eager, channels_last, compile "
        "(torch.compile at start-up, cached on disk), onnxruntime (exported once, cached; "
        "CUDA provider when onnxruntime-gpu has one) or openvino (the same ONNX graph on "
        "OpenVINO, CPU); see docs/benchmarks.md.",
    )
    int8_min_agreement: float = Field(
        0.99,
        ge=0,
        le=1,
        description="Top-1 agreement with its fp32 source (held-out images, stored at "
        "import) below which 'models promote' refuses an int8 version unless --force.",
    )
    model_backends: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Per-model backends, comma-separated NAME=BACKEND (e.g. "
        "effnet=openvino); a model not named uses VQ_INFERENCE_BACKEND.",
    )
    compile_cache_dir: str = Field(
        "",
        description="torch.compile cache for the 'compile' backend; empty = VQ_DATA_DIR/torch-compile.",
    )
    jpeg_draft: bool = Field(
        False,
        description="Let the JPEG decoder shrink photos of 1024 px or more (shorter side) to "
        "no less than 512 px: a 12 MP photo costs ~4x less, pixels differ by at most a few "
        "levels from torchvision's full decode; results say 'jpeg-draft-1/N'. Off by default.",
    )
    preprocess_threads: int = Field(
        2, ge=1, description="Threads that decode and crop images in each front worker."
    )
    batch_max_size: int = Field(16, ge=1, le=256, description="Adaptive batching: largest batch.")
    batch_max_latency_ms: int = Field(
        30000,
        ge=1,
        description="Adaptive batching: deadline in the batch queue before a 503 (BentoML drops "
        "requests that would exceed it; it is not a wait target).",
    )
    batch_wait_policy: Literal["greedy", "bentoml"] = Field(
        "greedy",
        description="greedy: dispatch a batch as soon as the model is free (no added latency "
        "when idle); bentoml: BentoML's adaptive wait.",
    )
    batch_max_size_jobs: int = Field(
        4,
        ge=1,
        le=256,
        description="Largest forward pass of job work (/v1/jobs, /classify): the most a "
        "person's request can find running ahead of it; VQ_BATCH_MAX_SIZE is the interactive "
        "class's (see docs/priority.md).",
    )
    batch_max_size_bulk: int = Field(
        4,
        ge=1,
        le=256,
        description="Largest forward pass of bulk work (jobs with priority=low, dataset batches).",
    )
    priority_share_every: int = Field(
        8,
        ge=1,
        le=1000,
        description="A class of work with calls queued that has been passed over this many "
        "forward passes in a row runs the next one: while interactive traffic keeps the "
        "classifier busy, jobs and bulk still get one pass in every N + 2.",
    )
    background_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="CPU nice value of work no person waits for: job and bulk forward passes "
        "(side by side on single-threaded ONNX Runtime sessions, beside the interactive "
        "pass; further lowered by VQ_BACKGROUND_POLICY) and the Celery workers (with the "
        "scheduling group of a worker's own session). The kernel then gives a "
        "person's request the cores first; 0 = off (job passes take turns with interactive "
        "ones, at full priority). See docs/priority.md.",
    )
    background_policy: Literal["idle", "nice"] = Field(
        "idle",
        description="How the classifier's job and bulk lanes yield the CPU: idle = Linux's "
        "SCHED_IDLE (the kernel hands their core to any other thread the moment it wants it, "
        "the front's and the database's in other sessions too); nice = VQ_BACKGROUND_NICE "
        "only, which weighs them against the classifier's own threads. The Celery workers "
        "stay at VQ_BACKGROUND_NICE either way; VQ_BACKGROUND_NICE=0 turns lanes off. See "
        "docs/priority.md.",
    )
    background_process: bool = Field(
        True,
        description="Run the classifier's job and bulk lanes in a process of their own (one "
        "per classifier worker), in a session whose scheduling group is at nice 19: Linux "
        "shares a core between groups before it looks at a thread's policy, so lanes inside "
        "the classifier's own group slowed a person's forward pass there. false = lanes are "
        "threads of the classifier (the behaviour before). See docs/priority.md.",
    )
    predict_deadline_ms: int = Field(
        0,
        ge=0,
        description="How long an interactive request (/predict, v2 infer, TorchServe) may wait "
        "for its forward pass; past it, it is answered 504 (deadline_exceeded) and its forward "
        "pass never runs. A request's own timeout (v2 'timeout' parameter) is used when shorter. "
        "0 = no deadline.",
    )
    calls_in_flight: int = Field(
        2,
        ge=0,
        description="Front-to-classifier calls each front worker keeps outstanding per "
        "classifier worker; crops that arrive meanwhile are merged into the next call "
        "(0 = one call per image, no merging).",
    )
    torch_threads: int = Field(
        0, ge=0, description="Intra-op threads for inference (0 = number of cores)."
    )
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu' or 'cuda'.")
    classifier_workers: int = Field(1, ge=1, description="Processes of the classifier service.")
    classifier_transport: Literal["http", "socket"] = Field(
        "socket",
        description="How the front calls the classifier it starts itself: 'socket' (one Unix "
        "socket per classifier worker into the same batch queues; ~3 ms less per call; a "
        "worker on the same host sends its crops there too, bypassing the front) or 'http' "
        "(BentoML's inter-service client; a worker given 'http' posts its crops to the "
        "front). A classifier at VQ_CLASSIFIER_URL is always called over HTTP.",
    )
    classifier_url: str = Field(
        "",
        description="URL of a classifier run as its own process or host ('bentoml serve "
        "service:Classifier'); the front and the workers then call it directly (workers crop "
        "images themselves instead of calling the front's /predict). Empty = the front starts "
        "the classifier itself.",
    )
    classifier_token: SecretStr = Field(
        SecretStr(""),
        description="When set, the classifier service answers its routes (all but /livez, "
        "/readyz and /healthz) only to 'Authorization: Bearer TOKEN', and the front and the "
        "workers send it; give every one of them the same value. Empty = open, for a private "
        "network; required in production when VQ_CLASSIFIER_URL is set.",
    )

    @field_validator("models", mode="before")
    @classmethod
    def _models(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("model_backends", mode="before")
    @classmethod
    def _model_backends(cls, value: object) -> object:
        entries = _split_csv(value)
        for entry in entries if isinstance(entries, list) else []:
            name, _, backend = str(entry).partition("=")
            if not name.strip() or backend.strip() not in INFERENCE_BACKENDS:
                raise ValueError(
                    f"VQ_MODEL_BACKENDS entry {entry!r} is not NAME=BACKEND with BACKEND one of "
                    f"{', '.join(INFERENCE_BACKENDS)}"
                )
        return entries

    @property
    def backend_by_model(self) -> dict[str, str]:
        """``VQ_MODEL_BACKENDS`` as name -> backend."""
        pairs = (entry.partition("=") for entry in self.model_backends)
        return {name.strip(): backend.strip() for name, _, backend in pairs}


class DatabaseSettings(_Group):
    model_config = SettingsConfigDict(env_prefix="VQ_DATABASE_")

    url: str = Field(
        "", description="SQLAlchemy URL (postgresql+psycopg://...); empty = SQLite in VQ_DATA_DIR."
    )


class BrokerSettings(_Group):
    model_config = SettingsConfigDict(env_prefix="VQ_BROKER_")

    url: str = Field(
        "",
        description="Celery broker (redis://, amqp://); empty = filesystem broker in VQ_DATA_DIR.",
    )
    queue_prefix: str = Field(
        "",
        pattern=r"^[A-Za-z0-9_.-]*$",
        description="Prefix of the queue names, to share one broker between deployments.",
    )
    visibility_timeout_s: int = Field(
        3600,
        ge=5,
        description="Redis/SQS: seconds before an unacknowledged job (worker died) is redelivered.",
    )
    publish_timeout_s: float = Field(
        3.0, gt=0, description="Give up publishing a job after this long (then 503)."
    )
    poll_interval_s: float = Field(
        0.05,
        gt=0,
        le=5,
        description="Embedded (filesystem) broker: seconds an idle worker waits before looking "
        "for new messages again, which is the most a lone job waits to be picked up (kombu's "
        "default, 1 s, made a lone job take ~1 s; see docs/performance.md).",
    )


class S3Settings(_Group):
    model_config = SettingsConfigDict(env_prefix="VQ_S3_")

    endpoint: str = Field(
        "", description="S3/MinIO endpoint URL (http://host:9000); empty = local image directory."
    )
    access_key: SecretStr = Field(SecretStr(""), description="S3 access key.")
    secret_key: SecretStr = Field(SecretStr(""), description="S3 secret key.")
    bucket: str = Field("visionqueue-images", description="Bucket for uploaded images.")
    region: str = Field("us-east-1", description="S3 region used for signing.")
    public_endpoint: str = Field(
        "", description="Endpoint used in presigned URLs when clients see S3 under another name."
    )
    models_bucket: str = Field(
        "",
        description="Bucket where imported model versions are stored once for every classifier "
        "replica (on VQ_S3_ENDPOINT): an import uploads there, a classifier fetches the versions "
        "it serves or is promoted to. Empty = each host's own BentoML store only.",
    )


class WorkerSettings(_Group):
    model_config = SettingsConfigDict(env_prefix="VQ_WORKER_")

    concurrency: int = Field(16, ge=1, description="Threads per Celery worker process.")
    front_url: str = Field(
        "",
        # VQ_WORKER_CLASSIFIER_URL: its former name (it never meant VQ_CLASSIFIER_URL's classifier)
        validation_alias=AliasChoices("VQ_WORKER_FRONT_URL", "VQ_WORKER_CLASSIFIER_URL"),
        description="URL of the front the worker classifies through: it names its "
        "classifier's crop sockets, which a worker on the same host sends a batch's crops to, "
        "and takes them itself otherwise (POST /v1/batches/crops); empty = this deployment's "
        "own (VQ_PUBLIC_URL, else VQ_HOST and VQ_PORT). Its former name "
        "VQ_WORKER_CLASSIFIER_URL still works. Unused with VQ_CLASSIFIER_URL.",
    )
    task_time_limit_s: int = Field(300, ge=10, description="Hard time limit of a job task.")
    max_retries: int = Field(10, ge=0, description="Retries of a job on transient errors.")
    max_attempts: int = Field(
        13,
        ge=1,
        description="Runs of one job (first, retries, re-runs after its worker died) before it "
        "fails with error code attempts_exhausted.",
    )
    lease_s: float = Field(
        15.0,
        ge=3,
        description="A running job's lease, renewed every third of it; a job whose worker "
        "stops renewing is handed to another worker by the next sweep.",
    )
    pending_requeue_after_s: int = Field(
        600, ge=5, description="Recovery sweep re-enqueues jobs pending longer than this."
    )
    sweep_interval_s: float = Field(
        10.0, gt=0, description="How often the sweeper re-enqueues lost jobs and due webhooks."
    )
    top_k: int = Field(5, ge=1, le=20, description="Classes stored in each job's result.")
    batch_size: int = Field(
        16,
        ge=1,
        le=64,
        description="Most jobs a worker process claims, classifies and stores together (one "
        "claim and one completion transaction per batch; 1 = one job at a time). Batches "
        "form from the jobs that arrive while earlier batches run; see docs/performance.md.",
    )
    batch_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="How long a batch waits for company before it starts when a batch slot "
        "is free (0 = never: a lone job starts at once).",
    )
    retention_days: float = Field(
        0,
        ge=0,
        description="Delete finished jobs (rows, delivery logs, unshared images) older than "
        "this many days, and finished batches unless VQ_BATCH_RETENTION_DAYS is set; 0 keeps "
        "them forever.",
    )
    purge_orphan_images: bool = Field(
        True,
        description="Hourly, delete stored images that no job refers to and that were written "
        "over an hour ago (left by submissions refused after storing them). Turn off if "
        "several deployments with separate databases share one bucket.",
    )


class WebhookSettings(_Group):
    model_config = SettingsConfigDict(env_prefix="VQ_WEBHOOK_")

    secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated 'whsec_<base64>' signing secrets (several = rotation).",
    )
    tenant_secrets: Literal["shared", "both", "tenant"] = Field(
        "both",
        description="With API keys, what signs a tenant's webhooks: 'shared' (the secrets "
        "above), 'both' (its own secret, derived from them and shown at GET "
        "/v1/webhook-secret, and the shared ones), or 'tenant' (its own only: no tenant "
        "can forge another's events).",
    )
    retry_schedule: Annotated[list[float], NoDecode] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0] + [36000.0] * 7,
        description="Comma-separated seconds between delivery attempts (~3 days by default).",
    )
    timeout_s: float = Field(
        10.0, gt=0, description="Deadline of one delivery attempt (connect to last byte)."
    )
    max_in_flight_per_destination: int = Field(
        4,
        ge=1,
        description="Delivery attempts in flight at once to one scheme://host:port; the rest "
        "wait, so a receiver that never answers holds at most this many webhook threads.",
    )
    delivery_deadline_s: float = Field(
        4 * 86400.0,
        gt=0,
        description="No retry is planned later than this after the job finished; the event "
        "is then recorded as exhausted.",
    )
    redeliver_interval_s: float = Field(
        10.0,
        ge=0,
        description="Minimum seconds between two manual redeliveries of one job's event (429).",
    )
    concurrency: int = Field(
        8, ge=1, description="Threads of the webhook worker pool (make run's webhook worker)."
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Hosts exempt from the SSRF guard (tests/local dev only, e.g. 127.0.0.1).",
    )

    @field_validator("secrets", "allowed_hosts", "retry_schedule", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)


class ObservabilitySettings(_Group):
    model_config = SettingsConfigDict(env_prefix="VQ_")

    log_level: str = Field("INFO", description="Log level of every process.")
    log_json: bool = Field(False, description="Emit JSON log lines.")
    flower_port: int = Field(5555, ge=0, description="Flower port in 'make run' (0 = off).")
    worker_metrics_port: int = Field(
        9808, ge=0, description="Prometheus endpoint of the Celery worker (0 = off)."
    )


class BatchSettings(_Group):
    """Dataset batches (``POST /v1/batches``)."""

    model_config = SettingsConfigDict(env_prefix="VQ_BATCH_")

    local_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated absolute folders a batch may read with a file:/// source "
        "(and write its results to); empty = no local sources.",
    )
    chunk_size: int = Field(
        64,
        ge=1,
        le=1024,
        description="Objects per leased chunk: one claim, one classifier call per "
        "VQ_BATCH_MAX_SIZE and one transaction each.",
    )
    lanes: int = Field(
        4,
        ge=1,
        le=256,
        description="Chunk-taking tasks queued per batch; each takes chunks until none is "
        "left, so any worker on any host shares the batch.",
    )
    lease_s: float = Field(
        60.0,
        ge=3,
        description="A chunk's lease, renewed every third of it; a chunk whose worker stops "
        "renewing goes to another, and the late worker's write is refused (fenced).",
    )
    retention_days: float | None = Field(
        None,
        ge=0,
        description="Delete batches finished longer ago than this many days: the row, its "
        "chunks' result lines, its delivery log and, in the project's own store (no 'output' "
        "given), its part files; an owed webhook event keeps it. Empty = "
        "VQ_WORKER_RETENTION_DAYS; 0 keeps them forever.",
    )

    @field_validator("local_roots", mode="before")
    @classmethod
    def _roots(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("retention_days", mode="before")
    @classmethod
    def _unset_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value


class Settings(_Group):
    """Everything a VisionQueue process reads from its environment."""

    model_config = SettingsConfigDict(env_prefix="VQ_")

    data_dir: Path = Field(
        Path(".vq-data"), description="Where the embedded default keeps its files."
    )
    server: ServerSettings = Field(default_factory=ServerSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    batch: BatchSettings = Field(default_factory=BatchSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)

    @property
    def database_url(self) -> str:
        if self.database.url:
            return self.database.url
        return f"sqlite:///{(self.data_dir / 'visionqueue.db').resolve()}"

    @property
    def broker_url(self) -> str:
        # the filesystem transport ignores the host; naming one spares kombu's warning
        return self.broker.url or "filesystem://localhost//"

    @property
    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def images_dir(self) -> Path:
        return (self.data_dir / "images").resolve()

    @property
    def public_url(self) -> str:
        if self.server.public_url:
            return self.server.public_url.rstrip("/")
        return f"http://{self.server.host}:{self.server.port}"

    @property
    def front_url(self) -> str:
        """The front the workers send images to (``/predict``), without a trailing slash."""
        return (self.worker.front_url or self.public_url).rstrip("/")

    def check_secrets(self) -> None:
        """Refuse malformed webhook secrets always; placeholder or missing ones in production."""
        from visionqueue.core.secrets import decode_secret  # lazy: settings stays import-light

        for index, secret in enumerate(self.webhook.secrets, start=1):
            try:
                decode_secret(secret)
            except ValueError as exc:
                raise ValueError(f"VQ_WEBHOOK_SECRETS entry {index}: {exc}") from None
        signing_key = self.server.signing_key.get_secret_value()
        weak_signing_key = signing_key in PLACEHOLDER_SECRETS | {"dev-insecure-signing-key"}
        if self.server.api_keys and signing_key and weak_signing_key:
            # empty is fine (a random key is generated into the data dir); a known one
            # would let anyone who knows an image's key mint a link to it
            raise ValueError(
                "with VQ_API_KEYS set, VQ_SIGNING_KEY must be a random value (e.g. `openssl "
                "rand -hex 32`) or empty (generated), not a placeholder"
            )
        if self.server.env != "production":
            return
        weak = []
        if weak_signing_key:
            weak.append("VQ_SIGNING_KEY")
        if self.s3.endpoint and self.s3.secret_key.get_secret_value() in PLACEHOLDER_SECRETS:
            weak.append("VQ_S3_SECRET_KEY")
        if not self.server.api_keys:
            weak.append("VQ_API_KEYS")
        elif not self.server.metrics_token.get_secret_value():
            # /metrics names every route, job rate and model: keys on everything else
            # and an open /metrics would leak it to anyone who reaches the port
            weak.append("VQ_METRICS_TOKEN")
        if not self.webhook.secrets:
            weak.append("VQ_WEBHOOK_SECRETS")
        service = self.server.service_token.get_secret_value()
        if service and service in PLACEHOLDER_SECRETS:
            weak.append("VQ_SERVICE_TOKEN")
        token = self.model.classifier_token.get_secret_value()
        if token in PLACEHOLDER_SECRETS and (token or self.model.classifier_url):
            # a classifier on its own port answers anyone who reaches it without a token
            weak.append("VQ_CLASSIFIER_TOKEN")
        if weak:
            raise ValueError(
                "production mode refuses placeholder or missing secrets: " + ", ".join(weak)
            )


@functools.cache
def get_settings() -> Settings:
    """Return the process-wide settings (read once)."""
    return Settings()
