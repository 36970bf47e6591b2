//! `lmflow chat` driven through stdin: the session that keeps its KV cache across turns answers
//! exactly as the one re-reading the whole conversation each turn (`--reread-history`), reuses
//! the cached history, and `/reset` starts over.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};

fn repo(path: &str) -> String {
    format!("{}/../../{path}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `lmflow chat` on the bundled model with `input` on stdin; returns (stdout, stderr).
fn chat(input: &str, extra: &[&str]) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lmflow"))
        .args([
            "chat",
            "--model",
            &repo("assets/tiny-llama"),
            "--greedy",
            "--max-new-tokens",
            "12",
            "--system",
            "You are a geography assistant.",
        ])
        .args(extra)
        .env("RUST_LOG", "lmflow=debug")
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = strip_ansi(&String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "lmflow chat failed: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// `text` without ANSI escape sequences (log colours).
fn strip_ansi(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The replies: the text between each prompt marker and the end of its line.
fn replies(stdout: &str) -> Vec<String> {
    stdout
        .split("> ")
        .skip(1)
        .filter_map(|s| s.strip_suffix('\n').or(Some(s)))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn chat_with_kv_cache_answers_as_rereading_the_history() {
    let input = "What is the capital of France?\nAnd of Italy?\nAnd of Spain?\n/reset\n\
                 What is the capital of France?\n/exit\n";
    let (cached, log) = chat(input, &[]);
    let (reread, _) = chat(input, &["--reread-history"]);
    assert_eq!(cached, reread, "cached and re-read sessions differ");
    let answers = replies(&cached);
    assert_eq!(answers.len(), 4, "{cached:?}");
    assert!(answers.iter().any(|a| !a.trim().is_empty()), "{cached:?}");
    // After /reset the first question gets the first answer again.
    assert_eq!(answers[3], answers[0]);
    // Turns after the first reuse the cached history (only their new tokens are run).
    let reused: Vec<usize> = log
        .lines()
        .filter(|l| l.contains("chat turn prefill"))
        .map(|l| {
            let at = l.find("reused=").unwrap() + "reused=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(reused.len(), 4, "{log}");
    assert!(reused[1] > 20 && reused[2] > reused[1], "{reused:?}");
    // After /reset only the system prompt's tokens are shared.
    assert!(reused[3] < reused[1], "{reused:?}");
}

#[test]
fn chat_ends_at_end_of_input_and_on_exit() {
    let (out, _) = chat("", &[]);
    assert_eq!(out, "> ");
    let (out, _) = chat("/exit\nnever read\n", &[]);
    assert_eq!(out, "> ");
}
