#!/usr/bin/env bash
# The SBOM of the operator's image, in CycloneDX JSON, made by syft:
#
#   deploy/release/sbom.sh IMAGE.oci.tar OUTPUT.cdx.json
#
# IMAGE.oci.tar is what deploy/image/build.sh writes. Two syft scans, merged into one document
# whose subject is the image (by its manifest digest):
#   * the image: the Debian packages, from the records deploy/image/build.sh writes in
#     /var/lib/dpkg/status.d/, the distribution (/etc/os-release) and the packages' files;
#   * Cargo.lock: every crate the binary is built from, at its locked version (pkg:cargo purls).
# The binary itself carries no list of its crates, so an image scan alone would not see them.
#
# Environment:
#   SYFT              syft to run (default: target/tools/bin/syft, else syft on PATH;
#                     tests/tools/build.sh builds it)
#   IMAGE             the name the SBOM gives the image (default ghcr.io/bithuman/dynamics-operator)
#   CARGO_TARGET_DIR  where target/ lives (default <repo>/target)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
. "$here/common.sh"

[ $# -eq 2 ] || die "usage: $0 IMAGE.oci.tar OUTPUT.cdx.json"
archive="$1"
out="$2"
image="${IMAGE:-ghcr.io/bithuman/dynamics-operator}"
syft="$(find_tool syft "${SYFT:-}")"
[ -f "$archive" ] || die "no image archive at $archive (deploy/image/build.sh writes it)"

mkdir -p "$work/layout"
tar -xf "$archive" -C "$work/layout"
digest="$(jq -r '.manifests[0].digest' "$work/layout/index.json")"
version="$(jq -r '.manifests[0].annotations["org.opencontainers.image.ref.name"] // empty' "$work/layout/index.json")"

export SYFT_CHECK_FOR_APP_UPDATE=false
"$syft" scan "oci-dir:$work/layout" --quiet --source-name "$image" --source-version "$digest" \
  -o "cyclonedx-json=$work/image.cdx.json"
(cd "$repo" && "$syft" scan file:Cargo.lock --quiet -o "cyclonedx-json=$work/crates.cdx.json")

# The image's document, with the crates' components and dependency records added (syft's
# bom-refs are unique across the two scans: hashes of each package's identity).
mkdir -p "$(dirname "$out")"
jq -s --arg version "$version" '
  .[0] as $image | .[1] as $crates
  | $image
  | .components = ($image.components + $crates.components)
  | .dependencies = (($image.dependencies // []) + ($crates.dependencies // []))
  | .metadata.properties = (($image.metadata.properties // [])
      + [{name: "dynamics-operator:sbom:sources", value: "image, Cargo.lock"},
         {name: "dynamics-operator:image:tag", value: $version}])
' "$work/image.cdx.json" "$work/crates.cdx.json" > "$out.tmp"
mv "$out.tmp" "$out"
log "$out: $(jq '[.components[] | select(.purl // "" | startswith("pkg:deb/"))] | length' "$out") Debian packages, $(jq '[.components[] | select(.purl // "" | startswith("pkg:cargo/"))] | length' "$out") crates, $(jq '.components | length' "$out") components in all; image $image@$digest"
