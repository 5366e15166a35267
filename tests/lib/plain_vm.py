# SPDX-License-Identifier: GPL-2.0
"""A guest that QEMU can migrate: QEMU started directly, without virtme-ng.

virtme-ng gives the guest the host's root filesystem and a shared directory over 9p, and
QEMU refuses to migrate a VM while a 9p export is mounted in it ("Migration is disabled when
VirtFS export path ... is mounted").  This guest boots from the host's root over 9p too, but
its init (``plain-init.sh``) copies busybox and the modules into a tmpfs, pivots into it and
unmounts the 9p root, which lifts QEMU's blocker; the host then sends it scripts on a
virtio-serial port instead of a shared directory.  The interface is ``vm.Guest``'s (``run``,
``sh``, QMP, the kernel log, binding), so the balloon helpers work on it; modprobe finds the
virtio-rs modules of ``moddir`` and the C ``virtio_balloon`` (nothing autoloads: there is no
udev).
"""

import base64
import os
import socket
import subprocess
import time

from qemu.qmp.legacy import QEMUMonitorProtocol

import vm

INIT = os.path.join(vm.TOP, "tests", "lib", "plain-init.sh")
PORT = "virtio-rs.plain"


class PlainGuest(vm.Guest):
    """One guest without shared filesystems once booted; see the module documentation."""

    def start(self):
        kdir = self.kdir
        self.agent_path = os.path.join(self.dir, "agent.sock")
        opts = [
            "qemu-system-x86_64", "-name", self.name, "-machine", "q35", "-accel", "tcg",
            "-m", self.memory, "-smp", str(self.cpus),
            "-display", "none", "-vga", "none", "-net", "none", "-no-reboot",
            "-kernel", os.path.join(kdir, "arch", "x86", "boot", "bzImage"),
            "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=root,mount_tag=/dev/root",
            "-serial", f"file:{self.console}",
            "-device", "virtio-serial-pci,id=vrs-serial",
            "-chardev", f"socket,id=agent,path={self.agent_path},server=on,wait=off",
            "-device", f"virtserialport,bus=vrs-serial.0,chardev=agent,name={PORT}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
        ]
        for dev in self.devices:
            opts += ["-device", dev]
        opts += self.qemu_opts
        append = [
            "root=/dev/root", "rootfstype=9p",
            "rootflags=version=9p2000.L,trans=virtio,access=any", "ro",
            f"init={INIT}", "console=ttyS0", "panic=-1",
            f"vrs_mods={self.moddir}", f"vrs_kdir={kdir}", f"vrs_port={PORT}",
        ] + list(self.append)
        opts += ["-append", " ".join(append)]
        self.t_start = time.monotonic()
        self.proc = subprocess.Popen(opts, stdin=subprocess.DEVNULL,
                                     stdout=open(os.path.join(self.dir, "qemu.log"), "wb"),
                                     stderr=subprocess.STDOUT, cwd="/", start_new_session=True)
        self._qemu_pid = self.proc.pid
        deadline = time.monotonic() + self.boot_timeout
        self.sock = None
        while self.sock is None:
            if self.proc.poll() is not None:
                raise vm.GuestError(f"QEMU exited (rc {self.proc.returncode}):\n"
                                    + self.qemu_log() + self.console_tail())
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.agent_path)
                self.sock = s
            except OSError:
                time.sleep(0.1)
            if time.monotonic() > deadline:
                self.kill()
                raise vm.GuestError("QEMU did not start:\n" + self.qemu_log())
        self.buf = b""
        self.sock.settimeout(1.0)
        while self._readline(deadline) != "READY":
            pass
        self.boot_seconds = time.monotonic() - self.t_start
        self.qmp = QEMUMonitorProtocol(self.qmp_path)
        self.qmp.connect()
        self.log_mark = self.kernel_log_lines()
        return self

    def qemu_log(self):
        try:
            with open(os.path.join(self.dir, "qemu.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def _readline(self, deadline):
        while b"\n" not in self.buf:
            if self.proc.poll() is not None:
                raise vm.GuestError(f"guest died (rc {self.proc.returncode}):\n"
                                    + self.console_tail())
            if time.monotonic() > deadline:
                raise vm.GuestError("guest did not answer in time:\n" + self.console_tail())
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise vm.GuestError("the guest closed its port:\n" + self.console_tail())
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode(errors="replace").strip()

    def run(self, script, timeout=120, check=True):
        """Run a shell script in the guest; return (rc, output)."""
        self.seq += 1
        n = self.seq
        payload = base64.b64encode(script.encode()).decode()
        self.sock.sendall(f"{n} {payload}\n".encode())
        deadline = time.monotonic() + timeout
        while True:
            line = self._readline(deadline)
            fields = line.split(" ", 2)
            if fields[0] == str(n):
                break
        rc = int(fields[1])
        out = base64.b64decode(fields[2]).decode(errors="replace") if len(fields) > 2 else ""
        if check and rc != 0:
            raise vm.GuestError(f"guest command failed (rc {rc}): {script!r}\n{out}")
        return rc, out

    def kernel_log(self):
        """The kernel log (dmesg in the guest: this guest streams nothing to the host)."""
        return self.sh("dmesg")

    def stop(self):
        if self.qmp is not None:
            try:
                self.qmp.cmd_obj({"execute": "quit"})
            except Exception:
                pass
            try:
                self.qmp.close()
            except Exception:
                pass
            self.qmp = None
        if getattr(self, "sock", None) is not None:
            self.sock.close()
            self.sock = None
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None

    def migration_blockers(self):
        """What keeps QEMU from migrating this VM now (empty once the 9p root is gone)."""
        return self.qmp_cmd("query-migrate").get("blocked-reasons", [])

