//! What the programs could not record, counted per cause for userspace.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use tracer_common::{Loss, LOSS_KINDS};

#[map]
static LOSSES: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOSS_KINDS, 0);

pub fn count_loss(loss: Loss) {
    if let Some(counter) = LOSSES.get_ptr_mut(loss as u32) {
        // Per-CPU slot and programs do not nest on a CPU: a plain increment is race free.
        unsafe { *counter += 1 };
    }
}
