// SPDX-License-Identifier: GPL-2.0

//! The driver-facing virtio API: what a virtio device driver of this stack is written against.
//!
//! Shaped like the kernel's C virtio core (`struct virtio_driver`, `virtio_find_vqs()`,
//! `virtio_cread()`) and the Rust virtio abstractions proposed upstream: a driver implements
//! [`Driver`] (an id table of virtio device types, its features, `probe`, `remove`, and the
//! per-queue and configuration callbacks, all but `probe` optional) and declares its module
//! with [`module_virtio_driver!`].  In `probe` it gets a [`Device`]: the negotiated features,
//! typed configuration reads and writes ([`ConfigField`]), and [`Device::find_vqs`], whose
//! [`Virtqueues`] reset the device and delete the queues when dropped.  A driver written on
//! it needs no `unsafe`: the façade turns the transport's [`DeviceHandle`] and its lifetime
//! rule (valid until the auxiliary device is unbound) into ownership.
//!
//! Lifetime: the handle is valid until the driver's auxiliary device is unbound.  Everything
//! that reaches it from a driver is a counted [`DeviceRef`] (a [`Virtqueues`] holds one), and
//! unbinding (the drop of the adapter's [`Bound`]) waits until the driver dropped all of them;
//! a driver drops them in [`Driver::remove`] (or lets its data drop them).  A `DeviceRef` may
//! be kept in state that work items share, for configuration access outside `probe`.

use super::{
    device_name,
    DeviceCallbacks,
    DeviceHandle,
    Virtqueue,
    Vqs,
    MAX_VQS,
    TRANSPORT_MODNAME, //
};
use core::{
    marker::PhantomData,
    ops::Deref,
    ptr::NonNull, //
};
use kernel::{
    auxiliary, device,
    prelude::*,
    sync::{
        atomic::{
            Atomic,
            Full,
            Release, //
        },
        Arc,
        ArcBorrow,
        Completion, //
    },
};

/// A virtio device type a driver serves (virtio spec 1.x section 5), as in its id table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DeviceId(u32);

impl DeviceId {
    /// The id of virtio device type `device_type`.
    pub(crate) const fn new(device_type: u32) -> Self {
        Self(device_type)
    }

    /// The virtio device type.
    pub(crate) const fn device_type(self) -> u32 {
        self.0
    }
}

/// Device type of the entropy source.
pub(crate) const VIRTIO_ID_RNG: DeviceId = DeviceId::new(4);

/// The auxiliary device id the transport gives a function of `device_type` (an id that no
/// device matches for an unknown type; [`all_known`] rejects those at build time).
pub(crate) const fn aux_id(device_type: u32) -> auxiliary::DeviceId {
    let mut i = 0;
    while i < super::DEVICE_NAMES.len() {
        let (id, name) = super::DEVICE_NAMES[i];
        if id == device_type {
            return auxiliary::DeviceId::new(TRANSPORT_MODNAME, name);
        }
        i += 1;
    }
    auxiliary::DeviceId::new(TRANSPORT_MODNAME, c"unknown-virtio-type")
}

/// Whether the transport names every device type of `ids` (checked at build time by
/// [`module_virtio_driver!`]).
pub(crate) const fn all_known(ids: &[DeviceId]) -> bool {
    let mut i = 0;
    while i < ids.len() {
        let mut known = false;
        let mut j = 0;
        while j < super::DEVICE_NAMES.len() {
            if super::DEVICE_NAMES[j].0 == ids[i].0 {
                known = true;
            }
            j += 1;
        }
        if !known {
            return false;
        }
        i += 1;
    }
    true
}

/// The auxiliary id table of a driver's virtio id table (for [`module_virtio_driver!`]).
pub(crate) const fn aux_table<const N: usize>(ids: &[DeviceId]) -> [(auxiliary::DeviceId, ()); N] {
    let mut table = [(aux_id(u32::MAX), ()); N];
    let mut i = 0;
    while i < N && i < ids.len() {
        table[i] = (aux_id(ids[i].0), ());
        i += 1;
    }
    table
}

/// The feature mask of a list of feature bit numbers (bits above 63 are ignored).
pub(crate) const fn feature_mask(bits: &[u32]) -> u64 {
    let mut mask = 0;
    let mut i = 0;
    while i < bits.len() {
        if bits[i] < 64 {
            mask |= 1 << bits[i];
        }
        i += 1;
    }
    mask
}

/// A virtio device driver (the C `struct virtio_driver`).
///
/// Like a `#[vtable]` trait, everything but the id table and `probe` has a default.
pub(crate) trait Driver: Sized + 'static {
    /// The device types the driver binds to.
    const ID_TABLE: &'static [DeviceId];
    /// The device feature bits the driver understands (negotiated before `probe`).
    const FEATURES: &'static [u32] = &[];
    /// Per-device data, returned by `probe` and dropped after `remove`.
    type Data: Send;
    /// The state the queue and configuration callbacks run on (given to
    /// [`Device::find_vqs`]).
    type Shared: Send + Sync + 'static;

    /// Checks what the driver needs before the device is touched (module parameters, say),
    /// as C's `virtio_driver.validate`; by default nothing.  An error fails the probe with the
    /// device untouched.
    fn validate(_dev: &kernel::device::Device) -> Result {
        Ok(())
    }

    /// The features to ask for, given what the device offers; by default [`Self::FEATURES`].
    fn features(_offered: u64) -> u64 {
        feature_mask(Self::FEATURES)
    }

    /// Sets up a bound device: features are negotiated; the driver creates its queues, reads
    /// its configuration and calls [`Device::ready`].
    fn probe(dev: &Device<'_>) -> Result<Self::Data>;

    /// Tears the device down before `data` drops (stop work, take buffers back); device I/O
    /// belongs here.  The queues must be dropped by the time `data` has been.
    fn remove(_dev: &Device<'_>, _data: &Self::Data) {}

    /// Queue `queue` (its position in the `find_vqs` list) has used buffers.  Runs in
    /// interrupt context, and once from any context when the device goes away.
    fn vq_callback(_shared: ArcBorrow<'_, Self::Shared>, _queue: usize) {}

    /// The device configuration changed (interrupt context).
    fn config_changed(_shared: ArcBorrow<'_, Self::Shared>) {}
}

/// Routes the transport's callbacks to a [`Driver`].
struct Glue<D>(PhantomData<D>);

impl<D: Driver> DeviceCallbacks for Glue<D> {
    type Ctx = D::Shared;

    fn vq_interrupt(this: ArcBorrow<'_, D::Shared>, slot: usize) {
        D::vq_callback(this, slot)
    }

    fn config_changed(this: ArcBorrow<'_, D::Shared>) {
        D::config_changed(this)
    }
}

/// What the façade shares between the handles of one bound device.
///
/// # Invariants
///
/// `handle` is valid until `released` is completed: `holders` counts the [`DeviceRef`]s
/// (one of them is the adapter's [`Bound`], made first and dropped last), `released` is
/// completed when the count drops to zero, and the drop of [`Bound`] (at unbind, or a failed
/// probe) waits for it.  So every `DeviceRef`, and every [`Virtqueues`], which holds one, is
/// gone before the handle can go.
#[pin_data]
pub(crate) struct Link {
    handle: NonNull<DeviceHandle>,
    holders: Atomic<usize>,
    vqs_created: Atomic<bool>,
    #[pin]
    released: Completion,
}

// SAFETY: `DeviceHandle` is `Sync`; the pointer is only dereferenced under the invariant.
unsafe impl Send for Link {}
// SAFETY: See `Send`.
unsafe impl Sync for Link {}

/// A counted reference to a bound device: configuration access, status and reset from any
/// process context (a work item, say).  The unbind waits until every one is dropped: a
/// driver keeps them in its state and drops them by the end of [`Driver::remove`] (or with
/// its data).
pub(crate) struct DeviceRef {
    link: Arc<Link>,
    features: u64,
}

impl DeviceRef {
    /// The first reference of a bound device (the adapter's).
    fn new(handle: &DeviceHandle, features: u64) -> Result<Self> {
        let link = Arc::pin_init(
            pin_init!(Link {
                handle: NonNull::from(handle),
                holders: Atomic::new(1),
                vqs_created: Atomic::new(false),
                released <- Completion::new(),
            }),
            GFP_KERNEL,
        )?;
        Ok(Self { link, features })
    }

    fn handle(&self) -> &DeviceHandle {
        // SAFETY: `self` is counted in `holders`, so `released` is not completed and the
        // handle is valid (type invariant of `Link`).
        unsafe { self.link.handle.as_ref() }
    }

    /// Drops the adapter's reference and waits until no other is left.
    fn release_and_wait(self) {
        let link = self.link.clone();
        drop(self);
        link.released.wait_for_completion();
    }

    /// The virtio device type.
    pub(crate) fn device_type(&self) -> u32 {
        self.handle().device_type
    }

    /// The feature bits the device offers.
    pub(crate) fn offered_features(&self) -> u64 {
        self.handle().host_features
    }

    /// The negotiated feature bits.
    pub(crate) fn features(&self) -> u64 {
        self.features
    }

    /// Whether feature `bit` was negotiated.
    pub(crate) fn has_feature(&self, bit: u32) -> bool {
        bit < 64 && self.features & (1 << bit) != 0
    }

    /// Reads a configuration field.
    ///
    /// # Errors
    ///
    /// `EINVAL` if the field is outside the device configuration.
    pub(crate) fn read<T: ConfigValue>(&self, field: ConfigField<T>) -> Result<T> {
        T::read(self.handle(), field.offset)
    }

    /// Writes a configuration field.
    ///
    /// # Errors
    ///
    /// `EINVAL` if the field is outside the device configuration.
    pub(crate) fn write<T: ConfigValue>(&self, field: ConfigField<T>, val: T) -> Result {
        T::write(self.handle(), field.offset, val)
    }

    /// Reads the `T` at byte `offset` of the device configuration.
    ///
    /// # Errors
    ///
    /// `EINVAL` if the field is outside the device configuration.
    pub(crate) fn config_read<T: ConfigValue>(&self, offset: u32) -> Result<T> {
        T::read(self.handle(), offset)
    }

    /// Writes the `T` at byte `offset` of the device configuration.
    ///
    /// # Errors
    ///
    /// `EINVAL` if the field is outside the device configuration.
    pub(crate) fn config_write<T: ConfigValue>(&self, offset: u32, val: T) -> Result {
        T::write(self.handle(), offset, val)
    }

    /// Tells the device the driver is ready (DRIVER_OK): call at the end of `probe`.
    pub(crate) fn ready(&self) {
        self.handle().ready()
    }

    /// Tells the device the driver gave up on it (FAILED).
    pub(crate) fn fail(&self) {
        self.handle().fail()
    }

    /// Resets the device; when it returns, no callback is running and the device uses no
    /// buffer (its queues stay until [`Virtqueues`] drops).
    pub(crate) fn reset(&self) {
        self.handle().reset()
    }
}

impl Clone for DeviceRef {
    fn clone(&self) -> Self {
        // The count is above zero (`self` is in it), so `released` cannot have completed.
        self.link.holders.fetch_add(1, Full);
        Self {
            link: self.link.clone(),
            features: self.features,
        }
    }
}

impl Drop for DeviceRef {
    fn drop(&mut self) {
        if self.link.holders.fetch_sub(1, Full) == 1 {
            self.link.released.complete_all();
        }
    }
}

/// A bound virtio device, as the driver sees it in `probe` and `remove`; it dereferences to
/// a [`DeviceRef`] (configuration, status, features).
pub(crate) struct Device<'a> {
    adev: &'a auxiliary::Device<device::Bound>,
    dref: &'a DeviceRef,
}

impl Deref for Device<'_> {
    type Target = DeviceRef;

    fn deref(&self) -> &DeviceRef {
        self.dref
    }
}

impl<'a> Device<'a> {
    /// The id of the auxiliary device (unique among the transport's devices).
    pub(crate) fn id(&self) -> u32 {
        self.adev.id()
    }

    /// The device to allocate memory shared with the device for (the PCI function).
    pub(crate) fn dma_device(&self) -> &'a device::Device<device::Bound> {
        self.adev.parent()
    }

    /// A reference to the device for use outside `probe` and `remove`.
    pub(crate) fn device_ref(&self) -> DeviceRef {
        self.dref.clone()
    }

    /// Creates the queues of `queues` (in that order: a queue's position is its number in
    /// [`Virtqueues::get`] and [`Driver::vq_callback`]), whose callbacks run on `shared`.
    ///
    /// Once per bound device.
    ///
    /// # Errors
    ///
    /// `EBUSY` if the queues were created already, `EINVAL` for more than [`MAX_VQS`] queues,
    /// `ENOENT` for a queue the device does not have, `E2BIG`, `ENOMEM`.
    pub(crate) fn find_vqs<D: Driver>(
        &self,
        queues: &[QueueInfo],
        shared: Arc<D::Shared>,
    ) -> Result<Virtqueues<D>> {
        if queues.len() > MAX_VQS {
            return Err(EINVAL);
        }
        if self.dref.link.vqs_created.xchg(true, Full) {
            return Err(EBUSY);
        }
        let mut indexes = KVec::new();
        for q in queues {
            if let Err(e) = indexes.push(q.index, GFP_KERNEL) {
                self.dref.link.vqs_created.store(false, Release);
                return Err(e.into());
            }
        }
        let dref = self.dref.clone();
        // SAFETY: The returned `Vqs` goes into a `Virtqueues` with `dref`, which it drops only
        // after the queues: the handle stays valid until then (invariant of `Link`).
        let vqs = unsafe { dref.handle().find_vqs::<Glue<D>>(&indexes, shared) }
            .inspect_err(|_| self.dref.link.vqs_created.store(false, Release))?;
        Ok(Virtqueues {
            vqs: Some(vqs),
            dref,
        })
    }
}

impl AsRef<device::Device> for Device<'_> {
    fn as_ref(&self) -> &device::Device {
        self.adev.as_ref()
    }
}

/// One queue a driver asks for (the C `struct virtqueue_info`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueInfo {
    /// Queue index on the device.
    pub(crate) index: u16,
}

impl QueueInfo {
    /// The queue at `index` on the device.
    pub(crate) const fn new(index: u16) -> Self {
        Self { index }
    }
}

/// The queues of a device, owned by its driver.
///
/// Dropping it resets the device (so that it uses no buffer any more), deletes the queues
/// and lets the unbind, which waits for this, go on.
pub(crate) struct Virtqueues<D: Driver> {
    vqs: Option<Vqs<Glue<D>>>,
    dref: DeviceRef,
}

impl<D: Driver> Virtqueues<D> {
    /// The queue at position `n` of the `find_vqs` list.
    pub(crate) fn get(&mut self, n: usize) -> Option<&mut Virtqueue> {
        self.vqs.as_mut().and_then(|v| v.get(n))
    }

    /// The number of queues.
    pub(crate) fn len(&self) -> usize {
        self.vqs.as_ref().map_or(0, |v| v.len())
    }
}

impl<D: Driver> Drop for Virtqueues<D> {
    fn drop(&mut self) {
        self.dref.reset();
        // Deletes the queues; then no callback runs and the callback state may go.  The
        // reference to the device goes after (field drop).
        drop(self.vqs.take());
    }
}

/// A value in the device configuration (little-endian on the legacy interface).
pub(crate) trait ConfigValue: Sized + Copy {
    /// Reads the value at `offset`.
    ///
    /// # Errors
    ///
    /// `EINVAL` if it is outside the device configuration.
    fn read(handle: &DeviceHandle, offset: u32) -> Result<Self>;

    /// Writes the value at `offset`.
    ///
    /// # Errors
    ///
    /// `EINVAL` if it is outside the device configuration.
    fn write(handle: &DeviceHandle, offset: u32, val: Self) -> Result;
}

impl ConfigValue for u8 {
    fn read(handle: &DeviceHandle, offset: u32) -> Result<Self> {
        Ok(u8::try_from(handle.config_read(offset, 1)? & 0xff)?)
    }

    fn write(handle: &DeviceHandle, offset: u32, val: Self) -> Result {
        handle.config_write(offset, 1, val.into())
    }
}

impl ConfigValue for u16 {
    fn read(handle: &DeviceHandle, offset: u32) -> Result<Self> {
        Ok(u16::try_from(handle.config_read(offset, 2)? & 0xffff)?)
    }

    fn write(handle: &DeviceHandle, offset: u32, val: Self) -> Result {
        handle.config_write(offset, 2, val.into())
    }
}

impl ConfigValue for u32 {
    fn read(handle: &DeviceHandle, offset: u32) -> Result<Self> {
        handle.config_read(offset, 4)
    }

    fn write(handle: &DeviceHandle, offset: u32, val: Self) -> Result {
        handle.config_write(offset, 4, val)
    }
}

impl ConfigValue for u64 {
    /// Two 32-bit reads, low half first, repeated while the high half changes under it (the
    /// legacy interface has no configuration generation counter).
    fn read(handle: &DeviceHandle, offset: u32) -> Result<Self> {
        let high_off = offset.checked_add(4).ok_or(EINVAL)?;
        // TIMEOUT: a device that keeps changing the field gets the last value read.
        let mut high = handle.config_read(high_off, 4)?;
        let mut low = handle.config_read(offset, 4)?;
        for _ in 0..3 {
            let again = handle.config_read(high_off, 4)?;
            if again == high {
                break;
            }
            high = again;
            low = handle.config_read(offset, 4)?;
        }
        Ok(u64::from(high) << 32 | u64::from(low))
    }

    fn write(handle: &DeviceHandle, offset: u32, val: Self) -> Result {
        let high_off = offset.checked_add(4).ok_or(EINVAL)?;
        // CAST: the low and high halves, truncation intended.
        handle.config_write(offset, 4, val as u32)?;
        handle.config_write(high_off, 4, (val >> 32) as u32)
    }
}

/// A typed field of a device's configuration: its offset and type.
pub(crate) struct ConfigField<T: ConfigValue> {
    offset: u32,
    _type: PhantomData<T>,
}

impl<T: ConfigValue> Clone for ConfigField<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ConfigValue> Copy for ConfigField<T> {}

impl<T: ConfigValue> ConfigField<T> {
    /// The field of type `T` at byte `offset`.
    pub(crate) const fn new(offset: u32) -> Self {
        Self {
            offset,
            _type: PhantomData,
        }
    }
}

/// The auxiliary driver data of a device bound through the façade.
///
/// Drop order: the driver's data first (which drops its queues and references), then the
/// adapter's own reference, then the wait for references kept elsewhere.
///
/// # Invariants
///
/// `data` and `dref` are `Some` until the drop.
pub(crate) struct Bound<D: Driver> {
    data: Option<D::Data>,
    dref: Option<DeviceRef>,
}

impl<D: Driver> Drop for Bound<D> {
    fn drop(&mut self) {
        drop(self.data.take());
        // The handle must outlive every reference: one kept past the data (in a work item,
        // say) is waited for.
        if let Some(dref) = self.dref.take() {
            dref.release_and_wait();
        }
    }
}

/// `auxiliary::Driver::probe` of a façade driver (called by [`module_virtio_driver!`]).
///
/// # Errors
///
/// `ENODEV` if the device carries no handle or is of a type the driver does not serve,
/// `EPROTO` for an incompatible transport, and whatever [`Driver::probe`] returns.
pub(crate) fn probe<D: Driver>(adev: &auxiliary::Device<device::Bound>) -> Result<Bound<D>> {
    let handle = DeviceHandle::from_auxiliary(adev).inspect_err(|e| {
        dev_err!(
            adev,
            "no usable device handle from the transport ({:?})\n",
            e
        );
    })?;
    if !D::ID_TABLE
        .iter()
        .any(|id| id.device_type() == handle.device_type)
    {
        dev_err!(
            adev,
            "unexpected virtio device type {}\n",
            handle.device_type
        );
        return Err(ENODEV);
    }
    D::validate(adev.as_ref())?;
    let features = handle.finalize_features(D::features(handle.host_features));
    let dref = DeviceRef::new(handle, features)?;
    let dev = Device { adev, dref: &dref };
    match D::probe(&dev) {
        // INVARIANT: both are `Some`.
        Ok(data) => Ok(Bound {
            data: Some(data),
            dref: Some(dref),
        }),
        Err(e) => {
            // What a failed probe made must be gone before the handle can go.
            dref.release_and_wait();
            Err(e)
        }
    }
}

/// `auxiliary::Driver::unbind` of a façade driver (called by [`module_virtio_driver!`]).
pub(crate) fn unbind<D: Driver>(adev: &auxiliary::Device<device::Bound>, this: &Bound<D>) {
    if let (Some(data), Some(dref)) = (this.data.as_ref(), this.dref.as_ref()) {
        D::remove(&Device { adev, dref }, data);
    }
}

/// The name of the transport's auxiliary devices of `device_type`, for messages.
pub(crate) fn type_name(device_type: u32) -> &'static CStr {
    device_name(device_type).unwrap_or(c"unknown")
}

/// Module-wide state of a virtio driver (a workqueue, say): made before the driver registers,
/// dropped after it is unregistered.  `()` when the driver has none.
pub(crate) trait ModuleGlobals: Sized + Send + Sync {
    /// Makes the state at module load.
    fn new() -> Result<Self>;
}

impl ModuleGlobals for () {
    fn new() -> Result<Self> {
        Ok(())
    }
}

/// Declares the module of a virtio driver: its auxiliary id table (from [`Driver::ID_TABLE`]),
/// the auxiliary driver that binds the transport's devices through the façade, and the
/// module, which checks the ring's contract version before registering the driver.
///
/// Takes the [`Driver`] type, optionally `globals:` a [`ModuleGlobals`] type, then the keys of
/// `module!` after `type`.  The crate must
/// include the shared contract as `mod abi`.
// Only the driver crates expand it.
#[allow(unused_macros)]
macro_rules! module_virtio_driver {
    (driver: $drv:ty, globals: $globals:ty, $($rest:tt)*) => {
        const _: () = assert!(
            $crate::abi::virtio::all_known(<$drv as $crate::abi::virtio::Driver>::ID_TABLE),
            "a device type of the id table has no transport device name"
        );

        kernel::auxiliary_device_table!(
            VIRTIO_AUX_TABLE,
            MODULE_VIRTIO_AUX_TABLE,
            (),
            $crate::abi::virtio::aux_table::<
                { <$drv as $crate::abi::virtio::Driver>::ID_TABLE.len() },
            >(<$drv as $crate::abi::virtio::Driver>::ID_TABLE)
        );

        /// The auxiliary driver behind the virtio driver.
        struct VirtioAuxDriver;

        impl kernel::auxiliary::Driver for VirtioAuxDriver {
            type IdInfo = ();
            type Data<'bound> = $crate::abi::virtio::Bound<$drv>;

            const ID_TABLE: kernel::auxiliary::IdTable<Self::IdInfo> = &VIRTIO_AUX_TABLE;

            fn probe<'bound>(
                adev: &'bound kernel::auxiliary::Device<kernel::device::Core<'_>>,
                _info: &'bound Self::IdInfo,
            ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
                // Probes when the kernel initializes the driver data it has allocated: if that
                // allocation fails, nothing was probed.  (A probed `Bound` dropped without
                // `unbind` would keep the driver's hooks and references, and its drop would
                // wait for them forever: `make stress` hung there.)
                pin_init::pin_init_scope(move || {
                    Ok::<_, Error>($crate::abi::virtio::probe::<$drv>(adev))
                })
            }

            fn unbind<'bound>(
                adev: &'bound kernel::auxiliary::Device<kernel::device::Core<'_>>,
                this: Pin<&Self::Data<'bound>>,
            ) {
                $crate::abi::virtio::unbind::<$drv>(adev, this.get_ref())
            }
        }

        /// The module: the auxiliary driver registration, after the contract check and the
        /// driver's module-wide state.
        ///
        /// Drop order (field order): the driver is unregistered first (every device unbound),
        /// then the module-wide state goes.
        #[pin_data]
        struct VirtioDriverModule {
            #[pin]
            _driver: kernel::driver::Registration<kernel::auxiliary::Adapter<VirtioAuxDriver>>,
            _globals: $globals,
        }

        impl kernel::InPlaceModule for VirtioDriverModule {
            fn init(module: &'static ThisModule) -> impl PinInit<Self, Error> {
                pin_init::pin_init_scope(move || {
                    $crate::abi::check_ring_abi()?;
                    // Before the driver: a device bound at registration may use it.
                    let globals = <$globals as $crate::abi::virtio::ModuleGlobals>::new()?;
                    Ok(try_pin_init!(Self {
                        _driver <- kernel::driver::Registration::new(
                            <LocalModule as kernel::ModuleMetadata>::NAME,
                            module
                        ),
                        _globals: globals,
                    }))
                })
            }
        }

        kernel::prelude::module! {
            type: VirtioDriverModule,
            $($rest)*
        }
    };
    (driver: $drv:ty, $($rest:tt)*) => {
        $crate::abi::virtio::module_virtio_driver!(driver: $drv, globals: (), $($rest)*);
    };
}
#[allow(unused_imports)]
pub(crate) use module_virtio_driver;
