#!/usr/bin/env python3
"""Throughput of `lmflow serve`: the same requests sent one at a time, then from concurrent
clients (continuous batching). Standard library only.

Starts the server itself (`--lmflow BIN --model DIR`, on a free 127.0.0.1 port) or uses a running
one (`--url`). Every request is a greedy text completion of exactly `--max-tokens` tokens
(`ignore_eos`), so both passes generate the same number of tokens; the batched answers are also
compared with the sequential ones (`answers_differing_from_sequential`; greedy answers
can only differ through floating-point rounding of differently shaped batches). Prints one JSON line:

    {"requests": 64, "concurrency": 16, "max_tokens": 64,
     "sequential_tokens_per_s": ..., "batched_tokens_per_s": ..., "ratio": ...}

Example (see docs/serving.md):

    cargo build -p lmflow-cli
    python3 bench/serve_load.py --lmflow target/debug/lmflow --model assets/tiny-llama \
        --requests 64 --concurrency 16 --max-tokens 64
"""

import argparse
import json
import subprocess
import sys
import threading
import time
import urllib.request

PROMPTS = [
    "The sea was",
    "Call me Ishmael. Some years ago, never mind how long precisely,",
    "Whales are",
    "It is a way I have of driving off the spleen and regulating the circulation.",
    "There now is your insular city of the Manhattoes,",
    "What do you see?",
    "Circumambulate the city of a dreamy Sabbath afternoon.",
    "Once more. Say you are in the country;",
]


def complete(url, model, prompt, max_tokens):
    body = json.dumps({
        "model": model, "prompt": prompt, "max_tokens": max_tokens,
        "temperature": 0, "ignore_eos": True,
    }).encode()
    req = urllib.request.Request(url + "/v1/completions", data=body,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as resp:
        answer = json.load(resp)
    return answer["choices"][0]["text"], answer["usage"]["completion_tokens"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080")
    ap.add_argument("--lmflow", help="lmflow binary to start (with --model)")
    ap.add_argument("--model", help="model folder for the started server")
    ap.add_argument("--served-model", default=None, help="model name in requests")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    server = None
    url = args.url
    if url is None:
        if not (args.lmflow and args.model):
            ap.error("give --url, or --lmflow and --model")
        server = subprocess.Popen(
            [args.lmflow, "serve", "--model", args.model, "--host", "127.0.0.1", "--port", "0",
             "--max-batch", str(args.concurrency)],
            stdout=subprocess.PIPE, text=True)
        line = server.stdout.readline().strip()
        prefix = "lmflow serve: listening on "
        if not line.startswith(prefix):
            server.kill()
            sys.exit(f"unexpected server output: {line!r}")
        url = line[len(prefix):]
    try:
        with urllib.request.urlopen(url + "/v1/models", timeout=60) as resp:
            model = args.served_model or json.load(resp)["data"][0]["id"]
        work = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
        complete(url, model, work[0], 2)  # warm-up

        start = time.perf_counter()
        sequential = [complete(url, model, p, args.max_tokens) for p in work]
        seq_s = time.perf_counter() - start

        batched = [None] * len(work)
        next_index = [0]
        lock = threading.Lock()

        def client():
            while True:
                with lock:
                    i = next_index[0]
                    next_index[0] += 1
                if i >= len(work):
                    return
                batched[i] = complete(url, model, work[i], args.max_tokens)

        start = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        batch_s = time.perf_counter() - start

        lost = sum(1 for b in batched if b is None)
        differ = sum(1 for a, b in zip(sequential, batched) if b is not None and a[0] != b[0])
        seq_tokens = sum(t for _, t in sequential)
        batch_tokens = sum(t for _, t in batched if t is not None)
        result = {
            "requests": args.requests,
            "concurrency": args.concurrency,
            "max_tokens": args.max_tokens,
            "lost": lost,
            "answers_differing_from_sequential": differ,
            "sequential_s": round(seq_s, 3),
            "batched_s": round(batch_s, 3),
            "sequential_tokens_per_s": round(seq_tokens / seq_s, 1),
            "batched_tokens_per_s": round(batch_tokens / batch_s, 1),
            "ratio": round((batch_tokens / batch_s) / (seq_tokens / seq_s), 2),
        }
        print(json.dumps(result))
        if lost:
            sys.exit(1)
    finally:
        if server is not None:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
