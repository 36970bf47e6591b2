//! Integration tests: chat templates against transformers, label masks, readers and errors,
//! packing, batching, inspect/stats, property tests of the parsers.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use lmflow_datasets::batch::{collate, collate_packed, collate_padding_free, collate_pairs};
use lmflow_datasets::format::{Conversation, DatasetType, Instance, Message, Role};
use lmflow_datasets::inspect::{InspectOptions, inspect, render_sample, stats};
use lmflow_datasets::packing::pack_best_fit;
use lmflow_datasets::reader::{JsonlStream, ReadOptions, read_dataset};
use lmflow_datasets::template::{ChatTemplate, JinjaTemplate, TemplateTokens};
use lmflow_datasets::tokenize::{IGNORE_INDEX, SampleEncoder, TokenizeConfig, TokenizedSample};
use lmflow_models::Tokenizer;
use proptest::prelude::*;
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

fn tokenizer() -> Tokenizer {
    Tokenizer::from_dir(format!("{FIXTURES}/tokenizer")).unwrap()
}

fn template_fixture() -> Value {
    let text = std::fs::read_to_string(format!("{FIXTURES}/datasets/chat_templates.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn conversation_from_json(messages: &Value) -> Conversation {
    let v = json!({ "messages": messages });
    match Instance::from_json(DatasetType::Conversation, &v, Path::new("fixture"), 0).unwrap() {
        Instance::Conversation(c) => c,
        _ => unreachable!(),
    }
}

fn tokens_of(t: &Value) -> TemplateTokens {
    TemplateTokens {
        bos_token: t["bos_token"].as_str().map(String::from),
        eos_token: t["eos_token"].as_str().map(String::from),
        ..Default::default()
    }
}

#[test]
fn jinja_and_preset_rendering_match_transformers() {
    let fx = template_fixture();
    let mut compared_presets = 0;
    for case in fx["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let t = &fx["templates"][name];
        let tokens = tokens_of(t);
        let messages = &fx["conversations"][case["conversation"].as_u64().unwrap() as usize];
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let jinja = JinjaTemplate::new(name, t["template"].as_str().unwrap()).unwrap();
        let got = jinja.render_messages(messages.as_array().unwrap(), None, &tokens, agp);
        match (case.get("rendered"), case.get("error")) {
            (Some(expected), _) => {
                assert_eq!(
                    got.unwrap(),
                    expected.as_str().unwrap(),
                    "jinja {name} {case}"
                );
                // The preset of the same family renders the same bytes.
                let preset = ChatTemplate::preset(t["preset"].as_str().unwrap()).unwrap();
                let conv = conversation_from_json(messages);
                let text = preset.render_text(&conv, &tokens, agp).unwrap();
                assert_eq!(text, expected.as_str().unwrap(), "preset {name} {case}");
                compared_presets += 1;
            }
            (None, Some(err)) => {
                let msg = got.unwrap_err().to_string();
                assert!(msg.contains(err.as_str().unwrap()), "{name}: {msg}");
            }
            _ => panic!("bad fixture"),
        }
    }
    assert!(compared_presets >= 36, "{compared_presets}");
}

#[test]
fn presets_reject_what_strict_templates_reject() {
    let fx = template_fixture();
    let conv = conversation_from_json(&fx["conversations"][3]);
    for name in ["mistral", "gemma"] {
        let err = ChatTemplate::preset(name)
            .unwrap()
            .render(&conv, &TemplateTokens::default(), false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("alternate"), "{name}: {err}");
    }
}

#[test]
fn generation_markers_match_transformers_assistant_masks() {
    let fx = template_fixture();
    let tok = tokenizer();
    // LMFlow's qwen2_5 preset is the Jinja template with {% generation %} markers.
    let template = ChatTemplate::preset("qwen2_5").unwrap();
    let from_fixture = JinjaTemplate::new("x", fx["lmflow_qwen2_5"].as_str().unwrap()).unwrap();
    assert_eq!(
        from_fixture.source(),
        include_str!("../src/template/qwen2_5.jinja")
    );
    let encoder = SampleEncoder::new(
        &tok,
        Some(&template),
        TokenizeConfig {
            block_size: 4096,
            ..Default::default()
        },
    )
    .unwrap();
    for m in fx["assistant_masks"].as_array().unwrap() {
        let conv = conversation_from_json(
            &fx["conversations"][m["conversation"].as_u64().unwrap() as usize],
        );
        let enc = encoder.encode_conversation(&conv).unwrap();
        let text: String = enc.segments.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(text, m["rendered"].as_str().unwrap());
        let ids: Vec<u32> = m["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(enc.sample.input_ids, ids);
        let mask: Vec<bool> = m["assistant_masks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64() == Some(1))
            .collect();
        let ours: Vec<bool> = enc
            .sample
            .labels
            .iter()
            .map(|&l| l != IGNORE_INDEX)
            .collect();
        assert_eq!(ours, mask, "conversation {}", m["conversation"]);
        assert!(ours.iter().any(|&b| b));
    }
}

fn chat(turns: &[(Role, &str)], system: Option<&str>) -> Conversation {
    Conversation {
        system: system.map(String::from),
        tools: vec![],
        messages: turns
            .iter()
            .map(|(r, c)| Message {
                role: *r,
                content: c.to_string(),
                extra: Default::default(),
            })
            .collect(),
    }
}

fn decode_trained(tok: &Tokenizer, s: &TokenizedSample) -> String {
    let ids: Vec<u32> = s
        .labels
        .iter()
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect();
    tok.decode(&ids, false).unwrap()
}

#[test]
fn label_masks_per_format() {
    let tok = tokenizer();
    let eos = tok.eos_token_id().unwrap();
    let cfg = TokenizeConfig::default();
    let enc = SampleEncoder::new(&tok, None, cfg.clone()).unwrap();

    // text_only: every token trained, BOS first, EOS last.
    let s = enc
        .encode_text(&Instance::TextOnly {
            text: "Call me Ishmael.".into(),
        })
        .unwrap()
        .sample;
    assert_eq!(s.input_ids[0], tok.bos_token_id().unwrap());
    assert_eq!(*s.input_ids.last().unwrap(), eos);
    assert!(
        s.labels
            .iter()
            .zip(&s.input_ids)
            .all(|(&l, &i)| l == i64::from(i))
    );

    // text2text: input masked, output + EOS trained.
    let s = enc
        .encode_text(&Instance::Text2Text {
            input: "Question: who?".into(),
            output: " Ahab.".into(),
        })
        .unwrap()
        .sample;
    let n_in = tok.encode("Question: who?", true).unwrap().len();
    assert!(s.labels[..n_in].iter().all(|&l| l == IGNORE_INDEX));
    assert!(s.labels[n_in..].iter().all(|&l| l != IGNORE_INDEX));
    assert_eq!(*s.labels.last().unwrap(), i64::from(eos));
    assert_eq!(decode_trained(&tok, &s), " Ahab.</s>");

    // conversation: assistant turns with their end-of-turn token trained; user/system not.
    let conv = chat(
        &[
            (Role::User, "Where is the whale?"),
            (Role::Assistant, "Beyond."),
            (Role::User, "Far?"),
            (Role::Assistant, "Very."),
        ],
        Some("You are a sailor."),
    );
    for (preset, eot) in [
        ("chatml", "<|im_end|>"),
        ("llama3", "<|eot_id|>"),
        ("phi3", "<|end|>"),
        ("qwen2_5", "<|im_end|>"),
    ] {
        let t = ChatTemplate::preset(preset).unwrap();
        let e = SampleEncoder::new(&tok, Some(&t), cfg.clone()).unwrap();
        let s = e.encode_conversation(&conv).unwrap().sample;
        let trained = decode_trained(&tok, &s);
        assert!(
            trained.contains("Beyond.") && trained.contains("Very."),
            "{preset}: {trained:?}"
        );
        assert!(
            !trained.contains("whale") && !trained.contains("Far?") && !trained.contains("sailor"),
            "{preset}: {trained:?}"
        );
        let eot_id = tok.token_to_id(eot).unwrap();
        // Every end-of-turn token that closes an assistant turn is trained.
        let trained_eots = s.labels.iter().filter(|&&l| l == i64::from(eot_id)).count();
        assert_eq!(trained_eots, 2, "{preset}");
        // train_on_prompt trains everything.
        let e = SampleEncoder::new(
            &tok,
            Some(&t),
            TokenizeConfig {
                train_on_prompt: true,
                ..cfg.clone()
            },
        )
        .unwrap();
        let s = e.encode_conversation(&conv).unwrap().sample;
        assert!(s.labels.iter().all(|&l| l != IGNORE_INDEX), "{preset}");
    }
    // A Jinja template without generation markers: assistant spans come from prefix
    // renderings; for the tokenizer's ChatML template they equal the chatml preset's.
    let t = ChatTemplate::from_tokenizer(&tok, None).unwrap();
    let e = SampleEncoder::new(&tok, Some(&t), cfg.clone()).unwrap();
    let preset = ChatTemplate::preset("chatml").unwrap();
    let p = SampleEncoder::new(&tok, Some(&preset), cfg).unwrap();
    let (a, b) = (
        e.encode_conversation(&conv).unwrap(),
        p.encode_conversation(&conv).unwrap(),
    );
    assert_eq!(a.sample, b.sample);
    assert!(a.sample.trained_tokens() > 0);
}

#[test]
fn truncation_is_reported_and_never_silent() {
    let tok = tokenizer();
    let enc = SampleEncoder::new(
        &tok,
        None,
        TokenizeConfig {
            block_size: 8,
            ..Default::default()
        },
    )
    .unwrap();
    let long_input = "word ".repeat(20);
    let s = enc
        .encode_text(&Instance::Text2Text {
            input: long_input,
            output: "Ahab".into(),
        })
        .unwrap()
        .sample;
    assert_eq!(s.len(), 8);
    assert!(s.truncated && s.target_lost && s.original_len > 8);
    let s = enc
        .encode_text(&Instance::TextOnly {
            text: "Call".into(),
        })
        .unwrap()
        .sample;
    assert!(!s.truncated && !s.target_lost);
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

fn err_of(path: &Path, opts: &ReadOptions) -> String {
    read_dataset(path, opts).unwrap_err().to_string()
}

#[test]
fn bad_input_errors_name_file_instance_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = ReadOptions::default();
    let p = write(
        d,
        "wrongtype.json",
        r#"{"type": "poetry", "instances": []}"#,
    );
    let e = err_of(&p, &o);
    assert!(
        e.contains("wrongtype.json") && e.contains("`type`") && e.contains("poetry"),
        "{e}"
    );
    let p = write(
        d,
        "missing.json",
        r#"{"type": "text2text", "instances": [{"input": "a", "output": "b"}, {"input": "a"}]}"#,
    );
    let e = err_of(&p, &o);
    assert!(
        e.contains("missing.json")
            && e.contains("instance 1")
            && e.contains("`output`")
            && e.contains("missing"),
        "{e}"
    );
    let p = write(
        d,
        "jsontype.json",
        r#"{"type": "text_only", "instances": [{"text": 5}]}"#,
    );
    let e = err_of(&p, &o);
    assert!(
        e.contains("instance 0")
            && e.contains("`text`")
            && e.contains("expected a string, found a number"),
        "{e}"
    );
    let p = write(
        d,
        "assistant_first.json",
        r#"{"type": "conversation", "instances": [{"messages": [{"role": "assistant", "content": "hi"}]}]}"#,
    );
    let e = err_of(&p, &o);
    assert!(
        e.contains("assistant_first.json")
            && e.contains("messages[0].role")
            && e.contains("user turn"),
        "{e}"
    );
    let p = write(
        d,
        "badrole.json",
        r#"{"type": "conversation", "instances": [{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}]}"#,
    );
    let e = err_of(&p, &o);
    assert!(e.contains("messages[1].role") && e.contains("bot"), "{e}");
    let p = write(d, "empty.json", "");
    let e = err_of(&p, &o);
    assert!(e.contains("empty.json") && e.contains("empty"), "{e}");
    let p = write(
        d,
        "noinst.json",
        r#"{"type": "text_only", "instances": []}"#,
    );
    let e = err_of(&p, &o);
    assert!(
        e.contains("noinst.json") && e.contains("no instances"),
        "{e}"
    );
    let p = write(d, "broken.json", r#"{"type": "text_only", "instances": [}"#);
    let e = err_of(&p, &o);
    assert!(
        e.contains("broken.json") && e.contains("invalid JSON"),
        "{e}"
    );
    let p = write(d, "empty.jsonl", "\n\n");
    assert!(err_of(&p, &o).contains("empty"));
    let p = write(d, "nohdr.jsonl", "{\"text\": \"a\"}\n");
    assert!(err_of(&p, &o).contains("type"));
    let p = write(
        d,
        "badline.jsonl",
        "{\"type\": \"text_only\"}\n{\"text\": \"a\"}\n{\"text\": \n",
    );
    let e = err_of(&p, &o);
    assert!(e.contains("badline.jsonl") && e.contains("line 3"), "{e}");

    // Mixed types in a folder.
    let mixed = d.join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    write(
        &mixed,
        "a.json",
        r#"{"type": "text_only", "instances": [{"text": "a"}]}"#,
    );
    write(
        &mixed,
        "b.json",
        r#"{"type": "text2text", "instances": [{"input": "a", "output": "b"}]}"#,
    );
    let e = err_of(&mixed, &o);
    assert!(
        e.contains("b.json")
            && e.contains("a.json")
            && e.contains("text2text")
            && e.contains("text_only"),
        "{e}"
    );
    let empty_dir = d.join("nothing");
    std::fs::create_dir(&empty_dir).unwrap();
    assert!(err_of(&empty_dir, &o).contains("no *.json"));

    // inspect reports the error (no panic).
    let tok = tokenizer();
    let e = inspect(
        d.join("assistant_first.json"),
        &tok,
        &InspectOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("assistant_first.json") && e.contains("instance 0"),
        "{e}"
    );
}

#[test]
fn every_format_parses_from_lmflow_json_and_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases = [
        ("text_only", json!({"text": "a"})),
        ("text2text", json!({"input": "a", "output": "b"})),
        (
            "conversation",
            json!({"system": "s", "tools": ["t"], "messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "a"}, {"role": "function", "content": "f"}, {"role": "observation", "content": "o"}]}),
        ),
        (
            "paired_conversation",
            json!({"chosen": {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "good"}]}, "rejected": {"messages": [{"role": "user", "content": "u"}, {"role": "assistant", "content": "bad"}]}}),
        ),
        (
            "paired_text_to_text",
            json!({"prompt": "p", "chosen": "c", "rejected": "r", "margin": 0.5}),
        ),
        (
            "text_to_textlist",
            json!({"input": "i", "output": ["a", "b"]}),
        ),
        (
            "text_to_scored_textlist",
            json!({"input": "i", "output": [{"score": 1.0, "text": "a"}, {"score": -0.8, "text": "b"}]}),
        ),
        ("float_only", json!({"value": 1.5})),
    ];
    for (ty, inst) in cases {
        let p = write(
            d,
            &format!("{ty}.json"),
            &json!({"type": ty, "instances": [inst.clone(), inst.clone()]}).to_string(),
        );
        let ds = read_dataset(&p, &ReadOptions::default()).unwrap();
        assert_eq!(ds.dataset_type.as_str(), ty);
        assert_eq!(ds.len(), 2);
        let p = write(
            d,
            &format!("{ty}.jsonl"),
            &format!("{}\n{}\n\n{}\n", json!({"type": ty}), inst, inst),
        );
        let ds2 = read_dataset(&p, &ReadOptions::default()).unwrap();
        assert_eq!(ds.instances, ds2.instances);
        // Without a header the caller gives the type.
        let p = write(d, &format!("{ty}_nohdr.jsonl"), &format!("{inst}\n"));
        let mut s = JsonlStream::open(&p, Some(ty.parse().unwrap())).unwrap();
        assert_eq!(s.next().unwrap().unwrap(), ds.instances[0]);
        assert!(s.next().is_none());
    }
    // Leading system message becomes the system prompt.
    let c = conversation_from_json(
        &json!([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]),
    );
    assert_eq!(c.system.as_deref(), Some("S"));
}

#[test]
fn shuffle_is_deterministic_and_split_by_percentage() {
    let dir = tempfile::tempdir().unwrap();
    let instances: Vec<Value> = (0..20).map(|i| json!({"text": format!("t{i}")})).collect();
    let p = write(
        dir.path(),
        "d.json",
        &json!({"type": "text_only", "instances": instances}).to_string(),
    );
    let base = read_dataset(&p, &ReadOptions::default()).unwrap();
    let (mut a, mut b, mut c) = (base.clone(), base.clone(), base.clone());
    a.shuffle(7);
    b.shuffle(7);
    c.shuffle(8);
    assert_eq!(a.instances, b.instances);
    assert_ne!(a.instances, base.instances);
    assert_ne!(a.instances, c.instances);
    let (train, val) = a.split(25.0).unwrap();
    assert_eq!((train.len(), val.len()), (15, 5));
    assert!(base.clone().split(101.0).is_err());
}

fn sample(ids: &[u32], trained_from: usize) -> TokenizedSample {
    TokenizedSample {
        input_ids: ids.to_vec(),
        labels: ids
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if i >= trained_from {
                    i64::from(x)
                } else {
                    IGNORE_INDEX
                }
            })
            .collect(),
        original_len: ids.len(),
        truncated: false,
        target_lost: false,
    }
}

#[test]
fn packing_best_fit_keeps_samples_apart() {
    let samples: Vec<TokenizedSample> = [6usize, 5, 4, 3, 2, 2, 1]
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            sample(
                &(0..n as u32).map(|x| x + 10 * k as u32).collect::<Vec<_>>(),
                0,
            )
        })
        .collect();
    let blocks = pack_best_fit(&samples, 8).unwrap();
    // 23 tokens into blocks of 8: best fit reaches the optimum of 3 blocks.
    assert_eq!(blocks.len(), 3);
    let mut seen: Vec<usize> = blocks.iter().flat_map(|b| b.samples.clone()).collect();
    seen.sort();
    assert_eq!(seen, (0..samples.len()).collect::<Vec<_>>());
    for b in &blocks {
        assert!(b.len() <= 8);
        let mut pos = 0;
        for (seg, &i) in b.samples.iter().enumerate() {
            let s = &samples[i];
            let r = pos..pos + s.len();
            assert_eq!(&b.input_ids[r.clone()], &s.input_ids[..]);
            assert_eq!(
                b.position_ids[r.clone()],
                (0..s.len() as i64).collect::<Vec<_>>()
            );
            assert!(
                b.segment_ids[r.clone()]
                    .iter()
                    .all(|&x| x == seg as i64 + 1)
            );
            assert_eq!(b.labels[pos], IGNORE_INDEX);
            assert_eq!(&b.labels[pos + 1..r.end], &s.labels[1..]);
            pos = r.end;
        }
    }
    assert!(pack_best_fit(&samples, 5).is_err());
}

#[test]
fn batches_are_right_padded_tensors() {
    let device = Device::flex();
    let a = sample(&[1, 2, 3], 1);
    let b = sample(&[4, 5], 0);
    let batch = collate(&[&a, &b], 0, &device).unwrap();
    assert_eq!(batch.input_ids.dims(), [2, 3]);
    let ids = batch
        .input_ids
        .to_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    assert_eq!(ids, vec![1, 2, 3, 4, 5, 0]);
    let labels = batch
        .labels
        .to_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    assert_eq!(labels, vec![-100, 2, 3, 4, 5, -100]);
    let mask = batch
        .attention_mask
        .to_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    assert_eq!(mask, vec![1, 1, 1, 1, 1, 0]);
    assert!(batch.segment_ids.is_none());

    let blocks = pack_best_fit(&[a.clone(), b.clone()], 8).unwrap();
    let packed = collate_packed(&[&blocks[0]], 0, &device).unwrap();
    let seg = packed
        .segment_ids
        .unwrap()
        .to_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    assert_eq!(seg, vec![1, 1, 1, 2, 2]);
    let pos = packed
        .position_ids
        .to_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    assert_eq!(pos, vec![0, 1, 2, 0, 1]);
    let free = collate_padding_free(&[&b, &a], &device).unwrap();
    assert_eq!(free.input_ids.dims(), [1, 5]);

    let pair = lmflow_datasets::TokenizedPair {
        chosen: a.clone(),
        rejected: b.clone(),
        margin: Some(0.5),
    };
    let pair2 = lmflow_datasets::TokenizedPair {
        chosen: b,
        rejected: a,
        margin: Some(1.0),
    };
    let pb = collate_pairs(&[&pair, &pair2], 0, &device).unwrap();
    assert_eq!(pb.chosen.input_ids.dims(), [2, 3]);
    assert_eq!(pb.rejected.input_ids.dims(), [2, 3]);
    assert_eq!(
        pb.margin.unwrap().to_data().try_to_vec::<f32>().unwrap(),
        vec![0.5, 1.0]
    );
}

#[test]
fn inspect_json_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer();
    let p = write(
        dir.path(),
        "chat.jsonl",
        &[
            json!({"type": "conversation"}).to_string(),
            json!({"messages": [{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "There."}]}).to_string(),
            json!({"system": "Be brief.", "messages": [{"role": "user", "content": "Who? ".repeat(30)}, {"role": "assistant", "content": "Me."}]}).to_string(),
            json!({"messages": [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because."}]}).to_string(),
        ]
        .join("\n"),
    );
    let opts = InspectOptions {
        template: Some("chatml".into()),
        limit: Some(2),
        tokenize: TokenizeConfig {
            block_size: 32,
            ..Default::default()
        },
        ..Default::default()
    };
    let samples = inspect(&p, &tok, &opts).unwrap();
    assert_eq!(samples.len(), 2);
    let v = serde_json::to_value(&samples[0]).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["text", "input_ids", "labels"]);
    assert_eq!(
        v["text"],
        "<|im_start|>user\nWhere?<|im_end|>\n<|im_start|>assistant\nThere.<|im_end|>\n"
    );
    let shown = render_sample(&samples[0], &tok, true).unwrap();
    assert!(
        shown.contains("\x1b[1;32mThere.<|im_end|>\n\x1b[0m"),
        "{shown:?}"
    );
    let plain = render_sample(&samples[0], &tok, false).unwrap();
    assert!(plain.contains("[[There.<|im_end|>\n]]"), "{plain:?}");
    let all_opts = InspectOptions {
        limit: None,
        ..opts
    };
    let all = inspect(&p, &tok, &all_opts).unwrap();
    let st = stats(&p, &tok, &all_opts).unwrap();
    assert_eq!(st.samples, 3);
    assert_eq!(st.truncated, 1);
    assert_eq!(st.target_lost, 1);
    assert!(st.length_before_truncation.max > 32 && st.length.max == 32);
    assert!(st.masked_fraction > 0.0 && st.masked_fraction < 1.0);
    assert_eq!(
        st.total_tokens,
        all.iter().map(|s| s.input_ids.len()).sum::<usize>()
    );
    let trained: usize = all
        .iter()
        .map(|s| s.labels.iter().filter(|&&l| l != IGNORE_INDEX).count())
        .sum();
    assert_eq!(st.trained_tokens, trained);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn parsers_never_panic_on_arbitrary_json(v in arb_json(), ty in 0usize..8) {
        let ty = DatasetType::ALL[ty];
        let _ = Instance::from_json(ty, &v, Path::new("p"), 0);
        let _ = lmflow_datasets::reader::parse_lmflow_value(Path::new("p"), &json!({"type": ty.as_str(), "instances": [v]}), None);
    }

    #[test]
    fn jsonl_reader_never_panics_and_roundtrips(lines in prop::collection::vec("[ -~]{0,40}", 0..6), texts in prop::collection::vec("\\PC{0,20}", 1..5)) {
        let dir = tempfile::tempdir().unwrap();
        let garbage = write(dir.path(), "g.jsonl", &lines.join("\n"));
        let _ = read_dataset(&garbage, &ReadOptions { dataset_type: Some(DatasetType::TextOnly) });
        let body: Vec<String> = texts.iter().map(|t| json!({"text": t}).to_string()).collect();
        let p = write(dir.path(), "ok.jsonl", &body.join("\n"));
        let ds = read_dataset(&p, &ReadOptions { dataset_type: Some(DatasetType::TextOnly) }).unwrap();
        let got: Vec<String> = ds.instances.iter().map(|i| match i { Instance::TextOnly { text } => text.clone(), _ => unreachable!() }).collect();
        prop_assert_eq!(got, texts);
    }

    #[test]
    fn packing_preserves_every_token(lens in prop::collection::vec(1usize..16, 1..20), block in 16usize..40) {
        let samples: Vec<TokenizedSample> = lens.iter().map(|&n| sample(&vec![1; n], 0)).collect();
        let blocks = pack_best_fit(&samples, block).unwrap();
        let total: usize = blocks.iter().map(|b| b.len()).sum();
        prop_assert_eq!(total, lens.iter().sum::<usize>());
        prop_assert!(blocks.iter().all(|b| b.len() <= block));
        // Best fit never uses more than twice the lower bound of blocks.
        let lower = total.div_ceil(block);
        prop_assert!(blocks.len() <= 2 * lower.max(1));
    }
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(|i| json!(i)),
        "[a-z ]{0,8}".prop_map(Value::String),
        prop::sample::select(vec![
            "user",
            "assistant",
            "system",
            "function",
            "observation",
            "text",
            "messages"
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "text", "input", "output", "messages", "role", "content", "chosen",
                        "rejected", "prompt", "score", "value", "system", "tools", "margin"
                    ]),
                    inner
                ),
                0..5
            )
            .prop_map(|kv| Value::Object(
                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
            )),
        ]
    })
}

/// Sum of next-token cross-entropies of one `[1, seq]` row (labels unshifted, `-100` ignored).
fn summed_loss(logits: burn::tensor::Tensor<3>, labels: &[i64]) -> f64 {
    let [_, seq, vocab] = logits.dims();
    let v = logits
        .to_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap();
    let mut loss = 0.0f64;
    for t in 0..seq - 1 {
        let target = labels[t + 1];
        if target == IGNORE_INDEX {
            continue;
        }
        let row = &v[t * vocab..(t + 1) * vocab];
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
        let lse = max
            + row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln();
        loss += lse - row[target as usize] as f64;
    }
    loss
}

#[test]
fn packed_loss_equals_sum_of_sample_losses() {
    use lmflow_models::model::ForwardInput;
    use lmflow_models::{CausalLm, ModelConfig};
    let device = Device::flex();
    let cfg = ModelConfig::from_json(
        json!({
            "model_type": "llama", "vocab_size": 400, "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 128, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
            "tie_word_embeddings": false
        }),
        Path::new("config.json"),
    )
    .unwrap();
    let model = CausalLm::from_config(&cfg, &device).unwrap();
    let tok = tokenizer();
    let template = ChatTemplate::preset("chatml").unwrap();
    let enc = SampleEncoder::new(
        &tok,
        Some(&template),
        TokenizeConfig {
            block_size: 96,
            ..Default::default()
        },
    )
    .unwrap();
    let samples = vec![
        enc.encode_text(&Instance::Text2Text {
            input: "Who?".into(),
            output: " Ahab, the captain.".into(),
        })
        .unwrap()
        .sample,
        enc.encode_conversation(&chat(
            &[(Role::User, "Where?"), (Role::Assistant, "At sea.")],
            None,
        ))
        .unwrap()
        .sample,
        enc.encode_text(&Instance::TextOnly {
            text: "Call me Ishmael.".into(),
        })
        .unwrap()
        .sample,
    ];
    let blocks = pack_best_fit(&samples, 96).unwrap();
    assert_eq!(blocks.len(), 1);
    let batch = collate_packed(&[&blocks[0]], 0, &device).unwrap();
    let input = ForwardInput::new(batch.input_ids)
        .with_position_ids(batch.position_ids)
        .with_segment_ids(batch.segment_ids.unwrap());
    let packed = summed_loss(
        model.forward(input, None).unwrap().logits,
        &blocks[0].labels,
    );
    let mut alone = 0.0;
    for s in &samples {
        let b = collate(&[s], 0, &device).unwrap();
        alone += summed_loss(
            model
                .forward(ForwardInput::new(b.input_ids), None)
                .unwrap()
                .logits,
            &s.labels,
        );
    }
    assert!(alone > 1.0);
    assert!(
        (packed - alone).abs() < 1e-3 * alone,
        "packed {packed} vs alone {alone}"
    );
    // Without segment ids the samples see each other and the loss changes.
    let batch = collate_packed(&[&blocks[0]], 0, &device).unwrap();
    let leaky = summed_loss(
        model
            .forward(
                ForwardInput::new(batch.input_ids).with_position_ids(batch.position_ids),
                None,
            )
            .unwrap()
            .logits,
        &blocks[0].labels,
    );
    assert!(
        (leaky - alone).abs() > 1e-4 * alone,
        "cross-contamination must change the loss"
    );
}
