#!/usr/bin/env bash
# Sign a pushed release with cosign and a key pair, and attach the image's SBOM as a signed
# attestation:
#
#   COSIGN_PASSWORD=... deploy/release/sign.sh cosign.key IMAGE@sha256:... CHART@sha256:... SBOM.cdx.json
#
#   cosign.key      the private key of `cosign generate-key-pair` (or any key reference cosign
#                   takes: a KMS URI, k8s://namespace/secret)
#   IMAGE@sha256:   the image as pushed, by digest (deploy/image/build.sh prints the digest)
#   CHART@sha256:   the chart as pushed by `helm push`, by digest (helm prints it;
#                   `crane digest REGISTRY/charts/dynamics-operator:VERSION` tells it too)
#   SBOM.cdx.json   deploy/release/sbom.sh's output for that image
#
# Signs by digest only: a tag can move after signing. The signatures and the attestation are
# stored next to the artifacts in their registry as cosign's classic tags (sha256-<digest>.sig,
# .att), the format that admission controllers verifying with a public key read (Kyverno's
# verifyImages, Sigstore's policy-controller); docs/supply-chain.md has a Kyverno policy.
#
# No transparency log entry by default: the signatures are checked against the release's public
# key, with `--insecure-ignore-tlog` (deploy/release/verify.sh). Set TLOG=true on a machine that
# reaches the public Sigstore services to also record them in Rekor.
#
# Environment:
#   COSIGN_PASSWORD  the private key's password (cosign reads it; never printed)
#   COSIGN           cosign to run (default: target/tools/bin/cosign, else cosign on PATH;
#                    tests/tools/build.sh builds it)
#   TLOG             true: upload to the public transparency log (default false)
#   PLAIN_HTTP       true: the registry speaks plain HTTP (a local test registry)
#   CARGO_TARGET_DIR where target/ lives (default <repo>/target)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
. "$here/common.sh"
cosign="$(find_tool cosign "${COSIGN:-}")"

[ $# -eq 4 ] || die "usage: $0 KEY IMAGE@sha256:DIGEST CHART@sha256:DIGEST SBOM.cdx.json"
key="$1" image="$2" chart="$3" sbom="$4"
by_digest "$image"
by_digest "$chart"
[ -s "$sbom" ] || die "no SBOM at $sbom (deploy/release/sbom.sh makes it)"
jq -e '.bomFormat == "CycloneDX"' "$sbom" >/dev/null || die "$sbom is not a CycloneDX JSON document"

# The classic format (--new-bundle-format=false) is the one key-verifying admission controllers
# read; with it cosign 3 takes no signing config (--use-signing-config=false).
sign_flags=(--yes --key "$key" --new-bundle-format=false --use-signing-config=false "${registry_flags[@]}")
case "${TLOG:-false}" in
  true) ;;
  false) sign_flags+=(--tlog-upload=false) ;;
  *) die "TLOG must be true or false, not '$TLOG'" ;;
esac

log "signing the image $image"
"$cosign" sign "${sign_flags[@]}" "$image"
log "signing the chart $chart"
"$cosign" sign "${sign_flags[@]}" "$chart"
log "attesting the SBOM of the image ($sbom, CycloneDX)"
"$cosign" attest "${sign_flags[@]}" --type cyclonedx --predicate "$sbom" "$image"
log "signed $image and $chart; the SBOM is attached to $image"
