# SPDX-License-Identifier: GPL-2.0
# Shared settings for the virtio-rs scripts. Sourced, never run.

# Where the toolchain rootfs and the built kernels live: outside the work tree,
# reused across checkouts on the same machine.
VIRTIO_RS_CACHE=${VIRTIO_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/virtio-rs}
VIRTIO_RS_TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VIRTIO_RS_ROOTFS=$VIRTIO_RS_CACHE/rootfs-trixie
KVER=7.2.13
SHARED_TARBALL=$VIRTIO_RS_TOP/../shared/linux/linux-source-$KVER.tar.xz
SHARED_SHA256=ecb3877b9988c936dcc64c63af8a54c2fa6df7f717d4e5ee429d0f4c4859e68b

# Packages the trixie rootfs needs: the kernel's Rust toolchain, the kernel
# build, QEMU + virtme-ng (and what virtme-init needs in a minbase system),
# and the test tools.
ROOTFS_PACKAGES="rustc rust-src cargo rustfmt rust-clippy bindgen libclang-dev clang lld llvm
 make bc bison flex libelf-dev libssl-dev cpio kmod perl python3 xz-utils
 ca-certificates git qemu-system-x86 virtme-ng busybox-static udev systemd-sysv
 procps python3-pytest python3-venv python3-pip python3-matplotlib
 util-linux iproute2 file curl gpg"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# step NAME CMD...: run one setup step and print its duration.  A failure
# ends the script (set -e); the EXIT trap below names the failed step.
VIRTIO_RS_STEP=
step() {
	local t0
	t0=$(date +%s)
	VIRTIO_RS_STEP=$1
	shift
	log "step: $VIRTIO_RS_STEP"
	"$@"
	log "step: $VIRTIO_RS_STEP: done in $(( $(date +%s) - t0 ))s"
	VIRTIO_RS_STEP=
}
step_trap() {
	local rc=$?
	[ $rc -ne 0 ] && [ -n "$VIRTIO_RS_STEP" ] && log "step: $VIRTIO_RS_STEP: FAILED (exit $rc)"
	return $rc
}

# count KIND LOG: add the "RESULT <kind> <passed> <failed>" line of LOG to the caller's
# $passed and $failed (scripts/check, scripts/stress); a stage that printed no such line
# failed as a whole.
count() {
	local kind=$1 log=$2 line p f
	line=$(grep -E "^RESULT $kind [0-9]+ [0-9]+$" "$log" | tail -n1)
	if [ -z "$line" ]; then
		log "$kind: no result line: the stage failed to run (see $log)"
		failed=$((failed + 1))
		return
	fi
	read -r _ _ p f <<<"$line"
	passed=$((passed + p))
	failed=$((failed + f))
	log "$kind: $p passed, $f failed"
}

# copy_sources OUT: copy what Kbuild needs of the work tree (Kbuild and the .rs files, not
# tests/ or tools/) to OUT, so that a flavour's objects never mix with the production build.
# The copy keeps its objects between runs (incremental builds): a file whose content is
# already there is left alone, so a fresh clone of the same sources rebuilds nothing.
copy_sources() {
	local out=$1 f
	mkdir -p "$out"
	(cd "$VIRTIO_RS_TOP" && find . -path ./tests -prune -o -path ./tools -prune -o \
		-path ./.git -prune -o \( -name '*.rs' -o -name Kbuild \) -print) |
		while IFS= read -r f; do
			cmp -s "$VIRTIO_RS_TOP/$f" "$out/$f" && continue
			mkdir -p "$out/$(dirname "$f")"
			cp "$VIRTIO_RS_TOP/$f" "$out/$f"
		done
}

# build_modules DIR [VAR=VALUE...]: the out-of-tree build of the modules whose sources are in
# DIR, with the given Kbuild variables (a flavour's switch).  Inside the environment.
build_modules() {
	local dir=$1
	shift
	make -s -C "${KDIR:?run through scripts/env}" M="$dir" LLVM=1 "$@" modules
}

ver_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

# host_toolchain_ok: does this host already have what Linux 7.2 needs?
host_toolchain_ok() {
	local v sysroot
	command -v rustc >/dev/null || return 1
	v=$(rustc --version | awk '{print $2}') || return 1
	ver_ge "$v" 1.85.0 || return 1
	sysroot=$(rustc --print sysroot) || return 1
	[ -d "$sysroot/lib/rustlib/src/rust/library/core" ] || return 1
	command -v bindgen >/dev/null || return 1
	v=$(bindgen --version 2>/dev/null | awk '{print $2}')
	ver_ge "${v:-0}" 0.71.1 || return 1
	for t in clang ld.lld llvm-ar qemu-system-x86_64 vng cargo; do
		command -v $t >/dev/null || return 1
	done
	return 0
}

# in_env CMD...: run CMD with the project's toolchain: on the host when it is
# suitable (or when we already are inside the rootfs), else chrooted into the
# trixie rootfs with the work tree and the cache bind-mounted at their own
# paths.  The mounts live in a private mount namespace and vanish with it.
in_env() {
	if [ -n "${VIRTIO_RS_IN_ENV:-}" ] || { [ "${VIRTIO_RS_USE_HOST:-auto}" != no ] && host_toolchain_ok; }; then
		VIRTIO_RS_IN_ENV=1 "$@"
		return
	fi
	[ -x "$VIRTIO_RS_ROOTFS/usr/bin/rustc" ] || die "no toolchain: run scripts/setup first"
	local sudo=
	[ "$(id -u)" = 0 ] || sudo=sudo
	$sudo unshare --mount --propagation private -- /bin/bash -c '
		set -e
		R=$1; top=$2; cache=$3; cwd=$4; shift 4
		mount --rbind /dev "$R/dev"
		mount -t proc proc "$R/proc"
		mount --rbind /sys "$R/sys"
		mount -t tmpfs tmpfs "$R/tmp"
		mkdir -p "$R$top" "$R$cache"
		mount --bind "$top" "$R$top"
		mount --bind "$cache" "$R$cache"
		shared=$(cd "$top/.." && pwd)/shared
		if [ -d "$shared" ]; then mkdir -p "$R$shared"; mount --bind "$shared" "$R$shared"; fi
		if [ -n "${KDIR:-}" ] && [ -d "$KDIR" ] && [ "${KDIR#"$cache"}" = "$KDIR" ]; then
			mkdir -p "$R$KDIR"; mount --bind "$KDIR" "$R$KDIR"
		fi
		case "$cwd" in "$top"|"$top"/*|"$cache"|"$cache"/*) ;; *) cwd=$top ;; esac
		cp -L /etc/resolv.conf "$R/etc/resolv.conf" 2>/dev/null || true
		exec chroot "$R" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" \
			PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
			LANG=C.UTF-8 VIRTIO_RS_IN_ENV=1 VIRTIO_RS_CACHE="$cache" \
			$( [ -f "$R/etc/ssl/certs/virtio-rs-host-ca.crt" ] &&
				echo CARGO_HTTP_CAINFO=/etc/ssl/certs/virtio-rs-host-ca.crt ) \
			${KDIR:+KDIR="$KDIR"} ${VIRTIO_RS_FLAVOR:+VIRTIO_RS_FLAVOR="$VIRTIO_RS_FLAVOR"} \
			${VIRTIO_RS_EXTRA_ENV:-} \
			/bin/bash -c "cd \"\$0\" && exec \"\$@\"" "$cwd" "$@"
	' virtio-rs-env "$VIRTIO_RS_ROOTFS" "$VIRTIO_RS_TOP" "$VIRTIO_RS_CACHE" "$PWD" "$@"
}
