//! Backups, collections and restores: the backup store (`store`, `s3`), the sealed and
//! checked files of a backup (`archive`), and the jobs that write and restore them
//! (`runner`). What a backup is, and who runs its job, lives in the control plane
//! (`control::backups`); the operator's guide is `docs/backups.md`.

pub mod archive;
pub mod runner;
pub mod s3;
pub mod store;

pub use runner::{Backups, JobFailure};
pub use store::{BackupStore, LocalDir};
