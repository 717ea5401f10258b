//! The shared secret: where it lives, how it is made, how it is read.
//!
//! The secret is a file, never a command-line argument (every user on the machine can read
//! other users' command lines in `ps`). By default server and client use the same per-user file,
//! `$XDG_CONFIG_HOME/rcmd/secret` (or `~/.config/rcmd/secret`; `%APPDATA%\rcmd\secret` on
//! Windows), which `rcmd serve` creates on first start, so two terminals on one machine work
//! with no set-up. `--secret-file` or the `RCMD_SECRET_FILE` environment variable points
//! elsewhere (the flag wins). To use rcmd across machines, copy the file.
//!
//! The key is the file's content without surrounding whitespace: `rcmd keygen` writes 32 random
//! bytes as 64 hex digits, but any text of at least [`MIN_SECRET_LEN`] bytes (and at most
//! [`MAX_SECRET_FILE_LEN`]) works.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::auth::MIN_SECRET_LEN;
use crate::protocol::message::to_hex;

/// Environment variable naming the secret file.
pub const SECRET_FILE_ENV: &str = "RCMD_SECRET_FILE";

/// The largest secret file read. Far more than any secret needs; it stops a file that never
/// ends (a link to /dev/zero) from filling memory.
pub const MAX_SECRET_FILE_LEN: u64 = 64 * 1024;

/// Why the secret could not be had.
#[derive(Debug)]
pub enum SecretError {
    /// No path given and no home or config directory to put the default in.
    NoDefaultLocation,
    /// The file does not exist. `make_directory` is its directory if that does not exist
    /// either and `keygen` would not create it (only the default location is created).
    Missing {
        path: PathBuf,
        make_directory: Option<PathBuf>,
    },
    /// The file is there but shorter than [`MIN_SECRET_LEN`] bytes.
    TooShort(PathBuf),
    /// The file is longer than [`MAX_SECRET_FILE_LEN`] bytes.
    TooLong(PathBuf),
    /// The secret file is a directory.
    IsADirectory(PathBuf),
    /// The server's secret file is not a regular file: a FIFO, a device.
    NotAFile(PathBuf),
    /// A secret file named by the user is to be created in a directory that does not exist.
    NoDirectory(PathBuf),
    /// `keygen` would overwrite an existing file.
    Exists(PathBuf),
    /// The server's secret file can be read by every user of the machine, or changed by users
    /// other than its owner.
    OpenToOthers(PathBuf),
    /// Reading or writing failed.
    Io(PathBuf, io::Error),
}

impl fmt::Display for SecretError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretError::NoDefaultLocation => write!(
                f,
                "no secret file location: set HOME or XDG_CONFIG_HOME, or pass --secret-file"
            ),
            SecretError::Missing {
                path,
                make_directory,
            } => {
                // Two commands rather than one with `&&`, which Windows PowerShell 5 lacks.
                let mkdir = match make_directory {
                    Some(dir) if cfg!(windows) => {
                        format!("`mkdir {}`, then ", quoted_if_needed(dir))
                    }
                    Some(dir) => format!("`mkdir -p {}`, then ", quoted_if_needed(dir)),
                    None => "with ".to_owned(),
                };
                write!(
                    f,
                    "no secret file at {}: copy the server's secret file there, or make a new \
                     one {mkdir}`rcmd keygen --secret-file {}`",
                    path.display(),
                    quoted_if_needed(path)
                )
            }
            SecretError::TooShort(path) => {
                write!(
                    f,
                    "the secret in {} is shorter than {MIN_SECRET_LEN} bytes",
                    path.display()
                )
            }
            SecretError::TooLong(path) => write!(
                f,
                "the secret file {} is longer than {MAX_SECRET_FILE_LEN} bytes; a secret is a \
                 short line of text (`rcmd keygen` writes 64 hex digits)",
                path.display()
            ),
            SecretError::IsADirectory(path) => {
                write!(f, "the secret file {} is a directory", path.display())
            }
            SecretError::NotAFile(path) => write!(
                f,
                "the secret file {} is not a regular file; a server reads its secret from a \
                 file, which SIGHUP reads again without waiting on a pipe or device",
                path.display()
            ),
            SecretError::NoDirectory(path) => write!(
                f,
                "cannot create the secret file {}: its directory does not exist (rcmd creates \
                 only its default location)",
                path.display()
            ),
            SecretError::Exists(path) => {
                write!(
                    f,
                    "{} already exists; use --force to replace it",
                    path.display()
                )
            }
            SecretError::OpenToOthers(path) => write!(
                f,
                "secret file {} can be read by every user on this machine or changed by users \
                 other than its owner, so they could run commands as this server's user; run: \
                 chmod 600 {}",
                path.display(),
                quoted_if_needed(path)
            ),
            SecretError::Io(path, e) => write!(f, "secret file {}: {e}", path.display()),
        }
    }
}

impl std::error::Error for SecretError {}

/// `path` as a command line takes it: in double quotes if it has blanks (a Windows profile
/// such as `C:\Users\John Smith`), which both `sh` and `cmd` read.
pub fn quoted_if_needed(path: &Path) -> String {
    let text = path.display().to_string();
    if text.contains([' ', '\t']) {
        format!("\"{text}\"")
    } else {
        text
    }
}

/// The per-user default secret file.
pub fn default_path() -> Option<PathBuf> {
    let non_empty = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let config_dir = if cfg!(windows) {
        non_empty("APPDATA")
    } else {
        non_empty("XDG_CONFIG_HOME").or_else(|| non_empty("HOME").map(|home| home.join(".config")))
    };
    config_dir.map(|dir| dir.join("rcmd").join("secret"))
}

/// The secret file to use: the flag, else `RCMD_SECRET_FILE`, else the default.
///
/// # Errors
/// [`SecretError::NoDefaultLocation`] when nothing names a file.
pub fn resolve_path(flag: Option<&Path>) -> Result<PathBuf, SecretError> {
    match named_path(flag) {
        Some(path) => Ok(path),
        None => default_path().ok_or(SecretError::NoDefaultLocation),
    }
}

/// The secret file named by the flag or [`SECRET_FILE_ENV`], if any (the flag wins).
fn named_path(flag: Option<&Path>) -> Option<PathBuf> {
    flag.map(Path::to_path_buf).or_else(|| {
        std::env::var_os(SECRET_FILE_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// Reads the secret from `path`.
///
/// # Errors
/// The file is missing, unreadable or too short.
pub fn load(path: &Path) -> Result<Vec<u8>, SecretError> {
    // A client may read its secret from a pipe (`--secret-file <(pass show rcmd)`): a
    // blocking open waits for the writer as a reader of a pipe should.
    load_checked(path, |path| fs::File::open(path), |_| Ok(()))
}

/// Opens `path` with `open`, lets `check` judge the open file's metadata, then reads the secret
/// from that same file: what was checked is what is read, even if the path is swapped
/// meanwhile.
fn load_checked(
    path: &Path,
    open: impl FnOnce(&Path) -> io::Result<fs::File>,
    check: impl FnOnce(&fs::Metadata) -> Result<(), SecretError>,
) -> Result<Vec<u8>, SecretError> {
    let io_error = |e: io::Error| match e.kind() {
        io::ErrorKind::NotFound => SecretError::Missing {
            path: path.to_path_buf(),
            make_directory: directory_keygen_would_not_make(path),
        },
        _ => SecretError::Io(path.to_path_buf(), e),
    };
    let file = open(path).map_err(|e| {
        // Windows will not open a directory this way ("access denied"): say what it is.
        if path.is_dir() {
            SecretError::IsADirectory(path.to_path_buf())
        } else {
            io_error(e)
        }
    })?;
    let meta = file.metadata().map_err(io_error)?;
    if meta.is_dir() {
        return Err(SecretError::IsADirectory(path.to_path_buf()));
    }
    check(&meta)?;
    let mut content = Vec::new();
    file.take(MAX_SECRET_FILE_LEN + 1)
        .read_to_end(&mut content)
        .map_err(io_error)?;
    if content.len() as u64 > MAX_SECRET_FILE_LEN {
        return Err(SecretError::TooLong(path.to_path_buf()));
    }
    let secret = content.trim_ascii().to_vec();
    if secret.len() < MIN_SECRET_LEN {
        return Err(SecretError::TooShort(path.to_path_buf()));
    }
    warn_if_readable_by_others(path, &meta);
    Ok(secret)
}

/// Whether a secret file was named (by `--secret-file` or [`SECRET_FILE_ENV`]) rather than
/// left to the per-user default.
pub fn named(flag: Option<&Path>) -> bool {
    named_path(flag).is_some()
}

/// The directory of `path`, if it does not exist and is not the default location's (which
/// `keygen` creates).
fn directory_keygen_would_not_make(path: &Path) -> Option<PathBuf> {
    let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty())?;
    let is_default = default_path().as_deref() == Some(path);
    (!is_default && !dir.exists()).then(|| dir.to_path_buf())
}

/// Whether `path` (resolved from `flag`) was named by the user and is not the default location
/// either: its directory must exist already ([`require_existing_directory`]). Naming the default
/// path itself, as the hint for a missing secret does, is the default.
pub fn named_elsewhere(flag: Option<&Path>, path: &Path) -> bool {
    named(flag) && default_path().as_deref() != Some(path)
}

/// Reads the secret for a server, which is stricter than a client: a file every user of the
/// machine can read, or that its group or everyone can write, is refused, as `sshd` refuses
/// such key files, because they could then run commands as the server's user. (Group read
/// only gets the warning: a service's group may be meant to read it.) It must be a regular
/// file: the server reads it again on SIGHUP, on its event loop, where a FIFO waiting for a
/// writer would stop every connection.
///
/// # Errors
/// As [`load`], and [`SecretError::OpenToOthers`], [`SecretError::NotAFile`].
pub fn load_for_server(path: &Path) -> Result<Vec<u8>, SecretError> {
    load_checked(path, open_without_waiting, |meta| {
        if !meta.is_file() {
            return Err(SecretError::NotAFile(path.to_path_buf()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o026 != 0 {
                return Err(SecretError::OpenToOthers(path.to_path_buf()));
            }
        }
        Ok(())
    })
}

/// Opens for reading without waiting: opening a FIFO blocks until a writer comes, unless
/// non-blocking. (A regular file, the only kind then accepted, ignores the flag.)
fn open_without_waiting(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    options.open(path)
}

/// Checks that a secret file the user named (`--secret-file`, [`SECRET_FILE_ENV`]) can be
/// created without creating directories: a typo in such a path should fail, as `ssh-keygen -f`
/// does, not make up a tree of directories. Only the default location is created whole.
///
/// # Errors
/// [`SecretError::NoDirectory`].
pub fn require_existing_directory(path: &Path) -> Result<(), SecretError> {
    let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) else {
        return Ok(());
    };
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(SecretError::NoDirectory(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(SecretError::NoDirectory(path.to_path_buf()))
        }
        // Say what it is (permission denied, say), not that it is missing.
        Err(e) => Err(SecretError::Io(path.to_path_buf(), e)),
    }
}

/// Reads the secret, first creating the file with a new random secret if it does not exist.
/// Returns the secret and whether the file was created.
///
/// # Errors
/// As [`load`] and [`generate`].
pub fn load_or_create(path: &Path) -> Result<(Vec<u8>, bool), SecretError> {
    match load(path) {
        Err(SecretError::Missing { .. }) => match generate(path, false) {
            Ok(()) => Ok((load(path)?, true)),
            // Another process created it between our read and our write: use theirs.
            Err(SecretError::Exists(_)) => Ok((load(path)?, false)),
            Err(e) => Err(e),
        },
        other => other.map(|secret| (secret, false)),
    }
}

/// Writes a new random secret (32 bytes from the OS, as hex) to `path`, readable by its owner
/// only. Creates the parent directory (owner-only) if needed.
///
/// # Errors
/// [`SecretError::Exists`] if the file exists and `overwrite` is false; I/O errors otherwise.
pub fn generate(path: &Path, overwrite: bool) -> Result<(), SecretError> {
    let io_error = |e| SecretError::Io(path.to_path_buf(), e);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent).map_err(io_error)?;
    }
    #[cfg(unix)]
    let previous_mode = {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(path)
            .ok()
            .map(|meta| meta.permissions().mode())
    };
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let mut options = fs::OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        // A directory is no secret file, --force or not: say so, rather than "use --force".
        _ if path.is_dir() => io_error(io::Error::other("it is a directory; name a file")),
        io::ErrorKind::AlreadyExists => SecretError::Exists(path.to_path_buf()),
        _ => io_error(e),
    })?;
    #[cfg(unix)]
    {
        // `mode` applies only when the file is created. An overwritten file keeps its owner
        // and group (it is the same file) and its owner's and group's read access: a secret
        // set up as `root:rcmd 0640` for a service's group stays readable by that service,
        // so rotating it does not lock the service out. Anything more is taken away.
        use std::os::unix::fs::PermissionsExt;
        let kept = previous_mode.unwrap_or(0) & 0o040;
        file.set_permissions(fs::Permissions::from_mode(0o600 | kept))
            .map_err(io_error)?;
    }
    writeln!(file, "{}", to_hex(&bytes)).map_err(io_error)?;
    file.sync_all().map_err(io_error)
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

fn warn_if_readable_by_others(path: &Path, meta: &fs::Metadata) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            log::warn!(
                "secret file {} is accessible to other users; run: chmod 600 {}",
                path.display(),
                quoted_if_needed(path)
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (path, meta);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("secret");
        generate(&path, false).unwrap();
        let secret = load(&path).unwrap();
        assert_eq!(secret.len(), 64);
        assert!(matches!(
            generate(&path, false),
            Err(SecretError::Exists(_))
        ));
        generate(&path, true).unwrap();
        assert_ne!(load(&path).unwrap(), secret);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }

    /// Rotating a secret a service's group reads (`root:rcmd 0640`) must not lock the service
    /// out; access for anyone else is taken away.
    #[cfg(unix)]
    #[test]
    fn overwriting_keeps_group_read_access_and_nothing_more() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        for (before, after) in [
            (0o640, 0o640),
            (0o644, 0o640),
            (0o606, 0o600),
            (0o600, 0o600),
        ] {
            fs::write(&path, "x").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(before)).unwrap();
            generate(&path, true).unwrap();
            assert_eq!(mode(&path), after, "{before:o}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_server_refuses_a_secret_others_can_read_or_change_but_not_one_it_can_run() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        generate(&path, false).unwrap();
        for (mode, refused) in [
            (0o604, true),
            (0o602, true),
            (0o620, true),
            (0o601, false),
            (0o640, false),
        ] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let result = load_for_server(&path);
            assert_eq!(
                matches!(result, Err(SecretError::OpenToOthers(_))),
                refused,
                "{mode:o}"
            );
        }
    }

    #[test]
    fn a_directory_is_refused_as_a_secret_file_even_with_force() {
        let dir = tempfile::tempdir().unwrap();
        for force in [false, true] {
            let error = generate(dir.path(), force).unwrap_err().to_string();
            assert!(error.ends_with("it is a directory; name a file"), "{error}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_server_refuses_a_fifo_or_device_at_once_and_anyone_an_endless_file() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        // No writer ever comes: a blocking open would wait forever.
        assert!(matches!(
            load_for_server(&fifo),
            Err(SecretError::NotAFile(_))
        ));
        assert!(matches!(
            load(dir.path()),
            Err(SecretError::IsADirectory(_))
        ));
        let zero = Path::new("/dev/zero");
        assert!(matches!(
            load_for_server(zero),
            Err(SecretError::NotAFile(_))
        ));
        assert!(matches!(load(zero), Err(SecretError::TooLong(_))));
    }

    #[test]
    fn load_reports_missing_and_short_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        assert!(matches!(
            load(&path),
            Err(SecretError::Missing {
                make_directory: None,
                ..
            })
        ));
        fs::write(&path, "short\n").unwrap();
        assert!(matches!(load(&path), Err(SecretError::TooShort(_))));
        let (created, was_created) = load_or_create(&dir.path().join("new")).unwrap();
        assert!(was_created);
        assert_eq!(created.len(), 64);
    }

    #[test]
    fn a_secret_file_up_to_the_limit_is_read_and_one_byte_more_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        // A few KiB of secret, e.g. a PEM file used as the secret, is well within the limit.
        let pem_sized = "k".repeat(4096);
        fs::write(&path, &pem_sized).unwrap();
        assert_eq!(load(&path).unwrap(), pem_sized.as_bytes());
        let limit = MAX_SECRET_FILE_LEN as usize;
        // Any text works as a secret; surrounding whitespace is not part of it.
        let mut content = vec![b'k'; limit - 1];
        content.push(b'\n');
        fs::write(&path, &content).unwrap();
        assert_eq!(load(&path).unwrap().len(), limit - 1);
        content.push(b'\n');
        fs::write(&path, &content).unwrap();
        assert!(matches!(load(&path), Err(SecretError::TooLong(_))));
    }

    #[test]
    fn a_secret_of_exactly_the_minimum_length_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let minimum = "m".repeat(MIN_SECRET_LEN);
        // Surrounding whitespace does not count towards the length.
        fs::write(&path, format!("  {minimum}\n")).unwrap();
        assert_eq!(load(&path).unwrap(), minimum.as_bytes());
        fs::write(&path, format!("{}\n", &minimum[1..])).unwrap();
        assert!(matches!(load(&path), Err(SecretError::TooShort(_))));
    }

    #[test]
    fn a_named_secret_under_a_regular_file_has_no_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, "not a directory").unwrap();
        assert!(matches!(
            require_existing_directory(&file.join("secret")),
            Err(SecretError::NoDirectory(_))
        ));
        assert!(require_existing_directory(&dir.path().join("secret")).is_ok());
    }
}
