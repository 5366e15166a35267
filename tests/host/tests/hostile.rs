// SPDX-License-Identifier: GPL-2.0

//! A hostile device: each way of lying in the used ring, as a named test.
//!
//! Every case must mark the ring broken, record the violation, return an error, never hand
//! a token out twice, never panic, and still give every buffer back through
//! `detach_unused` (the `Harness` checks the bookkeeping on every step).  The exception is a
//! used length beyond the buffer, which real devices report (the out-length included): it is
//! clamped to the writable length and counted, and the ring goes on.

use virtio_ring_core::{
    ring::{
        LenClamp,
        RingError,
        Violation,
        VRING_DESC_F_NEXT, //
    },
    sim::Harness,
};

/// A harness whose device is about to misbehave.
fn hostile(num: u16, event_idx: bool, indirect: bool) -> Harness {
    let mut h = Harness::new(num, event_idx, indirect);
    h.tainted = true;
    h
}

/// Asserts the ring is broken by `v`, refuses further work, and gives everything back.
fn assert_broken_by(mut h: Harness, v: Violation, outstanding: usize) {
    assert!(h.ring.is_broken());
    assert_eq!(h.ring.violation(), Some(v));
    assert_eq!(h.get_buf(), Err(RingError::Broken));
    assert!(!h.ring.more_used(&h.mem));
    assert_eq!(h.add(&[1], &[]), Err(RingError::Broken));
    assert_eq!(h.detach_all().len(), outstanding);
}

#[test]
fn used_id_out_of_range() {
    let mut h = hostile(8, false, false);
    h.add_ok(&[1], &[]);
    h.dev.push(&h.mem, 8, 0);
    assert_eq!(h.get_buf(), Err(RingError::Broken));
    assert_broken_by(h, Violation::UsedIdOutOfRange { id: 8 }, 1);
}

#[test]
fn used_id_far_out_of_range() {
    let mut h = hostile(8, true, true);
    h.add_ok(&[1], &[1, 1]);
    h.dev.push(&h.mem, u32::MAX, 0);
    assert_eq!(h.get_buf(), Err(RingError::Broken));
    assert_broken_by(h, Violation::UsedIdOutOfRange { id: u32::MAX }, 1);
}

#[test]
fn used_id_not_in_flight_free_descriptor() {
    let mut h = hostile(8, false, false);
    h.add_ok(&[1], &[]);
    h.dev.push(&h.mem, 5, 0);
    assert_eq!(h.get_buf(), Err(RingError::Broken));
    assert_broken_by(h, Violation::UsedIdNotInFlight { id: 5 }, 1);
}

#[test]
fn used_id_not_in_flight_chain_member() {
    let mut h = hostile(8, false, false);
    h.add_ok(&[1, 1, 1], &[]);
    // Descriptor 1 is in the chain but is not its head.
    h.dev.push(&h.mem, 1, 0);
    assert_eq!(h.get_buf(), Err(RingError::Broken));
    assert_broken_by(h, Violation::UsedIdNotInFlight { id: 1 }, 1);
}

#[test]
fn used_id_not_in_flight_duplicate_completion() {
    let mut h = hostile(8, false, false);
    let a = h.add_ok(&[1], &[]);
    h.add_ok(&[1], &[]);
    // The device completes head 0 twice (the index advance, 2, is within the 2 in flight).
    h.dev.push(&h.mem, 0, 0);
    h.dev.push(&h.mem, 0, 0);
    assert_eq!(h.get_buf().unwrap().unwrap().token, a);
    assert_eq!(h.get_buf(), Err(RingError::Broken));
    // The first token is not returned again; only the second comes back.
    assert_broken_by(h, Violation::UsedIdNotInFlight { id: 0 }, 1);
}

#[test]
fn used_id_not_in_flight_replayed_used_ring() {
    let mut h = hostile(4, true, false);
    let tokens: Vec<usize> = (0..3).map(|_| h.add_ok(&[], &[8])).collect();
    h.serve_all();
    let got: Vec<usize> = h.drain().iter().map(|c| c.token).collect();
    assert_eq!(got, tokens);
    // One more buffer (it takes head 2, the last one freed), then the device replays the
    // entry of head 0, which is free now.
    h.add_ok(&[], &[8]);
    h.dev.write_used_elem(&h.mem, h.dev.used_idx(), 0, 8);
    h.dev.set_used_idx(&h.mem, h.dev.used_idx().wrapping_add(1));
    assert_eq!(h.get_buf(), Err(RingError::Broken));
    assert_broken_by(h, Violation::UsedIdNotInFlight { id: 0 }, 1);
}

/// Asserts the ring clamped `clamp` and nothing else, and goes on working.
fn assert_clamped(mut h: Harness, clamp: LenClamp) {
    assert!(!h.ring.is_broken());
    assert_eq!(h.ring.violation(), None);
    assert_eq!(h.ring.clamped_lens(), 1);
    assert_eq!(h.ring.first_clamp(), Some(clamp));
    // The ring goes on: an honest buffer is not counted.
    let t = h.add_ok(&[], &[8]);
    h.serve_all();
    let c = h.get_buf().unwrap().unwrap();
    assert_eq!((c.token, c.len), (t, 8));
    assert_eq!(h.ring.clamped_lens(), 1);
    assert_eq!(h.detach_all().len(), 0);
}

#[test]
fn used_len_longer_than_writable_is_clamped() {
    let mut h = hostile(8, false, false);
    let t = h.add_ok(&[64], &[100, 50]);
    h.pop_all();
    h.complete(0, 151);
    let c = h.get_buf().unwrap().unwrap();
    assert_eq!((c.token, c.len), (t, 150));
    let clamp = LenClamp {
        id: 0,
        len: 151,
        max: 150,
    };
    assert_clamped(h, clamp);
}

#[test]
fn used_len_exactly_writable_is_fine() {
    let mut h = Harness::new(8, false, false);
    let t = h.add_ok(&[64], &[100, 50]);
    h.dev.push(&h.mem, 0, 150);
    let c = h.get_buf().unwrap().unwrap();
    assert_eq!((c.token, c.len), (t, 150));
}

#[test]
fn used_len_nonzero_for_an_out_only_buffer_is_clamped() {
    // The balloon's case: everything it sends is device-readable; a device that reports the
    // bytes it read (the out-length) gives a non-zero length.
    let mut h = hostile(8, true, false);
    let t = h.add_ok(&[4096], &[]);
    h.pop_all();
    h.complete(0, 4096);
    let c = h.get_buf().unwrap().unwrap();
    assert_eq!((c.token, c.len), (t, 0));
    let clamp = LenClamp {
        id: 0,
        len: 4096,
        max: 0,
    };
    assert_clamped(h, clamp);
}

#[test]
fn used_len_longer_than_writable_indirect_is_clamped() {
    let mut h = hostile(8, false, true);
    let t = h.add_ok(&[1, 2], &[30, 40]);
    h.pop_all();
    h.complete(0, u32::MAX);
    let c = h.get_buf().unwrap().unwrap();
    assert_eq!((c.token, c.len), (t, 70));
    assert_eq!(c.indirect, Some(0));
    let clamp = LenClamp {
        id: 0,
        len: u32::MAX,
        max: 70,
    };
    assert_clamped(h, clamp);
}

#[test]
fn clamped_lengths_are_counted_saturating_per_ring() {
    let mut h = hostile(4, true, false);
    for n in 1..=10u32 {
        let t = h.add_ok(&[], &[16]);
        h.pop_all();
        h.complete(0, 17 + n);
        let c = h.get_buf().unwrap().unwrap();
        assert_eq!((c.token, c.len), (t, 16));
        assert_eq!(h.ring.clamped_lens(), n);
    }
    // The first one is the one remembered.
    let first = LenClamp {
        id: h.ring.first_clamp().unwrap().id,
        len: 18,
        max: 16,
    };
    assert_eq!(h.ring.first_clamp(), Some(first));
    assert!(!h.ring.is_broken());
}

#[test]
fn used_idx_jump_beyond_in_flight() {
    let mut h = hostile(8, false, false);
    h.add_ok(&[1], &[]);
    h.add_ok(&[1], &[]);
    h.serve_all();
    // Three used entries claimed with two buffers out.
    h.dev.set_used_idx(&h.mem, 3);
    assert_eq!(h.get_buf(), Err(RingError::Broken));
    assert_broken_by(h, Violation::UsedIdxJump { last: 0, new: 3 }, 2);
}

#[test]
fn used_idx_jump_beyond_ring_size() {
    let mut h = hostile(4, false, false);
    for _ in 0..4 {
        h.add_ok(&[1], &[]);
    }
    h.dev.set_used_idx(&h.mem, 5);
    assert!(!h.ring.more_used(&h.mem));
    assert_broken_by(h, Violation::UsedIdxJump { last: 0, new: 5 }, 4);
}

#[test]
fn used_idx_jump_far_ahead() {
    let mut h = hostile(4, true, false);
    h.add_ok(&[1], &[]);
    h.dev.set_used_idx(&h.mem, 40000);
    assert!(
        h.ring.enable_cb(&h.mem),
        "a broken ring has nothing to process"
    );
    assert_broken_by(
        h,
        Violation::UsedIdxJump {
            last: 0,
            new: 40000,
        },
        1,
    );
}

#[test]
fn used_idx_jump_with_nothing_in_flight() {
    let mut h = hostile(4, false, false);
    h.dev.set_used_idx(&h.mem, 1);
    assert_eq!(h.get_buf(), Err(RingError::Broken));
    assert_broken_by(h, Violation::UsedIdxJump { last: 0, new: 1 }, 0);
}

#[test]
fn used_idx_moving_backwards() {
    let mut h = hostile(8, false, false);
    for _ in 0..3 {
        h.add_ok(&[1], &[]);
    }
    h.pop_all();
    h.complete(0, 0);
    h.complete(0, 0);
    assert_eq!(h.drain().len(), 2);
    h.dev.set_used_idx(&h.mem, 1);
    assert!(
        h.ring.enable_cb_delayed(&h.mem),
        "a broken ring has nothing to process"
    );
    assert!(h.ring.is_broken());
    assert_broken_by(h, Violation::UsedIdxJump { last: 2, new: 1 }, 1);
}

#[test]
fn first_violation_is_kept() {
    let mut h = hostile(8, false, false);
    h.add_ok(&[1], &[]);
    h.dev.push(&h.mem, 9, 0);
    assert_eq!(h.get_buf(), Err(RingError::Broken));
    h.dev.set_used_idx(&h.mem, 500);
    assert_eq!(h.get_buf(), Err(RingError::Broken));
    assert_broken_by(h, Violation::UsedIdOutOfRange { id: 9 }, 1);
}

#[test]
fn valid_completions_after_a_violation_are_not_handed_out() {
    let mut h = hostile(8, false, false);
    h.add_ok(&[1], &[]);
    h.add_ok(&[1], &[]);
    h.dev.push(&h.mem, 8, 0);
    assert_eq!(h.get_buf(), Err(RingError::Broken));
    // The device now behaves; the ring stays broken, the buffers come back by detach.
    h.dev.push(&h.mem, 0, 0);
    assert_eq!(h.get_buf(), Err(RingError::Broken));
    assert_broken_by(h, Violation::UsedIdOutOfRange { id: 8 }, 2);
}

#[test]
fn device_rewriting_the_descriptor_table_cannot_corrupt_the_free_list() {
    let mut h = hostile(8, false, false);
    let a = h.add_ok(&[1, 1, 1], &[]);
    let b = h.add_ok(&[1], &[1]);
    h.pop_all();
    // The device turns the table into one long loop of NEXT descriptors.
    for i in 0..8 {
        h.mem.dev_write_u16(i * 16 + 12, VRING_DESC_F_NEXT);
        h.mem.dev_write_u16(i * 16 + 14, 0);
    }
    h.complete(0, 0);
    h.complete(0, 1);
    let got: Vec<usize> = h.drain().iter().map(|c| c.token).collect();
    assert_eq!(got, [a, b]);
    assert_eq!(h.ring.num_free(), 8);
    assert!(!h.ring.is_broken());
    // The ring still works: a full-size chain is written correctly.
    h.add_ok(&[1; 4], &[1; 4]);
    assert_eq!(h.serve_all(), 1);
    assert_eq!(h.drain().len(), 1);
    h.detach_all();
}

#[test]
fn device_rewriting_the_avail_ring_is_ignored() {
    let mut h = hostile(8, false, false);
    h.add_ok(&[1], &[]);
    let avail = h.ring.layout().avail_offset();
    h.mem.dev_write_u16(avail, 0xffff);
    h.mem.dev_write_u16(avail + 2, 1234);
    h.add_ok(&[1], &[]);
    // The driver publishes from its shadow, not from what the device scribbled.
    assert_eq!(h.mem.dev_read_u16(avail + 2), Some(2));
    h.ring.disable_cb(&h.mem);
    assert!(h.ring.enable_cb(&h.mem));
    assert_eq!(h.mem.dev_read_u16(avail), Some(0));
    h.detach_all();
}

#[test]
fn garbage_suppression_hints_never_break_the_ring() {
    for event_idx in [false, true] {
        let mut h = Harness::new(8, event_idx, false);
        for v in [0u16, 1, 0x7fff, 0x8000, 0xfffe, 0xffff] {
            h.dev.set_used_flags(&h.mem, v);
            h.dev.set_avail_event(&h.mem, v);
            h.add_ok(&[1], &[]);
            let _ = h.ring.kick_prepare(&h.mem);
            h.serve_all();
            assert_eq!(h.drain().len(), 1);
        }
        assert!(!h.ring.is_broken());
    }
}
