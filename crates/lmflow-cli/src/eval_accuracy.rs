//! `lmflow eval --metric accuracy`: accuracy on question/answer data, as LMFlow's evaluator.
//!
//! Instances (a JSON file `{"instances": [...]}` or JSON Lines) have an `input` and an `output`:
//! - with an `options` list, the option with the highest summed log-likelihood after the prompt
//!   is chosen and compared with `output` (the correct option's text or its index);
//! - otherwise the model generates greedily (`--max-new-tokens`, LMFlow uses 100) and the answer
//!   is extracted from the text with `--answer-type` (LMFlow's `answer_extraction`) and compared
//!   with `output` (LMFlow's `_match`).
//!
//! Prompts are `--prompt-structure` with `{input}` replaced by the instance's input.

use std::path::Path;

use anyhow::{Context, bail};
use burn::tensor::Device;
use lmflow_infer::eval::{answers_match, choose_option, extract_answer};
use lmflow_infer::{GenerationConfig, Generator};
use lmflow_models::Pretrained;
use serde_json::Value;

/// Settings of an accuracy run.
pub struct AccuracyOptions<'a> {
    /// Answer extraction type for generated answers.
    pub answer_type: &'a str,
    /// `{input}` template of the prompt.
    pub prompt_structure: &'a str,
    /// Tokens generated per answer.
    pub max_new_tokens: usize,
    /// Prompts per generation batch.
    pub batch_size: usize,
}

fn read_instances(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return match v.get("instances").and_then(Value::as_array) {
            Some(a) => Ok(a.clone()),
            None => bail!(
                "{}: expected a JSON object with an \"instances\" list",
                path.display()
            ),
        };
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: invalid JSON", path.display(), i + 1))
        })
        .collect()
}

fn field<'v>(v: &'v Value, key: &str, i: usize) -> anyhow::Result<&'v Value> {
    v.get(key)
        .with_context(|| format!("instance {i}: missing \"{key}\""))
}

/// Computes accuracy and prints one JSON line.
pub fn run(
    pretrained: &Pretrained,
    dataset: &Path,
    opts: &AccuracyOptions<'_>,
    device: &Device,
) -> anyhow::Result<()> {
    let Some(tokenizer) = &pretrained.tokenizer else {
        bail!(
            "{}: no tokenizer.json in the model folder",
            pretrained.dir.display()
        );
    };
    let instances = read_instances(dataset)?;
    if instances.is_empty() {
        bail!("{}: no instances", dataset.display());
    }
    let mut correct = 0usize;
    let mut pending: Vec<(Vec<u32>, String)> = Vec::new();
    let mut mode = None;
    for (i, inst) in instances.iter().enumerate() {
        let input = field(inst, "input", i)?
            .as_str()
            .with_context(|| format!("instance {i}: \"input\" is not a string"))?;
        let prompt = opts.prompt_structure.replace("{input}", input);
        let prompt_ids = tokenizer.encode(&prompt, true)?;
        let output = field(inst, "output", i)?;
        match inst.get("options").and_then(Value::as_array) {
            Some(options) => {
                if mode == Some("generation") {
                    bail!("instance {i}: mixing multiple-choice and generation instances");
                }
                mode = Some("multiple_choice");
                let texts: Vec<&str> = options.iter().filter_map(Value::as_str).collect();
                if texts.len() != options.len() || texts.is_empty() {
                    bail!("instance {i}: \"options\" must be a non-empty list of strings");
                }
                let ids = texts
                    .iter()
                    .map(|t| tokenizer.encode(t, false))
                    .collect::<Result<Vec<_>, _>>()?;
                let gold = match output {
                    Value::Number(n) => n.as_u64().map(|n| n as usize),
                    Value::String(s) => texts.iter().position(|t| t == s),
                    _ => None,
                }
                .with_context(|| {
                    format!(
                        "instance {i}: \"output\" is neither an option index nor an option's text"
                    )
                })?;
                let (best, _) = choose_option(&pretrained.model, &prompt_ids, &ids, device)?;
                correct += usize::from(best == gold);
            }
            None => {
                if mode == Some("multiple_choice") {
                    bail!("instance {i}: mixing multiple-choice and generation instances");
                }
                mode = Some("generation");
                let truth = match output {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                pending.push((prompt_ids, truth));
            }
        }
    }
    if !pending.is_empty() {
        let eos = tokenizer.eos_token_ids().to_vec();
        let config = GenerationConfig {
            pad_token_id: tokenizer
                .pad_token_id()
                .or(eos.first().copied())
                .unwrap_or(0),
            eos_token_ids: eos,
            ..GenerationConfig::greedy(opts.max_new_tokens)
        };
        let generator = Generator::new(&pretrained.model, device).with_tokenizer(tokenizer);
        for chunk in pending.chunks(opts.batch_size.max(1)) {
            let prompts: Vec<Vec<u32>> = chunk.iter().map(|(p, _)| p.clone()).collect();
            let outputs = generator.generate(&prompts, &config)?;
            for (o, (_, truth)) in outputs.iter().zip(chunk) {
                let predicted = extract_answer(o.text.as_deref().unwrap_or(""), opts.answer_type)?;
                correct += usize::from(answers_match(&predicted, truth, opts.answer_type));
            }
        }
    }
    let line = serde_json::json!({
        "metric": "accuracy",
        "mode": mode,
        "accuracy": correct as f64 / instances.len() as f64,
        "correct": correct,
        "samples": instances.len(),
    });
    println!("{line}");
    Ok(())
}
