#!/usr/bin/env bash
# Write a kustomize overlay that installs one of this repository's kustomizations with the image
# taken from your registry, the way `kubectl apply -k` users override it:
#
#   deploy/overlay.sh OUT_DIR BASE IMAGE [API_URL]
#
#   OUT_DIR  where kustomization.yaml is written (created)
#   BASE     deploy/, deploy/overlays/simulator, deploy/overlays/ha, ... (any directory)
#   IMAGE    REGISTRY/NAME:TAG or REGISTRY/NAME@sha256:DIGEST
#   API_URL  optional: the API the operator talks to (e.g. a simulator), else the base's
#
# then `kubectl apply -k OUT_DIR`. tests/kind/run.sh and the node test (tests/node.rs) install
# through it, so the two cannot drift.
set -euo pipefail

[ $# -ge 3 ] && [ $# -le 4 ] || { echo "usage: $0 OUT_DIR BASE IMAGE [API_URL]" >&2; exit 2; }
out=$1; base=$2; image=$3; api_url=${4:-}
[ -f "$base/kustomization.yaml" ] || { echo "$0: no kustomization.yaml in $base" >&2; exit 2; }
mkdir -p "$out"
out_abs=$(cd "$out" && pwd -P)
base_abs=$(cd "$base" && pwd -P)
# kustomize takes no absolute paths: the base relative to the overlay.
rel=$(realpath --relative-to="$out_abs" "$base_abs")

case "$image" in
  *@sha256:*) name=${image%@*}; pin="    digest: ${image#*@}" ;;
  *:*) name=${image%:*}; pin="    newTag: ${image##*:}" ;;
  *) echo "$0: IMAGE needs a :tag or an @sha256: digest, got $image" >&2; exit 2 ;;
esac

{
  cat <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $rel
images:
  - name: ghcr.io/bithuman/dynamics-operator
    newName: $name
$pin
YAML
  if [ -n "$api_url" ]; then
    cat <<YAML
patches:
  - target:
      kind: Deployment
      name: dynamics-operator
    patch: |-
      apiVersion: apps/v1
      kind: Deployment
      metadata:
        name: dynamics-operator
      spec:
        template:
          spec:
            containers:
              - name: operator
                env:
                  - name: BITHUMAN_API_URL
                    value: $api_url
YAML
  fi
} >"$out_abs/kustomization.yaml"
echo "$out_abs"
