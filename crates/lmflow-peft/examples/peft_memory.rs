//! Measures what docs/peft.md's memory table reports: storage of a frozen base layer as f32 /
//! bf16 / NF4 (with and without double quantisation), LoRA trainable parameters and AdamW
//! state per rank, and the time of the adapter's forward + backward per rank.
//!
//! `cargo run --release -p lmflow-peft --example peft_memory`

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use lmflow_peft::LoraAdapter;
use lmflow_peft::nf4::{Nf4Config, Nf4Weight};
use lmflow_peft::trainable::count_params;

fn main() {
    let device = Device::flex();
    println!("| layer [out, in] | f32 MiB | bf16 MiB | NF4 MiB (bits/w) | NF4+DQ MiB (bits/w) |");
    println!("|---|---|---|---|---|");
    let mut llama7b_nf4_dq = 0f64;
    for (out, inp, per_model) in [(4096usize, 4096usize, 4 * 32), (11008, 4096, 3 * 32)] {
        // Deterministic pseudo-normal values (sum of uniforms) on the host.
        let mut state = 0x2545F4914F6CDD1Du64;
        let mut uni = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f32 / (1u64 << 53) as f32
        };
        let data: Vec<f32> = (0..out * inp)
            .map(|_| (uni() + uni() + uni() + uni() - 2.0) * 0.02)
            .collect();
        let plain = Nf4Weight::from_host(
            &data,
            out,
            inp,
            &Nf4Config::new().with_double_quant(false),
            &device,
        );
        let dq = Nf4Weight::from_host(&data, out, inp, &Nf4Config::new(), &device);
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        let n = out * inp;
        println!(
            "| [{out}, {inp}] | {:.1} | {:.1} | {:.2} ({:.3}) | {:.2} ({:.3}) |",
            mib(4 * n),
            mib(2 * n),
            mib(plain.storage_bytes()),
            plain.bits_per_weight(),
            mib(dq.storage_bytes()),
            dq.bits_per_weight()
        );
        llama7b_nf4_dq += (dq.storage_bytes() * per_model) as f64;
    }
    println!(
        "\nLLaMA-7B shapes (32 layers x 4 attn [4096,4096] + 3 mlp [11008,4096]): frozen linear base \
         NF4+DQ {:.2} GiB (bf16 {:.2} GiB)",
        llama7b_nf4_dq / (1u64 << 30) as f64,
        2.0 * 32.0 * (4.0 * 4096.0 * 4096.0 + 3.0 * 11008.0 * 4096.0) / (1u64 << 30) as f64
    );

    println!(
        "\n| rank | trainable params per [4096, 4096] layer | AdamW state tensors | adapter fwd+bwd (512 tokens) |"
    );
    println!("|---|---|---|---|");
    let ad_device = device.clone().autodiff();
    for r in [8usize, 16, 64] {
        let d = 4096;
        let ad = LoraAdapter::from_tensors(
            "a",
            Tensor::random([r, d], Distribution::Normal(0.0, 0.01), &ad_device),
            Tensor::random([d, r], Distribution::Normal(0.0, 0.01), &ad_device),
            None,
            2.0,
            0.0,
        );
        let x = Tensor::<2>::random([512, d], Distribution::Normal(0.0, 1.0), &ad_device);
        let mut optim = AdamWConfig::new().init();
        let mut ad = ad;
        let mut elapsed = std::time::Duration::ZERO;
        for i in 0..3 {
            let t = Instant::now();
            let loss = ad.delta(x.clone()).square().mean();
            let grads = GradientsParams::from_grads(loss.backward(), &ad);
            ad = optim.step(1e-3, ad, grads);
            let _ = ad.lora_a.val().slice([0..1, 0..1]).into_data();
            if i > 0 {
                elapsed += t.elapsed();
            }
        }
        let (trainable, _) = count_params(&ad);
        println!(
            "| {r} | {trainable} ({:.2} MiB f32; + {:.2} MiB AdamW moments) | {} | {:.1} ms |",
            (4 * trainable) as f64 / (1 << 20) as f64,
            (8 * trainable) as f64 / (1 << 20) as f64,
            optim.to_record().len(),
            elapsed.as_secs_f64() * 1e3 / 2.0
        );
    }
}
