#!/usr/bin/env bash
# The project's test command (README "Tests"; .ci/run calls it). It builds what the tests need
# and runs all of them:
#   1. a real Kubernetes control plane (etcd, kube-apiserver, kubectl) from upstream Go module
#      source, once: a cold build takes about 10 minutes on 2 cores, later runs skip it;
#   2. every Rust test: unit and table tests, API contract tests against the simulator, the
#      file mode, and the end-to-end suite against the real API server.
#   3. the deploy checks (least-privilege RBAC, server dry-run, managed fields) and the Argo CD
#      health check in Lua 5.1;
#   4. the Go tools of tests/tools (helm, crane, promtool, kstatus, argocd-lua, syft, cosign),
#      once: a cold build takes several minutes, later runs skip it; with them the Helm chart,
#      the alerting rules and dashboard, the health engines (kstatus, Argo CD's gopher-lua), the
#      image's SBOM (tests/image.rs) and the release signed and verified before each install on
#      the node (tests/node.rs);
#   5. Argo CD (application controller, repo server, API server) and kustomize from module
#      source by tests/argocd/build.sh, once, with Debian's redis-server (apt-get when
#      missing): with them a real Argo CD syncs a Git repository of AgentDynamics
#      (tests/argocd_sync.rs);
#   6. the release binary, once per run, for the OCI image test (deploy/image/build.sh);
#   7. kubelet, kube-scheduler and kube-proxy from the control plane's module source and a pause
#      binary, once (tests/node/build.sh): with Debian's containerd, runc and CNI plugins they
#      make the one-node cluster on which tests/node.rs installs the operator from a registry.
# Set DYNAMICS_E2E_KUBECONFIG to run the end-to-end suite against an existing cluster (kind).
set -euo pipefail
cd "$(dirname "$0")/.."

# Built even with DYNAMICS_E2E_KUBECONFIG: the RBAC and dry-run tests always use their own.
echo "== control plane (tests/controlplane/build.sh)"
tests/controlplane/build.sh

echo "== Go tools (tests/tools/build.sh)"
tests/tools/build.sh

echo "== Argo CD (tests/argocd/build.sh)"
tests/argocd/build.sh

echo "== node (tests/node/build.sh)"
tests/node/build.sh

# tests/image.rs builds the image from it (twice, to prove the build reproducible).
echo "== release binary (cargo build --release)"
cargo build --release --locked --bin dynamics-operator

echo "== cargo test"
cargo test --locked --workspace --all-targets --no-fail-fast
