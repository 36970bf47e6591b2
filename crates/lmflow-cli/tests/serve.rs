//! `lmflow serve` over HTTP on 127.0.0.1: chat and text completions, streaming, per-request
//! adapters against `lmflow generate --adapter`, OpenAI-shaped errors, queue limits, client
//! disconnects, and a bounded load test (64 requests from 16 clients).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn model_dir() -> String {
    repo("assets/tiny-llama").to_string_lossy().into_owned()
}

/// A server process on a free loopback port, killed on drop.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lmflow"))
            .args(["serve", "--model", &model_dir(), "--host", "127.0.0.1"])
            .args(["--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let base = line
            .trim()
            .strip_prefix("lmflow serve: listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        assert!(base.starts_with("http://127.0.0.1:"), "{base}");
        Self { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// POSTs `body` (raw text) and returns the status and the parsed JSON answer.
fn post_raw(url: &str, body: &str) -> (u16, Value) {
    let mut resp = agent()
        .post(url)
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

fn post(url: &str, body: &Value) -> (u16, Value) {
    post_raw(url, &body.to_string())
}

fn get(url: &str) -> (u16, Value) {
    let mut resp = agent().get(url).call().unwrap();
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap())
}

/// The `data:` payloads of a streamed answer, up to and including `[DONE]`.
fn post_stream(url: &str, body: &Value) -> Vec<String> {
    let resp = agent()
        .post(url)
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let reader = BufReader::new(resp.into_body().into_reader());
    let mut data = Vec::new();
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(d) = line.strip_prefix("data: ") {
            data.push(d.to_string());
            if d == "[DONE]" {
                break;
            }
        }
    }
    data
}

fn health(server: &Server) -> Value {
    get(&server.url("/health")).1
}

#[test]
fn chat_answer_and_its_stream_agree() {
    let server = Server::start(&[]);
    let (status, h) = get(&server.url("/health"));
    assert_eq!((status, h["status"].as_str()), (200, Some("ok")));
    let request = json!({
        "model": "tiny-llama",
        "messages": [
            {"role": "system", "content": "You are a sailor."},
            {"role": "user", "content": "Tell me about the whale."}
        ],
        "max_tokens": 24,
        "temperature": 0,
    });
    let (status, answer) = post(&server.url("/v1/chat/completions"), &request);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["model"], "tiny-llama");
    let choice = &answer["choices"][0];
    assert_eq!(choice["message"]["role"], "assistant");
    let content = choice["message"]["content"].as_str().unwrap().to_string();
    assert!(!content.is_empty());
    let finish = choice["finish_reason"].as_str().unwrap().to_string();
    assert!(finish == "stop" || finish == "length", "{finish}");
    let usage = &answer["usage"];
    let completion_tokens = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=24).contains(&completion_tokens));
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 10);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + completion_tokens
    );

    let mut streamed = request.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let chunks = post_stream(&server.url("/v1/chat/completions"), &streamed);
    assert_eq!(chunks.last().unwrap(), "[DONE]");
    let parsed: Vec<Value> = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| serde_json::from_str(c).unwrap())
        .collect();
    assert!(parsed.len() > 3, "{chunks:?}");
    assert!(
        parsed
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert_eq!(parsed[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = parsed
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, content, "streamed chunks differ from the answer");
    let finishes: Vec<&str> = parsed
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finishes, [finish.as_str()]);
    let last = parsed.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"], answer["usage"]);

    // n choices with a seed: reproducible, and `stop` cuts before the stop string.
    let sampled = json!({
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "Sing."}],
        "max_tokens": 16, "temperature": 0.8, "n": 3, "seed": 5,
    });
    let (s1, a1) = post(&server.url("/v1/chat/completions"), &sampled);
    let (_, a2) = post(&server.url("/v1/chat/completions"), &sampled);
    assert_eq!(s1, 200);
    assert_eq!(a1["choices"].as_array().unwrap().len(), 3);
    assert_eq!(a1["choices"], a2["choices"]);
    let words: Vec<&str> = content.split_whitespace().collect();
    assert!(words.len() >= 3, "{content}");
    let mut with_stop = request.clone();
    with_stop["stop"] = json!([words[2]]);
    let (_, stopped) = post(&server.url("/v1/chat/completions"), &with_stop);
    let cut = stopped["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert_eq!(cut, &content[..content.find(words[2]).unwrap()]);
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
}

/// `lmflow generate --json` text for `prompt`, optionally with an adapter.
fn generate_text(prompt: &str, adapter: Option<&Path>, max_new: usize) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lmflow"));
    cmd.args(["generate", "--model", &model_dir(), "--prompt", prompt])
        .args([
            "--greedy",
            "--json",
            "--max-new-tokens",
            &max_new.to_string(),
        ]);
    if let Some(dir) = adapter {
        cmd.arg("--adapter").arg(dir);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: Value = serde_json::from_str(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    line["text"].as_str().unwrap().to_string()
}

/// Writes a LoRA adapter with random (non-identity) factors for the bundled model.
fn make_adapter(dir: &Path) {
    let device = burn::tensor::Device::flex();
    let mut pretrained = lmflow_models::load_pretrained(
        &repo("assets/tiny-llama"),
        &device,
        &lmflow_models::LoadOptions::default(),
    )
    .unwrap();
    let mut cfg = lmflow_peft::LoraConfig::new(
        4,
        16.0,
        lmflow_peft::TargetModules::Names(vec!["q_proj".into(), "v_proj".into()]),
    );
    cfg.init_lora_weights = lmflow_peft::InitLoraWeights::Bool(false);
    lmflow_peft::inject_adapter(&mut pretrained.model, &cfg, "default").unwrap();
    lmflow_peft::save_adapter(&mut pretrained.model, &cfg, "default", dir).unwrap();
}

#[test]
fn completions_per_adapter_equal_lmflow_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = tmp.path().join("ada");
    make_adapter(&adapter);
    let arg = format!("ada={}", adapter.display());
    let server = Server::start(&["--adapter", &arg]);
    let (status, models) = get(&server.url("/v1/models"));
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["tiny-llama", "ada"]);
    assert_eq!(models["data"][1]["parent"], "tiny-llama");

    let prompt = "It was the best of times, it was";
    let max_new = 14;
    let base_want = generate_text(prompt, None, max_new);
    let ada_want = generate_text(prompt, Some(&adapter), max_new);
    assert_ne!(base_want, ada_want, "the adapter changes nothing");
    // Both models at once: the two requests run in the same scheduler step.
    let url = server.url("/v1/completions");
    let threads: Vec<_> = ["tiny-llama", "ada"]
        .into_iter()
        .map(|model| {
            let url = url.clone();
            std::thread::spawn(move || {
                let body = json!({"model": model, "prompt": prompt,
                    "max_tokens": max_new, "temperature": 0});
                post(&url, &body)
            })
        })
        .collect();
    let answers: Vec<(u16, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for ((status, answer), want) in answers.iter().zip([&base_want, &ada_want]) {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["object"], "text_completion");
        assert_eq!(answer["choices"][0]["text"].as_str().unwrap(), want);
    }
    // The streamed completion reassembles to the same text.
    let body = json!({"model": "ada", "prompt": prompt, "max_tokens": max_new,
        "temperature": 0, "stream": true});
    let chunks = post_stream(&url, &body);
    let text: String = chunks[..chunks.len() - 1]
        .iter()
        .map(|c| serde_json::from_str::<Value>(c).unwrap())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, ada_want);
}

#[test]
fn bad_requests_get_openai_errors_with_the_right_status() {
    let server = Server::start(&[]);
    let chat = server.url("/v1/chat/completions");
    let completions = server.url("/v1/completions");
    let long_prompt = "whale ".repeat(400);
    let msg = |text: &str| json!([{"role": "user", "content": text}]);
    let cases: Vec<(&str, String, &String, u16, Option<&str>)> = vec![
        ("malformed JSON", "{\"model\": ".into(), &chat, 400, None),
        (
            "wrong type",
            json!({"model": "tiny-llama", "messages": msg("hi"), "max_tokens": "ten"}).to_string(),
            &chat,
            400,
            None,
        ),
        (
            "no model",
            json!({"messages": msg("hi")}).to_string(),
            &chat,
            400,
            Some("model"),
        ),
        (
            "unknown model",
            json!({"model": "gpt-4", "messages": msg("hi")}).to_string(),
            &chat,
            404,
            Some("model"),
        ),
        (
            "temperature",
            json!({"model": "tiny-llama", "messages": msg("hi"), "temperature": 3.5}).to_string(),
            &chat,
            400,
            Some("temperature"),
        ),
        (
            "top_p",
            json!({"model": "tiny-llama", "prompt": "hi", "top_p": 0}).to_string(),
            &completions,
            400,
            Some("top_p"),
        ),
        (
            "n",
            json!({"model": "tiny-llama", "prompt": "hi", "n": 0}).to_string(),
            &completions,
            400,
            Some("n"),
        ),
        (
            "max_tokens",
            json!({"model": "tiny-llama", "prompt": "hi", "max_tokens": 0}).to_string(),
            &completions,
            400,
            Some("max_tokens"),
        ),
        (
            "empty stop",
            json!({"model": "tiny-llama", "prompt": "hi", "stop": [""]}).to_string(),
            &completions,
            400,
            Some("stop"),
        ),
        (
            "prompt longer than the context",
            json!({"model": "tiny-llama", "prompt": long_prompt}).to_string(),
            &completions,
            400,
            Some("prompt"),
        ),
        (
            "prompt + max_tokens beyond the context",
            json!({"model": "tiny-llama", "messages": msg("hi"), "max_tokens": 1000}).to_string(),
            &chat,
            400,
            Some("max_tokens"),
        ),
        (
            "unsupported logprobs",
            json!({"model": "tiny-llama", "prompt": "hi", "logprobs": 2}).to_string(),
            &completions,
            400,
            Some("logprobs"),
        ),
        (
            "bad role",
            json!({"model": "tiny-llama", "messages": [{"role": "wizard", "content": "x"}]})
                .to_string(),
            &chat,
            400,
            Some("messages"),
        ),
    ];
    for (name, body, url, want_status, want_param) in cases {
        let (status, answer) = post_raw(url, &body);
        assert_eq!(status, want_status, "{name}: {answer}");
        let error = &answer["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: {answer}"
        );
        assert!(error["type"].is_string(), "{name}: {answer}");
        assert_eq!(error["param"].as_str(), want_param, "{name}: {answer}");
    }
    let (_, answer) = post(
        &completions,
        &json!({"model": "tiny-llama", "prompt": long_prompt}),
    );
    assert_eq!(answer["error"]["code"], "context_length_exceeded");
    let (_, answer) = post(&chat, &json!({"model": "nope", "messages": msg("x")}));
    assert_eq!(answer["error"]["code"], "model_not_found");
    // Unknown route and wrong method.
    let (status, answer) = get(&server.url("/v1/embeddings"));
    assert_eq!(status, 404);
    assert!(answer["error"]["message"].is_string());
    let status = agent().get(&chat).call().unwrap().status().as_u16();
    assert_eq!(status, 405);
    // The server still answers after all that.
    let (status, _) = post(
        &completions,
        &json!({"model": "tiny-llama", "prompt": "hi", "max_tokens": 2}),
    );
    assert_eq!(status, 200);
}

fn wait_for(server: &Server, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let h = health(server);
        if ok(&h) {
            return h;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{what}: {h}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_full_queue_answers_429_and_a_disconnect_frees_the_slot() {
    let server = Server::start(&["--max-batch", "1", "--max-waiting", "1"]);
    let completions = server.url("/v1/completions");
    // A: a long streamed answer holding the only slot.
    let long = json!({"model": "tiny-llama", "prompt": "Call me", "max_tokens": 240,
        "temperature": 0, "ignore_eos": true, "stream": true});
    let resp = agent()
        .post(&completions)
        .header("content-type", "application/json")
        .send(long.to_string())
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let mut reader = BufReader::new(resp.into_body().into_reader());
    let mut first = String::new();
    while !first.starts_with("data: ") {
        first.clear();
        reader.read_line(&mut first).unwrap();
    }
    wait_for(&server, "A running", |h| h["running"] == 1);
    // B waits in the queue (limit 1) ...
    let url = completions.clone();
    let b = std::thread::spawn(move || {
        post(
            &url,
            &json!({"model": "tiny-llama", "prompt": "Hello", "max_tokens": 4, "temperature": 0}),
        )
    });
    wait_for(&server, "B waiting", |h| h["waiting"] == 1);
    // ... so C is turned away.
    let (status, answer) = post(
        &completions,
        &json!({"model": "tiny-llama", "prompt": "Hi", "max_tokens": 4}),
    );
    assert_eq!(status, 429, "{answer}");
    assert!(answer["error"]["message"].is_string());
    // A's client goes away: its slot is freed and B runs.
    drop(reader);
    let (status, answer) = b.join().unwrap();
    assert_eq!(status, 200, "{answer}");
    let h = wait_for(&server, "idle", |h| h["running"] == 0 && h["waiting"] == 0);
    assert_eq!(h["cancelled"], 1, "{h}");
    // More choices than the queue can ever hold: a bad request, not "busy".
    let (status, answer) = post(
        &completions,
        &json!({"model": "tiny-llama", "prompt": "Hi", "n": 2, "temperature": 1}),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["param"], "n");
}

#[test]
fn load_of_64_requests_from_16_clients_loses_none() {
    let server = Server::start(&["--max-batch", "16"]);
    let url = server.url("/v1/completions");
    let prompts = [
        "The sea was",
        "Call me Ishmael. Some years ago, never mind how long",
        "Whales are",
        "It is a way I have of driving off the spleen and regulating the circulation.",
    ];
    let body =
        |p: &str| json!({"model": "tiny-llama", "prompt": p, "max_tokens": 16, "temperature": 0});
    // Answers of each prompt alone.
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            let (status, a) = post(&url, &body(p));
            assert_eq!(status, 200, "{a}");
            a["choices"][0]["text"].as_str().unwrap().to_string()
        })
        .collect();
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let url = url.clone();
            let alone = alone.clone();
            std::thread::spawn(move || {
                for r in 0..4 {
                    let i = (c + r) % prompts.len();
                    let (status, a) = post(&url, &body(prompts[i]));
                    assert_eq!(status, 200, "client {c} request {r}: {a}");
                    assert_eq!(
                        a["choices"][0]["text"].as_str().unwrap(),
                        alone[i],
                        "client {c} request {r}: batched answer differs from the answer alone"
                    );
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let h = wait_for(&server, "idle", |h| h["running"] == 0 && h["waiting"] == 0);
    assert_eq!(h["completed"], 68, "{h}");
    assert_eq!(h["cancelled"], 0, "{h}");
}
