#!/bin/sh
# Start one VisionQueue role: api | classifier | worker | webhooks | beat | flower | migrate | import-model;
# anything else is exec'd.
set -eu

role="${1:-api}"
if [ "$#" -gt 0 ]; then shift; fi

import_model() {
    # Idempotent: reuses the stored model when its weights match VQ_WEIGHTS.
    python -m model_store import --if-missing --weights "${VQ_WEIGHTS:-imagenet1k_v1}"
}

case "$role" in
    api)
        # a front whose classifier runs elsewhere (VQ_CLASSIFIER_URL) loads no model
        if [ -z "${VQ_CLASSIFIER_URL:-}" ]; then import_model; fi
        # Migrations are the one-shot `migrate` service's job in compose; a lone container
        # (docker run) can opt in so it needs nothing else.
        if [ "${VQ_MIGRATE_ON_START:-false}" = "true" ]; then
            python -m persistence upgrade
        fi
        exec bentoml serve service:VisionQueue --host 0.0.0.0 --port "${VQ_PORT:-3000}" "$@"
        ;;
    classifier)
        # The classifier served on its own (docs/deployment.md, "A classifier of its own"): the
        # api and the workers call it through VQ_CLASSIFIER_URL (deploy/compose.classifier.yml).
        # With a shared model bucket (VQ_S3_MODELS_BUCKET, Kubernetes) the import-model Job
        # imports once and every replica fetches what it serves at start: no import here.
        if [ -z "${VQ_S3_MODELS_BUCKET:-}" ]; then import_model; fi
        exec bentoml serve service:Classifier --host 0.0.0.0 --port 3100 "$@"
        ;;
    worker)
        exec celery -A jobs.celery_app:app worker \
            --pool threads --concurrency "${VQ_WORKER_CONCURRENCY:-16}" \
            -Q "${VQ_BROKER_QUEUE_PREFIX:-}visionqueue,${VQ_BROKER_QUEUE_PREFIX:-}maintenance" \
            --loglevel "${VQ_LOG_LEVEL:-INFO}" "$@"
        ;;
    webhooks)
        # Deliveries in a pool of their own; sweeps may run here too (single-flight).
        exec celery -A jobs.celery_app:app worker -n "webhooks@%h" \
            --pool threads --concurrency "${VQ_WEBHOOK_CONCURRENCY:-8}" \
            -Q "${VQ_BROKER_QUEUE_PREFIX:-}webhooks,${VQ_BROKER_QUEUE_PREFIX:-}maintenance" \
            --loglevel "${VQ_LOG_LEVEL:-INFO}" "$@"
        ;;
    beat)
        # One per deployment: schedules the sweeper (lost jobs, the webhook outbox relay).
        exec celery -A jobs.celery_app:app beat --loglevel "${VQ_LOG_LEVEL:-INFO}" \
            --schedule /tmp/celerybeat-schedule "$@"
        ;;
    flower)
        # Basic auth comes from FLOWER_BASIC_AUTH (user:pass), Flower's own variable.
        exec celery -A jobs.celery_app:app flower --address=0.0.0.0 --port=5555 "$@"
        ;;
    migrate)
        exec python -m persistence upgrade "$@"
        ;;
    import-model)
        import_model
        ;;
    *)
        exec "$role" "$@"
        ;;
esac
