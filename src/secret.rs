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
    /// The server's secret file is owned by a user other than the server's (effective) user
    /// and root: that user could choose the secret and so run commands as the server's user.
    NotOwned {
        path: PathBuf,
        owner: u32,
        euid: u32,
    },
    /// A directory the server's secret file is reached through is owned by a user other than
    /// the server's user and root, who could put another secret in its place.
    DirectoryNotOwned {
        path: PathBuf,
        directory: PathBuf,
        owner: u32,
        euid: u32,
    },
    /// A directory the server's secret file is reached through can be written by its group
    /// or by everyone and has no sticky bit: they could put another secret in its place.
    DirectoryOpenToOthers {
        path: PathBuf,
        directory: PathBuf,
        mode: u32,
    },
    /// `keygen --force` was given a symbolic link: it neither follows it (writing to whatever
    /// it points to) nor replaces it.
    SymbolicLink {
        path: PathBuf,
        target: Option<PathBuf>,
    },
    /// `keygen --force` could not give the new file the replaced file's owner and group.
    CannotKeepOwner {
        path: PathBuf,
        uid: u32,
        gid: u32,
        error: io::Error,
    },
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
            SecretError::NotOwned { path, owner, euid } => write!(
                f,
                "secret file {} is owned by uid {owner}, not by this user (uid {euid}) or root: \
                 whoever owns it can choose the secret and run commands as this user; run: \
                 chown {euid} {}, then make a new secret with `rcmd keygen --force`, as its \
                 owner may know this one",
                path.display(),
                quoted_if_needed(path)
            ),
            SecretError::DirectoryNotOwned {
                path,
                directory,
                owner,
                euid,
            } => write!(
                f,
                "secret file {}: the directory {} is owned by uid {owner}, not by this user \
                 (uid {euid}) or root: whoever owns it can put another secret in its place and \
                 run commands as this user; keep the secret in directories of this user's or \
                 root's",
                path.display(),
                directory.display()
            ),
            SecretError::DirectoryOpenToOthers {
                path,
                directory,
                mode,
            } => write!(
                f,
                "secret file {}: the directory {} (mode {:o}) can be changed by users other \
                 than its owner and has no sticky bit: they could put another secret in its \
                 place and run commands as this user; run: chmod go-w {}",
                path.display(),
                directory.display(),
                mode & 0o7777,
                quoted_if_needed(directory)
            ),
            SecretError::SymbolicLink { path, target } => {
                write!(f, "{} is a symbolic link", path.display())?;
                if let Some(target) = target {
                    write!(f, " (to {})", target.display())?;
                }
                write!(
                    f,
                    "; run keygen on the file itself (keygen --force replaces a file with a new \
                     one, and would neither write through a link nor replace it)"
                )
            }
            SecretError::CannotKeepOwner {
                path,
                uid,
                gid,
                error,
            } => write!(
                f,
                "cannot give the new secret file the owner and group of {} (uid {uid}, gid \
                 {gid}): {error}; nothing was changed: run keygen as root, or as the file's \
                 owner and a member of its group",
                path.display()
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
/// only gets the warning: a service's group may be meant to read it.) So is a file owned by
/// anyone but the server's (effective) user or root, or one reached through a directory they
/// do not own or that others can write (without the sticky bit of `/tmp`), as `sshd`'s
/// `StrictModes` refuses them: whoever can change the file or its directories chooses the
/// secret. It must be a regular file: the server reads it again on SIGHUP, on its event loop,
/// where a FIFO waiting for a writer would stop every connection.
///
/// # Errors
/// As [`load`], and [`SecretError::OpenToOthers`], [`SecretError::NotAFile`],
/// [`SecretError::NotOwned`], [`SecretError::DirectoryNotOwned`],
/// [`SecretError::DirectoryOpenToOthers`].
pub fn load_for_server(path: &Path) -> Result<Vec<u8>, SecretError> {
    load_checked(path, open_without_waiting, |meta| {
        if !meta.is_file() {
            return Err(SecretError::NotAFile(path.to_path_buf()));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::{MetadataExt, PermissionsExt};
            if meta.permissions().mode() & 0o026 != 0 {
                return Err(SecretError::OpenToOthers(path.to_path_buf()));
            }
            // SAFETY: geteuid cannot fail and touches no memory.
            let euid = unsafe { libc::geteuid() };
            if meta.uid() != euid && meta.uid() != 0 {
                return Err(SecretError::NotOwned {
                    path: path.to_path_buf(),
                    owner: meta.uid(),
                    euid,
                });
            }
            check_directories(path, euid)?;
        }
        Ok(())
    })
}

/// Checks every directory the secret file at `path` is reached through, both as named (a
/// symbolic link in the way could be replaced by whoever can write its directory) and as
/// resolved (where the file really is): each must be owned by `euid` or root, and not be
/// writable by everyone, or by a group other than its owner's private one
/// ([`group_is_private_to`]), unless it has the sticky bit (`/tmp`, where others may create
/// files but not rename or remove ours). A symbolic link on the way must be owned by `euid` or
/// root too, since its owner can point it elsewhere.
#[cfg(unix)]
fn check_directories(path: &Path, euid: u32) -> Result<(), SecretError> {
    use std::os::unix::fs::MetadataExt;
    let io_error = |e| SecretError::Io(path.to_path_buf(), e);
    let named = std::path::absolute(path).map_err(io_error)?;
    let resolved = fs::canonicalize(path).map_err(io_error)?;
    // A symbolic link on the way, as named, can be pointed elsewhere by whoever owns it.
    for step in named.ancestors() {
        if let Ok(link) = fs::symlink_metadata(step)
            && link.file_type().is_symlink()
            && link.uid() != euid
            && link.uid() != 0
        {
            return Err(SecretError::DirectoryNotOwned {
                path: path.to_path_buf(),
                directory: step.to_path_buf(),
                owner: link.uid(),
                euid,
            });
        }
    }
    let mut checked: Vec<&Path> = Vec::new();
    for directory in named
        .ancestors()
        .skip(1)
        .chain(resolved.ancestors().skip(1))
    {
        if directory.as_os_str().is_empty() || checked.contains(&directory) {
            continue;
        }
        let meta = fs::metadata(directory).map_err(|e| {
            let why = format!("cannot check its directory {}: {e}", directory.display());
            io_error(io::Error::new(e.kind(), why))
        })?;
        if meta.uid() != euid && meta.uid() != 0 {
            return Err(SecretError::DirectoryNotOwned {
                path: path.to_path_buf(),
                directory: directory.to_path_buf(),
                owner: meta.uid(),
                euid,
            });
        }
        let others_can_write = meta.mode() & 0o002 != 0
            || (meta.mode() & 0o020 != 0 && !group_is_private_to(meta.gid(), meta.uid()));
        if others_can_write && meta.mode() & 0o1000 == 0 {
            return Err(SecretError::DirectoryOpenToOthers {
                path: path.to_path_buf(),
                directory: directory.to_path_buf(),
                mode: meta.mode(),
            });
        }
        checked.push(directory);
    }
    Ok(())
}

/// Whether group `gid` is the private group of user `uid`, as the user-private-group scheme
/// makes one for every user (with umask 002, so that their directories are group-writable):
/// named after the user, and with no member listed but the user. Group write on a directory
/// of such a group lets nobody else in, so it is accepted, as Debian's sshd accepts it.
/// (Debian also checks that no other user has the group as primary group, which needs the
/// whole user database; the name stands in for that here.)
#[cfg(unix)]
fn group_is_private_to(gid: u32, uid: u32) -> bool {
    let (Some(user), Some((group, members))) = (user_name(uid), group_name_and_members(gid)) else {
        return false;
    };
    group == user && members.iter().all(|member| *member == user)
}

/// Calls a `get*_r` lookup with a buffer that grows while the entry does not fit (ERANGE), up
/// to 1 MiB. `lookup` returns the function's result code; it reads what it found itself.
#[cfg(unix)]
fn lookup_with_growing_buffer(mut lookup: impl FnMut(&mut Vec<libc::c_char>) -> libc::c_int) {
    let mut buffer = vec![0 as libc::c_char; 1024];
    while lookup(&mut buffer) == libc::ERANGE && buffer.len() < 1 << 20 {
        let grown = buffer.len() * 2;
        buffer.resize(grown, 0);
    }
}

/// The name of user `uid`, from the user database.
#[cfg(unix)]
fn user_name(uid: u32) -> Option<String> {
    // SAFETY: zeroed is a valid `passwd` (null pointers), filled in by getpwuid_r.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let mut name = None;
    lookup_with_growing_buffer(|buffer| {
        // SAFETY: every pointer is valid for the call; strings land in `buffer`.
        let code = unsafe {
            libc::getpwuid_r(
                uid,
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        if code == 0 && !found.is_null() {
            // SAFETY: on success pw_name is a NUL-terminated string in `buffer`.
            name = Some(
                unsafe { std::ffi::CStr::from_ptr(entry.pw_name) }
                    .to_bytes()
                    .to_vec(),
            );
        }
        code
    });
    name.and_then(|name| String::from_utf8(name).ok())
}

/// The name of group `gid` and the user names it lists as members, from the group database.
#[cfg(unix)]
fn group_name_and_members(gid: u32) -> Option<(String, Vec<String>)> {
    // SAFETY: zeroed is a valid `group` (null pointers), filled in by getgrgid_r.
    let mut entry: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    let mut result = None;
    lookup_with_growing_buffer(|buffer| {
        // SAFETY: every pointer is valid for the call; strings land in `buffer`.
        let code = unsafe {
            libc::getgrgid_r(
                gid,
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut found,
            )
        };
        if code == 0 && !found.is_null() {
            let text = |ptr: *const libc::c_char| {
                // SAFETY: on success the name and each member are NUL-terminated strings
                // in `buffer`, and gr_mem is a null-terminated array of them.
                String::from_utf8_lossy(unsafe { std::ffi::CStr::from_ptr(ptr) }.to_bytes())
                    .into_owned()
            };
            let mut members = Vec::new();
            let mut member = entry.gr_mem;
            // SAFETY: gr_mem is a null-terminated array of string pointers in `buffer`.
            unsafe {
                while !member.is_null() && !(*member).is_null() {
                    members.push(text(*member));
                    member = member.add(1);
                }
            }
            result = Some((text(entry.gr_name), members));
        }
        code
    });
    result
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

/// Writes a new random secret (32 bytes from the OS, as hex) to `path`, readable by its owner
/// only. Creates the parent directory (owner-only) if needed.
///
/// A new file is created exclusively. On Unix an existing one (`overwrite`) is not written in
/// place but replaced: the new secret goes to a new file next to it, which is then renamed
/// over it, so whoever still has the old file open (it was readable to them once) keeps
/// reading the old secret, never the new one. The new file gets the old one's owner and group
/// and its group read access (see `replace`). On Windows it is written in place, to keep the
/// file's own ACL (see `overwrite_in_place`). A symbolic link is refused, neither followed
/// (which would overwrite whatever it points to) nor replaced.
///
/// # Errors
/// [`SecretError::Exists`] if the file exists and `overwrite` is false;
/// [`SecretError::SymbolicLink`] if `path` is one and `overwrite` is true;
/// [`SecretError::CannotKeepOwner`]; I/O errors otherwise.
pub fn generate(path: &Path, overwrite: bool) -> Result<(), SecretError> {
    let io_error = |e| SecretError::Io(path.to_path_buf(), e);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent).map_err(io_error)?;
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let content = format!("{}\n", to_hex(&bytes));
    // A directory is no secret file, --force or not: say so, rather than "use --force".
    let a_directory = || io_error(io::Error::other("it is a directory; name a file"));
    if overwrite {
        let previous = match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(SecretError::SymbolicLink {
                    path: path.to_path_buf(),
                    target: fs::read_link(path).ok(),
                });
            }
            Ok(meta) if meta.is_dir() => return Err(a_directory()),
            Ok(meta) if !meta.is_file() => {
                // Renaming over a device or a FIFO (`--secret-file /dev/null` as root) would
                // replace it; writing into it, as before, would not write a secret anywhere.
                return Err(io_error(io::Error::other(
                    "it is not a regular file (a FIFO or a device); name a file",
                )));
            }
            Ok(meta) => Some(meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_error(e)),
        };
        #[cfg(unix)]
        return replace(path, content.as_bytes(), previous.as_ref());
        #[cfg(not(unix))]
        {
            // The file's metadata matters only to `replace` (owner, group, mode).
            let _ = previous;
            return overwrite_in_place(path, content.as_bytes());
        }
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        _ if path.is_dir() => a_directory(),
        io::ErrorKind::AlreadyExists => SecretError::Exists(path.to_path_buf()),
        _ => io_error(e),
    })?;
    #[cfg(unix)]
    {
        // `mode` is narrowed by the umask; owner read and write is what is wanted.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(io_error)?;
    }
    file.write_all(content.as_bytes()).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

/// Replaces the file at `path` (described by `previous`, its `lstat`, if there is one) with a
/// new file holding `content`: written to a new file of a random name in the same directory,
/// synced, renamed over `path` (atomic: a reader sees the old file or the new one), and the
/// directory synced. The new file is removed again on any failure.
///
/// On Unix the new file is mode `0600` plus the old file's group read bit, so a secret set up
/// as `root:rcmd 0640` for a service's group stays readable by that service and rotating it
/// does not lock the service out; anything more is taken away. It gets the old file's owner,
/// and its group when that group may read it (root can give it any; an owner can give it a
/// group it is in).
#[cfg(unix)]
fn replace(
    path: &Path,
    content: &[u8],
    previous: Option<&fs::Metadata>,
) -> Result<(), SecretError> {
    let io_error = |e| SecretError::Io(path.to_path_buf(), e);
    let directory = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (mut file, temporary) = create_temporary_next_to(path).map_err(|e| {
        io_error(io::Error::new(
            e.kind(),
            format!(
                "cannot create a new file in {} to replace it with: {e}",
                directory.display()
            ),
        ))
    })?;
    let prepared = prepare_replacement(&mut file, path, content, previous);
    // Closed before the rename: all of it is written and synced.
    drop(file);
    // On an early return, dropping `temporary` removes the new file.
    prepared?;
    fs::rename(&temporary.path, path).map_err(io_error)?;
    temporary.keep();
    sync_directory(directory).map_err(|e| {
        io_error(io::Error::new(
            e.kind(),
            format!("the new secret is in place, but syncing its directory failed: {e}"),
        ))
    })
}

/// Gives the new file of [`replace`] its mode and owner, then `content`, synced.
#[cfg(unix)]
fn prepare_replacement(
    file: &mut fs::File,
    path: &Path,
    content: &[u8],
    previous: Option<&fs::Metadata>,
) -> Result<(), SecretError> {
    let io_error = |e| SecretError::Io(path.to_path_buf(), e);
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // The mode first, while the file is still ours to change.
        let kept = previous.map_or(0, |meta| meta.mode() & 0o040);
        file.set_permissions(fs::Permissions::from_mode(0o600 | kept))
            .map_err(io_error)?;
        if let Some(meta) = previous {
            let ours = file.metadata().map_err(io_error)?;
            // The group matters only if it may read the secret: a file whose group was never
            // given access (`install -o user` leaves it root's) keeps the new file's own group,
            // which its owner could not change it from.
            let wanted_gid = if kept != 0 { meta.gid() } else { ours.gid() };
            if (ours.uid(), ours.gid()) != (meta.uid(), wanted_gid) {
                std::os::unix::fs::fchown(&*file, Some(meta.uid()), Some(wanted_gid)).map_err(
                    |error| SecretError::CannotKeepOwner {
                        path: path.to_path_buf(),
                        uid: meta.uid(),
                        gid: wanted_gid,
                        error,
                    },
                )?;
            }
        }
    }
    file.write_all(content).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

/// Windows: the new secret is written into the existing file. A new file renamed into place
/// would take its directory's inherited ACL instead of the file's own, and an administrator
/// may have narrowed the file's (under `ProgramData`, whose inherited ACL lets every user
/// read, that would widen who can read the secret). Whoever has the file open can read the
/// new secret through it, which on Windows the file's ACL decided when they opened it.
#[cfg(not(unix))]
fn overwrite_in_place(path: &Path, content: &[u8]) -> Result<(), SecretError> {
    let io_error = |e| SecretError::Io(path.to_path_buf(), e);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io_error)?;
    file.write_all(content).map_err(io_error)?;
    file.sync_all().map_err(io_error)
}

/// A file to be removed when this is dropped, unless [`Self::keep`] says otherwise.
#[cfg(unix)]
struct Temporary {
    path: PathBuf,
    remove: bool,
}

#[cfg(unix)]
impl Temporary {
    /// The file stays: it has been renamed into place.
    fn keep(mut self) {
        self.remove = false;
    }
}

#[cfg(unix)]
impl Drop for Temporary {
    fn drop(&mut self) {
        if self.remove {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Creates a new file (exclusively, owner-only) of a random name, `.NAME.HEX.tmp`, in the
/// directory of `path`.
#[cfg(unix)]
fn create_temporary_next_to(path: &Path) -> io::Result<(fs::File, Temporary)> {
    let name = path
        .file_name()
        .unwrap_or_else(|| std::ffi::OsStr::new("secret"));
    let mut attempts = 0;
    loop {
        let mut random = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut random);
        let mut temporary_name = std::ffi::OsString::from(".");
        temporary_name.push(name);
        temporary_name.push(format!(".{}.tmp", to_hex(&random)));
        let temporary = match path.parent() {
            Some(dir) => dir.join(&temporary_name),
            None => PathBuf::from(&temporary_name),
        };
        let mut options = fs::OpenOptions::new();
        // `create_new` is O_CREAT|O_EXCL, which follows no symbolic link.
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(&temporary) {
            Ok(file) => {
                let temporary = Temporary {
                    path: temporary,
                    remove: true,
                };
                return Ok((file, temporary));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 10 => {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Makes a rename in `directory` durable, where the file system can sync a directory.
#[cfg(unix)]
fn sync_directory(directory: &Path) -> io::Result<()> {
    match fs::File::open(directory).and_then(|dir| dir.sync_all()) {
        Err(e)
            if e.kind() != io::ErrorKind::InvalidInput
                && e.kind() != io::ErrorKind::Unsupported =>
        {
            Err(e)
        }
        _ => Ok(()),
    }
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
        generate(&dir.path().join("new"), false).unwrap();
        assert_eq!(load(&dir.path().join("new")).unwrap().len(), 64);
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

    /// A new secret in a new directory `name` of a temporary one: (the temporary directory,
    /// the new directory, the secret's path).
    #[cfg(unix)]
    fn secret_in_a_new_directory(name: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join(name);
        fs::create_dir(&dir).unwrap();
        let path = dir.join("secret");
        generate(&path, false).unwrap();
        (top, dir, path)
    }

    /// The names in `dir`, sorted.
    #[cfg(unix)]
    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Whether this process runs as root, which alone can give files to other users.
    #[cfg(unix)]
    fn running_as_root(test: &str) -> bool {
        // SAFETY: geteuid cannot fail and touches no memory.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("note: {test} skipped: only root can give a file to another user");
        }
        root
    }

    /// `nobody`, the other user of these tests.
    #[cfg(unix)]
    const NOBODY: u32 = 65534;

    /// Whoever had the old secret file open (while it was readable to them, or before they left
    /// the service's group) must not read the new secret through it: rotation replaces the file
    /// rather than writing into it. (Unix only: on Windows rotation writes into the file, to
    /// keep its own ACL; see `overwrite_in_place`.)
    #[cfg(unix)]
    #[test]
    fn rotation_leaves_a_descriptor_on_the_old_file_reading_the_old_secret() {
        use std::io::{Seek, SeekFrom};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        generate(&path, false).unwrap();
        let old = fs::read(&path).unwrap();
        let mut reader = fs::File::open(&path).unwrap();
        generate(&path, true).unwrap();
        let new = fs::read(&path).unwrap();
        assert_ne!(new, old);
        reader.seek(SeekFrom::Start(0)).unwrap();
        let mut through_old_descriptor = Vec::new();
        reader.read_to_end(&mut through_old_descriptor).unwrap();
        assert_eq!(
            through_old_descriptor, old,
            "the old descriptor sees the new secret"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            assert_ne!(
                reader.metadata().unwrap().ino(),
                fs::metadata(&path).unwrap().ino(),
                "the file was written in place"
            );
        }
        assert_eq!(names_in(dir.path()), ["secret"]);
    }

    /// `keygen --force` on a symbolic link neither overwrites what it points to (any file, when
    /// run as root) nor replaces the link.
    #[cfg(unix)]
    #[test]
    fn rotation_refuses_a_symbolic_link_and_leaves_it_and_its_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("not-a-secret");
        fs::write(&target, "precious\n").unwrap();
        let link = dir.path().join("secret");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = generate(&link, true).unwrap_err();
        assert!(
            matches!(&error, SecretError::SymbolicLink { target: Some(t), .. } if *t == target),
            "{error:?}"
        );
        // Its message: tests/secret_files.rs `keygen_force_refuses_a_symbolic_link`.
        assert_eq!(fs::read_link(&link).unwrap(), target);
        assert_eq!(fs::read_to_string(&target).unwrap(), "precious\n");
        assert_eq!(names_in(dir.path()), ["not-a-secret", "secret"]);
        // Without --force it is an existing file, as before.
        assert!(matches!(
            generate(&link, false),
            Err(SecretError::Exists(_))
        ));
    }

    /// The new file of a rotation keeps the old one's owner and group, so a service that reads
    /// a `root:rcmd 0640` secret (or owns its secret) is not locked out by root rotating it.
    #[cfg(unix)]
    #[test]
    fn rotation_by_root_keeps_the_owner_and_group() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if !running_as_root("rotation_by_root_keeps_the_owner_and_group") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        generate(&path, false).unwrap();
        let old = fs::read(&path).unwrap();
        std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        generate(&path, true).unwrap();
        let meta = fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY));
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_ne!(fs::read(&path).unwrap(), old);
        assert_eq!(names_in(dir.path()), ["secret"]);
    }

    /// A file owned by another user (even `0600`) lets that user choose the secret, and so run
    /// commands as the server's user: refused, as `sshd`'s `StrictModes` refuses it.
    #[cfg(unix)]
    #[test]
    fn a_server_refuses_a_secret_owned_by_another_user() {
        if !running_as_root("a_server_refuses_a_secret_owned_by_another_user") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        generate(&path, false).unwrap();
        std::os::unix::fs::chown(&path, Some(NOBODY), None).unwrap();
        let error = load_for_server(&path).unwrap_err();
        assert!(
            matches!(
                error,
                SecretError::NotOwned {
                    owner: NOBODY,
                    euid: 0,
                    ..
                }
            ),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains(&format!(
                "{} is owned by uid {NOBODY}, not by this user (uid 0) or root",
                path.display()
            )) && message.contains("run: chown 0 "),
            "{message}"
        );
        // A client's reading is not the server's: it takes the file.
        assert!(load(&path).is_ok());
        // Its own, or root's, is taken.
        std::os::unix::fs::chown(&path, Some(0), None).unwrap();
        assert!(load_for_server(&path).is_ok());
    }

    /// A symbolic link on the way to the secret, owned by another user, is refused: its owner
    /// could point it at a directory of their own.
    #[cfg(unix)]
    #[test]
    fn a_server_refuses_a_secret_reached_through_another_users_link() {
        if !running_as_root("a_server_refuses_a_secret_reached_through_another_users_link") {
            return;
        }
        let (top, real, _) = secret_in_a_new_directory("real");
        let link = top.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(load_for_server(&link.join("secret")).is_ok());
        std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();
        assert!(matches!(
            load_for_server(&link.join("secret")),
            Err(SecretError::DirectoryNotOwned { directory, owner: NOBODY, .. }) if directory == link
        ));
    }

    /// A directory whose group is its owner's private group (user private groups, with umask
    /// 002: named after the user, no other member) may be group-writable, as Debian's sshd
    /// allows: nobody else is in that group. Root's group `root` is such a group here; `nogroup`
    /// is nobody's private group, not root's.
    #[cfg(unix)]
    #[test]
    fn a_group_writable_directory_of_the_owners_private_group_is_accepted() {
        use std::os::unix::fs::PermissionsExt;
        if !running_as_root("a_group_writable_directory_of_the_owners_private_group_is_accepted") {
            return;
        }
        let (_top, dir, path) = secret_in_a_new_directory("home");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o775)).unwrap();
        assert!(
            group_is_private_to(0, 0),
            "root's group is not private to it here"
        );
        std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
        assert!(load_for_server(&path).is_ok());
        std::os::unix::fs::chown(&dir, Some(0), Some(NOBODY)).unwrap();
        assert!(matches!(
            load_for_server(&path),
            Err(SecretError::DirectoryOpenToOthers { .. })
        ));
    }

    /// Whoever can change a directory on the way to the secret file can put another secret in
    /// its place: a directory that its group or everyone can write is refused unless it has
    /// the sticky bit (`/tmp`), and so is one owned by another user.
    #[cfg(unix)]
    #[test]
    fn a_server_refuses_a_secret_in_a_directory_others_can_change() {
        use std::os::unix::fs::PermissionsExt;
        let (top, dir, path) = secret_in_a_new_directory("dir");
        let chmod = |dir: &Path, mode| {
            fs::set_permissions(dir, fs::Permissions::from_mode(mode)).unwrap();
        };
        // Group write is refused only for a group that is not the owner's private one (see
        // the next test): as root, give the directory a group that is not.
        if running_as_root("the group-writable cases") {
            std::os::unix::fs::chown(&dir, None, Some(NOBODY)).unwrap();
        }
        let group_is_shared = {
            use std::os::unix::fs::MetadataExt;
            let meta = fs::metadata(&dir).unwrap();
            !group_is_private_to(meta.gid(), meta.uid())
        };
        for (mode, refused) in [
            (0o777, true),
            (0o770, group_is_shared),
            (0o702, true),
            (0o1777, false),
            (0o1770, false),
            (0o755, false),
            (0o700, false),
        ] {
            chmod(&dir, mode);
            let result = load_for_server(&path);
            if refused {
                let error = result.unwrap_err();
                assert!(
                    matches!(&error, SecretError::DirectoryOpenToOthers { directory, .. }
                        if *directory == dir),
                    "{mode:o}: {error:?}"
                );
                let message = error.to_string();
                assert!(
                    message.contains(&format!(
                        "the directory {} (mode {mode:o}) can be changed by users other than \
                         its owner",
                        dir.display()
                    )) && message.contains("chmod go-w"),
                    "{message}"
                );
            } else {
                assert!(result.is_ok(), "{mode:o}: {result:?}");
            }
        }
        // Every directory on the way counts, not only the file's own.
        chmod(&dir, 0o700);
        chmod(top.path(), 0o777);
        assert!(matches!(
            load_for_server(&path),
            Err(SecretError::DirectoryOpenToOthers { directory, .. }) if directory == top.path()
        ));
        chmod(top.path(), 0o700);
        assert!(load_for_server(&path).is_ok());
        // A directory reached through a symbolic link that others could replace.
        let open = top.path().join("open");
        fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        let link = open.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(
            load_for_server(&link.join("secret")),
            Err(SecretError::DirectoryOpenToOthers { directory, .. }) if directory == open
        ));
        // The client is not this strict.
        assert!(load(&link.join("secret")).is_ok());
    }

    /// A directory owned by another user on the way to the secret is theirs to change.
    #[cfg(unix)]
    #[test]
    fn a_server_refuses_a_secret_in_a_directory_of_another_user() {
        if !running_as_root("a_server_refuses_a_secret_in_a_directory_of_another_user") {
            return;
        }
        let (_top, dir, path) = secret_in_a_new_directory("theirs");
        std::os::unix::fs::chown(&dir, Some(NOBODY), None).unwrap();
        let error = load_for_server(&path).unwrap_err();
        assert!(
            matches!(&error, SecretError::DirectoryNotOwned { directory, owner: NOBODY, .. }
                if *directory == dir),
            "{error:?}"
        );
        assert!(
            error.to_string().contains(&format!(
                "the directory {} is owned by uid {NOBODY}, not by this user (uid 0) or root",
                dir.display()
            )),
            "{error}"
        );
        std::os::unix::fs::chown(&dir, Some(0), None).unwrap();
        assert!(load_for_server(&path).is_ok());
    }

    /// `--force` makes a secret where there is none yet (as without it), and will not replace
    /// a FIFO (or a device) with one: it says so and leaves it where it was.
    #[cfg(unix)]
    #[test]
    fn rotation_creates_a_missing_file_and_refuses_a_fifo() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        generate(&path, true).unwrap();
        assert_eq!(load(&path).unwrap().len(), 64);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let fifo = dir.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let error = generate(&fifo, true).unwrap_err().to_string();
        assert!(
            error.ends_with("it is not a regular file (a FIFO or a device); name a file"),
            "{error}"
        );
        assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        assert_eq!(names_in(dir.path()), ["fifo", "secret"]);
    }

    /// A uid or gid missing from the user or group database (a container's arbitrary uid) has
    /// no name and so no private group: the lookups say so, and read nothing from an entry
    /// they did not get.
    #[cfg(unix)]
    #[test]
    fn an_id_without_a_name_has_no_private_group() {
        const UNKNOWN: u32 = 3_999_999_999;
        assert_eq!(user_name(UNKNOWN), None);
        assert_eq!(group_name_and_members(UNKNOWN), None);
        assert!(!group_is_private_to(UNKNOWN, 0));
        assert!(!group_is_private_to(0, UNKNOWN));
    }

    /// An entry that does not fit (a group with many members) is looked up again in a buffer
    /// twice as large, up to 1 MiB, and not again once it fits.
    #[cfg(unix)]
    #[test]
    fn the_lookup_buffer_doubles_while_the_entry_does_not_fit_up_to_a_mebibyte() {
        let sizes_until_it_fits_in = |fits: usize| {
            let mut sizes = Vec::new();
            lookup_with_growing_buffer(|buffer| {
                sizes.push(buffer.len());
                assert!(sizes.len() <= 20, "no end to the lookups: {sizes:?}");
                if buffer.len() >= fits {
                    0
                } else {
                    libc::ERANGE
                }
            });
            sizes
        };
        assert_eq!(sizes_until_it_fits_in(0), [1024]);
        assert_eq!(sizes_until_it_fits_in(3000), [1024, 2048, 4096]);
        // Never fits: tried in 1 KiB, 2 KiB, ... 1 MiB, then given up.
        let sizes = sizes_until_it_fits_in(usize::MAX);
        assert_eq!(
            sizes,
            (10..=20).map(|bits| 1 << bits).collect::<Vec<usize>>()
        );
    }
}
