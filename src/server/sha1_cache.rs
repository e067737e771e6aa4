//! SHA1 of every served object, computed once and remembered in an index
//! file outside the bucket directories (JSON Lines, append-only, later lines
//! win), keyed by `bucket/name` and the file's `FileVersion`. A changed file
//! is hashed again. A digest is computed from, and remembered under the
//! version of, the descriptor the caller opened: never from a second open by
//! name, which may find another file.
//!
//! Hashing is lazy (first listing page or download that needs the digest) and
//! also done by a background indexer started with the server, so first calls
//! on a big tree rarely wait. Two hashers of the same file are serialised by a
//! striped lock, so each file is read once.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};

use super::config::{HASH_READ_BLOCK_BYTES, SHA1_LOCK_STRIPES};
use super::encoding::{hex, unhex};
use super::store::FileVersion;

/// One line of the index. Lines of older servers lack the inode, device and
/// ctime: they do not parse, so those files are hashed again.
#[derive(Serialize, Deserialize)]
struct IndexLine {
    path: String,
    size: u64,
    mtime_ns: u128,
    device: u64,
    inode: u64,
    ctime_ns: u128,
    sha1: String,
}

#[derive(Clone, Copy)]
struct CachedDigest {
    version: FileVersion,
    sha1: [u8; 20],
}

pub struct Sha1Cache {
    digests: Mutex<HashMap<String, CachedDigest>>,
    index_file: Mutex<Option<File>>,
    pub index_path: Option<PathBuf>,
    stripes: Vec<Mutex<()>>,
}

impl Sha1Cache {
    /// Loads `dir/sha1-index.jsonl` and opens it for appending. When the
    /// directory cannot be written, the cache lives in memory only (warned).
    pub fn open(dir: Option<&Path>) -> Sha1Cache {
        let mut digests = HashMap::new();
        let mut index_file = None;
        let mut index_path = None;
        if let Some(dir) = dir {
            let path = dir.join("sha1-index.jsonl");
            match load_and_open(dir, &path, &mut digests) {
                Ok(file) => {
                    index_file = Some(file);
                    index_path = Some(path);
                }
                Err(error) => say!(
                    "ringdown serve: warning: SHA1 cache {} is not usable ({error}); keeping digests in memory only",
                    path.display()
                ),
            }
        }
        Sha1Cache {
            digests: Mutex::new(digests),
            index_file: Mutex::new(index_file),
            index_path,
            stripes: (0..SHA1_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    pub fn lookup(&self, key: &str, version: &FileVersion) -> Option<[u8; 20]> {
        let digests = self.digests.lock().expect("sha1 cache lock");
        digests
            .get(key)
            .filter(|cached| cached.version == *version)
            .map(|cached| cached.sha1)
    }

    /// Returns the digest of `file`, an open descriptor whose `fstat` gave
    /// `version`, hashing it unless cached. Blocking: call from a blocking
    /// thread. The second value says whether the file was read.
    pub fn digest_of(
        &self,
        key: &str,
        version: &FileVersion,
        file: &File,
    ) -> std::io::Result<([u8; 20], bool)> {
        if let Some(sha1) = self.lookup(key, version) {
            return Ok((sha1, false));
        }
        let stripe = &self.stripes[stripe_of(key)];
        let _guard = stripe.lock().expect("sha1 stripe lock");
        if let Some(sha1) = self.lookup(key, version) {
            return Ok((sha1, false));
        }
        let sha1 = hash_file(file, version.size_bytes)?;
        // Written in place while being read: the digest may mix two contents,
        // so it is not remembered (the next request hashes the file again).
        let after = rustix::fs::fstat(file).map_err(std::io::Error::from)?;
        if FileVersion::of(&after) == *version {
            self.remember(key, version, sha1);
        }
        Ok((sha1, true))
    }

    fn remember(&self, key: &str, version: &FileVersion, sha1: [u8; 20]) {
        self.digests.lock().expect("sha1 cache lock").insert(
            key.to_string(),
            CachedDigest {
                version: *version,
                sha1,
            },
        );
        let mut index_file = self.index_file.lock().expect("sha1 index lock");
        if let Some(file) = index_file.as_mut() {
            let line = IndexLine {
                path: key.to_string(),
                size: version.size_bytes,
                mtime_ns: version.mtime_ns,
                device: version.device,
                inode: version.inode,
                ctime_ns: version.ctime_ns,
                sha1: hex(&sha1),
            };
            let mut text = serde_json::to_string(&line).expect("index line serialises");
            text.push('\n');
            if let Err(error) = file.write_all(text.as_bytes()) {
                say!(
                    "ringdown serve: warning: cannot append to the SHA1 cache: {error}; keeping digests in memory only"
                );
                *index_file = None;
            }
        }
    }
}

fn stripe_of(key: &str) -> usize {
    let mut hasher = Sha1::new();
    hasher.update(key.as_bytes());
    hasher.finalize()[0] as usize % SHA1_LOCK_STRIPES
}

fn load_and_open(
    dir: &Path,
    path: &Path,
    digests: &mut HashMap<String, CachedDigest>,
) -> std::io::Result<File> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
    // The digests are what listings and downloads publish: a directory
    // another user can write to (the shared-TMPDIR fallback, planted
    // before us) could feed forged ones in, or point the index elsewhere.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    let ours = meta.uid() == rustix::process::getuid().as_raw();
    if !meta.is_dir() || !ours || meta.mode() & 0o002 != 0 {
        return Err(std::io::Error::other(
            "not a directory of ours that others cannot write (give --cache-dir one)",
        ));
    }
    let no_symlink = |options: &mut std::fs::OpenOptions| -> std::io::Result<File> {
        options.custom_flags(libc::O_NOFOLLOW).open(path)
    };
    if let Ok(existing) = no_symlink(std::fs::OpenOptions::new().read(true)) {
        for line in std::io::BufReader::new(existing).lines() {
            let Ok(line) = line else { break };
            let Ok(parsed) = serde_json::from_str::<IndexLine>(&line) else {
                continue;
            };
            let Some(sha1) = unhex(&parsed.sha1).and_then(|bytes| <[u8; 20]>::try_from(bytes).ok())
            else {
                continue;
            };
            digests.insert(
                parsed.path,
                CachedDigest {
                    version: FileVersion {
                        device: parsed.device,
                        inode: parsed.inode,
                        size_bytes: parsed.size,
                        mtime_ns: parsed.mtime_ns,
                        ctime_ns: parsed.ctime_ns,
                    },
                    sha1,
                },
            );
        }
    }
    no_symlink(std::fs::OpenOptions::new().create(true).append(true))
}

/// Hashes exactly `size_bytes` of `file`; a file that changed size while being
/// read is an error (the caller's metadata would be stale). Positional reads:
/// the file's offset is the download body's, not ours.
fn hash_file(file: &File, size_bytes: u64) -> std::io::Result<[u8; 20]> {
    let mut hasher = Sha1::new();
    let mut buffer = vec![0u8; HASH_READ_BLOCK_BYTES];
    let mut total_bytes = 0u64;
    while total_bytes < size_bytes {
        let wanted = buffer.len().min((size_bytes - total_bytes) as usize);
        let count = match file.read_at(&mut buffer[..wanted], total_bytes) {
            Ok(0) => break,
            Ok(count) => count,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&buffer[..count]);
        total_bytes += count as u64;
    }
    if total_bytes != size_bytes {
        return Err(std::io::Error::other("file shrank while being hashed"));
    }
    Ok(hasher.finalize().into())
}

/// Default cache directory for DIR: `$XDG_CACHE_HOME/ringdown/serve/<hash>`,
/// else `$HOME/.cache/ringdown/serve/<hash>`, else `$TMPDIR/ringdown-serve-cache-<uid>/<hash>`,
/// where `<hash>` names the canonical DIR.
pub fn default_cache_dir(dir: &Path) -> PathBuf {
    let mut hasher = Sha1::new();
    hasher.update(dir.as_os_str().as_encoded_bytes());
    let key = hex(&hasher.finalize()[..8]);
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|value| !value.is_empty()) {
        return PathBuf::from(xdg).join("ringdown").join("serve").join(key);
    }
    if let Some(home) = std::env::var_os("HOME").filter(|value| !value.is_empty()) {
        let base = PathBuf::from(home).join(".cache");
        if std::fs::create_dir_all(&base).is_ok() {
            return base.join("ringdown").join("serve").join(key);
        }
    }
    let uid = rustix::process::getuid().as_raw();
    std::env::temp_dir()
        .join(format!("ringdown-serve-cache-{uid}"))
        .join(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_cache_others_can_write_or_a_symlinked_index_is_not_used() {
        let root = tempfile::tempdir().unwrap();
        // Ours, made here: used, and made owner-only.
        let fresh = root.path().join("a/b");
        assert!(Sha1Cache::open(Some(&fresh)).index_path.is_some());
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
        // World-writable (a planted shared directory): memory only.
        let shared = root.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(Sha1Cache::open(Some(&shared)).index_path.is_none());
        // An index that is a symlink (to a file of someone's choosing).
        let linked = root.path().join("linked");
        std::fs::create_dir(&linked).unwrap();
        let target = root.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, linked.join("sha1-index.jsonl")).unwrap();
        assert!(Sha1Cache::open(Some(&linked)).index_path.is_none());
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
    }
}
