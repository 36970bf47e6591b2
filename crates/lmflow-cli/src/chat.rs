//! `lmflow chat`: an interactive, streaming chat with a model using its chat template.

use std::io::{BufRead, Write};

use lmflow_datasets::{Conversation, Message, Role};

use crate::generate::{ModelArgs, SamplingArgs, chat_prompt, load};

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
        let outputs = loaded.generate(&[prompt], &config, args.model.gamma, &mut |_, text| {
            let _ = write!(out, "{text}");
            let _ = out.flush();
        })?;
        writeln!(out)?;
        let reply = outputs
            .into_iter()
            .next()
            .and_then(|o| o.text)
            .unwrap_or_default();
        conversation.messages.push(Message {
            role: Role::Assistant,
            content: reply,
            extra: Default::default(),
        });
    }
    Ok(())
}
