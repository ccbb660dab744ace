//! Sealing throughput of Conifer's at-rest cipher (`DataKey`, ring's AES-256-GCM) against
//! the `aes-gcm` crate it replaced, in one run on one machine (not a test; run through
//! `scripts/bench/run.sh seal`). Sizes: one 768-dimension record with metadata (3,200 B) and
//! a Raft entry of 100 of them (330 KB). Prints MB/s of each and the ratio.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::Aes256Gcm;
use conifer_node::crypto::DataKey;
use conifer_raft::cipher::ValueCipher;
use rand::RngCore;

/// How long each measurement runs.
const RUN: Duration = Duration::from_secs(2);

/// MB/s of `op` on `bytes`-byte values over about [`RUN`].
fn throughput(bytes: usize, mut op: impl FnMut() -> usize) -> f64 {
    let started = Instant::now();
    let mut done = 0usize;
    while started.elapsed() < RUN {
        for _ in 0..16 {
            done += black_box(op());
        }
    }
    assert!(done >= bytes, "at least one value processed");
    done as f64 / started.elapsed().as_secs_f64() / 1e6
}

fn main() {
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let ours = DataKey::from_bytes(secret);
    let baseline = Aes256Gcm::new(aes_gcm::Key::<Aes256Gcm>::from_slice(&secret));
    let aad = b"conifer/bench/records/ns/id";
    println!(
        "| value | operation | aes-gcm 0.10 (MB/s) | ring, Conifer's DataKey (MB/s) | ratio |"
    );
    println!("|---|---|---|---|---|");
    for size in [3_200usize, 330_000] {
        let plaintext = vec![0x5au8; size];
        // The baseline does what DataKey did with it: a random nonce per value, then
        // format byte + nonce + ciphertext + tag in one buffer.
        let seal_baseline = || {
            let mut nonce = [0u8; 12];
            rand::rngs::OsRng.fill_bytes(&mut nonce);
            let ciphertext = baseline
                .encrypt(
                    &nonce.into(),
                    Payload {
                        msg: &plaintext,
                        aad,
                    },
                )
                .unwrap();
            let mut out = Vec::with_capacity(1 + 12 + ciphertext.len());
            out.push(1);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&ciphertext);
            out.len() - 29
        };
        let a = throughput(size, seal_baseline);
        let b = throughput(size, || ours.seal(aad, &plaintext).len() - 29);
        println!("| {size} B | seal | {a:.0} | {b:.0} | {:.2} |", b / a);

        let sealed = ours.seal(aad, &plaintext);
        let open_baseline = || {
            let (nonce, body) = sealed[1..].split_at(12);
            let payload = Payload { msg: body, aad };
            baseline
                .decrypt(aes_gcm::Nonce::from_slice(nonce), payload)
                .unwrap()
                .len()
        };
        let a = throughput(size, open_baseline);
        let b = throughput(size, || ours.open(aad, &sealed).unwrap().len());
        println!("| {size} B | open | {a:.0} | {b:.0} | {:.2} |", b / a);
    }
}
