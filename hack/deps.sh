#!/usr/bin/env bash
# Install the Debian packages the local cluster and the tests need (idempotent).
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

PACKAGES=(
  containerd runc containernetworking-plugins  # container runtime + CNI bridge
  iptables conntrack iproute2 socat ethtool    # kube-proxy, kubelet, port-forward
  zstd jq curl ca-certificates gcc libc6-dev   # images, benchmarks, pause binary
  openssl                                      # the local cluster's PKI
  e2fsprogs util-linux                         # mount/umount helpers for cleanup
  shellcheck                                   # make lint: the hack/ scripts
  musl-tools                                   # the static runtime (RUNTIME_TARGET)
  busybox-static xz-utils gpgv debian-archive-keyring  # the musl Node image
  python3-pip                                  # (pip downloads its Node build)
  buildah debootstrap                          # images from the Dockerfile, no engine
)

if apt_install "${PACKAGES[@]}"; then
  # The packaged service must not run: hack/cluster.sh starts containerd itself.
  if command -v systemctl >/dev/null && systemctl is-active -q containerd 2>/dev/null; then
    systemctl stop containerd || true; systemctl disable containerd 2>/dev/null || true
  fi
fi
command -v kubectl >/dev/null || die "kubectl is required (this machine image ships one in /usr/bin)"
command -v go >/dev/null || die "Go is required to build the Kubernetes components"
command -v cargo >/dev/null || die "cargo is required"
command -v node >/dev/null || die "Node.js is required (runtime image and examples)"
rustup target list --installed | grep -qx "$RUNTIME_TARGET" || rustup target add "$RUNTIME_TARGET"
install_cargo_deny
log "system packages and tools present"
