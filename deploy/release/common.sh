# shellcheck shell=bash
# What sbom.sh, sign.sh and verify.sh share: paths, logging, the Go tool to run, a work
# directory, the registry flags, checks.
repo="$(cd "$here/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac

log() { printf 'release/%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# find_tool NAME VALUE: VALUE (the tool's environment variable) if set, else what
# tests/tools/build.sh built, else NAME on PATH.
find_tool() {
  local path="${2:-}"
  if [ -z "$path" ]; then
    path="$target_dir/tools/bin/$1"
    [ -x "$path" ] || path="$(command -v "$1" || true)"
  fi
  [ -n "$path" ] && [ -x "$path" ] || die "no $1: run tests/tools/build.sh, or set ${1^^}=path/to/$1"
  printf '%s' "$path"
}
command -v jq >/dev/null || die "'jq' not found (apt-get install jq)"

registry_flags=()
case "${PLAIN_HTTP:-false}" in
  true) registry_flags=(--allow-http-registry --allow-insecure-registry) ;;
  false) ;;
  *) die "PLAIN_HTTP must be true or false, not '$PLAIN_HTTP'" ;;
esac

work="$(mktemp -d "${TMPDIR:-/tmp}/dynamics-release.XXXXXX")"
trap 'rm -rf "$work"' EXIT

by_digest() {   # by_digest REF: refuse a reference that is not pinned by digest
  case "$1" in
    *@sha256:????????????????????????????????????????????????????????????????) ;;
    *) die "$1: give the artifact by digest (NAME@sha256:...), not by tag" ;;
  esac
}
