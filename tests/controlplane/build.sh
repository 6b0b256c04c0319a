#!/usr/bin/env bash
# Build a real Kubernetes control plane for the Rust integration tests from
# upstream Go module source (no release downloads, no Docker):
#
#   etcd, kube-apiserver, kube-controller-manager, kubectl
#
# into ${CARGO_TARGET_DIR:-<repo>/target}/controlplane/<kube version>/bin/.
#
# Versions are pinned by go.mod/go.sum/versions.env next to this script
# (regenerate them with pin.sh). Needs only Go (>= the go directive in go.mod)
# and the Go module proxy. A cold build (module download + compile) takes
# several minutes on 2 cores; when a stamp matching the pin exists the script
# is a no-op.
#
# Environment:
#   CONTROLPLANE_FORCE=1     rebuild even if the stamp matches
#   CONTROLPLANE_GO_P=N      go build -p (default: number of CPUs)
#   CARGO_TARGET_DIR         where target/ lives (default <repo>/target)
set -euo pipefail

t_start=$(date +%s)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

# shellcheck source=versions.env
. "$here/versions.env"
: "${KUBE_VERSION:?versions.env must set KUBE_VERSION}"
: "${ETCD_VERSION:?versions.env must set ETCD_VERSION}"

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
out="$target_dir/controlplane/$KUBE_VERSION"
bin="$out/bin"
stamp="$out/stamp"
binaries=(etcd kube-apiserver kube-controller-manager kubectl)

log() { printf 'controlplane/build.sh: %s\n' "$*" >&2; }

command -v go >/dev/null || { log "ERROR: 'go' not found in PATH (need Go >= $(awk '$1=="go"{print $2}' go.mod))"; exit 1; }

want_stamp="$(cat go.mod go.sum versions.env build.sh | sha256sum | cut -d' ' -f1)"

all_present() {
  local b
  for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || return 1; done
}

print_result() {
  local b
  for b in "${binaries[@]}"; do
    printf '  %-26s %6s  %s\n' "$b" "$(du -h "$bin/$b" | cut -f1)" "$bin/$b" >&2
  done
}

if [ "${CONTROLPLANE_FORCE:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] && all_present; then
  log "up to date: kubernetes $KUBE_VERSION, etcd $ETCD_VERSION ($(( $(date +%s) - t_start ))s)"
  print_result
  exit 0
fi

mkdir -p "$out"
# Serialise concurrent builds (e.g. two terminals, or CI steps).
exec 9>"$out/.lock"
if command -v flock >/dev/null; then
  if ! flock -n 9; then
    log "another build is running; waiting for $out/.lock"
    flock 9
  fi
  # Another build may have finished while we waited.
  if [ "${CONTROLPLANE_FORCE:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] && all_present; then
    log "up to date (built concurrently): kubernetes $KUBE_VERSION, etcd $ETCD_VERSION"
    print_result
    exit 0
  fi
fi

# Deterministic, self-contained Go settings.
export GOFLAGS="-buildvcs=false -mod=readonly"
export CGO_ENABLED=0          # upstream builds these binaries statically, too
export GOWORK=off
jobs="${CONTROLPLANE_GO_P:-$(nproc 2>/dev/null || echo 2)}"

log "building kubernetes $KUBE_VERSION + etcd $ETCD_VERSION from module source"
log "go: $(go version), build -p $jobs, GOPROXY=$(go env GOPROXY)"
log "a cold build (module download + compile) takes several minutes; warm builds reuse the Go build cache ($(go env GOCACHE))"

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
log "[2/3] go build kube-apiserver kube-controller-manager kubectl"
go build -trimpath -p "$jobs" -ldflags "$kube_ldflags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl
log "      done in $(( $(date +%s) - t ))s"

t=$(date +%s)
log "[3/3] go build etcd"
go build -trimpath -p "$jobs" \
  -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=module-$ETCD_VERSION" \
  -o "$tmp/etcd" go.etcd.io/etcd/server/v3
log "      done in $(( $(date +%s) - t ))s"

# Sanity check: the binaries run and report the pinned versions.
kv="$("$tmp/kubectl" version --client -o json | sed -n 's/.*"gitVersion": "\(.*\)".*/\1/p' | head -1)"
[ "$kv" = "$KUBE_VERSION" ] || { log "ERROR: kubectl reports '$kv', expected $KUBE_VERSION"; exit 1; }
ev="$("$tmp/etcd" --version | sed -n 's/^etcd Version: //p')"
[ "v$ev" = "$ETCD_VERSION" ] || { log "ERROR: etcd reports '$ev', expected $ETCD_VERSION"; exit 1; }

rm -rf "$bin"
mv "$tmp" "$bin"
# The Rust harness compares this copy with the pin it was compiled against.
cp versions.env "$out/versions.env"
echo "$want_stamp" > "$stamp"

log "built kubernetes $KUBE_VERSION, etcd $ETCD_VERSION in $(( $(date +%s) - t_start ))s:"
print_result
