#!/usr/bin/env bash
# A one-node Kubernetes cluster for the node test (tests/node.rs, through tests/support/node.rs),
# entirely inside namespaces this script creates and removes:
#
#   tests/node/cluster.sh up DIR     start it; DIR/env then names what a client needs
#   tests/node/cluster.sh down DIR   stop every process it started, pods included; unmount all
#   tests/node/cluster.sh exec DIR CMD...   run CMD in the node's network namespace
#
# One holder process owns a new network namespace and a private mount namespace. Everything
# else joins them: etcd, kube-apiserver, kube-controller-manager, kube-scheduler (from
# tests/controlplane and tests/node), containerd + runc + the CNI bridge (Debian), kubelet,
# kube-proxy (iptables mode, so the `kubernetes` Service reaches the API server from a pod) and
# an OCI registry (`crane registry serve`) that holds the pause image built here. Every address
# is the namespace's own: the node is 10.200.0.1 (a veth pair of its own), pods get 10.88.0.0/24 on a
# bridge, Services 10.96.0.0/24. The kubelet's and containerd's state sits on a tmpfs mounted in
# the private mount namespace, so no mount outlives the cluster; pod cgroups live under one
# cgroup root that `down` empties and removes.
#
# Environment: CONTROLPLANE_BIN, NODE_BIN, TOOLS_BIN (default: under target/); NODE_OWNER_PID:
# take the cluster down when that process ends, however it ends.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=../controlplane/versions.env
. "$here/../controlplane/versions.env"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac
cp_bin="${CONTROLPLANE_BIN:-$target_dir/controlplane/$KUBE_VERSION/bin}"
node_bin="${NODE_BIN:-$target_dir/node/$KUBE_VERSION/bin}"
tools_bin="${TOOLS_BIN:-$target_dir/tools/bin}"

NODE_IP=10.200.0.1
POD_CIDR=10.88.0.0/24
SERVICE_CIDR=10.96.0.0/24
REGISTRY=127.0.0.1:5000
PAUSE_IMAGE=$REGISTRY/pause:3.10
NODE_NAME=node0

log() { printf 'node/cluster.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

cmd="${1:-}"; dir="${2:-}"
[ -n "$cmd" ] && [ -n "$dir" ] || die "usage: $0 up|down|exec DIR [CMD...]"
dir="$(mkdir -p "$dir" && cd "$dir" && pwd)"
shift 2

holder_pid() { cat "$dir/pids/holder" 2>/dev/null; }
in_ns() { nsenter --target "$(holder_pid)" --net --mount --wd="$PWD" -- "$@"; }

# start NAME CMD...: a component in the namespaces, its output in DIR/logs/NAME.log.
start() {
  local name=$1; shift
  nsenter --target "$(holder_pid)" --net --mount -- "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/pids/$name"
  disown
}

# wait_for WHAT SECONDS CMD...: until CMD succeeds, or fail with the named log's tail.
wait_for() {
  local what=$1 secs=$2; shift 2
  local i
  for ((i = 0; i < secs * 5; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "$what did not come up in ${secs}s; last lines of its log:"
  tail -n 30 "$dir/logs/$what.log" >&2 || true
  return 1
}

kubectl_() { in_ns "$cp_bin/kubectl" --kubeconfig "$dir/admin.kubeconfig" "$@"; }

kubeconfig() { # USER TOKEN
  cat <<YAML
apiVersion: v1
kind: Config
clusters:
- name: node
  cluster: {server: "https://$NODE_IP:6443", certificate-authority: "$dir/pki/ca.crt"}
users:
- name: $1
  user: {token: "$2"}
contexts:
- name: node
  context: {cluster: node, user: $1}
current-context: node
YAML
}

make_pki() {
  local pki=$dir/pki
  mkdir -p "$pki"
  cat >"$pki/openssl.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:$NODE_IP,IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
CNF
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  (
    cd "$pki"
    openssl req -x509 -config openssl.cnf -extensions v3_ca "${ec[@]}" -keyout ca.key -out ca.crt -days 365 -subj /CN=node-test-ca
    openssl req -new -config openssl.cnf "${ec[@]}" -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 8)" -days 365 \
      -extfile openssl.cnf -extensions v3_server -out apiserver.crt
    openssl ecparam -name prime256v1 -genkey -noout -out sa.key
    openssl ec -in sa.key -pubout -out sa.pub
  ) >/dev/null 2>&1 || die "openssl failed (is it installed?)"
}

up() {
  for b in "$cp_bin/etcd" "$cp_bin/kube-apiserver" "$cp_bin/kube-controller-manager" "$cp_bin/kubectl" \
    "$node_bin/kubelet" "$node_bin/kube-scheduler" "$node_bin/kube-proxy" "$node_bin/pause" "$tools_bin/crane"; do
    [ -x "$b" ] || die "missing $b (tests/controlplane/build.sh, tests/node/build.sh, tests/tools/build.sh)"
  done
  for t in containerd containerd-shim-runc-v2 runc iptables nsenter unshare openssl ip; do
    command -v "$t" >/dev/null || die "'$t' not found: apt-get install containerd runc containernetworking-plugins iptables"
  done
  local cni_bin=
  for d in /usr/lib/cni /opt/cni/bin; do [ -x "$d/bridge" ] && [ -x "$d/loopback" ] && cni_bin=$d && break; done
  [ -n "$cni_bin" ] || die "CNI plugins bridge and loopback not found: apt-get install containernetworking-plugins"
  [ -d /sys/fs/cgroup/pids ] || [ -f /sys/fs/cgroup/cgroup.controllers ] || die "no cgroup hierarchy at /sys/fs/cgroup"

  mkdir -p "$dir/pids" "$dir/logs" "$dir/run"
  local id; id="$(basename "$dir" | tr -c 'a-zA-Z0-9\n' '-')"
  echo "dynamics-node-$id" >"$dir/cgroup-root"

  # The holder: a process that only keeps the two namespaces alive.
  unshare --net --mount --propagation private -- sleep infinity </dev/null >/dev/null 2>&1 &
  echo $! >"$dir/pids/holder"
  sleep 0.2
  kill -0 "$(holder_pid)" || die "unshare failed (root is needed)"
  in_ns mount -t tmpfs -o mode=0755 node-state "$dir/run"
  # Paths that containerd, the CNI plugins and the kubelet use whatever they are told (pod
  # network namespaces, shim sockets, CNI results, device plugins, pod log links): a tmpfs of
  # the node's own over each, so nothing they write outlives the node or meets another's.
  local p
  for p in /run/containerd /run/netns /var/lib/cni /var/lib/kubelet /var/log/pods /var/log/containers; do
    mkdir -p "$p"
    in_ns mount -t tmpfs -o mode=0755 node-state "$p"
  done
  in_ns ip link set lo up
  in_ns ip link add node0 type veth peer name node0-peer
  in_ns ip link set node0-peer up
  in_ns ip addr add "$NODE_IP/32" dev node0
  in_ns ip link set node0 up
  # Some components look for a default route to pick their address.
  in_ns ip route add default dev node0
  in_ns sysctl -qw net.ipv4.ip_forward=1

  make_pki
  local admin kubelet_t scheduler_t proxy_t cm_t
  admin=$(openssl rand -hex 16); kubelet_t=$(openssl rand -hex 16); scheduler_t=$(openssl rand -hex 16)
  proxy_t=$(openssl rand -hex 16); cm_t=$(openssl rand -hex 16)
  # Static tokens: enough identity for a test node (the Node authorizer needs system:node:NAME).
  umask 077
  cat >"$dir/tokens.csv" <<CSV
$admin,admin,admin,system:masters
$kubelet_t,system:node:$NODE_NAME,kubelet,system:nodes
$scheduler_t,system:kube-scheduler,kube-scheduler
$proxy_t,system:kube-proxy,kube-proxy
$cm_t,system:kube-controller-manager,kube-controller-manager
CSV
  kubeconfig admin "$admin" >"$dir/admin.kubeconfig"
  kubeconfig "system:node:$NODE_NAME" "$kubelet_t" >"$dir/kubelet.kubeconfig"
  kubeconfig system:kube-scheduler "$scheduler_t" >"$dir/scheduler.kubeconfig"
  kubeconfig system:kube-proxy "$proxy_t" >"$dir/proxy.kubeconfig"
  kubeconfig system:kube-controller-manager "$cm_t" >"$dir/cm.kubeconfig"
  umask 022

  log "etcd, kube-apiserver"
  start etcd "$cp_bin/etcd" --name=node --data-dir="$dir/run/etcd" \
    --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
    --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
    --initial-cluster=node=http://127.0.0.1:2380 --unsafe-no-fsync --log-level=warn
  start kube-apiserver "$cp_bin/kube-apiserver" --etcd-servers=http://127.0.0.1:2379 \
    --bind-address=0.0.0.0 --advertise-address="$NODE_IP" --secure-port=6443 \
    --cert-dir="$dir/pki" --tls-cert-file="$dir/pki/apiserver.crt" --tls-private-key-file="$dir/pki/apiserver.key" \
    --client-ca-file="$dir/pki/ca.crt" --token-auth-file="$dir/tokens.csv" --anonymous-auth=false \
    --authorization-mode=Node,RBAC --service-account-key-file="$dir/pki/sa.pub" \
    --service-account-signing-key-file="$dir/pki/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range="$SERVICE_CIDR" --allow-privileged=true --profiling=false \
    --kubelet-preferred-address-types=InternalIP
  wait_for kube-apiserver 90 kubectl_ get --raw /readyz

  log "kube-controller-manager, kube-scheduler"
  start kube-controller-manager "$cp_bin/kube-controller-manager" --kubeconfig="$dir/cm.kubeconfig" \
    --secure-port=0 --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$dir/pki/sa.key" --root-ca-file="$dir/pki/ca.crt" \
    --cluster-cidr="$POD_CIDR" --allocate-node-cidrs=false --controllers='*,-nodeipam'
  start kube-scheduler "$node_bin/kube-scheduler" --kubeconfig="$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig="$dir/scheduler.kubeconfig" --authorization-kubeconfig="$dir/scheduler.kubeconfig" \
    --secure-port=0 --leader-elect=false

  log "registry on $REGISTRY, pause image"
  start registry "$tools_bin/crane" registry serve --address "$REGISTRY"
  wait_for registry 20 in_ns "$tools_bin/crane" catalog --insecure "$REGISTRY"
  mkdir -p "$dir/pause"
  tar --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$node_bin" -cf "$dir/pause/layer.tar" pause
  in_ns "$tools_bin/crane" append --insecure --oci-empty-base -f "$dir/pause/layer.tar" -t "$PAUSE_IMAGE" >/dev/null
  in_ns "$tools_bin/crane" mutate --insecure --entrypoint /pause --user 65535 "$PAUSE_IMAGE" >/dev/null

  log "containerd"
  local cd_dir=$dir/run/containerd
  mkdir -p "$dir/containerd/certs.d/$REGISTRY" "$dir/cni/net.d"
  cat >"$dir/containerd/certs.d/$REGISTRY/hosts.toml" <<TOML
server = "http://$REGISTRY"
[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
TOML
  cat >"$dir/containerd/config.toml" <<TOML
version = 2
root = "$cd_dir/root"
state = "$cd_dir/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$cd_dir/containerd.sock"
[ttrpc]
  address = "$cd_dir/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Not allowed here to lower a process's oom_score_adj below containerd's own (no
  # CAP_SYS_RESOURCE over it): clamp instead of failing every sandbox.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$dir/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "$cd_dir/runc"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$dir/containerd/certs.d"
TOML
  # hairpinMode: a pod may reach itself through a Service (kube-proxy masquerades all).
  cat >"$dir/cni/net.d/10-bridge.conflist" <<JSON
{"cniVersion": "0.4.0", "name": "node", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": "$dir/run/cni-ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
JSON
  start containerd containerd --config "$dir/containerd/config.toml"
  wait_for containerd 30 in_ns test -S "$cd_dir/containerd.sock"

  log "kubelet, kube-proxy"
  local cgroup_root; cgroup_root="/$(cat "$dir/cgroup-root")"
  # The kubelet wants its cgroup root to exist in every hierarchy; cpuset needs its sets filled.
  local h
  for h in /sys/fs/cgroup/*/; do
    case "$h" in */unified/) continue ;; esac
    mkdir -p "$h$cgroup_root"
    if [ -f "${h}cpuset.cpus" ]; then
      cat "${h}cpuset.cpus" >"$h$cgroup_root/cpuset.cpus"
      cat "${h}cpuset.mems" >"$h$cgroup_root/cpuset.mems"
    fi
  done
  : >"$dir/resolv.conf"
  cat >"$dir/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 and Debian's containerd 1.6 (no RuntimeConfig call): both still work
# with this kubelet when asked for.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $cgroup_root
containerRuntimeEndpoint: unix://$cd_dir/containerd.sock
address: $NODE_IP
readOnlyPort: 0
# The kubelet's port is reachable only inside the node's namespace.
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
resolvConf: $dir/resolv.conf
# Pod logs inside the state tmpfs, like everything else the node writes.
podLogsDir: $dir/run/pod-logs
failSwapOn: false
# A shared test machine: never evict for disk or memory another process uses.
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
localStorageCapacityIsolation: false
protectKernelDefaults: false
serializeImagePulls: false
syncFrequency: 5s
fileCheckFrequency: 5s
YAML
  start kubelet "$node_bin/kubelet" --config="$dir/kubelet.yaml" --kubeconfig="$dir/kubelet.kubeconfig" \
    --root-dir="$dir/run/kubelet" --cert-dir="$dir/run/kubelet-pki" --hostname-override="$NODE_NAME" \
    --node-ip="$NODE_IP" --v=1
  cat >"$dir/proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $dir/proxy.kubeconfig}
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
# Pod -> Service -> pod on the same bridge needs the reply to come back through the node.
iptables: {masqueradeAll: true}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack: {maxPerCore: 0}
YAML
  start kube-proxy "$node_bin/kube-proxy" --config="$dir/proxy.yaml"
  wait_for kubelet 90 kubectl_ wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s

  # A test process killed outright (a CI timeout) runs no clean-up of its own: when the owner
  # goes, this watcher takes the cluster down.
  if [ -n "${NODE_OWNER_PID:-}" ]; then
    (
      while kill -0 "$NODE_OWNER_PID" 2>/dev/null; do sleep 2; done
      "$0" down "$dir" >>"$dir/logs/reaper.log" 2>&1
    ) </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/pids/reaper"
    disown
  fi

  cat >"$dir/env" <<ENV
KUBECONFIG=$dir/admin.kubeconfig
NODE_IP=$NODE_IP
REGISTRY=$REGISTRY
HOLDER_PID=$(holder_pid)
ENV
  log "up: node $NODE_NAME Ready; KUBECONFIG=$dir/admin.kubeconfig (inside: $0 exec $dir CMD)"
}

# Every process in the node's namespaces (containerd's shims included) and every pod process.
node_pids() {
  local h; h=$(holder_pid)
  local net mnt p
  net=$(readlink "/proc/$h/ns/net") || return 0
  mnt=$(readlink "/proc/$h/ns/mnt")
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [ "$p" = "$h" ] && continue
    local n m
    n=$(readlink "/proc/$p/ns/net" 2>/dev/null) || continue
    m=$(readlink "/proc/$p/ns/mnt" 2>/dev/null) || continue
    if [ "$n" = "$net" ] || [ "$m" = "$mnt" ]; then echo "$p"; fi
  done
}

cgroup_dirs() {
  local root; root=$(cat "$dir/cgroup-root" 2>/dev/null) || return 0
  local c
  for c in /sys/fs/cgroup/*/"$root" /sys/fs/cgroup/"$root"; do
    [ -d "$c" ] && find "$c" -depth -type d
  done
}

down() {
  [ -n "$(holder_pid)" ] || { log "nothing to stop in $dir"; return 0; }
  if kill -0 "$(holder_pid)" 2>/dev/null; then
    # The kubelet first, so it restarts nothing; then the pods' processes; then the rest.
    local n
    for n in reaper kubelet kube-proxy kube-scheduler kube-controller-manager; do
      [ -f "$dir/pids/$n" ] && kill "$(cat "$dir/pids/$n")" 2>/dev/null || true
    done
    local d
    for _ in 1 2 3; do
      for d in $(cgroup_dirs); do
        [ -f "$d/cgroup.procs" ] && xargs -r kill -9 <"$d/cgroup.procs" 2>/dev/null || true
      done
      sleep 0.2
    done
    for _ in 1 2 3 4 5; do
      local pids; pids=$(node_pids)
      [ -z "$pids" ] && break
      # shellcheck disable=SC2086
      kill -9 $pids 2>/dev/null || true
      sleep 0.3
    done
    kill -9 "$(holder_pid)" 2>/dev/null || true
    wait "$(holder_pid)" 2>/dev/null || true
  fi
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    local left=0
    for d in $(cgroup_dirs); do rmdir "$d" 2>/dev/null || left=1; done
    [ "$left" = 0 ] && break
    sleep 0.5
  done
  [ -z "$(cgroup_dirs)" ] || log "WARNING: cgroups left: $(cgroup_dirs | tr '\n' ' ')"
  rm -f "$dir/pids/"*
  log "down: $dir"
}

case "$cmd" in
  # A start that fails half-way leaves nothing behind.
  up)
    [ -z "$(holder_pid)" ] || die "$dir already holds a cluster (down it first)"
    trap 'rc=$?; if [ "$rc" != 0 ]; then down; fi; exit "$rc"' EXIT
    up
    ;;
  down) down ;;
  exec) in_ns "$@" ;;
  *) die "unknown command $cmd" ;;
esac
