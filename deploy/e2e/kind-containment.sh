#!/usr/bin/env bash
# End-to-end containment on a real cluster: kind with Calico (a CNI that enforces
# NetworkPolicy). Not run in CI. Needs kind, kubectl, docker and a detector image.
#
#   DETECTOR_IMAGE=detector:dev deploy/e2e/kind-containment.sh
#
# It creates the cluster `detector-e2e`, deploys a two-replica web Deployment with a Service and
# a PodDisruptionBudget plus a client pod, contains one web pod, checks every effect the playbook
# promises, releases it with `detector release` and checks the undo, then deletes the cluster
# (KEEP=1 keeps it).
#
# NOT YET RUNNABLE: it drives the playbook through `detector contain-once`, a one-shot entry
# point over `Containment::start` that does not exist yet (it comes with the daemon wiring).
# Neither it nor this script has been run.
set -euo pipefail

CLUSTER=${CLUSTER:-detector-e2e}
IMAGE=${DETECTOR_IMAGE:?set DETECTOR_IMAGE to a detector image}
CALICO=${CALICO:-https://raw.githubusercontent.com/projectcalico/calico/v3.29.1/manifests/calico.yaml}
here=$(cd "$(dirname "$0")/.." && pwd)

cleanup() { [ "${KEEP:-0}" = 1 ] || kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

cat <<YAML | kind create cluster --name "$CLUSTER" --config -
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking: { disableDefaultCNI: true, podSubnet: 192.168.0.0/16 }
nodes: [{ role: control-plane }, { role: worker }, { role: worker }]
YAML
kubectl apply -f "$CALICO"
kubectl -n kube-system rollout status ds/calico-node --timeout=300s
kind load docker-image "$IMAGE" --name "$CLUSTER"

kubectl create namespace detector
kubectl apply -f "$here/rbac.yaml"
kubectl create namespace shop
kubectl -n shop create deployment web --image=nginx:1.27 --replicas=2
kubectl -n shop expose deployment web --port=80
kubectl -n shop create poddisruptionbudget web --selector=app=web --min-available=1
kubectl -n shop run client --image=busybox:1.36 --restart=Never -- sleep 3600
kubectl -n shop rollout status deployment/web --timeout=180s
kubectl -n shop wait --for=condition=Ready pod/client --timeout=120s

suspect=$(kubectl -n shop get pods -l app=web -o jsonpath='{.items[0].metadata.name}')
node=$(kubectl -n shop get pod "$suspect" -o jsonpath='{.spec.nodeName}')
ip=$(kubectl -n shop get pod "$suspect" -o jsonpath='{.status.podIP}')
echo "suspect $suspect on $node ($ip)"
kubectl -n shop exec client -- wget -qO- -T 3 "http://$ip" >/dev/null || fail "no traffic before"

# The daemon's playbook, driven as a one-shot privileged pod on the suspect's node with the
# detector's service account (`contain-once`: see the note at the top).
kubectl -n detector run contain --image="$IMAGE" --restart=Never \
  --overrides="{\"spec\":{\"nodeName\":\"$node\",\"serviceAccountName\":\"detector\",\"hostPID\":true,
    \"containers\":[{\"name\":\"contain\",\"image\":\"$IMAGE\",\"securityContext\":{\"privileged\":true},
    \"args\":[\"contain-once\",\"--namespace\",\"shop\",\"--pod\",\"$suspect\",\"--journal-dir\",\"/var/lib/detector/incidents\"],
    \"volumeMounts\":[{\"name\":\"j\",\"mountPath\":\"/var/lib/detector\"}]}],
    \"volumes\":[{\"name\":\"j\",\"hostPath\":{\"path\":\"/var/lib/detector\"}}]}}"
kubectl -n detector wait --for=jsonpath='{.status.phase}'=Succeeded pod/contain --timeout=300s

labels=$(kubectl -n shop get pod "$suspect" -o jsonpath='{.metadata.labels}')
echo "$labels" | grep -q '"quarantine":"true"' || fail "quarantine label: $labels"
echo "$labels" | grep -q '"app"' && fail "selector labels not stripped: $labels"
kubectl -n shop get networkpolicy detector-quarantine >/dev/null || fail "no deny-all policy"
kubectl -n shop rollout status deployment/web --timeout=180s   # replacement started
kubectl -n shop get endpoints web -o jsonpath='{.subsets[*].addresses[*].ip}' | grep -qw "$ip" \
  && fail "the Service still routes to the suspect"
kubectl -n shop exec client -- wget -qO- -T 3 "http://$ip" >/dev/null 2>&1 \
  && fail "traffic to the suspect still flows"
[ "$(kubectl get node "$node" -o jsonpath='{.spec.unschedulable}')" = true ] || fail "not cordoned"
kubectl get node "$node" -o jsonpath='{.metadata.labels}' | grep -q 'detector.security/suspect' \
  || fail "node not labelled"
others=$(kubectl get pods -A --field-selector "spec.nodeName=$node" -o json \
  | jq -r '.items[] | select(.metadata.ownerReferences[0].kind != "DaemonSet")
           | select(.metadata.name != "'"$suspect"'" and .metadata.name != "contain") | .metadata.name')
[ -z "$others" ] || fail "pods left on the node: $others"
kubectl get events -n shop --field-selector "involvedObject.name=$suspect" | grep -q Quarantine \
  || fail "no Events on the pod"

incident=$(kubectl -n shop get pod "$suspect" -o jsonpath='{.metadata.annotations.detector\.security/incident}')
kubectl -n detector delete pod contain --wait
kubectl -n detector run release --image="$IMAGE" --restart=Never \
  --overrides="{\"spec\":{\"nodeName\":\"$node\",\"serviceAccountName\":\"detector\",
    \"containers\":[{\"name\":\"release\",\"image\":\"$IMAGE\",
    \"args\":[\"release\",\"$incident\",\"--journal-dir\",\"/var/lib/detector/incidents\"],
    \"volumeMounts\":[{\"name\":\"j\",\"mountPath\":\"/var/lib/detector\"}]}],
    \"volumes\":[{\"name\":\"j\",\"hostPath\":{\"path\":\"/var/lib/detector\"}}]}}"
kubectl -n detector wait --for=jsonpath='{.status.phase}'=Succeeded pod/release --timeout=120s
kubectl -n shop get pod "$suspect" -o jsonpath='{.metadata.labels}' | grep -q '"app":"web"' \
  || fail "labels not restored"
[ "$(kubectl get node "$node" -o jsonpath='{.spec.unschedulable}')" != true ] || fail "still cordoned"
echo "PASS: contained and released $suspect ($incident)"
