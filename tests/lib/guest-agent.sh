#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Runs inside a virtme-ng guest: makes the virtio-rs modules loadable with modprobe (next to
# the kernel's own modules), then runs the scripts the host drops into the shared directory
# $1 as cmd.N, writing out.N and rc.N, until the host says quit.  It waits for work on a
# doorbell port (see below) when the host provides one, else it polls the directory.
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

# The kernel log, streamed into the shared directory as the kernel writes it: the host reads
# it there instead of running dmesg in the guest (about a second per call under TCG).  After
# each command the agent writes a marker record, so the host knows the stream holds every
# message logged before the command ended.
cat /dev/kmsg >"$D/kmsg" 2>/dev/null &

run() { # $1: command number, $2: its script
	(f=$2 && set +u -- && . "$f") 3<&- >"$D/out.$1" 2>&1
	rc=$?
	echo "virtio-rs-agent: command $1 done" >/dev/kmsg 2>/dev/null
	# The host retries while the file is still empty.
	echo $rc >"$D/rc.$1"
}

# The doorbell: a virtio-serial port on which the host writes the number of each command it
# drops (and "quit" at the end).  The agent sleeps in read() in between, so an idle guest
# costs no CPU (polling the shared directory kept a TCG guest at half a host core) and a
# command starts at once.
port=/dev/virtio-ports/virtio-rs.agent
if [ -c "$port" ] && exec 3<"$port"; then
	touch "$D/ready"
	while :; do
		if ! read -r n <&3; then
			# End of file: the host is not connected (yet, or any more).
			[ -e "$D/quit" ] && break
			sleep 0.1
			continue
		fi
		case $n in
		quit) break ;;
		'' | *[!0-9]*) continue ;;
		esac
		run "$n" "$D/cmd.$n"
	done
	exit 0
fi

# No doorbell: poll the shared directory.
touch "$D/ready"
while [ ! -e "$D/quit" ]; do
	ran=
	for f in "$D"/cmd.*; do
		[ -e "$f" ] || continue
		n=${f##*.}
		mv "$f" "$D/run.$n"
		run "$n" "$D/run.$n"
		ran=1
	done
	[ -n "$ran" ] || sleep 0.1
done
