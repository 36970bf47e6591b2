//! Generation throughput: prefill and decode tokens per second of [`Generator`] on a model folder.
//!
//! ```text
//! cargo run -p lmflow-infer --example bench_generate -- MODEL_DIR [BATCH] [PROMPT_LEN] [NEW_TOKENS] [REPEATS]
//! ```
//! Prefill time is the time of `generate` with one new token; decode throughput is
//! `batch * (new_tokens - 1)` over the extra time of `generate` with `new_tokens` tokens
//! (EOS ignored). Prints one JSON line. `tests/fixtures/bench_generate.py` measures
//! `transformers` the same way; `scripts/bench_generate.sh` runs both and prints the ratios.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::Device;
use lmflow_infer::{GenerationConfig, Generator, SeededRng, load_model};
use lmflow_models::LoadOptions;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model_dir = PathBuf::from(
        args.first()
            .ok_or("usage: bench_generate MODEL_DIR [BATCH] [PROMPT_LEN] [NEW_TOKENS] [REPEATS]")?,
    );
    let arg = |i: usize, default: usize| -> Result<usize, Box<dyn std::error::Error>> {
        Ok(args
            .get(i)
            .map(|s| s.parse())
            .transpose()?
            .unwrap_or(default))
    };
    let (batch, prompt_len, new_tokens, repeats) =
        (arg(1, 1)?, arg(2, 128)?, arg(3, 64)?, arg(4, 3)?);
    let device = Device::flex();
    let pretrained = load_model(&model_dir, None, &LoadOptions::default(), &device)?;
    let vocab = pretrained.model.vocab_size() as u64;
    let mut rng = SeededRng::new(0);
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            (0..prompt_len)
                .map(|_| (3 + rng.next_u64() % (vocab - 3)) as u32)
                .collect()
        })
        .collect();
    let generator = Generator::new(&pretrained.model, &device);
    let time = |n: usize| -> Result<f64, Box<dyn std::error::Error>> {
        let config = GenerationConfig::greedy(n);
        let mut best = f64::INFINITY;
        for _ in 0..repeats {
            let start = Instant::now();
            let out = generator.generate(&prompts, &config)?;
            device.sync()?;
            assert!(out.iter().all(|o| o.new_ids.len() == n));
            best = best.min(start.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    time(2)?; // warm-up
    let t1 = time(1)?;
    let tn = time(new_tokens)?;
    let line = serde_json::json!({
        "impl": "lmflow-rs (burn flex, CPU)",
        "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "prefill_s": t1, "generate_s": tn,
        "prefill_tok_s": (batch * prompt_len) as f64 / t1,
        "decode_tok_s": (batch * (new_tokens - 1)) as f64 / (tn - t1),
    });
    println!("{line}");
    Ok(())
}
