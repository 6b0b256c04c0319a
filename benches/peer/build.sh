#!/usr/bin/env bash
# Build the convergence benchmark's peer from Go module source (no release downloads):
#
#   provider-http   github.com/crossplane-contrib/provider-http/cmd/provider (v1.0.14)
#
# into ${CARGO_TARGET_DIR:-<repo>/target}/tools/bin/provider-http, and copy its CRDs (the
# module's package/crds/) to target/tools/provider-http-crds/. The version is pinned by go.mod
# and go.sum next to this script. When the stamp (SHA-256 of go.mod, go.sum and this script)
# matches and the outputs exist, the script is a no-op that takes a second or two.
#
# Run by `cargo bench --bench convergence -- --peer provider-http`, on demand only: neither
# .ci/run nor tests/run.sh calls it. A cold build takes about 4 minutes on 2 cores.
#
# Environment:
#   PEER_FORCE=1        rebuild even if the stamp matches
#   PEER_GO_P=N         go build -p (default: number of CPUs)
#   CARGO_TARGET_DIR    where target/ lives (default <repo>/target)
set -euo pipefail

t_start=$(date +%s)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

module=github.com/crossplane-contrib/provider-http
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
out="$target_dir/tools"
bin="$out/bin/provider-http"
crds="$out/provider-http-crds"
stamp="$out/provider-http.stamp"

log() { printf 'benches/peer/build.sh: %s\n' "$*" >&2; }

command -v go >/dev/null || { log "ERROR: 'go' not found in PATH (need Go >= $(awk '$1=="go"{print $2}' go.mod))"; exit 1; }

want_stamp="$(cat go.mod go.sum build.sh | sha256sum | cut -d' ' -f1)"

up_to_date() {
  [ "${PEER_FORCE:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] \
    && [ -x "$bin" ] && [ -n "$(ls "$crds"/*.yaml 2>/dev/null)" ]
}

if up_to_date; then
  log "up to date ($(( $(date +%s) - t_start ))s): $bin, CRDs in $crds"
  exit 0
fi

mkdir -p "$out/bin"
exec 9>"$out/.provider-http.lock"
if command -v flock >/dev/null; then
  if ! flock -n 9; then
    log "another build is running; waiting for $out/.provider-http.lock"
    flock 9
  fi
  if up_to_date; then
    log "up to date (built concurrently): $bin"
    exit 0
  fi
fi

export GOFLAGS="-buildvcs=false -mod=readonly"
export CGO_ENABLED=0
export GOWORK=off
jobs="${PEER_GO_P:-$(nproc 2>/dev/null || echo 2)}"
version="$(go list -m -f '{{.Version}}' "$module")"

log "building the benchmark's peer, provider-http $version, from module source"
log "go: $(go version), build -p $jobs, GOPROXY=$(go env GOPROXY)"
log "a cold build takes about 4 minutes on 2 cores; later runs reuse the Go build cache ($(go env GOCACHE))"
t=$(date +%s)
log "[1/2] downloading modules (go mod download)"
go mod download
log "      done in $(( $(date +%s) - t ))s"

t=$(date +%s)
log "[2/2] go build $module/cmd/provider"
go build -trimpath -p "$jobs" -ldflags "-s -w" -o "$bin.tmp" "$module/cmd/provider"
log "      done in $(( $(date +%s) - t ))s"

src="$(go list -m -f '{{.Dir}}' "$module")"
rm -rf "$crds.tmp"
mkdir -p "$crds.tmp"
cp "$src"/package/crds/*.yaml "$crds.tmp/"
chmod u+w "$crds.tmp"/*.yaml
rm -rf "$crds"
mv "$crds.tmp" "$crds"
mv "$bin.tmp" "$bin"
echo "$version" > "$out/provider-http.version"
echo "$want_stamp" > "$stamp"
log "built provider-http $version in $(( $(date +%s) - t_start ))s: $bin ($(du -h "$bin" | cut -f1)), $(ls "$crds" | wc -l) CRDs in $crds"
