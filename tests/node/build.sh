#!/usr/bin/env bash
# Build the node half of the one-node test cluster (tests/support/node.rs) from the same
# Kubernetes module source as tests/controlplane (go.mod here copies its pins and replaces):
#
#   kubelet, kube-scheduler, kube-proxy   k8s.io/kubernetes/cmd/...
#   pause                                 pause.c, static, for the pod sandbox image
#
# into ${CARGO_TARGET_DIR:-<repo>/target}/node/<kube version>/bin/. The container runtime is not
# built here: Debian's containerd 1.6, runc and CNI plugins (apt-get; .ci/run installs them).
# kubelet v1.36 still accepts them: it falls back to its own cgroupDriver setting when a runtime
# lacks the RuntimeConfig call (containerd 1.x; that fallback goes in v1.37), and runs on
# cgroup v1 with failCgroupV1: false. When the stamp matches, the script is a no-op.
#
# Environment:
#   NODE_FORCE=1       rebuild even if the stamp matches
#   NODE_GO_P=N        go build -p (default: number of CPUs)
#   CARGO_TARGET_DIR   where target/ lives (default <repo>/target)
set -euo pipefail

t_start=$(date +%s)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

# One pin for both halves of the cluster.
# shellcheck source=../controlplane/versions.env
. "$here/../controlplane/versions.env"
: "${KUBE_VERSION:?versions.env must set KUBE_VERSION}"

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
out="$target_dir/node/$KUBE_VERSION"
bin="$out/bin"
stamp="$out/stamp"
binaries=(kubelet kube-scheduler kube-proxy pause)

log() { printf 'node/build.sh: %s\n' "$*" >&2; }

for tool in go cc; do
  command -v "$tool" >/dev/null || { log "ERROR: '$tool' not found in PATH"; exit 1; }
done
# go.mod must pin what the control plane pins, or the two halves would skew silently.
grep -q "k8s.io/kubernetes $KUBE_VERSION" go.mod || { log "ERROR: go.mod does not pin k8s.io/kubernetes $KUBE_VERSION"; exit 1; }

want_stamp="$(cat go.mod go.sum pause.c build.sh ../controlplane/versions.env | sha256sum | cut -d' ' -f1)"

up_to_date() {
  [ "${NODE_FORCE:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] || return 1
  local b
  for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || return 1; done
}

if up_to_date; then
  log "up to date ($(( $(date +%s) - t_start ))s): ${binaries[*]} in $bin"
  exit 0
fi

mkdir -p "$out"
exec 9>"$out/.lock"
if command -v flock >/dev/null; then
  if ! flock -n 9; then
    log "another build is running; waiting for $out/.lock"
    flock 9
  fi
  if up_to_date; then
    log "up to date (built concurrently): ${binaries[*]} in $bin"
    exit 0
  fi
fi

export GOFLAGS="-buildvcs=false -mod=readonly"
export CGO_ENABLED=0          # upstream builds these statically, too
export GOWORK=off
jobs="${NODE_GO_P:-$(nproc 2>/dev/null || echo 2)}"

log "go: $(go version), build -p $jobs, GOPROXY=$(go env GOPROXY)"
t=$(date +%s)
log "[1/3] downloading modules (go mod download)"
go mod download
log "      done in $(( $(date +%s) - t ))s"

kube_time="$(go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes)"
kube_minor="${KUBE_VERSION#v1.}"; kube_minor="${kube_minor%%.*}"
kube_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION"
  kube_ldflags+=" -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean"
  [ -n "$kube_time" ] && kube_ldflags+=" -X $pkg.buildDate=$kube_time"
done

tmp="$out/bin.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"

t=$(date +%s)
log "[2/3] go build kubelet kube-scheduler kube-proxy (most packages are shared with the control plane's, so a warm Go build cache makes this quick)"
go build -trimpath -p "$jobs" -ldflags "$kube_ldflags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kube-proxy
log "      done in $(( $(date +%s) - t ))s"

log "[3/3] cc -static pause.c"
cc -static -Os -s -o "$tmp/pause" pause.c

kv="$("$tmp/kubelet" --version | awk '{print $2}')"
[ "$kv" = "$KUBE_VERSION" ] || { log "ERROR: kubelet reports '$kv', expected $KUBE_VERSION"; exit 1; }

rm -rf "$bin"
mv "$tmp" "$bin"
echo "$want_stamp" > "$stamp"
log "built kubelet, kube-scheduler, kube-proxy $KUBE_VERSION and pause in $(( $(date +%s) - t_start ))s"
