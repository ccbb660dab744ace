//! Server-side timing of one data-plane request: named spans that the layers a request
//! passes through record as they go (`record`), collected per request (`collect`) and
//! reported by the API as a W3C Server-Timing value (`filter;dur=0.012, search;dur=0.41`,
//! durations in milliseconds).
//!
//! Spans of a query:
//! - `receive`: from the request's arrival at the authentication middleware to its
//!   handler: header checks, authentication, and receiving and decoding the body;
//! - `route`: authorizing the call's project and resolving its index;
//! - `filter`: evaluating the metadata filter into candidate ids;
//! - `search`: the vector engine, or the exact scan of a selective filter;
//! - `lookup`: the hits' records by internal id;
//! - `assemble`: building the response's matches;
//! - `forward`: when another node answered, the whole forwarded call;
//! - `encode`: REST only, serializing the JSON body;
//! - `total`: from the request's arrival at the authentication middleware to its response,
//!   encoding excepted on gRPC, where tonic encodes after the headers are sent.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

tokio::task_local! {
    static SPANS: RefCell<Spans>;
}

/// The spans of one request, in the order recorded.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Spans(Vec<(&'static str, Duration)>);

impl Spans {
    /// Adds a span.
    pub fn push(&mut self, name: &'static str, took: Duration) {
        self.0.push((name, took));
    }

    /// The duration of the span `name`, if recorded.
    pub fn get(&self, name: &str) -> Option<Duration> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, d)| *d)
    }

    /// The Server-Timing header value: `name;dur=<milliseconds>` joined by `, `.
    pub fn header_value(&self) -> String {
        self.0
            .iter()
            .map(|(name, took)| format!("{name};dur={:.3}", took.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Runs `work`, collecting the spans recorded while it runs on this task.
pub async fn collect<F: Future>(work: F) -> (F::Output, Spans) {
    SPANS
        .scope(RefCell::new(Spans::default()), async {
            let out = work.await;
            (out, SPANS.with(|spans| spans.take()))
        })
        .await
}

/// Records a span of the current request; does nothing outside [`collect`].
pub fn record(name: &'static str, took: Duration) {
    let _ = SPANS.try_with(|spans| spans.borrow_mut().push(name, took));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn spans_recorded_inside_are_collected_and_outside_are_dropped() {
        record("outside", Duration::from_millis(1));
        let (out, spans) = collect(async {
            record("filter", Duration::from_micros(12));
            tokio::task::yield_now().await;
            record("search", Duration::from_micros(410));
            7
        })
        .await;
        assert_eq!(out, 7);
        assert_eq!(spans.get("search"), Some(Duration::from_micros(410)));
        assert_eq!(spans.get("outside"), None);
        assert_eq!(spans.header_value(), "filter;dur=0.012, search;dur=0.410");
        let (_, again) = collect(async {}).await;
        assert_eq!(again, Spans::default(), "each request starts empty");
    }
}
