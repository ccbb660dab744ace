//! The vector engine of one namespace: a FAISS index over internal ids.
//!
//! Exact search (`IDMap2,Flat`) for now; HNSW above a size threshold, tombstones and
//! background rebuilds follow in issue 3. Cosine is inner product over normalized vectors;
//! euclidean scores are squared L2 distances (lower is closer), as Pinecone reports them.

use faiss::index::{IndexImpl, SearchWithParamsMut};
use faiss::search_params::SearchParameters;
use faiss::selector::IdSelector;
use faiss::{index_factory, Idx, Index, MetricType};

use crate::control::state::Metric;

/// Errors from FAISS.
#[derive(Debug, thiserror::Error)]
#[error("vector engine: {0}")]
pub struct EngineError(pub String);

impl From<faiss::error::Error> for EngineError {
    fn from(e: faiss::error::Error) -> Self {
        Self(e.to_string())
    }
}

/// A FAISS index for one namespace.
pub struct VectorIndex {
    index: IndexImpl,
    metric: Metric,
    dimension: usize,
}

/// Scales `v` to unit length (zero vectors stay zero).
pub fn normalize(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

impl VectorIndex {
    /// An empty exact index.
    pub fn new(dimension: usize, metric: Metric) -> Result<Self, EngineError> {
        let faiss_metric = match metric {
            Metric::Euclidean => MetricType::L2,
            Metric::Cosine | Metric::DotProduct => MetricType::InnerProduct,
        };
        let index = index_factory(dimension as u32, "IDMap2,Flat", faiss_metric)?;
        Ok(Self {
            index,
            metric,
            dimension,
        })
    }

    /// Number of vectors held.
    pub fn len(&self) -> u64 {
        self.index.ntotal()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn prepared(&self, values: &[f32]) -> Vec<f32> {
        debug_assert_eq!(values.len(), self.dimension);
        let mut v = values.to_vec();
        if self.metric == Metric::Cosine {
            normalize(&mut v);
        }
        v
    }

    /// Adds vectors under internal ids (`values` is ids.len() × dimension).
    pub fn add(&mut self, ids: &[u64], values: &[f32]) -> Result<(), EngineError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut data = Vec::with_capacity(values.len());
        for chunk in values.chunks(self.dimension) {
            data.extend(self.prepared(chunk));
        }
        let labels: Vec<Idx> = ids.iter().map(|&i| Idx::new(i)).collect();
        self.index.add_with_ids(&data, &labels)?;
        Ok(())
    }

    /// Removes vectors by internal id.
    pub fn remove(&mut self, ids: &[u64]) -> Result<(), EngineError> {
        if ids.is_empty() {
            return Ok(());
        }
        let labels: Vec<Idx> = ids.iter().map(|&i| Idx::new(i)).collect();
        let selector = IdSelector::batch(&labels)?;
        self.index.remove_ids(&selector)?;
        Ok(())
    }

    /// The `k` nearest internal ids to `query` with Pinecone scores, best first; when
    /// `allowed` is given, only those ids are considered.
    pub fn search(
        &mut self,
        query: &[f32],
        k: usize,
        allowed: Option<&[u64]>,
    ) -> Result<Vec<(u64, f32)>, EngineError> {
        if self.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let q = self.prepared(query);
        let k = k.min(self.len() as usize);
        let result = match allowed {
            None => self.index.search(&q, k)?,
            Some(ids) => {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let labels: Vec<Idx> = ids.iter().map(|&i| Idx::new(i)).collect();
                let params = SearchParameters::new(IdSelector::batch(&labels)?)?;
                self.index.search_with_params(&q, k, &params)?
            }
        };
        Ok(result
            .labels
            .iter()
            .zip(result.distances.iter())
            .filter_map(|(label, distance)| label.get().map(|id| (id, *distance)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_search_ranks_by_metric_and_respects_removal_and_selector() {
        let mut index = VectorIndex::new(2, Metric::Euclidean).unwrap();
        index
            .add(&[10, 11, 12], &[0.0, 0.0, 1.0, 0.0, 5.0, 5.0])
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
    }

    #[test]
    fn cosine_ignores_magnitude() {
        let mut index = VectorIndex::new(2, Metric::Cosine).unwrap();
        index.add(&[1, 2], &[10.0, 0.0, 1.0, 1.0]).unwrap();
        let hits = index.search(&[0.5, 0.0], 2, None).unwrap();
        assert_eq!(hits[0].0, 1);
        assert!((hits[0].1 - 1.0).abs() < 1e-5);
        assert!((hits[1].1 - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-5);
    }
}
