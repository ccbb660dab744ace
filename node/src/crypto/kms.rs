//! AWS KMS as a key provider: the cluster's root (`serve --root-key-kms ARN`) and, under
//! customer-managed encryption, a project's own key.
//!
//! Keys are wrapped with `Encrypt` (or made with `GenerateDataKey`) and unwrapped with
//! `Decrypt`, always naming the KMS key and an encryption context `{"conifer": <owner>}`
//! (the owner string of [`super::hierarchy`]), so a wrapped key only unwraps for its owner.
//! Region, credentials and endpoint come from the standard AWS chain — environment
//! (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL_KMS`, …), `~/.aws/config` and
//! `credentials`, web identity, ECS and EC2 instance roles — with the region taken from
//! the key's ARN and `--kms-endpoint` overriding the endpoint. KMS's answers become
//! [`Unavailability`]: access denied (and unknown or expired credentials), disabled (or
//! pending deletion, or gone), unreachable (no answer within [`KMS_OPERATION_TIMEOUT_MS`]
//! after [`KMS_ATTEMPTS`] attempts, or KMS's own dependency failures).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use aws_sdk_kms::Client;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use futures::future::BoxFuture;
use zeroize::Zeroizing;

use super::{CryptoError, KeyProvider, Secret, Unavailability, WrappedKey, KEY_BYTES};

/// Longest one KMS call may take, all attempts included.
pub const KMS_OPERATION_TIMEOUT_MS: u64 = 5_000;
/// Longest one attempt may take.
pub const KMS_ATTEMPT_TIMEOUT_MS: u64 = 2_000;
/// Attempts of one KMS call (the SDK's standard retry, with backoff, on throttling and
/// transient failures).
pub const KMS_ATTEMPTS: u32 = 3;
/// Provider name of a key wrapped by AWS KMS in [`WrappedKey::provider`].
pub const KMS_PROVIDER: &str = "aws-kms";
/// Name of the encryption context entry every wrap carries.
const CONTEXT_KEY: &str = "conifer";

/// The node's AWS configuration, loaded on first use (a node that uses no KMS key asks
/// nothing of the AWS chain), and a KMS client per region.
pub struct Kms {
    base: tokio::sync::OnceCell<aws_config::SdkConfig>,
    endpoint: Option<String>,
    clients: Mutex<HashMap<String, Client>>,
}

impl Kms {
    /// A KMS client factory; `endpoint` (`--kms-endpoint`) overrides where KMS is reached (a
    /// VPC endpoint, a test server).
    pub fn new(endpoint: Option<String>) -> Self {
        Self {
            base: tokio::sync::OnceCell::new(),
            endpoint,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// The standard AWS configuration chain, loaded once. The region is always the key's
    /// (set per client), so none is looked up here.
    async fn base(&self) -> &aws_config::SdkConfig {
        self.base
            .get_or_init(|| async {
                let http = aws_smithy_http_client::Builder::new()
                    .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                        aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                    ))
                    .build_https();
                aws_config::defaults(BehaviorVersion::latest())
                    .http_client(http)
                    .region(aws_sdk_kms::config::Region::from_static("us-east-1"))
                    .timeout_config(
                        TimeoutConfig::builder()
                            .operation_timeout(Duration::from_millis(KMS_OPERATION_TIMEOUT_MS))
                            .operation_attempt_timeout(Duration::from_millis(
                                KMS_ATTEMPT_TIMEOUT_MS,
                            ))
                            .build(),
                    )
                    .retry_config(RetryConfig::standard().with_max_attempts(KMS_ATTEMPTS))
                    .load()
                    .await
            })
            .await
    }

    async fn client(&self, region: &str) -> Client {
        if let Some(client) = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(region)
        {
            return client.clone();
        }
        let mut config = aws_sdk_kms::config::Builder::from(self.base().await)
            .region(aws_sdk_kms::config::Region::new(region.to_string()));
        if let Some(endpoint) = &self.endpoint {
            config = config.endpoint_url(endpoint);
        }
        let client = Client::from_conf(config.build());
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(region.to_string(), client.clone());
        client
    }

    /// The KMS key `arn` (`arn:aws:kms:<region>:<account>:key/<id>` or `…:alias/<name>`).
    pub fn key(self: &Arc<Self>, arn: &str) -> Result<KmsKey, CryptoError> {
        let region = key_region(arn).map_err(|reason| CryptoError::Malformed {
            path: arn.into(),
            reason,
        })?;
        Ok(KmsKey {
            kms: self.clone(),
            region,
            arn: arn.to_string(),
        })
    }
}

/// The region of a KMS key ARN, or why it is not one.
pub fn key_region(arn: &str) -> Result<String, String> {
    let parts: Vec<&str> = arn.split(':').collect();
    let is_key = |resource: &str| {
        resource
            .strip_prefix("key/")
            .or_else(|| resource.strip_prefix("alias/"))
            .is_some_and(|id| !id.is_empty())
    };
    match parts.as_slice() {
        ["arn", partition, "kms", region, account, resource]
            if !partition.is_empty()
                && !region.is_empty()
                && account.len() == 12
                && account.chars().all(|c| c.is_ascii_digit())
                && is_key(resource) =>
        {
            Ok(region.to_string())
        }
        _ => Err(format!(
            "'{arn}' is not a KMS key ARN (arn:aws:kms:<region>:<12-digit account>:key/<id> \
             or :alias/<name>)"
        )),
    }
}

/// One AWS KMS key.
pub struct KmsKey {
    kms: Arc<Kms>,
    region: String,
    arn: String,
}

impl KmsKey {
    /// The key's ARN.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// A new 256-bit key made by KMS (`GenerateDataKey`, `AES_256`) and its wrap.
    pub async fn generate(&self, context: &str) -> Result<(Secret, WrappedKey), CryptoError> {
        let out = self
            .kms
            .client(&self.region)
            .await
            .generate_data_key()
            .key_id(&self.arn)
            .key_spec(DataKeySpec::Aes256)
            .encryption_context(CONTEXT_KEY, context)
            .send()
            .await
            .map_err(|e| self.failure(e))?;
        let plain = out
            .plaintext
            .ok_or_else(|| CryptoError::Auth("GenerateDataKey returned no plaintext".into()))?;
        let blob = out
            .ciphertext_blob
            .ok_or_else(|| CryptoError::Auth("GenerateDataKey returned no ciphertext".into()))?;
        Ok((secret(plain.into_inner())?, self.wrapped(blob)))
    }

    fn wrapped(&self, blob: Blob) -> WrappedKey {
        WrappedKey {
            provider: KMS_PROVIDER.to_string(),
            kek_version: 0,
            ciphertext: B64.encode(blob.as_ref()),
            key_id: self.arn.clone(),
        }
    }

    /// A KMS failure in the hierarchy's terms.
    fn failure<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
        &self,
        e: SdkError<E, R>,
    ) -> CryptoError {
        let unavailable = |kind, reason: String| CryptoError::Unavailable {
            key: self.arn.clone(),
            kind,
            reason,
        };
        match &e {
            SdkError::ServiceError(service) => {
                let err = service.err();
                let code = err.code().unwrap_or("unknown");
                let reason = format!("{code}: {}", err.message().unwrap_or("no message"));
                match code {
                    "InvalidCiphertextException" | "IncorrectKeyException" => {
                        CryptoError::Auth(reason)
                    }
                    "DisabledException" | "KMSInvalidStateException" | "NotFoundException" => {
                        unavailable(Unavailability::Disabled, reason)
                    }
                    "KeyUnavailableException"
                    | "DependencyTimeoutException"
                    | "KMSInternalException"
                    | "ThrottlingException" => unavailable(Unavailability::Unreachable, reason),
                    // AccessDeniedException, and credentials KMS does not accept
                    // (UnrecognizedClientException, InvalidSignatureException,
                    // ExpiredTokenException, …).
                    _ => unavailable(Unavailability::Denied, reason),
                }
            }
            SdkError::ConstructionFailure(_) => unavailable(
                Unavailability::Denied,
                format!(
                    "the request could not be made (credentials?): {}",
                    chain(&e)
                ),
            ),
            _ => unavailable(Unavailability::Unreachable, chain(&e)),
        }
    }
}

/// An error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn secret(bytes: Vec<u8>) -> Result<Secret, CryptoError> {
    let bytes = Zeroizing::new(bytes);
    if bytes.len() != KEY_BYTES {
        return Err(CryptoError::Auth(format!(
            "KMS returned a key of {} bytes, not {KEY_BYTES}",
            bytes.len()
        )));
    }
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    key.copy_from_slice(&bytes);
    Ok(key)
}

impl KeyProvider for KmsKey {
    fn describe(&self) -> String {
        format!("AWS KMS key {}", self.arn)
    }

    fn wrap<'a>(
        &'a self,
        key: &'a Secret,
        context: &'a str,
    ) -> BoxFuture<'a, Result<WrappedKey, CryptoError>> {
        Box::pin(async move {
            let out = self
                .kms
                .client(&self.region)
                .await
                .encrypt()
                .key_id(&self.arn)
                .plaintext(Blob::new(key.as_ref().to_vec()))
                .encryption_context(CONTEXT_KEY, context)
                .send()
                .await
                .map_err(|e| self.failure(e))?;
            let blob = out
                .ciphertext_blob
                .ok_or_else(|| CryptoError::Auth("Encrypt returned no ciphertext".into()))?;
            Ok(self.wrapped(blob))
        })
    }

    fn unwrap<'a>(
        &'a self,
        wrapped: &'a WrappedKey,
        context: &'a str,
    ) -> BoxFuture<'a, Result<Secret, CryptoError>> {
        Box::pin(async move {
            if wrapped.provider != KMS_PROVIDER {
                return Err(CryptoError::Auth(format!(
                    "the key was wrapped by {}, not by AWS KMS",
                    wrapped.provider
                )));
            }
            let blob = B64
                .decode(&wrapped.ciphertext)
                .map_err(|e| CryptoError::Auth(e.to_string()))?;
            let out = self
                .kms
                .client(&self.region)
                .await
                .decrypt()
                .key_id(&self.arn)
                .ciphertext_blob(Blob::new(blob))
                .encryption_context(CONTEXT_KEY, context)
                .send()
                .await
                .map_err(|e| self.failure(e))?;
            let plain = out
                .plaintext
                .ok_or_else(|| CryptoError::Auth("Decrypt returned no plaintext".into()))?;
            secret(plain.into_inner())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_arn_gives_its_region_and_anything_else_is_refused() {
        assert_eq!(
            key_region("arn:aws:kms:eu-west-3:123456789012:key/1234abcd-12ab").unwrap(),
            "eu-west-3"
        );
        assert_eq!(
            key_region("arn:aws-us-gov:kms:us-gov-west-1:123456789012:alias/conifer").unwrap(),
            "us-gov-west-1"
        );
        for bad in [
            "1234abcd-12ab",
            "alias/conifer",
            "arn:aws:kms:eu-west-3:123:key/x",
            "arn:aws:s3:eu-west-3:123456789012:key/x",
            "arn:aws:kms::123456789012:key/x",
            "arn:aws:kms:eu-west-3:123456789012:key/",
            "arn:aws:kms:eu-west-3:123456789012:grant/x",
        ] {
            assert!(key_region(bad).is_err(), "{bad}");
        }
    }
}
