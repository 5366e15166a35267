#!/bin/busybox sh
# SPDX-License-Identifier: GPL-2.0
#
# init of a guest that QEMU can migrate (tests/lib/plain_vm.py).  The kernel boots from the
# host's root filesystem over 9p, which blocks migration while it is mounted; this script
# copies busybox, the modules it is given and itself into a tmpfs, pivots into it, lets go of
# the 9p root, and then runs the scripts the host sends on a virtio-serial port.
#   kernel command line: vrs_mods=DIR (the virtio-rs .ko files), vrs_kdir=DIR (the kernel
#   build tree, for the C balloon module), vrs_port=NAME (the virtio-serial port's name)
B=/bin/busybox

if [ "${1:-}" != stage2 ]; then
	# Stage 1, on the 9p root (read-only).
	$B mount -t proc none /proc
	kver=$($B uname -r)
	$B mount -t tmpfs -o size=256m tmpfs /mnt
	N=/mnt
	$B mkdir -p $N/bin $N/proc $N/sys $N/dev $N/tmp $N/run $N/old $N/etc \
		$N/lib/modules/$kver/extra
	$B cp $B $N/bin/busybox
	$B cp "$0" $N/init
	$B cp "$vrs_mods"/*.ko $N/lib/modules/$kver/extra/
	$B cp "$vrs_kdir"/drivers/virtio/virtio_balloon.ko $N/lib/modules/$kver/extra/
	echo "$vrs_port" >$N/etc/port
	$B mount -t devtmpfs dev $N/dev
	$B umount /proc
	cd $N
	$B pivot_root . old
	exec /bin/busybox sh /init stage2 </dev/console >/dev/console 2>&1
fi

# Stage 2, on the tmpfs.
export PATH=/bin
$B --install -s /bin
mount -t proc none /proc
mount -t sysfs sys /sys
mount -t debugfs none /sys/kernel/debug
# Nothing refers to the 9p root any more: unmounting it clunks its fids, and QEMU lifts the
# migration blocker it put up when the root was mounted.
umount /old || umount -l /old
depmod
port=
name=$(cat /etc/port)
for i in $(seq 100); do
	for p in /sys/class/virtio-ports/*; do
		[ "$(cat "$p/name" 2>/dev/null)" = "$name" ] && port=/dev/${p##*/}
	done
	[ -n "$port" ] && [ -e "$port" ] && break
	sleep 0.1
done
[ -n "$port" ] || { echo "plain-init: no port $name"; exit 1; }

# One request a line: "N BASE64-SCRIPT"; one answer a line: "N RC BASE64-OUTPUT".
exec 3<>"$port"
echo READY >&3
while read -r n payload <&3; do
	[ "$n" = quit ] && break
	echo "$payload" | base64 -d >/run/cmd.sh
	sh /run/cmd.sh >/run/out 2>&1
	rc=$?
	echo "$n $rc $(base64 /run/out | tr -d '\n')" >&3
done
poweroff -f
