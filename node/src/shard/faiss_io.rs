//! In-memory (de)serialization of FAISS indexes through the C API's custom I/O callbacks,
//! so an index is persisted only as ciphertext: the bytes go from FAISS straight into a
//! buffer that the caller seals; no plaintext index file ever exists, not even temporarily.
//!
//! Conifer's `unsafe` code is this module, [`super::native`] (the C++ search path) and
//! `crypto::schedule` (a key schedule wiped on drop). FAISS's custom reader and writer
//! take a bare function pointer without a context argument, so the bytes pass through
//! thread-local buffers; each (de)serialization runs start to finish on the calling thread
//! and the callbacks are never re-entered.
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::ffi::{c_void, CStr};
use std::ptr;

use faiss::index::{FromInnerPtr, IndexImpl};
use faiss_sys::{
    faiss_CustomIOReader_free, faiss_CustomIOReader_new, faiss_CustomIOWriter_free,
    faiss_CustomIOWriter_new, faiss_get_last_error, faiss_read_index_custom,
    faiss_write_index_custom, FaissIOReader, FaissIOWriter,
};

use super::engine::EngineError;

thread_local! {
    static WRITE_LENGTH: Cell<usize> = const { Cell::new(0) };
    static WRITE_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static READ_BUFFER: RefCell<(Vec<u8>, usize)> = const { RefCell::new((Vec::new(), 0)) };
}

unsafe extern "C" fn length_callback(_: *const c_void, size: usize, nitems: usize) -> usize {
    let Some(len) = size.checked_mul(nitems) else {
        return 0;
    };
    WRITE_LENGTH.with(|total| total.set(total.get().saturating_add(len)));
    nitems
}

unsafe extern "C" fn write_callback(ptr: *const c_void, size: usize, nitems: usize) -> usize {
    let Some(len) = size.checked_mul(nitems) else {
        return 0;
    };
    if len == 0 {
        return nitems;
    }
    // SAFETY: FAISS passes a buffer of `size * nitems` readable bytes.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    WRITE_BUFFER.with(|buffer| buffer.borrow_mut().extend_from_slice(bytes));
    nitems
}

unsafe extern "C" fn read_callback(ptr: *mut c_void, size: usize, nitems: usize) -> usize {
    if size == 0 {
        return 0;
    }
    READ_BUFFER.with(|buffer| {
        let mut guard = buffer.borrow_mut();
        let (bytes, position) = &mut *guard;
        let available = (bytes.len() - *position) / size;
        let items = nitems.min(available);
        let len = items * size;
        // SAFETY: FAISS passes a writable buffer of `size * nitems` bytes; we copy at most that.
        unsafe { ptr::copy_nonoverlapping(bytes[*position..].as_ptr(), ptr.cast::<u8>(), len) };
        *position += len;
        items
    })
}

fn check(code: i32) -> Result<(), EngineError> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: faiss_get_last_error returns null or a NUL-terminated string owned by FAISS.
    let message = unsafe {
        let text = faiss_get_last_error();
        if text.is_null() {
            format!("FAISS error {code}")
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        }
    };
    Err(EngineError(message))
}

/// Serializes `index` into memory: one pass to learn the length, a second into a buffer of
/// exactly that size (a growing buffer would pass through twice the index's size, and keep
/// up to that much capacity, for an index of hundreds of megabytes).
pub fn write(index: &IndexImpl) -> Result<Vec<u8>, EngineError> {
    let _release = ReleaseBuffers;
    WRITE_LENGTH.with(|total| total.set(0));
    run_writer(index, length_callback)?;
    let length = WRITE_LENGTH.with(Cell::get);
    WRITE_BUFFER.with(|buffer| *buffer.borrow_mut() = Vec::with_capacity(length));
    run_writer(index, write_callback)?;
    Ok(WRITE_BUFFER.with(|buffer| std::mem::take(&mut *buffer.borrow_mut())))
}

/// Runs FAISS's writer over `index`, handing its bytes to `callback`.
fn run_writer(
    index: &IndexImpl,
    callback: unsafe extern "C" fn(*const c_void, usize, usize) -> usize,
) -> Result<(), EngineError> {
    // SAFETY: the writer is created, used once with a live index and freed here.
    unsafe {
        let mut writer = ptr::null_mut();
        check(faiss_CustomIOWriter_new(&mut writer, Some(callback)))?;
        let code = faiss_write_index_custom(index.inner_ptr(), writer.cast::<FaissIOWriter>(), 0);
        faiss_CustomIOWriter_free(writer);
        check(code)
    }
}

/// Deserializes an index written by [`write`], consuming its bytes (they are freed before
/// this returns, so a load holds them and the index at once, never a third copy).
pub fn read(bytes: Vec<u8>) -> Result<IndexImpl, EngineError> {
    let _release = ReleaseBuffers;
    READ_BUFFER.with(|buffer| *buffer.borrow_mut() = (bytes, 0));
    // SAFETY: the reader is created, used once and freed here; on success FAISS hands us
    // ownership of a new index, which IndexImpl frees on drop.
    unsafe {
        let mut reader = ptr::null_mut();
        check(faiss_CustomIOReader_new(&mut reader, Some(read_callback)))?;
        let mut index = ptr::null_mut();
        let code = faiss_read_index_custom(reader.cast::<FaissIOReader>(), 0, &mut index);
        faiss_CustomIOReader_free(reader);
        check(code).map(|_| IndexImpl::from_inner_ptr(index))
    }
}

/// Frees this thread's buffers when a read or write ends, by any path (an index's bytes
/// are hundreds of megabytes; an early error must not leave them held).
struct ReleaseBuffers;

impl Drop for ReleaseBuffers {
    fn drop(&mut self) {
        WRITE_BUFFER.with(|buffer| *buffer.borrow_mut() = Vec::new());
        READ_BUFFER.with(|buffer| *buffer.borrow_mut() = (Vec::new(), 0));
    }
}
