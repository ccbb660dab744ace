//! Pinecone's metadata filter language, parsed into a typed [`Filter`] with limits.
//!
//! Operators: `$eq $ne $gt $gte $lt $lte $in $nin $exists $and $or`; `{"f": v}` means
//! `{"f": {"$eq": v}}` and several keys in one object are a conjunction. Metadata is flat:
//! strings, numbers, booleans and lists of strings. On a list field `$eq`/`$in` match when
//! any element matches and `$ne`/`$nin` when none does. A record without the field matches
//! only `$ne`, `$nin` and `$exists: false`.

use serde_json::{Map, Value};

/// Deepest nesting of `$and` / `$or` accepted.
pub const MAX_FILTER_DEPTH: usize = 8;
/// Most values in one `$in` / `$nin`.
pub const MAX_IN_VALUES: usize = 10_000;
/// Most conditions (leaves) in one filter.
pub const MAX_FILTER_CONDITIONS: usize = 1_000;

/// A scalar a condition compares with.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Scalar {
    /// A string.
    Str(String),
    /// A number (JSON numbers compare as f64).
    Num(f64),
    /// A boolean.
    Bool(bool),
}

/// One comparison on one field.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Condition {
    /// Equal (or, on a list, contains).
    Eq(Scalar),
    /// Not equal (or, on a list, does not contain).
    Ne(Scalar),
    /// Greater than a number.
    Gt(f64),
    /// Greater than or equal.
    Gte(f64),
    /// Less than.
    Lt(f64),
    /// Less than or equal.
    Lte(f64),
    /// One of.
    In(Vec<Scalar>),
    /// None of.
    Nin(Vec<Scalar>),
    /// Field present (true) or absent (false).
    Exists(bool),
}

/// A parsed filter.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Filter {
    /// All must hold.
    And(Vec<Filter>),
    /// Any must hold.
    Or(Vec<Filter>),
    /// A condition on a field.
    Field(String, Condition),
}

/// A filter that is not valid, with the reason naming the operator or limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter: {0}")]
pub struct FilterError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, FilterError> {
    Err(FilterError(msg.into()))
}

fn scalar(op: &str, v: &Value) -> Result<Scalar, FilterError> {
    match v {
        Value::String(s) => Ok(Scalar::Str(s.clone())),
        Value::Number(n) => Ok(Scalar::Num(n.as_f64().unwrap_or(f64::NAN))),
        Value::Bool(b) => Ok(Scalar::Bool(*b)),
        other => err(format!(
            "{op} takes a string, number or boolean, got {other}"
        )),
    }
}

fn number(op: &str, v: &Value) -> Result<f64, FilterError> {
    v.as_f64()
        .ok_or_else(|| FilterError(format!("{op} takes a number, got {v}")))
}

fn list(op: &str, v: &Value) -> Result<Vec<Scalar>, FilterError> {
    let items = v
        .as_array()
        .ok_or_else(|| FilterError(format!("{op} takes an array, got {v}")))?;
    if items.len() > MAX_IN_VALUES {
        return err(format!(
            "{op} has {} values; the limit is {MAX_IN_VALUES}",
            items.len()
        ));
    }
    items.iter().map(|i| scalar(op, i)).collect()
}

struct Parser {
    conditions: usize,
}

impl Parser {
    fn object(&mut self, obj: &Map<String, Value>, depth: usize) -> Result<Filter, FilterError> {
        if depth > MAX_FILTER_DEPTH {
            return err(format!("nesting deeper than {MAX_FILTER_DEPTH} levels"));
        }
        let mut parts = Vec::new();
        for (key, value) in obj {
            match key.as_str() {
                "$and" | "$or" => {
                    let items = value
                        .as_array()
                        .ok_or_else(|| FilterError(format!("{key} takes an array")))?;
                    if items.is_empty() {
                        return err(format!("{key} takes a non-empty array"));
                    }
                    let subs = items
                        .iter()
                        .map(|i| match i {
                            Value::Object(o) => self.object(o, depth + 1),
                            other => err(format!("{key} elements must be objects, got {other}")),
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    parts.push(if key == "$and" {
                        Filter::And(subs)
                    } else {
                        Filter::Or(subs)
                    });
                }
                op if op.starts_with('$') => {
                    return err(format!("unknown operator {op} at the top of a filter"))
                }
                field => parts.extend(self.field(field, value)?),
            }
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Filter::And(parts)
        })
    }

    fn field(&mut self, field: &str, value: &Value) -> Result<Vec<Filter>, FilterError> {
        let mut out = Vec::new();
        match value {
            Value::Object(ops) => {
                if ops.is_empty() {
                    return err(format!("field '{field}' has an empty condition"));
                }
                for (op, arg) in ops {
                    let cond = match op.as_str() {
                        "$eq" => Condition::Eq(scalar(op, arg)?),
                        "$ne" => Condition::Ne(scalar(op, arg)?),
                        "$gt" => Condition::Gt(number(op, arg)?),
                        "$gte" => Condition::Gte(number(op, arg)?),
                        "$lt" => Condition::Lt(number(op, arg)?),
                        "$lte" => Condition::Lte(number(op, arg)?),
                        "$in" => Condition::In(list(op, arg)?),
                        "$nin" => Condition::Nin(list(op, arg)?),
                        "$exists" => Condition::Exists(arg.as_bool().ok_or_else(|| {
                            FilterError(format!("$exists takes a boolean, got {arg}"))
                        })?),
                        other => {
                            return err(format!("unknown operator {other} on field '{field}'"))
                        }
                    };
                    out.push(Filter::Field(field.to_string(), cond));
                }
            }
            other => out.push(Filter::Field(
                field.to_string(),
                Condition::Eq(scalar("$eq", other)?),
            )),
        }
        self.conditions += out.len();
        if self.conditions > MAX_FILTER_CONDITIONS {
            return err(format!("more than {MAX_FILTER_CONDITIONS} conditions"));
        }
        Ok(out)
    }
}

/// Parses a filter given as a JSON object.
pub fn parse(value: &Value) -> Result<Filter, FilterError> {
    match value {
        Value::Object(obj) if obj.is_empty() => Ok(Filter::And(Vec::new())),
        Value::Object(obj) => Parser { conditions: 0 }.object(obj, 0),
        other => err(format!("a filter must be an object, got {other}")),
    }
}

fn scalar_eq(a: &Scalar, v: &Value) -> bool {
    match (a, v) {
        (Scalar::Str(s), Value::String(t)) => s == t,
        (Scalar::Num(n), Value::Number(m)) => m.as_f64() == Some(*n),
        (Scalar::Bool(b), Value::Bool(c)) => b == c,
        _ => false,
    }
}

/// Whether `value` (a field's value) equals `s`, or contains it when a list.
fn matches_eq(s: &Scalar, value: &Value) -> bool {
    match value {
        Value::Array(items) => items.iter().any(|i| scalar_eq(s, i)),
        v => scalar_eq(s, v),
    }
}

fn compare(value: Option<&Value>, f: impl Fn(f64) -> bool) -> bool {
    value.and_then(Value::as_f64).is_some_and(f)
}

impl Filter {
    /// Whether a record with `metadata` satisfies the filter.
    pub fn matches(&self, metadata: Option<&Map<String, Value>>) -> bool {
        match self {
            Filter::And(parts) => parts.iter().all(|p| p.matches(metadata)),
            Filter::Or(parts) => parts.iter().any(|p| p.matches(metadata)),
            Filter::Field(field, cond) => {
                let value = metadata.and_then(|m| m.get(field));
                match cond {
                    Condition::Eq(s) => value.is_some_and(|v| matches_eq(s, v)),
                    Condition::Ne(s) => !value.is_some_and(|v| matches_eq(s, v)),
                    Condition::Gt(n) => compare(value, |x| x > *n),
                    Condition::Gte(n) => compare(value, |x| x >= *n),
                    Condition::Lt(n) => compare(value, |x| x < *n),
                    Condition::Lte(n) => compare(value, |x| x <= *n),
                    Condition::In(set) => {
                        value.is_some_and(|v| set.iter().any(|s| matches_eq(s, v)))
                    }
                    Condition::Nin(set) => {
                        !value.is_some_and(|v| set.iter().any(|s| matches_eq(s, v)))
                    }
                    Condition::Exists(want) => value.is_some() == *want,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn operators_follow_pinecone_semantics() {
        let rec = m(json!({"genre": "drama", "year": 2019, "tags": ["a", "b"], "live": true}));
        let yes = [
            json!({"genre": "drama"}),
            json!({"genre": {"$ne": "comedy"}}),
            json!({"year": {"$gt": 2000, "$lte": 2019}}),
            json!({"tags": "a"}),
            json!({"tags": {"$in": ["z", "b"]}}),
            json!({"tags": {"$nin": ["z"]}}),
            json!({"missing": {"$ne": 1}}),
            json!({"missing": {"$exists": false}}),
            json!({"$or": [{"genre": "x"}, {"live": true}]}),
            json!({"$and": [{"genre": "drama"}, {"year": {"$gte": 2019}}]}),
            json!({}),
        ];
        for f in yes {
            assert!(parse(&f).unwrap().matches(Some(&rec)), "{f} should match");
        }
        let no = [
            json!({"genre": "comedy"}),
            json!({"year": {"$lt": 2019}}),
            json!({"tags": {"$nin": ["a"]}}),
            json!({"missing": {"$eq": 1}}),
            json!({"missing": {"$gt": 1}}),
            json!({"genre": "drama", "year": 1999}),
            json!({"year": "2019"}),
        ];
        for f in no {
            assert!(
                !parse(&f).unwrap().matches(Some(&rec)),
                "{f} should not match"
            );
        }
    }

    #[test]
    fn invalid_filters_name_the_problem() {
        for (f, needle) in [
            (json!({"$foo": 1}), "$foo"),
            (json!({"a": {"$regex": "x"}}), "$regex"),
            (json!({"a": {"$gt": "x"}}), "$gt takes a number"),
            (json!({"a": {"$in": "x"}}), "$in takes an array"),
            (json!({"$and": []}), "non-empty"),
            (json!([1]), "must be an object"),
            (
                json!({"a": {"$in": vec![1; MAX_IN_VALUES + 1]}}),
                "limit is 10000",
            ),
        ] {
            let e = parse(&f).unwrap_err();
            assert!(e.0.contains(needle), "{f}: {e}");
        }
        assert!(parse(&json!({"a": {"$in": vec![1; MAX_IN_VALUES]}})).is_ok());
        let mut deep = json!({"a": 1});
        for _ in 0..=MAX_FILTER_DEPTH {
            deep = json!({ "$and": [deep] });
        }
        assert!(parse(&deep).unwrap_err().0.contains("nesting"));
    }
}
