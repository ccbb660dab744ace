//! The one place where failures become HTTP statuses with Pinecone's error body
//! `{"error":{"code","message"},"status"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::control::{ControlError, Rejection};

/// An API failure: status, Pinecone error code and a message naming the field and the limit.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Pinecone's error code (`INVALID_ARGUMENT`, `NOT_FOUND`, …).
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl ApiError {
    /// 400 `INVALID_ARGUMENT`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "INVALID_ARGUMENT",
            message: message.into(),
        }
    }
    /// 401 `UNAUTHENTICATED`.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: "UNAUTHENTICATED",
            message: message.into(),
        }
    }
    /// 403 `PERMISSION_DENIED`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            code: "PERMISSION_DENIED",
            message: message.into(),
        }
    }
    /// 404 `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            code: "NOT_FOUND",
            message: message.into(),
        }
    }
    /// 503 `UNAVAILABLE`.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "UNAVAILABLE",
            message: message.into(),
        }
    }
    /// 500 `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "INTERNAL",
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": { "code": self.code, "message": self.message },
            "status": self.status.as_u16(),
        });
        (self.status, Json(body)).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Rejected(Rejection::NotFound { kind, id }) => {
                Self::not_found(format!("{kind} '{id}' not found"))
            }
            ControlError::Rejected(Rejection::AlreadyExists(m)) => Self {
                status: StatusCode::CONFLICT,
                code: "ALREADY_EXISTS",
                message: m,
            },
            ControlError::Rejected(Rejection::LimitExceeded(m)) => Self {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "RESOURCE_EXHAUSTED",
                message: m,
            },
            ControlError::Rejected(Rejection::Invalid(m)) => Self {
                status: StatusCode::PRECONDITION_FAILED,
                code: "FAILED_PRECONDITION",
                message: m,
            },
            ControlError::Unavailable {
                reason,
                outcome_unknown,
            } => Self::unavailable(if outcome_unknown {
                format!("{reason}; the request may or may not have been applied")
            } else {
                reason
            }),
            ControlError::Internal(m) => Self::internal(m),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(e: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as J;
        match e {
            J::BytesRejection(b) if b.status() == StatusCode::PAYLOAD_TOO_LARGE => Self {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "INVALID_ARGUMENT",
                message: format!("request body exceeds {} bytes", super::MAX_ADMIN_BODY_BYTES),
            },
            other => Self::invalid(format!("malformed request body: {}", other.body_text())),
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let code = match e.status {
            StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => tonic::Code::InvalidArgument,
            StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
            StatusCode::FORBIDDEN => tonic::Code::PermissionDenied,
            StatusCode::NOT_FOUND => tonic::Code::NotFound,
            StatusCode::CONFLICT => tonic::Code::AlreadyExists,
            StatusCode::PRECONDITION_FAILED => tonic::Code::FailedPrecondition,
            StatusCode::TOO_MANY_REQUESTS => tonic::Code::ResourceExhausted,
            StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
            _ => tonic::Code::Internal,
        };
        tonic::Status::new(code, e.message)
    }
}

impl ApiError {
    /// The error a peer reported over the cluster port, as the client should see it.
    pub fn from_status(status: &tonic::Status) -> Self {
        let (http, code) = match status.code() {
            tonic::Code::InvalidArgument => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
            tonic::Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            tonic::Code::PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            tonic::Code::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            tonic::Code::AlreadyExists => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
            tonic::Code::FailedPrecondition => {
                (StatusCode::PRECONDITION_FAILED, "FAILED_PRECONDITION")
            }
            tonic::Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE")
            }
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        };
        Self {
            status: http,
            code,
            message: status.message().to_string(),
        }
    }
}
