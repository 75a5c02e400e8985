//! Durable small-file writes, done one way everywhere: temp file, fsync, rename, fsync the
//! directory. A reader after a crash sees either the old or the new file, never a mix.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// fsyncs a directory so that creations, renames and deletions in it are durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Atomically replaces `dir/name` with `bytes`, durably.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, dir.join(name))?;
    fsync_dir(dir)
}

/// Removes `path` if it exists; absence is not an error.
pub fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_atomic(dir.path(), "a", b"one").expect("write");
        write_atomic(dir.path(), "a", b"two").expect("write");
        assert_eq!(fs::read(dir.path().join("a")).expect("read"), b"two");
        assert!(!dir.path().join("a.tmp").exists());
        remove_if_exists(&dir.path().join("a")).expect("rm");
        remove_if_exists(&dir.path().join("a")).expect("rm twice");
    }
}
