//! The one place where failures become HTTP statuses with Pinecone's error body
//! `{"error":{"code","message"},"status"}` and gRPC statuses: [`CODES`] pairs every error
//! code with both, and [`pinecone_error_bodies`] gives every other refusal on the REST port
//! (axum's own 405, 415, path and query rejections) the same body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::control::ControlError;
use crate::dataplane::DataError;

/// An API failure: status, Pinecone error code and a message naming the field and the limit.
/// Built only here: by a constructor for each code, or from a domain error
/// ([`ControlError`], [`DataError`], `AuthError`).
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Pinecone's error code (`INVALID_ARGUMENT`, `NOT_FOUND`, …).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// Seconds after which a retry may succeed, sent as `Retry-After` (REST only): set on
    /// refusals for momentary load ([`ApiError::busy`]), never on quotas, which a retry does
    /// not lift.
    pub retry_after_s: Option<u64>,
}

/// Seconds a client is asked to wait (`Retry-After`) after a refusal for momentary load.
pub const BUSY_RETRY_AFTER_S: u64 = 1;

impl ApiError {
    /// 400 `INVALID_ARGUMENT`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            retry_after_s: None,
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_ARGUMENT",
            message: message.into(),
        }
    }
    /// 401 `UNAUTHENTICATED`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self {
            retry_after_s: None,
            status: StatusCode::UNAUTHORIZED,
            code: "UNAUTHENTICATED",
            message: message.into(),
        }
    }
    /// 403 `PERMISSION_DENIED`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            retry_after_s: None,
            status: StatusCode::FORBIDDEN,
            code: "PERMISSION_DENIED",
            message: message.into(),
        }
    }
    /// 404 `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            retry_after_s: None,
            status: StatusCode::NOT_FOUND,
            code: "NOT_FOUND",
            message: message.into(),
        }
    }
    /// 503 `UNAVAILABLE`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            retry_after_s: None,
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "UNAVAILABLE",
            message: message.into(),
        }
    }
    /// 500 `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            retry_after_s: None,
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "INTERNAL",
            message: message.into(),
        }
    }
    /// 422 `UNPROCESSABLE_ENTITY`: a control-plane body that is JSON but not the request's
    /// shape (Pinecone's control-plane spec).
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self {
            retry_after_s: None,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "UNPROCESSABLE_ENTITY",
            message: message.into(),
        }
    }
    /// 409 `ALREADY_EXISTS`.
    pub fn already_exists(message: impl Into<String>) -> Self {
        Self {
            retry_after_s: None,
            status: StatusCode::CONFLICT,
            code: "ALREADY_EXISTS",
            message: message.into(),
        }
    }
    /// The failure of an index delete: the state machine's one precondition there is
    /// deletion protection, which Pinecone answers 403 `FORBIDDEN` (the audit event keeps
    /// the rejection's `FAILED_PRECONDITION`); anything else as [`From<ControlError>`].
    pub fn from_index_delete(e: ControlError) -> Self {
        match e {
            ControlError::Rejected(crate::control::Rejection::Invalid(message)) => Self {
                retry_after_s: None,
                status: StatusCode::FORBIDDEN,
                code: "FORBIDDEN",
                message,
            },
            other => other.into(),
        }
    }
    /// 413 `OUT_OF_RANGE`: a request body over the route's limit of `limit_bytes`.
    pub fn too_large(limit_bytes: usize) -> Self {
        Self {
            retry_after_s: None,
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "OUT_OF_RANGE",
            message: format!(
                "request body exceeds the limit of {limit_bytes} bytes ({})",
                human_bytes(limit_bytes)
            ),
        }
    }
    /// 413 `OUT_OF_RANGE` with `message`: a gRPC request over its limit.
    pub fn out_of_range(message: impl Into<String>) -> Self {
        Self {
            retry_after_s: None,
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "OUT_OF_RANGE",
            message: message.into(),
        }
    }
    /// 415 `INVALID_ARGUMENT`: a body in a format the route does not take.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self {
            retry_after_s: None,
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "INVALID_ARGUMENT",
            message: message.into(),
        }
    }
    /// 501 `UNIMPLEMENTED`.
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self {
            retry_after_s: None,
            status: StatusCode::NOT_IMPLEMENTED,
            code: "UNIMPLEMENTED",
            message: message.into(),
        }
    }

    /// 408 `DEADLINE_EXCEEDED`: the client did not send its request body in time.
    pub fn body_timed_out() -> Self {
        Self {
            retry_after_s: None,
            status: StatusCode::REQUEST_TIMEOUT,
            code: "DEADLINE_EXCEEDED",
            message: format!(
                "the request body did not arrive within {} s",
                super::conn::CLIENT_BODY_READ_TIMEOUT_MS / 1000
            ),
        }
    }

    /// 429 `RESOURCE_EXHAUSTED`: the node holds its budget of request bodies being read.
    pub fn bodies_busy() -> Self {
        Self::busy(format!(
            "this node is reading {} MiB of request bodies already; retry in {BUSY_RETRY_AFTER_S} s",
            super::body::MAX_BUFFERED_BODY_BYTES / (1024 * 1024)
        ))
    }

    /// 429 `RESOURCE_EXHAUSTED` for momentary load (a full queue or budget), with
    /// `Retry-After: ` [`BUSY_RETRY_AFTER_S`].
    pub fn busy(message: impl Into<String>) -> Self {
        Self::retry_in(BUSY_RETRY_AFTER_S, message)
    }

    /// 429 `RESOURCE_EXHAUSTED` that a retry after `retry_after_s` seconds may pass, sent as
    /// `Retry-After` (a wait, not a quota).
    pub fn retry_in(retry_after_s: u64, message: impl Into<String>) -> Self {
        Self {
            retry_after_s: Some(retry_after_s),
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "RESOURCE_EXHAUSTED",
            message: message.into(),
        }
    }

    /// `wait` in whole seconds for `Retry-After`: rounded up, at least 1.
    pub fn retry_after_seconds(wait: std::time::Duration) -> u64 {
        wait.as_secs_f64().ceil().max(1.0) as u64
    }

    /// The gRPC code of this error: from its error code through [`CODES`], never from the
    /// HTTP status (several codes share a status, e.g. 400).
    pub fn grpc_code(&self) -> tonic::Code {
        CODES
            .iter()
            .find(|(code, _, _)| *code == self.code)
            .map(|(_, _, grpc)| *grpc)
            .unwrap_or(tonic::Code::Internal)
    }
}

/// `n` bytes in KiB or MiB when it is a whole number of them.
fn human_bytes(n: usize) -> String {
    const KIB: usize = 1024;
    match n {
        n if n >= KIB * KIB && n % (KIB * KIB) == 0 => format!("{} MiB", n / (KIB * KIB)),
        n if n >= KIB && n % KIB == 0 => format!("{} KiB", n / KIB),
        n => format!("{n} bytes"),
    }
}

/// Every error code the API answers with, its HTTP status and its gRPC code: the one table
/// both transports read. The first row of a status is the code given to a refusal that
/// carries only a status (axum's own rejections) and to a peer's gRPC status.
pub const CODES: &[(&str, StatusCode, tonic::Code)] = &[
    (
        "INVALID_ARGUMENT",
        StatusCode::BAD_REQUEST,
        tonic::Code::InvalidArgument,
    ),
    (
        "UNAUTHENTICATED",
        StatusCode::UNAUTHORIZED,
        tonic::Code::Unauthenticated,
    ),
    (
        "PERMISSION_DENIED",
        StatusCode::FORBIDDEN,
        tonic::Code::PermissionDenied,
    ),
    // Pinecone's code for a delete refused by deletion protection.
    (
        "FORBIDDEN",
        StatusCode::FORBIDDEN,
        tonic::Code::PermissionDenied,
    ),
    ("NOT_FOUND", StatusCode::NOT_FOUND, tonic::Code::NotFound),
    (
        "ALREADY_EXISTS",
        StatusCode::CONFLICT,
        tonic::Code::AlreadyExists,
    ),
    (
        "FAILED_PRECONDITION",
        StatusCode::PRECONDITION_FAILED,
        tonic::Code::FailedPrecondition,
    ),
    (
        "OUT_OF_RANGE",
        StatusCode::PAYLOAD_TOO_LARGE,
        tonic::Code::OutOfRange,
    ),
    (
        "INVALID_ARGUMENT",
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        tonic::Code::InvalidArgument,
    ),
    (
        "UNPROCESSABLE_ENTITY",
        StatusCode::UNPROCESSABLE_ENTITY,
        tonic::Code::InvalidArgument,
    ),
    (
        "RESOURCE_EXHAUSTED",
        StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::ResourceExhausted,
    ),
    (
        "INTERNAL",
        StatusCode::INTERNAL_SERVER_ERROR,
        tonic::Code::Internal,
    ),
    (
        "UNIMPLEMENTED",
        StatusCode::NOT_IMPLEMENTED,
        tonic::Code::Unimplemented,
    ),
    (
        "METHOD_NOT_ALLOWED",
        StatusCode::METHOD_NOT_ALLOWED,
        tonic::Code::Unimplemented,
    ),
    (
        "UNAVAILABLE",
        StatusCode::SERVICE_UNAVAILABLE,
        tonic::Code::Unavailable,
    ),
    (
        "DEADLINE_EXCEEDED",
        StatusCode::GATEWAY_TIMEOUT,
        tonic::Code::DeadlineExceeded,
    ),
    (
        "DEADLINE_EXCEEDED",
        StatusCode::REQUEST_TIMEOUT,
        tonic::Code::DeadlineExceeded,
    ),
];

/// The error code of a refusal that carries only an HTTP status ([`CODES`]' first row for
/// it; other 4xx are `INVALID_ARGUMENT`, other 5xx `INTERNAL`).
fn code_for_status(status: StatusCode) -> &'static str {
    CODES
        .iter()
        .find(|(_, s, _)| *s == status)
        .map(|(code, _, _)| *code)
        .unwrap_or(if status.is_client_error() {
            "INVALID_ARGUMENT"
        } else {
            "INTERNAL"
        })
}

/// Most bytes of a plain-text refusal read to become the message of its JSON body.
const MAX_PLAIN_ERROR_BYTES: usize = 4096;

/// The outermost layer of the REST routes: a refusal that is not already Pinecone's JSON
/// error body (axum's 405 and extractor rejections answer plain text or nothing) gets that
/// body, with its text as the message, so every error on every route has one shape. gRPC
/// responses pass untouched.
pub async fn pinecone_error_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let grpc = super::access::is_grpc(request.headers());
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if grpc || is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_PLAIN_ERROR_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string()
    } else {
        text
    };
    parts.headers.remove(axum::http::header::CONTENT_TYPE);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let rebuilt = ApiError {
        retry_after_s: None,
        status,
        code: code_for_status(status),
        message,
    }
    .into_response();
    let (rebuilt_parts, body) = rebuilt.into_parts();
    parts.headers.extend(rebuilt_parts.headers);
    Response::from_parts(parts, body)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": { "code": self.code, "message": self.message },
            "status": self.status.as_u16(),
        });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl ApiError {
    /// The error of Pinecone's error `code` (a domain error's), with the HTTP status of its
    /// first row in [`CODES`]; 500 for a code the table lacks (a test keeps every domain
    /// error's code in it).
    pub fn coded(code: &'static str, message: impl Into<String>) -> Self {
        let status = CODES
            .iter()
            .find(|(c, _, _)| *c == code)
            .map_or(StatusCode::INTERNAL_SERVER_ERROR, |(_, status, _)| *status);
        Self {
            retry_after_s: None,
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<ControlError> for ApiError {
    /// Rejections by their code (404, 409, 429 for a count limit — a quota, so no
    /// `Retry-After` —, 412), unavailability (saying when a write may still have been
    /// applied) 503, local faults 500.
    fn from(e: ControlError) -> Self {
        let code = e.error_code();
        let message = match e {
            ControlError::Rejected(rejection) => rejection.to_string(),
            ControlError::Unavailable {
                reason,
                outcome_unknown: true,
            } => format!("{reason}; the request may or may not have been applied"),
            ControlError::Unavailable { reason, .. } => reason,
            ControlError::Internal(m) => m,
        };
        Self::coded(code, message)
    }
}

impl From<DataError> for ApiError {
    fn from(e: DataError) -> Self {
        Self::coded(e.error_code(), e.to_string())
    }
}

impl From<crate::crypto::CryptoError> for ApiError {
    /// A key the request needs (a new project's or index's) could not be made or wrapped.
    fn from(e: crate::crypto::CryptoError) -> Self {
        Self::coded(e.error_code(), e.to_string())
    }
}

impl From<crate::backup::JobFailure> for ApiError {
    /// A backup that cannot be read or restored: its key's refusal, damaged files (412) or
    /// an unreachable store (503).
    fn from(e: crate::backup::JobFailure) -> Self {
        Self::coded(e.error_code(), e.to_string())
    }
}

impl From<crate::auth::AuthError> for ApiError {
    /// A credential that names no one (unknown, altered, revoked, expired): 401.
    fn from(e: crate::auth::AuthError) -> Self {
        Self::unauthenticated(e.to_string())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    /// Axum's JSON rejections in Pinecone's control-plane terms: a body that is JSON but not
    /// the request's shape is 422, one that is not JSON 400, a missing
    /// `Content-Type: application/json` 415 (bodies over the route's limit were refused
    /// before, by [`super::body::limit_body`]).
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as J;
        match e {
            J::JsonDataError(e) => Self::unprocessable(e.body_text()),
            J::MissingJsonContentType(e) => Self::unsupported_media_type(e.body_text()),
            J::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => Self {
                retry_after_s: None,
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "OUT_OF_RANGE",
                message: b.body_text(),
            },
            other => Self::invalid(other.body_text()),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        tonic::Status::new(e.grpc_code(), e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Rejection;

    #[test]
    fn only_refusals_for_load_ask_for_a_retry() {
        let busy = ApiError::busy("queue full").into_response();
        assert_eq!(busy.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(busy.headers()[axum::http::header::RETRY_AFTER], "1");
        let quota = ApiError::from(ControlError::Rejected(Rejection::LimitExceeded(
            "project already has 100 indexes".into(),
        )))
        .into_response();
        assert_eq!(quota.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(quota
            .headers()
            .get(axum::http::header::RETRY_AFTER)
            .is_none());
        let bodies = ApiError::bodies_busy().into_response();
        assert_eq!(bodies.headers()[axum::http::header::RETRY_AFTER], "1");
    }

    #[test]
    fn every_domain_error_has_its_code_in_the_table() {
        let control = [
            ControlError::Rejected(Rejection::NotFound {
                kind: "index".into(),
                id: "x".into(),
            }),
            ControlError::Rejected(Rejection::AlreadyExists("x".into())),
            ControlError::Rejected(Rejection::LimitExceeded("x".into())),
            ControlError::Rejected(Rejection::Invalid("x".into())),
            ControlError::Unavailable {
                reason: "x".into(),
                outcome_unknown: true,
            },
            ControlError::Internal("x".into()),
        ];
        let expected = [404, 409, 429, 412, 503, 500];
        for (e, status) in control.into_iter().zip(expected) {
            let code = e.error_code();
            assert!(CODES.iter().any(|(c, _, _)| *c == code), "{code}");
            assert_eq!(ApiError::from(e).status.as_u16(), status, "{code}");
        }
        let data = [
            DataError::invalid("x"),
            DataError::not_found("x"),
            DataError::AlreadyExists("x".into()),
            DataError::unavailable("x"),
            DataError::internal("x"),
        ];
        let expected = [
            (400, tonic::Code::InvalidArgument),
            (404, tonic::Code::NotFound),
            (409, tonic::Code::AlreadyExists),
            (503, tonic::Code::Unavailable),
            (500, tonic::Code::Internal),
        ];
        for (e, (status, grpc)) in data.into_iter().zip(expected) {
            let api = ApiError::from(e);
            assert_eq!(
                (api.status.as_u16(), api.grpc_code()),
                (status, grpc),
                "{}",
                api.code
            );
        }
        let outcome_unknown = ApiError::from(ControlError::Unavailable {
            reason: "no leader".into(),
            outcome_unknown: true,
        });
        assert!(outcome_unknown
            .message
            .contains("may or may not have been applied"));
    }

    #[test]
    fn every_code_maps_to_its_status_and_grpc_code() {
        for (code, http, grpc) in CODES {
            let e = ApiError {
                retry_after_s: None,
                status: *http,
                code,
                message: "m".into(),
            };
            assert_eq!(e.grpc_code(), *grpc, "{code}");
            assert_eq!(tonic::Status::from(e).code(), *grpc, "{code}");
        }
        assert_eq!(
            ApiError::unimplemented("no such method").grpc_code(),
            tonic::Code::Unimplemented
        );
        assert_eq!(
            ApiError::too_large(4 << 20).grpc_code(),
            tonic::Code::OutOfRange
        );
        assert!(ApiError::too_large(4 << 20)
            .message
            .contains("4194304 bytes (4 MiB)"));
        assert!(ApiError::too_large(64 << 10).message.contains("(64 KiB)"));
        assert_eq!(
            code_for_status(StatusCode::METHOD_NOT_ALLOWED),
            "METHOD_NOT_ALLOWED"
        );
        assert_eq!(code_for_status(StatusCode::IM_A_TEAPOT), "INVALID_ARGUMENT");
        assert_eq!(code_for_status(StatusCode::BAD_GATEWAY), "INTERNAL");
    }
}
