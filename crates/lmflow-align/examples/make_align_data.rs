//! Builds the alignment demo data of `assets/data/align/` from `../shared/data` (deterministic:
//! a fixed-seed generator, no network).
//!
//! ```text
//! cargo run -p lmflow-align --example make_align_data -- [SHARED_DATA_DIR] [OUT_DIR]
//! # defaults: ../shared/data  assets/data/align   (run from the repository root)
//! ```
//!
//! Outputs (LMFlow JSON datasets):
//! - `preference_train.json`, `preference_eval.json` (`paired_conversation`): a user asks about a
//!   US state or its capital (`us-states-capitals.json`); both answers share one sentence
//!   pattern, and the **preferred answer is the one whose opinion words are positive** (AFINN-111
//!   valence >= 3 and listed in the Hu & Liu positive words) while the rejected one uses negative
//!   words (valence <= -3, Hu & Liu negative); 60 words of each polarity are drawn. Train and
//!   eval use disjoint states, so the eval set is held out. A reward model trained on it learns the rule; its accuracy on the eval set
//!   measures that.
//! - `prompts.json` (`text_only`): 200 sentence openings (4 to 7 words) from *Moby-Dick*, for
//!   RAFT / iterative DPO with the bundled model, which continues English text; with the lexicon
//!   reward, alignment pushes the continuations towards positive sentiment.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

/// SplitMix64: a small deterministic generator (the data must not depend on a crate's RNG).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

const PROMPTS: &[&str] = &[
    "Tell me about {capital}.",
    "What is {state} like?",
    "How was your visit to {capital}, {state}?",
    "What do you think of {capital}?",
    "Describe the people of {state}.",
    "Would you go back to {capital}?",
];

const ANSWERS: &[&str] = &[
    "{capital} is {a} and {b}.",
    "My visit to {capital} was {a}; the people were {b}.",
    "{state} felt {a} to me, and the food was {b}.",
    "I found {capital} {a}. Everything there was {b}.",
    "It was a {a} trip. {state} is {b}.",
];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Opinion words whose AFINN valence and Hu & Liu polarity agree.
fn opinion_words(shared: &Path) -> (Vec<String>, Vec<String>) {
    let afinn: HashMap<String, i64> = read(&shared.join("afinn-111.csv"))
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (w, v) = l.rsplit_once(',')?;
            Some((w.to_string(), v.trim().parse().ok()?))
        })
        .collect();
    let list = |name: &str| -> BTreeSet<String> {
        read(&shared.join(name))
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with(';'))
            .map(str::to_string)
            .collect()
    };
    let (pos, neg) = (
        list("liu-positive-words.txt"),
        list("liu-negative-words.txt"),
    );
    let simple =
        |w: &str| w.len() >= 4 && w.len() <= 10 && w.chars().all(|c| c.is_ascii_lowercase());
    let pick = |set: &BTreeSet<String>, keep: &dyn Fn(i64) -> bool| -> Vec<String> {
        set.iter()
            .filter(|w| simple(w) && afinn.get(w.as_str()).is_some_and(|&v| keep(v)))
            .cloned()
            .collect()
    };
    (pick(&pos, &|v| v >= 3), pick(&neg, &|v| v <= -3))
}

fn fill(template: &str, state: &str, capital: &str, a: &str, b: &str) -> String {
    template
        .replace("{state}", state)
        .replace("{capital}", capital)
        .replace("{a}", a)
        .replace("{b}", b)
}

fn conversation(prompt: &str, answer: &str) -> Value {
    json!({"messages": [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": answer}
    ]})
}

fn pairs(
    rng: &mut Rng,
    places: &[(String, String)],
    per_place: usize,
    pos: &[String],
    neg: &[String],
) -> Vec<Value> {
    let mut out = Vec::new();
    for (state, capital) in places {
        for _ in 0..per_place {
            let prompt = fill(rng.pick(PROMPTS), state, capital, "", "");
            let answer = rng.pick(ANSWERS);
            let (g1, g2) = (rng.pick(pos), rng.pick(pos));
            let (b1, b2) = (rng.pick(neg), rng.pick(neg));
            let good = fill(answer, state, capital, &g1, &g2);
            let bad = fill(answer, state, capital, &b1, &b2);
            out.push(json!({
                "chosen": conversation(&prompt, &good),
                "rejected": conversation(&prompt, &bad),
            }));
        }
    }
    rng.shuffle(&mut out);
    out
}

/// Sentence openings of 4 to 7 words from Moby-Dick (plain words only).
fn openings(rng: &mut Rng, shared: &Path, count: usize) -> Vec<String> {
    let text = read(&shared.join("moby-dick.txt"));
    let mut seen = BTreeSet::new();
    let mut all = Vec::new();
    for sentence in text.split(['.', '!', '?']) {
        let words: Vec<&str> = sentence.split_whitespace().collect();
        if words.len() < 8 || !words[0].starts_with(|c: char| c.is_ascii_uppercase()) {
            continue;
        }
        let n = 4 + (all.len() % 4);
        let head = &words[..n];
        if head
            .iter()
            .all(|w| w.chars().all(|c| c.is_ascii_alphabetic() || c == '\''))
            && head[0] != "CHAPTER"
        {
            let s = head.join(" ");
            if seen.insert(s.clone()) {
                all.push(s);
            }
        }
    }
    rng.shuffle(&mut all);
    all.truncate(count);
    all
}

fn write(out: &Path, name: &str, value: &Value) {
    let path = out.join(name);
    let text = serde_json::to_string_pretty(value).unwrap() + "\n";
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    println!("wrote {}", path.display());
}

fn main() {
    let mut args = std::env::args().skip(1);
    let shared = PathBuf::from(args.next().unwrap_or_else(|| "../shared/data".into()));
    let out = PathBuf::from(args.next().unwrap_or_else(|| "assets/data/align".into()));
    std::fs::create_dir_all(&out).unwrap();
    let mut rng = Rng(2024);

    let capitals: Vec<Value> =
        serde_json::from_str(&read(&shared.join("us-states-capitals.json"))).unwrap();
    let mut places: Vec<(String, String)> = capitals
        .iter()
        .map(|c| {
            (
                c["state"].as_str().unwrap().to_string(),
                c["capital"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    rng.shuffle(&mut places);
    let (eval_places, train_places) = places.split_at(10);
    let (pos, neg) = opinion_words(&shared);
    assert!(
        pos.len() > 50 && neg.len() > 50,
        "{} / {}",
        pos.len(),
        neg.len()
    );

    let train = pairs(&mut rng, train_places, 8, &pos, &neg);
    let eval = pairs(&mut rng, eval_places, 8, &pos, &neg);
    write(
        &out,
        "preference_train.json",
        &json!({"type": "paired_conversation", "instances": train}),
    );
    write(
        &out,
        "preference_eval.json",
        &json!({"type": "paired_conversation", "instances": eval}),
    );
    let prompts: Vec<Value> = openings(&mut rng, &shared, 200)
        .into_iter()
        .map(|t| json!({"text": t}))
        .collect();
    write(
        &out,
        "prompts.json",
        &json!({"type": "text_only", "instances": prompts}),
    );
}
