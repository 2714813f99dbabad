//! The zombie slot table (`ZOMBIE_SLOTS`), memory-mapped: userspace reads and changes slots
//! with the same atomic protocol as the programs (see `tracer_common::ZombieSlot`).

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{fence, AtomicU64, Ordering},
};

use anyhow::{bail, Context, Result};
use aya::maps::{Map, MapData};
use tracer_common::{ProcessKey, Zombie, ZombieSlot};

/// What claiming a slot for a zombie did.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    Claimed,
    /// The slot already holds this process.
    AlreadyThere,
    /// Another process holds the slot.
    Taken,
}

pub struct SlotTable {
    base: NonNull<ZombieSlot>,
    slots: u32,
    mapped_bytes: usize,
}

impl SlotTable {
    /// Maps the table of `slots` entries.
    pub fn map(map: &Map, slots: u32) -> Result<Self> {
        let Map::Array(data) = map else {
            bail!("ZOMBIE_SLOTS is not an array map");
        };
        let mapped_bytes = mapping_len(slots);
        let fd = MapData::fd(data).as_fd().as_raw_fd();
        // SAFETY: a shared read-write mapping of an mmapable array map of this many bytes;
        // the kernel keeps the map alive while it is mapped.
        let address = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if address == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error()).context("cannot map ZOMBIE_SLOTS");
        }
        Ok(Self {
            base: NonNull::new(address.cast()).context("mmap returned null")?,
            slots,
            mapped_bytes,
        })
    }

    fn slot(&self, key: &ProcessKey) -> *mut ZombieSlot {
        self.at(key.slot(self.slots))
    }

    fn at(&self, index: u32) -> *mut ZombieSlot {
        debug_assert!(index < self.slots);
        // SAFETY: index < slots, and the mapping holds `slots` entries.
        unsafe { self.base.as_ptr().add(index as usize) }
    }

    /// Every ready slot, each copied consistently.
    pub fn entries(&self) -> Vec<(ProcessKey, Zombie)> {
        (0..self.slots)
            .filter_map(|index| {
                let slot = self.at(index);
                let (owner, published) = (owner(slot), published(slot));
                let before = owner.load(Ordering::Acquire);
                if before == 0 || published.load(Ordering::Acquire) != before {
                    return None;
                }
                // SAFETY: in the mapping; a torn copy is discarded below.
                let (key, zombie) = unsafe {
                    (
                        std::ptr::read_volatile(&raw const (*slot).key),
                        std::ptr::read_volatile(&raw const (*slot).zombie),
                    )
                };
                fence(Ordering::Acquire);
                let unchanged = owner.load(Ordering::Relaxed) == before
                    && published.load(Ordering::Relaxed) == before;
                (unchanged && key.owner() == before).then_some((key, zombie))
            })
            .collect()
    }

    pub fn claim(&self, key: &ProcessKey, zombie: &Zombie) -> Claim {
        let slot = self.slot(key);
        match owner(slot).compare_exchange(0, key.owner(), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                // SAFETY: the slot is ours until it is published.
                unsafe {
                    std::ptr::write_volatile(&raw mut (*slot).key, *key);
                    std::ptr::write_volatile(&raw mut (*slot).zombie, *zombie);
                }
                published(slot).store(key.owner(), Ordering::Release);
                Claim::Claimed
            }
            Err(current) if current == key.owner() => Claim::AlreadyThere,
            Err(_) => Claim::Taken,
        }
    }

    /// Takes `key`'s record out: `Some(true)` if this call took it (and so accounts for it),
    /// `Some(false)` if the kernel or another rewrite holds it, `None` if it is not here.
    pub fn take(&self, key: &ProcessKey) -> Option<bool> {
        let slot = self.slot(key);
        if owner(slot).load(Ordering::Acquire) != key.owner() {
            return None;
        }
        if !unpublish(slot, key) {
            return Some(false);
        }
        owner(slot).store(0, Ordering::Release);
        Some(true)
    }

    /// Rewrites `key`'s record; `false` if it is not here. Taken by the kernel meanwhile, it
    /// stays taken.
    pub fn rewrite(&self, key: &ProcessKey, zombie: &Zombie) -> bool {
        let slot = self.slot(key);
        if owner(slot).load(Ordering::Acquire) != key.owner() {
            return false;
        }
        if unpublish(slot, key) {
            // SAFETY: unpublished by us, nothing else writes the slot.
            unsafe { std::ptr::write_volatile(&raw mut (*slot).zombie, *zombie) };
            published(slot).store(key.owner(), Ordering::Release);
        }
        true
    }
}

impl Drop for SlotTable {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.mapped_bytes) };
    }
}

fn owner<'a>(slot: *mut ZombieSlot) -> &'a AtomicU64 {
    // SAFETY: an aligned u64 in the mapping, shared with the kernel only through atomics.
    unsafe { AtomicU64::from_ptr(&raw mut (*slot).owner) }
}

fn published<'a>(slot: *mut ZombieSlot) -> &'a AtomicU64 {
    // SAFETY: as for `owner`.
    unsafe { AtomicU64::from_ptr(&raw mut (*slot).published) }
}

/// Takes the slot's record if it is `key`'s and published: the one step that decides who
/// accounts for it.
fn unpublish(slot: *mut ZombieSlot, key: &ProcessKey) -> bool {
    published(slot)
        .compare_exchange(key.owner(), 0, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

/// Bytes of the mapping: the kernel rounds it up to whole pages.
fn mapping_len(slots: u32) -> usize {
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    (slots as usize * size_of::<ZombieSlot>()).div_ceil(page) * page
}

/// Slots for a table that backs `max_zombies` (a quarter of it, as a power of two), or 0 if
/// the kernel lacks BPF compare-and-swap (`release` older than 5.12).
pub fn slots_for(max_zombies: u32, release: (u32, u32)) -> u32 {
    if release < (5, 12) {
        return 0;
    }
    (max_zombies / 4).max(1).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_count_is_a_power_of_two_quarter() {
        assert_eq!(slots_for(65536, (6, 1)), 16384);
        assert_eq!(slots_for(1000, (5, 12)), 256);
        assert_eq!(slots_for(1, (6, 18)), 1);
        assert_eq!(slots_for(65536, (5, 11)), 0);
    }

    #[test]
    fn owner_words_tell_processes_apart() {
        let a = ProcessKey::new(42, 1000);
        assert_ne!(a.owner(), 0);
        assert_ne!(a.owner(), ProcessKey::new(42, 1001).owner());
        assert_ne!(a.owner(), ProcessKey::new(43, 1000).owner());
        assert_eq!(a.slot(16), 42 % 16);
    }
}
