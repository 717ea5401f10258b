//! Commands the server answers itself instead of handing them to the shell.
//!
//! Each command runs in a fresh `sh -c`, so a `cd` there would change the directory of a shell
//! that exits at once. To make the prompt feel like a shell, a command that is exactly
//! `cd [DIR]` changes the connection's working directory instead, which every later command
//! of the connection starts in. Anything more complex (`cd /tmp && ls`) goes to the shell as
//! usual and, as in any subshell, its `cd` does not outlive it.

use std::path::{Path, PathBuf};

/// Where a `cd` asks to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CdTarget {
    /// `cd` or `cd ~`: the home directory.
    Home,
    /// `cd -`: the previous directory.
    Previous,
    /// `cd DIR`, relative to the current directory or absolute.
    Path(String),
}

/// Recognises `cd`, `cd DIR`, `cd ~` and `cd -`. A `DIR` with shell syntax in it (quotes,
/// variables, globs, several words, `&&`) is not ours: `None` sends the command to the shell.
pub fn parse_cd(command: &str) -> Option<CdTarget> {
    let mut words = command.split_whitespace();
    if words.next()? != "cd" {
        return None;
    }
    let target = words.next();
    if words.next().is_some() {
        return None;
    }
    match target {
        None | Some("~") => Some(CdTarget::Home),
        Some("-") => Some(CdTarget::Previous),
        Some(dir) if dir.contains(|c: char| "\"'`$\\;&|<>(){}*?[]~#!".contains(c)) => None,
        Some(dir) => Some(CdTarget::Path(dir.to_owned())),
    }
}

/// The directory `target` names, seen from `cwd`, if it exists and is a directory.
///
/// # Errors
/// A message in the style of a shell's `cd` error.
pub fn resolve_cd(
    target: &CdTarget,
    cwd: &Path,
    previous: Option<&Path>,
) -> Result<PathBuf, String> {
    let wanted = match target {
        CdTarget::Home => home_dir().ok_or_else(|| "cd: HOME not set".to_owned())?,
        CdTarget::Previous => previous
            .map(Path::to_path_buf)
            .ok_or_else(|| "cd: OLDPWD not set".to_owned())?,
        CdTarget::Path(dir) => cwd.join(dir),
    };
    let shown = match target {
        CdTarget::Path(dir) => dir.clone(),
        _ => wanted.display().to_string(),
    };
    match std::fs::metadata(&wanted) {
        Ok(meta) if meta.is_dir() => {
            // Canonical, so `cd ..` twice climbs two levels and `pwd` shows a clean path.
            wanted
                .canonicalize()
                .map_err(|e| format!("cd: {shown}: {e}"))
        }
        Ok(_) => Err(format!("cd: {shown}: Not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("cd: {shown}: No such file or directory"))
        }
        Err(e) => Err(format!("cd: {shown}: {e}")),
    }
}

fn home_dir() -> Option<PathBuf> {
    let variable = if cfg!(windows) { "USERPROFILE" } else { "HOME" };
    std::env::var_os(variable)
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_only_plain_cd() {
        assert_eq!(parse_cd("cd"), Some(CdTarget::Home));
        assert_eq!(
            parse_cd("  cd   /tmp "),
            Some(CdTarget::Path("/tmp".into()))
        );
        assert_eq!(parse_cd("cd -"), Some(CdTarget::Previous));
        assert_eq!(parse_cd("cd /tmp && ls"), None);
        assert_eq!(parse_cd("cd $HOME"), None);
        assert_eq!(parse_cd("cdx"), None);
        assert_eq!(parse_cd("echo cd"), None);
    }

    #[test]
    fn resolves_relative_paths_and_reports_missing_ones() {
        let root = std::env::temp_dir().canonicalize().unwrap();
        let resolved = resolve_cd(&CdTarget::Path(".".into()), &root, None).unwrap();
        assert_eq!(resolved, root);
        let error =
            resolve_cd(&CdTarget::Path("no-such-dir-rcmd".into()), &root, None).unwrap_err();
        assert_eq!(error, "cd: no-such-dir-rcmd: No such file or directory");
        assert_eq!(
            resolve_cd(&CdTarget::Previous, &root, None).unwrap_err(),
            "cd: OLDPWD not set"
        );
    }
}
