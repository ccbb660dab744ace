//! A key schedule on the heap that is zeroized when it is dropped.
//!
//! ring's AEAD key (`LessSafeKey`: AES round keys and GHASH's powers of H) has no
//! zeroizing `Drop`, and all-zero bytes are not a valid value of it, so it is kept as a
//! `MaybeUninit` whose bytes are wiped after the value is dropped in place. Conifer's
//! `unsafe` code is this module and `shard::faiss_io`.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

use ring::aead::LessSafeKey;
use zeroize::Zeroize;

/// An AEAD key schedule, initialised from `new` until `drop`, which zeroizes its bytes.
pub(super) struct KeySchedule(Box<MaybeUninit<LessSafeKey>>);

impl KeySchedule {
    /// Moves `key` to the heap (the moved-from copy is a stack temporary the caller's later
    /// frames overwrite; the bytes kept for the key's lifetime are the heap's).
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
        // SAFETY: initialised since `new`, and never read again: dropped in place (ring's
        // key owns no heap memory), then its bytes are overwritten with zeros.
        unsafe { self.0.assume_init_drop() };
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::aead::{UnboundKey, AES_256_GCM};

    #[test]
    fn dropping_wipes_the_schedule() {
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[0x5c; 32]).unwrap());
        let mut schedule = KeySchedule::new(key);
        let bytes = |s: &KeySchedule| {
            let ptr = s.0.as_ptr().cast::<u8>();
            // SAFETY: reads the slot's own bytes, within its size.
            unsafe { std::slice::from_raw_parts(ptr, std::mem::size_of::<LessSafeKey>()) }.to_vec()
        };
        assert!(bytes(&schedule).iter().any(|&b| b != 0));
        // What `drop` does, observed before the box is freed.
        unsafe { schedule.0.assume_init_drop() };
        schedule.0.zeroize();
        assert!(bytes(&schedule).iter().all(|&b| b == 0));
        // Put a value back so that the real `drop` stays sound.
        schedule.0.write(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &[1; 32]).unwrap(),
        ));
    }
}
