#!/usr/bin/env bash
# A real single-node Kubernetes + S3-compatible storage on this machine.
#   hack/cluster.sh up       build (cached) and start everything; idempotent
#   hack/cluster.sh down     stop exactly what `up` started and clean up after it
#   hack/cluster.sh status   what runs, and the versions
#   hack/cluster.sh env      `export` lines for KUBECONFIG, storage and images
#   hack/cluster.sh outage kube-apiserver|garage SECONDS
#                            stop one, wait, start it again (the outage tests)
#
# Components: containerd + runc + CNI bridge (Debian), etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubelet, kube-proxy (built from the
# k8s.io/kubernetes module), CoreDNS (cluster DNS), Garage (S3), Traefik (the
# ingress controller, HTTPS on 127.0.0.1:8443) and cert-manager (certificates for
# app hosts from a local CA). Nothing listens on a non-loopback address except on
# the pod bridge this script creates.
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

# Stop order is the reverse of start order.
SERVICES=(containerd etcd garage kube-apiserver kube-controller-manager kube-scheduler coredns kubelet kube-proxy cert-manager traefik)


# ---------------------------------------------------------------- processes --

# start NAME BINARY ARGS...: run detached, log to a file, remember PID and binary.
start() {
  local name="$1" bin="$2"; shift 2
  mkdir -p "$PIDS" "$LOGS"
  setsid "$bin" "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null &
  echo "$!" > "$PIDS/$name.pid"
  readlink -f "$bin" > "$PIDS/$name.exe"
}

# pid_of NAME: the PID if that process is alive and still runs our binary.
pid_of() {
  local name="$1" pid exe
  [[ -f "$PIDS/$name.pid" ]] || return 1
  pid="$(cat "$PIDS/$name.pid")"; exe="$(cat "$PIDS/$name.exe" 2>/dev/null || true)"
  [[ -n "$pid" ]] && alive "$pid" || return 1
  [[ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" == "$exe" ]] || return 1
  echo "$pid"
}

stop() {
  local name="$1" pid
  if pid="$(pid_of "$name")"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    log "stopped $name (pid $pid)"
  fi
  rm -f "$PIDS/$name.pid" "$PIDS/$name.exe"
}

# ------------------------------------------------------------------ cleanup --

# Kill every process in our pod cgroups: containers of pods the kubelet started.
kill_pod_processes() {
  local d
  for d in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do
    [[ -d "$d" ]] || continue
    find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u | xargs -r kill -KILL 2>/dev/null || true
  done
  # containerd shims serving our socket (and nobody else's). stderr is redirected
  # first so that a process gone since the glob goes unreported.
  local p
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' 2>/dev/null < "$p/cmdline" | grep -qF -- "-address $CONTAINERD_SOCK "; then
      kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
}

remove_pod_cgroups() {
  local d
  for d in /sys/fs/cgroup/*/"$CGROUP_ROOT"; do
    if [[ -d "$d" ]]; then find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done
}

unmount_under() {
  local dir="$1"
  local m
  for m in $(findmnt -rn -o TARGET | { grep -E "^$dir(/|$)" || true; } | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done
}

clean_network() {
  # kube-proxy removes its own iptables chains.
  if [[ -x "$K8S_BIN/kube-proxy" ]]; then "$K8S_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true; fi
  # Pod network namespaces live under our run dir (netns_mounts_under_state_dir).
  if [[ -d "$RUN_DIR/containerd/netns" ]]; then
    local ns
    for ns in "$RUN_DIR"/containerd/netns/*; do
      if [[ -e "$ns" ]]; then umount "$ns" 2>/dev/null || true; rm -f "$ns"; fi
    done
  fi
  if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link del "$BRIDGE"; fi
  while iptables -D FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -m comment --comment aether-local -j DROP 2>/dev/null; do :; done
  ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null || true
  if [[ -f "$STATE_DIR/sysctl.saved" ]]; then
    while IFS='=' read -r k v; do sysctl -qw "$k=$v" >/dev/null 2>&1 || true; done < "$STATE_DIR/sysctl.saved"
    rm -f "$STATE_DIR/sysctl.saved"
  fi
}

cmd_down() {
  local start=$SECONDS i
  for (( i=${#SERVICES[@]}-1; i>=0; i-- )); do
    [[ "${SERVICES[$i]}" == containerd ]] && kill_pod_processes
    stop "${SERVICES[$i]}"
  done
  kill_pod_processes
  unmount_under "$STATE_DIR"
  unmount_under "$RUN_DIR"
  remove_pod_cgroups
  clean_network
  log "down in $((SECONDS - start))s"
}

# -------------------------------------------------------------- certificates --

# cert NAME CN [O] [SAN]: an EC key and a certificate signed by our CA.
cert() {
  local name="$1" cn="$2" org="${3:-}" san="${4:-}" subj="/CN=$2"
  [[ -n "$org" ]] && subj="/O=$org/CN=$cn"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$subj" \
    -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
  local ext="$PKI/$name.ext"
  { echo "basicConstraints=CA:FALSE"; echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [[ -n "$san" ]]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$san"
    else echo "extendedKeyUsage=clientAuth"; fi; } > "$ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$ext"
}

kubeconfig() {
  local name="$1" out="$2"
  local k="$STATE_DIR/tmp.kubeconfig"
  rm -f "$k"
  kubectl config --kubeconfig "$k" set-cluster local --server "$API_URL" --certificate-authority "$PKI/ca.crt" --embed-certs >/dev/null
  kubectl config --kubeconfig "$k" set-credentials "$name" --client-certificate "$PKI/$name.crt" --client-key "$PKI/$name.key" --embed-certs >/dev/null
  kubectl config --kubeconfig "$k" set-context local --cluster local --user "$name" >/dev/null
  kubectl config --kubeconfig "$k" use-context local >/dev/null
  mv "$k" "$out"; chmod 600 "$out"
}

make_pki() {
  mkdir -p "$PKI"
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=aether-local-ca" -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  cert apiserver kube-apiserver "" "IP:$BRIDGE_IP,IP:$API_SERVICE_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert kubelet-serving "system:node:$NODE_NAME" system:nodes "IP:$BRIDGE_IP,DNS:$NODE_NAME"
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert admin aether-admin system:masters
  cert kubelet "system:node:$NODE_NAME" system:nodes
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  cert proxy system:kube-proxy
  cert coredns system:coredns
  cert cert-manager aether-local:cert-manager
  kubeconfig admin "$KUBECONFIG_ADMIN"
  local c; for c in kubelet controller-manager scheduler proxy coredns cert-manager; do kubeconfig "$c" "$STATE_DIR/$c.kubeconfig"; done
  # The CA of app hosts' certificates (cert-manager's ClusterIssuer signs with it);
  # not the cluster's own CA, which clients of the API server trust.
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=aether-local-ingress-ca" -keyout "$PKI/ingress-ca.key" -out "$PKI/ingress-ca.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

# ------------------------------------------------------------------- phases --

check_binaries() {
  local b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
    [[ -x "$K8S_BIN/$b" ]] || die "missing $K8S_BIN/$b: run hack/build-components.sh"
  done
  [[ -x "$ETCD_BIN/etcd" ]] || die "missing $ETCD_BIN/etcd: run hack/build-components.sh"
  [[ -x "$COREDNS_BIN/coredns" ]] || die "missing $COREDNS_BIN/coredns: run hack/build-components.sh"
  [[ -x "$GARAGE_BIN/garage" ]] || die "missing $GARAGE_BIN/garage: run hack/build-components.sh"
  [[ -x "$TRAEFIK_BIN/traefik" ]] || die "missing $TRAEFIK_BIN/traefik: run hack/build-components.sh"
  [[ -x "$CERT_MANAGER_BIN/cert-manager-controller" ]] || die "missing $CERT_MANAGER_BIN/cert-manager-controller: run hack/build-components.sh"
  [[ -d "$GATEWAY_API_CRDS" ]] || die "missing $GATEWAY_API_CRDS: run hack/build-components.sh"
}

prepare_host() {
  # Fresh state every start: an unclean stop may have left anything behind.
  rm -rf "$STATE_DIR" "$RUN_DIR"
  mkdir -p "$STATE_DIR" "$RUN_DIR" "$PIDS" "$LOGS"
  # Pods reach Services (DNAT on the host) only with forwarding and bridge netfilter.
  : > "$STATE_DIR/sysctl.saved"
  local kv k
  for kv in net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1; do
    k="${kv%%=*}"
    echo "$k=$(sysctl -n "$k")" >> "$STATE_DIR/sysctl.saved"
    sysctl -qw "$kv" || die "cannot set $kv"
  done
  # The bridge exists before the apiserver, which binds and advertises its address.
  ip link add "$BRIDGE" type bridge
  ip addr add "$BRIDGE_IP/16" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Service IPs are only ever answered on this machine: route them to the bridge, so
  # nothing aimed at one can leave through the default route before kube-proxy syncs,
  # and keep pod traffic from being forwarded off the machine.
  ip route add "$SERVICE_CIDR" dev "$BRIDGE"
  iptables -I FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -m comment --comment aether-local -j DROP
  make_pki
}

start_containerd() {
  mkdir -p "$STATE_DIR/cni" "$RUN_DIR/containerd"
  cat > "$STATE_DIR/cni/10-aether.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "aether", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$BRIDGE_IP"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$STATE_DIR/cni-ipam"}},
  {"type": "loopback"}]}
EOF
  cat > "$STATE_DIR/containerd.toml" <<EOF
version = 2
root = "$STATE_DIR/containerd"
state = "$RUN_DIR/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "$CONTAINERD_SOCK"
[ttrpc]
  address = "$CONTAINERD_SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE_DIR/containerd-opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "aether.local/pause:3.10"
  # This VM lacks CAP_SYS_RESOURCE: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE_DIR/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
EOF
  start containerd "$(command -v containerd)" --config "$STATE_DIR/containerd.toml"
  wait_for containerd 30 ctr --address "$CONTAINERD_SOCK" version
  local tar tars
  tars="$("$HACK_DIR/images.sh")"   # a failed build stops `up` (a `for` list would not)
  for tar in $tars; do
    ctr --address "$CONTAINERD_SOCK" -n k8s.io images import --no-unpack=false "$tar" >/dev/null
  done
}

start_etcd() {
  start etcd "$ETCD_BIN/etcd" --name "$NODE_NAME" --data-dir "$STATE_DIR/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster "$NODE_NAME=http://127.0.0.1:2380" --listen-metrics-urls http://127.0.0.1:2381 \
    --quota-backend-bytes 2147483648 --log-level warn
  wait_for etcd 30 curl -fsS http://127.0.0.1:2381/health
}

garage() { "$GARAGE_BIN/garage" -c "$STATE_DIR/garage/garage.toml" "$@"; }

start_garage() {
  mkdir -p "$STATE_DIR/garage/meta" "$STATE_DIR/garage/data"
  cat > "$STATE_DIR/garage/garage.toml" <<EOF
metadata_dir = "$STATE_DIR/garage/meta"
data_dir = "$STATE_DIR/garage/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_public_addr = "127.0.0.1:3901"
rpc_secret = "$(openssl rand -hex 32)"

[s3_api]
s3_region = "$S3_REGION"
api_bind_addr = "$BRIDGE_IP:3900"
root_domain = ".s3.aether.local"

[admin]
api_bind_addr = "127.0.0.1:3903"
EOF
  chmod 600 "$STATE_DIR/garage/garage.toml"
  run_garage
  local node_id
  node_id="$(garage node id -q 2>/dev/null | cut -d@ -f1)"
  garage layout assign -z local -c 10G "$node_id" >/dev/null
  garage layout apply --version 1 >/dev/null
  garage bucket create "$S3_BUCKET" >/dev/null
  local key_id secret
  key_id="GK$(openssl rand -hex 12)"; secret="$(openssl rand -hex 32)"
  garage key import --yes -n aether-local "$key_id" "$secret" >/dev/null
  garage bucket allow --read --write --owner "$S3_BUCKET" --key "$key_id" >/dev/null
  printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$key_id" "$secret" > "$STATE_DIR/garage/credentials"
  chmod 600 "$STATE_DIR/garage/credentials"
  wait_for "garage s3 api" 30 curl -s -o /dev/null "$S3_ENDPOINT"
}

# The Garage server on the configuration (and data) start_garage wrote.
run_garage() {
  start garage "$GARAGE_BIN/garage" -c "$STATE_DIR/garage/garage.toml" server
  wait_for "garage rpc" 30 garage status
}

run_apiserver() {
  start kube-apiserver "$K8S_BIN/kube-apiserver" \
    --etcd-servers http://127.0.0.1:2379 \
    --bind-address "$BRIDGE_IP" --advertise-address "$BRIDGE_IP" --secure-port 6443 \
    --tls-cert-file "$PKI/apiserver.crt" --tls-private-key-file "$PKI/apiserver.key" \
    --client-ca-file "$PKI/ca.crt" \
    --service-account-key-file "$PKI/sa.pub" --service-account-signing-key-file "$PKI/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --kubelet-client-certificate "$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$PKI/ca.crt" \
    --kubelet-preferred-address-types InternalIP --profiling=false
  wait_for kube-apiserver 90 kubectl_admin get --raw /readyz
}

start_control_plane() {
  run_apiserver
  local cm="$STATE_DIR/controller-manager.kubeconfig" sch="$STATE_DIR/scheduler.kubeconfig"
  start kube-controller-manager "$K8S_BIN/kube-controller-manager" \
    --kubeconfig "$cm" --authentication-kubeconfig "$cm" --authorization-kubeconfig "$cm" \
    --bind-address 127.0.0.1 --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$PKI/sa.key" --root-ca-file "$PKI/ca.crt" \
    --service-cluster-ip-range "$SERVICE_CIDR" --profiling=false
  start kube-scheduler "$K8S_BIN/kube-scheduler" \
    --kubeconfig "$sch" --authentication-kubeconfig "$sch" --authorization-kubeconfig "$sch" \
    --bind-address 127.0.0.1 --leader-elect=false --profiling=false
}

# Cluster DNS runs on the host like the control plane, answering on the bridge
# address the kubelet hands pods as their nameserver. Its identity may only
# list and watch what the kubernetes plugin reads.
start_coredns() {
  kubectl_admin apply --server-side --field-manager aether-hack -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "system:coredns"}
rules:
- {apiGroups: [""], resources: [services, namespaces], verbs: [list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "system:coredns"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "system:coredns"}
EOF
  # No health, metrics or loop plugins: each would listen or send probes of its own.
  # `ready` (loopback) answers 200 once the kubernetes plugin has synced.
  cat > "$STATE_DIR/Corefile" <<EOF
.:53 {
    bind $CLUSTER_DNS_IP
    errors
    ready 127.0.0.1:8181
    kubernetes $CLUSTER_DOMAIN in-addr.arpa ip6.arpa {
        kubeconfig $STATE_DIR/coredns.kubeconfig local
        fallthrough in-addr.arpa ip6.arpa
    }
    forward . /etc/resolv.conf
    cache 30
}
EOF
  start coredns "$COREDNS_BIN/coredns" -conf "$STATE_DIR/Corefile"
  wait_for coredns 60 curl -fsS http://127.0.0.1:8181/ready
}

# The kubelet's cgroupRoot must exist in every v1 hierarchy (v2: the one tree).
make_pod_cgroups() {
  local h
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [[ -f "$h/cgroup.procs" ]] || continue
    mkdir -p "$h$CGROUP_ROOT"
    if [[ -f "$h/cpuset.cpus" ]]; then
      cat "$h/cpuset.cpus" > "$h$CGROUP_ROOT/cpuset.cpus"
      cat "$h/cpuset.mems" > "$h$CGROUP_ROOT/cpuset.mems"
    fi
  done
}

start_node() {
  mkdir -p "$STATE_DIR/kubelet"
  make_pod_cgroups
  cat > "$STATE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $BRIDGE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP_ROOT
failCgroupV1: false
failSwapOn: false
clusterDomain: $CLUSTER_DOMAIN
clusterDNS: [$CLUSTER_DNS_IP]
# Imported images cannot be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
serializeImagePulls: false
EOF
  start kubelet "$K8S_BIN/kubelet" --config "$STATE_DIR/kubelet.yaml" \
    --kubeconfig "$STATE_DIR/kubelet.kubeconfig" --root-dir "$STATE_DIR/kubelet" \
    --node-ip "$BRIDGE_IP" --hostname-override "$NODE_NAME"

  cat > "$STATE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $STATE_DIR/proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$BRIDGE_IP/32"]
conntrack: {maxPerCore: 0}
EOF
  start kube-proxy "$K8S_BIN/kube-proxy" --config "$STATE_DIR/kube-proxy.yaml"
  wait_for "node $NODE_NAME to register" 60 kubectl_admin get node "$NODE_NAME"
  kubectl_admin wait --for=condition=Ready "node/$NODE_NAME" --timeout=120s >/dev/null
  wait_for "default service account" 60 kubectl_admin -n default get serviceaccount default
}

# cert-manager's controller on the host, as its own user, with a CA ClusterIssuer
# (aether-local-ca) signing with the local ingress CA.
start_cert_manager() {
  KUBECONFIG="$KUBECONFIG_ADMIN" apply_owned -f "$CERT_MANAGER_BIN/crds/"
  kubectl_admin wait --for=condition=Established crd/certificates.cert-manager.io \
    crd/clusterissuers.cert-manager.io crd/certificaterequests.cert-manager.io --timeout=60s >/dev/null
  kubectl_admin apply --server-side --field-manager aether-hack -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: cert-manager}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "aether-local:cert-manager"}
rules:
- {apiGroups: [cert-manager.io], resources: ["*"], verbs: ["*"]}
- {apiGroups: [""], resources: [secrets], verbs: [get, list, watch, create, update, patch, delete]}
- {apiGroups: ["", events.k8s.io], resources: [events], verbs: [create, patch]}
- {apiGroups: [""], resources: [pods, services, configmaps], verbs: [get, list, watch]}
- {apiGroups: [networking.k8s.io], resources: [ingresses], verbs: [get, list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "aether-local:cert-manager"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "aether-local:cert-manager"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: "aether-local:cert-manager"}
EOF
  kubectl_admin -n cert-manager create secret tls aether-local-ingress-ca \
    --cert "$PKI/ingress-ca.crt" --key "$PKI/ingress-ca.key" --dry-run=client -o yaml |
    kubectl_admin apply --server-side --field-manager aether-hack -f - >/dev/null
  kubectl_admin apply --server-side --field-manager aether-hack -f - >/dev/null <<EOF
apiVersion: cert-manager.io/v1
kind: ClusterIssuer
metadata: {name: aether-local-ca}
spec:
  ca: {secretName: aether-local-ingress-ca}
EOF
  start cert-manager "$CERT_MANAGER_BIN/cert-manager-controller" \
    --kubeconfig "$STATE_DIR/cert-manager.kubeconfig" --cluster-resource-namespace cert-manager
  wait_for "the local CA issuer" 60 sh -c \
    "kubectl --kubeconfig '$KUBECONFIG_ADMIN' get clusterissuer aether-local-ca -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
}

# Traefik on the host, as a ServiceAccount that may read what an ingress controller
# reads, behind the default IngressClass; HTTPS on 127.0.0.1:8443, HTTP on :8088.
# It is also the Gateway API controller of GatewayClass traefik: Gateway
# aether-ingress/aether terminates TLS for *.$GATEWAY_DOMAIN on 127.0.0.1:9443,
# with a wildcard certificate from the local CA issuer.
start_traefik() {
  KUBECONFIG="$KUBECONFIG_ADMIN" apply_owned -f "$GATEWAY_API_CRDS/"
  kubectl_admin wait --for=condition=Established crd/gatewayclasses.gateway.networking.k8s.io \
    crd/gateways.gateway.networking.k8s.io crd/httproutes.gateway.networking.k8s.io --timeout=60s >/dev/null
  kubectl_admin apply --server-side --field-manager aether-hack -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: aether-ingress, labels: {aether.dev/ingress: "true"}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: traefik, namespace: aether-ingress}
---
apiVersion: v1
kind: Secret
type: kubernetes.io/service-account-token
metadata: {name: traefik-token, namespace: aether-ingress, annotations: {kubernetes.io/service-account.name: traefik}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "aether-local:traefik"}
rules:
- {apiGroups: [""], resources: [services, secrets, nodes], verbs: [get, list, watch]}
- {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
- {apiGroups: [networking.k8s.io], resources: [ingresses, ingressclasses], verbs: [get, list, watch]}
- {apiGroups: [networking.k8s.io], resources: [ingresses/status], verbs: [update]}
- {apiGroups: [""], resources: [namespaces, configmaps], verbs: [get, list, watch]}
- {apiGroups: [gateway.networking.k8s.io], resources: [gatewayclasses, gateways, httproutes, grpcroutes, referencegrants, backendtlspolicies], verbs: [get, list, watch]}
- {apiGroups: [gateway.networking.k8s.io], resources: [gatewayclasses/status, gateways/status, httproutes/status, grpcroutes/status, backendtlspolicies/status], verbs: [update]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "aether-local:traefik"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "aether-local:traefik"}
subjects:
- {kind: ServiceAccount, name: traefik, namespace: aether-ingress}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: traefik
  annotations: {ingressclass.kubernetes.io/is-default-class: "true"}
spec: {controller: traefik.io/ingress-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: traefik}
spec: {controllerName: traefik.io/gateway-controller}
---
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: aether-gateway, namespace: aether-ingress}
spec:
  secretName: aether-gateway-tls
  dnsNames: ["*.$GATEWAY_DOMAIN"]
  issuerRef: {group: cert-manager.io, kind: ClusterIssuer, name: aether-local-ca}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: aether, namespace: aether-ingress}
spec:
  gatewayClassName: traefik
  listeners:
  - name: https
    protocol: HTTPS
    port: 9443
    hostname: "*.$GATEWAY_DOMAIN"
    tls: {mode: Terminate, certificateRefs: [{kind: Secret, name: aether-gateway-tls}]}
    allowedRoutes: {namespaces: {from: All}}
EOF
  wait_for "traefik's token" 30 sh -c \
    "kubectl --kubeconfig '$KUBECONFIG_ADMIN' -n aether-ingress get secret traefik-token -o jsonpath='{.data.token}' | grep -q ."
  local token
  token="$(kubectl_admin -n aether-ingress get secret traefik-token -o jsonpath='{.data.token}' | base64 -d)"
  ( umask 077; cat > "$STATE_DIR/traefik.yml" <<EOF
global: {checkNewVersion: false, sendAnonymousUsage: false}
entryPoints:
  # Ingresses' routers go only to the entry points marked asDefault.
  web: {address: "127.0.0.1:8088", asDefault: true}
  # TLS on every router here: an Ingress's tls section only supplies certificates.
  websecure: {address: "127.0.0.1:8443", asDefault: true, http: {tls: {}}}
  # The Gateway's HTTPS listener (Traefik matches listeners to entry points by port).
  gateway: {address: "127.0.0.1:9443"}
  traefik: {address: "127.0.0.1:8089"}
ping: {entryPoint: traefik}
log: {level: INFO}
providers:
  kubernetesIngress:
    endpoint: "$API_URL"
    token: "$token"
    certAuthFilePath: "$PKI/ca.crt"
  kubernetesGateway:
    endpoint: "$API_URL"
    token: "$token"
    certAuthFilePath: "$PKI/ca.crt"
    statusAddress: {ip: 127.0.0.1}
EOF
  )
  start traefik "$TRAEFIK_BIN/traefik" --configFile "$STATE_DIR/traefik.yml"
  wait_for traefik 60 curl -fsS http://127.0.0.1:8089/ping
  wait_for "gateway aether-ingress/aether" 90 sh -c \
    "kubectl --kubeconfig '$KUBECONFIG_ADMIN' -n aether-ingress get gateway aether -o jsonpath='{.status.listeners[0].conditions[?(@.type==\"Programmed\")].status}' | grep -qx True"
}

install_crds() {
  KUBECONFIG="$KUBECONFIG_ADMIN" apply_owned -f "$REPO_ROOT/config/crd/aether.dev.yaml"
  kubectl_admin wait --for=condition=Established crd/aetherapps.aether.dev crd/aetherartifacts.aether.dev --timeout=60s >/dev/null
}

all_running() {
  local s
  for s in "${SERVICES[@]}"; do pid_of "$s" >/dev/null || return 1; done
}

cmd_up() {
  local start=$SECONDS
  phase "system packages" "$HACK_DIR/deps.sh"
  phase "components" "$HACK_DIR/build-components.sh"
  check_binaries
  # A cluster started by an older version of this script lacks what later ones
  # add (the Gateway): it is started again.
  if all_running && kubectl_admin get --raw /readyz >/dev/null 2>&1 &&
    kubectl_admin -n aether-ingress get gateway aether >/dev/null 2>&1; then
    log "already up; checking health"
  else
    phase "clean previous state" cmd_down
    phase "host network and certificates" prepare_host
    phase "containerd and images" start_containerd
    phase "etcd" start_etcd
    phase "garage (S3)" start_garage
    phase "control plane" start_control_plane
    phase "cluster DNS" start_coredns
    phase "kubelet and kube-proxy" start_node
    phase "cert-manager" start_cert_manager
    phase "traefik (ingress)" start_traefik
  fi
  kubectl_admin wait --for=condition=Ready "node/$NODE_NAME" --timeout=120s >/dev/null
  phase "CRDs" install_crds
  log "cluster up in $((SECONDS - start))s: eval \"\$(hack/cluster.sh env)\""
}

# outage COMPONENT SECONDS: stop the API server or the storage, wait, start it
# again on the same state and wait until it answers (`make chaos`'s outage tests).
cmd_outage() {
  local name="${1:-}" seconds="${2:-}"
  [[ "$seconds" =~ ^[0-9]+$ ]] || die "usage: $0 outage kube-apiserver|garage SECONDS"
  case "$name" in
    kube-apiserver | garage) ;;
    *) die "outage: only kube-apiserver or garage can be stopped, not '$name'" ;;
  esac
  pid_of "$name" >/dev/null || die "outage: $name is not running (hack/cluster.sh up)"
  stop "$name"
  sleep "$seconds"
  case "$name" in
    kube-apiserver) run_apiserver ;;
    garage)
      run_garage
      wait_for "garage s3 api" 30 curl -s -o /dev/null "$S3_ENDPOINT"
      ;;
  esac
  log "started $name again after ${seconds}s"
}

cmd_env() {
  [[ -f "$KUBECONFIG_ADMIN" && -f "$STATE_DIR/garage/credentials" ]] || die "the local cluster is not up: run hack/cluster.sh up"
  local v majors=()
  for v in "${NODE_VERSIONS[@]}"; do majors+=("${v%%.*}"); done
  echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
  echo "export AETHER_S3_ENDPOINT=$S3_ENDPOINT"
  echo "export AETHER_S3_REGION=$S3_REGION"
  echo "export AETHER_S3_BUCKET=$S3_BUCKET"
  sed 's/^/export /' "$STATE_DIR/garage/credentials"
  echo "export AETHER_NODE_IMAGE=aether.local/node:$NODE_DEFAULT_MAJOR"
  echo "export AETHER_NODE_MAJORS=\"${majors[*]}\""
  echo "export AETHER_IMAGE_PULL_POLICY=Never"
  # How the outage tests stop a component here; unset on other clusters (skipped).
  echo "export AETHER_E2E_OUTAGE=\"$HACK_DIR/cluster.sh outage\""
  # Where the ingress controller terminates TLS for app hosts, and the CA that
  # signs their certificates.
  echo "export AETHER_INGRESS_HTTPS=https://127.0.0.1:8443"
  echo "export AETHER_INGRESS_CA=$PKI/ingress-ca.crt"
  # Where the Gateway (aether-ingress/aether) terminates TLS, for hosts under
  # AETHER_GATEWAY_DOMAIN (the CA is the same): the operator routes apps' hosts by
  # HTTPRoutes to it as well as by Ingresses.
  echo "export AETHER_GATEWAY_HTTPS=https://127.0.0.1:9443"
  echo "export AETHER_GATEWAY_DOMAIN=$GATEWAY_DOMAIN"
}

cmd_status() {
  local s pid
  echo "kubernetes $K8S_VERSION, etcd $ETCD_VERSION, coredns $COREDNS_VERSION, garage $GARAGE_VERSION, traefik $TRAEFIK_VERSION, gateway-api $GATEWAY_API_VERSION, cert-manager $CERT_MANAGER_VERSION; state in $STATE_DIR"
  for s in "${SERVICES[@]}"; do
    if pid="$(pid_of "$s")"; then printf '  %-24s running (pid %s)\n' "$s" "$pid"
    else printf '  %-24s stopped\n' "$s"; fi
  done
  if kubectl_admin get --raw /readyz >/dev/null 2>&1; then
    kubectl_admin version 2>/dev/null | sed 's/^/  /'
    kubectl_admin get nodes 2>/dev/null | sed 's/^/  /'
  else
    echo "  API server not reachable"
    return 1
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  outage) shift; cmd_outage "$@" ;;
  *) echo "usage: $0 up|down|status|env|outage COMPONENT SECONDS" >&2; exit 2 ;;
esac
