//! The `rcmd` command line: parse arguments, call the library, map failures to exit codes.
//!
//! Exit codes: `run` exits with the remote command's status (128+N if a signal killed it, 124 if
//! it timed out); every subcommand exits 255 when the client itself fails (cannot connect,
//! authentication failed, connection lost), as ssh does; `serve` and `keygen` exit 1 when they
//! cannot do their job; 2 is a usage error.

use std::io::{self, IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use log::info;

use rcmd::client::stats::{CountingReader, CountingSink, TransferReport};
use rcmd::client::{self, ClientError, CommandInput, Session, TerminalSink, interrupt, prompt};
use rcmd::logging::{self, Delivery};
use rcmd::output::OutputEncoding;
use rcmd::secret;
use rcmd::server::{Limits, Server, ServerConfig};
use rcmd::sticky;
use rcmd::{say, say_out};

/// The exit statuses of `rcmd run`, for its `--help` (the README's table says the same).
const RUN_EXIT_STATUS: &str = "\
Exit status:
  the command's   it exited normally
  128+N           signal N killed it (130: Ctrl-C)
  124             --timeout killed it
  141             the reader of rcmd's output went away (rcmd dies of SIGPIPE)
  255             rcmd failed: bad or unknown address, cannot connect, authentication
                  failed, connection lost, integrity error, command refused by the server
  2               usage error: unknown option, bad option value, no command";

/// The client could not do its job (like ssh's 255).
const EXIT_CLIENT_FAILURE: u8 = 255;
/// The server or keygen could not do its job.
const EXIT_FAILURE: u8 = 1;
/// Bad arguments.
const EXIT_USAGE: u8 = 2;
/// What a shell shows for a program killed by SIGPIPE (128 + 13): where rcmd cannot die of
/// the signal itself (Windows), it exits with this.
const EXIT_BROKEN_PIPE: u8 = 141;

#[derive(Parser)]
#[command(
    name = "rcmd",
    version,
    about = "Run commands on another machine: real output, errors and exit codes."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve clients: run their commands and stream the output back.
    ///
    /// Signals (Unix): SIGINT or SIGTERM stops it gracefully (no new connections, running
    /// commands killed, clients told, exit 0; a second one exits at once); SIGHUP re-reads the
    /// secret file, for new connections. On Windows, Ctrl-C, Ctrl-Break or closing the console
    /// stops it gracefully.
    Serve(ServeArgs),
    /// Open an interactive prompt on a server.
    Connect(ConnectArgs),
    /// Run one command on a server, like `ssh host cmd`: its stdout, stderr and exit status
    /// become ours; our stdin is forwarded when it is not a terminal.
    #[command(
        override_usage = "rcmd run [OPTIONS] ADDR CMD...\n       rcmd run [OPTIONS] [ADDR] -- CMD...",
        after_help = RUN_EXIT_STATUS
    )]
    Run(RunArgs),
    /// Write a new random shared secret (mode 0600).
    Keygen(KeygenArgs),
    /// Start a server on loopback and a prompt connected to it: rcmd in one command.
    Demo(DemoArgs),
}

#[derive(Args)]
struct SecretArg {
    /// The shared secret file [default: $RCMD_SECRET_FILE, else rcmd/secret in $XDG_CONFIG_HOME,
    /// or ~/.config if unset (%APPDATA% on Windows)].
    // Global: `rcmd demo sticky --secret-file F` as well as `rcmd demo --secret-file F sticky`.
    #[arg(long, value_name = "PATH", global = true)]
    secret_file: Option<PathBuf>,
}

/// The wire format of `serve` and `connect`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Framing {
    /// rcmd's protocol: every message starts with its length.
    Length,
    /// The unframed socket-tutorial protocol, a demonstration of TCP's "sticky packets".
    #[value(name = "none")]
    Unframed,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on: an IPv4 or IPv6 address or a host name, with or without a port
    /// (9999 if none); port 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9999", value_parser = parse_listen)]
    listen: SocketAddr,
    #[command(flatten)]
    secret: SecretArg,
    /// Encoding of command output: auto, utf-8, or a label such as gbk, big5, shift_jis.
    #[arg(long, value_name = "LABEL", default_value = "auto")]
    encoding: String,
    /// Directory commands start in [default: the home directory of the server's user, as with
    /// sshd; the server's current directory if it has none].
    #[arg(long, value_name = "DIR")]
    workdir: Option<PathBuf>,
    /// Seconds a connection has to authenticate (at least 1).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = at_least_one::<u64>)]
    handshake_timeout: u64,
    /// Seconds an authenticated connection may sit idle (0: forever).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    idle_timeout: u64,
    /// Longest a command may run, in seconds (0: no limit); clients may ask for less. Not with
    /// --framing none [default: 0].
    #[arg(long, value_name = "SECS")]
    command_timeout: Option<u64>,
    /// Connections served at once (at least 1).
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = at_least_one::<usize>)]
    max_connections: usize,
    /// Connections allowed at once that have not authenticated, in the handshake or being
    /// closed after failing it (at least 1). Not with --framing none [default: 128].
    #[arg(long, value_name = "N", value_parser = at_least_one::<usize>)]
    max_handshakes: Option<usize>,
    /// Longest command accepted, in bytes. Not with --framing none [default: 65536].
    #[arg(long, value_name = "BYTES", value_parser = at_least_one::<usize>)]
    max_command_len: Option<usize>,
    /// Wire format: `length` (rcmd's frames) or `none`, the unframed tutorial protocol that
    /// shows TCP's "sticky packets" (a demonstration; see `rcmd demo sticky`).
    #[arg(long, value_enum, value_name = "MODE", default_value = "length")]
    framing: Framing,
    /// With --framing none: no handshake, so `nc` or a tutorial client can connect. Allowed
    /// only on a loopback --listen address.
    #[arg(long)]
    insecure_no_auth: bool,
    /// With --framing none: set TCP_NODELAY on each connection (Nagle's algorithm off).
    #[arg(long)]
    nodelay: bool,
}

#[derive(Args)]
struct ConnectArgs {
    /// Server address: host, host:port or [ipv6]:port [default: 127.0.0.1:9999].
    #[allow(rustdoc::broken_intra_doc_links)] // `[ipv6]` is clap's help text, not a link
    addr: Option<String>,
    /// The server's port, as ssh's -p (or write HOST:PORT) [default: 9999].
    #[arg(short = 'p', long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    #[command(flatten)]
    secret: SecretArg,
    /// Wire format: `length` (rcmd's frames) or `none` (unframed; see `rcmd demo sticky`).
    #[arg(long, value_enum, value_name = "MODE", default_value = "length")]
    framing: Framing,
    /// With --framing none: skip the handshake (for `serve --framing none --insecure-no-auth`).
    #[arg(long)]
    insecure_no_auth: bool,
    /// The most bytes one read may return [default: 1024]. With rcmd's framing (where at most
    /// 262144 is used), either this or --read-delay-ms makes the client read like the unframed
    /// one and show each read and the frames completed from it, on stderr (the sticky-packet
    /// effects, absorbed by the framing).
    #[arg(long, value_name = "BYTES")]
    recv_size: Option<usize>,
    /// Milliseconds to wait, once an answer starts to arrive, before reading [default: 200].
    #[arg(long, value_name = "MS")]
    read_delay_ms: Option<u64>,
}

#[derive(Args)]
struct RunArgs {
    /// The server's address: host, host:port, [ipv6] or [ipv6]:port [default: 127.0.0.1:9999,
    /// written `rcmd run -- CMD...`]. rcmd's options may also follow it, before the command.
    #[arg(value_name = "ADDR")]
    #[allow(rustdoc::broken_intra_doc_links)] // `[ipv6]` is clap's help text, not a link
    addr: Option<String>,
    /// The server's port, as ssh's -p (or write HOST:PORT) [default: 9999].
    #[arg(short = 'p', long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// The command, run by the server's shell (`sh -c` / `cmd /C`). As with ssh, from its
    /// first word on everything is the command, options included; its words are joined with
    /// spaces.
    #[arg(value_name = "CMD", allow_hyphen_values = true)]
    command: Vec<String>,
    #[command(flatten)]
    secret: SecretArg,
    /// Ask the server to kill the command after this many seconds.
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Forward no stdin: the command reads /dev/null (as with `ssh -n`). For loops such as
    /// `while read host; do rcmd run -n "$host" uptime; done <hosts`, whose input rcmd would
    /// otherwise forward to the first command.
    #[arg(short = 'n', long)]
    no_stdin: bool,
    /// At the end, print on stderr the bytes of stdout and stderr received, of stdin sent,
    /// the time taken and the rates (like `ssh -v`'s "Transferred:" line).
    #[arg(long)]
    stats: bool,
    /// The command when it follows `--` (`rcmd run [ADDR] -- CMD...`).
    #[arg(last = true, value_name = "CMD", hide = true)]
    after_dashes: Vec<String>,
}

impl RunArgs {
    /// The address (with `-p`'s port) and the command words: `ADDR CMD...`, `ADDR -- CMD...`
    /// or `-- CMD...`.
    ///
    /// # Errors
    /// The exit code and the message: a usage error (2) when the words do not make an address
    /// and a command; an address that cannot be one (`[::1`, a port given twice) is 255, as an
    /// address that does not resolve (ssh exits 255 for every address problem).
    fn address_and_command(&self) -> Result<(String, &[String]), (u8, String)> {
        let (addr, command) = self
            .address_and_command_words()
            .map_err(|usage| (EXIT_USAGE, usage))?;
        let addr = client::target_address(addr, self.port)
            .map_err(|e| (EXIT_CLIENT_FAILURE, e.to_string()))?;
        Ok((addr, command))
    }

    fn address_and_command_words(&self) -> Result<(Option<&str>, &[String]), String> {
        // Like ssh: an option rcmd does not know, where the command would start, is a usage
        // error here rather than a word for the remote shell to misread.
        if let (Some(addr), Some(word)) = (&self.addr, self.command.first())
            && word.starts_with('-')
        {
            return Err(format!(
                "unknown option {word} after the address {addr}: rcmd's options go before the \
                 command (a command that starts with - goes after --)"
            ));
        }
        match (
            self.addr.as_deref(),
            self.command.as_slice(),
            self.after_dashes.as_slice(),
        ) {
            (None, _, []) => Err("no command given: rcmd run [ADDR] [--] CMD...".into()),
            (None, _, command) => Ok((None, command)),
            (Some(addr), [], []) if looks_like_an_address(addr) => Err(format!(
                "no command given for {addr}: rcmd run {addr} CMD..."
            )),
            (Some(addr), [], []) => {
                let (option, default) = match self.port {
                    Some(port) => (
                        format!("-p {port} "),
                        format!("{}:{port}", client::DEFAULT_HOST),
                    ),
                    None => (String::new(), client::DEFAULT_ADDR.to_owned()),
                };
                Err(format!(
                    "no command given for {addr}: rcmd run {option}{addr} CMD... \
                     (or rcmd run {option}-- {addr} to run it on {default})"
                ))
            }
            // At most one of the two holds words: clap keeps a `--` after the command's first
            // word as a word of the command (`rcmd run host ls -- -x` runs `ls -- -x`, as ssh
            // would).
            (Some(addr), [], command) | (Some(addr), command, _) => Ok((Some(addr), command)),
        }
    }
}

/// Whether a lone word given to `run` is surely an address (an IP address, `[v6]`, or
/// `name:PORT`), so that suggesting to run it as a command would be silly.
fn looks_like_an_address(word: &str) -> bool {
    word.parse::<std::net::IpAddr>().is_ok()
        || word.starts_with('[')
        || word
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

#[derive(Args)]
struct KeygenArgs {
    #[command(flatten)]
    secret: SecretArg,
    /// Replace an existing secret file.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct DemoArgs {
    #[command(subcommand)]
    topic: Option<DemoTopic>,
    #[command(flatten)]
    secret: SecretArg,
}

#[derive(Subcommand)]
enum DemoTopic {
    /// Show TCP's "sticky packets" with the unframed protocol, then rcmd's frames fixing them.
    Sticky,
}

/// A number of at least 1, for limits where 0 would make the server useless (0 connections, a
/// handshake that must finish in no time): refused at once rather than quietly raised.
fn at_least_one<T>(text: &str) -> Result<T, String>
where
    T: std::str::FromStr + PartialOrd + From<u8>,
    T::Err: std::fmt::Display,
{
    match text.parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        Ok(_) => Err("must be at least 1".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Connect(args) => connect(args),
        Command::Run(args) => run(args),
        Command::Keygen(args) => keygen(args),
        Command::Demo(args) => demo(args),
    };
    #[cfg(unix)]
    client::terminal::wait_if_ending_by_signal();
    ExitCode::from(code)
}

/// `--listen`'s value, read like a client's address (`localhost`, `::1`, `host:0`): the first
/// address it resolves to.
fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    client::resolve(value)
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or_else(|| format!("{value} resolves to no address"))
}

fn init_logging(default_level: &str) {
    logging::init(default_level, Delivery::Immediate);
}

fn fail(code: u8, message: impl std::fmt::Display) -> u8 {
    // Log lines the server held back come first, in the order things happened.
    logging::write_held();
    say!("rcmd: {message}");
    code
}

fn serve(args: ServeArgs) -> u8 {
    // What commands of either server inherit from this process: not its TERM, not the
    // descriptors it was started with.
    #[cfg(unix)]
    {
        // SAFETY: `serve` runs on the main thread before it starts any other (the server's
        // threads start in `Server::bind` and `UnframedServer::run`).
        unsafe { rcmd::server::process::remove_term_from_the_environment() };
        rcmd::server::process::keep_inherited_descriptors_from_commands();
    }
    if args.framing == Framing::Unframed {
        init_logging("info");
        return serve_unframed(args);
    }
    // The event loop writes its log lines after each turn's replies (see `rcmd::logging`).
    logging::init("info", Delivery::Held);
    if args.insecure_no_auth || args.nodelay {
        return fail(
            EXIT_USAGE,
            "--insecure-no-auth and --nodelay apply only to --framing none",
        );
    }
    let encoding = match OutputEncoding::from_label(&args.encoding) {
        Ok(encoding) => encoding,
        Err(why) => return fail(EXIT_USAGE, why),
    };
    let (secret, secret_file) = match server_secret(args.secret.secret_file.as_deref()) {
        Ok(found) => found,
        Err(why) => return fail(EXIT_FAILURE, why),
    };
    let workdir = match server_workdir(args.workdir) {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    // These three are options without clap defaults so that `--framing none` can tell them
    // given; their defaults are the library's, written once.
    let defaults = Limits::default();
    let max_command_len = args.max_command_len.unwrap_or(defaults.max_command_len);
    let max_body = rcmd::protocol::frame::MAX_BODY_LEN;
    if max_command_len > max_body {
        let why =
            format!("--max-command-len cannot exceed the frame body limit of {max_body} bytes");
        return fail(EXIT_USAGE, why);
    }
    let seconds = |secs: u64| (secs > 0).then(|| Duration::from_secs(secs));
    let limits = Limits {
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        idle_timeout: seconds(args.idle_timeout),
        command_timeout: args
            .command_timeout
            .map_or(defaults.command_timeout, seconds),
        max_connections: args.max_connections,
        max_handshakes: args.max_handshakes.unwrap_or(defaults.max_handshakes),
        max_command_len,
    };
    let config = ServerConfig {
        secret,
        encoding,
        workdir,
        limits,
        handle_signals: true,
        secret_file: Some(secret_file),
    };
    #[cfg(unix)]
    {
        rcmd::server::raise_fd_limit();
        // Not in `demo`, whose server shares its process with the prompt: there the terminal
        // is the user's, and the prompt needs it as its controlling terminal (job control).
        rcmd::server::process::keep_commands_off_the_terminal();
    }
    let server = match Server::bind(args.listen, config) {
        Ok(server) => server,
        Err(e) => {
            return fail(
                EXIT_FAILURE,
                format!("cannot listen on {}: {e}", args.listen),
            );
        }
    };
    // The first line of output is the real address, so scripts and tests can use port 0.
    say_out!("listening on {}", server.local_addr());
    let _ = io::stdout().flush();
    match server.run() {
        Ok(()) => {
            logging::write_held();
            0
        }
        Err(e) => fail(EXIT_FAILURE, format!("server failed: {e}")),
    }
}

/// `serve --framing none`: the unframed demonstration server (see `rcmd::sticky`).
fn serve_unframed(args: ServeArgs) -> u8 {
    // Checked before anything is read or bound: without the handshake, anyone who can reach
    // the port runs commands.
    if args.insecure_no_auth
        && let Err(e) = sticky::check_insecure_listen(args.listen)
    {
        return fail(EXIT_USAGE, e);
    }
    // Limits of the framed server that the tutorial one does not have: its command is what one
    // 1024-byte read returns, runs to its end, and only --max-connections bounds its clients.
    for (flag, given) in [
        ("--command-timeout", args.command_timeout.is_some()),
        ("--max-handshakes", args.max_handshakes.is_some()),
        ("--max-command-len", args.max_command_len.is_some()),
    ] {
        if given {
            return fail(
                EXIT_USAGE,
                format!("{flag} is not supported with --framing none"),
            );
        }
    }
    let encoding = match OutputEncoding::from_label(&args.encoding) {
        Ok(encoding) => encoding,
        Err(why) => return fail(EXIT_USAGE, why),
    };
    let secret = if args.insecure_no_auth {
        None
    } else {
        match server_secret(args.secret.secret_file.as_deref()) {
            Ok((secret, _)) => Some(secret),
            Err(why) => return fail(EXIT_FAILURE, why),
        }
    };
    let workdir = match server_workdir(args.workdir) {
        Ok(dir) => dir,
        Err(code) => return code,
    };
    let config = sticky::UnframedConfig {
        nodelay: args.nodelay,
        encoding,
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_secs(args.idle_timeout)),
        max_connections: args.max_connections,
        ..sticky::UnframedConfig::new(secret, workdir)
    };
    let server = match sticky::UnframedServer::bind(args.listen, config) {
        Ok(server) => server,
        Err(e) => return fail(EXIT_FAILURE, e),
    };
    // The same first line as the framed server, so scripts and tests work with either.
    say_out!("listening on {}", server.local_addr());
    let _ = io::stdout().flush();
    match server.run() {
        Ok(()) => {
            logging::write_held();
            0
        }
        Err(e) => fail(EXIT_FAILURE, format!("server failed: {e}")),
    }
}

/// Where commands start: `--workdir`, else the user's home directory (sshd starts sessions
/// there; a server started from some project's directory should not run everyone's commands
/// in it), else the server's own working directory. On failure the error is reported and its
/// exit status returned.
fn server_workdir(flag: Option<PathBuf>) -> Result<PathBuf, u8> {
    let home = || rcmd::server::builtins::home_dir().filter(|home| home.is_dir());
    match flag.or_else(home).map_or_else(std::env::current_dir, Ok) {
        Ok(dir) if dir.is_dir() => Ok(dir),
        Ok(dir) => {
            let what = if dir.exists() {
                "not a directory"
            } else {
                "no such directory"
            };
            let why = format!("--workdir {}: {what}", dir.display());
            Err(fail(EXIT_USAGE, why))
        }
        Err(e) => {
            let why = format!("cannot determine the working directory: {e}");
            Err(fail(EXIT_FAILURE, why))
        }
    }
}

/// The server's secret and the file it is in. Only the per-user default file is created when
/// missing: a file named by `--secret-file` or `RCMD_SECRET_FILE` that is not there is more
/// likely a typo, and a made-up secret would fail every client's handshake.
fn server_secret(flag: Option<&Path>) -> Result<(Vec<u8>, PathBuf), secret::SecretError> {
    let path = secret::resolve_path(flag)?;
    if !secret::named(flag) && !path.exists() {
        match secret::generate(&path, false) {
            Ok(()) => say_secret_created(&path),
            // Another process created it between our look and our write: use theirs.
            Err(secret::SecretError::Exists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((secret::load_for_server(&path)?, path))
}

fn say_secret_created(path: &Path) {
    info!(
        "created a new secret in {}; copy this file to clients",
        path.display()
    );
}

/// The demo's secret. Its server is a real one, on loopback, so the file gets a server's
/// checks ([`secret::load_for_server`]): a secret other users can read would let them run
/// commands as whoever started the demo. Unlike `serve`, a missing named file is created
/// (in a directory that exists), since the demo is where people start.
fn demo_secret(flag: Option<&Path>) -> Result<Vec<u8>, secret::SecretError> {
    let path = secret::resolve_path(flag)?;
    if !path.exists() {
        if secret::named_elsewhere(flag, &path) {
            secret::require_existing_directory(&path)?;
        }
        match secret::generate(&path, false) {
            Ok(()) => say_secret_created(&path),
            // Another process created it between our look and our write: use theirs.
            Err(secret::SecretError::Exists(_)) => {}
            Err(e) => return Err(e),
        }
    }
    secret::load_for_server(&path)
}

fn load_secret(flag: Option<&Path>) -> Result<Vec<u8>, u8> {
    secret::resolve_path(flag)
        .and_then(|path| secret::load(&path))
        .map_err(|e| fail(EXIT_CLIENT_FAILURE, e))
}

fn start_session(addr: &str, secret_flag: Option<&Path>) -> Result<Session, u8> {
    let secret = load_secret(secret_flag)?;
    if let Err(e) = interrupt::install() {
        return Err(fail(
            EXIT_CLIENT_FAILURE,
            format!("cannot handle Ctrl-C: {e}"),
        ));
    }
    Session::connect(addr, &secret).map_err(|e| fail(EXIT_CLIENT_FAILURE, e))
}

fn connect(args: ConnectArgs) -> u8 {
    init_logging("warn");
    let addr = match client::target_address(args.addr.as_deref(), args.port) {
        Ok(addr) => addr,
        // As an address that does not resolve (ssh exits 255 for every address problem).
        Err(e) => return fail(EXIT_CLIENT_FAILURE, e),
    };
    if args.framing == Framing::Unframed {
        return connect_unframed(&addr, args);
    }
    if args.insecure_no_auth {
        return fail(
            EXIT_USAGE,
            "--insecure-no-auth applies only to --framing none",
        );
    }
    let traced = args.recv_size.is_some() || args.read_delay_ms.is_some();
    let options = match read_options(&args) {
        Ok(options) => options,
        Err(code) => return code,
    };
    match start_session(&addr, args.secret.secret_file.as_deref()) {
        Ok(mut session) => {
            if traced {
                session.trace_reads(options.pacing(), client::trace::to_stderr());
            }
            prompt_exit_code(prompt::run_prompt(&mut session, history_path()))
        }
        Err(code) => code,
    }
}

/// How `connect` reads with `--recv-size` and `--read-delay-ms`, defaults filled in.
fn read_options(args: &ConnectArgs) -> Result<sticky::ReadOptions, u8> {
    let defaults = sticky::ReadOptions::default();
    let recv_size = args.recv_size.unwrap_or(defaults.recv_size);
    if !(1..=sticky::client::MAX_RECV_SIZE).contains(&recv_size) {
        let why = format!(
            "--recv-size must be between 1 and {}",
            sticky::client::MAX_RECV_SIZE
        );
        return Err(fail(EXIT_USAGE, why));
    }
    Ok(sticky::ReadOptions {
        recv_size,
        read_delay: args
            .read_delay_ms
            .map_or(defaults.read_delay, Duration::from_millis),
        ..defaults
    })
}

/// `connect --framing none`: one read per command, printed as it came (see `rcmd::sticky`).
fn connect_unframed(addr: &str, args: ConnectArgs) -> u8 {
    let options = match read_options(&args) {
        Ok(options) => options,
        Err(code) => return code,
    };
    let secret = if args.insecure_no_auth {
        None
    } else {
        match load_secret(args.secret.secret_file.as_deref()) {
            Ok(secret) => Some(secret),
            Err(code) => return code,
        }
    };
    match sticky::client::connect_and_prompt(addr, secret.as_deref(), options) {
        Ok(status) => status.rem_euclid(256) as u8,
        Err(sticky::StickyError::LocalIo(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            end_as_killed_by_sigpipe()
        }
        Err(e) => fail(EXIT_CLIENT_FAILURE, e),
    }
}

fn prompt_exit_code(outcome: Result<i32, ClientError>) -> u8 {
    match outcome {
        Ok(code) => local_exit_code(code),
        // The session ended because this process is ending by a signal (`rcmd demo`): nothing
        // to report, and the status will be the signal's.
        #[cfg(unix)]
        Err(_) if client::terminal::ending_by_signal() => EXIT_CLIENT_FAILURE,
        Err(ClientError::LocalOutput(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            end_as_killed_by_sigpipe()
        }
        Err(e) => fail(EXIT_CLIENT_FAILURE, e),
    }
}

/// The reader of our output has gone (`rcmd run host yes | head -n 1`): it has what it wanted.
/// End as a local `yes` would, killed by SIGPIPE, so that a shell shows 141 and `set -o
/// pipefail` sees the output was cut short. Leaving closes the connection, and the server
/// kills the command.
fn end_as_killed_by_sigpipe() -> u8 {
    let _ = io::stderr().flush();
    #[cfg(unix)]
    {
        // Rust ignores SIGPIPE in its programs; this restores the default action and raises it.
        let _ = signal_hook::low_level::emulate_default_handler(signal_hook::consts::SIGPIPE);
    }
    EXIT_BROKEN_PIPE
}

fn history_path() -> Option<PathBuf> {
    secret::default_path().and_then(|path| path.parent().map(|dir| dir.join("history")))
}

/// A remote status as our own exit code. Unix statuses are 0–255 already; a Windows status
/// outside that range becomes 1 rather than wrapping to something that could read as success.
fn local_exit_code(code: i32) -> u8 {
    u8::try_from(code).unwrap_or(1)
}

fn run(args: RunArgs) -> u8 {
    init_logging("warn");
    let (addr, words) = match args.address_and_command() {
        Ok(parts) => parts,
        Err((code, why)) => return fail(code, why),
    };
    // Joined with spaces, as ssh does: `rcmd run host ls -la` runs `ls -la`.
    let command = words.join(" ");
    if command.trim().is_empty() {
        return fail(EXIT_USAGE, "the command is empty");
    }
    let mut session = match start_session(&addr, args.secret.secret_file.as_deref()) {
        Ok(session) => session,
        Err(code) => return code,
    };
    let (input, stdin_count) = if args.no_stdin || io::stdin().is_terminal() {
        (CommandInput::None, None)
    } else {
        let (stdin, count) = CountingReader::new(client::stdio::PatientStdin::new());
        (CommandInput::Forward(Box::new(stdin)), Some(count))
    };
    let mut terminal = match TerminalSink::new() {
        Ok(sink) => sink,
        Err(e) => return fail(EXIT_CLIENT_FAILURE, ClientError::LocalOutput(e)),
    };
    let mut sink = CountingSink::new(&mut terminal);
    let started = Instant::now();
    let outcome = session.run(&command, input, args.timeout, &mut sink);
    let mut cut_short = false;
    let code = match outcome {
        Ok(status) => {
            if status == rcmd::protocol::ExitStatus::TimedOut {
                say!("rcmd: command timed out");
            }
            local_exit_code(status.shell_code())
        }
        Err(ClientError::LocalOutput(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            cut_short = true;
            EXIT_BROKEN_PIPE
        }
        Err(e) => fail(EXIT_CLIENT_FAILURE, e),
    };
    if args.stats {
        let (stdout_bytes, stderr_bytes) = sink.counts();
        let report = TransferReport {
            stdout_bytes,
            stderr_bytes,
            stdin_bytes: stdin_count.map_or(0, |count| count.load(Ordering::Relaxed)),
            elapsed: started.elapsed(),
        };
        say!("rcmd: {report}");
    }
    if cut_short {
        return end_as_killed_by_sigpipe();
    }
    code
}

fn keygen(args: KeygenArgs) -> u8 {
    let path = match secret::resolve_path(args.secret.secret_file.as_deref()) {
        Ok(path) => path,
        Err(e) => return fail(EXIT_FAILURE, e),
    };
    let flag = args.secret.secret_file.as_deref();
    if secret::named_elsewhere(flag, &path)
        && let Err(e) = secret::require_existing_directory(&path)
    {
        return fail(EXIT_FAILURE, e);
    }
    match secret::generate(&path, args.force) {
        Ok(()) => {
            say_out!("wrote a new secret to {}", path.display());
            0
        }
        Err(e) => fail(EXIT_FAILURE, e),
    }
}

fn demo(args: DemoArgs) -> u8 {
    if let Some(DemoTopic::Sticky) = args.topic {
        return demo_sticky();
    }
    init_logging("warn");
    let secret_flag = args.secret.secret_file.as_deref();
    let secret = match demo_secret(secret_flag) {
        Ok(secret) => secret,
        Err(e) => return fail(EXIT_FAILURE, e),
    };
    // Its server is reachable by anyone with the secret, like `serve`'s.
    #[cfg(unix)]
    rcmd::server::process::keep_inherited_descriptors_from_commands();
    let workdir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let config = ServerConfig {
        secret,
        encoding: OutputEncoding::auto(),
        workdir,
        limits: Limits::default(),
        handle_signals: false,
        secret_file: None,
    };
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut server = match Server::bind(loopback, config) {
        Ok(server) => server,
        Err(e) => return fail(EXIT_FAILURE, format!("cannot start the demo server: {e}")),
    };
    let addr = server.local_addr();
    // The server is a thread of this process: however the demo ends (the prompt left, the
    // terminal closed, SIGTERM), the server is stopped first, so that it kills the command it
    // runs instead of leaving it behind (`rcmd::client::terminal`).
    #[cfg(unix)]
    let stop = match server.stop_handle() {
        Ok(handle) => std::sync::Arc::new(handle),
        Err(e) => return fail(EXIT_FAILURE, format!("cannot start the demo server: {e}")),
    };
    #[cfg(unix)]
    {
        let stop = stop.clone();
        client::terminal::before_dying_of_a_signal(move || {
            stop.stop(DEMO_STOP_WAIT);
        });
        client::terminal::restore_on_termination();
    }
    std::thread::spawn(move || {
        if let Err(e) = server.run() {
            say!("rcmd: demo server failed: {e}");
        }
    });
    // The command to reach it from elsewhere, with the secret it needs if it is not the default.
    let secret_arg = secret_flag.map_or(String::new(), |path| {
        format!(" --secret-file {}", secret::quoted_if_needed(path))
    });
    say!(
        "rcmd demo: a server on {addr} runs your commands; `rcmd connect {addr}{secret_arg}` reaches it from another terminal."
    );
    let outcome = start_session(&addr.to_string(), secret_flag)
        .map(|mut session| prompt::run_prompt(&mut session, history_path()));
    // Before the outcome is acted on: a broken pipe ends this process by SIGPIPE right there.
    #[cfg(unix)]
    stop.stop(DEMO_STOP_WAIT);
    match outcome {
        Ok(prompt_outcome) => prompt_exit_code(prompt_outcome),
        Err(code) => code,
    }
}

/// How long the demo waits for its server to kill the running commands as it stops; the loop
/// does it in its next turn, well under a millisecond on an idle machine.
#[cfg(unix)]
const DEMO_STOP_WAIT: Duration = Duration::from_secs(2);

/// `rcmd demo sticky`: both sticky-packet effects and their fix, on loopback.
fn demo_sticky() -> u8 {
    // The demo explains the unframed mode itself: its server's start-up warning would only
    // interrupt the explanation (RUST_LOG=warn brings it back).
    init_logging("error");
    match sticky::demo::run(&mut io::stdout().lock()) {
        Ok(()) => 0,
        Err(sticky::demo::DemoError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => {
            end_as_killed_by_sigpipe()
        }
        Err(e) => fail(EXIT_FAILURE, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_are_read_like_client_addresses() {
        assert_eq!(
            parse_listen("127.0.0.1"),
            Ok(SocketAddr::from(([127, 0, 0, 1], client::DEFAULT_PORT)))
        );
        assert_eq!(
            parse_listen("127.0.0.1:0"),
            Ok(SocketAddr::from(([127, 0, 0, 1], 0)))
        );
        assert_eq!(parse_listen("[::1]:7"), Ok("[::1]:7".parse().unwrap()));
        let localhost = parse_listen("localhost:0").expect("localhost resolves");
        assert!(localhost.ip().is_loopback() && localhost.port() == 0);
        assert!(parse_listen("127.0.0.1:99999").is_err());
    }

    /// What `rcmd run ARGS...` would run, and where.
    /// The address and command `rcmd run ARGS` would use, or the exit code and message it
    /// would fail with (clap's usage errors exit 2).
    fn run_target(args: &str) -> Result<(String, String), (u8, String)> {
        let argv = ["rcmd", "run"].into_iter().chain(args.split_whitespace());
        let Command::Run(run) = Cli::try_parse_from(argv)
            .map_err(|e| (EXIT_USAGE, e.to_string()))?
            .command
        else {
            unreachable!("parsed as run")
        };
        let (addr, words) = run.address_and_command()?;
        Ok((addr.to_owned(), words.join(" ")))
    }

    #[test]
    fn the_secret_file_may_follow_a_demo_topic() {
        for argv in [
            ["rcmd", "demo", "sticky", "--secret-file", "f"],
            ["rcmd", "demo", "--secret-file", "f", "sticky"],
        ] {
            let Command::Demo(demo) = Cli::try_parse_from(argv).unwrap().command else {
                panic!("parsed as demo")
            };
            assert_eq!(demo.secret.secret_file, Some(PathBuf::from("f")));
        }
    }

    #[test]
    fn run_takes_the_address_then_the_command_as_ssh_does() {
        let at = |addr: &str, command: &str| Ok((addr.to_owned(), command.to_owned()));
        assert_eq!(run_target("host ls -la"), at("host", "ls -la"));
        assert_eq!(run_target("host -- ls -la"), at("host", "ls -la"));
        assert_eq!(run_target("-- ls -la"), at(client::DEFAULT_ADDR, "ls -la"));
        assert_eq!(
            run_target("--stats host:7 tar --stats"),
            at("host:7", "tar --stats")
        );
        // After the address everything is the command, as with ssh: `--` included.
        assert_eq!(run_target("host ls -- -x"), at("host", "ls -- -x"));
        assert_eq!(
            run_target("--timeout 5 -- true"),
            at(client::DEFAULT_ADDR, "true")
        );
        let failure = |args, code| {
            let (got, why) = run_target(args).expect_err(args);
            assert_eq!(got, code, "{args}: {why}");
            why
        };
        let usage = |args| failure(args, EXIT_USAGE);
        assert!(usage("").starts_with("no command given"));
        assert!(usage("host").starts_with("no command given for host"));
        assert!(usage("-x host true").contains("unexpected argument '-x'"));
        assert!(usage("host -x true").starts_with("unknown option -x"));
        assert!(usage("host --bogus echo x").starts_with("unknown option --bogus"));
        assert_eq!(run_target("host -- -x"), at("host", "-x"));
        // ssh's -p, before the address or after it.
        assert_eq!(run_target("-p 2222 host uptime"), at("host:2222", "uptime"));
        assert_eq!(run_target("host -p 2222 uptime"), at("host:2222", "uptime"));
        assert_eq!(run_target("-p 2222 -- true"), at("127.0.0.1:2222", "true"));
        // An address that cannot be one fails as one that does not resolve, as in ssh.
        assert!(
            failure("-p 2222 host:7 true", EXIT_CLIENT_FAILURE)
                .ends_with("it names a port, and -p names another")
        );
        assert!(failure("-p 2222 [::1 true", EXIT_CLIENT_FAILURE).contains("no closing ]"));
        assert!(usage("-p 99999 host true").contains("99999"));
        // A lone address is not suggested as a command; a lone word may be one.
        for addr in ["127.0.0.1:37867", "host:7", "::1", "[::1]:7"] {
            assert!(!usage(addr).contains("rcmd run --"), "{addr}");
        }
        assert!(usage("uptime").contains("or rcmd run -- uptime"));
        assert!(
            usage("-p 2222 uptime")
                .ends_with("(or rcmd run -p 2222 -- uptime to run it on 127.0.0.1:2222)")
        );
        assert!(usage("-p 0 host true").contains("0"));
    }
}
