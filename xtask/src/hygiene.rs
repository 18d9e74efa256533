//! Tree hygiene checked by `cargo test -p xtask` (the "xtask tests" step of `cargo xtask test`):
//! no userspace Rust source file over [`MAX_LINES`] lines, the project's limit, so that each file
//! holds one thing and is split along what it holds before it grows past reading. Counted: every
//! `*.rs` under the crates of [`USERSPACE_CRATES`]; not lqtrace-ebpf (the kernel programs, not
//! userspace), not build output (`target/`).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use crate::commands::USERSPACE_CRATES;

pub const MAX_LINES: usize = 600;

/// Every `*.rs` file under `dir`, skipping `target` directories; symlinks are not followed.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let entries = fs::read_dir(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let kind = entry.file_type()?;
        if kind.is_dir() {
            if entry.file_name() != "target" {
                rust_files(&path, out)?;
            }
        } else if kind.is_file() && path.extension().is_some_and(|x| x == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// (path relative to `root`, line count) of each `*.rs` file under `root/<dir>` for `dir` in
/// `dirs` with more than `max` lines, sorted by path. A missing directory is an error, so that a
/// renamed crate cannot make the check pass by counting nothing.
pub fn oversized(root: &Path, dirs: &[&str], max: usize) -> io::Result<Vec<(String, usize)>> {
    let mut files = Vec::new();
    for dir in dirs {
        rust_files(&root.join(dir), &mut files)?;
    }
    let mut big = Vec::new();
    for file in files {
        let lines = String::from_utf8_lossy(&fs::read(&file)?).lines().count();
        if lines > max {
            let shown = file.strip_prefix(root).unwrap_or(&file);
            big.push((shown.display().to_string(), lines));
        }
    }
    big.sort();
    Ok(big)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util;

    #[test]
    fn no_userspace_file_over_the_limit() {
        let big = oversized(&util::workspace_root(), &USERSPACE_CRATES, MAX_LINES).unwrap();
        let list: Vec<String> = big
            .iter()
            .map(|(f, n)| format!("  {f}: {n} lines"))
            .collect();
        assert!(
            big.is_empty(),
            "{} file(s) over {MAX_LINES} lines; split each along what it holds:\n{}",
            big.len(),
            list.join("\n")
        );
    }

    #[test]
    fn counts_lines_and_skips_target() {
        let root = std::env::temp_dir().join(format!("xtask-hygiene-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let put = |path: &str, lines: usize| {
            let p = root.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, "x\n".repeat(lines)).unwrap();
        };
        put("a/src/ok.rs", 600);
        put("a/src/big.rs", 601);
        put("a/src/deep/er.rs", 700);
        put("a/target/debug/build/gen.rs", 5000);
        put("a/notes.txt", 5000);
        put("b/lib.rs", 10);
        put("other/huge.rs", 5000);
        assert_eq!(
            oversized(&root, &["a", "b"], 600).unwrap(),
            [
                ("a/src/big.rs".to_string(), 601),
                ("a/src/deep/er.rs".to_string(), 700)
            ]
        );
        assert!(oversized(&root, &["b"], 600).unwrap().is_empty());
        assert!(oversized(&root, &["gone"], 600).is_err());
        fs::remove_dir_all(&root).unwrap();
    }
}
