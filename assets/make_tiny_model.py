"""Builds the bundled tiny model and demo datasets of LMFlow-rs (assets/).

Run from the repository root with torch + transformers + tokenizers installed:

    python assets/make_tiny_model.py

Outputs (committed):
  assets/tiny-llama/        a ~1M-parameter LLaMA-architecture model in Hub layout
                            (config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
                            generation_config.json), briefly pretrained on Moby-Dick and
                            State of the Union text so that it writes English-like text.
  assets/data/capitals/     LMFlow `conversation` datasets (train.json, eval.json) asking for US
                            state capitals: the demo fine-tuning task (the base model does not
                            know them).
  assets/data/moby-dick-eval.json   a small `text_only` evaluation set.

Everything is deterministic (fixed seeds, one thread) and offline.
"""

import json
import os
import random
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(ROOT, "..", "..", "shared", "data")
if len(sys.argv) > 1:
    SHARED = sys.argv[1]
OUT = os.path.join(ROOT, "tiny-llama")
DATA = os.path.join(ROOT, "data")

torch.manual_seed(0)
random.seed(0)
torch.set_num_threads(1)

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def read_texts():
    with open(os.path.join(SHARED, "moby-dick.txt"), encoding="utf-8") as f:
        moby = f.read()
    # The last chapters are held out of pretraining: they form the perplexity evaluation set.
    cut = moby.index("CHAPTER 130.")
    moby, held_out = moby[:cut], moby[cut:]
    sotu = []
    with open(os.path.join(SHARED, "sotu.jsonl"), encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["year"] >= 1990:
                sotu.append(rec["text"])
    return moby, held_out, sotu


def capitals():
    with open(os.path.join(SHARED, "us-states-capitals.json"), encoding="utf-8") as f:
        return json.load(f)


def build_tokenizer(corpus):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=2048,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def main():
    moby, held_out, sotu = read_texts()
    caps = capitals()
    cap_text = [f"The capital of {c['state']} is {c['capital']}." for c in caps]
    # The tokenizer knows state and city names, the model is never shown the pairs.
    tok = build_tokenizer([moby] + sotu + [" ".join(c["state"] + " " + c["capital"] for c in caps)])
    os.makedirs(OUT, exist_ok=True)
    tok.save(os.path.join(OUT, "tokenizer.json"))
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        model_max_length=256,
    )
    hf_tok.chat_template = CHATML
    hf_tok.save_pretrained(OUT)
    # transformers 5 writes the template to chat_template.jinja; Hub models of the previous
    # generation keep it in tokenizer_config.json. Write both so either reader finds it.
    cfg_path = os.path.join(OUT, "tokenizer_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        tok_cfg = json.load(f)
    tok_cfg["chat_template"] = CHATML
    with open(cfg_path, "w", encoding="utf-8") as f:
        json.dump(tok_cfg, f, indent=2, ensure_ascii=False)

    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=[tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")],
        pad_token_id=tok.token_to_id("<|endoftext|>"),
    )
    model = LlamaForCausalLM(cfg)
    print("parameters:", sum(p.numel() for p in model.parameters()))

    # Pretraining stream: Moby-Dick + recent State of the Union addresses, plus ChatML-formatted
    # small talk so the model knows the turn structure (but not the capitals).
    eot = tok.token_to_id("<|endoftext|>")
    ids = []
    for text in [moby] + sotu:
        ids.extend(tok.encode(text).ids)
        ids.append(eot)
    chat_lines = []
    for sent in moby.split(". ")[:3000]:
        sent = sent.strip().replace("\n", " ")
        if 20 < len(sent) < 200:
            chat_lines.append(
                "<|im_start|>user\nTell me a line.<|im_end|>\n<|im_start|>assistant\n"
                + sent
                + ".<|im_end|>\n"
            )
    for line in chat_lines:
        ids.extend(tok.encode(line).ids)
    data = torch.tensor(ids, dtype=torch.long)
    print("pretraining tokens:", len(data))

    block, batch, steps = 128, 16, int(os.environ.get("TINY_STEPS", "800"))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.05)
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(data) - block - 1, (batch,))
        x = torch.stack([data[s : s + block] for s in starts])
        out = model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step} loss {out.loss.item():.3f}", flush=True)
    model.eval()
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    model.save_pretrained(OUT, safe_serialization=True)

    # Demo datasets (LMFlow conversation format).
    os.makedirs(os.path.join(DATA, "capitals"), exist_ok=True)
    questions = [
        "What is the capital of {s}?",
        "Which city is the capital of {s}?",
        "Name the capital of {s}.",
    ]
    train, evals = [], []
    for i, c in enumerate(caps):
        for j, q in enumerate(questions):
            inst = {
                "messages": [
                    {"role": "user", "content": q.format(s=c["state"])},
                    {"role": "assistant", "content": f"The capital of {c['state']} is {c['capital']}."},
                ]
            }
            (evals if j == 2 else train).append(inst)
    for name, insts in [("train.json", train), ("eval.json", evals)]:
        with open(os.path.join(DATA, "capitals", name), "w", encoding="utf-8") as f:
            json.dump({"type": "conversation", "instances": insts}, f, indent=1, ensure_ascii=False)
    # Held-out Moby-Dick paragraphs (chapters 130 on, never seen in pretraining) for perplexity.
    paras = [p.strip().replace("\n", " ") for p in held_out.split("\n\n") if len(p) > 300][:40]
    with open(os.path.join(DATA, "moby-dick-eval.json"), "w", encoding="utf-8") as f:
        json.dump({"type": "text_only", "instances": [{"text": p} for p in paras]}, f, indent=1)

    # Sanity: base model's greedy answer to a capitals question.
    msgs = [{"role": "user", "content": "What is the capital of Ohio?"}]
    prompt = hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    enc = hf_tok(prompt, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    print("base model says:", repr(hf_tok.decode(out[0, enc["input_ids"].shape[1]:])))


if __name__ == "__main__":
    main()
