//! `aiop pretrain` then `aiop predict` as a user runs them: a tiny model trained for one epoch,
//! predictions as JSON lines in input order, a bad line reported with exit code 65.

use crate::common::aiop;

const A: &str =
    "|skip_connect~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_1x1~0|nor_conv_1x1~1|none~2|";
const B: &str =
    "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|";

#[test]
fn pretrain_then_predict_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cfg.json");
    std::fs::write(
        &cfg,
        r#"{"tasks": ["nb201/cifar10"], "max_per_task": 24, "test_fraction": 0.25,
            "model": {"layers": 2, "head": [8]}, "train": {"epochs": 1, "batch_size": 8}}"#,
    )
    .unwrap();
    let model = dir.path().join("m");
    let m = model.to_str().unwrap();
    let o = aiop(
        &[
            "pretrain",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            m,
            "--seed",
            "3",
        ],
        "",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["test"][0]["n"], 6);
    assert!(model.join("model.safetensors").exists());
    assert!(model.join("model.json").exists());

    let input = format!("{B}\n{A}\nnot an arch\n{A}\n");
    let o = aiop(
        &[
            "predict", "--space", "nb201", "--task", "cifar10", "--model", m,
        ],
        &input,
    );
    assert_eq!(o.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&o.stderr).contains("line 3"));
    let lines: Vec<serde_json::Value> = String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let archs: Vec<&str> = lines.iter().map(|l| l["arch"].as_str().unwrap()).collect();
    assert_eq!(archs, vec![B, A, A]);
    assert_eq!(lines[1]["prediction"], lines[2]["prediction"]);
    assert!(lines[0]["prediction"].as_f64().unwrap().is_finite());

    // A task the model has no statistics for is refused.
    let o = aiop(
        &[
            "predict", "--space", "nb201", "--task", "cifar100", "--model", m,
        ],
        &format!("{A}\n"),
    );
    assert!(!o.status.success());

    // The same model as the fitness of a search: predictions are the scores, the oracle column
    // holds the table's true label, and the result file exports.
    let res = dir.path().join("r.json");
    let o = aiop(
        &[
            "search",
            "--space",
            "nb201",
            "--task",
            "cifar10",
            "--fitness",
            "predictor",
            "--model",
            m,
            "--budget",
            "40",
            "--population",
            "16",
            "--sample",
            "4",
            "--seed",
            "1",
            "--json",
            res.to_str().unwrap(),
            "--quiet",
        ],
        "",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&res).unwrap()).unwrap();
    assert!(file["evaluations"].as_u64().unwrap() <= 40);
    let results = file["results"].as_array().unwrap();
    assert!(!results.is_empty());
    let top = results[0]["arch"].as_str().unwrap();
    let o = aiop(
        &[
            "predict", "--space", "nb201", "--task", "cifar10", "--model", m,
        ],
        &format!("{top}\n"),
    );
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (a, b) = (
        p["prediction"].as_f64().unwrap(),
        results[0]["predicted"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-4 * a.abs().max(1.0), "{a} vs {b}");
    assert!(results[0]["oracle"].as_f64().is_some());
}
