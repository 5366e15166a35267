# SPDX-License-Identifier: GPL-2.0
#
# virtio-rs: the legacy virtio stack (ring, PCI transport, balloon) in
# Rust-for-Linux.  Everything runs inside the environment scripts/setup
# prepares (scripts/env); see README.md.
#
#   make            build virtio_ring_rs.ko, virtio_pci_rs.ko, virtio_balloon_rs.ko
#   make check      host tests, KUnit suites in a guest, QEMU integration tests
#   make demo       boot a guest and show the stack at work
#   make bench      the Rust stack against the C drivers in one guest
#                   (bench-modules: the C ring benchmark module it loads)
#   make bench-policies  what each deflate_policy gives back under memory pressure
#   make fuzz       a long fuzz run of the ring core
#   make stress     reliability tests on the debug kernel (not part of check; <= 30 min)
#   make rustfmt    format the Rust sources (rustfmtcheck: only check)
#   make clippy     build with CLIPPY=1
#   make clean
#
# KDIR=<tree> builds against your own configured and built Rust-enabled
# Linux 7.2 tree instead of the cached one.

ENV := $(CURDIR)/scripts/env
RUST_SOURCES = $(shell find $(CURDIR) -name '*.rs' -not -path '*/target/*' -not -path '*/.git/*')

.PHONY: all modules setup check demo bench bench-modules bench-policies fuzz stress clean rustfmt rustfmtcheck clippy kunit-modules

all: modules

setup:
	$(CURDIR)/scripts/setup

# The standard out-of-tree build, run inside the environment.
modules:
	$(ENV) sh -c 'make -C "$$KDIR" M=$(CURDIR) LLVM=1 modules'

clippy:
	$(ENV) sh -c 'make -C "$$KDIR" M=$(CURDIR) LLVM=1 CLIPPY=1 modules'

# The test flavour (KUnit suites compiled in), built from a copy of the tree
# so that it never mixes with the production objects.
kunit-modules:
	$(ENV) $(CURDIR)/scripts/build-flavour kunit

rustfmt:
	$(ENV) sh -c 'rustfmt --edition 2021 --config-path "$$(readlink -f $$KDIR/source 2>/dev/null || echo $$KDIR)/.rustfmt.toml" $(RUST_SOURCES)'

rustfmtcheck:
	$(ENV) sh -c 'rustfmt --check --edition 2021 --config-path "$$(readlink -f $$KDIR/source 2>/dev/null || echo $$KDIR)/.rustfmt.toml" $(RUST_SOURCES)'

# The C ring micro-benchmark (tests/bench/vring_bench_c.c) that make bench compares
# virtio_ring_rs's cycle with.
bench-modules:
	$(ENV) sh -c 'make -C "$$KDIR" M=$(CURDIR)/tests/bench LLVM=1 modules'

check:
	$(CURDIR)/scripts/check

demo:
	$(CURDIR)/scripts/demo

bench:
	$(CURDIR)/scripts/bench

bench-policies:
	$(CURDIR)/scripts/setup >/dev/null
	$(ENV) sh -c 'make -s -C "$$KDIR" M=$(CURDIR) LLVM=1 modules && python3 $(CURDIR)/tools/policies.py'

stress:
	$(CURDIR)/scripts/stress

fuzz:
	$(ENV) env FUZZ_SECONDS=$${FUZZ_SECONDS:-1800} $(CURDIR)/scripts/host-tests --fuzz-only

clean:
	-$(ENV) sh -c 'make -C "$$KDIR" M=$(CURDIR) LLVM=1 clean' 2>/dev/null
	rm -f *.ko *.o *.mod *.mod.c .*.cmd Module.symvers modules.order
	cd tests/bench && rm -f *.ko *.o *.mod *.mod.c .*.cmd Module.symvers modules.order
