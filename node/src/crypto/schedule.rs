//! A key schedule on the heap that is zeroized when it is dropped.
//!
//! ring's AEAD key (`LessSafeKey`: AES round keys and GHASH's powers of H) has no
//! zeroizing `Drop`, and all-zero bytes are not a valid value of it, so it is kept as a
//! `MaybeUninit` whose bytes are wiped after the value is dropped in place. Conifer's
//! `unsafe` code is this module, `shard::faiss_io` and `shard::native`.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use ring::aead::LessSafeKey;
use zeroize::Zeroize;

/// An AEAD key schedule, initialised from `new` until `drop`, which zeroizes its bytes.
pub(super) struct KeySchedule(Box<MaybeUninit<LessSafeKey>>);

impl KeySchedule {
    /// Moves `key` to the heap. Only the heap copy is wiped: the temporaries `key` passed
    /// through on the stack (ring's `UnboundKey`, `LessSafeKey::new`, this call) are not,
    /// and last until later frames overwrite them.
    pub(super) fn new(key: LessSafeKey) -> Self {
        let mut slot = Box::new(MaybeUninit::uninit());
        slot.write(key);
        Self(slot)
    }

    pub(super) fn get(&self) -> &LessSafeKey {
        // SAFETY: written in `new`; only `drop` de-initialises it.
        unsafe { self.0.assume_init_ref() }
    }
}

impl Drop for KeySchedule {
    fn drop(&mut self) {
        // SAFETY: initialised since `new`, and never read again.
        unsafe { wipe(&mut self.0) };
    }
}

/// Drops the key in `slot` in place (ring's key owns no heap memory) and overwrites its
/// bytes with zeros, padding included.
///
/// # Safety
/// `slot` must hold an initialised key, and must not be read as one afterwards.
unsafe fn wipe(slot: &mut MaybeUninit<LessSafeKey>) {
    // SAFETY: the caller guarantees it is initialised.
    unsafe { slot.assume_init_drop() };
    slot.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::aead::{UnboundKey, AES_256_GCM};

    #[test]
    fn wiping_leaves_only_zeros() {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[0x5c; 32]).unwrap());
        let mut slot = Box::new(MaybeUninit::new(key));
        // SAFETY: initialised just above; never read as a key again (a `MaybeUninit` is
        // never dropped as its contents).
        unsafe { wipe(&mut slot) };
        // SAFETY: zeroize wrote every byte of the slot, so all of them are initialised.
        let bytes = unsafe {
            std::slice::from_raw_parts(slot.as_ptr().cast::<u8>(), size_of::<LessSafeKey>())
        };
        assert!(bytes.iter().all(|&b| b == 0));
    }
}
