//! Files on disk, for tests that check what a local store or the spool
//! holds. Shared by the test binaries through `#[path]`.
#![allow(dead_code)] // each binary uses its own subset

/// Every regular file under `dir`, recursively.
pub fn walk_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk_files(&path));
        } else {
            found.push(path);
        }
    }
    found
}
