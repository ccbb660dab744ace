//! Compiles node/cpp/search.cpp (the search path of the vector engine, see its header) and
//! node/cpp/kernels.cpp (its distance kernels) against the headers of the FAISS that
//! `faiss-sys` bundles and links, so the two agree.
//!
//! The FAISS sources are found in the `faiss-sys` package of the lockfile, in Cargo's
//! registry (`$CARGO_HOME/registry/src/*/faiss-sys-<version>/faiss`), or where
//! `CONIFER_FAISS_SRC` points (a vendored or offline build).

use std::path::{Path, PathBuf};

fn main() {
    for file in ["search.cpp", "kernels.cpp", "kernels.h", "distance.inc"] {
        println!("cargo:rerun-if-changed=cpp/{file}");
    }
    println!("cargo:rerun-if-env-changed=CONIFER_FAISS_SRC");
    let faiss = faiss_sources();
    let build = || {
        let mut build = cc::Build::new();
        build
            .cpp(true)
            .std("c++17")
            // FAISS's headers as system headers: their own warnings are not ours.
            .flag("-isystem")
            .flag(faiss.to_str().expect("a UTF-8 path"))
            // Optimised in every profile: this is the query's inner loop.
            .opt_level(3)
            .debug(false)
            .warnings(true);
        build
    };
    // The search instantiates FAISS templates (result handlers with OpenMP loops), whose
    // copies the linker may keep for FAISS's own code too: FAISS's settings, OpenMP on.
    build()
        .file("cpp/search.cpp")
        .flag("-fopenmp")
        .compile("conifer_search");
    // After the search, which calls into it (static libraries link in order).
    // The distance kernels alone get reassociating floating-point flags, so their sums
    // vectorize as FAISS's own kernels do (FAISS_PRAGMA_IMPRECISE_FUNCTION_BEGIN); no NaN
    // or infinity reaches them (records and queries are checked finite). They instantiate
    // no FAISS template, so the flags reach nothing of FAISS's.
    build()
        .file("cpp/kernels.cpp")
        .flag("-fassociative-math")
        .flag("-fno-signed-zeros")
        .flag("-fno-trapping-math")
        .flag("-funroll-loops")
        .compile("conifer_kernels");
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
