//! The metadata index of one namespace: roaring bitmaps of internal ids per field value,
//! a sorted map per numeric field for range conditions, and one bitmap per field for
//! `$exists`. A filter is answered with bitmap algebra, exactly as
//! [`Filter::matches`] would answer it record by record.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use roaring::{MultiOps, RoaringTreemap};
use serde_json::{Map, Value};

use super::filter::{Condition, Filter, Scalar};

/// An f64 ordered by `total_cmp` (metadata numbers are never NaN: JSON has none).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Number(f64);

impl Eq for Number {}

impl PartialOrd for Number {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Number {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// A metadata value as an equality key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Str(String),
    /// Bits of the number, with -0.0 folded into 0.0.
    Num(u64),
    Bool(bool),
}

fn number_key(n: f64) -> Key {
    Key::Num(if n == 0.0 { 0.0f64 } else { n }.to_bits())
}

fn scalar_key(s: &Scalar) -> Key {
    match s {
        Scalar::Str(s) => Key::Str(s.clone()),
        Scalar::Num(n) => number_key(*n),
        Scalar::Bool(b) => Key::Bool(*b),
    }
}

/// Bitmaps over the internal ids of one namespace.
#[derive(Default)]
pub struct MetadataIndex {
    all: RoaringTreemap,
    equal: HashMap<String, HashMap<Key, RoaringTreemap>>,
    numbers: HashMap<String, BTreeMap<Number, RoaringTreemap>>,
    present: HashMap<String, RoaringTreemap>,
}

impl MetadataIndex {
    /// Records indexed.
    pub fn len(&self) -> u64 {
        self.all.len()
    }

    /// Whether no record is indexed.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Indexes record `id` with `metadata`.
    pub fn insert(&mut self, id: u64, metadata: Option<&Map<String, Value>>) {
        self.all.insert(id);
        for (field, value) in metadata.into_iter().flatten() {
            self.present.entry(field.clone()).or_default().insert(id);
            for key in keys(value) {
                self.equal
                    .entry(field.clone())
                    .or_default()
                    .entry(key)
                    .or_default()
                    .insert(id);
            }
            if let Some(n) = value.as_f64().filter(|_| value.is_number()) {
                self.numbers
                    .entry(field.clone())
                    .or_default()
                    .entry(Number(n))
                    .or_default()
                    .insert(id);
            }
        }
    }

    /// Removes record `id`, indexed with `metadata`.
    pub fn remove(&mut self, id: u64, metadata: Option<&Map<String, Value>>) {
        self.all.remove(id);
        for (field, value) in metadata.into_iter().flatten() {
            remove_from(&mut self.present, field, id);
            if let Some(by_value) = self.equal.get_mut(field) {
                for key in keys(value) {
                    remove_from(by_value, &key, id);
                }
                if by_value.is_empty() {
                    self.equal.remove(field);
                }
            }
            if let (Some(n), Some(by_number)) = (
                value.as_f64().filter(|_| value.is_number()),
                self.numbers.get_mut(field),
            ) {
                if let Some(ids) = by_number.get_mut(&Number(n)) {
                    ids.remove(id);
                    if ids.is_empty() {
                        by_number.remove(&Number(n));
                    }
                }
                if by_number.is_empty() {
                    self.numbers.remove(field);
                }
            }
        }
    }

    /// The internal ids of records satisfying `filter`.
    pub fn evaluate(&self, filter: &Filter) -> RoaringTreemap {
        match filter {
            Filter::And(parts) => {
                // Every part's records are a subset of all records: start from the first
                // part (an empty conjunction is every record) rather than a copy of all.
                let Some((first, others)) = parts.split_first() else {
                    return self.all.clone();
                };
                let mut acc = self.evaluate(first);
                for part in others {
                    if acc.is_empty() {
                        break;
                    }
                    acc &= self.evaluate(part);
                }
                acc
            }
            Filter::Or(parts) => parts.iter().map(|part| self.evaluate(part)).union(),
            Filter::Field(field, condition) => self.condition(field, condition),
        }
    }

    fn equal_to(&self, field: &str, scalar: &Scalar) -> RoaringTreemap {
        self.equal
            .get(field)
            .and_then(|m| m.get(&scalar_key(scalar)))
            .cloned()
            .unwrap_or_default()
    }

    fn range(
        &self,
        field: &str,
        from: std::ops::Bound<Number>,
        to: std::ops::Bound<Number>,
    ) -> RoaringTreemap {
        // One union of every value's bitmap at once: folding them in one by one copies the
        // growing result once per value (milliseconds for a range over 500 values).
        match self.numbers.get(field) {
            Some(by_number) => by_number.range((from, to)).map(|(_, ids)| ids).union(),
            None => RoaringTreemap::new(),
        }
    }

    /// The records whose `field` equals any of `set`.
    fn equal_to_any(&self, field: &str, set: &[Scalar]) -> RoaringTreemap {
        match self.equal.get(field) {
            Some(by_value) => set
                .iter()
                .filter_map(|s| by_value.get(&scalar_key(s)))
                .union(),
            None => RoaringTreemap::new(),
        }
    }

    fn condition(&self, field: &str, condition: &Condition) -> RoaringTreemap {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        match condition {
            Condition::Eq(s) => self.equal_to(field, s),
            Condition::Ne(s) => &self.all - self.equal_to(field, s),
            Condition::Gt(n) => self.range(field, Excluded(Number(*n)), Unbounded),
            Condition::Gte(n) => self.range(field, Included(Number(*n)), Unbounded),
            Condition::Lt(n) => self.range(field, Unbounded, Excluded(Number(*n))),
            Condition::Lte(n) => self.range(field, Unbounded, Included(Number(*n))),
            Condition::In(set) => self.equal_to_any(field, set),
            Condition::Nin(set) => &self.all - self.equal_to_any(field, set),
            Condition::Exists(true) => self.present.get(field).cloned().unwrap_or_default(),
            Condition::Exists(false) => {
                &self.all - self.present.get(field).cloned().unwrap_or_default()
            }
        }
    }
}

fn keys(value: &Value) -> Vec<Key> {
    match value {
        Value::String(s) => vec![Key::Str(s.clone())],
        Value::Number(n) => n.as_f64().map(number_key).into_iter().collect(),
        Value::Bool(b) => vec![Key::Bool(*b)],
        Value::Array(items) => items
            .iter()
            .filter_map(|i| i.as_str().map(|s| Key::Str(s.to_string())))
            .collect(),
        Value::Null | Value::Object(_) => Vec::new(),
    }
}

fn remove_from<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, RoaringTreemap>,
    key: &K,
    id: u64,
) {
    if let Some(ids) = map.get_mut(key) {
        ids.remove(id);
        if ids.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::filter::parse;
    use super::*;

    fn records() -> Vec<Map<String, Value>> {
        (0..300)
            .map(|i: i64| {
                let genre = ["drama", "comedy", "action"][(i % 3) as usize];
                let tags = [
                    ["a", "b", "c", "d"][(i % 4) as usize],
                    ["x", "y"][(i % 2) as usize],
                ];
                let mut m = json!({
                    "genre": genre,
                    "year": 1990 + (i % 40),
                    "score": (i % 17) as f64 / 4.0 - 2.0,
                    "live": i % 4 == 0,
                    "tags": tags,
                });
                if i % 5 == 0 {
                    m.as_object_mut().unwrap().remove("year");
                }
                m.as_object().unwrap().clone()
            })
            .collect()
    }

    #[test]
    fn bitmaps_agree_with_record_by_record_evaluation() {
        let records = records();
        let mut index = MetadataIndex::default();
        for (i, m) in records.iter().enumerate() {
            index.insert(i as u64, Some(m));
        }
        // Removing and re-adding some records must leave the same answers.
        for i in (0..300).step_by(7) {
            index.remove(i, Some(&records[i as usize]));
        }
        for i in (0..300).step_by(7) {
            index.insert(i, Some(&records[i as usize]));
        }
        let filters = [
            json!({"genre": "drama"}),
            json!({"genre": {"$ne": "drama"}}),
            json!({"year": {"$gt": 2010}}),
            json!({"year": {"$gte": 2010, "$lt": 2020}}),
            json!({"score": {"$lte": 0}}),
            json!({"score": {"$lt": -1.5}}),
            json!({"score": 0}),
            json!({"genre": {"$in": ["comedy", "action"]}}),
            json!({"genre": {"$nin": ["comedy"]}}),
            json!({"tags": "a"}),
            json!({"tags": {"$in": ["c", "y"]}}),
            json!({"tags": {"$nin": ["x"]}}),
            json!({"tags": {"$ne": "b"}}),
            json!({"live": true}),
            json!({"live": {"$ne": true}}),
            json!({"year": {"$exists": false}}),
            json!({"year": {"$exists": true}}),
            json!({"missing": {"$ne": 1}}),
            json!({"missing": 1}),
            json!({"year": "2001"}),
            json!({"$or": [{"genre": "drama"}, {"$and": [{"live": true}, {"year": {"$lt": 2000}}]}]}),
            json!({}),
        ];
        for f in filters {
            let filter = parse(&f).unwrap();
            let expected: Vec<u64> = (0..300)
                .filter(|&i| filter.matches(Some(&records[i as usize])))
                .collect();
            let got: Vec<u64> = index.evaluate(&filter).iter().collect();
            assert_eq!(got, expected, "filter {f}");
        }
        for (i, m) in records.iter().enumerate() {
            index.remove(i as u64, Some(m));
        }
        assert!(
            index.all.is_empty()
                && index.equal.is_empty()
                && index.numbers.is_empty()
                && index.present.is_empty()
        );
    }
}
