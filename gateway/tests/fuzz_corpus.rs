//! The short fuzz run on stable: replays every committed corpus and seed
//! file of `fuzz/` through the same entry functions the cargo-fuzz targets
//! call (`fuzz/src/lib.rs`, included here by path), then runs a seeded
//! mutation fuzzer over them for a few seconds per target. The long runs
//! (10 million inputs per target, nightly) are in docs/security.md,
//! "Fuzzing".
//!
//! Invariants: every loop is bounded in count and in time; the generator is
//! seeded (`FUZZ_SEED` overrides it), so a failure names the input and can
//! be replayed; an input that panics is printed escaped and the test fails.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod entries;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Wall-clock budget of the mutation run of one target.
const MUTATION_BUDGET: Duration = Duration::from_secs(3);
/// Most mutated inputs per target.
const MUTATION_MAX: u64 = 200_000;
/// Largest mutated input.
const MAX_LEN: usize = 4096;
/// One input taking longer than this (debug build) counts as a hang.
const SLOW_INPUT: Duration = Duration::from_secs(2);

type Entry = fn(&[u8]);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every file of `fuzz/{corpus,seeds,regressions}/<target>/`.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for kind in ["corpus", "seeds", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            if let Ok(data) = std::fs::read(&p) {
                out.push((p, data));
            }
        }
    }
    out
}

/// Runs `entry` on `data`; on a panic or a hang returns what to report.
fn run_one(entry: Entry, data: &[u8]) -> Result<(), String> {
    let start = Instant::now();
    let r = catch_unwind(AssertUnwindSafe(|| entry(data)));
    let took = start.elapsed();
    let shown = data.escape_ascii().to_string();
    match r {
        Err(_) => Err(format!("panic on input b\"{shown}\"")),
        Ok(()) if took > SLOW_INPUT => Err(format!("input took {took:?}: b\"{shown}\"")),
        Ok(()) => Ok(()),
    }
}

fn replay(target: &str, entry: Entry) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for {target} under fuzz/");
    let failures: Vec<String> = files
        .iter()
        .filter_map(|(p, d)| {
            run_one(entry, d)
                .err()
                .map(|e| format!("{}: {e}", p.display()))
        })
        .collect();
    assert!(failures.is_empty(), "{target}: {failures:#?}");
}

/// xorshift64*: a small seeded generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Tokens the mutator inserts (JSON, TOML, JWT and envelope syntax).
const TOKENS: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b":",
    b",",
    b"null",
    b"true",
    b"1e999999",
    b"-0",
    b"18446744073709551616",
    b"\\u0000",
    b"\\ud800",
    b"\xff",
    b"\xc3\xa9",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"\"op\":\"publish\"",
    b"\"channel\":\"a\"",
    b"\"data\":",
    b"\"since\":{\"offset\":1}",
    b"{\"message\":{\"channel\":\"c\",\"data\":1}}",
    b"\"sub\":\"u\"",
    b"\"exp\":4102444800",
    b"\"channels\":[\"*\"]",
    b"\n%%\n",
    b"\nGATEWAY_LISTEN=",
    b"\nGATEWAY_MAX_MESSAGE_SIZE=",
    b"\n[namespaces.a]\n",
    b"history_size = ",
    b" = ",
    b"'''",
];

/// 1 to 4 mutations of `base`, sometimes spliced with `other`.
fn mutate(rng: &mut Rng, base: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(7) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = [0, 0x7f, 0x80, 0xff, b'"', b'\\', b'\n', b'0'][rng.below(8)];
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let i = rng.below(v.len() + 1);
                v.splice(i..i, t.iter().copied());
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = 1 + rng.below((v.len() - i).min(32));
                v.drain(i..i + n);
            }
            4 if !v.is_empty() => {
                let i = rng.below(v.len());
                let n = 1 + rng.below((v.len() - i).min(64));
                let piece: Vec<u8> = v[i..i + n].to_vec();
                let at = rng.below(v.len() + 1);
                v.splice(at..at, piece);
            }
            5 if !other.is_empty() => {
                let cut = rng.below(v.len() + 1);
                let from = rng.below(other.len());
                v.truncate(cut);
                v.extend_from_slice(&other[from..]);
            }
            _ => {
                let i = rng.below(v.len() + 1);
                let b = (rng.next() & 0xff) as u8;
                v.insert(i, b);
            }
        }
    }
    v.truncate(MAX_LEN);
    v
}

fn mutation_run(target: &str, entry: Entry) {
    let files = inputs(target);
    assert!(!files.is_empty(), "no corpus for {target} under fuzz/");
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0x5EED_F022);
    let mut rng = Rng(seed ^ target.len() as u64 ^ 0x9E37_79B9_7F4A_7C15);
    let start = Instant::now();
    let mut runs = 0u64;
    while runs < MUTATION_MAX && start.elapsed() < MUTATION_BUDGET {
        let base = &files[rng.below(files.len())].1;
        let other = &files[rng.below(files.len())].1;
        let input = mutate(&mut rng, base, other);
        let r = run_one(entry, &input);
        assert!(r.is_ok(), "{target} (FUZZ_SEED={seed}, run {runs}): {r:?}");
        runs += 1;
    }
    assert!(runs > 0, "{target}: no mutated input ran");
    eprintln!("{target}: {runs} mutated inputs in {:?}", start.elapsed());
}

#[test]
fn client_frame_corpus_replays() {
    replay("client_frame", entries::client_frame);
}

#[test]
fn client_frame_mutations() {
    mutation_run("client_frame", entries::client_frame);
}

#[test]
fn pusher_frame_corpus_replays() {
    replay("pusher_frame", entries::pusher_frame);
}

#[test]
fn pusher_frame_mutations() {
    mutation_run("pusher_frame", entries::pusher_frame);
}

#[test]
fn envelope_corpus_replays() {
    replay("envelope", entries::envelope);
}

#[test]
fn envelope_mutations() {
    mutation_run("envelope", entries::envelope);
}

#[test]
fn config_corpus_replays() {
    replay("config", entries::config);
}

#[test]
fn config_mutations() {
    mutation_run("config", entries::config);
}

#[test]
fn jwt_corpus_replays() {
    replay("jwt", entries::jwt);
}

#[test]
fn jwt_mutations() {
    mutation_run("jwt", entries::jwt);
}

#[test]
fn jwt_entry_signs_tokens_the_node_accepts() {
    // The JWT entry only reaches the claims parser if its tokens carry a
    // valid signature: the node accepts one, and refuses it once a
    // signature byte is flipped.
    let settings = gateway::config::Settings {
        jwt_secret: Some(entries::JWT_SECRET.to_owned()),
        auth_required: Some(true),
        ..gateway::config::Settings::default()
    };
    let config = gateway::config::Config::from_settings(settings).expect("config");
    let auth = gateway::auth::Auth::new(&config).expect("auth");
    let claims = br#"{"sub":"alice","exp":4102444800,"channels":["chat:*"]}"#;
    for n in 0..3 {
        // Payload lengths 0, 1, 2 mod 3 exercise every base64 tail.
        let mut c = claims.to_vec();
        c.splice(1..1, b" ".repeat(n));
        let token = entries::signed_token(br#"{"alg":"HS256","typ":"JWT"}"#, &c);
        let id = auth.authenticate(Some(&token), None).expect("signed token");
        assert_eq!(id.user.as_deref(), Some("alice"));
        assert!(id.may_subscribe("chat:lobby") && !id.may_subscribe("task:1"));
        let mut forged = token.into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).expect("ascii");
        assert!(auth.authenticate(Some(&forged), None).is_err());
    }
}
