//! Pagination tokens of the listings (`List`, `FetchByMetadata`, `ListNamespaces`): a
//! token carries digests of the listing's kind, index, namespace and prefix or filter, so
//! **a token only continues the listing that issued it**.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use conifer_proto::pinecone as pb;

use super::router::Target;
use super::DataError;

/// What a pagination token pages; a token is only good for the listing that issued it.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Listing {
    /// `List`: record ids of a namespace, by prefix.
    Ids = 1,
    /// `FetchByMetadata`: records of a namespace matching a filter.
    ByMetadata = 2,
    /// `ListNamespaces`: namespaces by prefix.
    Namespaces = 3,
}

/// Format byte of pagination tokens.
const TOKEN_FORMAT: u8 = 1;
/// Bytes of each parameter digest in a token.
const TOKEN_DIGEST_BYTES: usize = 8;

/// The parameters a listing's pages must share: the index and namespace (`where_`: project,
/// index and namespace, the namespace empty for `ListNamespaces`) and the prefix or the
/// filter's canonical JSON. Tokens are not secret: one only positions a listing the caller
/// may read anyway.
pub(super) struct PageScope<'a> {
    pub(super) listing: Listing,
    pub(super) where_: String,
    /// Name of the second parameter as the client sends it, for errors.
    pub(super) narrowing_name: &'static str,
    pub(super) narrowing: &'a str,
}

/// Where a listing pages: the index (by project and name) and the namespace.
pub(super) fn page_place(target: &Target, namespace: &str) -> String {
    format!(
        "{}\0{}\0{namespace}",
        target.index.project_id, target.index.name
    )
}

pub(super) fn digest(text: &str) -> [u8; TOKEN_DIGEST_BYTES] {
    use sha2::{Digest, Sha256};
    let full = Sha256::digest(text.as_bytes());
    let mut out = [0u8; TOKEN_DIGEST_BYTES];
    out.copy_from_slice(&full[..TOKEN_DIGEST_BYTES]);
    out
}

impl PageScope<'_> {
    /// The token continuing this listing after `last`: format, listing, digests of the
    /// namespace and of the prefix or filter, then `last`, base64url.
    pub(super) fn token(&self, last: &str) -> String {
        let mut bytes = vec![TOKEN_FORMAT, self.listing as u8];
        bytes.extend_from_slice(&digest(&self.where_));
        bytes.extend_from_slice(&digest(self.narrowing));
        bytes.extend_from_slice(last.as_bytes());
        B64.encode(bytes)
    }

    /// The key to continue after, from a token this listing issued; a token of another
    /// listing, namespace, prefix or filter is refused naming the parameter that differs.
    pub(super) fn parse(&self, token: Option<&str>) -> Result<Option<String>, DataError> {
        let token = match token {
            None | Some("") => return Ok(None),
            Some(t) => t,
        };
        let foreign = || DataError::invalid("pagination_token is not a valid pagination token");
        let bytes = B64.decode(token).map_err(|_| foreign())?;
        let header = 2 + 2 * TOKEN_DIGEST_BYTES;
        if bytes.len() < header || bytes[0] != TOKEN_FORMAT {
            return Err(foreign());
        }
        if bytes[1] != self.listing as u8 {
            return Err(DataError::invalid(
                "pagination_token was issued by another kind of listing",
            ));
        }
        let (ns, narrowing) = bytes[2..header].split_at(TOKEN_DIGEST_BYTES);
        if ns != digest(&self.where_) {
            return Err(DataError::invalid(
                "pagination_token was issued for another index or namespace: send the namespace of the \
                 first page with every page",
            ));
        }
        if narrowing != digest(self.narrowing) {
            return Err(DataError::invalid(format!(
                "pagination_token was issued for another {0}: send the {0} of the first page \
                 with every page",
                self.narrowing_name
            )));
        }
        String::from_utf8(bytes[header..].to_vec())
            .map(Some)
            .map_err(|_| foreign())
    }

    /// Cuts `items` (fetched with one extra) to `limit`; when there were more, the token of
    /// the last kept item continues the listing.
    pub(super) fn paginate<T>(
        &self,
        items: &mut Vec<T>,
        limit: usize,
        key: impl Fn(&T) -> &str,
    ) -> Option<pb::Pagination> {
        if items.len() <= limit {
            return None;
        }
        items.truncate(limit);
        items.last().map(|last| pb::Pagination {
            next: self.token(key(last)),
        })
    }
}
