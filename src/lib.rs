//! rcmd: run commands on another machine and see their real output, errors and exit codes.
//!
//! A server runs every client's commands through the system shell and streams their stdout and
//! stderr back as they are produced, then their exit status. Clients prove they know a shared
//! secret by HMAC-SHA256 challenge-response, and every frame after that carries an HMAC tag, so
//! nothing runs for a stranger and nothing altered in transit is believed. (Nothing is
//! encrypted: see the README's security model.)
//!
//! # Layout
//!
//! - [`protocol`]: the wire format, pure functions over bytes: [`protocol::frame`] (length
//!   prefixes, incremental decoding) and [`protocol::message`] (the typed messages).
//! - [`auth`]: nonces, handshake proofs, session keys, per-frame tags.
//! - [`secret`]: where the shared secret lives; `rcmd keygen`.
//! - [`server`]: the `mio` event loop ([`server`]), one client's state machine
//!   ([`server::connection`]), child processes ([`server::process`]), timers
//!   ([`server::deadlines`]).
//! - [`logging`]: log lines to stderr; the server's wait until its replies are sent.
//! - [`tcp`]: the socket options both ends set (no Nagle delay, keepalive).
//! - [`output`]: streaming transcoding of command output to UTF-8.
//! - `platform` (Windows only): the code page command output is written in, for `auto`.
//! - [`client`]: the blocking thin client, its prompt and Ctrl-C forwarding.
//! - [`sticky`]: the unframed demonstration mode (`--framing none`, `rcmd demo sticky`) that
//!   shows TCP's "sticky packets" and why every rcmd frame starts with its length.
//!
//! `docs/protocol.md` specifies the wire protocol for implementers of other clients.

pub mod auth;
pub mod client;
pub mod logging;
pub mod output;
#[cfg(windows)]
pub mod platform;
pub mod protocol;
pub mod secret;
pub mod server;
pub mod sticky;
pub mod tcp;
