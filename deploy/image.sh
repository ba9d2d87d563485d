#!/usr/bin/env bash
# The detector image, built from the repository alone: no registry, no base image, no network
# once the crates are in cargo's cache (any earlier build of the workspace, or `cargo fetch`).
# deploy/Dockerfile is the other way, for a machine that reaches Docker Hub and crates.io.
#
#   cargo xtask setup                  # the nightly toolchain and bpf-linker (once)
#   deploy/image.sh [TAG]              # default detector:0.1.0; needs docker
#
# DETECTOR_BINARY=PATH takes that build of the daemon instead of building one (tests/tests/
# image.rs uses the debug build); DOCKER names the docker CLI.
#
# The image holds only the daemon (built here in release, its eBPF programs embedded), the
# shared libraries it links and their loader, copied from this machine, and the CA bundle for
# TLS to the API server, the evidence store and SIEM endpoints. It runs as root with a read-only
# root filesystem, as deploy/daemonset.yaml runs it; the daemon writes only to its mounts
# (/var/lib/detector, /tmp) and standard output.
set -euo pipefail

tag=${1:-detector:0.1.0}
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
binary=${DETECTOR_BINARY:-}
if [ -z "$binary" ]; then
    cargo build --release --locked -p detector
    binary=${CARGO_TARGET_DIR:-$repo/target}/release/detector
fi
docker=${DOCKER:-docker}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$binary" "$root/usr/local/bin/detector"
# The libraries the daemon links (glibc, libgcc_s) and the dynamic loader, as ldd resolves them.
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    cp -L --parents "$lib" "$root"
done
install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
# Mount points of the DaemonSet (a read-only root cannot gain them at run time).
for dir in etc/detector sys/kernel/btf sys/kernel/tracing sys/fs/cgroup sys/fs/bpf host/proc \
    var/lib/detector run/containerd var/run tmp proc dev; do
    mkdir -p "$root/$dir"
done
chmod 1777 "$root/tmp"

tar -C "$root" --numeric-owner --owner=0 --group=0 -c . | "$docker" import \
    --change 'USER 0' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENTRYPOINT ["/usr/local/bin/detector"]' \
    --change 'CMD ["run", "--config", "/etc/detector/config.yaml"]' \
    - "$tag" >/dev/null
echo "$tag: $("$docker" image inspect -f '{{.Size}}' "$tag") bytes"
