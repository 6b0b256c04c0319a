#!/usr/bin/env bash
# Build the dynamics-operator image without a container daemon, as an OCI image layout in one
# tarball, reproducibly: the same binary and Debian packages give the same bytes and digest.
#
#   deploy/image/build.sh [OUTPUT.tar]      (default target/image/dynamics-operator.oci.tar)
#
# The root filesystem: the release binary (/dynamics-operator) linked against glibc; the Debian
# packages it needs, unpacked with dpkg-deb (libc6, libgcc-s1, ca-certificates, fetched with
# apt-get download and cached by version); for scanners, a record of each package in
# /var/lib/dpkg/status.d/ (as distroless images have) and the build machine's /etc/os-release;
# the CA bundle those certificates make; /etc/passwd and /etc/group naming root and the user
# 65532 (nonroot) the image runs as; /tmp; no shell.
# Two gzip layers (packages, binary) with fixed owners, order and times, a config, an OCI
# manifest and index, and a Docker-style manifest.json too, so one file loads everywhere:
#
#   kind load image-archive target/image/dynamics-operator.oci.tar
#   docker load -i target/image/dynamics-operator.oci.tar   (or podman load, ctr images import)
#
# Environment:
#   BINARY             the binary (default target/release/dynamics-operator; build it first:
#                      cargo build --release --locked --bin dynamics-operator)
#   IMAGE              name in the archive (default ghcr.io/bithuman/dynamics-operator:dev)
#   SOURCE_DATE_EPOCH  time of every file and of the config (default 0)
#   CARGO_TARGET_DIR   where target/ lives (default <repo>/target)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
out="${1:-$target_dir/image/dynamics-operator.oci.tar}"
binary="${BINARY:-$target_dir/release/dynamics-operator}"
image="${IMAGE:-ghcr.io/bithuman/dynamics-operator:dev}"
epoch="${SOURCE_DATE_EPOCH:-0}"
packages=(libc6 libgcc-s1 ca-certificates)
arch="$(dpkg --print-architecture)"    # amd64, arm64: the OCI names are the same

log() { printf 'image/build.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in dpkg-deb apt-get tar gzip sha256sum; do
  command -v "$tool" >/dev/null || die "'$tool' not found (a Debian-based machine is needed)"
done
[ -x "$binary" ] || die "no binary at $binary: cargo build --release --locked --bin dynamics-operator"
version="$("$binary" --version)" || die "$binary --version failed"

# --- Debian packages, cached by name and version --------------------------------------------
debs="$target_dir/image/debs"
mkdir -p "$debs"
# apt-get's progress goes to stderr: stdout carries only the image digest, the script's result.
fetch() {
  (cd "$debs" && apt-get download "${packages[@]}" >&2 2>/dev/null) && return 0
  log "apt-get download failed; refreshing the package lists (apt-get update)"
  apt-get update -q >/dev/null
  (cd "$debs" && apt-get download "${packages[@]}" >&2)
}
deb_files=()
missing=0
for p in "${packages[@]}"; do
  v="$(apt-cache policy "$p" 2>/dev/null | sed -n 's/^  Candidate: //p')"
  f="$(ls "$debs/${p}_${v//:/%3a}_"*.deb 2>/dev/null | head -1 || true)"
  [ -n "$v" ] && [ "$v" != "(none)" ] && [ -n "$f" ] || missing=1
done
[ "$missing" = 0 ] || fetch
for p in "${packages[@]}"; do
  v="$(apt-cache policy "$p" | sed -n 's/^  Candidate: //p')"
  f="$(ls "$debs/${p}_${v//:/%3a}_"*.deb 2>/dev/null | head -1 || true)"
  [ -n "$f" ] || die "no .deb for $p $v in $debs"
  deb_files+=("$f")
done

work="$(mktemp -d "${TMPDIR:-/tmp}/dynamics-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# --- layer 1: packages, users, CA bundle ------------------------------------------------------
base="$work/base"
mkdir -p "$base"
pkglist=""
# dpkg-deb -x writes no dpkg database, so scanners (syft, Trivy, Grype) would see no packages.
# What distroless images carry instead: one record a package in /var/lib/dpkg/status.d/, the
# .deb's control stanza with its Status, and the package's md5sums beside it.
status_d="$base/var/lib/dpkg/status.d"
mkdir -p "$status_d"
for f in "${deb_files[@]}"; do
  dpkg-deb -x "$f" "$base"
  name="$(dpkg-deb -f "$f" Package)"
  pkglist+="$name=$(dpkg-deb -f "$f" Version) "
  { dpkg-deb -f "$f" | sed '/^Package:/a Status: install ok installed'; } > "$status_d/$name"
  grep -q '^Version: ' "$status_d/$name" || die "no Version in the control file of $f"
  dpkg-deb --ctrl-tarfile "$f" | tar -xOf - ./md5sums > "$status_d/$name.md5sums" 2>/dev/null || rm -f "$status_d/$name.md5sums"
done
pkglist="${pkglist% }"
# Which distribution the packages are from (scanners match their advisories by it): the build
# machine's, whose apt-get fetched them.
os_release=/etc/os-release
[ -f "$os_release" ] || os_release=/usr/lib/os-release
grep -q '^ID=debian' "$os_release" || die "$os_release does not name Debian: the packages must come from Debian"
install -D -m 0644 "$os_release" "$base/etc/os-release"
[ ! -e "$base/bin/sh" ] && [ ! -e "$base/usr/bin/sh" ] || die "a shell came with the packages"
mkdir -p "$base/etc/ssl/certs" "$base/tmp" "$base/home/nonroot"
# What update-ca-certificates (ca-certificates' postinst, not run here) would write.
find "$base/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat > "$base/etc/ssl/certs/ca-certificates.crt"
[ -s "$base/etc/ssl/certs/ca-certificates.crt" ] || die "empty CA bundle"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$base/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$base/etc/group"
printf 'hosts: files dns\n' > "$base/etc/nsswitch.conf"
chmod 1777 "$base/tmp"

# --- layer 2: the binary -----------------------------------------------------------------------
app="$work/app"
mkdir -p "$app"
install -m 0755 "$binary" "$app/dynamics-operator"

layout="$work/layout"
mkdir -p "$layout/blobs/sha256"

# A deterministic tar: sorted names, everything owned by root (the user 65532 only reads and
# executes; the root filesystem is read-only in the Deployment), fixed times.
make_tar() {
  local dir="$1"
  tar --sort=name --format=posix \
    --pax-option='exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime' \
    --mtime="@$epoch" --numeric-owner --owner=0 --group=0 \
    -C "$dir" -cf - .
}

blob() {   # blob FILE MEDIATYPE -> prints "digest size" and moves FILE into blobs/
  local f="$1" d s
  d="$(sha256sum "$f" | cut -d' ' -f1)"
  s="$(stat -c %s "$f")"
  mv "$f" "$layout/blobs/sha256/$d"
  echo "$d $s"
}

declare -a layer_digests layer_sizes diff_ids
for dir in "$base" "$app"; do
  make_tar "$dir" > "$work/layer.tar"
  diff_ids+=("$(sha256sum "$work/layer.tar" | cut -d' ' -f1)")
  gzip -n -9 < "$work/layer.tar" > "$work/layer.tar.gz"
  read -r d s < <(blob "$work/layer.tar.gz")
  layer_digests+=("$d"); layer_sizes+=("$s")
done

created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
app_version="$(echo "$version" | awk '{print $2}')"
revision="$(echo "$version" | sed -n 's/.*(commit \(.*\)).*/\1/p')"
common="\"org.opencontainers.image.title\":\"dynamics-operator\",\"org.opencontainers.image.version\":\"$app_version\",\"org.opencontainers.image.revision\":\"$revision\",\"org.opencontainers.image.source\":\"https://github.com/bithuman/dynamics-operator\",\"org.opencontainers.image.licenses\":\"Apache-2.0\""
labels="$common,\"org.opencontainers.image.base.name\":\"debian $pkglist\""
annotations="$common,\"org.opencontainers.image.created\":\"$created\""

printf '{"architecture":"%s","os":"linux","created":"%s","config":{"User":"65532:65532","Entrypoint":["/dynamics-operator"],"Cmd":["run"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],"WorkingDir":"/","ExposedPorts":{"8080/tcp":{}},"Labels":{%s}},"rootfs":{"type":"layers","diff_ids":["sha256:%s","sha256:%s"]},"history":[{"created":"%s","created_by":"deploy/image/build.sh: %s"},{"created":"%s","created_by":"deploy/image/build.sh: /dynamics-operator %s"}]}' \
  "$arch" "$created" "$labels" "${diff_ids[0]}" "${diff_ids[1]}" "$created" "$pkglist" "$created" "$app_version" > "$work/config.json"
read -r config_digest config_size < <(blob "$work/config.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s},{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}],"annotations":{%s}}' \
  "$config_digest" "$config_size" "${layer_digests[0]}" "${layer_sizes[0]}" "${layer_digests[1]}" "${layer_sizes[1]}" "$annotations" > "$work/manifest.json"
read -r manifest_digest manifest_size < <(blob "$work/manifest.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
  "$manifest_digest" "$manifest_size" "$arch" "$image" "${image##*:}" > "$layout/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
# docker load (and crane's tarball reader) read this one.
printf '[{"Config":"blobs/sha256/%s","RepoTags":["%s"],"Layers":["blobs/sha256/%s","blobs/sha256/%s"]}]' \
  "$config_digest" "$image" "${layer_digests[0]}" "${layer_digests[1]}" > "$layout/manifest.json"

mkdir -p "$(dirname "$out")"
make_tar "$layout" > "$out.tmp"
mv "$out.tmp" "$out"
log "built $image ($version; $pkglist)"
log "  $out: $(du -h "$out" | cut -f1), manifest sha256:$manifest_digest"
echo "sha256:$manifest_digest"
