#!/usr/bin/env python3
"""Checks `lmflow serve` against the official `openai` Python client: models list, chat
(plain, streamed, n>1 with a seed), text completions (plain, streamed) and error classes.

Starts the server itself (`--lmflow BIN --model DIR`, on a free 127.0.0.1 port) or uses a running
one (`--url`). Prints one line per check and exits non-zero when any fails. The recorded output
is bench/results/openai_compat.txt:

    /work/main/.venv-bench/bin/pip install openai
    cargo build -p lmflow-cli
    .venv-bench/bin/python bench/openai_compat.py --lmflow target/debug/lmflow \
        --model assets/tiny-llama | tee bench/results/openai_compat.txt
"""

import argparse
import subprocess
import sys

import openai

failures = []


def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""))
    if not ok:
        failures.append(name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8080")
    ap.add_argument("--lmflow", help="lmflow binary to start (with --model)")
    ap.add_argument("--model", help="model folder for the started server")
    args = ap.parse_args()
    server = None
    url = args.url
    if url is None:
        if not (args.lmflow and args.model):
            ap.error("give --url, or --lmflow and --model")
        server = subprocess.Popen(
            [args.lmflow, "serve", "--model", args.model, "--host", "127.0.0.1", "--port", "0"],
            stdout=subprocess.PIPE, text=True)
        line = server.stdout.readline().strip()
        url = line.rsplit(" ", 1)[-1]
    try:
        run(url)
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    print(f"openai {openai.__version__}: {'all checks passed' if not failures else failures}")
    sys.exit(1 if failures else 0)


def run(url):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)

    models = client.models.list()
    ids = [m.id for m in models.data]
    check("models.list", len(ids) >= 1 and all(m.object == "model" for m in models.data),
          f"{ids}")
    model = ids[0]

    messages = [{"role": "system", "content": "You are a sailor."},
                {"role": "user", "content": "Tell me about the whale."}]
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=24,
                                          temperature=0)
    choice = chat.choices[0]
    check("chat.completions.create",
          chat.object == "chat.completion" and choice.message.role == "assistant"
          and bool(choice.message.content) and choice.finish_reason in ("stop", "length"),
          f"{choice.message.content!r} finish_reason={choice.finish_reason}")
    usage = chat.usage
    check("chat usage",
          usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
          and 1 <= usage.completion_tokens <= 24,
          f"prompt={usage.prompt_tokens} completion={usage.completion_tokens}")

    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=24,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    pieces, finish, stream_usage, n_chunks = [], None, None, 0
    for chunk in stream:
        n_chunks += 1
        if chunk.usage is not None:
            stream_usage = chunk.usage
        for c in chunk.choices:
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    streamed = "".join(pieces)
    check("chat stream reassembles to the plain answer",
          streamed == choice.message.content and finish == choice.finish_reason,
          f"{n_chunks} chunks")
    check("chat stream usage", stream_usage is not None
          and stream_usage.completion_tokens == usage.completion_tokens)

    multi = client.chat.completions.create(model=model, messages=messages, max_tokens=12,
                                           temperature=0.8, n=3, seed=11)
    again = client.chat.completions.create(model=model, messages=messages, max_tokens=12,
                                           temperature=0.8, n=3, seed=11)
    check("chat n=3 with a seed is reproducible",
          len(multi.choices) == 3
          and [c.message.content for c in multi.choices]
          == [c.message.content for c in again.choices])

    comp = client.completions.create(model=model, prompt="It was the best of times,",
                                     max_tokens=12, temperature=0)
    check("completions.create",
          comp.object == "text_completion" and bool(comp.choices[0].text)
          and comp.usage.completion_tokens >= 1, f"{comp.choices[0].text!r}")
    text = "".join(c.choices[0].text for c in client.completions.create(
        model=model, prompt="It was the best of times,", max_tokens=12, temperature=0,
        stream=True) if c.choices)
    check("completions stream reassembles", text == comp.choices[0].text)

    try:
        client.chat.completions.create(model="no-such-model", messages=messages)
        check("unknown model -> NotFoundError", False, "no error")
    except openai.NotFoundError as e:
        check("unknown model -> NotFoundError", e.status_code == 404, str(e.body))
    try:
        client.chat.completions.create(model=model, messages=messages, temperature=7)
        check("bad temperature -> BadRequestError", False, "no error")
    except openai.BadRequestError as e:
        check("bad temperature -> BadRequestError", e.status_code == 400, str(e.body))
    try:
        client.completions.create(model=model, prompt="whale " * 5000, max_tokens=4)
        check("prompt beyond the context -> BadRequestError", False, "no error")
    except openai.BadRequestError as e:
        check("prompt beyond the context -> BadRequestError",
              e.code == "context_length_exceeded", str(e.body))


if __name__ == "__main__":
    main()
