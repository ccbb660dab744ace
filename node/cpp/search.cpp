// One k-nearest-neighbour search over a Conifer vector index (`IDMap2,Flat` or
// `IDMap2,HNSW<M>,Flat`), for node/src/shard/engine.rs.
//
// Why not FAISS's own `Index::search` through its C API:
// - efSearch is a field of the shared HNSW object there (set through ParameterSpace), so
//   two searches with different beams cannot run at once; here it travels with the query
//   (SearchParametersHNSW), and the index is only read, so searches run in parallel.
// - The ID-map wrapper and the HNSW search open an OpenMP parallel region for every call
//   (a thread team per query); one query here runs on the caller's thread alone.
// - The FAISS that faiss-sys builds is its baseline x86-64 library (SSE2); HNSW distances
//   come from node/cpp/kernels.cpp instead, compiled for AVX-512, AVX2 and the baseline,
//   the best the CPU supports chosen once at run time.
// The graph walk itself is FAISS's (HNSW::search), unchanged. This file is compiled with
// FAISS's own floating-point and OpenMP settings (node/build.rs), since the FAISS templates
// it instantiates may be the copies the linker keeps for FAISS's code too.

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/DistanceComputer.h>
#include <faiss/impl/HNSW.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/impl/ResultHandler.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <stdexcept>
#include <utility>
#include <vector>

#include <sys/mman.h>

// Linux 6.1's MADV_COLLAPSE; glibc's headers name it from 2.37 only (Debian 12 has 2.36).
// An older kernel answers EINVAL, and the MADV_HUGEPAGE before it still stands.
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

#include "kernels.h"

namespace conifer {

/// A visited-node table per thread, reused across searches: FAISS allocates and clears one
/// of ntotal bytes per search call; here it is cleared only when its marker wraps. It is
/// made anew when the index outgrows it or is far smaller (so that a thread that once
/// searched a large namespace does not keep, and clear, a table that size for small ones).
/// A search that throws leaves its marks behind, so the table is dropped then.
thread_local std::unique_ptr<faiss::VisitedTable> visited;

static faiss::VisitedTable& visited_table(size_t ntotal) {
    const size_t size = visited ? visited->visited.size() : 0;
    if (!visited || size < ntotal || size > 2 * ntotal + 65536) {
        visited = std::make_unique<faiss::VisitedTable>(static_cast<int>(ntotal));
    }
    return *visited;
}

/// Asks the kernel to back [data, data + bytes) with transparent huge pages (2 MiB): the
/// whole 2 MiB-aligned interior, at once where the kernel can (MADV_COLLAPSE, Linux 6.1+,
/// which copies the range: callers hold no lock readers wait on), else as khugepaged gets
/// to it. Returns the bytes advised. The caller checks that THP is not disabled (MADV_COLLAPSE
/// ignores the system setting).
static size_t advise_huge(const void* data, size_t bytes) {
    constexpr uintptr_t huge = 2u << 20;
    const auto start = (reinterpret_cast<uintptr_t>(data) + huge - 1) & ~(huge - 1);
    const auto end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(huge - 1);
    if (data == nullptr || end <= start) {
        return 0;
    }
    auto* region = reinterpret_cast<void*>(start);
    if (madvise(region, end - start, MADV_HUGEPAGE) != 0) {
        return 0;
    }
    (void)madvise(region, end - start, MADV_COLLAPSE);
    return end - start;
}

static void fail(char* error, size_t error_len, const char* message) {
    visited.reset();
    if (error != nullptr && error_len > 0) {
        std::snprintf(error, error_len, "%s", message);
    }
}

} // namespace conifer

extern "C" {

/// The instruction set the distance kernels run with: "avx512", "avx2" or "baseline".
const char* conifer_simd_level() {
    return conifer::kernels().name;
}

/// The inner product (ip != 0) or squared L2 distance of x and y (d floats each) computed
/// by the kernels of `level` ("baseline", "avx2", "avx512"; the CPU's best when it lacks
/// that level); for tests of every level's kernels against a plain sum.
float conifer_kernel_distance(const char* level, const float* x, const float* y, size_t d, int ip) {
    const conifer::Kernels k = conifer::kernels_for(level);
    return ip != 0 ? k.inner_product(x, y, d) : k.l2_squared(x, y, d);
}

/// Advises huge pages for the vectors and the graph links of `index` (an IDMap2 over an
/// IndexHNSWFlat; other indexes are left alone): a search touches both at random, and with
/// 4 KiB pages most of those touches miss the TLB. Returns the bytes advised (0 where the
/// kernel refuses or the index is not HNSW).
size_t conifer_index_advise_huge_pages(const void* index) {
    const auto* idmap = dynamic_cast<const faiss::IndexIDMap2*>(static_cast<const faiss::Index*>(index));
    if (idmap == nullptr) {
        return 0;
    }
    const auto* hnsw = dynamic_cast<const faiss::IndexHNSW*>(idmap->index);
    if (hnsw == nullptr) {
        return 0;
    }
    size_t advised = 0;
    if (const auto* flat = dynamic_cast<const faiss::IndexFlat*>(hnsw->storage)) {
        advised += conifer::advise_huge(flat->codes.data(), flat->codes.size());
    }
    const auto& links = hnsw->hnsw.neighbors;
    advised += conifer::advise_huge(links.data(), links.size() * sizeof(links.data()[0]));
    return advised;
}

/// Scores exactly the `n_allowed` external ids of `allowed` against `query` on an HNSW
/// index's flat storage (each id's position through the IDMap2's reverse map, its distance
/// with Conifer's kernels) and keeps the `k` best, ties by id: the answer to a selective
/// filter, without walking the graph. Ids not in the index are skipped.
static void scan_allowed(
        const faiss::IndexIDMap2& idmap,
        const faiss::IndexFlat& flat,
        bool ip,
        const float* query,
        int64_t k,
        const int64_t* allowed,
        size_t n_allowed,
        float* distances,
        int64_t* labels) {
    std::unique_ptr<faiss::DistanceComputer> distance(
            conifer::kernels().flat_distance(flat.get_xb(), flat.d, ip));
    distance->set_query(query);
    // The distance computer answers lower-is-better (the negated inner product for IP).
    std::vector<std::pair<float, int64_t>> scored;
    scored.reserve(n_allowed);
    for (size_t i = 0; i < n_allowed; i++) {
        const auto found = idmap.rev_map.find(allowed[i]);
        if (found != idmap.rev_map.end()) {
            scored.emplace_back((*distance)(found->second), allowed[i]);
        }
    }
    const auto keep = std::min(static_cast<size_t>(k), scored.size());
    std::partial_sort(scored.begin(), scored.begin() + keep, scored.end());
    for (size_t i = 0; i < static_cast<size_t>(k); i++) {
        if (i < keep) {
            distances[i] = ip ? -scored[i].first : scored[i].first;
            labels[i] = scored[i].second;
        } else {
            labels[i] = -1;
        }
    }
}

/// Searches the `k` nearest neighbours of `query` (dimension floats, normalized by the
/// caller for cosine) in `index`, a `faiss::IndexIDMap2` over an IndexFlat or an
/// IndexHNSWFlat. HNSW searches use `ef_search`. When `filtered` is non-zero only the
/// `n_allowed` external ids of `allowed` are considered; with `exact` as well, an HNSW
/// index scores exactly those ids instead of walking its graph (an exact index always
/// scans). Writes `k` distances (FAISS's: inner product or squared L2) and external ids (-1
/// past the last hit), best first.
/// Only reads the index: any number of searches may run at once while nothing writes it.
/// Returns 0, or -1 with a message in `error` (FAISS's exceptions do not cross into Rust).
int conifer_index_search(
        const void* index,
        const float* query,
        int64_t k,
        int32_t ef_search,
        const int64_t* allowed,
        size_t n_allowed,
        int filtered,
        int exact,
        float* distances,
        int64_t* labels,
        char* error,
        size_t error_len) {
    try {
        const auto* root = static_cast<const faiss::Index*>(index);
        const auto* idmap = dynamic_cast<const faiss::IndexIDMap2*>(root);
        if (idmap == nullptr || idmap->index == nullptr) {
            throw std::runtime_error("index is not an IDMap2 index");
        }
        if (k <= 0) {
            throw std::runtime_error("k must be positive");
        }
        if (filtered != 0 && exact != 0) {
            if (const auto* hnsw = dynamic_cast<const faiss::IndexHNSW*>(idmap->index)) {
                const auto* flat = dynamic_cast<const faiss::IndexFlat*>(hnsw->storage);
                if (flat == nullptr) {
                    throw std::runtime_error("HNSW index without flat storage");
                }
                scan_allowed(*idmap, *flat, faiss::is_similarity_metric(hnsw->metric_type),
                             query, k, allowed, n_allowed, distances, labels);
                return 0;
            }
        }
        // A filter is a bitmap over external ids (Conifer's internal ids, from 1): one bit
        // per id up to the largest allowed, set in one pass and tested with one load per
        // visited node, where a hash set (IDSelectorBatch) costs a hash insert per allowed
        // id per query — milliseconds at 200,000 ids. Ids sparser than one in 64 (internal
        // ids left far apart by many overwrites) keep the hash set, so the bitmap is never
        // larger than the ids themselves. IDSelectorTranslated maps the inner index's
        // positions to external ids through the IDMap2's table.
        std::vector<uint8_t> bits;
        std::unique_ptr<faiss::IDSelector> allowed_ids;
        std::unique_ptr<faiss::IDSelectorTranslated> selector;
        if (filtered != 0) {
            int64_t largest = -1;
            for (size_t i = 0; i < n_allowed; i++) {
                if (allowed[i] < 0) {
                    throw std::runtime_error("negative id in a filter");
                }
                largest = std::max(largest, allowed[i]);
            }
            if (static_cast<uint64_t>(largest) / 64 <= n_allowed) {
                bits.assign((static_cast<size_t>(largest) >> 3) + 1, 0);
                for (size_t i = 0; i < n_allowed; i++) {
                    const auto id = static_cast<uint64_t>(allowed[i]);
                    bits[id >> 3] |= static_cast<uint8_t>(1u << (id & 7));
                }
                allowed_ids = std::make_unique<faiss::IDSelectorBitmap>(bits.size(), bits.data());
            } else {
                allowed_ids = std::make_unique<faiss::IDSelectorBatch>(n_allowed, allowed);
            }
            selector = std::make_unique<faiss::IDSelectorTranslated>(
                    idmap->id_map, allowed_ids.get());
        }
        const faiss::Index* inner = idmap->index;
        if (const auto* hnsw = dynamic_cast<const faiss::IndexHNSW*>(inner)) {
            const auto* flat = dynamic_cast<const faiss::IndexFlat*>(hnsw->storage);
            if (flat == nullptr) {
                throw std::runtime_error("HNSW index without flat storage");
            }
            const bool ip = faiss::is_similarity_metric(hnsw->metric_type);
            std::unique_ptr<faiss::DistanceComputer> distance(
                    conifer::kernels().flat_distance(flat->get_xb(), flat->d, ip));
            faiss::SearchParametersHNSW params;
            params.efSearch = ef_search;
            params.sel = selector.get();
            using Handler = faiss::HeapBlockResultHandler<faiss::HNSW::C>;
            Handler block(1, distances, labels, static_cast<size_t>(k));
            Handler::SingleResultHandler one(block);
            faiss::VisitedTable& table = conifer::visited_table(hnsw->ntotal);
            one.begin(0);
            distance->set_query(query);
            hnsw->hnsw.search(*distance, one, table, &params);
            one.end();
            if (ip) {
                for (int64_t i = 0; i < k; i++) {
                    distances[i] = -distances[i];
                }
            }
        } else {
            faiss::SearchParameters params;
            params.sel = selector.get();
            inner->search(1, query, k, distances, labels, filtered != 0 ? &params : nullptr);
        }
        const auto& ids = idmap->id_map;
        for (int64_t i = 0; i < k; i++) {
            if (labels[i] >= 0) {
                labels[i] = ids[labels[i]];
            }
        }
        return 0;
    } catch (const std::exception& e) {
        conifer::fail(error, error_len, e.what());
    } catch (...) {
        conifer::fail(error, error_len, "unknown C++ exception");
    }
    return -1;
}

} // extern "C"
