// SPDX-License-Identifier: GPL-2.0

//! Exporting symbols from a Rust module to other modules.
//!
//! The kernel crate has no macro for this (Rust-for-Linux issue #1086), so this module emits
//! the same `.export_symbol` section entry that `include/linux/export.h` emits for
//! `EXPORT_SYMBOL_NS_GPL()` on 64-bit: a label `__export_symbol_<sym>` followed by the license
//! string, the namespace string and a pointer to the symbol.  modpost turns it into a
//! `__ksymtab` entry and records it in `Module.symvers`; `scripts/module.lds.S` discards the
//! section from the final module.
//!
//! No `unsafe`.

/// Exports `$sym` (a `#[no_mangle] extern "C"` item) to GPL modules in namespace `$ns`.
///
/// The signature is checked against the contract first: `$ty` is the function pointer type the
/// shared ABI file declares for it.
macro_rules! export_symbol_ns_gpl {
    ($sym:ident: $ty:ty, $ns:literal) => {
        const _: $ty = $sym;

        #[cfg(target_pointer_width = "64")]
        ::core::arch::global_asm!(
            concat!(
                ".section \".export_symbol\",\"a\"\n",
                "__export_symbol_",
                stringify!($sym),
                ":\n",
                ".asciz \"GPL\"\n",
                ".asciz \"",
                $ns,
                "\"\n",
                ".balign 8\n",
                ".quad ",
                stringify!($sym),
                "\n",
                ".previous\n"
            ),
            options(att_syntax)
        );
    };
}

pub(crate) use export_symbol_ns_gpl;
