//! Load generator for `scripts/bench.sh`: the timing loops of the benchmarks, in-process, so that
//! what is measured is rcmd (or the machine's own floor), not the cost of starting a timer.
//!
//! Every subcommand prints exactly one JSON object on stdout with its measurements, and exits
//! non-zero (with the reason on stderr) if any output it checked was wrong: the benchmarks
//! double as correctness checks.
//!
//! ```text
//! loadgen rtt        --addr A --secret-file P --n N [--cmd CMD --expect OUT]
//! loadgen spawn      --n N [--piped] [--cmd CMD --expect OUT]
//! loadgen bare-server                  (prints its address, serves until killed)
//! loadgen bare-rtt   --addr A --n N
//! loadgen exec       --n N [--expect OUT] -- PROGRAM ARGS...
//! loadgen stream     --addr A --secret-file P --bytes B [--delay-us U] [--server-pid PID]
//! loadgen idle       --addr A --secret-file P --n N --server-pid PID
//! loadgen conc       --addr A --secret-file P --clients N --k K
//! loadgen spawn-conc --clients N --k K
//! loadgen handshakes --addr A --secret-file P --secs S --max M
//! ```

use std::io;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use rand::Rng;
use serde_json::{Value, json};

use rcmd::client::{CommandInput, OutputSink, Session};
use rcmd::protocol::ExitStatus;

#[derive(Parser)]
#[command(name = "loadgen", about = "rcmd benchmark load generator")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args, Clone)]
struct Target {
    /// Server address.
    #[arg(long)]
    addr: String,
    /// Shared secret file.
    #[arg(long)]
    secret_file: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Round trips of one command on one already-authenticated connection.
    Rtt {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        n: usize,
        #[arg(long, default_value = "true")]
        cmd: String,
        /// Exact stdout expected from each run.
        #[arg(long, default_value = "")]
        expect: String,
    },
    /// The local floor: spawn `sh -c CMD` and wait for it, N times, from this process.
    Spawn {
        #[arg(long, default_value_t = 1000)]
        n: usize,
        #[arg(long, default_value = "true")]
        cmd: String,
        #[arg(long, default_value = "")]
        expect: String,
        /// Capture stdout and stderr through pipes (as the server does) instead of /dev/null.
        #[arg(long)]
        piped: bool,
    },
    /// The smallest remote spawn over TCP, as a second floor: one byte in, `/bin/sh -c true`
    /// with piped stdout and stderr (as rcmd's server runs it), one byte out with its exit code.
    /// Blocking I/O, no protocol, no authentication, no event loop. Serves one connection at a
    /// time until killed.
    BareServer,
    /// Round trips against `bare-server`: what being remote costs before any protocol.
    BareRtt {
        #[arg(long)]
        addr: String,
        #[arg(long, default_value_t = 1000)]
        n: usize,
    },
    /// Whole-process timing: run PROGRAM ARGS N times, check exit 0 and stdout.
    Exec {
        #[arg(long, default_value_t = 100)]
        n: usize,
        #[arg(long, default_value = "")]
        expect: String,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Stream `head -c BYTES /dev/zero` to this client; count and check every byte.
    Stream {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        bytes: u64,
        /// Sleep this long after every output frame (a slow reader).
        #[arg(long, default_value_t = 0)]
        delay_us: u64,
        /// Sample this process's memory while streaming (the server).
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Open N authenticated connections and leave them idle; report the server's RSS growth.
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        n: usize,
        #[arg(long)]
        server_pid: u32,
    },
    /// N concurrent clients, each running K unique `echo` commands and checking their output.
    Conc {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        k: usize,
    },
    /// The local floor of `conc`: N threads, each spawning K `sh -c 'echo TOKEN'` and checking.
    SpawnConc {
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        k: usize,
    },
    /// Connect and authenticate in a loop, for SECS seconds or MAX connections.
    Handshakes {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        #[arg(long, default_value_t = 20000)]
        max: usize,
        /// Clients connecting in parallel, so the server (not one client's round trips) is
        /// the bottleneck.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
}

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Cmd::Rtt {
            target,
            n,
            cmd,
            expect,
        } => rtt(&target, n, &cmd, &expect),
        Cmd::Spawn {
            n,
            cmd,
            expect,
            piped,
        } => spawn(n, &cmd, &expect, piped),
        Cmd::BareServer => bare_server(),
        Cmd::BareRtt { addr, n } => bare_rtt(&addr, n),
        Cmd::Exec { n, expect, argv } => exec(n, &expect, &argv),
        Cmd::Stream {
            target,
            bytes,
            delay_us,
            server_pid,
        } => stream(&target, bytes, delay_us, server_pid),
        Cmd::Idle {
            target,
            n,
            server_pid,
        } => idle(&target, n, server_pid),
        Cmd::Conc { target, clients, k } => conc(&target, clients, k),
        Cmd::SpawnConc { clients, k } => spawn_conc(clients, k),
        Cmd::Handshakes {
            target,
            secs,
            max,
            threads,
        } => handshakes(&target, secs, max, threads),
    };
    match outcome {
        Ok(value) => {
            println!("{value}");
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("loadgen: FAILED: {why}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------- statistics

/// Runs `once` up to 50 times to warm up, then `n` times under the clock: the latency figures.
fn timed(n: usize, mut once: impl FnMut() -> Result<()>) -> Result<Value> {
    for _ in 0..n.min(50) {
        once()?;
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        once()?;
        samples.push(start.elapsed());
    }
    Ok(latency_stats(&mut samples))
}

/// Median, p99 and friends of latency samples, in microseconds.
fn latency_stats(samples: &mut [Duration]) -> Value {
    samples.sort_unstable();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let pick = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        us(samples[i])
    };
    let mean = samples.iter().map(|&d| us(d)).sum::<f64>() / samples.len() as f64;
    // Rounded to 0.1 us: the orchestrator pools the samples of several rounds.
    let raw: Vec<f64> = samples
        .iter()
        .map(|&d| (us(d) * 10.0).round() / 10.0)
        .collect();
    json!({
        "samples_us": raw,
        "n": samples.len(),
        "min_us": us(samples[0]),
        "p50_us": pick(0.5),
        "p90_us": pick(0.9),
        "p99_us": pick(0.99),
        "max_us": us(samples[samples.len() - 1]),
        "mean_us": mean,
    })
}

fn merge(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(base), Value::Object(extra)) = (&mut base, extra) {
        base.extend(extra);
    }
    base
}

// ---------------------------------------------------------------- helpers

fn load_secret(target: &Target) -> Result<Vec<u8>> {
    rcmd::secret::load(&target.secret_file).map_err(|e| e.to_string())
}

fn connect(target: &Target, secret: &[u8]) -> Result<Session> {
    Session::connect(&target.addr, secret).map_err(|e| format!("connect: {e}"))
}

/// Keeps everything a command printed.
#[derive(Default)]
struct CollectSink {
    out: Vec<u8>,
    err: Vec<u8>,
}

impl OutputSink for CollectSink {
    fn stdout(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.extend_from_slice(bytes);
        Ok(())
    }
    fn stderr(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.err.extend_from_slice(bytes);
        Ok(())
    }
}

/// Runs one command and checks it exited 0 with exactly `expect` on stdout and nothing on stderr.
fn run_checked(session: &mut Session, cmd: &str, expect: &str) -> Result<()> {
    let mut sink = CollectSink::default();
    let status = session
        .run(cmd, CommandInput::None, None, &mut sink)
        .map_err(|e| format!("run {cmd:?}: {e}"))?;
    check_output(
        cmd,
        status == ExitStatus::Exited { code: 0 },
        &sink.out,
        &sink.err,
        expect,
    )
}

fn check_output(cmd: &str, success: bool, out: &[u8], err: &[u8], expect: &str) -> Result<()> {
    if !success {
        return Err(format!("{cmd:?} did not exit 0"));
    }
    if out != expect.as_bytes() || !err.is_empty() {
        return Err(format!(
            "{cmd:?}: wrong output: stdout {:?} (expected {expect:?}), stderr {:?}",
            String::from_utf8_lossy(out),
            String::from_utf8_lossy(err)
        ));
    }
    Ok(())
}

fn sh(cmd: &str, piped: bool) -> Command {
    let mut command = Command::new("/bin/sh");
    command.args(["-c", cmd]).stdin(Stdio::null());
    if piped {
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
    } else {
        command.stdout(Stdio::null()).stderr(Stdio::null());
    }
    command
}

/// `VmRSS` and `VmHWM` of a process, in bytes.
fn memory_of(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    let field = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| kb * 1024)
            .ok_or_else(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |dir| dir.count())
}

fn token() -> u64 {
    rand::thread_rng().r#gen()
}

// ---------------------------------------------------------------- latency

fn rtt(target: &Target, n: usize, cmd: &str, expect: &str) -> Result<Value> {
    let secret = load_secret(target)?;
    let mut session = connect(target, &secret)?;
    timed(n, || run_checked(&mut session, cmd, expect))
}

fn bare_server() -> Result<Value> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The address first, on a line of its own, for whoever started us.
    println!("{addr}");
    io::Write::flush(&mut io::stdout()).map_err(|e| e.to_string())?;
    for stream in listener.incoming() {
        let mut stream = stream.map_err(|e| format!("accept: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut request = [0u8; 1];
        while stream.read_exact(&mut request).is_ok() {
            let output = sh("true", true)
                .output()
                .map_err(|e| format!("spawn sh: {e}"))?;
            let code = output.status.code().unwrap_or(255) as u8;
            if stream.write_all(&[code]).is_err() {
                break;
            }
        }
    }
    Ok(json!({}))
}

fn bare_rtt(addr: &str, n: usize) -> Result<Value> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let once = || -> Result<()> {
        let mut reply = [0u8; 1];
        stream
            .write_all(b"x")
            .and_then(|()| stream.read_exact(&mut reply))
            .map_err(|e| format!("bare round trip: {e}"))?;
        match reply[0] {
            0 => Ok(()),
            code => Err(format!("sh -c true exited {code} on the bare server")),
        }
    };
    timed(n, once)
}

fn spawn(n: usize, cmd: &str, expect: &str, piped: bool) -> Result<Value> {
    let once = || -> Result<()> {
        let mut command = sh(cmd, piped);
        if piped {
            let output = command.output().map_err(|e| format!("spawn sh: {e}"))?;
            check_output(
                cmd,
                output.status.success(),
                &output.stdout,
                &output.stderr,
                expect,
            )
        } else {
            let status = command.status().map_err(|e| format!("spawn sh: {e}"))?;
            if !status.success() {
                return Err(format!("sh -c {cmd:?}: {status}"));
            }
            Ok(())
        }
    };
    timed(n, once)
}

fn exec(n: usize, expect: &str, argv: &[String]) -> Result<Value> {
    let (program, args) = argv.split_first().ok_or("no program")?;
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 1 {
        let start = Instant::now();
        let output = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        let elapsed = start.elapsed();
        let shown = argv.join(" ");
        check_output(&shown, output.status.success(), &output.stdout, b"", expect)
            .map_err(|e| format!("{e}; stderr: {}", String::from_utf8_lossy(&output.stderr)))?;
        if i > 0 {
            samples.push(elapsed); // the first run warms caches
        }
    }
    Ok(latency_stats(&mut samples))
}

// ---------------------------------------------------------------- throughput and memory

/// Counts bytes and checks that every one is zero, optionally reading slowly.
struct ZeroSink {
    bytes: u64,
    frames: u64,
    nonzero: u64,
    delay: Duration,
}

impl OutputSink for ZeroSink {
    fn stdout(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.bytes += bytes.len() as u64;
        self.frames += 1;
        if bytes.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            self.nonzero += 1;
        }
        if !self.delay.is_zero() {
            thread::sleep(self.delay);
        }
        Ok(())
    }
    fn stderr(&mut self, bytes: &[u8]) -> io::Result<()> {
        Err(io::Error::other(format!(
            "unexpected stderr: {}",
            String::from_utf8_lossy(bytes)
        )))
    }
}

fn stream(target: &Target, bytes: u64, delay_us: u64, server_pid: Option<u32>) -> Result<Value> {
    let secret = load_secret(target)?;
    let mut session = connect(target, &secret)?;
    run_checked(&mut session, "true", "")?;
    let before = server_pid.map(memory_of).transpose()?;
    // Sample the server's RSS while it streams; VmHWM (the kernel's own peak) is read at the end.
    let stop = Arc::new(AtomicU64::new(0));
    let sampler = server_pid.map(|pid| {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut peak = 0u64;
            while stop.load(Ordering::Relaxed) == 0 {
                if let Ok((rss, _)) = memory_of(pid) {
                    peak = peak.max(rss);
                }
                thread::sleep(Duration::from_millis(20));
            }
            peak
        })
    });
    let mut sink = ZeroSink {
        bytes: 0,
        frames: 0,
        nonzero: 0,
        delay: Duration::from_micros(delay_us),
    };
    let cmd = format!("head -c {bytes} /dev/zero");
    let start = Instant::now();
    let status = session
        .run(&cmd, CommandInput::None, None, &mut sink)
        .map_err(|e| format!("run {cmd:?}: {e}"))?;
    let elapsed = start.elapsed();
    stop.store(1, Ordering::Relaxed);
    let sampled_peak = sampler.map(|s| s.join().unwrap_or(0));
    if status != (ExitStatus::Exited { code: 0 }) {
        return Err(format!("{cmd:?} ended with {status:?}"));
    }
    if sink.bytes != bytes || sink.nonzero != 0 {
        return Err(format!(
            "{cmd:?}: received {} bytes ({} frames with non-zero bytes), expected {bytes} zero bytes",
            sink.bytes, sink.nonzero
        ));
    }
    let mut result = json!({
        "bytes": sink.bytes,
        "frames": sink.frames,
        "secs": elapsed.as_secs_f64(),
        "bytes_per_sec": sink.bytes as f64 / elapsed.as_secs_f64(),
    });
    if let (Some(pid), Some((rss0, hwm0))) = (server_pid, before) {
        let (rss1, hwm1) = memory_of(pid)?;
        result = merge(
            result,
            json!({
                "server_rss_before": rss0,
                "server_hwm_before": hwm0,
                "server_rss_after": rss1,
                "server_hwm_after": hwm1,
                "server_rss_sampled_peak": sampled_peak.unwrap_or(0),
            }),
        );
    }
    Ok(result)
}

fn idle(target: &Target, n: usize, server_pid: u32) -> Result<Value> {
    let secret = load_secret(target)?;
    // Warm the server up (allocator arenas, a spawned command) before the baseline.
    {
        let mut warm = connect(target, &secret)?;
        run_checked(&mut warm, "echo warm", "warm\n")?;
    }
    thread::sleep(Duration::from_millis(300));
    let (rss_before, _) = memory_of(server_pid)?;
    let fds_before = open_fds(server_pid);
    let mut sessions = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        sessions.push(connect(target, &secret)?);
    }
    let connect_secs = start.elapsed().as_secs_f64();
    thread::sleep(Duration::from_millis(500));
    let (rss_idle, _) = memory_of(server_pid)?;
    let fds_idle = open_fds(server_pid);
    // Prove every one of them is alive and authenticated, then measure again: after a command
    // each, idle connections should have given back their buffers.
    for (i, session) in sessions.iter_mut().enumerate() {
        run_checked(session, &format!("echo idle-{i}"), &format!("idle-{i}\n"))?;
    }
    thread::sleep(Duration::from_millis(500));
    let (rss_used, _) = memory_of(server_pid)?;
    drop(sessions);
    Ok(json!({
        "n": n,
        "connect_secs": connect_secs,
        "rss_before": rss_before,
        "rss_idle": rss_idle,
        "rss_after_one_command_each": rss_used,
        "bytes_per_conn": (rss_idle as f64 - rss_before as f64) / n as f64,
        "bytes_per_conn_after_command": (rss_used as f64 - rss_before as f64) / n as f64,
        "fds_before": fds_before,
        "fds_idle": fds_idle,
    }))
}

// ---------------------------------------------------------------- concurrency

struct ConcOutcome {
    samples: Vec<Duration>,
    errors: Vec<String>,
    elapsed: Duration,
    connect: Duration,
}

/// Runs `clients` threads. Each calls `setup` (connect), waits for all the others, then calls
/// `work` K times, timing each call; errors are collected, never hidden.
fn run_clients<S, F, G>(clients: usize, k: usize, setup: F, work: G) -> ConcOutcome
where
    S: Send,
    F: Fn(usize) -> Result<S> + Sync,
    G: Fn(&mut S, usize, usize) -> Result<()> + Sync,
{
    let barrier = Barrier::new(clients + 1);
    let samples = Mutex::new(Vec::with_capacity(clients * k));
    let errors = Mutex::new(Vec::new());
    let started = Instant::now();
    let mut released = None;
    thread::scope(|scope| {
        for client in 0..clients {
            let (barrier, samples, errors, setup, work) =
                (&barrier, &samples, &errors, &setup, &work);
            thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(scope, move || {
                    let state = setup(client);
                    barrier.wait();
                    let mut state = match state {
                        Ok(state) => state,
                        Err(e) => {
                            errors.lock().unwrap().push(format!("client {client}: {e}"));
                            return;
                        }
                    };
                    let mut mine = Vec::with_capacity(k);
                    for i in 0..k {
                        let start = Instant::now();
                        match work(&mut state, client, i) {
                            Ok(()) => mine.push(start.elapsed()),
                            Err(e) => {
                                errors.lock().unwrap().push(format!("client {client}: {e}"));
                                break;
                            }
                        }
                    }
                    samples.lock().unwrap().extend(mine);
                })
                .expect("spawn client thread");
        }
        barrier.wait();
        released = Some(Instant::now());
        // Leaving the scope joins every client thread.
    });
    let released = released.expect("set in the scope");
    let elapsed = released.elapsed();
    let connect = released - started;
    ConcOutcome {
        samples: samples.into_inner().unwrap(),
        errors: errors.into_inner().unwrap(),
        elapsed,
        connect,
    }
}

fn conc_report(clients: usize, k: usize, mut outcome: ConcOutcome) -> Result<Value> {
    if !outcome.errors.is_empty() {
        let shown: Vec<_> = outcome.errors.iter().take(5).cloned().collect();
        return Err(format!(
            "{} of {clients} clients failed: {}",
            outcome.errors.len(),
            shown.join("; ")
        ));
    }
    let commands = outcome.samples.len();
    if commands != clients * k {
        return Err(format!(
            "{commands} commands completed, expected {}",
            clients * k
        ));
    }
    let stats = latency_stats(&mut outcome.samples);
    Ok(merge(
        stats,
        json!({
            "clients": clients,
            "k": k,
            "commands": commands,
            "errors": 0,
            "secs": outcome.elapsed.as_secs_f64(),
            "connect_secs": outcome.connect.as_secs_f64(),
            "commands_per_sec": commands as f64 / outcome.elapsed.as_secs_f64(),
        }),
    ))
}

fn conc(target: &Target, clients: usize, k: usize) -> Result<Value> {
    let secret = load_secret(target)?;
    let run = token();
    let outcome = run_clients(
        clients,
        k,
        |_| connect(target, &secret),
        |session, client, i| {
            let expect = format!("t{run:x}-{client}-{i}");
            run_checked(session, &format!("echo {expect}"), &format!("{expect}\n"))
        },
    );
    conc_report(clients, k, outcome)
}

fn spawn_conc(clients: usize, k: usize) -> Result<Value> {
    let run = token();
    let outcome = run_clients(
        clients,
        k,
        |_| Ok(()),
        |_, client, i| {
            let expect = format!("t{run:x}-{client}-{i}");
            let cmd = format!("echo {expect}");
            let output = sh(&cmd, true)
                .output()
                .map_err(|e| format!("spawn sh: {e}"))?;
            check_output(
                &cmd,
                output.status.success(),
                &output.stdout,
                &output.stderr,
                &format!("{expect}\n"),
            )
        },
    );
    conc_report(clients, k, outcome)
}

// ---------------------------------------------------------------- handshakes

fn handshakes(target: &Target, secs: f64, max: usize, threads: usize) -> Result<Value> {
    let secret = load_secret(target)?;
    for _ in 0..20 {
        drop(connect(target, &secret)?);
    }
    let budget = Duration::from_secs_f64(secs);
    let per_thread = max.div_ceil(threads.max(1));
    let start = Instant::now();
    let results: Vec<Result<Vec<Duration>>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(|| -> Result<Vec<Duration>> {
                    let mut samples = Vec::new();
                    while samples.len() < per_thread && start.elapsed() < budget {
                        let t = Instant::now();
                        let session = connect(target, &secret)?;
                        samples.push(t.elapsed());
                        drop(session);
                    }
                    Ok(samples)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect()
    });
    let elapsed = start.elapsed();
    let mut samples = Vec::new();
    for result in results {
        samples.extend(result?);
    }
    // The server still serves commands after all that.
    let mut session = connect(target, &secret)?;
    run_checked(&mut session, "echo ok", "ok\n")?;
    let count = samples.len();
    let mut stats = latency_stats(&mut samples);
    if let Value::Object(fields) = &mut stats {
        fields.remove("samples_us");
    }
    Ok(merge(
        stats,
        json!({
            "handshakes": count,
            "threads": threads,
            "secs": elapsed.as_secs_f64(),
            "per_sec": count as f64 / elapsed.as_secs_f64(),
        }),
    ))
}
