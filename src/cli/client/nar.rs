//! Serialising a store path as a NAR in-process, straight from the file system,
//! for stores whose paths are plain directories on this machine (the system store,
//! or a chroot store `--store DIR`). It saves a `nix-store --dump` process per
//! path, which dominates pushing many small paths; `--nix-dump` goes back to Nix.
//!
//! The grammar is the one in `larder::nix::nar` (Nix's own): entries sorted by
//! name bytes, a regular file is executable when its owner-execute bit is set,
//! strings are length-prefixed and zero-padded to 8 bytes. The server hashes what
//! it receives against the NarHash from `nix path-info`, so a difference from
//! Nix's serialisation cannot store a wrong path; it fails the upload.
//!
//! The NAR is produced on a thread and read through a bounded channel, so memory
//! stays at a few buffers whatever the path's size.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crossbeam_channel::{bounded, Receiver, Sender};

/// Bytes handed over per message.
const PIECE_BYTES: usize = 256 * 1024;
/// Pieces in flight between the thread and the reader.
const PIECES_IN_FLIGHT: usize = 4;

/// Collects output into pieces and sends them; a closed receiver stops the dump.
struct Out {
    tx: Sender<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
}

impl Out {
    fn flush_piece(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIECE_BYTES));
        self.tx
            .send(Ok(piece))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "NAR reader went away"))
    }

    fn u64(&mut self, n: u64) -> io::Result<()> {
        self.write_all(&n.to_le_bytes())
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % 8) as usize;
        if rem != 0 {
            self.write_all(&[0u8; 8][..8 - rem])?;
        }
        Ok(())
    }

    fn str(&mut self, s: &[u8]) -> io::Result<()> {
        self.u64(s.len() as u64)?;
        self.write_all(s)?;
        self.pad(s.len() as u64)
    }
}

impl Write for Out {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= PIECE_BYTES {
            self.flush_piece()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_piece()
    }
}

fn node(out: &mut Out, path: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(path)?;
    out.str(b"(")?;
    out.str(b"type")?;
    let ft = md.file_type();
    if ft.is_symlink() {
        out.str(b"symlink")?;
        out.str(b"target")?;
        out.str(fs::read_link(path)?.as_os_str().as_bytes())?;
    } else if ft.is_file() {
        out.str(b"regular")?;
        if md.permissions().mode() & 0o100 != 0 {
            out.str(b"executable")?;
            out.str(b"")?;
        }
        out.str(b"contents")?;
        let len = md.len();
        out.u64(len)?;
        let copied = io::copy(&mut fs::File::open(path)?.take(len), out)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} changed size while being read", path.display()),
            ));
        }
        out.pad(len)?;
    } else if ft.is_dir() {
        out.str(b"directory")?;
        let mut names: Vec<std::ffi::OsString> = fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<_>>()?;
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            out.str(b"entry")?;
            out.str(b"(")?;
            out.str(b"name")?;
            out.str(name.as_bytes())?;
            out.str(b"node")?;
            node(out, &path.join(&name))?;
            out.str(b")")?;
        }
    } else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a file, directory or symlink", path.display()),
        ));
    }
    out.str(b")")
}

/// Reads what the dumping thread produces; an error on that side ends the stream
/// with that error (never a silently short NAR).
pub struct NarReader {
    rx: Receiver<io::Result<Vec<u8>>>,
    piece: Vec<u8>,
    at: usize,
}

impl Read for NarReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.piece.len() {
            match self.rx.recv() {
                Ok(Ok(p)) => {
                    self.piece = p;
                    self.at = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len() - self.at);
        buf[..n].copy_from_slice(&self.piece[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Start serialising the file tree at `path` (the on-disk location of a store
/// path) as a NAR.
pub fn dump(path: PathBuf) -> NarReader {
    let (tx, rx) = bounded(PIECES_IN_FLIGHT);
    std::thread::spawn(move || {
        let mut out = Out {
            tx: tx.clone(),
            buf: Vec::with_capacity(PIECE_BYTES),
        };
        let result = out
            .str(b"nix-archive-1")
            .and_then(|_| node(&mut out, &path))
            .and_then(|_| out.flush_piece());
        if let Err(e) = result {
            let _ = tx.send(Err(e));
        }
    });
    NarReader {
        rx,
        piece: Vec::new(),
        at: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nar_of(p: &Path) -> Vec<u8> {
        let mut v = Vec::new();
        dump(p.to_path_buf()).read_to_end(&mut v).unwrap();
        v
    }

    fn s(x: &[u8]) -> Vec<u8> {
        let mut v = (x.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(x);
        v.resize(8 + x.len().div_ceil(8) * 8, 0);
        v
    }

    #[test]
    fn a_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"hello").unwrap();
        let mut want = s(b"nix-archive-1");
        for t in [&b"("[..], b"type", b"regular", b"contents", b"hello", b")"] {
            want.extend(s(t));
        }
        assert_eq!(nar_of(&f), want);
    }

    #[test]
    fn a_tree_is_valid_and_sorted() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        fs::create_dir_all(root.join("b/deep")).unwrap();
        fs::write(root.join("b/deep/x"), vec![7u8; 300_000]).unwrap();
        fs::write(root.join("a"), b"").unwrap();
        fs::write(root.join("exe"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("exe"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("b/deep/x", root.join("link")).unwrap();
        let nar = nar_of(&root);
        let mut v = larder::nix::nar::NarValidator::new();
        v.feed(&nar).unwrap();
        v.finish().unwrap();
        let text = String::from_utf8_lossy(&nar);
        let (a, b, e, l) = (
            text.find("\u{1}\0\0\0\0\0\0\0a").unwrap(),
            text.find("\u{1}\0\0\0\0\0\0\0b").unwrap(),
            text.find("exe").unwrap(),
            text.find("link").unwrap(),
        );
        assert!(a < b && b < e && e < l, "entries are not sorted");
        assert!(text.contains("executable"));
        assert!(text.contains("b/deep/x"));
    }

    #[test]
    fn a_missing_path_is_an_error_not_an_empty_nar() {
        let mut v = Vec::new();
        let r = dump(PathBuf::from("/nonexistent/larder-test")).read_to_end(&mut v);
        assert!(r.is_err());
    }
}
