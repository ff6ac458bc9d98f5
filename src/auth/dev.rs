//! Dev mode: a local RSA key pair so the service runs without an auth service, and
//! `user-api token` can mint tokens it accepts.
//!
//! The private key is the single source of truth; the public key is derived from it on
//! every load and `public.pem` is rewritten when missing or stale, so the two files can
//! never disagree. Creation is race-safe between processes (`serve` and `token` started
//! together): the key is written to a temporary file and hard-linked into place, and
//! whoever loses the race adopts the winner's key.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use super::keys::{generate_rsa_keypair, public_pem_from_private, sign_rs256};
use super::{AuthSetupError, Role};
use crate::config::JwtConfig;
use crate::domain::UserId;

/// The `kid` dev-mode tokens carry.
pub const DEV_KID: &str = "dev";
/// File name of the dev private key (PKCS#8 PEM, mode 0600).
pub const PRIVATE_KEY_FILE: &str = "private.pem";
/// File name of the dev public key (SPKI PEM), usable as another service's `JWT_PUBLIC_KEY_FILE`.
pub const PUBLIC_KEY_FILE: &str = "public.pem";

/// The dev key pair as loaded from (or just written to) the key directory.
#[derive(Clone)]
pub struct DevKeys {
    /// Path of the private key file.
    pub private_key_path: PathBuf,
    /// Path of the public key file.
    pub public_key_path: PathBuf,
    /// The public key, SPKI PEM.
    pub public_pem: String,
    /// True when this call generated the pair (first run).
    pub generated: bool,
    private_pem: String,
}

impl DevKeys {
    /// The private key, PKCS#8 PEM (kept out of `Debug`).
    pub fn private_pem(&self) -> &str {
        &self.private_pem
    }
}

impl fmt::Debug for DevKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevKeys")
            .field("private_key_path", &self.private_key_path)
            .field("public_key_path", &self.public_key_path)
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

fn dev_err(path: &Path, reason: impl fmt::Display) -> AuthSetupError {
    AuthSetupError::DevKeys {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Loads the dev key pair from `dir`, generating an RSA-2048 pair there on first use.
pub fn ensure_keys(dir: &Path) -> Result<DevKeys, AuthSetupError> {
    create_private_dir(dir).map_err(|e| dev_err(dir, format!("cannot create directory: {e}")))?;
    let private_key_path = dir.join(PRIVATE_KEY_FILE);
    let public_key_path = dir.join(PUBLIC_KEY_FILE);

    let (private_pem, generated) = match fs::read_to_string(&private_key_path) {
        Ok(pem) => (pem, false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_private_key(&private_key_path)?,
        Err(e) => return Err(dev_err(&private_key_path, format!("cannot read: {e}"))),
    };
    let public_pem = public_pem_from_private(private_pem.as_bytes()).map_err(|e| {
        dev_err(
            &private_key_path,
            format!("{e}; delete the file to have a new pair generated"),
        )
    })?;
    warn_if_readable_by_others(&private_key_path);

    let public_current = fs::read_to_string(&public_key_path).is_ok_and(|s| s == public_pem);
    if !public_current {
        // Only a convenience copy: the verifier uses the key derived above.
        if let Err(e) = replace_file(&public_key_path, public_pem.as_bytes(), 0o644) {
            tracing::warn!(path = %public_key_path.display(), error = %e, "could not write the dev public key file");
        }
    }
    if generated {
        tracing::warn!(
            dir = %dir.display(),
            "generated a new DEV MODE key pair; tokens signed with it are accepted by this \
             service in dev mode (`user-api token --sub <uuid> --role user|admin`)"
        );
    }
    Ok(DevKeys {
        private_key_path,
        public_key_path,
        public_pem,
        generated,
        private_pem,
    })
}

/// Signs an access token with the dev key in `dir` (generating the pair if needed).
pub fn sign_token(
    dir: &Path,
    sub: UserId,
    role: Role,
    ttl: Duration,
) -> Result<String, AuthSetupError> {
    sign_with(dir, sub, role, ttl, None, None)
}

/// Like [`sign_token`], with the key directory, issuer and audience the service is
/// configured with, so the token passes its `JWT_ISS`/`JWT_AUD` checks.
pub fn sign_token_for(
    cfg: &JwtConfig,
    sub: UserId,
    role: Role,
    ttl: Duration,
) -> Result<String, AuthSetupError> {
    let iss = cfg.iss.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let aud = cfg.aud.as_deref().map(str::trim).filter(|s| !s.is_empty());
    sign_with(&cfg.dev_keys_dir, sub, role, ttl, iss, aud)
}

fn sign_with(
    dir: &Path,
    sub: UserId,
    role: Role,
    ttl: Duration,
    iss: Option<&str>,
    aud: Option<&str>,
) -> Result<String, AuthSetupError> {
    let keys = ensure_keys(dir)?;
    let now = Utc::now().timestamp();
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    let mut claims = json!({
        "sub": sub.to_string(),
        "role": role.as_str(),
        "iat": now,
        "exp": now.saturating_add(ttl_secs),
        "token_type": "access",
    });
    if let Some(iss) = iss {
        claims["iss"] = json!(iss);
    }
    if let Some(aud) = aud {
        claims["aud"] = json!(aud);
    }
    sign_rs256(keys.private_pem.as_bytes(), Some(DEV_KID), &claims)
}

/// Writes a fresh private key, or adopts the one a concurrent process wrote first.
fn create_private_key(path: &Path) -> Result<(String, bool), AuthSetupError> {
    let (private_pem, _) = generate_rsa_keypair()?;
    let tmp = temp_sibling(path);
    write_new_file(&tmp, private_pem.as_bytes(), 0o600)
        .map_err(|e| dev_err(&tmp, format!("cannot write: {e}")))?;
    let linked = fs::hard_link(&tmp, path);
    // Best effort: a leftover temp file is harmless.
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok((private_pem, true)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => adopt_existing(path),
        // Filesystems without hard links: create in place, still refusing to overwrite.
        Err(_) => match write_new_file(path, private_pem.as_bytes(), 0o600) {
            Ok(()) => Ok((private_pem, true)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => adopt_existing(path),
            Err(e) => Err(dev_err(path, format!("cannot write: {e}"))),
        },
    }
}

fn adopt_existing(path: &Path) -> Result<(String, bool), AuthSetupError> {
    fs::read_to_string(path)
        .map(|pem| (pem, false))
        .map_err(|e| dev_err(path, format!("cannot read: {e}")))
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Unique per process and per call, so concurrent writers never share a temp file.
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = Utc::now().timestamp_subsec_nanos();
    path.with_file_name(format!(".{name}.{}.{n}.{nanos}.tmp", std::process::id()))
}

/// Writes `path` atomically (temp file, then rename over it).
fn replace_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = temp_sibling(path);
    write_new_file(&tmp, contents, mode)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %path.display(),
                "dev private key is readable by other users; `chmod 600` it"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}
