//! Damaging files on purpose, for the corruption tests of every crate:
//! the named damages applied to a file's bytes, and the directory helpers
//! that go with them (list every file, copy a tree).

use std::path::{Path, PathBuf};

/// A named way to damage a file's bytes.
pub type Damage = (String, Box<dyn Fn(&mut Vec<u8>)>);

/// Damages of a file of `len` bytes: zero length, three truncations and
/// single-byte flips at seven offsets.
pub fn damages(len: usize) -> Vec<Damage> {
    let mut out: Vec<Damage> = vec![("zero-length".into(), Box::new(|b: &mut Vec<u8>| b.clear()))];
    for q in 1..=3 {
        let cut = len * q / 4;
        out.push((
            format!("truncated to {cut}"),
            Box::new(move |b: &mut Vec<u8>| b.truncate(cut)),
        ));
    }
    for off in [
        0,
        1,
        13,
        len / 5,
        len / 2,
        len * 3 / 4,
        len.saturating_sub(3),
    ] {
        out.push((
            format!("byte {off} flipped"),
            Box::new(move |b: &mut Vec<u8>| {
                if let Some(x) = b.get_mut(off) {
                    *x ^= 0x41;
                }
            }),
        ));
    }
    out
}

/// Every file under `dir`, recursively, sorted.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).expect("read the directory") {
        let p = e.expect("a directory entry").path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Copies the tree `from` to `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for e in std::fs::read_dir(from).expect("read the directory") {
        let p = e.expect("a directory entry").path();
        let t = to.join(p.file_name().expect("a file name"));
        if p.is_dir() {
            copy_dir(&p, &t)
        } else {
            std::fs::copy(&p, &t).expect("copy a file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_damage_changes_the_bytes_and_copies_keep_them() {
        let bytes: Vec<u8> = (0..200u8).collect();
        let ds = damages(bytes.len());
        assert_eq!(ds.len(), 11);
        for (name, d) in &ds {
            let mut b = bytes.clone();
            d(&mut b);
            assert_ne!(b, bytes, "{name} left the bytes as they were");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), &bytes).unwrap();
        std::fs::write(dir.path().join("a/g"), b"x").unwrap();
        copy_dir(&dir.path().join("a"), &dir.path().join("c"));
        let copied = files(&dir.path().join("c"));
        assert_eq!(copied.len(), 2);
        assert_eq!(std::fs::read(dir.path().join("c/b/f")).unwrap(), bytes);
    }
}
