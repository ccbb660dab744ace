//! Passwords: argon2id hashes in PHC string format, verified on a blocking thread, with a
//! decoy verification for unknown accounts so a sign-in takes as long whether or not the
//! email exists.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Shortest password accepted, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 12;
/// Longest password accepted, in bytes (argon2 costs the same for any length; this bounds
/// the request, not the hash).
pub const MAX_PASSWORD_BYTES: usize = 128;

/// Why a password is not acceptable as a new password.
pub fn check_new_password(password: &str) -> Result<(), String> {
    if password.len() < MIN_PASSWORD_BYTES {
        return Err(format!(
            "'password' is {} bytes; the minimum is {MIN_PASSWORD_BYTES}",
            password.len()
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "'password' is {} bytes; the limit is {MAX_PASSWORD_BYTES}",
            password.len()
        ));
    }
    Ok(())
}

/// The argon2id hash (default parameters: 19 MiB, 2 passes, 1 lane) of `password` with a
/// random salt, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing the password failed: {e}"))
}

/// Whether `password` matches the PHC string `phc` (constant time inside argon2's verifier).
pub fn verify_password(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

/// A hash of a random password, verified against when the account does not exist, so the
/// answer takes an argon2 verification either way.
pub fn decoy_phc() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let random = uuid::Uuid::new_v4().to_string();
        hash_password(&random).unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only_and_hides_it() {
        let phc = hash_password("correct horse battery").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(!phc.contains("correct horse"));
        assert!(verify_password("correct horse battery", &phc));
        assert!(!verify_password("correct horse batterz", &phc));
        assert!(!verify_password(
            "correct horse battery",
            "not a phc string"
        ));
        assert!(!verify_password("anything", decoy_phc()));
    }

    #[test]
    fn password_length_limits_hold_at_the_edges() {
        assert!(check_new_password(&"a".repeat(MIN_PASSWORD_BYTES)).is_ok());
        assert!(check_new_password(&"a".repeat(MIN_PASSWORD_BYTES - 1)).is_err());
        assert!(check_new_password(&"a".repeat(MAX_PASSWORD_BYTES)).is_ok());
        assert!(check_new_password(&"a".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }
}
