#!/usr/bin/env bash
# Install dynamics-operator on a kind cluster the way a user does, check it works there, then run
# the end-to-end suite (tests/e2e/) against that cluster through the existing-cluster switch
# (DYNAMICS_E2E_KUBECONFIG). See tests/kind/README.md for what runs where.
#
#   tests/kind/run.sh                      # create a cluster, test, delete the cluster
#   KEEP_CLUSTER=1 tests/kind/run.sh       # keep it (and the operator running) afterwards
#
# Needs docker, kind, kubectl and cargo. Settings (environment):
#   KIND_CLUSTER   cluster name (default dynamics-operator); an existing cluster is reused, and
#                  then never deleted
#   IMAGE          image to build and load (default dynamics-operator:kind-<git short sha>)
#   KEEP_CLUSTER   1: do not delete a cluster this script created
#   E2E_ARGS       extra arguments for `cargo test --test e2e --` (e.g. a test name filter)
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

cluster=${KIND_CLUSTER:-dynamics-operator}
image=${IMAGE:-dynamics-operator:kind-$(git rev-parse --short HEAD 2>/dev/null || echo dev)}
keep=${KEEP_CLUSTER:-0}
ns=dynamics-operator
work=$root/target/kind
kubeconfig=$work/kubeconfig

say() { printf '\n== %s\n' "$*"; }
need() {
  command -v "$1" >/dev/null 2>&1 || { echo "tests/kind/run.sh: '$1' is not installed ($2)" >&2; exit 2; }
}
need docker "https://docs.docker.com/engine/install/"
need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need kubectl "https://kubernetes.io/docs/tasks/tools/"
need cargo "https://rustup.rs"
docker info >/dev/null 2>&1 || { echo "tests/kind/run.sh: cannot reach the Docker daemon" >&2; exit 2; }
case "$image" in
  *:*) ;;
  *) echo "IMAGE must have a tag (name:tag), got $image" >&2; exit 2 ;;
esac
mkdir -p "$work"

created=""
cleanup() {
  status=$?
  if [ "$status" -ne 0 ] && [ -f "$kubeconfig" ]; then
    echo "-- operator and simulator logs (last 100 lines each):" >&2
    KUBECONFIG=$kubeconfig kubectl -n "$ns" logs deploy/dynamics-operator --tail=100 >&2 || true
    KUBECONFIG=$kubeconfig kubectl -n "$ns" logs deploy/dynamics-api-simulator --tail=100 >&2 || true
  fi
  if [ -n "$created" ] && [ "$keep" != 1 ]; then
    say "deleting kind cluster $cluster"
    kind delete cluster --name "$cluster" || true
  fi
  exit "$status"
}
trap cleanup EXIT

say "kind cluster $cluster"
if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  echo "reusing the existing cluster $cluster"
else
  kind create cluster --name "$cluster" --wait 180s
  created=1
fi
kind get kubeconfig --name "$cluster" > "$kubeconfig"
export KUBECONFIG=$kubeconfig
kubectl version

say "image $image (Dockerfile)"
docker build -t "$image" .
kind load docker-image "$image" --name "$cluster"

say "install: kubectl apply -k deploy/overlays/simulator, with the image set to $image"
# An overlay of our own (under target/, ignored by git) sets the image the way users do with
# kustomize; deploy/overlay.sh writes it, as it does for the node test (tests/node.rs).
overlay=$work/overlay
deploy/overlay.sh "$overlay" deploy/overlays/simulator "$image" >/dev/null
kubectl apply -k "$overlay"
kubectl -n "$ns" rollout status deploy/dynamics-api-simulator --timeout=180s
kubectl -n "$ns" rollout status deploy/dynamics-operator --timeout=180s
kubectl -n "$ns" get deploy,pods -o wide

say "smoke test in the cluster: an AgentDynamics converges and is finalized by the deployed operator"
smoke=kind-smoke
kubectl create namespace "$smoke" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$smoke" apply -f examples/minimal.yaml
kubectl -n "$smoke" wait --for=condition=Ready agentdynamics/minimal-agent --timeout=180s
kubectl -n "$smoke" get agentdynamics
kubectl -n "$smoke" delete agentdynamics/minimal-agent --wait --timeout=120s
kubectl get --raw "/api/v1/namespaces/$ns/services/dynamics-operator-metrics:metrics/proxy/metrics" \
  | grep -E '^dynamics_operator_generations_total [1-9]'
kubectl delete namespace "$smoke" --wait=false

say "end-to-end suite against the cluster (DYNAMICS_E2E_KUBECONFIG)"
# Each e2e test starts its own simulator and operator processes on this machine, talking to the
# kind API server. The deployed operator watches every namespace and would reconcile their
# objects too (against its own simulator), so it is scaled to zero while the suite runs.
kubectl -n "$ns" scale deploy/dynamics-operator --replicas=0
for _ in $(seq 1 60); do
  pods=$(kubectl -n "$ns" get pods -l app.kubernetes.io/name=dynamics-operator,app.kubernetes.io/component=controller -o name)
  [ -z "$pods" ] && break
  sleep 2
done
if [ -n "$pods" ]; then echo "the deployed operator did not stop: $pods" >&2; exit 1; fi
# shellcheck disable=SC2086 # E2E_ARGS is split on purpose
DYNAMICS_E2E_KUBECONFIG=$kubeconfig cargo test --locked --test e2e -- ${E2E_ARGS:-}

if [ "$keep" = 1 ] || [ -z "$created" ]; then
  say "scaling the deployed operator back up (the cluster stays)"
  kubectl -n "$ns" scale deploy/dynamics-operator --replicas=1
  echo "KUBECONFIG=$kubeconfig kubectl get agentdynamics -A"
fi
say "kind: all good"
