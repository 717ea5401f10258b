//! Commands the server answers itself instead of handing them to the shell.
//!
//! Each command runs in a fresh `sh -c` (`cmd /C` on Windows), so a `cd` there would change
//! the directory of a shell that exits at once. To make the prompt feel like a shell, a
//! command that is only a `cd` changes the connection's working directory instead, which
//! every later command of the connection starts in. Anything more complex (`cd /tmp && ls`)
//! goes to the shell as usual and, as in any subshell, its `cd` does not outlive it.
//!
//! Why a small parser: people type `cd "My Documents"`, `cd dir\ with\ space`, `cd $HOME/src`
//! or `cd ~/.config`. Splitting on whitespace would send all of these to the shell, where
//! they would silently do nothing, and a directory with a space in its name could not be
//! entered at all. So [`parse_sh_cd`] reads the one argument word the way `sh` would (quotes,
//! backslashes, `$NAME`, `~`, a `#` comment), and [`parse_cmd_cd`] the way `cmd.exe` reads
//! its `cd`. A command list or pipeline (`cd x && ls`, `cd x; ls`, `cd x | cat`) goes to the
//! shell unchanged: a one-off, as in any subshell. A lone `cd` the parser cannot read as the
//! shell would (`$(...)`, globs, `~user`, several words, options, redirections) is refused
//! with a message saying so, instead of going to a shell where it would silently not last.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::protocol::message::clip;

/// Longest `cd` argument, in bytes, once variables are expanded: eight times Linux's `PATH_MAX`
/// (4,096 bytes), and about Windows' longest path when its names are ASCII (32,767 UTF-16
/// units; a longer path of non-ASCII names, up to three UTF-8 bytes a unit, is refused).
/// Without it, a few kilobytes of `$PWD$PWD...` in a deep directory expand to gigabytes of
/// argument, and of the error message quoting it.
pub const MAX_CD_ARG_LEN: usize = 32 * 1024;

/// How much of an over-long argument the error message quotes.
const SHOWN_OF_A_LONG_ARG: usize = 100;

/// Where a `cd` asks to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CdTarget {
    /// `cd` or `cd ~`: the home directory.
    Home,
    /// `cd` alone on Windows: as in `cmd`, show the current directory and stay.
    Show,
    /// `cd -`: the previous directory.
    Previous,
    /// `cd ~\DIR` (or `~/DIR`) on Windows: DIR in the home directory, as `cd ~/DIR` on Unix
    /// (where the shell's own rules already give the full path).
    UnderHome(String),
    /// `cd DIR`, relative to the current directory or absolute, quotes and variables already
    /// resolved.
    Path(String),
    /// A lone `cd` that only the shell could read (`cd $(pwd)`, `cd /var/*`, `cd a b`); the
    /// directory stays, and the message (`cd: ...`) says why.
    Refused(String),
}

/// Why [`sh_words`] could not read a command.
#[derive(Debug, PartialEq, Eq)]
enum Unread {
    /// A command list or pipeline: `;`, `&`, `|`, or a second line.
    Compound,
    /// What only the shell can evaluate, named for the user: "command substitution", ...
    Needs(&'static str),
    /// Variables expanded to more than [`MAX_CD_ARG_LEN`] bytes.
    TooLong,
}

/// The refusal of a `cd` whose argument is longer than [`MAX_CD_ARG_LEN`], quoting its start,
/// in the words of a shell's `cd` (bash: "File name too long").
fn too_long(start: &str) -> String {
    format!(
        "cd: {}: File name too long",
        clip(start.to_owned(), SHOWN_OF_A_LONG_ARG)
    )
}

/// The refusal of a lone `cd` that uses `what`.
fn refused(what: &str) -> CdTarget {
    CdTarget::Refused(format!(
        "cd: {what} needs the shell, where a cd would not last; the directory is unchanged"
    ))
}

/// Whether a command has none of the characters that make a list or pipeline, quoted or not.
/// A raw scan, not a parse: [`sh_words`] stops at the first construct it cannot read, so what
/// follows is unknown, and a `cd` that might be part of a list is left to the shell.
fn has_no_list_operators(command: &str) -> bool {
    !command.contains([';', '&', '|']) && !command.trim_end().contains('\n')
}

/// Recognises a command that is only a `cd`, read with the rules of the server's shell:
/// [`parse_sh_cd`] on Unix, [`parse_cmd_cd`] on Windows. `cwd` and `previous` are what `$PWD`
/// and `$OLDPWD` mean on Unix. `None` sends the command to the shell.
pub fn parse_cd(command: &str, cwd: &Path, previous: Option<&Path>) -> Option<CdTarget> {
    if cfg!(windows) {
        parse_cmd_cd(command)
    } else {
        parse_sh_cd(command, |name| shell_variable(name, cwd, previous))
    }
}

/// The value `sh` would see for `$name`: the server's environment, except `PWD` (the
/// connection's working directory; the shell starts there) and `OLDPWD` (the connection's
/// previous directory, what `cd -` goes to; unset before the first `cd`).
fn shell_variable(name: &str, cwd: &Path, previous: Option<&Path>) -> Option<OsString> {
    match name {
        "PWD" => std::path::absolute(cwd).ok().map(PathBuf::into_os_string),
        "OLDPWD" => previous.map(|dir| dir.as_os_str().to_owned()),
        _ => std::env::var_os(name),
    }
}

/// Reads `command` as `sh` would and recognises `cd`, `cd ~`, `cd -` and `cd WORD`, where
/// WORD may use single quotes, double quotes, backslashes, `$NAME`, `${NAME}`, a leading `~`
/// or `~/`, and be followed by a `#` comment. `var` gives a variable's value (`None`: unset,
/// which expands to nothing, as in `sh`).
///
/// `None` (the shell runs it) for a command whose first word is not `cd`, and for a list or
/// pipeline (`;`, `&`, `|`, a second line; a `;` that only ends the command is no list).
/// [`CdTarget::Refused`] for a lone `cd` with more
/// than one argument, an option such as `-P`, a redirection or parenthesis, `$(...)` or
/// backticks, other `$` forms (`$1`, `${X:-y}`), an unquoted glob character or brace, `~user`,
/// an unquoted variable whose value would be split or globbed (a space, tab, newline, `*`, `?`
/// or `[` in it), a value that is not UTF-8, an unfinished quote, or `~` without `$HOME`.
pub fn parse_sh_cd(command: &str, var: impl Fn(&str) -> Option<OsString>) -> Option<CdTarget> {
    // Every command passes through here: leave the others at once, before reading the rest
    // of a possibly long command. The first word, quotes and backslashes aside, must be `cd`.
    let first_word = command
        .trim_start_matches([' ', '\t'])
        .split([' ', '\t', '\n', ';'])
        .next()?;
    if !first_word
        .chars()
        .filter(|c| !matches!(c, '"' | '\'' | '\\'))
        .eq("cd".chars())
    {
        return None;
    }
    // `cd DIR;` is still a lone `cd`: the shell runs the empty rest of the list and stays in
    // DIR, so the directory must last here too (as `exit 5;` ends the prompt with 5).
    if let Some(lone) = without_final_semicolon(command) {
        return parse_sh_cd(lone, var);
    }
    let mut words = Vec::new();
    let read = sh_words(command, &var, &mut words);
    // The quick look above took `'cd '` for `cd`: only a first word that reads exactly `cd` is.
    let (cd, args) = words.split_first()?;
    if cd.tilde || cd.text != "cd" {
        return None;
    }
    match read {
        Ok(()) => {}
        Err(Unread::Needs(what)) if has_no_list_operators(command) => return Some(refused(what)),
        // The limit tripped in a second argument: that the shell would refuse first.
        Err(Unread::TooLong) if has_no_list_operators(command) && !args.is_empty() => {
            return Some(CdTarget::Refused("cd: too many arguments".to_owned()));
        }
        Err(Unread::TooLong) if has_no_list_operators(command) => {
            // Quoted as typed (`$PWD$PWD...`): the expansion is what is too long to show.
            let typed = command.trim_start_matches([' ', '\t'])[first_word.len()..].trim_start();
            return Some(CdTarget::Refused(too_long(typed)));
        }
        Err(_) => return None,
    }
    Some(match args {
        [] => CdTarget::Home,
        [arg] if arg.tilde && arg.text.is_empty() => CdTarget::Home,
        [arg] if arg.tilde => {
            // `~/sub`: `$HOME` then the rest, which starts with `/`.
            match var("HOME").and_then(|home| home.into_string().ok()) {
                Some(home) if !home.is_empty() => CdTarget::Path(home + &arg.text),
                _ => CdTarget::Refused("cd: ~: HOME not set".to_owned()),
            }
        }
        [arg] if arg.text == "-" => CdTarget::Previous,
        [first, ..] if first.text.starts_with('-') && first.text != "-" => {
            refused("an option such as -P")
        }
        [arg] => CdTarget::Path(arg.text.clone()),
        _ => CdTarget::Refused("cd: too many arguments".to_owned()),
    })
}

/// `command` without the `;` that ends it, if it ends with one that ends a list (not `\;`,
/// a quoted one, nor `;;`) and nothing before it is a list operator: `cd DIR;` is `cd DIR`.
fn without_final_semicolon(command: &str) -> Option<&str> {
    let before = command.trim_end().strip_suffix(';')?;
    let escaped_or_doubled = before.ends_with(['\\', ';']);
    // A newline before the `;` ends the command there, and `;` alone is a syntax error in
    // `sh` (a backslash-newline continues the line instead).
    let words = before.trim_end();
    let cut_by_a_newline = before[words.len()..].contains('\n') && !words.ends_with('\\');
    (!escaped_or_doubled && !cut_by_a_newline && has_no_list_operators(before)).then_some(before)
}

/// One word of a shell command after quote removal and expansion.
#[derive(Debug, Default)]
struct Word {
    /// It started with an unquoted `~` followed by `/` or nothing; `text` is what follows it.
    tilde: bool,
    text: String,
}

/// Splits a shell command into `words`, resolving quotes, backslashes and `$NAME`; what it
/// cannot read is an [`Unread`] (see [`parse_sh_cd`]), with the words before it in `words`.
fn sh_words(
    command: &str,
    var: &dyn Fn(&str) -> Option<OsString>,
    words: &mut Vec<Word>,
) -> Result<(), Unread> {
    const UNFINISHED: Unread = Unread::Needs("an unfinished quote or backslash");
    const SUBSTITUTION: Unread = Unread::Needs("command substitution");
    let mut chars = command.chars().peekable();
    // Bytes added by expanding variables, in all words: the rest is bounded by the command.
    let mut expanded = 0usize;
    let mut add_expansion = |word: &mut Word, value: &str| {
        expanded += value.len();
        if expanded > MAX_CD_ARG_LEN {
            return Err(Unread::TooLong);
        }
        word.text.push_str(value);
        Ok(())
    };
    loop {
        // Between words: blanks, the end, a newline or a comment.
        while chars.next_if(|&c| c == ' ' || c == '\t').is_some() {}
        match chars.peek() {
            None => return Ok(()),
            Some('#') => {
                while chars.next_if(|&c| c != '\n').is_some() {}
                continue;
            }
            Some('\n') => {
                // A newline ends the command: fine at the end, but not before another one.
                let only_blanks = chars.all(|c| matches!(c, ' ' | '\t' | '\n'));
                return if only_blanks {
                    Ok(())
                } else {
                    Err(Unread::Compound)
                };
            }
            Some(_) => {}
        }
        let mut word = Word::default();
        // Whether the word exists even if empty: `""` is a word, an unquoted `$UNSET` is not.
        let mut quoted = false;
        if chars.next_if_eq(&'~').is_some() {
            match chars.peek() {
                None | Some('/' | ' ' | '\t' | '\n') => word.tilde = true,
                // ~user, ~+, ~-, ~"x": the shell's business
                Some(_) => return Err(Unread::Needs("~ followed by a name")),
            }
        }
        while let Some(&c) = chars.peek() {
            if matches!(c, ' ' | '\t' | '\n') {
                break;
            }
            chars.next();
            match c {
                '\'' => {
                    quoted = true;
                    loop {
                        match chars.next().ok_or(UNFINISHED)? {
                            '\'' => break,
                            c => word.text.push(c),
                        }
                    }
                }
                '"' => {
                    quoted = true;
                    loop {
                        match chars.next().ok_or(UNFINISHED)? {
                            '"' => break,
                            '\\' => match chars.next().ok_or(UNFINISHED)? {
                                '\n' => {} // a line continuation
                                c @ ('$' | '`' | '"' | '\\') => word.text.push(c),
                                c => {
                                    word.text.push('\\');
                                    word.text.push(c);
                                }
                            },
                            '$' => add_expansion(&mut word, &expand(&mut chars, var)?)?,
                            '`' => return Err(SUBSTITUTION),
                            c => word.text.push(c),
                        }
                    }
                }
                '\\' => match chars.next().ok_or(UNFINISHED)? {
                    '\n' => {} // a line continuation
                    c => {
                        quoted = true;
                        word.text.push(c);
                    }
                },
                '$' => {
                    let value = expand(&mut chars, var)?;
                    // Unquoted, the shell would split it into words and expand globs.
                    if value.contains([' ', '\t', '\n', '*', '?', '[']) {
                        return Err(Unread::Needs(
                            "an unquoted variable holding spaces or glob characters",
                        ));
                    }
                    add_expansion(&mut word, &value)?;
                }
                ';' | '&' | '|' => return Err(Unread::Compound),
                '<' | '>' => return Err(Unread::Needs("a redirection")),
                '(' | ')' => return Err(Unread::Needs("a parenthesis")),
                '`' => return Err(SUBSTITUTION),
                '*' | '?' | '[' => return Err(Unread::Needs("a glob (*, ? or [)")),
                '{' | '}' => return Err(Unread::Needs("a brace")),
                c => word.text.push(c),
            }
        }
        if word.tilde || quoted || !word.text.is_empty() {
            words.push(word);
        }
    }
}

/// The value of `$NAME` or `${NAME}`, the `$` already read; an [`Unread`] for any other `$`
/// form.
fn expand(
    chars: &mut std::iter::Peekable<std::str::Chars>,
    var: &dyn Fn(&str) -> Option<OsString>,
) -> Result<String, Unread> {
    if chars.peek() == Some(&'(') {
        return Err(Unread::Needs("command substitution"));
    }
    let braced = chars.next_if_eq(&'{').is_some();
    let mut name = String::new();
    while let Some(c) = chars.next_if(|&c| c == '_' || c.is_ascii_alphanumeric()) {
        name.push(c);
    }
    let other_form = Unread::Needs("this $ form ($1, $?, ${X:-y}, ...)");
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(other_form); // $1, $?, $$, a lone $, ...
    }
    if braced && chars.next() != Some('}') {
        return Err(other_form); // ${X:-y} and the like
    }
    match var(&name) {
        None => Ok(String::new()),
        Some(value) => value
            .into_string()
            .map_err(|_| Unread::Needs("a variable whose value is not UTF-8")),
    }
}

/// Reads `command` as `cmd.exe` reads its `cd`: `cd` or `chdir` (any case), then the rest of
/// the line is the directory, spaces included (`cd C:\Program Files`); surrounding double
/// quotes are removed; a leading `/d` (also change the drive, which ours always does) is
/// skipped. Backslashes are path separators, and as in cmd the directory may follow without a
/// blank when it starts with `.` or `\` (`cd..`, `cd\`). `cd` alone shows the directory, as in
/// cmd; `cd ~`, `cd ~\DIR` and `cd -` are as on Unix.
///
/// `None` (cmd runs it) if the line has `&`, `|`, `<` or `>` (a command list, a pipeline, a
/// redirection), a `"` other than one surrounding pair, another switch, an empty `""`, or if
/// the word is not followed by a blank, `.` or `\` (`cdx`). A lone `cd` with `%` (a variable),
/// `^` (an escape) or a wildcard `*` or `?` is refused: only cmd could read it, and there it
/// would not last.
pub fn parse_cmd_cd(command: &str) -> Option<CdTarget> {
    let line = command.trim_matches([' ', '\t']);
    let word = ["chdir", "cd"].into_iter().find(|word| {
        line.get(..word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    })?;
    let rest = &line[word.len()..];
    if rest.is_empty() {
        return Some(CdTarget::Show);
    }
    if !rest.starts_with([' ', '\t', '.', '\\']) || rest.contains(['&', '|', '<', '>']) {
        return None;
    }
    if rest.contains('%') {
        return Some(refused("a variable (%NAME%)"));
    }
    if rest.contains('^') {
        return Some(refused("an escape (^)"));
    }
    let mut dir = rest.trim_start_matches([' ', '\t']);
    if let Some(after) = dir.strip_prefix("/d").or_else(|| dir.strip_prefix("/D")) {
        if !after.starts_with([' ', '\t']) {
            return None;
        }
        dir = after.trim_start_matches([' ', '\t']);
    }
    if dir.contains('"') {
        dir = dir.strip_prefix('"')?.strip_suffix('"')?;
        if dir.is_empty() || dir.contains('"') {
            return None;
        }
    }
    if dir.starts_with('/') {
        return None; // a switch cmd knows and we do not (`cd /?` shows cmd's help)
    }
    // `\\?\C:\dir` is a path prefix, not a wildcard.
    if dir
        .strip_prefix(r"\\?\")
        .unwrap_or(dir)
        .contains(['*', '?'])
    {
        return Some(refused("a wildcard"));
    }
    if let Some(sub) = dir.strip_prefix("~\\").or_else(|| dir.strip_prefix("~/")) {
        return Some(CdTarget::UnderHome(sub.to_owned()));
    }
    match dir {
        "~" => Some(CdTarget::Home),
        "-" => Some(CdTarget::Previous),
        _ => Some(CdTarget::Path(dir.to_owned())),
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
    if let CdTarget::Path(dir) | CdTarget::UnderHome(dir) = target
        && dir.len() > MAX_CD_ARG_LEN
    {
        return Err(too_long(dir));
    }
    let wanted = match target {
        CdTarget::Show => cwd.to_path_buf(),
        CdTarget::Home => home_dir().ok_or_else(|| "cd: HOME not set".to_owned())?,
        CdTarget::UnderHome(dir) => home_dir()
            .ok_or_else(|| "cd: HOME not set".to_owned())?
            .join(dir),
        CdTarget::Previous => previous
            .map(Path::to_path_buf)
            .ok_or_else(|| "cd: OLDPWD not set".to_owned())?,
        // A working directory removed since: the kernel can no longer walk up from it, so a
        // leading `..` climbs its name instead, as a shell's logical `cd ..` reads `$PWD`, and
        // the user can leave it (`cd ..`, `cd ../other`).
        CdTarget::Path(dir) if !cwd.exists() => climb_by_name(cwd, Path::new(dir)),
        CdTarget::Path(dir) => cwd.join(dir),
        CdTarget::Refused(why) => return Err(why.clone()),
    };
    let shown = match target {
        CdTarget::Path(dir) => dir.clone(),
        _ => wanted.display().to_string(),
    };
    match std::fs::metadata(&wanted) {
        Ok(meta) if meta.is_dir() => {
            // Canonical, so `cd ..` twice climbs two levels and `pwd` shows a clean path.
            let canonical = wanted
                .canonicalize()
                .map_err(|e| format!("cd: {shown}: {}", as_a_shell_says(&e)))?;
            // A directory the server's user may not enter would be accepted here and then
            // fail every command's start: refuse it now, as a shell's `cd` (a `chdir`) would.
            can_enter(&canonical).map_err(|e| format!("cd: {shown}: {}", as_a_shell_says(&e)))?;
            let usable = if cfg!(windows) {
                canonical.to_str().and_then(without_verbatim_prefix)
            } else {
                None
            };
            Ok(usable.map_or(canonical, PathBuf::from))
        }
        Ok(_) => Err(format!("cd: {shown}: Not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("cd: {shown}: No such file or directory"))
        }
        Err(e) => Err(format!("cd: {shown}: {}", as_a_shell_says(&e))),
    }
}

/// Whether this process may make `dir` its working directory: search (execute) permission,
/// judged with the effective user and group, as `chdir` judges it. (Commands start in the
/// session's directory, so the server itself never changes into it.)
#[cfg(unix)]
fn can_enter(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `path` is a NUL-terminated string that lives across the call.
    let allowed =
        unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), libc::X_OK, libc::AT_EACCESS) };
    if allowed == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Windows: a directory that exists can be the start of a command's process; what the
/// command may then do there is up to its ACLs.
#[cfg(not(unix))]
fn can_enter(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

/// `dir` seen from `cwd`, each `..` at the start of a relative `dir` taking away the last name
/// of `cwd` without asking the file system (a `.` among them is skipped, as a shell's logical
/// `cd ./..` does); the rest of `dir` is left to it, as is an absolute `dir`.
fn climb_by_name(cwd: &Path, dir: &Path) -> PathBuf {
    use std::path::Component;
    let mut base = cwd.to_path_buf();
    let mut parts = dir.components();
    loop {
        let rest = parts.as_path();
        match parts.next() {
            Some(Component::ParentDir) => {
                base.pop();
            }
            Some(Component::CurDir) => {}
            _ => return base.join(rest),
        }
    }
}

/// An error as a shell's `cd` words it: "Permission denied", without the " (os error 13)"
/// that Rust adds.
fn as_a_shell_says(error: &std::io::Error) -> String {
    let text = error.to_string();
    match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_owned(),
        _ => text,
    }
}

/// `\\?\C:\dir` as `C:\dir`, `\\?\UNC\host\share` as `\\host\share`; `None` for other paths.
/// Windows' canonical paths are "verbatim" ones, which `cmd.exe` refuses as its current
/// directory (it falls back to the Windows directory).
fn without_verbatim_prefix(path: &str) -> Option<String> {
    if let Some(rest) = path.strip_prefix(r"\\?\UNC\") {
        return Some(format!(r"\\{rest}"));
    }
    let rest = path.strip_prefix(r"\\?\")?;
    let drive = rest.as_bytes();
    (drive.len() >= 2 && drive[0].is_ascii_alphabetic() && drive[1] == b':')
        .then(|| rest.to_owned())
}

/// The user's home directory (`HOME`, `USERPROFILE` on Windows), where `cd` alone goes and
/// where `rcmd serve` starts commands unless told otherwise, as sshd does.
pub fn home_dir() -> Option<PathBuf> {
    let variable = if cfg!(windows) { "USERPROFILE" } else { "HOME" };
    std::env::var_os(variable)
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment the `sh` tests see.
    fn env(name: &str) -> Option<OsString> {
        let value = match name {
            "HOME" => "/home/u",
            "DIR" => "/usr/local",
            "SPACED" => "dir with space",
            "GLOB" => "a*",
            "EMPTY" => "",
            _ => return None,
        };
        Some(value.into())
    }

    // Unix: compared with `canonicalize`, whose Windows form (`\\?\C:\...`) `resolve_cd` drops.
    #[cfg(unix)]
    #[test]
    fn from_a_removed_directory_cd_dot_dot_climbs_by_name() {
        let root = tempfile::tempdir().unwrap();
        let gone = root.path().join("gone");
        std::fs::create_dir(&gone).unwrap();
        std::fs::remove_dir(&gone).unwrap();
        let up = resolve_cd(&CdTarget::Path("..".into()), &gone, None).unwrap();
        assert_eq!(up, root.path().canonicalize().unwrap());
        let sibling = root.path().join("sibling");
        std::fs::create_dir(&sibling).unwrap();
        let over = resolve_cd(&CdTarget::Path("../sibling/.".into()), &gone, None).unwrap();
        assert_eq!(over, sibling.canonicalize().unwrap());
        // A `.` among the leading `..` is skipped, as bash's logical `cd ./..` does.
        let up = resolve_cd(&CdTarget::Path("./..".into()), &gone, None).unwrap();
        assert_eq!(up, root.path().canonicalize().unwrap());
        // Only the leading `..` climb by name; the rest is the file system's, as is an
        // absolute path (bash: `cd /nonexistent/..` fails).
        for not_there in ["../nonexistent/..", "/nonexistent/.."] {
            let target = CdTarget::Path(not_there.into());
            assert!(resolve_cd(&target, &gone, None).is_err(), "{not_there}");
        }
        // From a directory that exists, `..` is the kernel's (through symbolic links).
        assert_eq!(
            resolve_cd(&CdTarget::Path("..".into()), &sibling, None).unwrap(),
            root.path().canonicalize().unwrap()
        );
    }

    // Unix: compared with `canonicalize`, whose Windows form (`\\?\C:\...`) `resolve_cd` drops.
    #[cfg(unix)]
    #[test]
    fn under_home_is_in_the_home_directory() {
        if let Some(home) = home_dir().filter(|home| home.is_dir()) {
            let target = CdTarget::UnderHome(".".into());
            assert_eq!(
                resolve_cd(&target, Path::new("/"), None).unwrap(),
                home.canonicalize().unwrap()
            );
        }
    }

    #[test]
    fn errors_are_worded_as_a_shell_words_them() {
        let denied = std::io::Error::from_raw_os_error(13);
        let rust_says = denied.to_string();
        assert!(rust_says.ends_with(" (os error 13)"), "{rust_says}");
        assert_eq!(
            as_a_shell_says(&denied),
            rust_says.trim_end_matches(" (os error 13)")
        );
        #[cfg(unix)]
        assert_eq!(as_a_shell_says(&denied), "Permission denied");
        let custom = std::io::Error::other("something odd");
        assert_eq!(as_a_shell_says(&custom), "something odd");
    }

    #[test]
    fn expansions_that_grow_past_the_limit_are_refused_early_and_quoted_short() {
        let long = "d".repeat(4000);
        let var = |name: &str| (name == "PWD").then(|| OsString::from(long.clone()));
        // 16,000 expansions of 4,000 bytes would be 64 MB; reading stops past 32 KiB.
        let command = format!("cd {}", "$PWD".repeat(16_000));
        let Some(CdTarget::Refused(why)) = parse_sh_cd(&command, var) else {
            panic!("not refused");
        };
        assert!(why.starts_with("cd: $PWD$PWD"), "{why}");
        assert!(why.ends_with("...: File name too long"), "{why}");
        assert!(why.len() < 200, "{} bytes", why.len());
        // Quoted, and spread over several words, the same.
        let quoted = format!("cd \"{}\"", "$PWD".repeat(16_000));
        assert!(matches!(
            parse_sh_cd(&quoted, var),
            Some(CdTarget::Refused(_))
        ));
        let words = format!("cd {}", "$PWD ".repeat(16_000));
        assert_eq!(
            parse_sh_cd(&words, var),
            Some(CdTarget::Refused("cd: too many arguments".into()))
        );
        // In a list the shell expands it, not the server.
        assert_eq!(parse_sh_cd(&format!("{command} && ls"), var), None);
        // Within the limit it is an ordinary path.
        assert_eq!(
            parse_sh_cd("cd $PWD/$PWD", var),
            Some(CdTarget::Path(format!("{long}/{long}")))
        );
    }

    #[test]
    fn a_literal_argument_past_the_limit_is_refused_with_its_start_quoted() {
        let dir = "x".repeat(MAX_CD_ARG_LEN + 1);
        let cwd = std::env::temp_dir();
        let why = resolve_cd(&CdTarget::Path(dir), &cwd, None).unwrap_err();
        assert!(why.starts_with("cd: xxxx") && why.ends_with("...: File name too long"));
        assert!(why.len() < 200, "{} bytes", why.len());
        let why = resolve_cd(&CdTarget::UnderHome("y".repeat(1 << 20)), &cwd, None).unwrap_err();
        assert!(why.len() < 200, "{} bytes", why.len());
    }

    #[test]
    fn a_failed_cd_under_home_names_the_full_path_as_a_shell_does() {
        let Some(home) = home_dir() else { return };
        let missing = "no-such-dir-for-rcmd-tests";
        let why =
            resolve_cd(&CdTarget::UnderHome(missing.into()), Path::new("/"), None).unwrap_err();
        let full = home.join(missing);
        assert_eq!(
            why,
            format!("cd: {}: No such file or directory", full.display())
        );
    }

    fn sh(command: &str) -> Option<CdTarget> {
        parse_sh_cd(command, env)
    }

    fn path(dir: &str) -> Option<CdTarget> {
        Some(CdTarget::Path(dir.to_owned()))
    }

    #[test]
    fn sh_keeps_the_plain_forms() {
        assert_eq!(sh("cd"), Some(CdTarget::Home));
        assert_eq!(sh("cd ~"), Some(CdTarget::Home));
        assert_eq!(sh("cd -"), Some(CdTarget::Previous));
        assert_eq!(sh("  cd   /tmp "), path("/tmp"));
        assert_eq!(sh("cd\t/tmp\n"), path("/tmp"));
        assert_eq!(sh("cd sub/dir"), path("sub/dir"));
        assert_eq!(sh("cd .."), path(".."));
        // Quote removal comes first: these are the same commands to sh.
        assert_eq!(sh("cd \"-\""), Some(CdTarget::Previous));
        assert_eq!(sh("\"cd\" /tmp"), path("/tmp"));
    }

    #[test]
    fn sh_reads_quotes_and_backslashes() {
        assert_eq!(sh("cd \"dir with space\""), path("dir with space"));
        assert_eq!(sh("cd 'dir with space'"), path("dir with space"));
        assert_eq!(sh("cd 'dir with space'/sub"), path("dir with space/sub"));
        assert_eq!(sh(r"cd dir\ with\ space"), path("dir with space"));
        assert_eq!(sh("cd \"/usr\""), path("/usr"));
        assert_eq!(sh(r"cd /us'r'/\l'o'cal"), path("/usr/local"));
        assert_eq!(sh(r"cd 'it'\''s'"), path("it's"));
        assert_eq!(sh(r#"cd 'a"b\c'"#), path(r#"a"b\c"#));
        assert_eq!(sh(r#"cd "a'b""#), path("a'b"));
        // In double quotes a backslash escapes only " \ $ ` (and a newline); else it stays.
        assert_eq!(sh(r#"cd "a\"b\\c\$d\`e\f""#), path(r#"a"b\c$d`e\f"#));
        assert_eq!(sh("cd \"a\\\nb\""), path("ab"));
        assert_eq!(sh("cd a\\\nb"), path("ab"));
        // Quoted, these characters are only characters.
        assert_eq!(
            sh("cd 'a;b&c|d<e>f(g)h*i?j[k]l{m}n`o$p'"),
            path("a;b&c|d<e>f(g)h*i?j[k]l{m}n`o$p")
        );
        assert_eq!(sh("cd \"a;b*c?d#e~f\""), path("a;b*c?d#e~f"));
        assert_eq!(sh(r"cd \*\;\$\~"), path("*;$~"));
        // A `#` or `~` inside a word is an ordinary character.
        assert_eq!(sh("cd a#b"), path("a#b"));
        assert_eq!(sh("cd a~b"), path("a~b"));
        assert_eq!(sh("cd \"~\""), path("~"));
        assert_eq!(sh("cd '~'/x"), path("~/x"));
        assert_eq!(sh(r"cd \~"), path("~"));
    }

    #[test]
    fn sh_expands_variables_from_the_environment() {
        assert_eq!(sh("cd $HOME"), path("/home/u"));
        assert_eq!(sh("cd ${HOME}/x"), path("/home/u/x"));
        assert_eq!(sh("cd ${HOME}_x"), path("/home/u_x"));
        assert_eq!(sh("cd $DIR/bin"), path("/usr/local/bin"));
        assert_eq!(sh("cd \"$SPACED\""), path("dir with space"));
        assert_eq!(sh("cd \"${SPACED}\"/sub"), path("dir with space/sub"));
        assert_eq!(sh("cd /tmp/$DIR"), path("/tmp//usr/local"));
        // Single quotes and backslashes stop expansion.
        assert_eq!(sh("cd '$HOME'"), path("$HOME"));
        assert_eq!(sh(r"cd \$HOME"), path("$HOME"));
        // Unset (or empty) and unquoted, the word disappears, as in sh: `cd` alone.
        assert_eq!(sh("cd $UNSET"), Some(CdTarget::Home));
        assert_eq!(sh("cd $EMPTY"), Some(CdTarget::Home));
        assert_eq!(sh("cd $UNSET/x"), path("/x"));
        // Quoted, it is an empty word.
        assert_eq!(sh("cd \"$UNSET\""), path(""));
        assert_eq!(sh("cd $UNSET\"\""), path(""));
    }

    #[test]
    fn sh_expands_a_leading_tilde_to_home() {
        assert_eq!(sh("cd ~/.config"), path("/home/u/.config"));
        assert_eq!(sh("cd ~/"), path("/home/u/"));
        assert_eq!(sh("cd ~/'dir with space'"), path("/home/u/dir with space"));
        let no_home = |command| parse_sh_cd(command, |_: &str| None);
        assert_eq!(no_home("cd ~"), Some(CdTarget::Home)); // "cd: HOME not set" later
        assert_eq!(
            no_home("cd ~/x"),
            Some(CdTarget::Refused("cd: ~: HOME not set".into()))
        );
    }

    #[test]
    fn sh_ignores_a_comment() {
        assert_eq!(sh("cd /usr # comment"), path("/usr"));
        assert_eq!(sh("cd /usr #"), path("/usr"));
        assert_eq!(sh("cd # comment"), Some(CdTarget::Home));
        assert_eq!(sh("cd \"a b\" # c d e"), path("a b"));
        assert_eq!(sh("cd /usr # ; && | $(x)"), path("/usr"));
        assert_eq!(sh("cd /usr # c\n"), path("/usr"));
        assert_eq!(sh("cd /usr # c\nls"), None);
        assert_eq!(sh("cd /usr\n \t\n"), path("/usr"));
        assert_eq!(sh("cd /usr\n\r"), None);
    }

    /// `cd DIR;` is a lone `cd`, as in a shell, which stays in DIR; a `;` that is part of the
    /// argument, or one more list, is not that.
    #[test]
    fn sh_reads_a_cd_ended_by_a_semicolon_as_a_lone_cd() {
        let path = |p: &str| Some(CdTarget::Path(p.to_owned()));
        assert_eq!(sh("cd /etc;"), path("/etc"));
        assert_eq!(sh("cd /etc ; "), path("/etc"));
        assert_eq!(sh("cd;"), Some(CdTarget::Home));
        assert_eq!(sh("cd /etc\\;"), path("/etc;"));
        assert_eq!(sh("cd '/etc;'"), path("/etc;"));
        assert_eq!(sh("cd /etc;;"), None);
        // `;` on a line of its own is a syntax error in sh; after a backslash-newline it is not.
        assert_eq!(sh("cd /etc\n;"), None);
        assert_eq!(sh("cd /etc # c\n;"), None);
        assert_eq!(sh("cd /etc\\\n;"), path("/etc"));
        assert_eq!(sh("cd /etc; ls;"), None);
        assert_eq!(sh("cd /etc & ;"), None);
    }

    #[test]
    fn sh_leaves_lists_pipelines_and_other_commands_to_the_shell() {
        for command in [
            "cd /tmp && ls",
            "cd /tmp; ls",
            "cd /tmp | cat",
            "cd /tmp &",
            "cd /tmp\nls",
            "cd /usr # c\nls",
            "cd $(pwd); ls",
            "cd /var/* && ls",
            "cd a b || true",
            // The first word is `cd ` or `cd x`, not `cd`.
            "'cd ' *",
            "\"cd \"x $(y)",
            "cdx",
            "cd-",
            "echo cd",
            "X=1 cd /tmp",
            "~/cd",
            "# cd /tmp",
            "",
        ] {
            assert_eq!(sh(command), None, "{command:?}");
        }
    }

    /// A lone `cd` the parser cannot read as the shell would: refused, naming why, rather than
    /// run by a shell where it would silently not last.
    #[test]
    fn sh_refuses_a_lone_cd_only_the_shell_could_read() {
        let refused_for = |command: &str| match sh(command) {
            Some(CdTarget::Refused(why)) => why,
            other => panic!("{command:?}: {other:?}"),
        };
        for (command, what) in [
            ("cd /tmp > f", "a redirection"),
            ("cd < f", "a redirection"),
            ("cd (x)", "a parenthesis"),
            ("cd $SPACED", "an unquoted variable"),
            ("cd $GLOB", "an unquoted variable"),
            ("cd *", "a glob"),
            ("cd /var/*", "a glob"),
            ("cd a?", "a glob"),
            ("cd [ab]", "a glob"),
            ("cd {a,b}", "a brace"),
            ("cd $(pwd)", "command substitution"),
            ("cd \"$(pwd)\"", "command substitution"),
            ("cd `pwd`", "command substitution"),
            ("cd \"`pwd`\"", "command substitution"),
            ("cd $1", "this $ form"),
            ("cd $?", "this $ form"),
            ("cd ${HOME:-/}", "this $ form"),
            ("cd ${}", "this $ form"),
            ("cd $", "this $ form"),
            ("cd \"$\"", "this $ form"),
            ("cd ~user", "~ followed by a name"),
            ("cd ~root/x", "~ followed by a name"),
            ("cd ~+", "~ followed by a name"),
            ("cd ~\"x\"", "~ followed by a name"),
            ("cd -P /tmp", "an option"),
            ("cd -P", "an option"),
            ("cd --", "an option"),
            ("cd \"unfinished", "an unfinished quote"),
            ("cd 'unfinished", "an unfinished quote"),
            ("cd a\\", "an unfinished quote or backslash"),
        ] {
            let why = refused_for(command);
            assert!(
                why.starts_with(&format!("cd: {what}")) && why.contains("unchanged"),
                "{command:?}: {why}"
            );
        }
        for command in ["cd a b", "cd \"a\" b", "cd 'a b' c", "cd /tmp /etc"] {
            assert_eq!(refused_for(command), "cd: too many arguments");
        }
    }

    #[cfg(unix)]
    #[test]
    fn sh_refuses_a_variable_that_is_not_utf8() {
        use std::os::unix::ffi::OsStringExt;
        let var = |_: &str| Some(OsString::from_vec(vec![b'/', 0xff]));
        assert!(matches!(
            parse_sh_cd("cd \"$X\"", var),
            Some(CdTarget::Refused(why)) if why.starts_with("cd: a variable whose value is not UTF-8")
        ));
        assert_eq!(parse_sh_cd("cd /tmp", var), path("/tmp"));
    }

    // `$PWD` and `$OLDPWD` are read only by the sh parser, with Unix paths.
    #[cfg(unix)]
    #[test]
    fn pwd_and_oldpwd_are_the_connections() {
        let (cwd, previous) = (Path::new("/srv/a"), Path::new("/srv/b"));
        let var = |name: &str| shell_variable(name, cwd, Some(previous));
        assert_eq!(parse_sh_cd("cd $PWD/..", var), path("/srv/a/.."));
        assert_eq!(parse_sh_cd("cd \"$OLDPWD\"", var), path("/srv/b"));
        let var = |name: &str| shell_variable(name, cwd, None);
        assert_eq!(parse_sh_cd("cd $OLDPWD", var), Some(CdTarget::Home));
    }

    #[test]
    fn cmd_takes_the_rest_of_the_line_with_backslashes() {
        let cmd = parse_cmd_cd;
        assert_eq!(cmd(r"cd C:\Users"), path(r"C:\Users"));
        assert_eq!(cmd(r#"cd "C:\Program Files""#), path(r"C:\Program Files"));
        assert_eq!(cmd(r"cd C:\Program Files"), path(r"C:\Program Files"));
        assert_eq!(
            cmd(r"cd C:\Program Files (x86)\a b  "),
            path(r"C:\Program Files (x86)\a b")
        );
        assert_eq!(cmd(r"CD D:\x"), path(r"D:\x"));
        assert_eq!(cmd("Cd\tsub\\dir"), path(r"sub\dir"));
        assert_eq!(cmd(r"cd /d D:\x"), path(r"D:\x"));
        assert_eq!(cmd(r#"cd /D "D:\a b""#), path(r"D:\a b"));
        assert_eq!(cmd(r"cd \"), path(r"\"));
        assert_eq!(cmd("cd .."), path(".."));
        assert_eq!(cmd("cd $HOME"), path("$HOME"));
        assert_eq!(cmd("cd a'b"), path("a'b"));
        assert_eq!(cmd("  cd  "), Some(CdTarget::Show));
        assert_eq!(cmd("CHDIR"), Some(CdTarget::Show));
        assert_eq!(cmd("cd ~"), Some(CdTarget::Home));
        // As cmd reads them, with no blank after the word.
        assert_eq!(cmd("cd.."), path(".."));
        assert_eq!(cmd(r"cd\"), path(r"\"));
        assert_eq!(cmd(r"cd\Windows"), path(r"\Windows"));
        assert_eq!(cmd(r"chdir C:\a b"), path(r"C:\a b"));
        assert_eq!(cmd("cd -"), Some(CdTarget::Previous));
        assert_eq!(
            cmd(r"cd ~\AppData"),
            Some(CdTarget::UnderHome("AppData".into()))
        );
        assert_eq!(cmd("cd ~/a b"), Some(CdTarget::UnderHome("a b".into())));
        assert_eq!(cmd(r"cd \\?\C:\Windows"), path(r"\\?\C:\Windows"));
    }

    #[test]
    fn cmd_leaves_the_rest_to_cmd() {
        for command in [
            "cdx",
            "chdirx",
            "echo cd",
            r"cd C:\a & dir",
            r"cd C:\a && dir",
            "cd a|b",
            "cd a > f",
            r#"cd "a"b""#,
            r#"cd "a"#,
            r#"cd a"b"#,
            r#"cd """#,
            "cd /x",
            "cd /?",
            "cd /d",
            "cd /dx",
            "",
        ] {
            assert_eq!(parse_cmd_cd(command), None, "{command:?}");
        }
    }

    #[test]
    fn cmd_refuses_a_lone_cd_only_cmd_could_read() {
        for (command, what) in [
            ("cd %USERPROFILE%", "%NAME%"),
            (r"cd %TEMP%\x", "%NAME%"),
            ("cd a^ b", "escape"),
            ("cd a*", "wildcard"),
            ("cd dir?", "wildcard"),
        ] {
            match parse_cmd_cd(command) {
                Some(CdTarget::Refused(why)) => assert!(why.contains(what), "{command}: {why}"),
                other => panic!("{command}: {other:?}"),
            }
        }
        // In a list it is cmd's, as any list is.
        assert_eq!(parse_cmd_cd("cd %TEMP% & dir"), None);
    }

    #[test]
    fn verbatim_paths_lose_their_prefix() {
        assert_eq!(
            without_verbatim_prefix(r"\\?\C:\Program Files").as_deref(),
            Some(r"C:\Program Files")
        );
        assert_eq!(
            without_verbatim_prefix(r"\\?\UNC\host\share\x").as_deref(),
            Some(r"\\host\share\x")
        );
        assert_eq!(without_verbatim_prefix(r"C:\x"), None);
        assert_eq!(without_verbatim_prefix(r"\\?\Volume{1}\x"), None);
    }

    #[test]
    fn resolves_relative_paths_and_reports_missing_ones() {
        // As resolve_cd reports directories: canonical, without Windows' `\\?\` prefix.
        let canonical = std::env::temp_dir().canonicalize().unwrap();
        let root = canonical
            .to_str()
            .and_then(without_verbatim_prefix)
            .map_or(canonical.clone(), PathBuf::from);
        let resolved = resolve_cd(&CdTarget::Path(".".into()), &root, None).unwrap();
        assert_eq!(resolved, root);
        // `cd ""` stays where it is, as in dash and bash.
        let resolved = resolve_cd(&CdTarget::Path(String::new()), &root, None).unwrap();
        assert_eq!(resolved, root);
        let error =
            resolve_cd(&CdTarget::Path("no-such-dir-rcmd".into()), &root, None).unwrap_err();
        assert_eq!(error, "cd: no-such-dir-rcmd: No such file or directory");
        assert_eq!(
            resolve_cd(&CdTarget::Previous, &root, None).unwrap_err(),
            "cd: OLDPWD not set"
        );
    }

    /// An empty `HOME` counts as unset, as in [`home_dir`]: `cd ~/x` is refused rather than
    /// taken to `/x`. (bash and dash do expand `~/x` to `/x` there; a `cd` that lands in `/`
    /// because HOME is empty is more likely a surprise than what was meant.)
    #[test]
    fn sh_refuses_a_tilde_when_home_is_empty() {
        let empty_home = |name: &str| (name == "HOME").then(OsString::new);
        assert_eq!(
            parse_sh_cd("cd ~/x", empty_home),
            Some(CdTarget::Refused("cd: ~: HOME not set".into()))
        );
        assert_eq!(parse_sh_cd("cd ~", empty_home), Some(CdTarget::Home));
    }

    /// [`MAX_CD_ARG_LEN`] is the longest argument allowed: an expansion of exactly that many
    /// bytes is read, one byte more is refused.
    #[test]
    fn an_expansion_of_exactly_the_limit_is_read_one_more_byte_is_refused() {
        let exact = "e".repeat(MAX_CD_ARG_LEN);
        let var = |name: &str| match name {
            "X" => Some(OsString::from(exact.clone())),
            "Y" => Some(OsString::from("e")),
            _ => None,
        };
        assert_eq!(parse_sh_cd("cd $X", var), path(&exact));
        assert_eq!(
            parse_sh_cd("cd $X$Y", var),
            Some(CdTarget::Refused("cd: $X$Y: File name too long".into()))
        );
    }

    /// An argument of exactly [`MAX_CD_ARG_LEN`] bytes is not refused by the limit (whose
    /// message clips it) but handed to the file system, whose own "File name too long" quotes
    /// it whole, as a shell's would. (Unix: the wording is the OS's.)
    #[cfg(unix)]
    #[test]
    fn a_literal_argument_of_exactly_the_limit_goes_to_the_file_system() {
        let exact = "x".repeat(MAX_CD_ARG_LEN);
        let cwd = std::env::temp_dir();
        assert_eq!(
            resolve_cd(&CdTarget::Path(exact.clone()), &cwd, None).unwrap_err(),
            format!("cd: {exact}: File name too long")
        );
    }

    /// From a directory that exists, `..` is the kernel's, not the name's: the server's starting
    /// directory (`--workdir`, `$HOME`) is not made canonical, so it can be a symbolic link,
    /// whose `..` is the parent of where it points.
    #[cfg(unix)]
    #[test]
    fn from_a_symlinked_directory_cd_dot_dot_is_the_kernels() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("real");
        let inner = real.join("inner");
        std::fs::create_dir_all(&inner).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&inner, &link).unwrap();
        let up = resolve_cd(&CdTarget::Path("..".into()), &link, None).unwrap();
        assert_eq!(up, real.canonicalize().unwrap());
    }

    /// A file is not a directory: accepted, it would become the session's working directory and
    /// every later command would fail to start.
    #[test]
    fn cd_into_a_file_is_not_a_directory() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("file"), b"").unwrap();
        assert_eq!(
            resolve_cd(&CdTarget::Path("file".into()), root.path(), None).unwrap_err(),
            "cd: file: Not a directory"
        );
    }

    /// An error other than "not found" is worded from the OS error (here ENOTDIR), not called
    /// "No such file or directory". (Unix: on Windows `file\sub` is ERROR_PATH_NOT_FOUND.)
    #[cfg(unix)]
    #[test]
    fn other_errors_are_not_called_missing() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("file"), b"").unwrap();
        assert_eq!(
            resolve_cd(&CdTarget::Path("file/sub".into()), root.path(), None).unwrap_err(),
            "cd: file/sub: Not a directory"
        );
    }
}
