#!/usr/bin/env bash
# Build Argo CD for tests/argocd_sync.rs from module source (no release downloads, no images):
#
#   argocd     github.com/argoproj/argo-cd/v3/cmd        one multi-call binary; invoked as
#              argocd-application-controller, argocd-repo-server or argocd-server (argv[0], the
#              symlinks made here) it is that component, else the argocd CLI
#   kustomize  sigs.k8s.io/kustomize/kustomize/v5       what the repo server runs on a
#                                                        kustomization (it looks it up in PATH)
#
# into ${CARGO_TARGET_DIR:-<repo>/target}/argocd/bin/, with Argo CD's own manifests the test
# installs (manifests/crds and the ConfigMaps and Secret of manifests/base/config) copied
# from the module into target/argocd/manifests/. Versions are pinned by go.mod/go.sum here.
# Redis, which both components need, is Debian's redis-server: installed with apt-get when
# missing (as .ci/run installs openssl), since the tests must run on a fresh machine.
#
# Why v3.1.16: the newest Argo CD that builds from the module proxy with this Go. v3.3 and v3.4
# replace gitops-engine with a nested directory that the module archive does not contain, and
# v3.2.12 fails to compile (undefined: settings.ValidateExternalURL).
#
# When the stamp (SHA-256 of go.mod, go.sum and this script) matches, the script is a no-op.
# A module of its own, not part of tests/tools/: a bump here rebuilds neither the tools nor
# the control plane.
#
# Environment:
#   ARGOCD_FORCE=1       rebuild even if the stamp matches
#   ARGOCD_GO_P=N        go build -p (default: number of CPUs)
#   CARGO_TARGET_DIR     where target/ lives (default <repo>/target)
set -euo pipefail

t_start=$(date +%s)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
out="$target_dir/argocd"
bin="$out/bin"
manifests="$out/manifests"
stamp="$out/stamp"
binaries=(argocd argocd-application-controller argocd-repo-server argocd-server kustomize)

log() { printf 'argocd/build.sh: %s\n' "$*" >&2; }

if ! command -v redis-server >/dev/null; then
  log "installing redis-server (apt-get)"
  apt-get update -q && apt-get install -y -q --no-install-recommends redis-server
  # The package starts a system-wide server on 127.0.0.1:6379; the tests start their own.
  if command -v systemctl >/dev/null; then systemctl disable --now redis-server >/dev/null 2>&1 || true; fi
fi
command -v go >/dev/null || { log "ERROR: 'go' not found in PATH (need Go >= $(awk '$1=="go"{print $2}' go.mod))"; exit 1; }

want_stamp="$(cat go.mod go.sum build.sh | sha256sum | cut -d' ' -f1)"

up_to_date() {
  [ "${ARGOCD_FORCE:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] || return 1
  local b
  for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || return 1; done
  [ -f "$manifests/application-crd.yaml" ] && [ -f "$manifests/argocd-cm.yaml" ]
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
export CGO_ENABLED=0
export GOWORK=off
jobs="${ARGOCD_GO_P:-$(nproc 2>/dev/null || echo 2)}"

log "go: $(go version), build -p $jobs, GOPROXY=$(go env GOPROXY)"
t=$(date +%s)
log "[1/3] downloading modules (go mod download)"
go mod download
log "      done in $(( $(date +%s) - t ))s"

argocd_v="$(go list -m -f '{{.Version}}' github.com/argoproj/argo-cd/v3)"
argocd_dir="$(go list -m -f '{{.Dir}}' github.com/argoproj/argo-cd/v3)"
kustomize_v="$(go list -m -f '{{.Version}}' sigs.k8s.io/kustomize/kustomize/v5)"

tmp="$out/bin.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"

# The application controller binds its metrics server to 0.0.0.0 with no flag to change it
# (controller/appcontroller.go); the tests listen on loopback only, so this build binds it to
# 127.0.0.1: that one line is the only change to Argo CD's source. go build -overlay may not
# replace files in the module cache, so Argo CD is built from a copy of its module (the one
# go.sum verified), named by a replace directive in a copy of go.mod (go build -modfile).
src="$out/src"
rm -rf "$src"
mkdir -p "$src"
cp -r "$argocd_dir" "$src/argo-cd"
chmod -R u+w "$src/argo-cd"
ctrl_src="$src/argo-cd/controller/appcontroller.go"
sed -i 's|metricsAddr := fmt.Sprintf("0.0.0.0:%d", metricsPort)|metricsAddr := fmt.Sprintf("127.0.0.1:%d", metricsPort)|' "$ctrl_src"
[ "$(diff "$argocd_dir/controller/appcontroller.go" "$ctrl_src" | grep -c '^>')" = 1 ] \
  || { log "ERROR: the controller's metrics address line is not where it was in v3.1.16; update build.sh"; exit 1; }
cp go.mod go.sum "$src/"
printf '\nreplace github.com/argoproj/argo-cd/v3 => %s\n' "$src/argo-cd" >> "$src/go.mod"

build() {   # build NAME [go build args...] PACKAGE
  local name="$1" t
  shift
  t=$(date +%s)
  go build -trimpath -p "$jobs" -o "$tmp/$name" "$@"
  log "      $name: $(( $(date +%s) - t ))s"
}
log "[2/3] go build argocd $argocd_v, kustomize $kustomize_v"
# The ldflags of Argo CD's Makefile (version and build info in common/).
pkg=github.com/argoproj/argo-cd/v3/common
build argocd -modfile "$src/go.mod" -ldflags "-s -w -X $pkg.version=${argocd_v#v} -X $pkg.gitTag=$argocd_v -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z" \
  github.com/argoproj/argo-cd/v3/cmd
build kustomize -ldflags "-s -w -X sigs.k8s.io/kustomize/api/provenance.version=kustomize/$kustomize_v" \
  sigs.k8s.io/kustomize/kustomize/v5
ln -s argocd "$tmp/argocd-application-controller"
ln -s argocd "$tmp/argocd-repo-server"
ln -s argocd "$tmp/argocd-server"

"$tmp/argocd" version --client --short 2>&1 | grep -q "$argocd_v" \
  || { log "ERROR: argocd reports '$("$tmp/argocd" version --client --short 2>&1 | head -1)', expected $argocd_v"; exit 1; }

log "[3/3] Argo CD's manifests from $argocd_dir"
rm -rf "$manifests.tmp"
mkdir -p "$manifests.tmp"
cp "$argocd_dir"/manifests/crds/*-crd.yaml "$manifests.tmp/"
cp "$argocd_dir"/manifests/base/config/argocd-*.yaml "$manifests.tmp/"
chmod -R u+w "$manifests.tmp"

rm -rf "$bin" "$manifests"
mv "$tmp" "$bin"
mv "$manifests.tmp" "$manifests"
rm -rf "$src"
echo "$want_stamp" > "$stamp"
log "built ${binaries[*]} in $(( $(date +%s) - t_start ))s into $bin"
