//! Compiles node/cpp/search.cpp, the search path of the vector engine (see its header),
//! against the headers of the FAISS that `faiss-sys` bundles and links, so the two agree.
//!
//! The FAISS sources are found in the `faiss-sys` package of the lockfile, in Cargo's
//! registry (`$CARGO_HOME/registry/src/*/faiss-sys-<version>/faiss`), or where
//! `CONIFER_FAISS_SRC` points (a vendored or offline build).

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=cpp/search.cpp");
    println!("cargo:rerun-if-changed=cpp/distance.inc");
    println!("cargo:rerun-if-env-changed=CONIFER_FAISS_SRC");
    let faiss = faiss_sources();
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("cpp/search.cpp")
        // FAISS's headers as system headers: their own warnings are not ours.
        .flag("-isystem")
        .flag(faiss.to_str().expect("a UTF-8 path"))
        // Optimised in every profile: this is the query's inner loop.
        .opt_level(3)
        .debug(false)
        // Let the sums of the distance loops be reassociated into SIMD lanes, as FAISS's
        // own kernels are (FAISS_PRAGMA_IMPRECISE_FUNCTION_BEGIN); no NaN or infinity
        // reaches them (records and queries are checked finite).
        .flag("-fassociative-math")
        .flag("-fno-signed-zeros")
        .flag("-fno-trapping-math")
        .flag("-funroll-loops")
        .warnings(true)
        .compile("conifer_search");
}

fn faiss_sources() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONIFER_FAISS_SRC") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("faiss/Index.h").is_file(),
            "CONIFER_FAISS_SRC={} holds no faiss/Index.h",
            dir.display()
        );
        return dir;
    }
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let lock = manifest.join("../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let version = locked_version(&lock, "faiss-sys")
        .unwrap_or_else(|| panic!("no faiss-sys package in {}", lock.display()));
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let registry = home.join("registry/src");
    let found = std::fs::read_dir(&registry)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path().join(format!("faiss-sys-{version}/faiss")))
        .find(|dir| dir.join("faiss/Index.h").is_file());
    found.unwrap_or_else(|| {
        panic!(
            "the FAISS sources of faiss-sys {version} are not under {} \
             (set CONIFER_FAISS_SRC to the faiss-sys package's `faiss` folder)",
            registry.display()
        )
    })
}

/// The version of `package` in a Cargo.lock.
fn locked_version(lock: &Path, package: &str) -> Option<String> {
    let text = std::fs::read_to_string(lock).ok()?;
    let wanted = format!("name = \"{package}\"");
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let version = lines.next()?.trim();
            return Some(
                version
                    .strip_prefix("version = \"")?
                    .strip_suffix('"')?
                    .to_string(),
            );
        }
    }
    None
}
