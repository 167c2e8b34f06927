#!/usr/bin/env bash
# Play the all-in-one overlay's workloads with `podman kube play`, from the project's image,
# then classify a photo and complete a job with a webhook.   (make k8s-smoke; slow, root)
#
# No cluster runs here, so what a podman host cannot do is adapted, and said (docs/kubernetes.md):
# - the image is built by deploy/container-smoke.sh (VQ_SMOKE_BUILD_ONLY=1, same cache folder);
# - pods use the host's network (no Services or cluster DNS): VQ_CLASSIFIER_URL is
#   http://127.0.0.1:3100 and the api listens on 127.0.0.1:3000, so both ports must be free;
# - PostgreSQL (127.0.0.1:5432, a throwaway database), Redis (127.0.0.1:6379, db 13) and an
#   S3 server (moto, the project's venv) come from the host: no registry is reachable for the
#   overlay's postgres, redis and minio images, so those three objects are dropped;
# - ConfigMap and Secret values are written into each container's env (container ports go:
#   podman refuses port mappings on the host network), emptyDir volumes become
#   host folders, resource requests and limits are dropped (cgroup controllers are not
#   delegated inside this sandbox), and the autoscalers, PodDisruptionBudgets, Services and
#   the NetworkPolicy are left out (podman does not run them);
# - the import Job runs first, as a Pod, and so does the migration of the init containers
#   (podman 4.3 races removing a finished init container); both must exit 0 first.
#
# Environment (all optional): VQ_SMOKE_DIR (default $TMPDIR/vq-container-smoke, shared with
# container-smoke), VQ_SMOKE_READY_TIMEOUT (default 600 s), and container-smoke's own.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${VQ_SMOKE_DIR:-${TMPDIR:-/tmp}/vq-container-smoke}
READY_TIMEOUT=${VQ_SMOKE_READY_TIMEOUT:-600}
IMAGE=localhost/visionqueue:smoke
PY="$ROOT/.venv/bin/python"
RUN="$WORK/k8s-smoke"

log() { printf '[k8s-smoke %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (rootful podman); run it with sudo"
[ -x "$PY" ] || die "no .venv: run scripts/bootstrap first (make k8s-smoke does)"
command -v kubectl >/dev/null || die "kubectl (with kustomize) is needed to render the overlay"
for port in 3000 3100; do
    if "$PY" -c "import socket, sys; s = socket.socket(); sys.exit(s.connect_ex(('127.0.0.1', $port)) != 0)"; then
        die "port $port is taken: the played pods use the host's network"
    fi
done

# 1. The image (container-smoke.sh installs podman), and catatonit: kube play builds its
# pods' pause image from it.
VQ_SMOKE_BUILD_ONLY=1 VQ_SMOKE_DIR="$WORK" "$ROOT/deploy/container-smoke.sh"
if ! command -v catatonit >/dev/null; then
    log "installing catatonit from Debian"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends catatonit >/dev/null
fi
export CONTAINERS_CONF="$WORK/containers.conf" CONTAINERS_STORAGE_CONF="$WORK/storage.conf"

rm -rf "$RUN"
mkdir -p "$RUN"
pids=()
database=""
cleanup() {
    if [ -f "$RUN/play.yaml" ]; then podman kube down "$RUN/play.yaml" >/dev/null 2>&1 || true; fi
    if [ -f "$RUN/import.yaml" ]; then podman kube down "$RUN/import.yaml" >/dev/null 2>&1 || true; fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ -n "$database" ]; then
        "$PY" - "$database" <<'EOF' || true
import sys
from sqlalchemy import create_engine
engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
with engine.connect() as conn:
    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{sys.argv[1]}" WITH (FORCE)')
EOF
    fi
}
trap cleanup EXIT

# 2. The host's backends: a throwaway database, Redis db 13, moto, a webhook receiver.
database="vq_k8s_smoke_$$"
"$PY" - "$database" <<'EOF' || die "PostgreSQL on 127.0.0.1:5432 (scripts/services starts it)"
import sys
from sqlalchemy import create_engine
engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", isolation_level="AUTOCOMMIT")
with engine.connect() as conn:
    conn.exec_driver_sql(f'CREATE DATABASE "{sys.argv[1]}"')
EOF
"$PY" -c "import redis; redis.Redis(port=6379, db=13).flushdb()" \
    || die "Redis on 127.0.0.1:6379 (scripts/services starts it)"
free_port() { "$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"; }
s3_port=$(free_port)
"$ROOT/.venv/bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"$RUN/moto.log" 2>&1 &
pids+=($!)
hook_port=$(free_port)
"$PY" - "$hook_port" "$RUN/webhooks.jsonl" >"$RUN/receiver.log" 2>&1 <<'EOF' &
import http.server, json, sys
port, out = int(sys.argv[1]), sys.argv[2]
class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with open(out, "a") as fh:
            fh.write(json.dumps({"path": self.path, "headers": dict(self.headers), "body": body.decode()}) + "\n")
        self.send_response(204)
        self.end_headers()
http.server.HTTPServer(("127.0.0.1", port), Receiver).serve_forever()
EOF
pids+=($!)

# 3. Render the all-in-one overlay, adapted for a podman host (see the header).
cp -r "$ROOT/deploy/k8s" "$RUN/k8s"
api_key=$("$PY" -c 'import secrets; print(secrets.token_hex(16))')
cat >"$RUN/k8s/overlays/all-in-one/secrets.env" <<ENV
POSTGRES_PASSWORD=unused-on-podman
VQ_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/$database
REDIS_PASSWORD=
VQ_BROKER_URL=redis://127.0.0.1:6379/13
MINIO_ROOT_USER=unused-on-podman
MINIO_ROOT_PASSWORD=unused-on-podman
VQ_S3_ACCESS_KEY=smoke-access
VQ_S3_SECRET_KEY=$("$PY" -c 'import secrets; print(secrets.token_hex(16))')
VQ_API_KEYS=$api_key
VQ_SIGNING_KEY=$("$PY" -c 'import secrets; print(secrets.token_hex(24))')
VQ_WEBHOOK_SECRETS=whsec_$("$PY" -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())')
VQ_CLASSIFIER_TOKEN=$("$PY" -c 'import secrets; print(secrets.token_hex(16))')
ENV
mkdir -p "$RUN/k8s/overlays/podman"
cat >"$RUN/k8s/overlays/podman/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../all-in-one
images:
  - name: visionqueue
    newName: localhost/visionqueue
    newTag: smoke
patches:
  - target: {name: "visionqueue-(postgres|redis|minio)"}
    patch: |-
      \$patch: delete
      kind: Any
      metadata:
        name: any
  - patch: |-
      apiVersion: v1
      kind: ConfigMap
      metadata:
        name: visionqueue-config
      data:
        VQ_CLASSIFIER_URL: http://127.0.0.1:3100
        VQ_PUBLIC_URL: http://127.0.0.1:3000
        VQ_S3_ENDPOINT: http://127.0.0.1:$s3_port
        VQ_S3_PUBLIC_ENDPOINT: http://127.0.0.1:$s3_port
        REDIS_ADDRESS: 127.0.0.1:6379
        VQ_WEIGHTS: random
        VQ_WEBHOOK_ALLOWED_HOSTS: 127.0.0.1
        VQ_WEBHOOK_RETRY_SCHEDULE: "1,2,5"
YAML
kubectl kustomize "$RUN/k8s/overlays/podman" >"$RUN/rendered.yaml" 2>"$RUN/kustomize.log" \
    || die "kubectl kustomize (see $RUN/kustomize.log)"
"$PY" - "$RUN" <<'EOF' || die "adapting the rendered objects"
import os, sys
from pathlib import Path
import yaml

run = Path(sys.argv[1])
objects = [o for o in yaml.safe_load_all((run / "rendered.yaml").read_text()) if o]
values = {}
for obj in objects:
    if obj["kind"] == "ConfigMap":
        values[("ConfigMap", obj["metadata"]["name"])] = dict(obj.get("data", {}))
    if obj["kind"] == "Secret":
        import base64
        values[("Secret", obj["metadata"]["name"])] = {
            k: base64.b64decode(v).decode() for k, v in obj.get("data", {}).items()
        }

def inline_env(container):
    env = {}
    for source in container.pop("envFrom", []):
        if "configMapRef" in source:
            env.update(values[("ConfigMap", source["configMapRef"]["name"])])
        if "secretRef" in source:
            env.update(values[("Secret", source["secretRef"]["name"])])
    for item in container.get("env", []):
        if "valueFrom" in item:
            ref = item["valueFrom"].get("secretKeyRef") or item["valueFrom"]["configMapKeyRef"]
            kind = "Secret" if "secretKeyRef" in item["valueFrom"] else "ConfigMap"
            env[item["name"]] = values[(kind, ref["name"])][ref["key"]]
        else:
            env[item["name"]] = item["value"]
    container["env"] = [{"name": k, "value": str(v)} for k, v in env.items()]
    container.pop("resources", None)
    # host network: podman refuses port mappings there; probes name the ports by number
    numbers = {p["name"]: p["containerPort"] for p in container.pop("ports", []) if "name" in p}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        for action in ("httpGet", "tcpSocket"):
            target = container.get(probe, {}).get(action)
            if target and isinstance(target.get("port"), str):
                target["port"] = numbers[target["port"]]

def adapt(name, pod):
    pod["hostNetwork"] = True
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        inline_env(container)
    for volume in pod.get("volumes", []):
        if "emptyDir" in volume:
            folder = run / "volumes" / name / volume["name"]
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, 10001, 10001)
            del volume["emptyDir"]
            volume["hostPath"] = {"path": str(folder), "type": "Directory"}
    return pod

play, job = [], []
for obj in objects:
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind == "Deployment":
        pod = adapt(name, obj["spec"]["template"]["spec"])
        obj["spec"]["replicas"] = 1
        # podman 4.3 races removing a finished init container ("cannot remove container ...
        # as it is running"): the migration the init containers run goes first, as a Pod
        for init in pod.pop("initContainers", []):
            if not any(p["metadata"]["name"] == "visionqueue-migrate" for p in job):
                spec = {**pod, "containers": [{**init, "name": "migrate"}]}
                spec["restartPolicy"] = "Never"
                meta = {"name": "visionqueue-migrate"}
                job.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
        play.append(obj)
    elif kind == "Job":
        spec = adapt(name, obj["spec"]["template"]["spec"])
        spec["restartPolicy"] = "Never"
        job.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
(run / "play.yaml").write_text(yaml.safe_dump_all(play))
(run / "import.yaml").write_text(yaml.safe_dump_all(job))
print(f"{len(play)} Deployments, {len(job)} Job as a Pod", file=sys.stderr)
EOF

# 4. The migration and the import Job first (the import publishes the demo model).
log "playing the migration and the import Job (as Pods)"
podman kube play --replace "$RUN/import.yaml" >"$RUN/play-import.log" 2>&1 || die "kube play import (see $RUN/play-import.log)"
deadline=$((SECONDS + READY_TIMEOUT))
for container in visionqueue-migrate-migrate visionqueue-import-model-import-model; do
    until [ "$(podman inspect --format '{{.State.Status}}' "$container" 2>/dev/null)" = exited ]; do
        [ "$SECONDS" -lt "$deadline" ] || { podman logs --tail 40 "$container" >&2; die "$container still running"; }
        sleep 3
    done
    [ "$(podman inspect --format '{{.State.ExitCode}}' "$container")" = 0 ] \
        || { podman logs --tail 40 "$container" >&2; die "$container failed"; }
    log "$container done: $(podman logs --tail 1 "$container" 2>&1)"
done

# 5. The rest: api, classifier, workers, beat.
log "playing the Deployments"
podman kube play --replace "$RUN/play.yaml" >"$RUN/play.log" 2>&1 || die "kube play (see $RUN/play.log)"
podman ps --format '{{.Names}} {{.Status}}' >&2
deadline=$((SECONDS + READY_TIMEOUT))
until curl -fsS --max-time 5 http://127.0.0.1:3000/readyz >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        for name in $(podman ps -a --format '{{.Names}}' | grep '^visionqueue-'); do
            log "--- $name"; podman logs --tail 15 "$name" >&2 || true
        done
        die "/readyz not ready after ${READY_TIMEOUT}s"
    fi
    sleep 5
done
log "api ready; classifier at 127.0.0.1:3100: $(curl -sS --max-time 5 http://127.0.0.1:3100/readyz | head -c 200)"

# 6. Classify a photo, then a job whose webhook reaches the loopback receiver.
"$PY" -c "import shutil, skimage.data, pathlib; shutil.copy(pathlib.Path(skimage.data.__file__).parent / 'chelsea.png', '$RUN/chelsea.png')" \
    || die "no photo to send (scikit-image is a dev dependency)"
status=$(curl -sS --max-time 120 -o "$RUN/predict.json" -w '%{http_code}' \
    -H "Authorization: Bearer $api_key" -F "image=@$RUN/chelsea.png;type=image/png" \
    http://127.0.0.1:3000/predict) || die "POST /predict did not answer"
[ "$status" = 200 ] || { cat "$RUN/predict.json" >&2; die "POST /predict answered $status"; }
log "predict: $(head -c 300 "$RUN/predict.json")"
status=$(curl -sS --max-time 60 -o "$RUN/job.json" -w '%{http_code}' \
    -H "Authorization: Bearer $api_key" -F "image=@$RUN/chelsea.png;type=image/png" \
    -F "webhook_url=http://127.0.0.1:$hook_port/hook" http://127.0.0.1:3000/classify) \
    || die "POST /classify did not answer"
[ "$status" = 202 ] || { cat "$RUN/job.json" >&2; die "POST /classify answered $status"; }
job=$("$PY" -c "import json, sys; b = json.load(open(sys.argv[1])); print(b.get('job_id') or b.get('id') or b['task_id'])" "$RUN/job.json")
deadline=$((SECONDS + 300))
until [ -s "$RUN/webhooks.jsonl" ] && grep -q "$job" "$RUN/webhooks.jsonl"; do
    [ "$SECONDS" -lt "$deadline" ] || {
        curl -sS -H "Authorization: Bearer $api_key" "http://127.0.0.1:3000/v1/jobs/$job" >&2 || true
        die "no webhook for job $job after 300 s"
    }
    sleep 2
done
final=$(curl -sS --max-time 30 -H "Authorization: Bearer $api_key" "http://127.0.0.1:3000/v1/jobs/$job")
echo "$final" | "$PY" -c "import json, sys; b = json.load(sys.stdin); assert b['status'] == 'completed', b" \
    || die "job $job is not completed: $final"
log "OK: the all-in-one workloads ran under podman kube play; job $job completed and its webhook arrived"
