//! Windows-only helpers: which code page command output is written in.
//!
//! `cmd` and most console programs write text to a pipe in the output code page of their
//! console: GBK (936) on a Chinese Windows, 932 on a Japanese one, and so on; not in the ANSI
//! code page, and not in UTF-8 unless the system was switched to it. The server runs every
//! command in a console of its own (`CREATE_NO_WINDOW`, see `server::process`), and a new
//! console starts in the system's OEM code page, so that is the code page of command output:
//!
//! - not the server's own [`GetConsoleOutputCP`]: it is 0 when the server has no console (a
//!   service, or started with its stdio redirected, as under Wine in CI), and when the server's
//!   console was switched with `chcp`, the commands' consoles do not inherit the switch;
//! - not [`GetACP`]: that is what GUI programs use, `cmd` does not.
//!
//! A command that runs `chcp 65001` first writes UTF-8 from then on; the per-line `auto` mode
//! ([`OutputEncoding::mixed`](crate::output::OutputEncoding::mixed)) passes valid UTF-8 lines
//! through, so that comes out right too.
//!
//! [`GetConsoleOutputCP`]: https://learn.microsoft.com/windows/console/getconsoleoutputcp
//! [`GetACP`]: https://learn.microsoft.com/windows/win32/api/winnls/nf-winnls-getacp

use encoding_rs::{Encoding, UTF_8};
use windows_sys::Win32::Globalization::{GetACP, GetOEMCP};
use windows_sys::Win32::System::Console::GetConsoleOutputCP;

/// The code page of command output: the system's OEM code page (see the module docs).
pub fn console_output_code_page() -> u32 {
    // SAFETY: GetOEMCP takes no arguments and cannot fail.
    unsafe { GetOEMCP() }
}

/// The encoding of command output on this system, for `--encoding auto`.
///
/// A code page `encoding_rs` has no decoder for (the DOS code pages 437 and 850 of Western
/// Windows) falls back to passing output through, with a warning: ASCII, most of such output,
/// is the same in all of them. (No `--encoding` is suggested: the ANSI code page, 1252 there,
/// is not what `cmd` writes, and decoding 437 as 1252 turns `é` into `‚`.)
pub fn console_output_encoding() -> &'static Encoding {
    let code_page = console_output_code_page();
    match encoding_for_code_page(code_page) {
        Some(encoding) => encoding,
        None => {
            crate::output::warn_no_decoder(code_page);
            UTF_8
        }
    }
}

/// The `encoding_rs` encoding of a Windows code page, if it has one.
pub fn encoding_for_code_page(code_page: u32) -> Option<&'static Encoding> {
    u16::try_from(code_page)
        .ok()
        .and_then(codepage::to_encoding)
}

/// The code pages that matter for command output, for the server's start-up log and for
/// diagnosing a wrong `auto`: `(console output of the server, OEM, ANSI)`. The first is 0
/// without a console.
pub fn code_pages() -> (u32, u32, u32) {
    // SAFETY: these take no arguments and cannot fail.
    unsafe { (GetConsoleOutputCP(), GetOEMCP(), GetACP()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_oem_code_page() {
        let (_, oem, _) = code_pages();
        assert_eq!(console_output_code_page(), oem);
        let expected = encoding_for_code_page(oem).unwrap_or(UTF_8);
        assert_eq!(console_output_encoding(), expected);
    }

    #[test]
    fn code_pages_map_to_encodings() {
        assert_eq!(encoding_for_code_page(936), Some(encoding_rs::GBK));
        assert_eq!(encoding_for_code_page(65001), Some(UTF_8));
        assert_eq!(encoding_for_code_page(932), Some(encoding_rs::SHIFT_JIS));
        assert_eq!(encoding_for_code_page(437), None);
        assert_eq!(encoding_for_code_page(70_000), None);
    }

    /// Under the CI's Wine (LC_ALL=zh_CN.UTF-8) the OEM code page is 936, and `auto` must be
    /// the per-line GBK mode; `RCMD_EXPECT_OEMCP` says what to expect (unset: not checked).
    #[test]
    fn auto_is_the_expected_code_page_when_told() {
        let Some(expected) = std::env::var("RCMD_EXPECT_OEMCP").ok() else {
            return;
        };
        let expected: u32 = expected.parse().expect("RCMD_EXPECT_OEMCP is a number");
        assert_eq!(console_output_code_page(), expected);
        if expected == 936 {
            assert_eq!(
                crate::output::OutputEncoding::auto(),
                crate::output::OutputEncoding::Mixed(encoding_rs::GBK)
            );
        }
    }
}
