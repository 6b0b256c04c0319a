#!/usr/bin/env bash
# Verify a release before installing it: the image's and the chart's cosign signatures and the
# image's signed SBOM, against the release's public key.
#
#   deploy/release/verify.sh cosign.pub IMAGE@sha256:... CHART@sha256:... [SBOM-OUT.cdx.json]
#
# Exits non-zero unless every check passes. With SBOM-OUT, writes the SBOM taken from the
# verified attestation there. The release is signed without a transparency log entry
# (deploy/release/sign.sh), so the checks use --insecure-ignore-tlog: the public key alone is
# the trust anchor. These are the commands docs/supply-chain.md gives.
#
# Environment:
#   COSIGN           cosign to run (default: target/tools/bin/cosign, else cosign on PATH)
#   PLAIN_HTTP       true: the registry speaks plain HTTP (a local test registry)
#   CARGO_TARGET_DIR where target/ lives (default <repo>/target)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
. "$here/common.sh"
cosign="$(find_tool cosign "${COSIGN:-}")"

[ $# -eq 3 ] || [ $# -eq 4 ] || die "usage: $0 KEY.pub IMAGE@sha256:DIGEST CHART@sha256:DIGEST [SBOM-OUT.cdx.json]"
key="$1" image="$2" chart="$3" sbom_out="${4:-}"
by_digest "$image"
by_digest "$chart"

flags=(--key "$key" --insecure-ignore-tlog=true "${registry_flags[@]}")
for ref in "$image" "$chart"; do
  log "verifying the signature of $ref"
  "$cosign" verify "${flags[@]}" "$ref" > "$work/verified.json"
  # Each signature's payload names what was signed: it must be this digest.
  jq -e --arg d "${ref##*@}" 'length > 0 and all(.[]; .critical.image["docker-manifest-digest"] == $d)' \
    "$work/verified.json" >/dev/null || die "the signatures of $ref do not name its digest"
done
log "verifying the SBOM attestation of $image"
"$cosign" verify-attestation "${flags[@]}" --type cyclonedx "$image" > "$work/attestations.json"
# One DSSE envelope a line; each payload is an in-toto statement. One must be a CycloneDX SBOM
# about this image's digest (signing again adds more).
jq -r '.payload' "$work/attestations.json" | while read -r payload; do
  printf '%s' "$payload" | base64 -d
  echo
done > "$work/statements.json"
about_image='select(.predicateType == "https://cyclonedx.org/bom" and any(.subject[]; .digest.sha256 == $d))'
jq -s -e --arg d "${image##*@sha256:}" "[.[] | $about_image] | length > 0" "$work/statements.json" >/dev/null \
  || die "no SBOM attestation of $image is about its digest"
if [ -n "$sbom_out" ]; then
  jq -s --arg d "${image##*@sha256:}" "[.[] | $about_image][0].predicate" "$work/statements.json" > "$sbom_out"
fi
log "verified: $image and $chart signed by $key; the image's SBOM attested"
