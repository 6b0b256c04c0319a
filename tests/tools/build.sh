#!/usr/bin/env bash
# Build the Go tools the Rust integration tests use, from module source (no release downloads):
#
#   helm      helm.sh/helm/v4/cmd/helm                          chart lint, template, install
#   crane     github.com/google/go-containerregistry/cmd/crane  validates the OCI image
#   promtool  github.com/prometheus/prometheus/cmd/promtool     checks and unit-tests the alerts
#   kstatus   ./kstatus (sigs.k8s.io/cli-utils/pkg/kstatus)     health as kpt/Config Sync see it
#   argocd-lua ./argocd-lua (github.com/yuin/gopher-lua)        health as Argo CD computes it
#   syft      github.com/anchore/syft/cmd/syft                  the image's SBOM (deploy/release)
#   cosign    github.com/sigstore/cosign/v3/cmd/cosign          signs and verifies the release
#
# into ${CARGO_TARGET_DIR:-<repo>/target}/tools/bin/. Versions are pinned by go.mod/go.sum here,
# and for syft and cosign by release/go.mod/go.sum: a module of their own, as they bring their
# own versions of go-containerregistry and the sigstore libraries. When the stamp (SHA-256 of
# both go.mod and go.sum, this script and our own Go sources) matches, the script is a no-op.
# promtool is built with -tags remove_all_sd: no cloud service discovery, which promtool's rule
# checks never use and which would double the build.
#
# Separate from tests/controlplane/ on purpose: these tools need newer k8s.io modules than the
# pinned control plane, and one module for both would rebuild the control plane on every bump.
#
# Environment:
#   TOOLS_FORCE=1        rebuild even if the stamp matches
#   TOOLS_GO_P=N         go build -p (default: number of CPUs)
#   CARGO_TARGET_DIR     where target/ lives (default <repo>/target)
set -euo pipefail

t_start=$(date +%s)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
out="$target_dir/tools"
bin="$out/bin"
stamp="$out/stamp"
binaries=(helm crane promtool kstatus argocd-lua syft cosign)

log() { printf 'tools/build.sh: %s\n' "$*" >&2; }

command -v go >/dev/null || { log "ERROR: 'go' not found in PATH (need Go >= $(awk '$1=="go"{print $2}' go.mod))"; exit 1; }

want_stamp="$( (cat go.mod go.sum release/go.mod release/go.sum build.sh; find . -name '*.go' | LC_ALL=C sort | xargs cat) | sha256sum | cut -d' ' -f1)"

up_to_date() {
  [ "${TOOLS_FORCE:-0}" != 1 ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want_stamp" ] || return 1
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
export CGO_ENABLED=0
export GOWORK=off
jobs="${TOOLS_GO_P:-$(nproc 2>/dev/null || echo 2)}"

modver() { go list -m -f '{{.Version}}' "$1"; }

log "go: $(go version), build -p $jobs, GOPROXY=$(go env GOPROXY)"
t=$(date +%s)
log "[1/2] downloading modules (go mod download)"
go mod download
(cd release && go mod download)
log "      done in $(( $(date +%s) - t ))s"

helm_v="$(modver helm.sh/helm/v4)"
prom_v="$(modver github.com/prometheus/prometheus)"
# Prometheus 3.x publishes its module as v0.3MM.P: v0.316.0 is Prometheus 3.16.0.
prom_mp="${prom_v#v0.}"; prom_minor="${prom_mp%%.*}"
prom_release="${prom_minor:0:1}.$((10#${prom_minor:1})).${prom_mp#*.}"
crane_v="$(modver github.com/google/go-containerregistry)"
syft_v="$(cd release && modver github.com/anchore/syft)"
cosign_v="$(cd release && modver github.com/sigstore/cosign/v3)"

tmp="$out/bin.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"

# One go build per tool, so the log says what each costs (later ones reuse the packages the
# earlier ones compiled).
build() {   # build NAME [go build args...] PACKAGE
  local name="$1" t
  shift
  t=$(date +%s)
  go build -trimpath -p "$jobs" -o "$tmp/$name" "$@"
  log "      $name: $(( $(date +%s) - t ))s"
}
log "[2/2] go build helm $helm_v, crane $crane_v, promtool $prom_release (-tags remove_all_sd), kstatus, argocd-lua, syft $syft_v, cosign $cosign_v"
build helm -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$helm_v -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
  helm.sh/helm/v4/cmd/helm
build crane -ldflags "-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$crane_v" \
  github.com/google/go-containerregistry/cmd/crane
build promtool -tags remove_all_sd \
  -ldflags "-s -w -X github.com/prometheus/common/version.Version=$prom_release -X github.com/prometheus/common/version.Branch=module -X github.com/prometheus/common/version.Revision=$prom_v" \
  github.com/prometheus/prometheus/cmd/promtool
build kstatus -ldflags "-s -w" ./kstatus
build argocd-lua -ldflags "-s -w" ./argocd-lua
# syft and cosign: from their own module (release/go.mod).
cd release
build syft -ldflags "-s -w -X main.version=$syft_v" github.com/anchore/syft/cmd/syft
build cosign -ldflags "-s -w -X sigs.k8s.io/release-utils/version.gitVersion=$cosign_v" \
  github.com/sigstore/cosign/v3/cmd/cosign
cd ..

"$tmp/helm" version --short | grep -q "^$helm_v" || { log "ERROR: helm reports '$("$tmp/helm" version --short)', expected $helm_v"; exit 1; }
"$tmp/promtool" --version 2>&1 | grep -q "version $prom_release" || { log "ERROR: promtool reports '$("$tmp/promtool" --version 2>&1 | head -1)'"; exit 1; }
"$tmp/syft" version | grep -q "^Version: *$syft_v\$" || { log "ERROR: syft reports '$("$tmp/syft" version | grep '^Version')', expected $syft_v"; exit 1; }
"$tmp/cosign" version 2>&1 | grep -q "^GitVersion: *$cosign_v\$" || { log "ERROR: cosign reports '$("$tmp/cosign" version 2>&1 | grep '^GitVersion')', expected $cosign_v"; exit 1; }

rm -rf "$bin"
mv "$tmp" "$bin"
echo "$want_stamp" > "$stamp"
log "built ${binaries[*]} in $(( $(date +%s) - t_start ))s into $bin"
