#![allow(clippy::unwrap_used)]
//! Multimodal data against transformers 5.24: CLIP pixel values (PIL backend), LlavaProcessor's
//! `<image>` expansion, and LLaVA / LMFlow image datasets with their loss masks and errors.
//! Fixtures: tests/fixtures/clip_image_processor.py.

use std::path::{Path, PathBuf};

use lmflow_datasets::multimodal::{
    ImageBackend, ImageProcessor, ImageProcessorConfig, ImageSize, LlavaProcessor,
    MultimodalEncoder, MultimodalFormat, MultimodalReadOptions, Resample,
    VisionFeatureSelectStrategy, collate_multimodal, load_image, read_multimodal,
};
use lmflow_datasets::{ChatTemplate, DatasetError, IGNORE_INDEX, SampleEncoder, TokenizeConfig};
use lmflow_models::Tokenizer;
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/multimodal")
}

fn reference() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixtures().join("pixel_values.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(_, view)| view.dtype() == safetensors::Dtype::F32)
        .map(|(name, view)| {
            let data = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (name, view.shape().to_vec(), data)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The fixture image `name` (`.png`, or `.jpg` for the JPEG).
fn image_path(name: &str) -> PathBuf {
    let png = fixtures().join("images").join(format!("{name}.png"));
    if png.is_file() {
        png
    } else {
        fixtures().join("images").join(format!("{name}.jpg"))
    }
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Every image and config of the fixture (RGB at the target size, up- and downscaled, wide,
/// tall, RGBA, grayscale, palette; bicubic shortest-edge + crop, 224 defaults, exact-size
/// bilinear, no resize with a crop larger than the image) matches transformers' PIL backend within 1e-5 (measured: bit-identical).
#[test]
fn pixel_values_match_transformers_pil_backend() {
    let mut checked = 0;
    for (name, shape, want) in reference() {
        if name.starts_with("fast/") {
            continue;
        }
        let (config, image) = name.split_once('/').unwrap();
        let processor = ImageProcessor::from_dir(fixtures().join(config)).unwrap();
        let got = processor.preprocess_path(image_path(image)).unwrap();
        assert_eq!(got.shape.to_vec(), shape, "{name}");
        let d = max_abs(&got.data, &want);
        // The JPEG decoders differ (see `jpeg_decoding_difference_is_small`).
        let tol = if image == "photo" { 0.05 } else { 1e-5 };
        assert!(d <= tol, "{name}: max |diff| {d}");
        checked += 1;
    }
    assert_eq!(checked, 21);
}

/// JPEG decoding: the `image` crate (zune-jpeg) and Pillow (libjpeg-turbo) differ by a few
/// levels on some pixels of a quality-90 4:2:0 JPEG (chroma upsampling / IDCT rounding).
#[test]
fn jpeg_decoding_difference_is_small() {
    let bytes = std::fs::read(fixtures().join("pixel_values.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want = st.tensor("decoded/photo").unwrap();
    let got = load_image(image_path("photo")).unwrap().to_rgb8();
    assert_eq!(
        want.shape(),
        &[got.height() as usize, got.width() as usize, 3]
    );
    let diffs: Vec<i32> = got
        .as_raw()
        .iter()
        .zip(want.data())
        .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
        .collect();
    let max = diffs.iter().copied().max().unwrap();
    let mean = diffs.iter().sum::<i32>() as f64 / diffs.len() as f64;
    // Measured: max 4 levels, mean 0.42.
    assert!(max <= 6 && mean <= 1.0, "max {max}, mean {mean}");
}

/// CLIP's default 224 px config (bicubic upscale of an RGBA image, centre crop): the `uint8`
/// image behind transformers' pixel values (stored instead of 600 KB of floats) is equal.
#[test]
fn clip224_resized_image_equals_transformers() {
    let bytes = std::fs::read(fixtures().join("pixel_values.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let want = st.tensor("uint8/clip224/tall_rgba").unwrap();
    assert_eq!(want.shape(), &[3, 224, 224]);
    let processor = ImageProcessor::from_dir(fixtures().join("clip224")).unwrap();
    assert_eq!(processor.config(), &ImageProcessorConfig::default());
    let rgb = processor
        .prepare_rgb(&load_image(fixtures().join("images/tall_rgba.png")).unwrap())
        .unwrap();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    let mut chw = vec![0u8; 3 * h * w];
    for (i, p) in rgb.pixels().enumerate() {
        for c in 0..3 {
            chw[c * h * w + i] = p.0[c];
        }
    }
    assert_eq!(chw.as_slice(), want.data());
}

/// transformers' torchvision backend (its default when torchvision is installed), emulated by
/// the fixture with torch's antialiased bicubic: `ImageBackend::Torchvision` reproduces it
/// (measured: bit-identical); the PIL backend is identical for an image already at the target
/// size and a few uint8 levels apart after a resize (the documented tolerance).
#[test]
fn torchvision_backend_difference_is_bounded() {
    for (name, _, want) in reference() {
        let Some(rest) = name.strip_prefix("fast/") else {
            continue;
        };
        let (config, image) = rest.split_once('/').unwrap();
        let processor = ImageProcessor::from_dir(fixtures().join(config)).unwrap();
        let got = processor.preprocess_path(image_path(image)).unwrap();
        let d = max_abs(&got.data, &want);
        let mean: f32 = got
            .data
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .sum::<f32>()
            / want.len() as f32;
        // The torchvision backend reproduces it.
        let tv = processor
            .clone()
            .with_backend(ImageBackend::Torchvision)
            .preprocess_path(image_path(image))
            .unwrap();
        let d_tv = max_abs(&tv.data, &want);
        // The JPEG decoders differ (see `jpeg_decoding_difference_is_small`).
        let tol = if image == "photo" { 0.05 } else { 1e-5 };
        assert!(d_tv <= tol, "{name}: torchvision backend max |diff| {d_tv}");
        if image == "target_rgb" {
            assert!(d <= 1e-5, "{name}: {d}");
        } else if image != "photo" {
            // (The JPEG is left out: its decoding difference would add to the resize's.)
            // 0.09 = 6 uint8 levels / 255 / std (hard alpha edges ring more in float);
            // on average under half a level.
            assert!(d <= 0.09 && mean <= 0.005, "{name}: max {d}, mean {mean}");
        }
    }
}

#[test]
fn configs_parse_from_both_files() {
    // preprocessor_config.json.
    let c = ImageProcessorConfig::from_dir(fixtures().join("exact_bilinear")).unwrap();
    assert_eq!(
        c.size,
        ImageSize::Exact {
            height: 30,
            width: 40
        }
    );
    assert_eq!(c.resample, Resample::Bilinear);
    assert!(!c.do_center_crop);
    assert_eq!(c.output_size(), Some((30, 40)));
    // processor_config.json's nested image_processor.
    let c = ImageProcessorConfig::from_dir(fixtures().join("llava")).unwrap();
    assert_eq!(c.size, ImageSize::ShortestEdge(32));
    assert_eq!(c.crop_size, (32, 32));
    // Errors name the file and key.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        r#"{"size": {"longest": 3}}"#,
    )
    .unwrap();
    let e = ImageProcessorConfig::from_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("preprocessor_config.json") && e.contains("`size`"),
        "{e}"
    );
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        r#"{"do_pad": true}"#,
    )
    .unwrap();
    let e = ImageProcessorConfig::from_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("do_pad"), "{e}");
    let e = ImageProcessorConfig::from_dir(fixtures().join("images"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("preprocessor_config.json"), "{e}");
}

fn load_case_images(names: &[Value]) -> Vec<image::DynamicImage> {
    names
        .iter()
        .map(|n| {
            load_image(
                fixtures()
                    .join("images")
                    .join(format!("{}.png", n.as_str().unwrap())),
            )
            .unwrap()
        })
        .collect()
}

/// `<image>` expansion and tokenization equal LlavaProcessor's input_ids exactly (strategies
/// `default` and `full`, 32 px / patch 8 and 224 px / patch 14, 0-2 images).
#[test]
fn llava_processor_input_ids_match_transformers() {
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("llava_processor.json")).unwrap(),
    )
    .unwrap();
    let cases = r["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 9);
    for case in cases {
        let dir = fixtures().join(case["processor"].as_str().unwrap());
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let proc = LlavaProcessor::from_dir(&dir, &tok).unwrap();
        assert_eq!(
            u64::from(proc.image_token_id()),
            case["image_token_id"].as_u64().unwrap()
        );
        let images = load_case_images(case["images"].as_array().unwrap());
        let (ids, pixels) = proc
            .encode_prompt(&tok, case["text"].as_str().unwrap(), &images, true)
            .unwrap();
        let want: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        assert_eq!(ids, want, "{case}");
        assert_eq!(pixels.len(), images.len());
        let n = case["num_image_tokens"].as_u64().unwrap() as usize;
        assert_eq!(proc.num_image_tokens().unwrap() * images.len(), n);
    }
    let full = LlavaProcessor::from_dir(
        fixtures().join("llava_full"),
        &Tokenizer::from_dir(fixtures().join("llava_full")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        full.config().vision_feature_select_strategy,
        VisionFeatureSelectStrategy::Full
    );
    assert_eq!(full.num_image_tokens(), Some(17));
    // A marker/image count mismatch is an error.
    let tok = Tokenizer::from_dir(fixtures().join("llava")).unwrap();
    let proc = LlavaProcessor::from_dir(fixtures().join("llava"), &tok).unwrap();
    let e = proc.encode_prompt(
        &tok,
        "<image><image>",
        &load_case_images(&[json!("gray")]),
        true,
    );
    assert!(
        e.unwrap_err()
            .to_string()
            .contains("2 <image> marker(s) but 1 image(s)")
    );
    // A tokenizer without the image token is rejected up front.
    let plain = Tokenizer::from_dir(fixtures().join("../tokenizer")).unwrap();
    let e = LlavaProcessor::from_dir(fixtures().join("llava"), &plain)
        .unwrap_err()
        .to_string();
    assert!(e.contains("<image>"), "{e}");
}

struct Setup {
    tok: Tokenizer,
    proc: LlavaProcessor,
    template: ChatTemplate,
}

fn setup() -> Setup {
    let dir = fixtures().join("llava");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let proc = LlavaProcessor::from_dir(&dir, &tok).unwrap();
    let template = ChatTemplate::resolve("tokenizer", &tok).unwrap();
    Setup {
        tok,
        proc,
        template,
    }
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_string(v).unwrap()).unwrap();
    p
}

fn llava_json() -> Value {
    json!([
        {"id": "a", "image": "wide_rgb.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is this?"},
            {"from": "gpt", "value": "Mostly green."},
            {"from": "human", "value": "Sure?"},
            {"from": "gpt", "value": "Yes."}
        ]},
        {"id": "b", "conversations": [
            {"from": "human", "value": "No picture."},
            {"from": "gpt", "value": "Fine."}
        ]}
    ])
}

/// Both file formats give the same conversation; tokens equal transformers' chat template +
/// LlavaProcessor expansion; prompts and image tokens are masked, answers trained.
#[test]
fn llava_and_lmflow_records_tokenize_with_masks() {
    let s = setup();
    let tmp = tempfile::tempdir().unwrap();
    let images = fixtures().join("images");
    let opts = MultimodalReadOptions {
        image_folder: Some(images.clone()),
        ..Default::default()
    };
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("llava_processor.json")).unwrap(),
    )
    .unwrap();
    let conv = &r["conversation"];
    // The reference conversation, in both formats.
    let msgs = conv["messages"].as_array().unwrap();
    let llava = json!([{ "id": 7, "image": conv["images"], "conversations": msgs.iter().map(|m| json!({
        "from": if m["role"] == "user" { "human" } else { "gpt" }, "value": m["content"]})).collect::<Vec<_>>() }]);
    let lmflow = json!({"type": "conversation", "instances": [{"messages": msgs, "images": conv["images"]}]});
    let (f1, recs1) = read_multimodal(write(tmp.path(), "llava.json", &llava), &opts).unwrap();
    let (f2, recs2) = read_multimodal(write(tmp.path(), "lmflow.json", &lmflow), &opts).unwrap();
    assert_eq!(f1, MultimodalFormat::Llava);
    assert_eq!(f2, MultimodalFormat::LmflowConversation);
    assert_eq!(recs1[0].conversation, recs2[0].conversation);
    assert_eq!(
        recs1[0].images,
        vec![images.join("wide_rgb.png"), images.join("gray.png")]
    );
    assert_eq!(recs1[0].id.as_deref(), Some("7"));

    let encoder = SampleEncoder::new(&s.tok, Some(&s.template), TokenizeConfig::default()).unwrap();
    let mm = MultimodalEncoder::new(&encoder, &s.proc);
    let want: Vec<u32> = serde_json::from_value(conv["input_ids"].clone()).unwrap();
    let id = s.proc.image_token_id();
    for rec in [&recs1[0], &recs2[0]] {
        let out = mm.encode(rec).unwrap();
        assert_eq!(out.sample.input_ids, want);
        assert_eq!(out.tokens_per_image, 16);
        assert_eq!(
            out.sample.input_ids.iter().filter(|&&t| t == id).count(),
            32
        );
        for (t, l) in out.sample.input_ids.iter().zip(&out.sample.labels) {
            if *t == id {
                assert_eq!(*l, IGNORE_INDEX);
            }
        }
        let trained: Vec<u32> = out
            .sample
            .input_ids
            .iter()
            .zip(&out.sample.labels)
            .filter(|(_, l)| **l != IGNORE_INDEX)
            .map(|(t, _)| *t)
            .collect();
        let text = s.tok.decode(&trained, false).unwrap();
        assert_eq!(text, "Mostly green.<|im_end|>\nGray.<|im_end|>\n");
        // Pixels load in marker order.
        let px = out.load_pixels(s.proc.image_processor()).unwrap();
        assert_eq!(px.len(), 2);
        assert_eq!(px[1].shape, [3, 32, 32]);
    }

    // A folder of files reads as their concatenation (sorted by name); formats must agree.
    let folder = tmp.path().join("folder");
    std::fs::create_dir(&folder).unwrap();
    write(&folder, "b.json", &llava_json());
    write(&folder, "a.json", &llava);
    let (f, recs) = read_multimodal(&folder, &opts).unwrap();
    assert_eq!(f, MultimodalFormat::Llava);
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0].source, folder.join("a.json"));
    write(&folder, "c.json", &lmflow);
    let e = read_multimodal(&folder, &opts).unwrap_err().to_string();
    assert!(e.contains("c.json") && e.contains("a.json"), "{e}");

    // A text-only record in LLaVA data is fine and has no images.
    let (_, recs) = read_multimodal(write(tmp.path(), "two.json", &llava_json()), &opts).unwrap();
    assert_eq!(recs.len(), 2);
    let b = mm.encode(&recs[1]).unwrap();
    assert!(b.images.is_empty());
    assert!(!b.sample.input_ids.contains(&id));

    // Collation: rows padded, images stacked in row order.
    let a = mm.encode(&recs[0]).unwrap();
    let pa = a.load_pixels(s.proc.image_processor()).unwrap();
    let batch = collate_multimodal(&[&b, &a], &[vec![], pa.clone()], 0).unwrap();
    assert_eq!(batch.pixel_shape, [1, 3, 32, 32]);
    assert_eq!(batch.pixel_values, pa[0].data);
    assert_eq!(batch.text.batch, 2);
    assert_eq!(batch.text.seq, a.sample.len());
    let empty = collate_multimodal(&[&b], &[vec![]], 0).unwrap();
    assert_eq!(empty.pixel_shape[0], 0);
    assert!(collate_multimodal(&[&a], &[vec![]], 0).is_err());
}

fn err_of(v: &Value, opts: &MultimodalReadOptions) -> String {
    let tmp = tempfile::tempdir().unwrap();
    read_multimodal(write(tmp.path(), "bad.json", v), opts)
        .unwrap_err()
        .to_string()
}

/// Bad data: errors name the file, the record and the field.
#[test]
fn bad_records_name_file_record_and_field() {
    let opts = MultimodalReadOptions {
        image_folder: Some(fixtures().join("images")),
        ..Default::default()
    };
    let mut v = llava_json();
    v[1]["image"] = json!("missing.png");
    v[1]["conversations"][0]["value"] = json!("<image> hi");
    let e = err_of(&v, &opts);
    assert!(
        e.contains("bad.json")
            && e.contains("instance 1")
            && e.contains("`image`")
            && e.contains("missing.png"),
        "{e}"
    );

    let mut v = llava_json();
    v[0]["conversations"][0]["value"] = json!("<image><image> two markers");
    let e = err_of(&v, &opts);
    assert!(
        e.contains("instance 0") && e.contains("1 image(s) but 2 <image> marker(s)"),
        "{e}"
    );

    let mut v = llava_json();
    v[0]["conversations"][1]["from"] = json!("robot");
    let e = err_of(&v, &opts);
    assert!(
        e.contains("conversations[1].from") && e.contains("robot"),
        "{e}"
    );

    let v = json!({"type": "conversation", "instances": [
        {"messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "x"}], "images": [3]}]});
    let e = err_of(&v, &opts);
    assert!(
        e.contains("images[0]") && e.contains("expected a string"),
        "{e}"
    );

    let v = json!({"type": "text_only", "instances": []});
    assert!(err_of(&v, &opts).contains("type `conversation`"));

    // An unreadable image: reading succeeds (the file exists), loading names file, record,
    // field and image.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("broken.png"), b"not a png").unwrap();
    let v = json!([{"image": "broken.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "?"}]}]);
    let (_, recs) = read_multimodal(
        write(tmp.path(), "data.json", &v),
        &MultimodalReadOptions::default(),
    )
    .unwrap();
    let s = setup();
    let e = recs[0].load_pixels(s.proc.image_processor()).unwrap_err();
    assert!(matches!(e, DatasetError::Field { .. }));
    let e = e.to_string();
    assert!(
        e.contains("data.json")
            && e.contains("instance 0")
            && e.contains("`image`")
            && e.contains("broken.png"),
        "{e}"
    );

    // A block size that cuts the image tokens.
    let (_, recs) = read_multimodal(write(tmp.path(), "ok.json", &llava_json()), &opts).unwrap();
    let config = TokenizeConfig {
        block_size: 10,
        ..Default::default()
    };
    let encoder = SampleEncoder::new(&s.tok, Some(&s.template), config).unwrap();
    let e = MultimodalEncoder::new(&encoder, &s.proc)
        .encode(&recs[0])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ok.json")
            && e.contains("instance 0")
            && e.contains("block_size 10 cuts the image tokens"),
        "{e}"
    );
}

/// The tiny LLaVA fixture of lmflow-models (tests/fixtures/llava.py): from its PNG files and
/// processor folder, pixel values and input_ids equal what transformers fed the model there,
/// so PNG -> these pixel values -> lmflow-models' LLaVA reproduces transformers' logits.
#[test]
fn tiny_llava_fixture_inputs_are_reproduced() {
    let root = fixtures().join("../llava");
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("reference.json")).unwrap())
            .unwrap();
    let bytes = std::fs::read(root.join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut checked = 0;
    for (variant, v) in reference["variants"].as_object().unwrap() {
        let dir = root.join(v["folder"].as_str().unwrap());
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let proc = LlavaProcessor::from_dir(&dir, &tok).unwrap();
        for (case, c) in v["cases"].as_object().unwrap() {
            let names: Vec<&str> = c["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect();
            let mut next_image = 0;
            let mut all_pixels = Vec::new();
            for (r, prompt) in c["prompts"].as_array().unwrap().iter().enumerate() {
                let prompt = prompt.as_str().unwrap();
                let k = prompt.matches("<image>").count();
                let images: Vec<_> = names[next_image..next_image + k]
                    .iter()
                    .map(|n| load_image(root.join("images").join(n)).unwrap())
                    .collect();
                next_image += k;
                let (ids, pixels) = proc.encode_prompt(&tok, prompt, &images, true).unwrap();
                // Rows are left-padded in the fixture: compare the unpadded tokens.
                let row: Vec<u32> = serde_json::from_value(c["input_ids"][r].clone()).unwrap();
                let mask: Vec<u32> =
                    serde_json::from_value(c["attention_mask"][r].clone()).unwrap();
                let real: Vec<u32> = row
                    .iter()
                    .zip(&mask)
                    .filter(|(_, m)| **m == 1)
                    .map(|(t, _)| *t)
                    .collect();
                assert_eq!(ids, real, "{variant}.{case} row {r}");
                all_pixels.extend(pixels);
            }
            if let Ok(want) = st.tensor(&format!("{variant}.{case}.pixel_values")) {
                let want: Vec<f32> = want
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                let (got, shape) =
                    lmflow_datasets::multimodal::stack_pixel_values(&all_pixels).unwrap();
                assert_eq!(shape[0], names.len());
                let d = max_abs(&got, &want);
                assert!(d <= 1e-5, "{variant}.{case}: {d}");
                checked += 1;
            } else {
                assert!(
                    names.is_empty(),
                    "{variant}.{case} has images but no pixel values"
                );
            }
        }
    }
    assert!(checked >= 4, "{checked}");
}
