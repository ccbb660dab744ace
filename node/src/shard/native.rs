//! The engine's search path in C++ (node/cpp/search.cpp, compiled by node/build.rs against
//! the headers of the FAISS that faiss-sys links): one k-NN search that only reads the
//! index, so searches of one namespace run in parallel. On HNSW: per-query efSearch, no
//! OpenMP thread team per query, distance kernels for AVX-512, AVX2 or baseline x86-64
//! (node/cpp/kernels.cpp) chosen once at run time from the CPU. An exact index is searched
//! by FAISS's own `IndexFlat` search.
//!
//! Conifer's `unsafe` code is this module, [`super::faiss_io`] and `crypto::schedule`.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};

use faiss::index::IndexImpl;

use super::engine::EngineError;

extern "C" {
    fn conifer_index_search(
        index: *const c_void,
        query: *const f32,
        k: i64,
        ef_search: i32,
        allowed: *const i64,
        n_allowed: usize,
        filtered: c_int,
        exact: c_int,
        distances: *mut f32,
        labels: *mut i64,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn conifer_simd_level() -> *const c_char;
    fn conifer_index_advise_huge_pages(index: *const c_void) -> usize;
    fn conifer_kernel_distance(
        level: *const c_char,
        x: *const f32,
        y: *const f32,
        d: usize,
        ip: c_int,
    ) -> f32;
}

/// The `k` nearest neighbours of `query` (`index.d()` floats, normalized by the caller for
/// cosine) in `index` (`IDMap2,Flat` or `IDMap2,HNSW<M>,Flat`) as FAISS distances (inner
/// product, or squared L2) and ids, best first, `-1` past the last hit. HNSW searches use
/// `ef_search`. With `allowed`, only those ids are candidates, and with `exact` an HNSW
/// index scores exactly those ids (through its flat storage) instead of walking its graph.
pub fn search(
    index: &IndexImpl,
    query: &[f32],
    k: usize,
    ef_search: i32,
    allowed: Option<&[u64]>,
    exact: bool,
) -> Result<(Vec<f32>, Vec<i64>), EngineError> {
    use faiss::Index;
    if query.len() != index.d() as usize {
        return Err(EngineError(format!(
            "query has {} dimensions, the index {}",
            query.len(),
            index.d()
        )));
    }
    let mut distances = vec![0f32; k];
    let mut labels = vec![-1i64; k];
    let mut error = [0 as c_char; 512];
    let (allowed_ptr, n_allowed) = match allowed {
        // Internal ids are below 2^63 (a counter), so u64 and i64 agree bit for bit.
        Some(ids) => (ids.as_ptr().cast::<i64>(), ids.len()),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: the index pointer is valid while `index` is borrowed and the C++ side only
    // reads it (FAISS's const search path); `query` holds d floats; `distances` and `labels`
    // hold k entries; `allowed_ptr` holds `n_allowed` ids; `error` is written NUL-terminated
    // within its length on failure. C++ exceptions are caught on the C++ side.
    let rc = unsafe {
        conifer_index_search(
            index.inner_ptr().cast_const().cast::<c_void>(),
            query.as_ptr(),
            k as i64,
            ef_search,
            allowed_ptr,
            n_allowed,
            c_int::from(allowed.is_some()),
            c_int::from(exact),
            distances.as_mut_ptr(),
            labels.as_mut_ptr(),
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if rc != 0 {
        // SAFETY: on failure `error` holds a NUL-terminated message (it is zeroed first, so
        // it is terminated even if the C++ side wrote nothing).
        let message = unsafe { CStr::from_ptr(error.as_ptr()) };
        return Err(EngineError(message.to_string_lossy().into_owned()));
    }
    Ok((distances, labels))
}

/// Advises transparent huge pages for an HNSW index's vectors and graph links (a search
/// touches both at random; 4 KiB pages miss the TLB on most of those touches), collapsing
/// them at once where the kernel can (MADV_COLLAPSE copies the memory: call it where no
/// reader waits). Returns the bytes advised: 0 for an exact index, below 2 MiB, where the
/// kernel refuses, when the operator disabled THP (`transparent_hugepage/enabled` is
/// `never`, which MADV_COLLAPSE alone would ignore) or with `CONIFER_HUGE_PAGES=0`
/// (benchmarks compare both).
pub fn advise_huge_pages(index: &IndexImpl) -> usize {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let allowed = *ALLOWED.get_or_init(|| {
        let disabled_by_operator =
            std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                .is_ok_and(|mode| mode.contains("[never]"));
        let disabled_here = std::env::var_os("CONIFER_HUGE_PAGES").is_some_and(|v| v == "0");
        !(disabled_by_operator || disabled_here)
    });
    if !allowed {
        return 0;
    }
    // SAFETY: the index pointer is valid while `index` is borrowed; the C++ side only
    // reads its fields and calls madvise on the memory they point to.
    unsafe { conifer_index_advise_huge_pages(index.inner_ptr().cast_const().cast::<c_void>()) }
}

/// The instruction set the distance kernels use on this machine: `avx512`, `avx2` or
/// `baseline` (`CONIFER_SIMD=baseline|avx2` lowers it, for benchmarks).
pub fn simd_level() -> &'static str {
    // SAFETY: returns a pointer to a static NUL-terminated string.
    let name = unsafe { CStr::from_ptr(conifer_simd_level()) };
    name.to_str().unwrap_or("unknown")
}

/// The inner product (`ip`) or squared L2 distance of `x` and `y` by the kernels of `level`
/// (`baseline`, `avx2`, `avx512`; the CPU's best where it lacks that level).
pub fn kernel_distance(level: &str, x: &[f32], y: &[f32], ip: bool) -> f32 {
    assert_eq!(x.len(), y.len());
    let level = std::ffi::CString::new(level).expect("no NUL in a level name");
    // SAFETY: x and y hold x.len() floats each; `level` is NUL-terminated.
    unsafe {
        conifer_kernel_distance(
            level.as_ptr(),
            x.as_ptr(),
            y.as_ptr(),
            x.len(),
            c_int::from(ip),
        )
    }
}
