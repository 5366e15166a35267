// SPDX-License-Identifier: GPL-2.0
/*
 * vring_bench_c: the ring micro-benchmark of virtio_ring_rs (virtio_ring_rs/bench.rs), run
 * on the kernel's own C split ring (drivers/virtio/virtio_ring.c, built in), so that the two
 * cycles can be compared in the same guest.
 *
 * insmod vring_bench_c.ko bench_cycles=N runs N cycles of
 *   virtqueue_add_inbuf (one 4096-byte device-writable element)
 *   + virtqueue_kick_prepare (+ virtqueue_notify when it says so)
 *   + device completion (played here, exactly as bench.rs plays it)
 *   + virtqueue_get_buf
 * on a 256-entry legacy split queue with VIRTIO_RING_F_EVENT_IDX, timed with the monotonic
 * clock in BATCHES equal batches, and logs the mean and the fastest batch, as bench.rs does:
 *   vring_bench_c: bench: N cycles, X.Y ns/cycle (fastest of 20 batches: Z.W ns/cycle)
 *
 * Matching bench.rs:
 * - the queue is created over ordinary kernel memory (kzalloc, as KVec) by
 *   vring_new_virtqueue() with weak barriers (legacy virtio-pci), for a fake virtio_device
 *   that has EVENT_IDX and not ACCESS_PLATFORM, so the ring bypasses the DMA API and the
 *   "DMA address" of the buffer is its physical address (nothing does DMA);
 * - callbacks are enabled (a callback is given, never called), as the Rust queue starts with
 *   callbacks enabled: each get_buf publishes used_event with a full barrier on both sides;
 * - the notify callback does nothing and reports success;
 * - the device reads avail->idx and the avail entry, writes the used element, avail_event
 *   (= the next avail index, as QEMU does), a write barrier, then used->idx.
 *
 * premapped=1 adds with virtqueue_add_inbuf_premapped() instead (the caller gives the DMA
 * address, as the Rust API always does), to show what the scatterlist-to-address step costs.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/timekeeping.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/virtio_ring.h>

#define NUM 256
#define BUF_LEN 4096
#define VRING_ALIGN 4096	/* VIRTIO_PCI_VRING_ALIGN */
#define BATCHES 20		/* timed separately; the last one takes the remainder */

static unsigned int bench_cycles = 100000;
module_param(bench_cycles, uint, 0444);
MODULE_PARM_DESC(bench_cycles, "cycles to run at load (0: none)");

static bool premapped;
module_param(premapped, bool, 0444);
MODULE_PARM_DESC(premapped, "add with virtqueue_add_inbuf_premapped (default: virtqueue_add_inbuf)");

/* The simulated device needs no notification, and it is never gone. */
static bool bench_notify(struct virtqueue *vq)
{
	return true;
}

/* Never called: only there so that callbacks are enabled, as in the Rust queue. */
static void bench_callback(struct virtqueue *vq)
{
}

struct bench {
	struct virtqueue *vq;
	struct vring vr;		/* the device's view of the ring memory */
	struct scatterlist sg;
	void *token;
	u16 next;			/* the device's next avail = used index */
	unsigned int notifies;
};

/* One cycle: add, kick_prepare (+ notify), the device's completion, get_buf. */
static __always_inline int cycle(struct bench *b)
{
	unsigned int len;
	u16 slot, head;
	int err;

	if (premapped)
		err = virtqueue_add_inbuf_premapped(b->vq, &b->sg, 1, b->token, NULL,
						    GFP_KERNEL);
	else
		err = virtqueue_add_inbuf(b->vq, &b->sg, 1, b->token, GFP_KERNEL);
	if (err)
		return err;
	if (virtqueue_kick_prepare(b->vq)) {
		virtqueue_notify(b->vq);
		b->notifies++;
	}

	/* The device: one new buffer, completed in full. */
	if (READ_ONCE(b->vr.avail->idx) != (__force __virtio16)(u16)(b->next + 1)) {
		pr_err("bench: avail index out of step\n");
		return -EIO;
	}
	/* One buffer per cycle: the avail and used indexes move in step. */
	slot = b->next & (NUM - 1);
	head = (__force u16)READ_ONCE(b->vr.avail->ring[slot]);
	WRITE_ONCE(b->vr.used->ring[slot].id, (__force __virtio32)(u32)head);
	WRITE_ONCE(b->vr.used->ring[slot].len, (__force __virtio32)BUF_LEN);
	b->next++;
	WRITE_ONCE(vring_avail_event(&b->vr), (__force __virtio16)b->next);
	/* Orders the used element before the used index that publishes it. */
	smp_wmb();
	WRITE_ONCE(b->vr.used->idx, (__force __virtio16)b->next);

	len = 0;
	if (virtqueue_get_buf(b->vq, &len) != b->token || len != BUF_LEN) {
		pr_err("bench: the queue returned the wrong buffer\n");
		return -EIO;
	}
	return 0;
}

static int run(unsigned int cycles)
{
	struct virtio_device *vdev;
	struct bench b = {};
	unsigned int batch, i, n, per_batch = cycles / BATCHES;
	u64 t0, ns, total_ns = 0, ps, best_ps = U64_MAX;
	void *ring, *buf;
	u8 marker = 0;
	int err = -ENOMEM;

	vdev = kzalloc_obj(*vdev);
	ring = kzalloc(vring_size(NUM, VRING_ALIGN), GFP_KERNEL);
	buf = kmalloc(BUF_LEN, GFP_KERNEL);
	if (!vdev || !ring || !buf)
		goto out;
	spin_lock_init(&vdev->config_lock);
	spin_lock_init(&vdev->vqs_list_lock);
	INIT_LIST_HEAD(&vdev->vqs);
	/* What bench.rs negotiates: EVENT_IDX only (no ACCESS_PLATFORM: no DMA API). */
	vdev->features = BIT_ULL(VIRTIO_RING_F_EVENT_IDX);

	b.vq = vring_new_virtqueue(0, NUM, VRING_ALIGN, vdev, true, false, ring,
				   bench_notify, bench_callback, "vring_bench_c");
	if (!b.vq)
		goto out;

	vring_init(&b.vr, NUM, ring, VRING_ALIGN);
	sg_init_one(&b.sg, buf, BUF_LEN);
	sg_dma_address(&b.sg) = virt_to_phys(buf);
	/* Any non-null value will do: the queue never dereferences tokens. */
	b.token = &marker;

	for (batch = 0; batch < BATCHES; batch++) {
		n = batch == BATCHES - 1 ? cycles - per_batch * (BATCHES - 1) : per_batch;
		t0 = ktime_get_ns();
		for (i = 0; i < n; i++) {
			err = cycle(&b);
			if (err)
				goto del;
		}
		ns = ktime_get_ns() - t0;
		total_ns += ns;
		if (n)
			best_ps = min(best_ps, ns * 1000 / n);
	}

	ps = total_ns * 1000 / max(cycles, 1u);
	if (best_ps == U64_MAX)
		best_ps = ps;
	pr_info("bench: %u cycles, %llu.%llu ns/cycle (fastest of %u batches: %llu.%llu ns/cycle)%s\n",
		cycles, ps / 1000, ps % 1000 / 100, BATCHES, best_ps / 1000,
		best_ps % 1000 / 100, premapped ? " premapped" : "");
	if (b.notifies != cycles)
		pr_warn("bench: %u notifications for %u cycles\n", b.notifies, cycles);
	err = 0;
del:
	vring_del_virtqueue(b.vq);
out:
	kfree(buf);
	kfree(ring);
	kfree(vdev);
	return err;
}

static int __init vring_bench_c_init(void)
{
	return bench_cycles ? run(bench_cycles) : 0;
}

static void __exit vring_bench_c_exit(void)
{
}

module_init(vring_bench_c_init);
module_exit(vring_bench_c_exit);
MODULE_DESCRIPTION("Micro-benchmark of the C virtio split ring, as virtio_ring_rs's bench");
MODULE_LICENSE("GPL");
