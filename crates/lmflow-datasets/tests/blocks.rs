//! Long `text_only` documents are split into consecutive blocks (like `group_texts`), never
//! truncated.
#![allow(clippy::unwrap_used)]

use lmflow_datasets::format::Instance;
use lmflow_datasets::packing::pack_best_fit;
use lmflow_datasets::tokenize::{SampleEncoder, TokenizeConfig, split_into_blocks};
use lmflow_models::Tokenizer;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

#[test]
fn long_text_only_document_becomes_consecutive_blocks() {
    let tokenizer = Tokenizer::from_dir(format!("{FIXTURES}/tokenizer")).unwrap();
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(20);
    let doc = Instance::TextOnly { text: text.clone() };
    let block = 16;
    let cfg = TokenizeConfig {
        block_size: block,
        ..TokenizeConfig::default()
    };
    let encoder = SampleEncoder::new(&tokenizer, None, cfg.clone()).unwrap();
    // The whole document, untruncated.
    let whole = SampleEncoder::new(
        &tokenizer,
        None,
        TokenizeConfig {
            block_size: 1 << 20,
            ..cfg
        },
    )
    .unwrap()
    .encode_text(&doc)
    .unwrap()
    .sample;
    assert!(
        whole.len() > 3 * block,
        "fixture too short: {}",
        whole.len()
    );
    // encode_text truncates ...
    let cut = encoder.encode_text(&doc).unwrap().sample;
    assert!(cut.truncated && cut.len() == block);
    // ... encode_text_blocks keeps every token, in order, in blocks of `block`.
    let blocks = encoder.encode_text_blocks(&doc).unwrap();
    assert_eq!(
        blocks.len(),
        whole.len().div_ceil(block) - usize::from(whole.len() % block == 1)
    );
    assert!(blocks.len() >= 4);
    for (i, b) in blocks.iter().enumerate() {
        assert!(b.len() <= block && b.len() >= 2);
        assert!(!b.truncated && !b.target_lost);
        assert_eq!(b.original_len, whole.len());
        assert_eq!(
            b.trained_tokens(),
            b.len(),
            "every token of block {i} trained"
        );
        let lo = i * block;
        assert_eq!(b.input_ids, whole.input_ids[lo..lo + b.len()]);
        assert_eq!(b.labels, whole.labels[lo..lo + b.len()]);
    }
    // The pieces fit the packer (which refuses samples longer than the block).
    let packed = pack_best_fit(&blocks, block).unwrap();
    let packed_tokens: usize = packed.iter().map(|p| p.len()).sum();
    assert_eq!(packed_tokens, blocks.iter().map(|b| b.len()).sum::<usize>());
    // A short document stays one sample.
    let short = Instance::TextOnly { text: "Hi".into() };
    assert_eq!(encoder.encode_text_blocks(&short).unwrap().len(), 1);
}

#[test]
fn split_into_blocks_drops_only_a_one_token_tail() {
    let ids: Vec<u32> = (0..9).collect();
    let b = split_into_blocks(&ids, 4);
    assert_eq!(
        b.len(),
        2,
        "9 = 4 + 4 + 1: the lone last token predicts nothing"
    );
    assert_eq!(b[1].input_ids, vec![4, 5, 6, 7]);
    let b = split_into_blocks(&ids[..7], 4);
    assert_eq!(b.len(), 2);
    assert_eq!(b[1].input_ids, vec![4, 5, 6]);
    assert_eq!(split_into_blocks(&[5], 4).len(), 1);
    assert!(split_into_blocks(&ids, 0).is_empty());
}
