# initramfs-tools boot script, selected with boot=nip-live (installed as /scripts/nip-live).
# The CoreOS live-ISO shape without live-boot: / is an overlay whose lower layers are read-only
# squashfs images (the boot image on /dev/vda and, if present, the provisioning layer on
# /dev/vdb that Ignition's files were packed into) and whose upper layer is a tmpfs, so
# everything the node writes lives in RAM. /usr is then made read-only, as on ostree systems.
#
# SELinux, when the command line enables it, forces the order:
# 1. The policy is loaded here, from the image, before the tmpfs and the overlay are mounted.
#    A tmpfs inode made before any policy keeps tmpfs_t, and the overlay's / is its upper's
#    root: / and every new top-level file would be tmpfs_t, and enforcing boots fail.
# 2. The tmpfs gets rootcontext=root_t, so the upper (a directory in it) inherits root_t.
# 3. The overlay is mounted by a process that first moved itself to init_t. overlayfs opens
#    its layers' files with the mounter's credentials, and every mmap/exec through it checks
#    "fd use" of that mounter: every domain may use init_t's fds, confined ones not kernel_t's.
# systemd then loads the policy again (harmless) and relabels /dev and /run itself.

nip_wait_block() {
	# udev creates the virtio disk nodes asynchronously; give them up to 60 s (TCG is slow).
	local dev="$1" tries=600
	while [ ! -b "$dev" ] && [ "$tries" -gt 0 ]; do
		sleep 0.1
		tries=$((tries - 1))
	done
	[ -b "$dev" ]
}

nip_load_policy() {
	local lower=/run/nip-live/lower rc=0
	mount -o bind /proc "$lower/proc"
	mount -o bind /sys "$lower/sys"
	chroot "$lower" /sbin/load_policy -i || rc=$?
	umount "$lower/sys/fs/selinux"
	umount "$lower/sys"
	umount "$lower/proc"
	return $rc
}

mountroot() {
	local lower=/dev/vda prov=/dev/vdb lowers=/run/nip-live/lower selinux='' tmpfs_opts="mode=0755,size=${nip_live_rw_size:-50%}"
	case " $(cat /proc/cmdline) " in *" selinux=1 "*) selinux=y ;; esac
	for m in virtio_pci virtio_blk squashfs overlay; do modprobe -q "$m"; done
	nip_wait_block "$lower" || panic "nip-live: $lower did not appear"
	mkdir -p /run/nip-live/lower /run/nip-live/prov /run/nip-live/rw
	mount -t squashfs -o ro "$lower" /run/nip-live/lower || panic "nip-live: cannot mount $lower"
	if [ -b "$prov" ]; then
		mount -t squashfs -o ro "$prov" /run/nip-live/prov || panic "nip-live: cannot mount $prov"
		lowers="/run/nip-live/prov:$lowers"
	fi
	if [ -n "$selinux" ]; then
		nip_load_policy || panic "nip-live: loading the SELinux policy failed"
		echo "nip-live: SELinux policy loaded, enforce=$(cat /sys/fs/selinux/enforce 2>/dev/null || echo ?)"
		tmpfs_opts="$tmpfs_opts,rootcontext=system_u:object_r:root_t:s0"
	fi
	# klibc's mount (no busybox in this initramfs): options only through -o, two operands.
	(
		if [ -n "$selinux" ]; then
			# The shell's O_CREAT open of attr/current logs a harmless "create" denial, and the
			# write still happens: check the result, not the status.
			echo system_u:system_r:init_t:s0 >/proc/self/attr/current
			case "$(cat /proc/self/attr/current)" in *:init_t:*) ;; *) echo "nip-live: cannot enter init_t"; exit 1 ;; esac
		fi
		mount -t tmpfs -o "$tmpfs_opts" tmpfs /run/nip-live/rw || exit 1
		mkdir /run/nip-live/rw/upper /run/nip-live/rw/work || exit 1
		mount -t overlay -o "lowerdir=$lowers,upperdir=/run/nip-live/rw/upper,workdir=/run/nip-live/rw/work" overlay "${rootmnt}" || exit 1
		# klibc's mount cannot make a bind mount read-only: util-linux's from the new root can.
		mount -o bind /proc "${rootmnt}/proc" || exit 1
		chroot "${rootmnt}" /usr/bin/mount --bind -o ro /usr /usr || exit 1
		umount "${rootmnt}/proc"
	) || panic "nip-live: mounting the live root failed"
	echo "nip-live: / is overlay($lowers + tmpfs), /usr read-only"
}
