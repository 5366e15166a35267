# SPDX-License-Identifier: GPL-2.0
"""Boot a virtme-ng guest with QEMU's legacy balloon and drive it from the host.

A guest is the project's kernel booted by ``vng --disable-kvm`` (TCG: KVM does not work on
these machines) with the host's root filesystem, a shared read-write directory, a QMP socket
and the devices a test asks for.  Inside the guest a small agent (``guest-agent.sh``) runs the
commands the host drops into the shared directory, so a test can alternate guest commands and
QMP commands at will.  Runs inside the project environment (``scripts/env``).
"""

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import tempfile
import time

from qemu.qmp.legacy import QEMUMonitorProtocol

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AGENT = os.path.join(TOP, "tests", "lib", "guest-agent.sh")

# Kernel log lines that mean a kernel bug: any of them fails the test during which it appears.
KERNEL_PROBLEMS = re.compile(
    r"WARNING:|BUG:|BUG kmalloc|Oops|general protection fault|Kernel panic|"
    r"possible circular locking|possible recursive locking|inconsistent lock state|"
    r"suspicious RCU usage|unreferenced object|UBSAN:|KASAN:|"
    r"INFO: task .* blocked for more than|hung_task|soft lockup|"
    r"sleeping function called from invalid context|list_add corruption|list_del corruption"
)

KMEMLEAK = "/sys/kernel/debug/kmemleak"

# The agent's marker after each command in the kernel log stream.
AGENT_MARK = re.compile(r"virtio-rs-agent: command (\d+) done")

# QEMU's own assertion failure on its stderr (glibc's assert(), which then aborts QEMU).
QEMU_ASSERTION = re.compile(r"^(qemu-system-[\w-]+: .*Assertion .* failed\.)\s*$", re.M)

LEGACY_BALLOON = "virtio-balloon-pci,id=balloon0,disable-modern=on"


def count(lines, needle):
    """How many of `lines` contain `needle`."""
    return sum(1 for l in lines if needle in l)


def excerpt(lines, n=150):
    """The kernel log from the first problem line on (a whole lockdep or KASAN report)."""
    for i, line in enumerate(lines):
        if KERNEL_PROBLEMS.search(line):
            return "\n".join(lines[i:i + n])
    return ""


def problems_message(lines, what="kernel problems"):
    """A failure message for the problem lines among `lines`, or None when there is none."""
    problems = [l for l in lines if KERNEL_PROBLEMS.search(l)]
    if not problems:
        return None
    return (f"{what}:\n" + "\n".join(problems)
            + "\n\nthe kernel log from the first one:\n" + excerpt(lines))


def assert_no_problems(lines, what="kernel problems"):
    """Fail when any of the kernel log `lines` reports a kernel problem."""
    msg = problems_message(lines, what)
    assert msg is None, msg


class GuestError(Exception):
    """The guest failed to boot or to answer."""


class Guest:
    """One virtme-ng guest, controlled through a shared directory and QMP."""

    def __init__(self, name, memory="1G", cpus=2, devices=(LEGACY_BALLOON,), qemu_opts=(),
                 append=(), boot_timeout=None, moddir=None):
        self.kdir = os.environ["KDIR"]
        self.name = name
        self.memory = memory
        self.cpus = cpus
        self.devices = list(devices)
        self.qemu_opts = list(qemu_opts)
        self.append = list(append)
        # A busy machine boots guests slowly: VIRTIO_RS_BOOT_TIMEOUT raises the default.
        self.boot_timeout = (boot_timeout if boot_timeout is not None
                             else int(os.environ.get("VIRTIO_RS_BOOT_TIMEOUT", "240")))
        self.moddir = moddir or TOP
        # Not under /tmp: virtme-ng mounts its own /tmp in the guest.
        rundir = os.path.join(os.environ.get("VIRTIO_RS_CACHE", "/var/tmp"), "guests")
        os.makedirs(rundir, exist_ok=True)
        self.dir = tempfile.mkdtemp(prefix=f"{name}-", dir=rundir)
        self.qmp_path = os.path.join(self.dir, "qmp.sock")
        # The agent's doorbell: a virtio-serial port the agent blocks on between commands, so
        # that an idle guest costs no CPU (polling the shared directory kept a TCG guest at
        # two thirds of a host core) and a command starts at once.
        self.bell_path = os.path.join(self.dir, "agent.sock")
        self.bell = None
        self.bell_lock = threading.Lock()
        self.done = 0  # the last command that returned
        # The kernel log parsed so far (see kernel_log()).
        self.kmsg_off = 0
        self.kmsg_done = 0
        self.klines = []
        self.console = os.path.join(self.dir, "console.log")
        self.proc = None
        self.qmp = None
        self.seq = 0
        self.log_mark = 0

    # --- lifecycle -------------------------------------------------------------------------
    def start(self):
        opts = []
        for dev in self.devices:
            opts += ["-device", dev]
        opts += ["-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        opts += ["-device", "virtio-serial-pci,id=vrs-serial",
                 "-chardev", f"socket,id=vrs-bell,path={self.bell_path},server=on,wait=off",
                 "-device", "virtserialport,bus=vrs-serial.0,chardev=vrs-bell,name=virtio-rs.agent"]
        opts += self.qemu_opts
        cmd = [
            "vng", "--disable-kvm", "--run", self.kdir,
            "--memory", self.memory, "--cpus", str(self.cpus),
            f"--rwdir={self.dir}",
            f"--qemu-opts={' '.join(shlex.quote(o) for o in opts)}",
            "--exec", f"sh {AGENT} {self.dir} {self.moddir}",
        ]
        for a in self.append:
            cmd += ["--append", a]
        self.t_start = time.monotonic()
        with open(self.console, "wb") as out:
            # Own process group: killing the guest kills QEMU too, not only vng.
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, cwd="/",
                                         start_new_session=True)
        deadline = time.monotonic() + self.boot_timeout
        while not os.path.exists(os.path.join(self.dir, "ready")):
            if self.bell is None and os.path.exists(self.bell_path):
                # Connected before the agent starts, so that it never reads end-of-file.
                bell = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    bell.connect(self.bell_path)
                    self.bell = bell
                except OSError:
                    bell.close()
            if self.proc.poll() is not None:
                raise GuestError(f"guest exited during boot (rc {self.proc.returncode}):\n"
                                 + self.console_tail())
            if time.monotonic() > deadline:
                self.kill()
                raise GuestError("guest did not boot in time:\n" + self.console_tail())
            time.sleep(0.2)
        self.boot_seconds = time.monotonic() - self.t_start
        boot_log = os.environ.get("VIRTIO_RS_BOOT_LOG")
        if boot_log:
            with open(boot_log, "a") as f:
                f.write(f"{self.name:<28} {self.boot_seconds:6.1f}\n")
        self.qmp = QEMUMonitorProtocol(self.qmp_path)
        self.qmp.connect()
        # One command, so that the kernel log stream holds the boot (see kernel_log()).
        self.sh("true")
        self.log_mark = self.kernel_log_lines()
        return self

    def ring(self, what):
        """Tell the agent about command number ``what`` (or "quit")."""
        with self.bell_lock:
            if self.bell is None:
                return
            try:
                self.bell.sendall(f"{what}\n".encode())
            except OSError:
                pass

    def stop(self):
        if self.qmp is not None:
            try:
                self.qmp.close()
            except Exception:
                pass
            self.qmp = None
        if self.proc is None:
            return
        open(os.path.join(self.dir, "quit"), "w").close()
        self.ring("quit")
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
        self.proc = None
        with self.bell_lock:
            if self.bell is not None:
                self.bell.close()
                self.bell = None

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    def console_tail(self, n=60):
        try:
            with open(self.console, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    # --- guest commands --------------------------------------------------------------------
    # The guest agent (guest-agent.sh) runs $dir/cmd.N and writes out.N, then rc.N.  `run`
    # waits for its command; `submit` and `wait_done` are its two halves, for a test that
    # drives QMP while a guest script runs and waits for files the host creates in the shared
    # directory (`wait_file`).
    def submit(self, script):
        """Hand a shell script to the guest agent without waiting; returns its number for
        `wait_done` (so a test can act on the host while the script runs)."""
        with self.bell_lock:
            self.seq += 1
            n = self.seq
        tmp = os.path.join(self.dir, f".cmd.{n}")
        with open(tmp, "w") as f:
            f.write(script + "\n")
        os.rename(tmp, os.path.join(self.dir, f"cmd.{n}"))
        self.ring(n)
        return n

    def done_rc(self, n):
        """The exit status of command `n` if it has ended, else None."""
        try:
            with open(os.path.join(self.dir, f"rc.{n}")) as f:
                text = f.read().strip()
        except FileNotFoundError:
            return None
        # Empty while the agent is still writing it.
        return int(text) if text else None

    def wait_done(self, n, timeout=120, what=None):
        """Wait for command `n`; returns (rc, output)."""
        what = what or f"command {n}"
        deadline = time.monotonic() + timeout
        while (rc := self.done_rc(n)) is None:
            if self.proc.poll() is not None:
                raise GuestError(f"guest died while running {what}:\n" + self.console_tail())
            if time.monotonic() > deadline:
                raise GuestError(f"guest command timed out after {timeout}s: {what}\n"
                                 + self.console_tail())
            time.sleep(0.02)
        with self.bell_lock:
            self.done = max(self.done, n)
        with open(os.path.join(self.dir, f"out.{n}"), errors="replace") as f:
            return rc, f.read()

    def wait_file(self, path, n, timeout=120):
        """Wait until the guest created `path`, or command `n` ended (then fails with its
        output)."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if self.done_rc(n) is not None:
                rc, out = self.wait_done(n)
                raise AssertionError(f"the guest script ended (rc {rc}) before "
                                     f"{os.path.basename(path)}:\n{out}")
            if self.proc.poll() is not None:
                raise GuestError("guest died:\n" + self.console_tail())
            if time.monotonic() > deadline:
                raise AssertionError(f"no {os.path.basename(path)} after {timeout}s")
            time.sleep(0.02)

    def run(self, script, timeout=120, check=True):
        """Run a shell script in the guest; return (rc, output)."""
        rc, out = self.wait_done(self.submit(script), timeout, repr(script))
        if check and rc != 0:
            raise GuestError(f"guest command failed (rc {rc}): {script!r}\n{out}")
        return rc, out

    def sh(self, script, timeout=120):
        """Run a script that must succeed; return its output."""
        return self.run(script, timeout=timeout)[1]

    # --- kernel log ------------------------------------------------------------------------
    def kernel_log(self):
        """The kernel log so far, one message per line as dmesg shows it, up to at least the
        end of the last guest command that returned."""
        with self.bell_lock:
            want = self.done
        deadline = time.monotonic() + 5
        while True:
            self._read_kmsg()
            if self.kmsg_done >= want:
                return "".join(line + "\n" for line in self.klines)
            if time.monotonic() > deadline or self.proc is None or self.proc.poll() is not None:
                # The stream stopped (the agent's cat died): ask the guest itself.
                return self.sh("dmesg")
            time.sleep(0.02)

    def _read_kmsg(self):
        """Parse what the agent's /dev/kmsg stream has added since the last call."""
        try:
            with open(os.path.join(self.dir, "kmsg"), "rb") as f:
                f.seek(self.kmsg_off)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        self.kmsg_off += end
        for rec in data[:end].decode(errors="replace").splitlines():
            # "prio,seq,usec,flags[,...];message"; dictionary lines start with a space.
            head, sep, msg = rec.partition(";")
            if not sep or rec.startswith(" "):
                continue
            fields = head.split(",")
            m = AGENT_MARK.fullmatch(msg)
            if m:
                self.kmsg_done = max(self.kmsg_done, int(m.group(1)))
                continue
            usec = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 0
            # Non-printable bytes stay escaped (\xNN), as dmesg shows them.
            self.klines.append(f"[{usec // 1000000:5d}.{usec % 1000000:06d}] {msg}")

    def kernel_log_lines(self):
        return len(self.kernel_log().splitlines())

    def new_kernel_log(self):
        """Kernel log lines since the last call (or since boot)."""
        lines = self.kernel_log().splitlines()
        new = lines[self.log_mark:]
        self.log_mark = len(lines)
        return new

    def kernel_problems(self, lines=None):
        """The problem lines among `lines` (default: the new kernel log)."""
        if lines is None:
            lines = self.new_kernel_log()
        return [l for l in lines if KERNEL_PROBLEMS.search(l)]

    def take_log(self):
        """New kernel log lines; fails on any kernel problem among them (the autouse check
        only sees the lines nobody took)."""
        lines = self.new_kernel_log()
        assert_no_problems(lines)
        return lines

    def exited(self):
        """The guest's QEMU has exited (vng waits for it and then exits too), or the guest
        was stopped."""
        return self.proc is None or self.proc.poll() is not None

    def qemu_assertion(self):
        """QEMU's own assertion failure (glibc's ``qemu-system-x86_64: FILE:LINE: FUNC:
        Assertion `...' failed.`, then abort) as QEMU printed it to its stderr, which is in
        the console log; None when there is none."""
        try:
            with open(self.console, errors="replace") as f:
                m = QEMU_ASSERTION.search(f.read())
        except OSError:
            return None
        return m.group(1) if m else None

    def alive(self):
        """The guest still runs commands."""
        assert self.sh("echo alive", timeout=60).strip() == "alive"

    def kmemleak_report(self):
        """kmemleak reports objects older than 5 s: wait, scan twice (a transient false
        positive does not survive two scans), and read the report."""
        self.sh(f"sleep 6; echo scan > {KMEMLEAK}; sleep 2; echo scan > {KMEMLEAK}",
                timeout=900)
        return self.sh(f"cat {KMEMLEAK}")

    # --- the QEMU process on the host -------------------------------------------------------
    def qemu_pid(self):
        """PID of this guest's qemu-system-x86_64 (vng starts it in the guest's process group;
        it is the process whose command line names this guest's QMP socket)."""
        if getattr(self, "_qemu_pid", None) is not None:
            return self._qemu_pid
        found = []
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if (argv and os.path.basename(argv[0]).startswith(b"qemu-system")
                    and any(self.qmp_path.encode() in a for a in argv)):
                found.append(int(pid))
        if len(found) != 1:
            raise GuestError(f"expected one QEMU process for {self.qmp_path}, found {found}")
        self._qemu_pid = found[0]
        return self._qemu_pid

    def qemu_status(self):
        """/proc/<qemu pid>/status as a dict of strings."""
        with open(f"/proc/{self.qemu_pid()}/status") as f:
            return {k: v.strip() for k, _, v in (l.partition(":") for l in f)}

    def qemu_rss_kb(self):
        """QEMU's resident set size (VmRSS) in kB: guest memory the host backs right now."""
        return int(self.qemu_status()["VmRSS"].split()[0])

    # --- QMP -------------------------------------------------------------------------------
    def qmp_cmd(self, cmd, **args):
        resp = self.qmp.cmd_obj({"execute": cmd, "arguments": args} if args else {"execute": cmd})
        if "error" in resp:
            raise GuestError(f"QMP {cmd}: {resp['error']}")
        return resp["return"]

    # --- devices ---------------------------------------------------------------------------
    def balloon_bdf(self):
        """PCI address of the legacy balloon function (1af4:1002)."""
        # Shell builtins only: a process per device costs seconds on a debug guest.
        out = self.sh("for d in /sys/bus/pci/devices/*; do read v < $d/vendor; "
                      "read i < $d/device; [ $v:$i = 0x1af4:0x1002 ] && echo ${d##*/}; "
                      "done; true")
        bdfs = out.split()
        if len(bdfs) != 1:
            raise GuestError(f"expected one legacy balloon, found {bdfs}")
        return bdfs[0]

    def driver_of(self, bdf):
        _, out = self.run(f"basename $(readlink /sys/bus/pci/devices/{bdf}/driver)", check=False)
        return out.strip() or None

    def bind(self, bdf, driver):
        """Move a PCI function to `driver` (driver_override, unbind, drivers_probe)."""
        self.sh(f"""
            d=/sys/bus/pci/devices/{bdf}
            echo {driver} > $d/driver_override
            if [ -e $d/driver ]; then echo {bdf} > $d/driver/unbind; fi
            echo {bdf} > /sys/bus/pci/drivers_probe
            [ "$(basename $(readlink $d/driver))" = {driver} ]
        """)

    def unbind(self, bdf):
        self.sh(f"d=/sys/bus/pci/devices/{bdf}; "
                f"if [ -e $d/driver ]; then echo {bdf} > $d/driver/unbind; fi; ! [ -e $d/driver ]")
