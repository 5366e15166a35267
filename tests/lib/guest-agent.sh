#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Runs inside a virtme-ng guest: makes the virtio-rs modules loadable with modprobe (next to
# the kernel's own modules), then runs the scripts the host drops into the shared directory
# $1 as cmd.N, writing out.N and rc.N, until the host creates $1/quit.
#   $1: shared read-write directory   $2: directory holding the .ko files to install
set -u
D=$1
MODS=$2
kver=$(uname -r)

# virtme-ng links /lib/modules/$kver (on a tmpfs) to the kernel tree's modules; replace the
# link with a copy that also holds ours, so that modprobe and udev autoloading see them.
if [ -L "/lib/modules/$kver" ] || [ ! -e "/lib/modules/$kver" ]; then
	src=$(readlink -f "/lib/modules/$kver" 2>/dev/null)
	rm -f "/lib/modules/$kver"
	mkdir -p "/lib/modules/$kver/extra"
	# Dereference: virtme-ng's tree links files relatively to the kernel build tree, which
	# itself is linked as build/ (never copy that one).
	if [ -n "$src" ] && [ -d "$src" ]; then
		for f in "$src"/*; do
			case ${f##*/} in build | source) continue ;; esac
			cp -rL "$f" "/lib/modules/$kver/"
		done
	fi
fi
mkdir -p "/lib/modules/$kver/extra"
cp "$MODS"/*.ko "/lib/modules/$kver/extra/" 2>/dev/null
depmod -a "$kver"
mount -t debugfs none /sys/kernel/debug 2>/dev/null

touch "$D/ready"
while [ ! -e "$D/quit" ]; do
	ran=
	for f in "$D"/cmd.*; do
		[ -e "$f" ] || continue
		n=${f##*.}
		mv "$f" "$D/run.$n"
		sh "$D/run.$n" >"$D/out.$n" 2>&1
		echo $? >"$D/.rc.$n"
		mv "$D/.rc.$n" "$D/rc.$n"
		ran=1
	done
	[ -n "$ran" ] || sleep 0.1
done
