//! `lmflow chat`: an interactive, streaming chat with a model using its chat template.
//!
//! The model's KV cache is kept across turns ([`ChatSession`]): each turn renders the whole
//! conversation with the chat template, finds the longest prefix of its tokens already in the
//! cache, and runs the model only over the rest (the new user message and the template's
//! markers), so a turn costs what its new tokens cost, not the whole history. When the rendered
//! history differs from what was cached (e.g. a template that re-renders earlier turns, or
//! `/reset`), the cache is cut back to the common prefix. With `--draft-model` (speculative
//! decoding) or `--reread-history` each turn re-reads the whole conversation instead.

use std::io::{BufRead, Write};

use anyhow::Context;
use burn::tensor::{Device, s};
use lmflow_datasets::{Conversation, Message, Role};
use lmflow_infer::tensor_io::{float_rows, ids_tensor};
use lmflow_infer::{GenerationConfig, LogitsPipeline, SeededRng, StopCriteria, sampler};
use lmflow_models::{CausalLm, ForwardInput, KvCache, Tokenizer};

use crate::generate::{ModelArgs, SamplingArgs, chat_prompt, fit_to_context, load};

/// Arguments of `lmflow chat`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Chat template: "tokenizer" (the model's own) or a preset name.
    #[arg(long, default_value = "tokenizer")]
    chat_template: String,
    /// System prompt.
    #[arg(long)]
    system: Option<String>,
    /// Re-read the whole conversation every turn instead of keeping the KV cache across turns
    /// (slower; the answers are the same).
    #[arg(long)]
    reread_history: bool,
}

/// A model's KV cache kept across the turns of a conversation.
pub struct ChatSession<'a> {
    model: &'a CausalLm,
    tokenizer: &'a Tokenizer,
    device: Device,
    cache: KvCache,
    /// The token ids whose keys and values are in `cache`, in order.
    cached: Vec<u32>,
}

impl<'a> ChatSession<'a> {
    /// An empty session over `model`.
    pub fn new(model: &'a CausalLm, tokenizer: &'a Tokenizer, device: &Device) -> Self {
        Self {
            model,
            tokenizer,
            device: device.clone(),
            cache: model.new_cache(model.max_position_embeddings()),
            cached: Vec::new(),
        }
    }

    /// Generates the reply to `prompt` (the whole conversation rendered with the generation
    /// prompt), streaming text to `on_text`; returns the reply's text without special tokens.
    /// Only the tokens after the longest cached prefix of `prompt` are run through the model.
    /// Decoding is that of [`lmflow_infer::Generator`] for one prompt (same logits processors,
    /// stopping and sampler seed), so the replies are those of re-reading the conversation.
    pub fn reply(
        &mut self,
        prompt: &[u32],
        config: &GenerationConfig,
        on_text: &mut dyn FnMut(&str),
    ) -> anyhow::Result<String> {
        config.validate()?;
        anyhow::ensure!(!prompt.is_empty(), "empty prompt");
        let context = self.model.max_position_embeddings();
        let max_new_tokens = fit_to_context(config.max_new_tokens, prompt.len(), context)?;
        let mut common = self
            .cached
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        // At least the prompt's last token is run, for the logits of the first new token.
        common = common.min(prompt.len() - 1);
        self.cache.truncate(common);
        self.cached.truncate(common);
        tracing::debug!(
            reused = common,
            new = prompt.len() - common,
            "chat turn prefill"
        );
        let mut logits = self.forward(&prompt[common..])?;
        self.cached.extend_from_slice(&prompt[common..]);

        let pipeline = LogitsPipeline::new(config);
        let stop = StopCriteria::new(
            config.eos_token_ids.clone(),
            config.stop_strings.clone(),
            max_new_tokens,
        );
        // The seed stream of a one-prompt `Generator` call.
        let mut rng = SeededRng::new(config.seed).fork();
        let mut decoder = self.tokenizer.stream_decoder(true);
        let mut history = prompt.to_vec();
        let mut new_ids = Vec::new();
        let mut text = String::new();
        for _ in 0..max_new_tokens {
            let mut scores = logits;
            pipeline.apply(&mut scores, &history, new_ids.len());
            let token = if config.do_sample {
                sampler::sample(&scores, &mut rng)
            } else {
                sampler::argmax(&scores)
            };
            new_ids.push(token);
            history.push(token);
            if let Some(piece) = decoder.push(token)? {
                text.push_str(&piece);
                on_text(&piece);
            }
            if stop.check(token, new_ids.len(), &text).is_some() {
                if let Some(piece) = decoder.finish()? {
                    on_text(&piece);
                }
                break;
            }
            logits = self.forward(&[token])?;
            self.cached.push(token);
        }
        Ok(self.tokenizer.decode(&new_ids, true)?)
    }

    /// Runs `ids` after the cached positions and returns the last position's logits.
    fn forward(&mut self, ids: &[u32]) -> anyhow::Result<Vec<f32>> {
        let row: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
        let input = ForwardInput::new(ids_tensor(&[row], &self.device));
        let hidden = self.model.forward_hidden(&input, Some(&mut self.cache))?;
        let n = ids.len();
        let logits = self.model.logits(hidden.slice(s![.., n - 1..n, ..]));
        let vocab = logits.dims()[2];
        let mut rows = float_rows(logits.reshape([1, vocab]), "logits")?;
        rows.pop().context("no logits row")
    }
}

/// Runs `lmflow chat`: reads user turns from stdin; `/reset` clears the history, `/exit` quits.
pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = load(&args.model)?;
    let tokenizer = loaded.tokenizer()?;
    let config = args.sampling.config(tokenizer, 1);
    let mut conversation = Conversation {
        system: args.system.clone(),
        ..Conversation::default()
    };
    let mut session = (loaded.draft.is_none() && !args.reread_history)
        .then(|| ChatSession::new(&loaded.target.model, tokenizer, &loaded.device));
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    eprintln!("lmflow chat: type a message; /reset clears the history, /exit quits.");
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        match line.trim() {
            "/exit" | "/quit" => break,
            "/reset" => {
                conversation.messages.clear();
                eprintln!("(history cleared)");
                continue;
            }
            "" => continue,
            _ => {}
        }
        conversation.messages.push(Message {
            role: Role::User,
            content: line.to_string(),
            extra: Default::default(),
        });
        let prompt = chat_prompt(tokenizer, &args.chat_template, &conversation)?;
        let reply = match &mut session {
            Some(session) => session.reply(&prompt, &config, &mut |text| {
                let _ = write!(out, "{text}");
                let _ = out.flush();
            })?,
            None => loaded
                .generate(&[prompt], &config, args.model.gamma, &mut |_, text| {
                    let _ = write!(out, "{text}");
                    let _ = out.flush();
                })?
                .into_iter()
                .next()
                .and_then(|o| o.text)
                .unwrap_or_default(),
        };
        writeln!(out)?;
        conversation.messages.push(Message {
            role: Role::Assistant,
            content: reply,
            extra: Default::default(),
        });
    }
    Ok(())
}
