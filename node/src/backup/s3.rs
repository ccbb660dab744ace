//! The backup store in an S3-compatible bucket (`serve --backup-s3-bucket`): AWS S3, or
//! any service speaking its API (MinIO, Ceph RGW, moto in the tests) through
//! `--backup-s3-endpoint`, addressed path-style. Credentials come from the standard AWS
//! chain (environment, `~/.aws`, web identity, instance roles); the region from
//! `--backup-s3-region`, else the chain, else `us-east-1`.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{Delete, ObjectIdentifier};
use aws_sdk_s3::Client;

/// Longest one S3 call may take, all attempts included (a 4 MiB chunk on a slow link).
pub const S3_OPERATION_TIMEOUT_MS: u64 = 120_000;
/// Attempts of one S3 call (the SDK's standard retry, with backoff).
pub const S3_ATTEMPTS: u32 = 3;
/// Most keys one `DeleteObjects` call removes (S3's limit).
const DELETE_BATCH: usize = 1_000;
/// Most `DeleteObjects` rounds of one prefix (10 million objects) before giving up.
const MAX_DELETE_ROUNDS: usize = 10_000;

/// Where the store is: bucket, key prefix, region and endpoint.
#[derive(Clone, Debug)]
pub struct S3Location {
    /// The bucket.
    pub bucket: String,
    /// A prefix for every key (`""`, or ending in `/`).
    pub prefix: String,
    /// The region, if given.
    pub region: Option<String>,
    /// The endpoint, if not AWS's.
    pub endpoint: Option<String>,
}

/// A backup store in a bucket.
pub struct S3Store {
    location: S3Location,
    client: tokio::sync::OnceCell<Client>,
}

impl S3Store {
    /// The store at `location`; the AWS configuration is loaded on first use.
    pub fn new(mut location: S3Location) -> Self {
        if !location.prefix.is_empty() && !location.prefix.ends_with('/') {
            location.prefix.push('/');
        }
        Self {
            location,
            client: tokio::sync::OnceCell::new(),
        }
    }

    /// `s3://bucket/prefix` (and the endpoint when not AWS's).
    pub fn describe(&self) -> String {
        let l = &self.location;
        match &l.endpoint {
            Some(endpoint) => format!("s3://{}/{} at {endpoint}", l.bucket, l.prefix),
            None => format!("s3://{}/{}", l.bucket, l.prefix),
        }
    }

    async fn client(&self) -> &Client {
        self.client
            .get_or_init(|| async {
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    .http_client(http)
                    .timeout_config(
                        TimeoutConfig::builder()
                            .operation_timeout(Duration::from_millis(S3_OPERATION_TIMEOUT_MS))
                            .build(),
                    )
                    .retry_config(RetryConfig::standard().with_max_attempts(S3_ATTEMPTS));
                if let Some(region) = &self.location.region {
                    loader = loader.region(aws_sdk_s3::config::Region::new(region.clone()));
                }
                let base = loader.load().await;
                let mut config = aws_sdk_s3::config::Builder::from(&base).force_path_style(true);
                if base.region().is_none() {
                    config = config.region(aws_sdk_s3::config::Region::from_static("us-east-1"));
                }
                if let Some(endpoint) = &self.location.endpoint {
                    config = config.endpoint_url(endpoint);
                }
                Client::from_conf(config.build())
            })
            .await
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.location.prefix)
    }

    pub(super) async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<(), String> {
        self.client()
            .await
            .put_object()
            .bucket(&self.location.bucket)
            .key(self.key(key))
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map(|_| ())
            .map_err(describe)
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let answer = self
            .client()
            .await
            .get_object()
            .bucket(&self.location.bucket)
            .key(self.key(key))
            .send()
            .await;
        match answer {
            Ok(object) => object
                .body
                .collect()
                .await
                .map(|data| Some(data.into_bytes().to_vec()))
                .map_err(|e| e.to_string()),
            Err(SdkError::ServiceError(e)) if e.err().is_no_such_key() => Ok(None),
            Err(e) => Err(describe(e)),
        }
    }

    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<String>, String> {
        let full = self.key(prefix);
        let mut names = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client()
                .await
                .list_objects_v2()
                .bucket(&self.location.bucket)
                .prefix(&full)
                .delimiter("/")
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(describe)?;
            for folder in page.common_prefixes() {
                if let Some(p) = folder.prefix() {
                    names.push(p[full.len()..].trim_end_matches('/').to_string());
                }
            }
            for object in page.contents() {
                if let Some(k) = object.key() {
                    names.push(k[full.len()..].to_string());
                }
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        names.sort();
        Ok(names)
    }

    pub(super) async fn delete_prefix(&self, prefix: &str) -> Result<(), String> {
        let client = self.client().await;
        let full = self.key(prefix);
        for _ in 0..MAX_DELETE_ROUNDS {
            let page = client
                .list_objects_v2()
                .bucket(&self.location.bucket)
                .prefix(&full)
                .max_keys(DELETE_BATCH as i32)
                .send()
                .await
                .map_err(describe)?;
            let ids: Vec<ObjectIdentifier> = page
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .filter_map(|k| ObjectIdentifier::builder().key(k).build().ok())
                .collect();
            if ids.is_empty() {
                return Ok(());
            }
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(|e| e.to_string())?;
            let answer = client
                .delete_objects()
                .bucket(&self.location.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(describe)?;
            // An object S3 would not delete (object lock, a denied key) would be listed
            // again forever: stop at the first.
            if let Some(e) = answer.errors().first() {
                return Err(format!(
                    "{} not deleted: {}: {}",
                    e.key().unwrap_or("an object"),
                    e.code().unwrap_or("error"),
                    e.message().unwrap_or("no message")
                ));
            }
        }
        Err(format!(
            "{full} still holds objects after {MAX_DELETE_ROUNDS} rounds"
        ))
    }
}

/// An S3 failure in words: the service's code and message, or the transport's failure.
fn describe<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: SdkError<E, R>,
) -> String {
    match &e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or("no message")
            )
        }
        SdkError::TimeoutError(_) => "no answer in time".into(),
        SdkError::DispatchFailure(d) => format!("cannot reach the service: {d:?}"),
        other => other.to_string(),
    }
}
