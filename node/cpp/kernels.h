// The distance kernels of node/cpp/kernels.cpp, for node/cpp/search.cpp.
#pragma once

#include <faiss/impl/DistanceComputer.h>

#include <cstddef>

namespace conifer {

/// One instruction set's kernels.
struct Kernels {
    /// "avx512", "avx2" or "baseline".
    const char* name;
    /// A distance computer over `xb` (flat vectors of `d` floats) for HNSW: squared L2, or
    /// the negated inner product when `inner` (smaller is closer). Owned by the caller.
    faiss::DistanceComputer* (*flat_distance)(const float* xb, size_t d, bool inner);
    float (*inner_product)(const float*, const float*, size_t);
    float (*l2_squared)(const float*, const float*, size_t);
};

/// The kernels of `level` ("baseline", "avx2", "avx512"), or of the CPU's best level when
/// `level` is null, unknown or above what the CPU supports.
Kernels kernels_for(const char* level);

/// The kernels searches use: the CPU's best, lowered by CONIFER_SIMD=baseline|avx2.
const Kernels& kernels();

} // namespace conifer
