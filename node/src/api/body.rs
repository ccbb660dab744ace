//! JSON request bodies of the routes that read them as bytes (the data plane and the index
//! API): the content type, nesting and shape checks every such route shares, refused in
//! Pinecone's error shape.

use std::borrow::Cow;
use std::time::Duration;

use axum::http::HeaderMap;
use serde::de::DeserializeOwned;

use super::conn::CLIENT_BODY_READ_TIMEOUT_MS;
use super::ApiError;

/// Deepest JSON nesting read as it is. Deeper arrays and objects are read as `null`, so
/// the field's own validation refuses them with its usual message (a filter nested 1,000
/// levels deep gets the same "nesting deeper than 8 levels" as one nested 9 deep), the
/// JSON parser's recursion limit (128) is never reached, and a filter or metadata forwarded
/// to another node as protobuf (at most three messages per JSON level: `Struct`, its map
/// entry, `Value`) stays under prost's decoding limit of 100 nested messages. No valid
/// request nests deeper than a filter at its limit (about 21 levels).
pub const MAX_JSON_NESTING: usize = 32;

/// Most bytes of an over-limit request body read on and discarded before the refusal is
/// sent: a client still sending then receives the 413 rather than a connection reset (the
/// kernel resets a connection closed with unread data). Past this, the connection is closed.
pub const MAX_DRAINED_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Why a request body was not read.
#[derive(Debug)]
pub enum BodyError {
    /// It is longer than the route's limit.
    TooLarge,
    /// The connection failed while reading it.
    Broken(String),
    /// It did not arrive within [`CLIENT_BODY_READ_TIMEOUT_MS`].
    TimedOut,
    /// The node already buffers [`MAX_BUFFERED_BODY_BYTES`] of request bodies being read.
    Busy,
}

/// Most bytes of request bodies all the node's requests may hold while they are being read
/// (each is bounded by its route's limit, but 128 connections × 64 streams of 4 MiB would
/// not be); a body that would pass it is refused with 429 / `RESOURCE_EXHAUSTED`.
pub const MAX_BUFFERED_BODY_BYTES: usize = 256 * 1024 * 1024;

/// The node's budget of [`MAX_BUFFERED_BODY_BYTES`], in KiB permits.
fn body_budget() -> &'static std::sync::Arc<tokio::sync::Semaphore> {
    static BUDGET: std::sync::OnceLock<std::sync::Arc<tokio::sync::Semaphore>> =
        std::sync::OnceLock::new();
    BUDGET.get_or_init(|| {
        std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_BUFFERED_BODY_BYTES / 1024))
    })
}

/// Reads `body` whole when it is at most `limit_bytes`; past that, reads on and discards up
/// to [`MAX_DRAINED_BODY_BYTES`] more and answers [`BodyError::TooLarge`]. The whole body
/// must arrive within [`CLIENT_BODY_READ_TIMEOUT_MS`] (a client sending a byte at a time
/// does not hold the request open).
pub async fn read_bounded(
    body: axum::body::Body,
    limit_bytes: usize,
) -> Result<axum::body::Bytes, BodyError> {
    use futures::StreamExt;
    let read = async {
        let mut stream = body.into_data_stream();
        let mut kept = Vec::new();
        let mut seen = 0usize;
        // KiB of the node's body budget this request holds while it reads.
        let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BodyError::Broken(e.to_string()))?;
            seen = seen.saturating_add(chunk.len());
            if seen <= limit_bytes {
                let want = kept.len().saturating_add(chunk.len()).div_ceil(1024);
                let have = held.as_ref().map_or(0, |p| p.num_permits());
                if want > have {
                    let more = u32::try_from(want - have).map_err(|_| BodyError::Busy)?;
                    let permit = body_budget()
                        .clone()
                        .try_acquire_many_owned(more)
                        .map_err(|_| BodyError::Busy)?;
                    match held.as_mut() {
                        Some(h) => h.merge(permit),
                        None => held = Some(permit),
                    }
                }
                kept.extend_from_slice(&chunk);
            } else if seen > limit_bytes.saturating_add(MAX_DRAINED_BODY_BYTES) {
                break;
            }
        }
        if seen > limit_bytes {
            return Err(BodyError::TooLarge);
        }
        Ok(axum::body::Bytes::from(kept))
    };
    tokio::time::timeout(Duration::from_millis(CLIENT_BODY_READ_TIMEOUT_MS), read)
        .await
        .unwrap_or(Err(BodyError::TimedOut))
}

/// What a REST route accepts as its body.
#[derive(Clone, Copy, Debug)]
pub struct BodyRule {
    /// Largest body.
    pub limit_bytes: usize,
    /// Whether the route reads a body at all (others refuse any).
    pub takes_body: bool,
    /// Which API it belongs to (the status of a body of the wrong shape).
    pub plane: Plane,
}

/// The layer that reads a REST route's body by its [`BodyRule`]: bounded ([`read_bounded`]:
/// 413 in Pinecone's shape naming the limit, after draining what the client still sends),
/// not compressed (`Content-Encoding` other than `identity` is 415), absent (or `{}`) on
/// routes that take none, and — when present — a JSON object, not an array or scalar whose values serde
/// would assign to fields by position.
pub async fn limit_body(
    axum::extract::State(rule): axum::extract::State<BodyRule>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let encoding = request
        .headers()
        .get(axum::http::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase());
    if encoding.as_deref().is_some_and(|e| e != "identity") {
        return ApiError::unsupported_media_type(format!(
            "Content-Encoding {:?} is not accepted; send the body uncompressed",
            encoding.unwrap_or_default()
        ))
        .into_response();
    }
    let (parts, body) = request.into_parts();
    let bytes = match read_bounded(body, rule.limit_bytes).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => return ApiError::too_large(rule.limit_bytes).into_response(),
        Err(BodyError::Broken(e)) => {
            return ApiError::invalid(format!("the request body could not be read: {e}"))
                .into_response()
        }
        Err(BodyError::TimedOut) => return ApiError::body_timed_out().into_response(),
        Err(BodyError::Busy) => return ApiError::bodies_busy().into_response(),
    };
    if let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        // `{}` says nothing (some clients send it with every DELETE): as good as no body.
        let empty_object = bytes
            .iter()
            .filter(|b| !b.is_ascii_whitespace())
            .eq(b"{}".iter());
        if !rule.takes_body && !empty_object {
            return ApiError::invalid(format!(
                "{} {} takes no request body",
                parts.method,
                parts.uri.path()
            ))
            .into_response();
        }
        if *first != b'{' {
            let message = "the request body must be a JSON object";
            return match rule.plane {
                Plane::Control => ApiError::unprocessable(message),
                Plane::Data => ApiError::invalid(message),
            }
            .into_response();
        }
    }
    next.run(axum::extract::Request::from_parts(parts, bytes.into()))
        .await
}

/// Which API a body belongs to: Pinecone answers a body that is JSON but not the request's
/// shape with 422 on the control plane (its spec) and 400 on the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    /// `/indexes` and the admin API.
    Control,
    /// Vectors, queries and namespaces.
    Data,
}

/// Refuses a body that does not declare `Content-Type: application/json` (parameters such
/// as `charset` allowed), with 415.
pub fn require_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(axum::http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let essence = content_type.map(|t| t.split(';').next().unwrap_or("").trim());
    match essence {
        Some(t) if t.eq_ignore_ascii_case("application/json") => Ok(()),
        Some(_) => Err(ApiError::unsupported_media_type(format!(
            "Content-Type is '{}'; this route takes 'application/json'",
            content_type.unwrap_or_default()
        ))),
        None => Err(ApiError::unsupported_media_type(
            "Expected request with `Content-Type: application/json`",
        )),
    }
}

/// Parses a JSON body of type `T`: the content type must be JSON; nesting past
/// [`MAX_JSON_NESTING`] reads as `null`; text that is not JSON is 400, JSON of the wrong
/// shape (a wrong type, a missing or unknown field) 422 on the control plane and 400 on the
/// data plane, with serde's message naming the field.
pub fn json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: &[u8],
    plane: Plane,
) -> Result<T, ApiError> {
    require_json_content_type(headers)?;
    let body = cap_nesting(body, MAX_JSON_NESTING);
    let mut deserializer = serde_json::Deserializer::from_slice(&body);
    let (path, outcome) = match serde_path_to_error::deserialize(&mut deserializer) {
        Ok(value) => (String::new(), deserializer.end().map(|()| value)),
        Err(e) => (e.path().to_string(), Err(e.into_inner())),
    };
    outcome.map_err(|e| {
        if e.classify() == serde_json::error::Category::Data {
            // Named by its path, as axum's `Json` does: "dimension: invalid type: …".
            let message = match path.as_str() {
                "" | "." => {
                    format!("Failed to deserialize the JSON body into the target type: {e}")
                }
                path => {
                    format!("Failed to deserialize the JSON body into the target type: {path}: {e}")
                }
            };
            match plane {
                Plane::Control => ApiError::unprocessable(message),
                Plane::Data => ApiError::invalid(message),
            }
        } else {
            ApiError::invalid(format!("Failed to parse the request body as JSON: {e}"))
        }
    })
}

/// Whether each byte of JSON text belongs to a string literal (quotes and escapes
/// included), fed one byte at a time: how the nesting scans skip brackets inside strings.
#[derive(Default)]
struct StringLiterals {
    inside: bool,
    escaped: bool,
}

impl StringLiterals {
    /// Whether `b`, the next byte, is part of a string literal.
    fn contain(&mut self, b: u8) -> bool {
        if !self.inside {
            self.inside = b == b'"';
            return self.inside;
        }
        if self.escaped {
            self.escaped = false;
        } else if b == b'\\' {
            self.escaped = true;
        } else if b == b'"' {
            self.inside = false;
        }
        true
    }
}

/// `text` with every array or object that opens deeper than `max` levels replaced by
/// `null` (borrowed unchanged when nothing is that deep). Text that is not JSON stays
/// malformed for the parser to name.
fn cap_nesting(text: &[u8], max: usize) -> Cow<'_, [u8]> {
    if max_nesting(text) <= max {
        return Cow::Borrowed(text);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut depth = 0usize;
    let mut strings = StringLiterals::default();
    let mut skipping_from: Option<usize> = None; // depth at which a cut subtree opened
    for &b in text {
        if !strings.contain(b) {
            match b {
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max && skipping_from.is_none() {
                        skipping_from = Some(depth);
                        out.extend_from_slice(b"null");
                    }
                }
                b']' | b'}' => {
                    let closing = depth;
                    depth = depth.saturating_sub(1);
                    if skipping_from == Some(closing) {
                        skipping_from = None;
                        continue;
                    }
                }
                _ => {}
            }
        }
        if skipping_from.is_none() {
            out.push(b);
        }
    }
    Cow::Owned(out)
}

/// The deepest nesting of arrays and objects in `text`.
fn max_nesting(text: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut strings = StringLiterals::default();
    for &b in text {
        if strings.contain(b) {
            continue;
        }
        match b {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Deserializes an optional field whose absence means its default (`#[serde(default,
/// deserialize_with = "crate::api::body::null_as_default")]`): JSON `null` means the same
/// as leaving the field out, as in Pinecone's API, whose generated clients send `null` for
/// unset fields (SDK 9.x sends `"namespace": null`). Free-form maps (metadata, filters)
/// keep refusing `null` values: only whole fields are affected.
pub fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + serde::Deserialize<'de>,
{
    Ok(<Option<T> as serde::Deserialize>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn capped(text: &str, max: usize) -> String {
        String::from_utf8(cap_nesting(text.as_bytes(), max).into_owned()).unwrap()
    }

    #[test]
    fn nesting_past_the_cap_reads_as_null_and_strings_are_kept() {
        assert_eq!(capped(r#"{"a":[1,{"b":2}]}"#, 3), r#"{"a":[1,{"b":2}]}"#);
        assert_eq!(capped(r#"{"a":[1,{"b":2}]}"#, 2), r#"{"a":[1,null]}"#);
        assert_eq!(
            capped(r#"{"s":"[{\"]","a":[[[1]],2]}"#, 2),
            r#"{"s":"[{\"]","a":[null,2]}"#
        );
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let text = format!(r#"{{"filter":{deep},"x":1}}"#);
        let value: Value = serde_json::from_str(&capped(&text, MAX_JSON_NESTING)).unwrap();
        assert_eq!(value["x"], 1);
        assert!(
            serde_json::from_str::<Value>(&text).is_err(),
            "serde's own limit"
        );
    }

    #[test]
    fn bodies_need_the_json_content_type_and_the_right_shape() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            dimension: u32,
        }
        let mut headers = HeaderMap::new();
        let missing = json::<Body>(&headers, b"{}", Plane::Control).unwrap_err();
        assert_eq!(missing.status.as_u16(), 415);
        headers.insert("content-type", "text/plain".parse().unwrap());
        let wrong = json::<Body>(&headers, br#"{"dimension":4}"#, Plane::Data).unwrap_err();
        assert_eq!(wrong.status.as_u16(), 415);
        headers.insert(
            "content-type",
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert_eq!(
            json::<Body>(&headers, br#"{"dimension":4}"#, Plane::Control)
                .unwrap()
                .dimension,
            4
        );
        let typed = json::<Body>(&headers, br#"{"dimension":"four"}"#, Plane::Control);
        let typed = typed.unwrap_err();
        assert_eq!(
            (typed.status.as_u16(), typed.code),
            (422, "UNPROCESSABLE_ENTITY")
        );
        assert!(typed.message.contains("dimension"), "{}", typed.message);
        let unknown = json::<Body>(&headers, br#"{"dimension":4,"x":1}"#, Plane::Control);
        assert_eq!(unknown.unwrap_err().status.as_u16(), 422);
        let data = json::<Body>(&headers, br#"{"dimension":"four"}"#, Plane::Data);
        assert_eq!(data.unwrap_err().status.as_u16(), 400);
        let syntax = json::<Body>(&headers, br#"{"dimension":"#, Plane::Control);
        assert_eq!(syntax.unwrap_err().status.as_u16(), 400);
    }
}
