//! Command output encodings end to end: code page output decoded to UTF-8 on the server,
//! UTF-8 and binary output passed through byte for byte.

mod util;

use util::*;

#[test]
fn forced_gbk_output_reaches_the_client_as_utf8() {
    let server = TestServer::start(&["--encoding", "gbk"]);
    let output = server.run(r"printf '\304\343\272\303\n'; printf '\304\343' >&2");
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "你好\n");
    assert_eq!(String::from_utf8(output.stderr).unwrap(), "你");
}

#[test]
fn a_gbk_character_split_by_the_servers_read_decodes_whole() {
    let server = TestServer::start(&["--encoding", "gbk"]);
    // 65,535 ASCII bytes then 你: the server reads 64 KiB at a time, so unless the pipe hands
    // it fewer bytes the character straddles two reads. Either way it must arrive whole.
    let output = server.run(
        r"head -c 65535 /dev/zero | tr '\0' a; printf '\304\343'; sleep 0.2; printf '\272\303\n'",
    );
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(text.len(), 65535 + "你好\n".len());
    assert!(text.ends_with("a你好\n"));
    assert!(!text.contains('\u{fffd}'));
}

#[test]
fn auto_on_a_gbk_system_keeps_utf8_lines_and_decodes_gbk_lines() {
    let server = TestServer::start(&["--encoding", "auto=gbk"]);
    // A UTF-8 program's line, then a GBK line (as from `ipconfig`), in one script.
    let output =
        server.run(r"printf 'utf-8 \344\275\240\345\245\275\n'; printf 'gbk \304\343\272\303\n'");
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "utf-8 你好\ngbk 你好\n"
    );
}

#[test]
fn invalid_bytes_become_replacement_characters_not_errors() {
    let server = TestServer::start(&["--encoding", "gbk"]);
    let output = server.run(r"printf 'a\377b\304'; exit 3");
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        "a\u{fffd}b\u{fffd}"
    );
    assert_eq!(output.status.code(), Some(3));
}

#[test]
fn utf8_output_passes_through_byte_for_byte() {
    let server = TestServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("random.bin");
    // A megabyte of random bytes, like `head -c 1000000 /dev/urandom`, kept to compare.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("head -c 1000000 /dev/urandom > {}", path.display()))
        .status()
        .unwrap();
    assert!(status.success());
    let expected = std::fs::read(&path).unwrap();
    let output = server.run(&format!("cat {}", path.display()));
    assert_eq!(output.stdout.len(), expected.len());
    assert_eq!(sha256_hex(&output.stdout), sha256_hex(&expected));
}
