//! Challenge-response authentication and per-frame integrity, built on HMAC-SHA256.
//!
//! The shared secret never crosses the wire. Each side sends a fresh random nonce and proves it
//! knows the secret by returning an HMAC of both nonces under the secret, with a label saying
//! which side made the proof (so a proof can never be reflected back at its maker). Both sides
//! then derive one key per direction from the secret and both nonces, and tag every later frame
//! with HMAC-SHA256 over an implicit sequence number and the BLAKE3 digest of the frame bytes
//! ([`FrameMac`]).
//!
//! This gives authentication and integrity, not confidentiality: the bytes travel in clear.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::protocol::message::NONCE_LEN;

type HmacSha256 = Hmac<Sha256>;

/// Length of an HMAC-SHA256 tag, appended to every frame after the handshake.
pub const TAG_LEN: usize = 32;

/// The shortest secret accepted, in bytes of the file's text. 16 random bytes are as strong as
/// the 128-bit security HMAC-SHA256 is usually credited with, but 16 hex digits are only 64
/// bits, and a guessable secret can be tested offline against one recorded handshake (see
/// docs/protocol.md §12): `rcmd keygen` writes 32 random bytes as 64 hex digits.
pub const MIN_SECRET_LEN: usize = 16;

const CLIENT_PROOF_LABEL: &[u8] = b"rcmd v2 client proof";
const SERVER_PROOF_LABEL: &[u8] = b"rcmd v2 server proof";
const CLIENT_TO_SERVER_LABEL: &[u8] = b"rcmd v2 key client to server";
const SERVER_TO_CLIENT_LABEL: &[u8] = b"rcmd v2 key server to client";

/// A fresh nonce from the operating system's random source.
pub fn new_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn labelled_mac(
    secret: &[u8],
    label: &[u8],
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
) -> HmacSha256 {
    let mut mac = keyed(secret);
    // Each label is a fixed constant and the nonces are 32 bytes each, so the input splits
    // only one way: no other label and nonces give the same bytes.
    mac.update(label);
    mac.update(server_nonce);
    mac.update(client_nonce);
    mac
}

/// Which side of the handshake made a proof.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

impl Role {
    fn proof_label(self) -> &'static [u8] {
        match self {
            Role::Client => CLIENT_PROOF_LABEL,
            Role::Server => SERVER_PROOF_LABEL,
        }
    }
}

/// The proof that `role` knows `secret`: HMAC-SHA256(secret, label ‖ server_nonce ‖ client_nonce).
pub fn proof(
    secret: &[u8],
    role: Role,
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
) -> [u8; TAG_LEN] {
    labelled_mac(secret, role.proof_label(), server_nonce, client_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a proof in constant time, so timing reveals nothing about how much of it was right.
pub fn verify_proof(
    secret: &[u8],
    role: Role,
    server_nonce: &[u8; NONCE_LEN],
    client_nonce: &[u8; NONCE_LEN],
    candidate: &[u8],
) -> bool {
    labelled_mac(secret, role.proof_label(), server_nonce, client_nonce)
        .verify_slice(candidate)
        .is_ok()
}

/// The two per-direction session keys, derived after a successful handshake.
///
/// Two keys, not one: with one key and sequence numbers counted per direction, the server's
/// frame number 3 would carry a valid tag for the client's frame number 3, so an attacker could
/// reflect a server frame back to the server. Separate keys make each tag valid in one
/// direction only.
pub struct SessionKeys {
    pub client_to_server: [u8; TAG_LEN],
    pub server_to_client: [u8; TAG_LEN],
}

impl SessionKeys {
    /// Derives both keys from the secret and the two nonces of this connection. Fresh nonces
    /// make fresh keys, so frames recorded on one connection are worthless on another.
    pub fn derive(
        secret: &[u8],
        server_nonce: &[u8; NONCE_LEN],
        client_nonce: &[u8; NONCE_LEN],
    ) -> SessionKeys {
        let derive = |label| -> [u8; TAG_LEN] {
            labelled_mac(secret, label, server_nonce, client_nonce)
                .finalize()
                .into_bytes()
                .into()
        };
        SessionKeys {
            client_to_server: derive(CLIENT_TO_SERVER_LABEL),
            server_to_client: derive(SERVER_TO_CLIENT_LABEL),
        }
    }
}

/// The tutorial handshake of the unframed demonstration mode: HMAC-SHA256(secret, nonce).
pub fn tutorial_proof(secret: &[u8], nonce: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = keyed(secret);
    mac.update(nonce);
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a [`tutorial_proof`].
pub fn verify_tutorial_proof(secret: &[u8], nonce: &[u8], candidate: &[u8]) -> bool {
    let mut mac = keyed(secret);
    mac.update(nonce);
    mac.verify_slice(candidate).is_ok()
}

/// Tags or checks the frames of one direction of a connection.
///
/// The tag is HMAC-SHA256(key, seq ‖ BLAKE3(frame)) where `seq` is a 64-bit big-endian count of
/// the frames already tagged in this direction. Neither side sends `seq`: each counts for
/// itself, so a dropped, replayed or reordered frame is checked against the wrong number and
/// fails.
///
/// Why the digest rather than the frame itself: the tag must cover every byte of output, and
/// SHA-256 runs at about 1.1-1.3 GB/s per core even with the CPU's SHA instructions, on both
/// ends, which alone would use more than a 2-core machine has to stream 1 GB/s. BLAKE3 runs at
/// about 4.5 GB/s per core here. Hashing first and keying the digest is the construction TLS 1.3
/// uses for its Finished message: forging a tag still needs the key, or two frames with the
/// same BLAKE3 digest (a collision, 2^128 work).
#[derive(Clone)]
pub struct FrameMac {
    keyed: HmacSha256,
    seq: u64,
}

impl FrameMac {
    /// A tagger for one direction, starting at sequence number 0.
    pub fn new(key: &[u8; TAG_LEN]) -> FrameMac {
        // Keying HMAC costs two SHA-256 blocks; keep the keyed state and clone it per frame.
        FrameMac {
            keyed: keyed(key),
            seq: 0,
        }
    }

    fn mac_for_next(&mut self, frame: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed.clone();
        mac.update(&self.seq.to_be_bytes());
        mac.update(blake3::hash(frame).as_bytes());
        self.seq += 1;
        mac
    }

    /// The tag for the next frame in sequence.
    pub fn tag(&mut self, frame: &[u8]) -> [u8; TAG_LEN] {
        self.mac_for_next(frame).finalize().into_bytes().into()
    }

    /// Checks the next frame's tag in constant time.
    pub fn verify(&mut self, frame: &[u8], tag: &[u8]) -> bool {
        self.mac_for_next(frame).verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"correct horse battery staple";

    #[test]
    fn proofs_verify_only_for_the_right_secret_role_and_nonces() {
        let (sn, cn) = ([1u8; 32], [2u8; 32]);
        let client = proof(SECRET, Role::Client, &sn, &cn);
        assert!(verify_proof(SECRET, Role::Client, &sn, &cn, &client));
        assert!(!verify_proof(
            b"wrong secret, same length!!!",
            Role::Client,
            &sn,
            &cn,
            &client
        ));
        // A client proof is not a server proof: it cannot be reflected.
        assert!(!verify_proof(SECRET, Role::Server, &sn, &cn, &client));
        assert!(!verify_proof(
            SECRET,
            Role::Client,
            &[3u8; 32],
            &cn,
            &client
        ));
        assert!(!verify_proof(SECRET, Role::Client, &sn, &cn, &client[..31]));
    }

    #[test]
    fn session_keys_differ_per_direction_and_per_connection() {
        let a = SessionKeys::derive(SECRET, &[1; 32], &[2; 32]);
        let b = SessionKeys::derive(SECRET, &[1; 32], &[3; 32]);
        assert_ne!(a.client_to_server, a.server_to_client);
        assert_ne!(a.client_to_server, b.client_to_server);
    }

    #[test]
    fn frame_mac_rejects_replay_and_reorder() {
        let key = [7u8; 32];
        let (mut sender, mut receiver) = (FrameMac::new(&key), FrameMac::new(&key));
        let first = sender.tag(b"one");
        let second = sender.tag(b"two");
        assert!(receiver.verify(b"one", &first));
        // Replaying frame 0 where frame 1 is expected fails.
        assert!(!receiver.clone().verify(b"one", &first));
        assert!(receiver.verify(b"two", &second));
        let mut fresh = FrameMac::new(&key);
        assert!(!fresh.verify(b"two", &second), "reordered frame accepted");
    }

    /// The values of docs/protocol.md §13 and §14, which a client in another language is
    /// checked against: if this fails, the code and the specification disagree.
    #[test]
    fn documented_test_vectors_hold() {
        use crate::protocol::message::to_hex;
        let secret = b"0123456789abcdef0123456789abcdef";
        let (sn, cn) = ([1u8; 32], [2u8; 32]);
        assert_eq!(
            to_hex(&proof(secret, Role::Client, &sn, &cn)),
            "79af0c308a4150b234b50ac46ca8ad9f8e86d71bf08cd321f5ddfe1ed77f35f8"
        );
        assert_eq!(
            to_hex(&proof(secret, Role::Server, &sn, &cn)),
            "f09606d6058e6526ed97efd2247a9ce30fa76aec9ba06c014c59c1232059a5ed"
        );
        let keys = SessionKeys::derive(secret, &sn, &cn);
        assert_eq!(
            to_hex(&keys.client_to_server),
            "dee26d3ede02a6adf1246c8f059afa98a5aa7fe22e2ccc18cfd9dad1179d54fe"
        );
        assert_eq!(
            to_hex(&keys.server_to_client),
            "65e6de2297ecbb74152deb5d5b64a0645bb7fd7dc942ba882bb1dc021f4f3dff"
        );
        // prefix ‖ header ‖ body, as FrameEncoder lays them out.
        let frame = |header: &[u8], body: &[u8]| {
            [&(header.len() as u32).to_be_bytes()[..], header, body].concat()
        };
        let exec = frame(
            br#"{"type":"exec","id":1,"stdin":false,"len":7}"#,
            b"echo hi",
        );
        assert_eq!(
            blake3::hash(&exec).to_hex().as_str(),
            "9c5c8deb50f9979da14a6d97b65a43c251f0bd17ee9125fa57f4bf86de28cd1e"
        );
        assert_eq!(
            to_hex(&FrameMac::new(&keys.client_to_server).tag(&exec)),
            "2a72e1bc9d3fbfc79f795ee69cc31708d83b5e163b3f5713a23cd92435701e55"
        );
        let mut server = FrameMac::new(&keys.server_to_client);
        let stdout = frame(br#"{"type":"stdout","id":1,"len":3}"#, b"hi\n");
        assert_eq!(
            to_hex(&server.tag(&stdout)),
            "f21482ffc2a499e3ddb75e617841dca9c5f10ea296f96c8f8b2a53fb8a4e22a5"
        );
        let exit = frame(
            br#"{"type":"exit","id":1,"reason":"exited","code":0,"duration_ms":3,"len":0}"#,
            b"",
        );
        assert_eq!(
            to_hex(&server.tag(&exit)),
            "95290977aa343d4302e25b7706552023c0a05e075134fc5db1941017b2015d53"
        );
        // Three BLAKE3 chunks, so the digest goes through the tree mode.
        let body: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let long = frame(br#"{"type":"stdout","id":1,"len":3000}"#, &body);
        assert_eq!(long.len(), 3039);
        assert_eq!(
            blake3::hash(&long).to_hex().as_str(),
            "3481496923c0920c6a954e714c0cb3fb71e601041a377d0161bf77796afb1a05"
        );
        assert_eq!(
            to_hex(&server.tag(&long)),
            "d1da343d7014428f6f2aab1d549f00fbde6e192947c965d27b3566cac13c9a0a"
        );
        // BLAKE3 alone at the chunk boundary and over a deep tree (the BLAKE3 project's own
        // inputs: byte i is i mod 251), for checking a hand-written BLAKE3 (§13).
        for (len, digest) in [
            (
                1024,
                "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7",
            ),
            (
                1025,
                "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444",
            ),
            (
                102_400,
                "bc3e3d41a1146b069abffad3c0d44860cf664390afce4d9661f7902e7943e085",
            ),
        ] {
            let input: Vec<u8> = (0..len).map(|i: u32| (i % 251) as u8).collect();
            assert_eq!(
                blake3::hash(&input).to_hex().as_str(),
                digest,
                "{len} bytes"
            );
        }
    }

    #[test]
    fn nonces_are_not_repeated() {
        assert_ne!(new_nonce(), new_nonce());
    }
}
