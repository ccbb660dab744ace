// Distance kernels compiled for AVX-512, AVX2 and baseline x86-64; the best the CPU
// supports is chosen once at run time, so one binary serves every x86-64 machine (the FAISS
// that faiss-sys builds is its baseline, SSE2-only library).
//
// This file alone is compiled with reassociating floating-point flags (node/build.rs), so
// the sums vectorize as FAISS's own kernels do; it instantiates no FAISS template, so those
// flags reach nothing of FAISS's.

#include "kernels.h"

#include <cstdlib>
#include <cstring>

#if defined(__clang__)
#error "kernels.cpp relies on GCC's `#pragma GCC target` regions; build it with g++"
#endif

namespace conifer {

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,popcnt")
namespace avx512 {
#include "distance.inc"
}
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,popcnt")
namespace avx2 {
#include "distance.inc"
}
#pragma GCC pop_options
#endif

namespace baseline {
#include "distance.inc"
}

namespace {

const Kernels BASELINE = {
        "baseline",
        baseline::flat_distance,
        baseline::kernel_inner_product,
        baseline::kernel_l2_squared};

#if defined(__x86_64__)
const Kernels AVX2 = {
        "avx2",
        avx2::flat_distance,
        avx2::kernel_inner_product,
        avx2::kernel_l2_squared};

const Kernels AVX512 = {
        "avx512",
        avx512::flat_distance,
        avx512::kernel_inner_product,
        avx512::kernel_l2_squared};

/// Every feature its `#pragma GCC target` names.
bool cpu_has_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
            __builtin_cpu_supports("f16c") && __builtin_cpu_supports("popcnt");
}

bool cpu_has_avx512() {
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512dq");
}
#endif

} // namespace

Kernels kernels_for(const char* level) {
    const bool baseline = level != nullptr && std::strcmp(level, "baseline") == 0;
#if defined(__x86_64__)
    const bool avx2 = level != nullptr && std::strcmp(level, "avx2") == 0;
    if (!baseline && !avx2 && cpu_has_avx512()) {
        return AVX512;
    }
    if (!baseline && cpu_has_avx2()) {
        return AVX2;
    }
#endif
    (void)baseline;
    return BASELINE;
}

const Kernels& kernels() {
    // Read once: CONIFER_SIMD lowers the level for benchmarks that compare them.
    static const Kernels chosen = kernels_for(std::getenv("CONIFER_SIMD"));
    return chosen;
}

} // namespace conifer
