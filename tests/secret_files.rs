//! The secret file as the binary handles it: `rcmd keygen --force` replaces the file rather than
//! writing into it (and will not touch a symbolic link), and `rcmd serve` refuses a secret file
//! that another user could change, as sshd's `StrictModes` refuses such key files.
#![cfg(unix)]

mod util;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use util::*;

const WAIT: Duration = Duration::from_secs(20);

/// `nobody`, the other user of these tests.
const NOBODY: u32 = 65534;

/// Whether this process runs as root, which alone can give files to other users and run
/// programs as them; if not, says that `test` is skipped.
fn running_as_root(test: &str) -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("note: {test} skipped: it needs root, to act as another user");
    }
    root
}

fn keygen_force(secret: &Path) -> Command {
    let mut command = Command::new(rcmd_bin());
    command
        .args(["keygen", "--force", "--secret-file"])
        .arg(secret)
        .stdin(Stdio::null());
    command
}

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A server whose secret file belongs to another user, who could choose the secret and run
/// commands as the server's user (here root), refuses to start.
#[test]
fn serve_refuses_a_secret_file_owned_by_another_user() {
    if !running_as_root("serve_refuses_a_secret_file_owned_by_another_user") {
        return;
    }
    let secret = SecretFile::new();
    std::os::unix::fs::chown(&secret.path, Some(NOBODY), None).unwrap();
    let mut command = Command::new(rcmd_bin());
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--secret-file"])
        .arg(&secret.path)
        .stdin(Stdio::null());
    // The old code started serving, and this timed out.
    let output = output_within(command, WAIT);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is owned by uid {NOBODY}, not by this user (uid 0) or root: whoever owns it can \
             choose the secret and run commands as this user; run: chown 0 ",
            secret.path.display()
        )),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "it listened");
}

/// `keygen --force` on a symbolic link exits 1 and says so; the link and the file it points
/// to stay as they were.
#[test]
fn keygen_force_refuses_a_symbolic_link() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("precious");
    fs::write(&target, "not a secret\n").unwrap();
    let link = dir.path().join("secret");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let output = output_within(keygen_force(&link), WAIT);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} is a symbolic link (to {}); run keygen on the file itself",
            link.display(),
            target.display()
        )),
        "{stderr}"
    );
    assert_eq!(fs::read_link(&link).unwrap(), target);
    assert_eq!(fs::read_to_string(&target).unwrap(), "not a secret\n");
    assert_eq!(names_in(dir.path()), ["precious", "secret"]);
}

/// A path to the binary that `nobody` can run: the built one if it can, else a copy in a
/// directory it can reach (the build may be under a home directory only root can enter).
fn binary_for_nobody(scratch: &Path) -> Option<PathBuf> {
    let runs = |binary: &Path| {
        Command::new(binary)
            .arg("--version")
            .uid(NOBODY)
            .gid(NOBODY)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    let built = PathBuf::from(rcmd_bin());
    if runs(&built) {
        return Some(built);
    }
    let copy = scratch.join("rcmd");
    fs::copy(&built, &copy).ok()?;
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).ok()?;
    runs(&copy).then_some(copy)
}

/// A secret file rotated by `nobody`, in a directory of nobody's: what the file held before,
/// and where it is.
struct RotatedByNobody {
    _top: tempfile::TempDir,
    dir: PathBuf,
    path: PathBuf,
    old: &'static str,
    output: Output,
}

/// Runs `keygen --force` as `nobody` on a secret file made with `mode`, `owner` and `group`,
/// in a directory of `dir_owner`'s with `dir_mode`. `None` (with a note) unless running as
/// root, which alone can set this up, and `nobody` can run the binary.
fn keygen_force_as_nobody(
    test: &str,
    (mode, owner, group): (u32, u32, u32),
    (dir_owner, dir_mode): (u32, u32),
) -> Option<RotatedByNobody> {
    if !running_as_root(test) {
        return None;
    }
    let top = tempfile::tempdir().unwrap();
    fs::set_permissions(top.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let Some(binary) = binary_for_nobody(top.path()) else {
        eprintln!("note: {test} skipped: user {NOBODY} cannot run the binary");
        return None;
    };
    let dir = top.path().join("dir");
    fs::create_dir(&dir).unwrap();
    let path = dir.join("secret");
    let old = "the old secret, 32 bytes or more long\n";
    fs::write(&path, old).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    std::os::unix::fs::chown(&path, Some(owner), Some(group)).unwrap();
    std::os::unix::fs::chown(&dir, Some(dir_owner), Some(dir_owner)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(dir_mode)).unwrap();
    let mut command = Command::new(binary);
    command
        .args(["keygen", "--force", "--secret-file"])
        .arg(&path)
        .uid(NOBODY)
        .gid(NOBODY)
        .env_remove("RCMD_SECRET_FILE")
        .stdin(Stdio::null());
    let output = output_within(command, WAIT);
    Some(RotatedByNobody {
        _top: top,
        dir,
        path,
        old,
        output,
    })
}

/// A user rotating a secret file that is not theirs, in a directory that is: the new file
/// cannot be given the old one's owner, so nothing changes, the message says why, and the new
/// file is removed again.
#[test]
fn keygen_force_that_cannot_keep_the_owner_changes_nothing_and_leaves_no_file() {
    // Readable and writable by nobody (so it could be rotated in place), owned by root.
    let Some(rotated) = keygen_force_as_nobody(
        "keygen_force_that_cannot_keep_the_owner_changes_nothing_and_leaves_no_file",
        (0o666, 0, 0),
        (NOBODY, 0o755),
    ) else {
        return;
    };
    let stderr = stderr_of(&rotated.output);
    assert_eq!(rotated.output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot give the new secret file the owner and group of {} (uid 0, gid 0)",
            rotated.path.display()
        )) && stderr.contains("nothing was changed"),
        "{stderr}"
    );
    assert_eq!(fs::read_to_string(&rotated.path).unwrap(), rotated.old);
    let meta = fs::metadata(&rotated.path).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o666));
    assert_eq!(names_in(&rotated.dir), ["secret"]);
}

/// A user's own secret file whose group is not one of theirs (`install -o user` leaves it
/// root's) and may not read it: rotating it keeps the owner and gives the new file the user's
/// own group, rather than failing because that group cannot be kept.
#[test]
fn keygen_force_by_the_owner_does_not_need_a_group_that_cannot_read() {
    let Some(rotated) = keygen_force_as_nobody(
        "keygen_force_by_the_owner_does_not_need_a_group_that_cannot_read",
        (0o600, NOBODY, 0),
        (NOBODY, 0o755),
    ) else {
        return;
    };
    let output = &rotated.output;
    assert_eq!(output.status.code(), Some(0), "{}", stderr_of(output));
    let meta = fs::metadata(&rotated.path).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (NOBODY, NOBODY, 0o600)
    );
    assert_ne!(fs::read_to_string(&rotated.path).unwrap(), rotated.old);
    assert_eq!(names_in(&rotated.dir), ["secret"]);
}

/// A user's own secret file in a directory they cannot write (root's): no new file can be
/// made next to it, so `keygen --force` says so at once and changes nothing.
#[test]
fn keygen_force_in_a_directory_the_user_cannot_write_says_so() {
    let Some(rotated) = keygen_force_as_nobody(
        "keygen_force_in_a_directory_the_user_cannot_write_says_so",
        (0o600, NOBODY, NOBODY),
        (0, 0o755),
    ) else {
        return;
    };
    let stderr = stderr_of(&rotated.output);
    assert_eq!(rotated.output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot create a new file in {} to replace it with: Permission denied",
            rotated.dir.display()
        )),
        "{stderr}"
    );
    assert_eq!(fs::read_to_string(&rotated.path).unwrap(), rotated.old);
    assert_eq!(names_in(&rotated.dir), ["secret"]);
}

/// A directory its user can write but not read (`0300`) cannot be opened to sync the rename:
/// the new secret is in place, and `keygen --force` says that the sync failed.
#[test]
fn keygen_force_reports_a_directory_it_cannot_sync() {
    let Some(rotated) = keygen_force_as_nobody(
        "keygen_force_reports_a_directory_it_cannot_sync",
        (0o600, NOBODY, NOBODY),
        (NOBODY, 0o300),
    ) else {
        return;
    };
    let stderr = stderr_of(&rotated.output);
    assert_eq!(rotated.output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the new secret is in place, but syncing its directory failed"),
        "{stderr}"
    );
    assert_ne!(fs::read_to_string(&rotated.path).unwrap(), rotated.old);
    assert_eq!(names_in(&rotated.dir), ["secret"]);
}

/// `keygen --force` on a bare file name, in the current directory, replaces the file there and
/// syncs that directory (`.`) without complaint.
#[test]
fn keygen_force_on_a_bare_name_replaces_it_in_the_current_directory() {
    let dir = tempfile::tempdir().unwrap();
    let old = "the old secret, 32 bytes or more long\n";
    fs::write(dir.path().join("secret"), old).unwrap();
    let mut command = keygen_force(Path::new("secret"));
    command
        .current_dir(dir.path())
        .env_remove("RCMD_SECRET_FILE");
    let output = output_within(command, WAIT);
    let stderr = stderr_of(&output);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_ne!(fs::read_to_string(dir.path().join("secret")).unwrap(), old);
    assert_eq!(names_in(dir.path()), ["secret"]);
}

/// A server run by an ordinary user (here `nobody`) takes that user's own secret file, in that
/// user's own directory, reached through that user's own symbolic link, under root's
/// directories: they are the server's user's or root's, as they should be. (The other tests
/// run the server as root, whose uid is both.)
#[test]
fn serve_as_an_ordinary_user_takes_its_own_secret_file() {
    let test = "serve_as_an_ordinary_user_takes_its_own_secret_file";
    if !running_as_root(test) {
        return;
    }
    let top = tempfile::tempdir().unwrap();
    fs::set_permissions(top.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let Some(binary) = binary_for_nobody(top.path()) else {
        eprintln!("note: {test} skipped: user {NOBODY} cannot run the binary");
        return;
    };
    let dir = top.path().join("nobodys");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let path = dir.join("secret");
    fs::write(&path, "a secret of nobody's, 32 bytes or more long\n").unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
    let link = top.path().join("link");
    std::os::unix::fs::symlink(&dir, &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(NOBODY), Some(NOBODY)).unwrap();
    for secret in [&path, &link.join("secret")] {
        let mut command = Command::new(&binary);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--secret-file"])
            .arg(secret)
            .uid(NOBODY)
            .gid(NOBODY);
        let (first_line, stderr, _) = first_line_of_server(command);
        assert!(
            first_line.starts_with("listening on "),
            "{}: {first_line:?} {stderr}",
            secret.display()
        );
    }
}

/// What `rcmd serve` does with a secret in a group-writable directory of root's whose group,
/// `root`, lists `members` in this test's own copy of `/etc/group`: the server runs in a mount
/// namespace of its own (`unshare --mount`) with that copy bound over `/etc/group`, so the
/// machine's is never touched. `Some((first line of stdout, stderr, exit code))`, or `None`
/// (with a note) unless running as root where `unshare` may make the namespace.
fn serve_with_root_group_listing(
    test: &str,
    members: &str,
) -> Option<(String, String, Option<i32>)> {
    if !running_as_root(test) {
        return None;
    }
    let namespaces_allowed = Command::new("unshare")
        .args(["--mount", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !namespaces_allowed {
        eprintln!("note: {test} skipped: `unshare --mount` is not allowed here");
        return None;
    }
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("home");
    fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(0), Some(0)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o775)).unwrap();
    let secret = dir.join("secret");
    fs::write(&secret, "a secret of root's, 32 bytes or more long\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let groups: String = fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .map(|line| match line.starts_with("root:") {
            true => format!("root:x:0:{members}\n"),
            false => format!("{line}\n"),
        })
        .collect();
    let group_file = top.path().join("group");
    fs::write(&group_file, groups).unwrap();
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$1" /etc/group && exec "$2" serve --listen 127.0.0.1:0 --secret-file "$3""#)
        .arg("sh")
        .arg(&group_file)
        .arg(rcmd_bin())
        .arg(&secret);
    Some(first_line_of_server(command))
}

/// Starts `command`, a server, and stops it after the first line of its stdout ("listening
/// on ..." if it started): that line, its stderr and its exit code.
fn first_line_of_server(mut command: Command) -> (String, String, Option<i32>) {
    use std::io::{BufRead, BufReader};
    let mut server = command
        .env_remove("RCMD_SECRET_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first_line = String::new();
    // A refused secret ends the server: its output ends, empty.
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut first_line)
        .unwrap();
    let _ = server.kill();
    let stderr = stderr_of_child(&mut server);
    let status = server.wait().unwrap();
    (first_line, stderr, status.code())
}

/// A group named after the directory's owner is taken for the owner's private group, whose
/// write permission lets nobody else in, only if it lists no other member: `root` listing
/// `nobody` makes the group-writable directory `nobody`'s to change, and the server refuses
/// it; listing only `root` itself, it is accepted.
#[test]
fn serve_refuses_a_directory_writable_by_a_private_group_with_other_members() {
    let test = "serve_refuses_a_directory_writable_by_a_private_group_with_other_members";
    let Some((first_line, stderr, code)) = serve_with_root_group_listing(test, "nobody") else {
        return;
    };
    assert_eq!(code, Some(1), "{first_line:?} {stderr}");
    assert!(
        stderr.contains("(mode 775) can be changed by users other than its owner"),
        "{stderr}"
    );
    assert!(first_line.is_empty(), "it listened: {first_line:?}");

    let Some((first_line, stderr, _)) = serve_with_root_group_listing(test, "root") else {
        return;
    };
    assert!(
        first_line.starts_with("listening on "),
        "{first_line:?} {stderr}"
    );
}
