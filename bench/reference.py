"""Reference side of `lmflow bench`: the same work in torch + transformers + peft.

    python bench/reference.py train  [--shape cpu-small|gpu-0.5b|mem-0.5b] [--method lora|full|qlora]
                                     [--dtype f32|bf16|f16] [--batch N] [--seq T] [--steps 5]
                                     [--warmup 2] [--device cpu|cuda] [--model DIR] [--seed 0]
    python bench/reference.py decode [--shape ...] [--batch 1] [--prompt 32] [--new-tokens 128]
                                     [--repeats 3] [--dtype ...] [--device ...] [--model DIR] [--seed 0]

Install with `pip install -r bench/requirements.txt` (bench/compare.sh does it in .venv-bench).

Shapes (default cpu-small) are random-weight models built in memory (--seed, default 0);
--model DIR loads a checkpoint instead, the shape then only sets the defaults:
  cpu-small  LlamaForCausalLM, hidden 512, 8 layers, 8/4 heads, vocab 32000. Train B4 x T256, f32.
  gpu-0.5b   Qwen2ForCausalLM, Qwen2-0.5B shape. Train B4 x T1024, bf16 on cuda, f32 on cpu.
  mem-0.5b   the gpu-0.5b model, train B1 x T512.

train: random token ids in [3, vocab), labels = inputs (the model's causal LM loss); `--warmup`
untimed steps, then `--steps` timed steps of forward, backward, AdamW (lr 1e-4) step, zero_grad.
lora: peft r 16, alpha 32, dropout 0 on q/k/v/o/gate/up/down proj; full: all parameters;
qlora: bitsandbytes 4-bit NF4 base (CUDA only, `pip install bitsandbytes`).
tok_s = batch * seq / mean step time.

decode: greedy `model.generate`, EOS ignored; best of `--repeats` runs with 1 new token (t1) and
with N new tokens (tN); prefill_tok_s = batch * prompt / t1, decode_tok_s = batch * (N-1) / (tN-t1).

Prints ONE JSON line on stdout; all logging goes to stderr. peak_rss_mib is this process's peak
resident set (ru_maxrss), so run each measurement in its own process.
"""

import argparse
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from importlib.metadata import version

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

SHAPES = {
    # name: (architecture, config, default train batch, default train seq)
    "cpu-small": ("LlamaForCausalLM", lambda: LlamaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False), 4, 256),
    "gpu-0.5b": ("Qwen2ForCausalLM", lambda: Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        bos_token_id=151643, eos_token_id=151643, pad_token_id=151643), 4, 1024),
}
SHAPES["mem-0.5b"] = (*SHAPES["gpu-0.5b"][:2], 1, 512)
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def default_dtype(shape, device):
    return "bf16" if shape != "cpu-small" and device == "cuda" else "f32"


def impl():
    # peft is only imported where it is used (LoRA): importing it adds ~180 MiB to the peak RSS.
    return f"torch {torch.__version__} + transformers {transformers.__version__} + peft {version('peft')}"


def build_model(args, quantization_config=None):
    dtype = DTYPES[args.dtype]
    load = {"dtype": dtype}
    if quantization_config is not None:
        load.update(quantization_config=quantization_config, device_map={"": 0})
    if args.model:
        return AutoModelForCausalLM.from_pretrained(args.model, **load)
    _, config, _, _ = SHAPES[args.shape]
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config(), dtype=dtype)  # built in dtype, no f32 copy
    if quantization_config is None:
        return model
    # Quantization happens while loading a checkpoint: save the random model and load it back.
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        del model
        return AutoModelForCausalLM.from_pretrained(tmp, **load)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def memory(device):
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        out["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def train(args):
    head = {"impl": impl(), "shape": args.shape, "method": args.method, "device": args.device, "dtype": args.dtype}
    quant = None
    if args.method == "qlora":
        if args.device != "cuda":
            return {**head, "error": "qlora reference needs CUDA (bitsandbytes)"}
        from transformers import BitsAndBytesConfig
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_compute_dtype=DTYPES[args.dtype])
    model = build_model(args, quant)
    if args.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if quant is not None:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        model = get_peft_model(model, LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    if quant is None:
        model.to(args.device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    log(f"trainable parameters: {sum(p.numel() for p in params):,} of {sum(p.numel() for p in model.parameters()):,}")
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.seq), generator=g).to(args.device)

    times = []
    for step in range(args.warmup + args.steps):
        sync(args.device)
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(args.device)
        elapsed = time.perf_counter() - start
        log(f"step {step}: loss {loss.item():.4f}, {elapsed:.3f}s{' (warmup)' if step < args.warmup else ''}")
        if step >= args.warmup:
            times.append(elapsed)
    step_s = sum(times) / len(times)
    return {**head, "batch": args.batch, "seq": args.seq, "steps": args.steps,
            "tok_s": args.batch * args.seq / step_s, "step_s": step_s, **memory(args.device)}


def decode(args):
    model = build_model(args).to(args.device).eval()
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(3, model.config.vocab_size, (args.batch, args.prompt), generator=g).to(args.device)
    mask = torch.ones_like(ids)

    def timed(n):
        best = float("inf")
        for _ in range(args.repeats):
            sync(args.device)
            start = time.perf_counter()
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n,
                                     min_new_tokens=n, eos_token_id=None, pad_token_id=0)
            sync(args.device)
            assert out.shape[1] == args.prompt + n
            best = min(best, time.perf_counter() - start)
        return best

    timed(2)  # warm-up
    t1 = timed(1)
    tn = timed(args.new_tokens)
    log(f"t1 {t1:.3f}s, t{args.new_tokens} {tn:.3f}s")
    return {"impl": impl(), "shape": args.shape, "method": "greedy", "device": args.device, "dtype": args.dtype,
            "batch": args.batch, "prompt": args.prompt, "new_tokens": args.new_tokens,
            "prefill_tok_s": args.batch * args.prompt / t1,
            "decode_tok_s": args.batch * (args.new_tokens - 1) / (tn - t1), **memory(args.device)}


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("train", "decode"):
        s = sub.add_parser(name)
        s.add_argument("--shape", choices=sorted(SHAPES), default="cpu-small")
        s.add_argument("--dtype", choices=sorted(DTYPES))
        s.add_argument("--batch", type=int)
        s.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
        s.add_argument("--model", help="checkpoint directory instead of random weights")
        s.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs")
        if name == "train":
            s.add_argument("--method", choices=["lora", "full", "qlora"], default="lora")
            s.add_argument("--seq", type=int)
            s.add_argument("--steps", type=int, default=5)
            s.add_argument("--warmup", type=int, default=2)
        else:
            s.add_argument("--prompt", type=int, default=32)
            s.add_argument("--new-tokens", type=int, default=128)
            s.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    _, _, batch, seq = SHAPES[args.shape]
    args.dtype = args.dtype or default_dtype(args.shape, args.device)
    if args.cmd == "train":
        args.batch = args.batch or batch
        args.seq = args.seq or seq
    else:
        args.batch = args.batch or 1
    return args


def main():
    args = parse()
    torch.set_num_threads(os.cpu_count())
    # Anything the libraries print goes to stderr; stdout carries only the result line.
    with contextlib.redirect_stdout(sys.stderr):
        result = train(args) if args.cmd == "train" else decode(args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
