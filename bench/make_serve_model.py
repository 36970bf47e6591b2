#!/usr/bin/env python3
"""Writes a randomly initialised model folder of the `cpu-small` benchmark shape (LLaMA, hidden
512, intermediate 1408, 8 layers, 8 heads / 4 KV heads, vocab 32000, untied; the shape of
`lmflow bench --shape cpu-small`) with the bundled tokenizer, for serving benchmarks
(bench/serve_load.py). Needs torch and transformers (the .venv-bench environment).

    .venv-bench/bin/python bench/make_serve_model.py /tmp/cpu-small
"""

import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/cpu-small")
torch.manual_seed(0)
config = LlamaConfig(
    hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
    num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False,
    max_position_embeddings=4096, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2,
    pad_token_id=0,
)
LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)
tokenizer_dir = Path(__file__).resolve().parent.parent / "assets" / "tiny-llama"
for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"]:
    shutil.copy(tokenizer_dir / name, out / name)
print(out)
