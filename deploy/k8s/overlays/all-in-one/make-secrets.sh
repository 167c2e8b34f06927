#!/bin/sh
# Write secrets.env (next to this script) with fresh random values; refuses to overwrite one.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/secrets.env"
if [ -e "$out" ] && [ "${1:-}" != "--force" ]; then
    echo "$out exists; pass --force to replace it (the running services keep the old values)" >&2
    exit 1
fi
rand() { python3 -c 'import secrets; print(secrets.token_hex(24))'; }
whsec() { python3 -c 'import base64, secrets; print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())'; }
pg=$(rand); redis=$(rand); minio=$(rand)
umask 077
cat >"$out" <<ENV
POSTGRES_PASSWORD=$pg
VQ_DATABASE_URL=postgresql+psycopg://visionqueue:$pg@visionqueue-postgres:5432/visionqueue
REDIS_PASSWORD=$redis
VQ_BROKER_URL=redis://:$redis@visionqueue-redis:6379/0
MINIO_ROOT_USER=visionqueue
MINIO_ROOT_PASSWORD=$minio
VQ_S3_ACCESS_KEY=visionqueue
VQ_S3_SECRET_KEY=$minio
VQ_API_KEYS=$(rand)
VQ_SIGNING_KEY=$(rand)
VQ_WEBHOOK_SECRETS=$(whsec)
VQ_CLASSIFIER_TOKEN=$(rand)
ENV
echo "wrote $out (API key: VQ_API_KEYS in it)"
