#!/usr/bin/env bash
# Build deploy/Containerfile with rootful podman, run the api role, classify one image, stop it.
#
# Usage: sudo deploy/container-smoke.sh [--clean]       (make container-smoke)
#
# For machines with no container registry: the base image is bootstrapped locally
# (debootstrap bookworm + Debian's python3.11) and passed as PYTHON_IMAGE, so this builds
# the same Containerfile that production builds on python:3.11-slim. torch comes from pip's
# default index unless VQ_SMOKE_TORCH_INDEX_URL names another (the default index has the
# CUDA build, ~5.5 GB installed instead of ~1 GB from PyTorch's CPU wheel index; it runs on
# the CPU all the same). Local wheel sources from the host's pip config (find-links, file:// indexes) are
# mounted into the build so pip can skip the downloads.
#
# Environment (all optional):
#   VQ_SMOKE_DIR              podman storage, base rootfs, logs (default: $TMPDIR/vq-container-smoke;
#                             kept between runs as a layer cache, removed by --clean)
#   VQ_SMOKE_PORT             host port on 127.0.0.1 (default 3300)
#   VQ_SMOKE_TORCH_INDEX_URL  torch/torchvision index (default: pip's default index)
#   VQ_SMOKE_DEBIAN_MIRROR    debootstrap mirror (default: the host's apt mirror, else
#                             debootstrap's own default)
#   VQ_SMOKE_READY_TIMEOUT    seconds to wait for /readyz (default 300)
#   VQ_SMOKE_CA_BUNDLE        CA bundle pip uses in the build (default: the host's)
#   VQ_SMOKE_BUILD_ONLY       1 = stop once the image is built (deploy/k8s-smoke.sh)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${VQ_SMOKE_DIR:-${TMPDIR:-/tmp}/vq-container-smoke}
PORT=${VQ_SMOKE_PORT:-3300}
TORCH_INDEX_URL=${VQ_SMOKE_TORCH_INDEX_URL:-}
READY_TIMEOUT=${VQ_SMOKE_READY_TIMEOUT:-300}
BASE_IMAGE=localhost/vq-smoke-python:bookworm
IMAGE=localhost/visionqueue:smoke
CONTAINER=vq-smoke-$$

log() { printf '[container-smoke %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

if [ "${1:-}" = "--clean" ]; then
    rm -rf "$WORK"
    log "removed $WORK"
fi

[ "$(id -u)" = 0 ] || die "needs root (rootful podman); run it with sudo"

need=()
for tool in podman buildah runc debootstrap curl python3; do
    command -v "$tool" >/dev/null || need+=("$tool")
done
if [ "${#need[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || die "missing: ${need[*]}"
    log "installing ${need[*]} from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman buildah runc debootstrap curl python3 ca-certificates >/dev/null
fi

mkdir -p "$WORK/storage" "$WORK/run"
# Rootful podman needs two changes on these hosts: default ulimits the kernel accepts inside
# nested sandboxes, and runc (crun is missing or fails there). Storage stays under $WORK.
cat >"$WORK/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1000:1000"]

[engine]
runtime = "runc"
EOF
cat >"$WORK/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
EOF
export CONTAINERS_CONF="$WORK/containers.conf"
export CONTAINERS_STORAGE_CONF="$WORK/storage.conf"

cleanup() {
    podman rm -f "$CONTAINER" >/dev/null 2>&1 || true
}
trap cleanup EXIT

host_debian_mirror() {
    local uri
    uri=$(grep -hoE '^URIs:[[:space:]]*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | head -n1 | awk '{print $2}')
    if [ -z "$uri" ]; then
        uri=$(grep -hoE '^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?\S+' /etc/apt/sources.list 2>/dev/null \
            | head -n1 | awk '{print $NF}')
    fi
    echo "${uri:-}"  # empty: debootstrap picks its own default mirror
}

# 1. Base image: Debian bookworm ships Python 3.11, the version python:3.11-slim has.
if ! podman image exists "$BASE_IMAGE"; then
    mirror=${VQ_SMOKE_DEBIAN_MIRROR:-$(host_debian_mirror)}
    log "bootstrapping Debian bookworm from ${mirror:-the default mirror of debootstrap} (~2 min)"
    rm -rf "$WORK/rootfs"
    timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$WORK/rootfs" ${mirror:+"$mirror"} >"$WORK/debootstrap.log" 2>&1 \
        || die "debootstrap (see $WORK/debootstrap.log)"
    # An imported rootfs has no image config; the Containerfile's ENV PATH=/opt/venv/bin:$PATH
    # needs a PATH to extend.
    tar -C "$WORK/rootfs" -c . | podman import --quiet \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null
    rm -rf "$WORK/rootfs"
fi

# 2. Local wheel sources from the host's pip config, mounted at the same paths.
build_args=(--build-arg "PYTHON_IMAGE=$BASE_IMAGE" --build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
mounts=()
find_links=()
extra_indexes=()
pip_config=$(python3 -m pip config list 2>/dev/null || true)
local_dir() {
    local source=${1#file://}
    case "$source" in /*) ;; *) return 1 ;; esac
    [ -d "$source" ] || return 1
    # A PEP 503 index links its files as ../../files/...: mount the index root.
    if [ "$(basename "$source")" = simple ]; then dirname "$source"; else echo "$source"; fi
}
for key in find-links extra-index-url; do
    values=$(printf '%s\n' "$pip_config" | sed -n "s/^[a-z:]*\.$key='\(.*\)'$/\1/p" | head -n1)
    for value in $values; do
        dir=$(local_dir "$value") || continue
        mounts+=(--volume "$dir:$dir:ro")
        if [ "$key" = find-links ]; then find_links+=("$value"); else extra_indexes+=("$value"); fi
    done
done
if [ "${#find_links[@]}" -gt 0 ]; then
    build_args+=(--build-arg "PIP_FIND_LINKS=${find_links[*]}")
fi
if [ "${#extra_indexes[@]}" -gt 0 ]; then
    build_args+=(--build-arg "PIP_EXTRA_INDEX_URL=${extra_indexes[*]}")
fi
[ "${#mounts[@]}" -eq 0 ] || log "local wheel sources: ${find_links[*]} ${extra_indexes[*]}"
# The host's CA bundle: on networks that intercept TLS, the base image's bundle lacks the CA.
ca_bundle=${VQ_SMOKE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
if [ -f "$ca_bundle" ]; then
    ca_dir=$(dirname "$(readlink -f "$ca_bundle")")
    mounts+=(--volume "$ca_dir:/run/host-ca:ro")
    build_args+=(--build-arg "PIP_CERT=/run/host-ca/$(basename "$(readlink -f "$ca_bundle")")")
fi

# 3. Build (docker format: OCI images drop HEALTHCHECK).
log "building $IMAGE (torch from ${TORCH_INDEX_URL:-the default index of pip}; the first build takes several minutes)"
timeout 2400 podman build --format docker --pull=never \
    --ignorefile "$ROOT/deploy/Containerfile.dockerignore" \
    -f "$ROOT/deploy/Containerfile" "${build_args[@]}" "${mounts[@]}" \
    -t "$IMAGE" "$ROOT" >"$WORK/build.log" 2>&1 || die "podman build (see $WORK/build.log)"
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
log "built $IMAGE ($((size / 1024 / 1024)) MiB)"
if [ "${VQ_SMOKE_BUILD_ONLY:-}" = 1 ]; then
    exit 0  # deploy/k8s-smoke.sh runs the image its own way
fi

# 4. Run the api role on loopback with the seeded demo model and the embedded backends.
# Without systemd podman cannot schedule health timers and says so on stderr (harmless; the
# check runs once by hand below), hence the log file.
podman run -d --name "$CONTAINER" -p "127.0.0.1:$PORT:3000" \
    -e VQ_WEIGHTS=random -e VQ_MIGRATE_ON_START=true \
    "$IMAGE" api >/dev/null 2>>"$WORK/podman.log"
[ "$(podman exec "$CONTAINER" id -u)" != 0 ] || die "the container runs as root"

log "waiting up to ${READY_TIMEOUT}s for http://127.0.0.1:$PORT/readyz"
deadline=$((SECONDS + READY_TIMEOUT))
until curl -fsS --max-time 5 "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1; do
    if [ "$(podman inspect --format '{{.State.Running}}' "$CONTAINER")" != true ]; then
        podman logs --tail 50 "$CONTAINER" >&2 || true
        die "the container exited before /readyz answered"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
        podman logs --tail 50 "$CONTAINER" >&2 || true
        die "/readyz not ready after ${READY_TIMEOUT}s"
    fi
    sleep 3
done
log "ready after $((SECONDS - deadline + READY_TIMEOUT))s"
podman healthcheck run "$CONTAINER" >/dev/null || die "the image HEALTHCHECK reports unhealthy"

# 5. Classify one generated PNG through the public endpoint.
python3 - "$WORK/smoke.png" <<'EOF'
import struct, sys, zlib

w = h = 96
rows = b"".join(
    b"\x00" + bytes(v for x in range(w) for v in (x * 2, y * 2, (x + y) % 256)) for y in range(h)
)
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
png += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
open(sys.argv[1], "wb").write(png)
EOF
status=$(curl -sS --max-time 60 -o "$WORK/predict.json" -w '%{http_code}' \
    -F "image=@$WORK/smoke.png;type=image/png" -F top_k=3 \
    "http://127.0.0.1:$PORT/predict") || die "POST /predict did not answer"
[ "$status" = 200 ] || { cat "$WORK/predict.json" >&2; die "POST /predict answered $status"; }
python3 -c 'import json, sys; body = json.load(open(sys.argv[1])); assert body, body; print(json.dumps(body)[:400])' \
    "$WORK/predict.json" || die "POST /predict returned no JSON result"

podman stop -t 20 "$CONTAINER" >/dev/null 2>>"$WORK/podman.log"
log "OK: image builds, runs as non-root, gets ready, and classifies"
