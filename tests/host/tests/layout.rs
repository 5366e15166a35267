// SPDX-License-Identifier: GPL-2.0

//! Layout, `vring_size` and `vring_need_event` tests.

use virtio_ring_core::{
    ring::{
        vring_need_event,
        vring_size,
        DescState,
        Layout,
        RingError,
        SplitRing,
        MAX_QUEUE_SIZE,
        VRING_ALIGN, //
    },
    sim::Rng, //
};

/// A layout computed at compile time (the kernel sizes its ring memory this way).
const LAYOUT_128: Layout = match Layout::new(128, VRING_ALIGN) {
    Ok(l) => l,
    Err(_) => panic!("128 is a valid ring size"),
};

#[test]
fn vring_size_matches_c_for_legacy_align() {
    for (num, size) in [
        (32, 4358),
        (64, 4614),
        (128, 5126),
        (256, 10246),
        (1024, 28678),
    ] {
        assert_eq!(vring_size(num, VRING_ALIGN), size, "num {num}");
        let layout = Layout::new(num, VRING_ALIGN).unwrap();
        assert_eq!(layout.size(), size, "num {num}");
        assert_eq!(usize::from(layout.num()), num as usize);
    }
}

#[test]
fn layout_size_equals_vring_size_for_every_valid_size() {
    for shift in 0..=15 {
        let num = 1u32 << shift;
        for align in [4, 8, 64, 4096, 65536] {
            let layout = Layout::new(num, align).unwrap();
            assert_eq!(
                layout.size(),
                vring_size(num, align),
                "num {num} align {align}"
            );
            assert_eq!(layout.used_offset() % align, 0);
            assert!(layout.used_offset() >= layout.avail_offset() + 6 + 2 * num as usize);
        }
    }
}

#[test]
fn layout_offsets_of_a_256_entry_legacy_ring() {
    let l = Layout::new(256, VRING_ALIGN).unwrap();
    assert_eq!(l.desc_offset(), 0);
    assert_eq!(l.avail_offset(), 4096);
    assert_eq!(l.used_offset(), 8192);
    assert_eq!(l.size(), 8192 + 6 + 8 * 256);
}

#[test]
fn layout_is_const_evaluable() {
    assert_eq!(LAYOUT_128.size(), 5126);
    assert_eq!(LAYOUT_128.num(), 128);
}

#[test]
fn layout_refuses_size_zero() {
    assert_eq!(
        Layout::new(0, VRING_ALIGN).unwrap_err(),
        RingError::InvalidSize
    );
}

#[test]
fn layout_refuses_non_power_of_two() {
    for num in [3, 6, 100, 255, 257, 1000, 32767] {
        assert_eq!(
            Layout::new(num, VRING_ALIGN).unwrap_err(),
            RingError::InvalidSize,
            "{num}"
        );
    }
}

#[test]
fn layout_refuses_more_than_32768() {
    assert!(Layout::new(u32::from(MAX_QUEUE_SIZE), VRING_ALIGN).is_ok());
    for num in [32769, 65536, 1 << 20, u32::MAX] {
        assert_eq!(
            Layout::new(num, VRING_ALIGN).unwrap_err(),
            RingError::InvalidSize,
            "{num}"
        );
    }
}

#[test]
fn layout_refuses_bad_alignment() {
    for align in [0, 1, 2, 3, 6, 4097, usize::MAX] {
        assert_eq!(
            Layout::new(64, align).unwrap_err(),
            RingError::InvalidSize,
            "{align}"
        );
    }
    // The largest power of two is a valid (if silly) alignment and does not overflow.
    let huge = 1 << (usize::BITS - 1);
    assert_eq!(Layout::new(64, huge).unwrap().size(), vring_size(64, huge));
}

#[test]
fn vring_size_does_not_panic_on_garbage() {
    let _ = vring_size(u32::MAX, 0);
    let _ = vring_size(u32::MAX, usize::MAX);
    let _ = vring_size(3, 3);
}

#[test]
fn ring_refuses_state_of_the_wrong_length() {
    let layout = Layout::new(8, VRING_ALIGN).unwrap();
    for len in [0, 7, 9, 16] {
        let state = vec![DescState::default(); len];
        assert_eq!(
            SplitRing::new(layout, state, false, false).unwrap_err(),
            RingError::InvalidSize
        );
    }
    let mut storage = [DescState::default(); 8];
    let ring = SplitRing::new(layout, &mut storage[..], true, true).unwrap();
    assert_eq!(ring.num_free(), 8);
    assert!(ring.event_idx_enabled() && ring.indirect_enabled());
}

/// The meaning of `vring_need_event`: `event` lies in the half-open window `[old, new)`.
fn in_window(event: u16, new: u16, old: u16) -> bool {
    event.wrapping_sub(old) < new.wrapping_sub(old)
}

#[test]
fn need_event_table() {
    // (event, new, old, expected)
    let cases = [
        (0, 1, 0, true),
        (0, 0, 0, false),
        (1, 1, 0, false),
        (5, 10, 0, true),
        (10, 10, 0, false),
        (9, 10, 0, true),
        (65535, 2, 65534, true),
        (0, 2, 65534, true),
        (1, 2, 65534, true),
        (2, 2, 65534, false),
        (65533, 2, 65534, false),
    ];
    for (event, new, old, expected) in cases {
        assert_eq!(
            vring_need_event(event, new, old),
            expected,
            "{event} {new} {old}"
        );
    }
}

#[test]
fn need_event_is_the_window_test_exhaustively_for_small_windows() {
    for old in [0u16, 1, 100, 32767, 32768, 65000, 65535] {
        for len in (0u16..=40).chain([255, 256, 1000, 32767, 32768, 65535]) {
            let new = old.wrapping_add(len);
            for event in 0..=u16::MAX {
                assert_eq!(
                    vring_need_event(event, new, old),
                    in_window(event, new, old),
                    "{event} {new} {old}"
                );
            }
        }
    }
}

#[test]
fn need_event_is_the_window_test_randomly() {
    let mut rng = Rng::new(1);
    for _ in 0..2_000_000 {
        let (e, n, o) = (
            rng.next_u64() as u16,
            rng.next_u64() as u16,
            rng.next_u64() as u16,
        );
        assert_eq!(vring_need_event(e, n, o), in_window(e, n, o), "{e} {n} {o}");
    }
}
