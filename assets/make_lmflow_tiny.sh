#!/usr/bin/env bash
# Builds assets/lmflow-tiny/ with the lmflow binary alone (plus jq and awk to cut the corpus):
# tokenizer trained by `lmflow tokenizer train`, weights initialised by `lmflow init` and
# pretrained from scratch by `lmflow finetune --full`, measured by `lmflow eval` and
# `lmflow generate`. The recipe and its numbers are in assets/lmflow-tiny/README.md.
#
#   bash assets/make_lmflow_tiny.sh            # from the repository root
#
# Environment: LMFLOW (the binary, default target/release/lmflow), DATA (the corpus folder,
# default ../shared/data: moby-dick.txt, sotu.jsonl, us-states-capitals.json; see NOTICE.md),
# WORK (scratch folder, default output/lmflow-tiny-build), OUT (default assets/lmflow-tiny),
# STEPS (optimizer steps, default 1140: 3 epochs), SEED (default 42).
set -euo pipefail

LMFLOW=${LMFLOW:-target/release/lmflow}
DATA=${DATA:-../shared/data}
WORK=${WORK:-output/lmflow-tiny-build}
OUT=${OUT:-assets/lmflow-tiny}
STEPS=${STEPS:-1140}
SEED=${SEED:-42}
mkdir -p "$WORK"

# 1. Corpus. Moby-Dick up to chapter 129 and the State of the Union addresses since 1990 are
#    the training text; chapters 130 to the end are held out (assets/data/moby-dick-eval.json,
#    the validation set, holds paragraphs of them).
awk '/^CHAPTER 130\./ { exit } { print }' "$DATA/moby-dick.txt" > "$WORK/moby-train.txt"
jq -r 'select(.year >= 1990) | .text' "$DATA/sotu.jsonl" > "$WORK/sotu-1990.txt"
# State and city names join the tokenizer's corpus (never the model's): the capitals demo then
# fine-tunes on whole-word tokens, as with assets/tiny-llama.
jq -r '.[] | .state + " " + .capital' "$DATA/us-states-capitals.json" > "$WORK/states.txt"

# 2. Tokenizer: byte-level BPE, 2048 tokens, ChatML template, <|endoftext|> pad,
#    <|im_end|> eos (the defaults of `lmflow tokenizer train`).
rm -rf "$WORK/tokenizer"
"$LMFLOW" tokenizer train --input "$WORK/moby-train.txt" "$WORK/sotu-1990.txt" "$WORK/states.txt" \
  --vocab-size 2048 --model-max-length 256 --out "$WORK/tokenizer"

# 3. Pretraining data (text_only; each text gets <|im_end|> appended, texts are packed into
#    256-token rows): paragraphs of Moby-Dick, whole addresses, and ChatML turns that answer
#    "Tell me a line." with a Moby-Dick sentence (those of 20-200 characters among the first
#    3000), so that the model knows the turn structure (not the capitals: the demo teaches those).
jq -R -s '
  (split("\n") | map(select(length > 0))) as $paras
  | (split(". ") | .[:3000] | map(gsub("\n"; " ") | gsub("^ +| +$"; ""))
     | map(select(length > 20 and length < 200))
     | map("<|im_start|>user\nTell me a line.<|im_end|>\n<|im_start|>assistant\n" + . + ".")) as $chat
  | {type: "text_only", instances: ($paras + $chat | map({text: .}))}
' "$WORK/moby-train.txt" > "$WORK/moby.json"
jq -R -s '{type: "text_only", instances: (split("\n") | map(select(length > 0)) | map({text: .}))}' \
  "$WORK/sotu-1990.txt" > "$WORK/sotu.json"
jq -s '{type: "text_only", instances: (.[0].instances + .[1].instances)}' \
  "$WORK/moby.json" "$WORK/sotu.json" > "$WORK/pretrain.json"

# 4. A LLaMA-architecture configuration of the size of assets/tiny-llama (about 1 M parameters).
cat > "$WORK/config.json" <<'JSON'
{
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "vocab_size": 2048,
  "hidden_size": 128,
  "intermediate_size": 352,
  "num_hidden_layers": 4,
  "num_attention_heads": 4,
  "num_key_value_heads": 2,
  "head_dim": 32,
  "hidden_act": "silu",
  "max_position_embeddings": 256,
  "rms_norm_eps": 1e-05,
  "rope_theta": 10000.0,
  "attention_bias": false,
  "mlp_bias": false,
  "tie_word_embeddings": true,
  "initializer_range": 0.02,
  "bos_token_id": null,
  "eos_token_id": [2, 0],
  "pad_token_id": 0
}
JSON

# 5. Random initialisation (transformers' _init_weights) and pretraining from scratch.
rm -rf "$WORK/init"
"$LMFLOW" init --config "$WORK/config.json" --tokenizer "$WORK/tokenizer" --out "$WORK/init" --seed "$SEED"
# Weight decay and gradient clipping as HF TrainingArguments names.
echo '{"weight_decay": 0.01, "max_grad_norm": 1.0}' > "$WORK/trainer.json"
start=$(date +%s)
"$LMFLOW" finetune --model "$WORK/init" --full \
  --dataset "$WORK/pretrain.json" --eval-dataset assets/data/moby-dick-eval.json \
  --output "$WORK/pretrain" --overwrite-output \
  --block-size 256 --batch-size 8 --max-steps "$STEPS" \
  --learning-rate 3e-3 --warmup-ratio 0.02 --config "$WORK/trainer.json" \
  --eval-steps 190 --save-steps 190 --logging-steps 10 --seed "$SEED" --samples 0
end=$(date +%s)
echo "pretraining wall time: $((end - start)) s"

# 6. The model folder, its validation perplexity and a sample.
rm -rf "$OUT"
mkdir -p "$OUT"
cp "$WORK/pretrain/final/"{config.json,model.safetensors,tokenizer.json,tokenizer_config.json} "$OUT/"
for f in chat_template.jinja generation_config.json; do
  if [ -f "$WORK/pretrain/final/$f" ]; then cp "$WORK/pretrain/final/$f" "$OUT/"; fi
done
"$LMFLOW" eval --model "$OUT" --dataset assets/data/moby-dick-eval.json
"$LMFLOW" generate --model "$OUT" --prompt "Call me Ishmael." --max-new-tokens 60 --greedy
"$LMFLOW" generate --model "$OUT" --prompt "Call me Ishmael." --max-new-tokens 60 \
  --temperature 0.8 --top-p 0.95 --seed 1
"$LMFLOW" generate --model "$OUT" --chat --prompt "Tell me a line." --max-new-tokens 60 --greedy
