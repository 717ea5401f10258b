//! The server embedded in another program, as `rcmd demo` runs it: a thread of the host
//! process, stopped through a `StopHandle`. This is its own test binary because the server
//! reaps any child of the process it runs in (`waitpid(-1)` on SIGCHLD), which would take the
//! exit statuses of other tests' processes from them.

#![cfg(unix)]

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use rcmd::output::OutputEncoding;
use rcmd::server::{Limits, Server, ServerConfig};
use util::raw::{RawClient, load_secret};
use util::*;

/// When `run` returns, the commands it killed are not only killed but reaped: the host
/// process is left with no child of the server's, running or zombie.
#[test]
fn a_stopped_embedded_server_leaves_no_command_and_no_zombie_behind() {
    let secret_file = SecretFile::new();
    let secret = load_secret(&secret_file.path);
    let config = ServerConfig {
        secret: secret.clone(),
        encoding: OutputEncoding::auto(),
        workdir: std::env::temp_dir(),
        limits: Limits::default(),
        handle_signals: false,
        secret_file: None,
    };
    let mut server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), config).unwrap();
    let addr = server.local_addr();
    let stop = server.stop_handle().unwrap();
    let serving = std::thread::spawn(move || server.run());

    let mut client = RawClient::authenticated(addr, &secret);
    let marker = unique_sleep_marker();
    client.exec_bytes(format!("sleep 60 {marker}").as_bytes(), None);
    assert!(eventually(Duration::from_secs(10), || !sleeps_matching(
        &marker
    )
    .is_empty()));

    assert!(
        stop.stop(Duration::from_secs(10)),
        "the server did not answer"
    );
    drop(client); // its connection closed, the server need not wait out the closing grace
    serving.join().unwrap().unwrap();
    let ours = std::process::id();
    let children: Vec<ProcStat> = all_processes()
        .into_iter()
        .filter(|p| p.ppid == ours)
        .collect();
    assert!(children.is_empty(), "children left: {children:?}");
    assert!(sleeps_matching(&marker).is_empty());
}
