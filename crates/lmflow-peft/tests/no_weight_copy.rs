//! The forward pass of a [`Linear`] reads its stored `[out, in]` weight in place: no
//! weight-sized buffer is allocated per call (a counting global allocator records the largest
//! allocation made during the call). Guards the weight-layout fix of the speed work without
//! timing anything.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::{Device, Distribution, Tensor};
use lmflow_peft::{Linear, LinearConfig, LoraAdapter, LoraInit};

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Tests run on parallel threads of one process and share the counter: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Largest single allocation made while `f` runs.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.store(0, Ordering::SeqCst);
    let out = f();
    (out, LARGEST.load(Ordering::SeqCst))
}

const D_IN: usize = 512;
const D_OUT: usize = 8192;
const WEIGHT_BYTES: usize = D_IN * D_OUT * 4;

/// A layer whose weight is materialised (parameters may be initialised lazily, on first use).
fn layer(device: &Device) -> Linear {
    let lin = LinearConfig::new(D_IN, D_OUT).with_bias(false).init(device);
    let _ = lin.weight.val();
    lin
}

#[test]
fn linear_forward_makes_no_weight_sized_copy() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex();
    let lin = layer(&device);
    for shape in [[1, 1, D_IN], [4, 16, D_IN]] {
        let x = Tensor::<3>::random(shape, Distribution::Default, &device);
        let (y, largest) = largest_allocation(|| lin.forward(x).into_data());
        assert_eq!(y.shape()[2], D_OUT);
        assert!(
            largest < WEIGHT_BYTES / 4,
            "input {shape:?}: a {largest}-byte buffer was allocated (weight is {WEIGHT_BYTES} bytes)"
        );
    }
}

#[test]
fn lora_forward_and_backward_never_form_the_weight_sized_delta() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = Device::flex().autodiff();
    let mut lin = layer(&device);
    lin.set_base_trainable(false);
    let (adapter, _) = LoraAdapter::init(
        "default",
        lin.dense_weight(),
        8,
        2.0,
        0.0,
        &LoraInit::Random,
        false,
    )
    .unwrap();
    lin.adapters.push(adapter);
    lin.active_adapter = Some("default".into());
    let x = Tensor::<3>::random([1, 4, D_IN], Distribution::Default, &device).require_grad();
    let (_, largest) = largest_allocation(|| {
        let loss = lin.forward(x.clone()).sum();
        let grads = loss.backward();
        let a = lin.adapters[0].lora_a.grad(&grads).unwrap();
        let b = lin.adapters[0].lora_b.grad(&grads).unwrap();
        (a.into_data(), b.into_data())
    });
    // `B·A` (or its gradient) would be a [D_OUT, D_IN] buffer.
    assert!(
        largest < WEIGHT_BYTES / 4,
        "a {largest}-byte buffer was allocated (B·A would be {WEIGHT_BYTES} bytes)"
    );
}
