// SPDX-License-Identifier: GPL-2.0

//! Property tests: long pseudo-random runs (deterministic seeds, no crates) of an honest
//! device, of the notification / interrupt protocol, and of the fuzz target's interpreter.

use virtio_ring_core::sim::{
    hostile_run,
    Harness,
    Rng, //
};

/// Ring shapes: (num, event_idx, indirect).
fn shapes() -> impl Iterator<Item = (u16, bool, bool)> {
    [1u16, 2, 4, 8, 64, 256].into_iter().flat_map(|n| {
        [
            (n, false, false),
            (n, true, false),
            (n, false, true),
            (n, true, true),
        ]
    })
}

/// Random lengths for `n` elements.
fn lens(rng: &mut Rng, n: u64) -> Vec<u32> {
    (0..n).map(|_| rng.below(5000) as u32).collect()
}

#[test]
fn honest_device_random_runs_never_break_and_return_every_token() {
    for (num, event_idx, indirect) in shapes() {
        for seed in 0..4 {
            let mut rng = Rng::new(seed * 1000 + u64::from(num));
            let mut h = Harness::new(num, event_idx, indirect);
            for _ in 0..20_000 {
                match rng.below(10) {
                    0..=3 => {
                        let max = u64::from(num).min(6) + 1;
                        let n_out = rng.below(max);
                        let n_in = rng.below(max);
                        let out = lens(&mut rng, n_out);
                        let inp = lens(&mut rng, n_in);
                        let _ = h.add(&out, &inp);
                    }
                    4 => {
                        h.pop_all();
                    }
                    5 | 6 => {
                        h.pop_all();
                        if !h.popped.is_empty() {
                            let k = rng.below(h.popped.len() as u64) as usize;
                            let max = h.popped[k].writable_len();
                            let len = rng.below(u64::from(max) + 1) as u32;
                            h.complete(k, len);
                        }
                    }
                    7 => {
                        let _ = h.get_buf();
                    }
                    8 => {
                        let _ = h.ring.kick_prepare(&h.mem);
                    }
                    _ => match rng.below(3) {
                        0 => h.ring.disable_cb(&h.mem),
                        1 => {
                            let _ = h.ring.enable_cb(&h.mem);
                        }
                        _ => {
                            let _ = h.ring.enable_cb_delayed(&h.mem);
                        }
                    },
                }
                assert!(!h.ring.is_broken(), "{:?}", h.ring);
            }
            h.drain();
            h.detach_all();
        }
    }
}

/// No lost wakeups: after `enable_cb()` returned true, the next used entry the device
/// publishes makes it interrupt; after it returned false there was something to process.
#[test]
fn enable_cb_never_loses_an_interrupt() {
    for event_idx in [false, true] {
        let mut rng = Rng::new(7);
        let mut h = Harness::new(16, event_idx, false);
        h.dev.should_interrupt(&h.mem);
        for _ in 0..200_000 {
            while h.ring.num_free() > 0 && rng.chance(2, 3) {
                h.add_ok(&[], &[1]);
            }
            h.pop_all();
            // Some completions while callbacks are off.
            h.ring.disable_cb(&h.mem);
            for _ in 0..rng.below(3) {
                if !h.popped.is_empty() {
                    h.complete(0, 1);
                    h.dev.should_interrupt(&h.mem);
                }
            }
            for _ in 0..rng.below(3) {
                let _ = h.get_buf();
            }
            if !h.ring.enable_cb(&h.mem) {
                assert!(h.ring.more_used(&h.mem));
                h.drain();
                continue;
            }
            assert!(!h.ring.more_used(&h.mem));
            if !h.popped.is_empty() {
                h.complete(0, 1);
                assert!(h.dev.should_interrupt(&h.mem), "lost interrupt");
                h.drain();
            }
        }
        h.detach_all();
    }
}

/// After `enable_cb_delayed()` returned true, completing every outstanding buffer makes the
/// device interrupt at least once.
#[test]
fn enable_cb_delayed_never_loses_an_interrupt() {
    for event_idx in [false, true] {
        let mut rng = Rng::new(11);
        let mut h = Harness::new(64, event_idx, false);
        h.dev.should_interrupt(&h.mem);
        for _ in 0..50_000 {
            for _ in 0..rng.below(40) + 1 {
                if h.ring.num_free() > 0 {
                    h.add_ok(&[], &[1]);
                }
            }
            h.ring.disable_cb(&h.mem);
            h.pop_all();
            if !h.ring.enable_cb_delayed(&h.mem) {
                h.drain();
                continue;
            }
            let mut fired = false;
            while !h.popped.is_empty() {
                let k = rng.below(h.popped.len() as u64) as usize;
                h.complete(k, 1);
                fired |= h.dev.should_interrupt(&h.mem);
            }
            assert!(fired || h.outstanding() == 0, "lost interrupt");
            h.drain();
        }
        h.detach_all();
    }
}

/// The fuzz target's interpreter on pseudo-random inputs: the fuzz invariants hold under
/// `cargo test` too.
#[test]
fn hostile_interpreter_random_inputs() {
    let mut rng = Rng::new(42);
    for _ in 0..3000 {
        let len = rng.below(2048) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        hostile_run(&data);
    }
}

/// Inputs biased toward honest traffic with rare hostile writes, to reach deep states.
#[test]
fn hostile_interpreter_mostly_honest_inputs() {
    let mut rng = Rng::new(43);
    for _ in 0..1000 {
        let mut data = vec![rng.next_u64() as u8];
        for _ in 0..rng.below(3000) {
            let op = if rng.chance(1, 50) {
                rng.below(16) as u8
            } else {
                [0u8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 14][rng.below(13) as usize]
            };
            data.push(op);
            for _ in 0..4 {
                data.push(rng.next_u64() as u8);
            }
        }
        hostile_run(&data);
    }
}
