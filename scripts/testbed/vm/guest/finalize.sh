# The VM boot image's CoreOS shape, run by mmdebstrap as a customize hook: $1 is the tree,
# $2 this directory (scripts/testbed/vm/guest). Everything here is part of the cache key.
set -eu
root="$1"
guest="$2"
# /usr/local lives in /var on CoreOS, so what Ignition installs there survives a /usr swap.
mkdir -p "$root/var/usrlocal"
cp -a "$root/usr/local/." "$root/var/usrlocal/"
rm -rf "$root/usr/local"
ln -s ../var/usrlocal "$root/usr/local"
mkdir -p "$root/var/usrlocal/bin"
ln -sfn /lib/systemd/system/multi-user.target "$root/etc/systemd/system/default.target"
mkdir -p "$root/var/log/journal"
echo nip-vm > "$root/etc/hostname"
: > "$root/etc/machine-id"
# The console is the serial log: no getty on it.
ln -sfn /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
# qemu's user network: DHCP on the virtio NIC, no DNS (nothing answers; literal addresses only).
mkdir -p "$root/etc/systemd/network"
printf '[Match]\nName=en*\n\n[Network]\nDHCP=ipv4\n' > "$root/etc/systemd/network/10-nip-vm.network"
chroot "$root" systemctl enable systemd-networkd.service >/dev/null 2>&1
echo virtio_console > "$root/etc/modules-load.d/nip-vm.conf"
# SELinux enforcing with Debian's refpolicy.
sed -i 's/^SELINUX=.*/SELINUX=enforcing/; s/^SELINUXTYPE=.*/SELINUXTYPE=default/' "$root/etc/selinux/config"
# /var/usrlocal holds what /usr/local holds; without this it is var_t, which systemd may not
# execute and its generators may not read. Also in the module store, which every semodule
# transaction copies back over the contexts directory.
# The /usr/local symlink itself: lib_t is a link type every systemd helper domain may read
# (usr_t is not, and each generator and tmpfiles run would log a denial).
fcl='/usr/local	-l	system_u:object_r:lib_t:s0
/var/usrlocal(/.*)?	system_u:object_r:usr_t:s0
/var/usrlocal/bin(/.*)?	system_u:object_r:bin_t:s0
/var/usrlocal/sbin(/.*)?	system_u:object_r:bin_t:s0'
printf '%s\n' "$fcl" > "$root/etc/selinux/default/contexts/files/file_contexts.local"
if [ -d "$root/var/lib/selinux/default/active" ]; then
	printf '%s\n' "$fcl" > "$root/var/lib/selinux/default/active/file_contexts.local"
fi
# The live root: our own initramfs-tools boot script instead of live-boot (see nip-live.boot).
install -m 0644 "$guest/nip-live.boot" "$root/etc/initramfs-tools/scripts/nip-live"
printf 'virtio_pci\nvirtio_blk\nsquashfs\noverlay\n' >> "$root/etc/initramfs-tools/modules"
# As systemd sizes /run when it mounts it (initramfs-tools' own default is 10%).
sed -i 's/^#\?RUNSIZE=.*/RUNSIZE=20%/' "$root/etc/initramfs-tools/initramfs.conf"
grep -q '^RUNSIZE=' "$root/etc/initramfs-tools/initramfs.conf" || echo 'RUNSIZE=20%' >> "$root/etc/initramfs-tools/initramfs.conf"
chroot "$root" update-initramfs -u -k all >/dev/null
# Keep the image small: apt lists and caches are not needed in the guest.
rm -rf "$root/var/lib/apt/lists/"* "$root/var/cache/apt/"*.bin
# Last: the pristine /etc as ostree keeps it, the base of the 3-way /etc merge.
rm -rf "$root/usr/etc"
cp -a "$root/etc" "$root/usr/etc"
