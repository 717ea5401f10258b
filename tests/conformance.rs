//! The specification against the server: `scripts/protocol-client.py`, a client written in
//! Python from docs/protocol.md alone (without reading these sources), runs its self-test
//! against the real binary. Every other test speaks the protocol through this crate's own
//! codec, which would agree with the server even where both disagree with the document; this
//! one fails when docs/protocol.md stops describing what the server does.
//!
//! It needs `python3` (standard library only). Without one it is skipped with a notice, except
//! under CI (`CI` set), where a missing interpreter fails the test: `.ci/run` installs it.

mod util;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use util::*;

/// Longer than the self-test's own limit (180 s), which stops its server before giving up.
const SELF_TEST_LIMIT: Duration = Duration::from_secs(240);

#[test]
fn a_client_written_from_the_specification_alone_passes_its_self_test() {
    if !python3_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 is needed for the conformance test under CI (.ci/run installs it)"
        );
        eprintln!("skipped: no python3 to run scripts/protocol-client.py");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/protocol-client.py");
    let mut command = Command::new("python3");
    die_with_the_test(&mut command);
    command
        .arg(&script)
        .args(["self-test", "--rcmd", rcmd_bin()]);
    let output = output_within(command, SELF_TEST_LIMIT);
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "protocol-client.py self-test failed ({}):\n{report}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    // A self-test that ran no checks must not pass: it prints one PASS line per check.
    let passed = report
        .lines()
        .filter(|line| line.starts_with("PASS  "))
        .count();
    assert!(passed >= 30, "only {passed} checks passed:\n{report}");
    assert!(!report.contains("FAIL"), "{report}");
}
