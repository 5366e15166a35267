// SPDX-License-Identifier: GPL-2.0

//! Functional tests of the split ring core against the simulated device.

use virtio_ring_core::{
    ring::{
        Barrier,
        Buf,
        Completed,
        DescState,
        Indirect,
        Layout,
        LenClamp,
        RingError,
        RingMem,
        SplitRing,
        Violation,
        VRING_ALIGN,
        VRING_AVAIL_F_NO_INTERRUPT,
        VRING_DESC_F_INDIRECT,
        VRING_DESC_F_NEXT,
        VRING_DESC_F_WRITE, //
    },
    sim::{
        Access,
        Harness,
        TablePool,
        VecMem, //
    },
};

/// `None` for the indirect argument.
const NO_TABLE: Option<Indirect<'static, VecMem>> = None;

/// Reads descriptor `i` of `mem` as `(addr, len, flags, next)`.
fn desc(mem: &VecMem, i: u16) -> (u64, u32, u16, u16) {
    let off = usize::from(i) * 16;
    (
        mem.dev_read_u64(off).unwrap(),
        mem.dev_read_u32(off + 8).unwrap(),
        mem.dev_read_u16(off + 12).unwrap(),
        mem.dev_read_u16(off + 14).unwrap(),
    )
}

fn buf(addr: u64, len: u32) -> Buf {
    Buf { addr, len }
}

#[test]
fn init_zeroes_the_ring_and_publishes_the_shadows() {
    let layout = Layout::new(16, VRING_ALIGN).unwrap();
    let mem = VecMem::new(layout.size());
    for off in (0..layout.size()).step_by(2) {
        mem.dev_write_u16(off, 0xdead);
    }
    let mut ring = SplitRing::new(layout, vec![DescState::default(); 16], false, false).unwrap();
    ring.init(&mem);
    for off in (0..layout.size()).step_by(2) {
        assert_eq!(mem.dev_read_u16(off), Some(0), "offset {off:#x}");
    }
    assert_eq!(mem.barriers(Barrier::Write), 1);

    // Callbacks disabled before init: the flag is published by init.
    let mut ring = SplitRing::new(layout, vec![DescState::default(); 16], false, false).unwrap();
    ring.disable_cb(&mem);
    ring.init(&mem);
    assert_eq!(
        mem.dev_read_u16(layout.avail_offset()),
        Some(VRING_AVAIL_F_NO_INTERRUPT)
    );
}

#[test]
fn add_get_round_trip() {
    let mut h = Harness::new(8, false, false);
    let t = h.add_ok(&[100, 200], &[300, 400, 500]);
    assert_eq!(h.ring.num_free(), 3);
    assert_eq!(h.ring.num_in_flight(), 1);
    assert!(!h.ring.more_used(&h.mem));
    assert_eq!(h.get_buf().unwrap(), None);

    h.pop_all();
    let chain = h.popped[0].clone();
    assert_eq!(chain.head, 0);
    assert!(!chain.indirect);
    let lens: Vec<u32> = chain.readable.iter().map(|d| d.1).collect();
    assert_eq!(lens, [100, 200]);
    let lens: Vec<u32> = chain.writable.iter().map(|d| d.1).collect();
    assert_eq!(lens, [300, 400, 500]);
    // The ring descriptors: 0 -> 1 -> 2 -> 3 -> 4, flags as C writes them.
    let flags: Vec<u16> = (0..5).map(|i| desc(&h.mem, i).2).collect();
    let n = VRING_DESC_F_NEXT;
    let w = VRING_DESC_F_WRITE;
    assert_eq!(flags, [n, n, n | w, n | w, w]);
    for i in 0..4 {
        assert_eq!(desc(&h.mem, i).3, i + 1);
    }

    h.complete(0, 1000);
    assert!(h.ring.more_used(&h.mem));
    let c = h.get_buf().unwrap().unwrap();
    assert_eq!(
        c,
        Completed {
            token: t,
            len: 1000,
            indirect: None
        }
    );
    assert_eq!(h.ring.num_free(), 8);
    assert_eq!(h.ring.last_used_idx(), 1);
    assert_eq!(h.get_buf().unwrap(), None);
    h.detach_all();
}

#[test]
fn completions_out_of_order_and_free_list_reuse() {
    let mut h = Harness::new(8, false, false);
    let a = h.add_ok(&[1], &[2]);
    let b = h.add_ok(&[1, 1, 1], &[]);
    let c = h.add_ok(&[], &[8, 8]);
    assert_eq!(h.ring.num_free(), 1);
    assert_eq!(h.pop_all(), 3);
    // Complete b, then c, then a.
    h.complete(1, 0);
    h.complete(1, 16);
    h.complete(0, 2);
    let got: Vec<(usize, u32)> = h.drain().iter().map(|c| (c.token, c.len)).collect();
    assert_eq!(got, [(b, 0), (c, 16), (a, 2)]);
    assert_eq!(h.ring.num_free(), 8);
    // The freed descriptors are reused: a full-size chain fits again.
    let d = h.add_ok(&[1; 4], &[1; 4]);
    assert_eq!(h.ring.num_free(), 0);
    h.serve_all();
    assert_eq!(h.drain()[0].token, d);
    h.detach_all();
}

#[test]
fn tokens_are_opaque_including_zero_and_max() {
    let layout = Layout::new(4, VRING_ALIGN).unwrap();
    let mem = VecMem::new(layout.size());
    let mut ring = SplitRing::new(layout, vec![DescState::default(); 4], false, false).unwrap();
    ring.init(&mem);
    let in_buf = [buf(0x1000, 16)];
    ring.add(&mem, &[], &in_buf, 0, NO_TABLE).unwrap();
    ring.add(&mem, &[], &in_buf, usize::MAX, NO_TABLE).unwrap();
    let used = layout.used_offset();
    mem.dev_write_u32(used + 4, 0);
    mem.dev_write_u32(used + 12, 1);
    mem.dev_write_u16(used + 2, 2);
    assert_eq!(ring.get_buf(&mem).unwrap().unwrap().token, 0);
    assert_eq!(ring.get_buf(&mem).unwrap().unwrap().token, usize::MAX);
}

#[test]
fn add_refuses_an_empty_buffer() {
    let mut h = Harness::new(4, false, false);
    assert_eq!(h.add(&[], &[]), Err(RingError::EmptyBuffer));
}

#[test]
fn add_refuses_more_elements_than_the_queue_size() {
    for indirect in [false, true] {
        let mut h = Harness::new(4, false, indirect);
        assert_eq!(h.add(&[1; 3], &[1; 2]), Err(RingError::TooManyDescriptors));
        assert!(!h.ring.wants_indirect(5));
        // Exactly the queue size is fine.
        h.add_ok(&[1; 2], &[1; 2]);
        h.detach_all();
    }
}

#[test]
fn add_on_a_full_ring_fails_without_touching_memory() {
    let mut h = Harness::new(4, false, false);
    h.add_ok(&[1, 1, 1], &[]);
    let before: Vec<u16> = (0..h.mem.len())
        .step_by(2)
        .map(|o| h.mem.dev_read_u16(o).unwrap())
        .collect();
    assert_eq!(h.add(&[1, 1], &[]), Err(RingError::NoSpace));
    let after: Vec<u16> = (0..h.mem.len())
        .step_by(2)
        .map(|o| h.mem.dev_read_u16(o).unwrap())
        .collect();
    assert_eq!(before, after);
    // One descriptor is still free.
    h.add_ok(&[1], &[]);
    assert_eq!(h.add(&[1], &[]), Err(RingError::NoSpace));
    h.detach_all();
}

#[test]
fn capacity_and_num_free_accounting() {
    let mut h = Harness::new(16, false, false);
    let mut total = 0;
    for k in 1..=5u16 {
        h.add_ok(&vec![10; usize::from(k)], &[]);
        total += k;
        assert_eq!(h.ring.num_free(), 16 - total);
    }
    assert_eq!(h.ring.num_free(), 1);
    assert_eq!(h.add(&[1, 1], &[]), Err(RingError::NoSpace));
    h.pop_all();
    // Complete the 3-descriptor one only.
    h.complete(2, 0);
    h.drain();
    assert_eq!(h.ring.num_free(), 4);
    h.add_ok(&[1; 4], &[]);
    assert_eq!(h.ring.num_free(), 0);
    h.detach_all();
}

#[test]
fn add_barrier_order_is_descriptors_ring_entry_barrier_index() {
    let mut h = Harness::new(8, false, false);
    let avail = h.ring.layout().avail_offset();
    h.mem.start_log();
    h.add_ok(&[7], &[9]);
    let log = h.mem.take_log();
    let pos = |pred: &dyn Fn(&Access) -> bool| log.iter().position(pred).unwrap();
    let last_desc = log
        .iter()
        .rposition(|a| matches!(a, Access::Write { off, .. } if *off < avail))
        .unwrap();
    let entry = pos(&|a| matches!(a, Access::Write { off, .. } if *off == avail + 4));
    let wmb = pos(&|a| *a == Access::Barrier(Barrier::Write));
    let idx = pos(&|a| matches!(a, Access::Write { off, val: 1, .. } if *off == avail + 2));
    assert!(last_desc < entry && entry < wmb && wmb < idx, "{log:?}");
    assert_eq!(idx, log.len() - 1, "the avail index is the last write");
    // The driver never reads device-visible memory while adding.
    assert!(
        !log.iter().any(|a| matches!(a, Access::Read { .. })),
        "{log:?}"
    );
}

#[test]
fn get_buf_reads_the_entry_after_a_read_barrier() {
    let mut h = Harness::new(8, false, false);
    h.add_ok(&[], &[4]);
    h.serve_all();
    let used = h.ring.layout().used_offset();
    h.mem.start_log();
    h.get_buf().unwrap().unwrap();
    let log = h.mem.take_log();
    let idx = log
        .iter()
        .position(|a| {
            *a == Access::Read {
                off: used + 2,
                size: 2,
            }
        })
        .unwrap();
    let rmb = log
        .iter()
        .position(|a| *a == Access::Barrier(Barrier::Read))
        .unwrap();
    let id = log
        .iter()
        .position(|a| {
            *a == Access::Read {
                off: used + 4,
                size: 4,
            }
        })
        .unwrap();
    let len = log
        .iter()
        .position(|a| {
            *a == Access::Read {
                off: used + 8,
                size: 4,
            }
        })
        .unwrap();
    assert!(idx < rmb && rmb < id && rmb < len, "{log:?}");
}

#[test]
fn indirect_table_round_trip() {
    let mut h = Harness::new(4, false, true);
    assert!(h.ring.wants_indirect(3));
    assert!(
        !h.ring.wants_indirect(1),
        "a single element never goes indirect"
    );
    assert!(!h.ring.wants_indirect(0));
    let t = h.add_ok(&[10, 20], &[30, 40]);
    assert_eq!(h.ring.num_free(), 3, "one ring descriptor for the table");
    let (addr, len, flags, _) = desc(&h.mem, 0);
    assert_eq!(flags, VRING_DESC_F_INDIRECT);
    assert_eq!(len, 4 * 16);
    assert_eq!(addr, TablePool::addr(0));
    // The table itself: a chain 0 -> 1 -> 2 -> 3.
    let table = h.tables.get(0).unwrap();
    let tflags: Vec<u16> = (0..4).map(|i| desc(table, i).2).collect();
    let n = VRING_DESC_F_NEXT;
    let w = VRING_DESC_F_WRITE;
    assert_eq!(tflags, [n, n, n | w, w]);
    let tnext: Vec<u16> = (0..4).map(|i| desc(table, i).3).collect();
    assert_eq!(tnext, [1, 2, 3, 0]);

    h.pop_all();
    assert!(h.popped[0].indirect);
    assert_eq!(h.popped[0].writable_len(), 70);
    h.complete(0, 70);
    let c = h.get_buf().unwrap().unwrap();
    assert_eq!((c.token, c.len, c.indirect), (t, 70, Some(0)));
    assert_eq!(h.ring.num_free(), 4);
    h.detach_all();
}

#[test]
fn indirect_fills_a_ring_with_more_buffers_than_direct() {
    let mut h = Harness::new(4, false, true);
    for _ in 0..4 {
        h.add_ok(&[1, 1, 1], &[1]);
    }
    assert_eq!(h.ring.num_free(), 0);
    assert!(!h.ring.wants_indirect(2), "no free descriptor, as C checks");
    assert_eq!(h.add(&[1], &[1]), Err(RingError::NoSpace));
    assert_eq!(
        h.detach_all()
            .iter()
            .filter(|c| c.indirect.is_some())
            .count(),
        4
    );
}

#[test]
fn indirect_with_one_element_is_accepted() {
    let layout = Layout::new(4, VRING_ALIGN).unwrap();
    let mem = VecMem::new(layout.size());
    let table = VecMem::new(16);
    let mut ring = SplitRing::new(layout, vec![DescState::default(); 4], false, true).unwrap();
    ring.init(&mem);
    let ind = Indirect {
        mem: &table,
        addr: 0x5000,
        handle: 9,
    };
    ring.add(&mem, &[buf(1, 2)], &[], 1, Some(ind)).unwrap();
    assert_eq!(desc(&mem, 0), (0x5000, 16, VRING_DESC_F_INDIRECT, 1));
    assert_eq!(desc(&table, 0), (1, 2, 0, 0));
    let c = ring.detach_unused(&mem).unwrap();
    assert_eq!(c.indirect, Some(9));
}

#[test]
fn indirect_refused_when_not_negotiated_or_table_too_small() {
    let layout = Layout::new(8, VRING_ALIGN).unwrap();
    let mem = VecMem::new(layout.size());
    let small = VecMem::new(2 * 16);
    let big = VecMem::new(8 * 16);
    let ind = |m| Indirect {
        mem: m,
        addr: 0x5000,
        handle: 1,
    };
    let elems = [buf(1, 1), buf(2, 2), buf(3, 3)];

    let mut ring = SplitRing::new(layout, vec![DescState::default(); 8], false, false).unwrap();
    ring.init(&mem);
    assert!(!ring.wants_indirect(3));
    assert_eq!(
        ring.add(&mem, &elems, &[], 1, Some(ind(&big))),
        Err(RingError::InvalidSize)
    );
    assert_eq!(ring.num_free(), 8);

    let mut ring = SplitRing::new(layout, vec![DescState::default(); 8], false, true).unwrap();
    ring.init(&mem);
    assert_eq!(
        ring.add(&mem, &elems, &[], 1, Some(ind(&small))),
        Err(RingError::InvalidSize)
    );
    assert_eq!(ring.num_free(), 8);
    assert!(!ring.is_broken());
    ring.add(&mem, &elems, &[], 1, Some(ind(&big))).unwrap();
    assert_eq!(ring.num_free(), 7);
}

#[test]
fn kick_prepare_honours_no_notify_without_event_idx() {
    let mut h = Harness::new(8, false, false);
    h.add_ok(&[1], &[]);
    let full = h.mem.barriers(Barrier::Full);
    assert!(h.ring.kick_prepare(&h.mem));
    assert_eq!(
        h.mem.barriers(Barrier::Full),
        full + 1,
        "a full barrier first"
    );
    h.dev.set_no_notify(&h.mem, true);
    h.add_ok(&[1], &[]);
    assert!(!h.ring.kick_prepare(&h.mem));
    h.dev.set_no_notify(&h.mem, false);
    assert!(
        h.ring.kick_prepare(&h.mem),
        "without EVENT_IDX only the flag counts"
    );
    h.detach_all();
}

#[test]
fn kick_prepare_uses_avail_event_with_event_idx() {
    let mut h = Harness::new(8, true, false);
    // The device wants to hear about entry 0.
    h.dev.set_avail_event(&h.mem, 0);
    h.add_ok(&[1], &[]);
    assert!(h.ring.kick_prepare(&h.mem));
    // Nothing added since: no kick, whatever the event.
    assert!(!h.ring.kick_prepare(&h.mem));
    // The device wants entry 3; adding entries 1 and 2 does not reach it.
    h.dev.set_avail_event(&h.mem, 3);
    h.add_ok(&[1], &[]);
    h.add_ok(&[1], &[]);
    assert!(!h.ring.kick_prepare(&h.mem));
    // Adding entries 3 and 4 crosses it.
    h.add_ok(&[1], &[]);
    h.add_ok(&[1], &[]);
    assert!(h.ring.kick_prepare(&h.mem));
    // NO_NOTIFY is ignored with EVENT_IDX.
    h.dev.set_no_notify(&h.mem, true);
    h.dev.set_avail_event(&h.mem, 5);
    h.add_ok(&[1], &[]);
    assert!(h.ring.kick_prepare(&h.mem));
    h.detach_all();
}

#[test]
fn kick_prepare_event_idx_across_the_16_bit_wrap() {
    let mut h = Harness::new(4, true, false);
    // Move the avail index to 65534.
    for _ in 0..65534 {
        h.add_ok(&[1], &[]);
        h.serve_all();
        h.get_buf().unwrap().unwrap();
    }
    let _ = h.ring.kick_prepare(&h.mem);
    assert_eq!(h.ring.avail_idx(), 65534);
    h.dev.set_avail_event(&h.mem, 0);
    h.add_ok(&[1], &[]); // entry 65534
    assert!(!h.ring.kick_prepare(&h.mem));
    h.add_ok(&[1], &[]); // 65535
    h.add_ok(&[1], &[]); // 0: the event
    assert_eq!(h.ring.avail_idx(), 1);
    assert!(h.ring.kick_prepare(&h.mem));
    h.detach_all();
}

#[test]
fn added_counter_saturates_so_a_late_kick_still_notifies() {
    let mut h = Harness::new(1, true, false);
    for _ in 0..70000 {
        h.add_ok(&[1], &[]);
        h.serve_all();
        h.get_buf().unwrap().unwrap();
    }
    // 70000 adds without a kick. The device's event index is 5000 entries back: outside
    // the last 70000 % 65536 = 4464 adds, so a wrapped counter would miss it.
    h.dev
        .set_avail_event(&h.mem, h.ring.avail_idx().wrapping_sub(5000));
    assert!(h.ring.kick_prepare(&h.mem));
    assert!(!h.ring.kick_prepare(&h.mem));
}

#[test]
fn interrupt_suppression_with_flags() {
    let mut h = Harness::new(8, false, false);
    let avail_flags = h.ring.layout().avail_offset();
    h.ring.disable_cb(&h.mem);
    assert_eq!(
        h.mem.dev_read_u16(avail_flags),
        Some(VRING_AVAIL_F_NO_INTERRUPT)
    );
    h.add_ok(&[1], &[]);
    h.serve_all();
    assert!(!h.dev.should_interrupt(&h.mem));
    // get_buf does not publish used_event while disabled.
    h.get_buf().unwrap().unwrap();
    assert_eq!(h.dev.used_event(&h.mem), 0);
    // Enabling with nothing pending: true, flag cleared.
    assert!(h.ring.enable_cb(&h.mem));
    assert_eq!(h.mem.dev_read_u16(avail_flags), Some(0));
    h.add_ok(&[1], &[]);
    h.serve_all();
    assert!(h.dev.should_interrupt(&h.mem));
    // Disable, let a buffer complete, then enable: false, the caller must process it.
    h.ring.disable_cb(&h.mem);
    h.add_ok(&[1], &[]);
    h.serve_all();
    assert!(!h.ring.enable_cb(&h.mem));
    assert_eq!(h.drain().len(), 2);
    assert!(h.ring.enable_cb(&h.mem));
    h.detach_all();
}

#[test]
fn interrupt_suppression_with_event_idx() {
    let mut h = Harness::new(8, true, false);
    let avail_flags = h.ring.layout().avail_offset();
    // Fresh ring, callbacks disabled: the device must not interrupt for the first buffer
    // (C's used_event = 0 would still fire here).
    h.ring.disable_cb(&h.mem);
    assert_eq!(h.dev.used_event(&h.mem), 0xffff);
    assert_eq!(
        h.mem.dev_read_u16(avail_flags),
        Some(0),
        "flags stay 0 with EVENT_IDX"
    );
    h.dev.should_interrupt(&h.mem); // QEMU always signals its first decision
    h.add_ok(&[1], &[]);
    h.serve_all();
    assert!(!h.dev.should_interrupt(&h.mem));
    h.get_buf().unwrap().unwrap();
    assert_eq!(
        h.dev.used_event(&h.mem),
        0xffff,
        "get_buf leaves it while disabled"
    );

    assert!(h.ring.enable_cb(&h.mem));
    assert_eq!(h.dev.used_event(&h.mem), 1);
    h.add_ok(&[1], &[]);
    h.serve_all();
    assert!(h.dev.should_interrupt(&h.mem));
    // get_buf moves used_event along while enabled.
    h.get_buf().unwrap().unwrap();
    assert_eq!(h.dev.used_event(&h.mem), 2);
    h.detach_all();
}

#[test]
fn enable_cb_delayed_waits_for_three_quarters() {
    let mut h = Harness::new(16, true, false);
    h.ring.disable_cb(&h.mem);
    h.dev.should_interrupt(&h.mem);
    for _ in 0..8 {
        h.add_ok(&[1], &[]);
    }
    // 8 outstanding: interrupt after 6 more used entries.
    assert!(h.ring.enable_cb_delayed(&h.mem));
    assert_eq!(h.dev.used_event(&h.mem), 6);
    h.pop_all();
    let mut fired = vec![];
    for _ in 0..8 {
        h.complete(0, 0);
        fired.push(h.dev.should_interrupt(&h.mem));
    }
    // The device signals when it publishes entry 6 (its 7th).
    assert_eq!(
        fired,
        [false, false, false, false, false, false, true, false]
    );
    assert_eq!(h.drain().len(), 8);
    // Too late: with 2 outstanding the point is 1 entry away, and the device already
    // completed both.
    h.ring.disable_cb(&h.mem);
    for _ in 0..4 {
        h.add_ok(&[1], &[]);
    }
    h.pop_all();
    h.complete(0, 0);
    h.complete(0, 0);
    assert_eq!(h.drain().len(), 2);
    h.complete(0, 0);
    h.complete(0, 0);
    assert!(!h.ring.enable_cb_delayed(&h.mem));
    h.drain();
    h.detach_all();
}

#[test]
fn enable_cb_delayed_without_event_idx_is_enable_cb() {
    let mut h = Harness::new(8, false, false);
    h.ring.disable_cb(&h.mem);
    h.add_ok(&[1], &[]);
    assert!(h.ring.enable_cb_delayed(&h.mem));
    assert_eq!(h.mem.dev_read_u16(h.ring.layout().avail_offset()), Some(0));
    h.detach_all();
}

#[test]
fn detach_unused_returns_everything_at_teardown() {
    let mut h = Harness::new(8, false, true);
    h.add_ok(&[1], &[1]);
    h.add_ok(&[1], &[]);
    h.add_ok(&[1, 1, 1], &[]);
    h.pop_all();
    h.complete(1, 0); // one completed but never consumed
    let got = h.detach_all();
    assert_eq!(got.len(), 3);
    assert_eq!(h.ring.avail_idx(), h.ring.last_used_idx());
    let avail_idx = h.mem.dev_read_u16(h.ring.layout().avail_idx()).unwrap();
    assert_eq!(
        avail_idx,
        h.ring.avail_idx(),
        "avail->idx moved back, as C does"
    );
}

#[test]
fn detach_unused_on_an_empty_ring() {
    let mut h = Harness::new(8, false, false);
    assert!(h.detach_all().is_empty());
}

#[test]
fn mark_broken_refuses_work_but_detach_works() {
    let mut h = Harness::new(8, true, false);
    let t = h.add_ok(&[1], &[1]);
    h.serve_all();
    h.ring.mark_broken();
    assert!(h.ring.is_broken());
    assert_eq!(
        h.ring.violation(),
        None,
        "the transport's reason is not a violation"
    );
    h.tainted = true;
    assert_eq!(h.add(&[1], &[]), Err(RingError::Broken));
    assert!(!h.ring.wants_indirect(2));
    assert!(!h.ring.more_used(&h.mem));
    assert!(!h.ring.kick_prepare(&h.mem));
    assert_eq!(h.get_buf(), Err(RingError::Broken));
    assert!(h.ring.enable_cb(&h.mem));
    assert!(h.ring.enable_cb_delayed(&h.mem));
    h.ring.disable_cb(&h.mem);
    assert_eq!(h.detach_all()[0].token, t);
}

#[test]
fn ring_memory_smaller_than_the_layout_breaks_the_ring_without_touching_it() {
    let layout = Layout::new(8, VRING_ALIGN).unwrap();
    let mem = VecMem::new(layout.size() - 2);
    let mut ring = SplitRing::new(layout, vec![DescState::default(); 8], false, false).unwrap();
    mem.start_log();
    ring.init(&mem);
    assert!(ring.is_broken());
    let need = layout.size();
    let len = need - 2;
    assert_eq!(
        ring.violation(),
        Some(Violation::RingTooSmall { len, need })
    );
    assert_eq!(
        ring.add(&mem, &[buf(1, 1)], &[], 1, NO_TABLE),
        Err(RingError::Broken)
    );
    assert_eq!(ring.get_buf(&mem), Err(RingError::Broken));
    assert!(!ring.more_used(&mem));
    assert_eq!(ring.detach_unused(&mem), None);
    assert!(mem.take_log().is_empty());

    // On a live ring: the buffer in flight still comes back, memory untouched.
    let good = VecMem::new(layout.size());
    let mut ring = SplitRing::new(layout, vec![DescState::default(); 8], false, false).unwrap();
    ring.init(&good);
    ring.add(&good, &[buf(1, 1)], &[], 7, NO_TABLE).unwrap();
    assert!(!ring.kick_prepare(&mem));
    assert!(ring.is_broken());
    assert_eq!(ring.detach_unused(&mem).unwrap().token, 7);
    assert!(mem.take_log().is_empty());
}

#[test]
fn more_used_sees_pending_entries() {
    let mut h = Harness::new(8, false, false);
    assert!(!h.ring.more_used(&h.mem));
    h.add_ok(&[1], &[]);
    assert!(!h.ring.more_used(&h.mem));
    h.serve_all();
    assert!(h.ring.more_used(&h.mem));
    h.get_buf().unwrap().unwrap();
    assert!(!h.ring.more_used(&h.mem));
}

#[test]
fn sixteen_bit_wrap_around_over_many_cycles() {
    // Five laps of the 16-bit index space with a 4-entry ring, mixed chains, up to 3
    // buffers out at once.
    let mut h = Harness::new(4, false, false);
    let mut done = 0u64;
    let mut next = 0u32;
    while done < 5 * 65536 + 17 {
        while h.ring.num_free() >= 2 && h.outstanding() < 3 {
            next = next.wrapping_add(1);
            if next % 3 == 0 {
                h.add_ok(&[1], &[2]);
            } else {
                h.add_ok(&[], &[4]);
            }
        }
        h.pop_all();
        // Complete the newest first to keep the heads moving around.
        let k = h.popped.len() - 1;
        let len = h.popped[k].writable_len();
        h.complete(k, len);
        done += h.drain().len() as u64;
    }
    assert_eq!(h.returned() as u64, done);
    assert_eq!(h.ring.last_used_idx(), (done % 65536) as u16);
    h.detach_all();
}

#[test]
fn violation_display() {
    let cases = [
        (
            Violation::UsedIdOutOfRange { id: 9 },
            "used id 9 out of range",
        ),
        (
            Violation::UsedIdNotInFlight { id: 3 },
            "used id 3 is not a head in flight",
        ),
        (
            Violation::UsedIdxJump { last: 1, new: 9 },
            "used idx jumped from 1 to 9",
        ),
        (
            Violation::RingTooSmall { len: 1, need: 2 },
            "ring memory of 1 bytes, layout needs 2",
        ),
    ];
    for (v, s) in cases {
        assert_eq!(v.to_string(), s);
    }
    let c = LenClamp {
        id: 1,
        len: 9,
        max: 8,
    };
    assert_eq!(c.to_string(), "used id 1 len 9 exceeds writable length 8");
    let h = Harness::new(2, false, false);
    assert!(format!("{:?}", h.ring).contains("num_free: 2"));
}
