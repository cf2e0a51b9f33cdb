//! OAuth credential sets and permission levels.
//!
//! A credential set is what 23 calls "privileged credentials": a consumer
//! key/secret and an access token/secret, with the permission level they grant.
//! Sets come from the configuration file; when none are configured, the
//! embedded default generates one `write` set on first start and keeps it in
//! the data directory (see [`load_or_generate`]).

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::domain::Permission;
use crate::domain::{ALPHANUMERIC, random_string};

/// A secret string whose `Debug` output never shows the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// One configured credential set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub consumer_key: String,
    pub consumer_secret: Secret,
    pub access_token: String,
    pub access_token_secret: Secret,
    pub permission: Permission,
}

impl Credential {
    /// A fresh `write` credential set with random keys and secrets.
    pub fn generate() -> Self {
        Credential {
            consumer_key: format!("ck-{}", random_string(ALPHANUMERIC, 20)),
            consumer_secret: Secret::new(random_string(ALPHANUMERIC, 40)),
            access_token: format!("at-{}", random_string(ALPHANUMERIC, 20)),
            access_token_secret: Secret::new(random_string(ALPHANUMERIC, 40)),
            permission: Permission::Write,
        }
    }
}

/// The credential sets in force, indexed by (consumer key, access token).
#[derive(Debug, Default)]
pub struct Credentials {
    by_keys: HashMap<(String, String), Credential>,
}

impl Credentials {
    pub fn new(list: impl IntoIterator<Item = Credential>) -> Self {
        let by_keys =
            list.into_iter().map(|c| ((c.consumer_key.clone(), c.access_token.clone()), c)).collect();
        Credentials { by_keys }
    }

    /// The set whose consumer key and access token both match.
    pub fn find(&self, consumer_key: &str, access_token: &str) -> Option<&Credential> {
        self.by_keys.get(&(consumer_key.to_owned(), access_token.to_owned()))
    }

    pub fn is_empty(&self) -> bool {
        self.by_keys.is_empty()
    }
}

/// The file, inside the data directory, that keeps generated credentials.
pub fn generated_credentials_path(data_dir: &Path) -> PathBuf {
    data_dir.join("credentials.toml")
}

#[derive(Serialize, Deserialize)]
struct CredentialsFile {
    credentials: Vec<Credential>,
}

/// Whether [`load_or_generate`] found the set on disk or had to create it.
#[derive(Debug, PartialEq, Eq)]
pub enum Provenance {
    LoadedFromDataDir,
    GeneratedNow,
}

/// The generated credential set of the embedded default: read from the data
/// directory, or created there (mode 0600) on first start.
pub fn load_or_generate(data_dir: &Path) -> std::io::Result<(Credential, Provenance)> {
    let path = generated_credentials_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let file: CredentialsFile = toml::from_str(&text).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
            })?;
            let credential = file.credentials.into_iter().next().ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: no [[credentials]] entry", path.display()),
                )
            })?;
            Ok((credential, Provenance::LoadedFromDataDir))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let credential = Credential::generate();
            let text = toml::to_string(&CredentialsFile { credentials: vec![credential.clone()] })
                .map_err(std::io::Error::other)?;
            write_private_file(&path, text.as_bytes())?;
            Ok((credential, Provenance::GeneratedNow))
        }
        Err(e) => Err(e),
    }
}

/// Writes a file readable by its owner only, atomically (temp file + rename),
/// so a crash never leaves half a credentials file behind.
fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(b"# Generated on first start: the embedded default's credential set.\n")?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_levels_are_ordered_as_23_documents_them() {
        use Permission::*;
        let ascending = [None, Anonymous, Read, Write, Admin, Super];
        assert!(ascending.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn debug_output_of_a_credential_hides_its_secrets() {
        let c = Credential::generate();
        let shown = format!("{c:?}");
        assert!(!shown.contains(c.consumer_secret.expose()));
        assert!(!shown.contains(c.access_token_secret.expose()));
    }

    #[test]
    fn generated_credentials_are_kept_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let (first, p1) = load_or_generate(dir.path()).unwrap();
        let (again, p2) = load_or_generate(dir.path()).unwrap();
        assert_eq!((p1, p2), (Provenance::GeneratedNow, Provenance::LoadedFromDataDir));
        assert_eq!(first, again);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                std::fs::metadata(generated_credentials_path(dir.path())).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
