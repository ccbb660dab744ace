//! The vector engine of one namespace: a FAISS index over internal ids.
//!
//! Small namespaces use an exact index (`IDMap2,Flat`); once a namespace holds
//! [`EngineConfig::hnsw_min_records`] records, the shard's maintenance loop builds an HNSW
//! index (`IDMap2,HNSW<M>,Flat`) in the background and swaps it in. HNSW cannot remove
//! vectors, so deletes and overwrites become tombstones that searches skip; when tombstones
//! exceed [`MAX_TOMBSTONE_RATIO`] of the index the maintenance loop rebuilds it, again off
//! the request path. Cosine is inner product over normalized vectors; euclidean scores are
//! squared L2 distances (lower is closer), as Pinecone reports them.

use std::collections::HashSet;

use faiss::index::autotune::ParameterSpace;
use faiss::index::IndexImpl;
use faiss::selector::IdSelector;
use faiss::{index_factory, Idx, Index, MetricType};

use serde::{Deserialize, Serialize};

/// Similarity metric of an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Metric {
    /// Cosine similarity (vectors normalized, then inner product).
    Cosine,
    /// Euclidean distance (score = squared L2 distance, lower is closer).
    Euclidean,
    /// Inner product.
    DotProduct,
}

impl Metric {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Euclidean => "euclidean",
            Metric::DotProduct => "dotproduct",
        }
    }

    /// Parses a wire name.
    pub fn parse(name: &str) -> Option<Self> {
        [Metric::Cosine, Metric::Euclidean, Metric::DotProduct]
            .into_iter()
            .find(|m| m.as_str() == name)
    }
}

/// Share of tombstones (of all vectors in an HNSW index) above which it is rebuilt.
pub const MAX_TOMBSTONE_RATIO: f64 = 0.1;

/// Tuning of the vector engine (per node; results are approximate on the HNSW path only).
#[derive(Clone, Copy, Debug)]
pub struct EngineConfig {
    /// Records in a namespace from which it is served by HNSW instead of exact search.
    pub hnsw_min_records: usize,
    /// HNSW graph degree.
    pub hnsw_m: usize,
    /// HNSW construction beam width.
    pub hnsw_ef_construction: usize,
    /// HNSW search beam width (raised to [`EngineConfig::ef_search_per_top_k`] × top_k).
    pub hnsw_ef_search: usize,
    /// efSearch used per requested result.
    pub ef_search_per_top_k: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            hnsw_min_records: 10_000,
            hnsw_m: 32,
            hnsw_ef_construction: 200,
            hnsw_ef_search: 128,
            ef_search_per_top_k: 2,
        }
    }
}

/// Errors from FAISS.
#[derive(Debug, thiserror::Error)]
#[error("vector engine: {0}")]
pub struct EngineError(pub String);

impl From<faiss::error::Error> for EngineError {
    fn from(e: faiss::error::Error) -> Self {
        Self(e.to_string())
    }
}

/// Which FAISS structure serves a namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum EngineKind {
    /// Exact search.
    Flat,
    /// Approximate search over an HNSW graph.
    Hnsw,
}

/// A vector index as saved in a shard snapshot.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct EngineSnapshot {
    /// Structure of the index.
    pub kind: EngineKind,
    /// Tombstoned internal ids.
    pub tombstones: Vec<u64>,
    /// The FAISS index, serialized in memory.
    #[serde(with = "serde_bytes")]
    pub faiss: Vec<u8>,
}

/// A FAISS index for one namespace.
pub struct VectorIndex {
    index: IndexImpl,
    kind: EngineKind,
    metric: Metric,
    dimension: usize,
    config: EngineConfig,
    /// Internal ids still in the HNSW graph but deleted or overwritten.
    tombstones: HashSet<u64>,
}

/// Euclidean length of `v`, summed in `f64` so that very small and very large components
/// neither vanish nor overflow.
fn length(v: &[f32]) -> f64 {
    v.iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt()
}

/// Scales `v` to unit length (zero vectors stay zero).
pub fn normalize(v: &mut [f32]) {
    let norm = length(v);
    if norm > 0.0 {
        v.iter_mut()
            .for_each(|x| *x = (f64::from(*x) / norm) as f32);
    }
}

/// A raw engine score in Pinecone's range for `metric`: cosine in [-1, 1] and euclidean
/// (squared L2) at least 0. Float rounding puts identical unit vectors at `1.0000015` or
/// `-1e-7`; dot products are unbounded and pass through. NaN cannot arise from finite
/// inputs (records and queries are checked finite) and is passed through unchanged.
pub fn clamp_score(metric: Metric, score: f32) -> f32 {
    match metric {
        Metric::Cosine => score.clamp(-1.0, 1.0),
        Metric::Euclidean => score.max(0.0),
        Metric::DotProduct => score,
    }
}

/// The Pinecone score of `candidate` for `query` (both as given, not normalized), in the
/// metric's range ([`clamp_score`]).
pub fn exact_score(metric: Metric, query: &[f32], candidate: &[f32]) -> f32 {
    clamp_score(metric, raw_score(metric, query, candidate))
}

fn raw_score(metric: Metric, query: &[f32], candidate: &[f32]) -> f32 {
    match metric {
        Metric::DotProduct => query.iter().zip(candidate).map(|(a, b)| a * b).sum(),
        Metric::Euclidean => query
            .iter()
            .zip(candidate)
            .map(|(a, b)| (a - b) * (a - b))
            .sum(),
        Metric::Cosine => {
            let dot: f64 = query
                .iter()
                .zip(candidate)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            let (nq, nc) = (length(query), length(candidate));
            if nq == 0.0 || nc == 0.0 {
                0.0
            } else {
                (dot / (nq * nc)) as f32
            }
        }
    }
}

/// Whether score `a` ranks before score `b` under `metric`.
pub fn better(metric: Metric, a: f32, b: f32) -> bool {
    match metric {
        Metric::Euclidean => a < b,
        Metric::Cosine | Metric::DotProduct => a > b,
    }
}

impl VectorIndex {
    /// An empty index of `kind`.
    pub fn new(
        dimension: usize,
        metric: Metric,
        kind: EngineKind,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let faiss_metric = match metric {
            Metric::Euclidean => MetricType::L2,
            Metric::Cosine | Metric::DotProduct => MetricType::InnerProduct,
        };
        let description = match kind {
            EngineKind::Flat => "IDMap2,Flat".to_string(),
            EngineKind::Hnsw => format!("IDMap2,HNSW{},Flat", config.hnsw_m),
        };
        let index = index_factory(dimension as u32, &description, faiss_metric)?;
        if kind == EngineKind::Hnsw {
            ParameterSpace::new()?.set_index_parameter(
                &index,
                "efConstruction",
                config.hnsw_ef_construction as f64,
            )?;
        }
        Ok(Self {
            index,
            kind,
            metric,
            dimension,
            config,
            tombstones: HashSet::new(),
        })
    }

    /// Which structure this is.
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// Vectors held, tombstones included.
    pub fn len(&self) -> u64 {
        self.index.ntotal()
    }

    /// Whether the index holds no vector.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tombstoned vectors still in the index.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// Whether the maintenance loop should rebuild this index.
    pub fn needs_rebuild(&self) -> bool {
        self.kind == EngineKind::Hnsw
            && self.tombstones.len() as f64 > MAX_TOMBSTONE_RATIO * self.len().max(1) as f64
    }

    /// Serializes the index (FAISS bytes plus tombstones) for a snapshot; the caller seals it.
    pub fn to_snapshot(&self) -> Result<EngineSnapshot, EngineError> {
        let mut tombstones: Vec<u64> = self.tombstones.iter().copied().collect();
        tombstones.sort_unstable();
        Ok(EngineSnapshot {
            kind: self.kind,
            tombstones,
            faiss: super::faiss_io::write(&self.index)?,
        })
    }

    /// Loads an index saved by [`VectorIndex::to_snapshot`].
    pub fn from_snapshot(
        snapshot: EngineSnapshot,
        dimension: usize,
        metric: Metric,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        let index = super::faiss_io::read(snapshot.faiss)?;
        if index.d() as usize != dimension {
            return Err(EngineError(format!(
                "saved index has dimension {}, expected {dimension}",
                index.d()
            )));
        }
        Ok(Self {
            index,
            kind: snapshot.kind,
            metric,
            dimension,
            config,
            tombstones: snapshot.tombstones.into_iter().collect(),
        })
    }

    /// Backs an HNSW index's vectors and graph links with transparent huge pages where the
    /// OS allows ([`super::native::advise_huge_pages`]). Call it once the graph is built or
    /// loaded *and caught up*: an add that grows the arrays moves them to fresh memory with
    /// the default pages. Returns the bytes advised.
    pub fn advise_huge_pages(&self) -> usize {
        match self.kind {
            EngineKind::Hnsw => super::native::advise_huge_pages(&self.index),
            EngineKind::Flat => 0,
        }
    }

    fn prepared(&self, values: &[f32]) -> Vec<f32> {
        debug_assert_eq!(values.len(), self.dimension);
        let mut v = values.to_vec();
        if self.metric == Metric::Cosine {
            normalize(&mut v);
        }
        v
    }

    /// Adds vectors under internal ids (`values` is ids.len() × dimension, taken so that
    /// cosine's normalization happens in place rather than in a second copy).
    pub fn add(&mut self, ids: &[u64], mut values: Vec<f32>) -> Result<(), EngineError> {
        if ids.is_empty() {
            return Ok(());
        }
        debug_assert_eq!(values.len(), ids.len() * self.dimension);
        if self.metric == Metric::Cosine {
            values.chunks_mut(self.dimension).for_each(normalize);
        }
        let labels: Vec<Idx> = ids.iter().map(|&i| Idx::new(i)).collect();
        self.index.add_with_ids(&values, &labels)?;
        Ok(())
    }

    /// Removes vectors by internal id (exact index) or tombstones them (HNSW).
    pub fn remove(&mut self, ids: &[u64]) -> Result<(), EngineError> {
        if ids.is_empty() {
            return Ok(());
        }
        match self.kind {
            EngineKind::Flat => {
                let labels: Vec<Idx> = ids.iter().map(|&i| Idx::new(i)).collect();
                self.index.remove_ids(&IdSelector::batch(&labels)?)?;
            }
            EngineKind::Hnsw => self.tombstones.extend(ids.iter().copied()),
        }
        Ok(())
    }

    /// The `k` nearest internal ids to `query` with Pinecone scores in the metric's range
    /// ([`clamp_score`]), best first; when `allowed` is given, only those ids are considered
    /// (they must all be live). Only reads the index: searches run in parallel (the search
    /// itself is node/cpp/search.cpp; HNSW searches use efSearch
    /// max([`EngineConfig::hnsw_ef_search`], [`EngineConfig::ef_search_per_top_k`] × k)).
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        allowed: Option<&[u64]>,
    ) -> Result<Vec<(u64, f32)>, EngineError> {
        self.search_with(query, k, allowed, false)
    }

    /// The `k` best of the live internal ids `ids` for `query`, scored exactly (an HNSW
    /// index scores each id on its stored vector rather than walking its graph), with the
    /// same scores as [`VectorIndex::search`], ties by id: the answer to a selective filter.
    pub fn scan(
        &self,
        query: &[f32],
        k: usize,
        ids: &[u64],
    ) -> Result<Vec<(u64, f32)>, EngineError> {
        self.search_with(query, k, Some(ids), true)
    }

    fn search_with(
        &self,
        query: &[f32],
        k: usize,
        allowed: Option<&[u64]>,
        exact: bool,
    ) -> Result<Vec<(u64, f32)>, EngineError> {
        if self.is_empty() || k == 0 || allowed.is_some_and(|ids| ids.is_empty()) {
            return Ok(Vec::new());
        }
        let q = self.prepared(query);
        // Unfiltered, over-fetch past the tombstones, then drop them.
        let want = match allowed {
            None => (k + self.tombstones.len()).min(self.len() as usize),
            Some(ids) => k.min(ids.len()),
        };
        let ef = self
            .config
            .hnsw_ef_search
            .max(want.saturating_mul(self.config.ef_search_per_top_k))
            .min(i32::MAX as usize) as i32;
        let (distances, labels) = super::native::search(&self.index, &q, want, ef, allowed, exact)?;
        Ok(labels
            .iter()
            .zip(&distances)
            .filter(|(label, _)| **label >= 0)
            .map(|(label, distance)| (*label as u64, clamp_score(self.metric, *distance)))
            .filter(|(id, _)| !self.tombstones.contains(id))
            .take(k)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_search_ranks_by_metric_and_respects_removal_and_selector() {
        let mut index = VectorIndex::new(
            2,
            Metric::Euclidean,
            EngineKind::Flat,
            EngineConfig::default(),
        )
        .unwrap();
        index
            .add(&[10, 11, 12], vec![0.0, 0.0, 1.0, 0.0, 5.0, 5.0])
            .unwrap();
        let hits = index.search(&[0.9, 0.0], 2, None).unwrap();
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![11, 10]);
        assert!(
            (hits[0].1 - 0.01).abs() < 1e-5,
            "squared L2 distance: {hits:?}"
        );
        index.remove(&[11]).unwrap();
        assert_eq!(index.search(&[0.9, 0.0], 1, None).unwrap()[0].0, 10);
        let only = index.search(&[0.0, 0.0], 3, Some(&[12])).unwrap();
        assert_eq!(only.iter().map(|h| h.0).collect::<Vec<_>>(), vec![12]);
        // Dense ids are filtered through a bitmap, ids far apart through a hash set: the
        // same answers.
        let far = 1u64 << 40;
        index.add(&[far], vec![0.5, 0.5]).unwrap();
        let both = index.search(&[0.0, 0.0], 3, Some(&[12, far])).unwrap();
        assert_eq!(both.iter().map(|h| h.0).collect::<Vec<_>>(), vec![far, 12]);
        let dense = index.search(&[0.0, 0.0], 3, Some(&[10, 12])).unwrap();
        assert_eq!(dense.iter().map(|h| h.0).collect::<Vec<_>>(), vec![10, 12]);
    }

    #[test]
    fn cosine_ignores_magnitude() {
        let mut index =
            VectorIndex::new(2, Metric::Cosine, EngineKind::Flat, EngineConfig::default()).unwrap();
        index.add(&[1, 2], vec![10.0, 0.0, 1.0, 1.0]).unwrap();
        let hits = index.search(&[0.5, 0.0], 2, None).unwrap();
        assert_eq!(hits[0].0, 1);
        assert!((hits[0].1 - 1.0).abs() < 1e-5);
        assert!((hits[1].1 - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-5);
        assert!((exact_score(Metric::Cosine, &[0.5, 0.0], &[1.0, 1.0]) - hits[1].1).abs() < 1e-5);
    }

    #[test]
    fn scores_of_identical_vectors_stay_in_the_metric_range() {
        // Vectors whose normalization rounds so that a vector's inner product with itself
        // exceeds 1 (Conifer answered 1.0000015 for such a pair) and, for squared L2, a
        // distance of itself below 0.
        let dimension = 384;
        let vectors: Vec<Vec<f32>> = (0..40)
            .map(|i| {
                (0..dimension)
                    .map(|j| ((i * 7 + j * 13) % 97) as f32 * 0.013 + 0.1 + i as f32 * 1e-3)
                    .collect()
            })
            .collect();
        let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
        let ids: Vec<u64> = (0..vectors.len() as u64).collect();
        for kind in [EngineKind::Flat, EngineKind::Hnsw] {
            for metric in [Metric::Cosine, Metric::Euclidean] {
                let mut index =
                    VectorIndex::new(dimension, metric, kind, EngineConfig::default()).unwrap();
                index.add(&ids, flat.clone()).unwrap();
                for (i, v) in vectors.iter().enumerate() {
                    let hits = index.search(v, 3, None).unwrap();
                    assert_eq!(hits[0].0, i as u64, "{kind:?} {metric:?}");
                    let exact = exact_score(metric, v, v);
                    for score in hits.iter().map(|h| h.1).chain([exact]) {
                        match metric {
                            Metric::Cosine => assert!(
                                (-1.0..=1.0).contains(&score),
                                "{kind:?} cosine score {score} of vector {i}"
                            ),
                            _ => assert!(score >= 0.0, "{kind:?} squared L2 {score} of {i}"),
                        }
                    }
                    if metric == Metric::Cosine {
                        assert!(hits[0].1 > 0.9999, "{kind:?} self-score {}", hits[0].1);
                    }
                }
            }
        }
        assert_eq!(clamp_score(Metric::Cosine, 1.0000015), 1.0);
        assert_eq!(clamp_score(Metric::Cosine, -1.0000015), -1.0);
        assert_eq!(clamp_score(Metric::Euclidean, -1e-7), 0.0);
        assert_eq!(clamp_score(Metric::DotProduct, 7.5), 7.5);
    }

    #[test]
    fn index_round_trips_through_memory_with_its_tombstones() {
        let config = EngineConfig::default();
        let mut index = VectorIndex::new(4, Metric::Cosine, EngineKind::Hnsw, config).unwrap();
        let ids: Vec<u64> = (0..50).collect();
        let values: Vec<f32> = (0..50)
            .flat_map(|i| [i as f32, 1.0, (i % 3) as f32, 0.5])
            .collect();
        index.add(&ids, values.clone()).unwrap();
        index.remove(&[49]).unwrap();
        let before = index.search(&[40.0, 1.0, 1.0, 0.5], 5, None).unwrap();
        let snapshot = index.to_snapshot().unwrap();
        // Written into a buffer of exactly its length (no spare capacity), and the same
        // bytes each time.
        assert_eq!(snapshot.faiss.capacity(), snapshot.faiss.len());
        assert_eq!(index.to_snapshot().unwrap().faiss, snapshot.faiss);
        let loaded =
            VectorIndex::from_snapshot(snapshot.clone(), 4, Metric::Cosine, config).unwrap();
        assert_eq!(
            (loaded.kind(), loaded.len(), loaded.tombstones()),
            (EngineKind::Hnsw, 50, 1)
        );
        assert_eq!(
            loaded.search(&[40.0, 1.0, 1.0, 0.5], 5, None).unwrap(),
            before
        );
        assert!(VectorIndex::from_snapshot(snapshot, 8, Metric::Cosine, config).is_err());
        let garbage = EngineSnapshot {
            kind: EngineKind::Flat,
            tombstones: vec![],
            faiss: vec![1, 2, 3],
        };
        assert!(VectorIndex::from_snapshot(garbage, 4, Metric::Cosine, config).is_err());
    }

    #[test]
    fn hnsw_skips_tombstones_and_asks_for_a_rebuild() {
        let mut index = VectorIndex::new(
            4,
            Metric::DotProduct,
            EngineKind::Hnsw,
            EngineConfig::default(),
        )
        .unwrap();
        let ids: Vec<u64> = (0..100).collect();
        let values: Vec<f32> = (0..100).flat_map(|i| [i as f32, 1.0, 0.0, 0.0]).collect();
        index.add(&ids, values.clone()).unwrap();
        assert_eq!(
            index.search(&[1.0, 0.0, 0.0, 0.0], 1, None).unwrap()[0].0,
            99
        );
        index.remove(&[99, 98]).unwrap();
        let hits = index.search(&[1.0, 0.0, 0.0, 0.0], 2, None).unwrap();
        assert_eq!(hits.iter().map(|h| h.0).collect::<Vec<_>>(), vec![97, 96]);
        assert!(!index.needs_rebuild());
        index.remove(&(0..20).collect::<Vec<_>>()).unwrap();
        assert!(index.needs_rebuild(), "22 of 100 are tombstones");
    }

    #[test]
    fn every_instruction_set_computes_the_same_distances() {
        // The levels up to the CPU's best (a level above it would fall back to the best).
        let levels = ["baseline", "avx2", "avx512"];
        let best = super::super::native::simd_level();
        let runnable = &levels[..=levels.iter().position(|l| *l == best).expect(best)];
        for d in [1usize, 3, 8, 17, 50, 64, 384, 1536] {
            let x: Vec<f32> = (0..d)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
                .collect();
            let y: Vec<f32> = (0..d)
                .map(|i| ((i * 11 % 89) as f32 - 44.0) / 13.0)
                .collect();
            let ip: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            let l2: f64 = x
                .iter()
                .zip(&y)
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2))
                .sum();
            let scale: f64 = x.iter().chain(&y).map(|a| f64::from(*a).powi(2)).sum();
            for &level in runnable {
                let got_ip = super::super::native::kernel_distance(level, &x, &y, true);
                let got_l2 = super::super::native::kernel_distance(level, &x, &y, false);
                let tolerance = 1e-5 * scale.max(1.0);
                assert!(
                    (f64::from(got_ip) - ip).abs() <= tolerance,
                    "{level:?} d={d}: inner product {got_ip}, exact {ip}"
                );
                assert!(
                    (f64::from(got_l2) - l2).abs() <= tolerance,
                    "{level:?} d={d}: squared L2 {got_l2}, exact {l2}"
                );
            }
        }
    }

    #[test]
    fn hnsw_searches_run_in_parallel_and_agree_with_serial_ones() {
        let dimension = 24;
        let count = 3_000u64;
        // splitmix64 of (i, j): no two vectors alike.
        let noise = |i: u64, j: u64| {
            let mut z = (i * 1_000 + j).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % 10_000) as f32 / 10_000.0 - 0.5
        };
        let values: Vec<f32> = (0..count)
            .flat_map(|i| (0..dimension).map(move |j| noise(i, j)))
            .collect();
        let ids: Vec<u64> = (0..count).map(|i| i * 3 + 1).collect();
        for metric in [Metric::Cosine, Metric::Euclidean, Metric::DotProduct] {
            let mut index = VectorIndex::new(
                dimension as usize,
                metric,
                EngineKind::Hnsw,
                EngineConfig::default(),
            )
            .unwrap();
            index.add(&ids, values.clone()).unwrap();
            let queries: Vec<&[f32]> = values.chunks(dimension as usize).step_by(97).collect();
            let serial: Vec<_> = queries
                .iter()
                .map(|q| index.search(q, 10, None).unwrap())
                .collect();
            for (q, hits) in queries.iter().zip(&serial) {
                assert_eq!(hits.len(), 10, "{metric:?}");
                if metric != Metric::DotProduct {
                    let own = ids[values
                        .chunks(dimension as usize)
                        .position(|v| v == *q)
                        .unwrap()];
                    assert_eq!(
                        hits[0].0, own,
                        "{metric:?}: a stored vector finds itself first"
                    );
                }
            }
            let index = &index;
            let parallel: Vec<Vec<_>> = std::thread::scope(|scope| {
                let workers: Vec<_> = (0..4)
                    .map(|_| {
                        scope.spawn(|| {
                            queries
                                .iter()
                                .map(|q| index.search(q, 10, None).unwrap())
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .flat_map(|w| w.join().unwrap())
                    .collect()
            });
            for (i, hits) in parallel.iter().enumerate() {
                assert_eq!(hits, &serial[i % serial.len()], "{metric:?} query {i}");
            }
            // A filter keeps to its ids, through the HNSW graph as through the exact index.
            let allowed: Vec<u64> = ids.iter().copied().step_by(5).collect();
            let filtered = index.search(queries[3], 10, Some(&allowed)).unwrap();
            assert_eq!(filtered.len(), 10);
            assert!(
                filtered.iter().all(|(id, _)| allowed.contains(id)),
                "{filtered:?}"
            );
            // A scan of those ids is the exact answer: the brute-force order over the raw
            // values (ties by id), with the scores a graph search gives the same records.
            let query = queries[3];
            let scanned = index.scan(query, 10, &allowed).unwrap();
            let mut brute: Vec<(u64, f32)> = allowed
                .iter()
                .map(|id| {
                    let at = ids.iter().position(|i| i == id).unwrap();
                    let v = &values[at * dimension as usize..(at + 1) * dimension as usize];
                    (*id, exact_score(metric, query, v))
                })
                .collect();
            brute.sort_by(|a, b| {
                if better(metric, a.1, b.1) {
                    std::cmp::Ordering::Less
                } else if better(metric, b.1, a.1) {
                    std::cmp::Ordering::Greater
                } else {
                    a.0.cmp(&b.0)
                }
            });
            assert_eq!(
                scanned.iter().map(|h| h.0).collect::<Vec<_>>(),
                brute[..10].iter().map(|h| h.0).collect::<Vec<_>>(),
                "{metric:?}"
            );
            for ((_, got), (_, want)) in scanned.iter().zip(&brute) {
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{metric:?}"
                );
            }
            for hit in &filtered {
                if let Some(same) = scanned.iter().find(|s| s.0 == hit.0) {
                    assert!(
                        (same.1 - hit.1).abs() <= 1e-5 * hit.1.abs().max(1.0),
                        "{metric:?}: one score per record"
                    );
                }
            }
        }
    }
}
