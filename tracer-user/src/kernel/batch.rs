//! Reading a whole hash map with `BPF_MAP_LOOKUP_BATCH` (5.6+; aya 0.14 has no binding).
//!
//! The kernel walks a hash map's batch bucket by bucket, copying each bucket under its lock,
//! and resumes at the next bucket whatever the programs deleted meanwhile: an entry present
//! for the whole walk is listed exactly once, and the walk ends after one pass over the
//! buckets. `BPF_MAP_GET_NEXT_KEY` from a key deleted meanwhile starts over from the first
//! bucket instead, listing entries twice, and under steady deletes may never end.

use std::{
    io,
    mem::{size_of, MaybeUninit},
    os::fd::{AsFd, AsRawFd},
};

use aya::{
    maps::{Map, MapData},
    Pod,
};

/// `enum bpf_cmd`'s `BPF_MAP_LOOKUP_BATCH`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for at once; doubled when one bucket holds more.
const FIRST_CHUNK: usize = 1024;

/// `union bpf_attr`'s `batch` member.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every entry of the hash map `map`, each once.
pub fn entries<K: Pod, V: Pod>(map: &Map) -> io::Result<Vec<(K, V)>> {
    let (Map::HashMap(data) | Map::LruHashMap(data)) = map else {
        return Err(io::Error::other("not a hash map"));
    };
    let fd = MapData::fd(data).as_fd().as_raw_fd();
    let mut entries = Vec::new();
    let mut chunk = FIRST_CHUNK;
    // A hash map's batch position is a bucket index.
    let (mut position, mut next): (Option<u32>, u32) = (None, 0);
    loop {
        let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(chunk);
        let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(chunk);
        let mut attr = BatchAttr {
            in_batch: position
                .as_ref()
                .map_or(0, |position| position as *const u32 as u64),
            out_batch: &raw mut next as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attribute points at buffers of `count` keys and values (a hash map's
        // value size is the value type's: not per-CPU) and at a u32 batch position.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &raw mut attr,
                size_of::<BatchAttr>(),
            )
        };
        let error = (ret < 0).then(io::Error::last_os_error);
        match error.as_ref().and_then(io::Error::raw_os_error) {
            None | Some(libc::ENOENT) => {
                let filled = (attr.count as usize).min(chunk);
                // SAFETY: the kernel wrote `filled` keys and values.
                unsafe {
                    keys.set_len(filled);
                    values.set_len(filled);
                }
                entries.extend(
                    keys.into_iter()
                        .zip(values)
                        .map(|(key, value)| unsafe { (key.assume_init(), value.assume_init()) }),
                );
                if error.is_some() {
                    // ENOENT: the last bucket was read.
                    return Ok(entries);
                }
                position = Some(next);
            }
            // The next bucket holds more entries than asked for.
            Some(libc::ENOSPC) if chunk < 1 << 20 => chunk *= 2,
            _ => return Err(error.unwrap_or_else(|| io::Error::other("unexpected batch result"))),
        }
    }
}
