#!/bin/bash
# Installs the Debian packages the test bed, the benches and CI need. Idempotent: it only calls
# apt-get when something is missing, because apt-get update alone costs several seconds.
set -euo pipefail
PACKAGES=(systemd-container mmdebstrap docker-registry skopeo umoci podman ostree zstd
  dbus-daemon dbus util-linux iproute2 openssl apache2-utils attr e2fsprogs rsync
  systemd selinux-utils policycoreutils
  qemu-system-x86 squashfs-tools socat checkpolicy semodule-utils setools  # the VM bed (scripts/testbed/vm)
  python3-minimal time)  # python3-minimal: the notify test receives sd_notify datagrams with it; time: GNU time for the bench
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
echo "install-deps: all ${#PACKAGES[@]} packages present"
