//! Continuous batching: outputs of the scheduler equal single-request generation whatever the
//! batch composition; per-request adapters on one base model; queue, batch and KV-budget limits;
//! cancellation frees slots.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::tensor::Device;
use lmflow_infer::{
    Engine, Event, GenerationConfig, GenerationOutput, Generator, Request, ScheduleError,
    Scheduler, SchedulerConfig, load_model,
};
use lmflow_models::LoadOptions;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tiny() -> lmflow_models::Pretrained {
    load_model(
        &root().join("assets/tiny-llama"),
        None,
        &LoadOptions::default(),
        &Device::flex(),
    )
    .unwrap()
}

fn request(prompt: &[u32], config: &GenerationConfig, adapter: Option<&str>) -> Request {
    Request {
        prompt: prompt.to_vec(),
        config: config.clone(),
        adapter: adapter.map(str::to_string),
    }
}

/// Events of each submitted request, collected by index.
type Collected = Arc<Mutex<Vec<Vec<Event>>>>;

fn sink(collected: &Collected, index: usize) -> lmflow_infer::EventSink {
    let c = collected.clone();
    Box::new(move |e| {
        c.lock().unwrap()[index].push(e);
        true
    })
}

fn finished(events: &[Event]) -> Vec<GenerationOutput> {
    let mut out: Vec<(usize, GenerationOutput)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Finished { sequence, output } => Some((*sequence, output.clone())),
            _ => None,
        })
        .collect();
    out.sort_by_key(|(s, _)| *s);
    out.into_iter().map(|(_, o)| o).collect()
}

#[test]
fn greedy_output_is_identical_alone_and_in_a_changing_batch() {
    let device = Device::flex();
    let pretrained = tiny();
    let tokenizer = pretrained.tokenizer.clone().unwrap();
    let texts = [
        "The capital of France is",
        "Once upon a time, in a small village by the sea, there lived",
        "1, 2, 3,",
        "Call me Ishmael. Some years ago",
        "Hello",
        "The quick brown fox jumps over the lazy dog because",
    ];
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| tokenizer.encode(t, true).unwrap())
        .collect();
    let configs: Vec<GenerationConfig> = (0..prompts.len())
        .map(|i| GenerationConfig {
            // Different budgets: sequences retire at different steps.
            max_new_tokens: 6 + 5 * i,
            eos_token_ids: tokenizer.eos_token_ids().to_vec(),
            ..GenerationConfig::default()
        })
        .collect();
    // Reference: the plain generator, one prompt at a time.
    let generator = Generator::new(&pretrained.model, &device).with_tokenizer(&tokenizer);
    let reference: Vec<GenerationOutput> = prompts
        .iter()
        .zip(&configs)
        .map(|(p, c)| {
            generator
                .generate(std::slice::from_ref(p), c)
                .unwrap()
                .remove(0)
        })
        .collect();
    assert!(reference.iter().any(|o| o.new_ids.len() > 10));

    let engine = Engine::new(pretrained.model.clone(), &device).unwrap();
    let config = SchedulerConfig {
        max_batch: 3,
        max_waiting: 16,
        kv_budget_bytes: None,
    };
    let mut scheduler = Scheduler::new(engine, Some(&tokenizer), config);
    // Alone.
    for (i, (p, c)) in prompts.iter().zip(&configs).enumerate() {
        let out = scheduler.run(vec![request(p, c, None)]).unwrap();
        assert_eq!(out[0][0].new_ids, reference[i].new_ids, "prompt {i} alone");
        assert_eq!(out[0][0].text, reference[i].text);
    }
    // Staggered arrivals into a batch of at most 3: admissions and retirements between steps.
    let collected: Collected = Arc::new(Mutex::new(vec![Vec::new(); prompts.len()]));
    let mut max_running = 0;
    let mut submitted = 0;
    let mut steps = 0;
    while submitted < prompts.len() || !scheduler.is_idle() {
        if submitted < prompts.len() && steps % 2 == 0 {
            let i = submitted;
            scheduler
                .submit(request(&prompts[i], &configs[i], None), sink(&collected, i))
                .unwrap();
            submitted += 1;
        }
        scheduler.step();
        max_running = max_running.max(scheduler.running());
        steps += 1;
        assert!(steps < 500, "scheduler did not finish");
    }
    assert_eq!(max_running, 3, "the batch never filled up");
    let collected = collected.lock().unwrap();
    for (i, events) in collected.iter().enumerate() {
        let out = finished(events);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].new_ids, reference[i].new_ids, "prompt {i} batched");
        assert_eq!(out[0].finish_reason, reference[i].finish_reason);
        // Streamed pieces reassemble to the final text.
        let streamed: String = events
            .iter()
            .filter_map(|e| match e {
                Event::Token { text, .. } => Some(text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(Some(streamed), out[0].text, "prompt {i} streamed text");
    }
}

#[test]
fn adapters_are_applied_per_request_on_one_base_model() {
    let device = Device::flex();
    let fixtures = root().join("tests/fixtures/peft");
    let options = LoadOptions::default();
    let base = load_model(&fixtures.join("base"), None, &options, &device).unwrap();
    let adapted = |name: &str| {
        load_model(
            &fixtures.join("base"),
            Some(&fixtures.join(name)),
            &options,
            &device,
        )
        .unwrap()
    };
    let (all_linear, dora) = (adapted("all_linear"), adapted("dora"));
    let prompts: Vec<Vec<u32>> = vec![vec![1, 5, 9, 3], vec![7, 2], vec![4, 4, 8, 1, 6, 2, 9]];
    let greedy = GenerationConfig::greedy(8);
    let sampled = GenerationConfig {
        num_return_sequences: 2,
        ..GenerationConfig::sampling(8, 0.9, 7)
    };
    let expect = |model: &lmflow_models::CausalLm, p: &Vec<u32>, c: &GenerationConfig| {
        Generator::new(model, &device)
            .generate(std::slice::from_ref(p), c)
            .unwrap()
            .into_iter()
            .map(|o| o.new_ids)
            .collect::<Vec<_>>()
    };
    let mut engine = Engine::new(base.model.clone(), &device).unwrap();
    engine
        .load_adapter("all", &fixtures.join("all_linear"))
        .unwrap();
    engine.load_adapter("dora", &fixtures.join("dora")).unwrap();
    // Same name twice, and an adapter whose modules_to_save would change the base model.
    assert!(engine.load_adapter("dora", &fixtures.join("dora")).is_err());
    let err = engine
        .load_adapter("lora", &fixtures.join("lora"))
        .unwrap_err();
    assert!(err.to_string().contains("modules_to_save"), "{err}");
    assert_eq!(engine.adapters(), ["all".to_string(), "dora".to_string()]);
    let mut scheduler = Scheduler::new(engine, None, SchedulerConfig::default());
    let mut requests = Vec::new();
    let mut want = Vec::new();
    for p in &prompts {
        for (adapter, model) in [
            (None, &base.model),
            (Some("all"), &all_linear.model),
            (Some("dora"), &dora.model),
        ] {
            requests.push(request(p, &greedy, adapter));
            want.push(expect(model, p, &greedy));
        }
    }
    requests.push(request(&prompts[0], &sampled, Some("dora")));
    want.push(expect(&dora.model, &prompts[0], &sampled));
    let got: Vec<Vec<Vec<u32>>> = scheduler
        .run(requests)
        .unwrap()
        .into_iter()
        .map(|outs| outs.into_iter().map(|o| o.new_ids).collect())
        .collect();
    assert_eq!(got, want);
    // The adapters change the output (otherwise this test proves nothing).
    assert_ne!(want[0], want[1]);
    assert_ne!(want[0], want[2]);
}

#[test]
fn limits_are_enforced_and_invalid_requests_rejected() {
    let device = Device::flex();
    let pretrained = tiny();
    let engine = Engine::new(pretrained.model.clone(), &device).unwrap();
    let per_token = engine.kv_bytes_per_token();
    // tiny-llama: 4 layers x (keys + values) x 2 kv heads x 32 dims x 4 bytes.
    assert_eq!(per_token, 4 * 2 * 2 * 32 * 4);
    let context = engine.context_len();
    let greedy = GenerationConfig::greedy(10);
    // Two sequences of 4 + 10 positions fit the budget, a third does not.
    let budget = 2 * 14 * per_token;
    let config = SchedulerConfig {
        max_batch: 8,
        max_waiting: 3,
        kv_budget_bytes: Some(budget),
    };
    let mut scheduler = Scheduler::new(engine, None, config);
    let collected: Collected = Arc::new(Mutex::new(vec![Vec::new(); 4]));
    for i in 0..3 {
        scheduler
            .submit(request(&[1, 2, 3, 4], &greedy, None), sink(&collected, i))
            .unwrap();
    }
    let full = scheduler.submit(request(&[1, 2, 3, 4], &greedy, None), sink(&collected, 3));
    assert!(matches!(full, Err(ScheduleError::QueueFull { limit: 3 })));
    let mut steps = 0;
    while !scheduler.is_idle() {
        scheduler.step();
        assert!(scheduler.running() <= 2);
        assert!(scheduler.kv_reserved_bytes() <= budget);
        steps += 1;
    }
    // The third sequence waited for a slot: more steps than one sequence needs.
    assert!(steps > 10, "{steps}");
    for events in collected.lock().unwrap().iter().take(3) {
        assert_eq!(finished(events)[0].new_ids.len(), 10);
    }
    let mut bad = |r: Request| scheduler.submit(r, Box::new(|_| true)).unwrap_err();
    let err = bad(request(&[1, 2, 3], &greedy, Some("nope")));
    assert!(matches!(err, ScheduleError::UnknownAdapter { .. }), "{err}");
    let err = bad(request(&vec![1; context], &greedy, None));
    assert!(err.to_string().contains("context"), "{err}");
    let err = bad(request(&[], &greedy, None));
    assert!(err.to_string().contains("empty prompt"), "{err}");
    let err = bad(request(
        &[1],
        &GenerationConfig {
            top_p: 2.0,
            ..greedy.clone()
        },
        None,
    ));
    assert!(err.to_string().contains("top_p"), "{err}");
    let err = bad(request(&[1; 40], &greedy, None));
    assert!(matches!(err, ScheduleError::ExceedsBudget { .. }), "{err}");
}

#[test]
fn a_gone_receiver_cancels_its_request_and_frees_the_slot() {
    let device = Device::flex();
    let pretrained = tiny();
    let engine = Engine::new(pretrained.model.clone(), &device).unwrap();
    let mut scheduler = Scheduler::new(engine, None, SchedulerConfig::default());
    let received = Arc::new(Mutex::new(0usize));
    let r = received.clone();
    scheduler
        .submit(
            request(&[1, 2, 3], &GenerationConfig::greedy(50), None),
            Box::new(move |_| {
                *r.lock().unwrap() += 1;
                false
            }),
        )
        .unwrap();
    let stay = Arc::new(Mutex::new(0usize));
    let s = stay.clone();
    scheduler
        .submit(
            request(&[4, 5], &GenerationConfig::greedy(5), None),
            Box::new(move |e| {
                *s.lock().unwrap() += usize::from(matches!(e, Event::Finished { .. }));
                true
            }),
        )
        .unwrap();
    scheduler.step();
    assert_eq!(scheduler.running(), 1, "the cancelled request still runs");
    while !scheduler.is_idle() {
        scheduler.step();
    }
    assert_eq!(*received.lock().unwrap(), 1);
    assert_eq!(*stay.lock().unwrap(), 1);
    // Cancelling by id drops a waiting request.
    let id = scheduler
        .submit(
            request(&[1, 2], &GenerationConfig::greedy(5), None),
            Box::new(|_| true),
        )
        .unwrap();
    assert!(scheduler.cancel(id));
    assert!(scheduler.is_idle());
}
