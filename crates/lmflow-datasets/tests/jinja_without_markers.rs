//! Hub chat templates without `{% generation %}` markers still train exactly the assistant
//! turns (content + end-of-turn), found by rendering conversation prefixes.
#![allow(clippy::unwrap_used)]

use lmflow_datasets::{ChatTemplate, Conversation, Message, Role, TemplateTokens};
use lmflow_models::Tokenizer;

fn msg(role: Role, content: &str) -> Message {
    Message {
        role,
        content: content.into(),
        extra: Default::default(),
    }
}

#[test]
fn tokenizer_template_without_markers_trains_assistant_turns_like_the_chatml_preset() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../assets/tiny-llama");
    let tokenizer = Tokenizer::from_dir(dir).unwrap();
    let tokens = TemplateTokens::from_tokenizer(&tokenizer);
    let conversation = Conversation {
        system: Some("Answer briefly.".into()),
        tools: vec![],
        messages: vec![
            msg(Role::User, "What is the capital of Ohio?"),
            msg(Role::Assistant, "Columbus."),
            msg(Role::User, "And of Texas?"),
            msg(Role::Assistant, "Austin."),
        ],
    };
    let jinja = ChatTemplate::resolve("tokenizer", &tokenizer).unwrap();
    let segments = jinja.render(&conversation, &tokens, false).unwrap();
    let trained: Vec<&str> = segments
        .iter()
        .filter(|s| s.trained)
        .map(|s| s.text.as_str())
        .collect();
    assert_eq!(trained, ["Columbus.<|im_end|>\n", "Austin.<|im_end|>\n"]);
    let untrained: String = segments
        .iter()
        .filter(|s| !s.trained)
        .map(|s| s.text.as_str())
        .collect();
    assert!(untrained.contains("What is the capital of Ohio?"));
    assert!(untrained.contains("Answer briefly."));
    assert!(!untrained.contains("Columbus"));

    // The same text and the same mask as the ChatML preset.
    let preset = ChatTemplate::resolve("chatml", &tokenizer).unwrap();
    assert_eq!(
        preset.render(&conversation, &tokens, false).unwrap(),
        segments
    );
}
