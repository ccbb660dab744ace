//! Passwords: argon2id hashes in PHC string format, computed by a fixed pool of worker
//! threads ([`PasswordWork`]) with a bounded wait queue, and a decoy verification for
//! unknown accounts so a sign-in takes as long whether or not the email exists.
//!
//! Each argon2 computation needs 19 MiB of working memory. Every worker allocates it once
//! and reuses it, so a burst of sign-ins costs at most [`PasswordWork::workers`] × 19 MiB
//! however large it is: a request that finds [`MAX_QUEUED_PASSWORD_HASHES`] already
//! waiting is refused ([`Busy`]) rather than queued.

use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::{Output, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};

/// Shortest password accepted, in bytes.
pub const MIN_PASSWORD_BYTES: usize = 12;
/// Longest password accepted, in bytes (argon2 costs the same for any length; this bounds
/// the request, not the hash).
pub const MAX_PASSWORD_BYTES: usize = 128;
/// Most password hashes waiting for a worker; one more is refused with [`Busy`].
pub const MAX_QUEUED_PASSWORD_HASHES: usize = 32;
/// Most argon2 memory a stored hash may ask for, in KiB (what [`Params::default`] uses):
/// a hash asking more is not verified.
pub const MAX_PASSWORD_HASH_MEMORY_KIB: u32 = Params::DEFAULT_M_COST;

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

/// Argon2's working memory, allocated once per worker.
struct Memory(Vec<Block>);

impl Memory {
    fn blocks(&mut self, params: &Params) -> &mut [Block] {
        if self.0.len() < params.block_count() {
            self.0.resize(params.block_count(), Block::default());
        }
        &mut self.0[..params.block_count()]
    }
}

/// The argon2id hash (default parameters: 19 MiB, 2 passes, 1 lane) of `password` with a
/// random salt, as a PHC string.
fn hash_with(password: &str, memory: &mut Memory) -> Result<String, String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    let params = Params::default();
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| format!("hashing the password failed: {e}"))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt_bytes,
            &mut out,
            memory.blocks(&params),
        )
        .map_err(|e| format!("hashing the password failed: {e}"))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: (&params)
            .try_into()
            .map_err(|e| format!("hashing the password failed: {e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).map_err(|e| format!("hashing the password failed: {e}"))?),
    };
    Ok(phc.to_string())
}

/// Whether `password` matches the PHC string `phc`: argon2 recomputed into `memory`, then
/// compared in constant time. A malformed hash, or one asking more than
/// [`MAX_PASSWORD_HASH_MEMORY_KIB`], matches nothing.
fn verify_with(password: &str, phc: &str, memory: &mut Memory) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(expected), Some(salt)) = (hash.hash, hash.salt) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    if params.m_cost() > MAX_PASSWORD_HASH_MEMORY_KIB {
        return false;
    }
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version, params.clone())
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt_bytes,
            &mut out,
            memory.blocks(&params),
        )
        .is_ok()
        && Output::new(&out).is_ok_and(|computed| computed == expected)
}

/// A hash of a random password, verified against when the account does not exist, so the
/// answer takes an argon2 verification either way.
fn decoy_phc(memory: &mut Memory) -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let random = uuid::Uuid::new_v4().to_string();
        hash_with(&random, memory).unwrap_or_default()
    })
}

/// The node refuses more password work for now: [`MAX_QUEUED_PASSWORD_HASHES`] wait already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

enum Work {
    /// Check a password against a stored hash, or against the decoy when `phc` is `None`.
    Verify {
        password: String,
        phc: Option<String>,
        reply: tokio::sync::oneshot::Sender<bool>,
    },
    /// Hash a new password.
    Hash {
        password: String,
        reply: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
}

/// The node's password hashing: a fixed pool of worker threads, one per core, each with
/// its argon2 memory, fed through a queue of at most [`MAX_QUEUED_PASSWORD_HASHES`].
pub struct PasswordWork {
    queue: SyncSender<Work>,
    workers: usize,
}

impl PasswordWork {
    /// Starts `workers` threads (at least one).
    pub fn start(workers: usize) -> Self {
        let workers = workers.max(1);
        let (queue, receiver) = mpsc::sync_channel(MAX_QUEUED_PASSWORD_HASHES);
        let receiver = Arc::new(Mutex::new(receiver));
        for i in 0..workers {
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-{i}"))
                .spawn(move || work(&receiver));
            if let Err(e) = spawned {
                tracing::error!("starting password worker {i} failed: {e}");
            }
        }
        Self { queue, workers }
    }

    /// One worker per core the process may use.
    pub fn per_core() -> Self {
        Self::start(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Threads computing hashes.
    pub fn workers(&self) -> usize {
        self.workers
    }

    fn submit(&self, work: Work) -> Result<(), Busy> {
        match self.queue.try_send(work) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }

    /// Whether `password` matches `phc` (or, for an unknown account, the decoy: always
    /// false, at the same cost).
    pub async fn verify(&self, password: String, phc: Option<String>) -> Result<bool, Busy> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(Work::Verify {
            password,
            phc,
            reply,
        })?;
        answer.await.map_err(|_| Busy)
    }

    /// The PHC string of a new hash of `password`; `Ok(Err(reason))` if argon2 failed.
    pub async fn hash(&self, password: String) -> Result<Result<String, String>, Busy> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(Work::Hash { password, reply })?;
        answer.await.map_err(|_| Busy)
    }
}

fn work(receiver: &Mutex<Receiver<Work>>) {
    let mut memory = Memory(Vec::new());
    loop {
        let next = receiver.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(work) = next else {
            return;
        };
        match work {
            Work::Verify {
                password,
                phc,
                reply,
            } => {
                let matches = match phc {
                    Some(phc) => verify_with(&password, &phc, &mut memory),
                    None => {
                        let decoy = decoy_phc(&mut memory);
                        verify_with(&password, decoy, &mut memory);
                        false
                    }
                };
                let _ = reply.send(matches);
            }
            Work::Hash { password, reply } => {
                let _ = reply.send(hash_with(&password, &mut memory));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::PasswordHasher;

    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only_and_hides_it() {
        let mut memory = Memory(Vec::new());
        let phc = hash_with("correct horse battery", &mut memory).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(!phc.contains("correct horse"));
        assert!(verify_with("correct horse battery", &phc, &mut memory));
        assert!(!verify_with("correct horse batterz", &phc, &mut memory));
        assert!(!verify_with(
            "correct horse battery",
            "not a phc string",
            &mut memory
        ));
        // Hashes stored by the argon2 crate's own API (earlier versions) still verify.
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let stored = Argon2::default()
            .hash_password(b"an older password", &salt)
            .unwrap()
            .to_string();
        assert!(verify_with("an older password", &stored, &mut memory));
        // The working memory was allocated once, at the default size.
        assert_eq!(memory.0.len(), Params::default().block_count());
    }

    #[test]
    fn a_hash_asking_more_memory_than_the_limit_is_not_verified() {
        let params = Params::new(MAX_PASSWORD_HASH_MEMORY_KIB * 2, 1, 1, None).unwrap();
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        let greedy = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"greedy password", &salt)
            .unwrap()
            .to_string();
        let mut memory = Memory(Vec::new());
        assert!(!verify_with("greedy password", &greedy, &mut memory));
        assert!(memory.0.is_empty());
    }

    #[tokio::test]
    async fn the_pool_answers_and_refuses_past_its_queue() {
        let pool = PasswordWork::start(1);
        let phc = pool
            .hash("a password of mine".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            pool.verify("a password of mine".into(), Some(phc.clone()))
                .await,
            Ok(true)
        );
        assert_eq!(
            pool.verify("not it at all".into(), Some(phc.clone())).await,
            Ok(false)
        );
        assert_eq!(
            pool.verify("a password of mine".into(), None).await,
            Ok(false)
        );
        // One worker busy, the queue full: the next request is refused at once.
        let mut waiting = Vec::new();
        let mut refused = 0;
        for _ in 0..MAX_QUEUED_PASSWORD_HASHES + 8 {
            let (reply, answer) = tokio::sync::oneshot::channel();
            match pool.submit(Work::Verify {
                password: "guess".into(),
                phc: Some(phc.clone()),
                reply,
            }) {
                Ok(()) => waiting.push(answer),
                Err(Busy) => refused += 1,
            }
        }
        assert!(refused >= 7, "refused {refused}");
        assert!(waiting.len() <= MAX_QUEUED_PASSWORD_HASHES + 1);
        for answer in waiting {
            assert_eq!(answer.await, Ok(false));
        }
    }

    #[test]
    fn password_length_limits_hold_at_the_edges() {
        assert!(check_new_password(&"a".repeat(MIN_PASSWORD_BYTES)).is_ok());
        assert!(check_new_password(&"a".repeat(MIN_PASSWORD_BYTES - 1)).is_err());
        assert!(check_new_password(&"a".repeat(MAX_PASSWORD_BYTES)).is_ok());
        assert!(check_new_password(&"a".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
    }
}
