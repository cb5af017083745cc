//! A data scientist's own table: strings, booleans, missing cells and a TRUE/FALSE
//! label, from CSV and from a Parquet file written by pandas (int64, uint8, bool,
//! categorical and string columns; `tests/fixtures/make_shop_table.py`). Trained with a
//! stratified, seeded split and cross-validation, then served through `Score` with the
//! fields in the request: the served score equals the training pipeline's prediction
//! for the same row to the bit.

mod common;

use std::path::Path;
use std::process::Command;

use common::TestServer;
use streamscore::api::pb::{self, scoring_client::ScoringClient};
use streamscore::model::artifact;
use streamscore::model::inputs::InputKind;
use streamscore::train::table::{self, RawCell, TableSpec};

use streamscore::api::v2pb::{self, grpc_inference_service_client::GrpcInferenceServiceClient};

const BIN: &str = env!("CARGO_BIN_EXE_streamscore");

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Trains logistic (v1) and tree (v2) models from `table` into `models`.
fn train(table: &Path, models: &Path) -> String {
    let config = models.with_file_name("shop.toml");
    std::fs::write(
        &config,
        "name = 'shop'\ntarget = 'binary'\nlabel = 'Revenue'\nsplit = 'stratified'\nseed = 11\ncv_folds = 3\n\
         [[family]]\nkind = 'logistic'\n[[family]]\nkind = 'tree'\nmax_depth = 4\n",
    )
    .unwrap();
    let output = Command::new(BIN)
        .arg("train")
        .arg("--table")
        .arg(table)
        .arg("--config")
        .arg(&config)
        .arg("--models-dir")
        .arg(models)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A Score request carrying one raw table row as the client would send it: numbers for
/// number inputs, the cell's text (or true/false) for yes/no and category inputs, and
/// nothing for a missing cell.
fn request(
    version: u32,
    raw: &table::RawTable,
    row: usize,
    inputs: &[streamscore::model::inputs::Input],
) -> pb::ScoreRequest {
    let mut event = pb::Event::default();
    for input in inputs {
        let at = raw.names.iter().position(|n| *n == input.name).unwrap();
        match (&input.kind, &raw.columns[at][row]) {
            (_, RawCell::Missing) => {}
            (InputKind::Number, RawCell::Text(text)) => {
                event
                    .numbers
                    .insert(input.name.clone(), text.parse().unwrap());
            }
            (_, RawCell::Number(v)) => {
                event.numbers.insert(input.name.clone(), *v);
            }
            (_, RawCell::Bool(b)) => {
                event.strings.insert(input.name.clone(), b.to_string());
            }
            (_, RawCell::Text(text)) => {
                event.strings.insert(input.name.clone(), text.to_string());
            }
        }
    }
    pb::ScoreRequest {
        model: format!("shop@{version}"),
        event: Some(event),
        ..Default::default()
    }
}

async fn served_equals_trained(table_file: &str) {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let table = fixture(table_file);
    let stdout = train(&table, &models);
    assert!(stdout.contains("over 3 folds"), "{stdout}");

    // What the training pipeline computed for each row.
    let spec = TableSpec {
        label: "Revenue".into(),
        binary: true,
        encode: true,
    };
    let dataset = table::read(&table, &spec).unwrap();
    let raw = if table_file.ends_with(".parquet") {
        table::parquet::read_raw(&table).unwrap()
    } else {
        table::csv::read_raw(&table).unwrap()
    };
    assert_eq!(raw.lines.len(), 600);

    let server = TestServer::start(|settings| settings.models.dir = models.clone()).await;
    let mut scoring = ScoringClient::new(server.channel().await);
    for version in [1, 2] {
        let body =
            artifact::read_unchecked(&models.join(format!("shop/shop-v{version}.json"))).unwrap();
        let provenance = body.provenance.as_ref().unwrap();
        assert_eq!(
            (provenance.split.as_str(), provenance.seed),
            ("stratified", 11)
        );
        let (train_rate, validation_rate) = (
            provenance.train_positives.unwrap() as f64 / provenance.train_rows as f64,
            provenance.validation_positives.unwrap() as f64 / provenance.validation_rows as f64,
        );
        assert!(
            (train_rate - validation_rate).abs() < 0.01,
            "stratified: {train_rate} vs {validation_rate}"
        );
        let inputs = body
            .model
            .inputs
            .clone()
            .expect("a table model keeps its inputs");
        let kinds: Vec<(&str, &InputKind)> =
            inputs.iter().map(|i| (i.name.as_str(), &i.kind)).collect();
        assert!(matches!(kinds[0], ("Month", InputKind::Category { .. })));
        assert!(matches!(kinds[2], ("Weekend", InputKind::Boolean)));
        assert!(matches!(kinds[5], ("PageValues", InputKind::Number)));
        let mut missing_seen = 0;
        for row in 0..80 {
            let expected = body.model.predict(&dataset.rows[row].values);
            missing_seen += usize::from(dataset.rows[row].values.iter().any(Option::is_none));
            let answer = scoring
                .score(request(version, &raw, row, &inputs))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                answer.score.to_bits(),
                expected.to_bits(),
                "v{version} row {row}: served {} vs trained {expected}",
                answer.score
            );
        }
        assert!(missing_seen > 0, "some compared rows have missing cells");

        // The Open Inference Protocol: whole encoded rows [N, K] in the model's column
        // order, as MLServer's scikit-learn runtime takes them, score as trained.
        let complete: Vec<usize> = (0..dataset.rows.len())
            .filter(|r| dataset.rows[*r].values.iter().all(Option::is_some))
            .take(25)
            .collect();
        let columns = body.model.columns.len();
        let matrix: Vec<f64> = complete
            .iter()
            .flat_map(|r| {
                dataset.rows[*r]
                    .values
                    .iter()
                    .map(|v| v.unwrap_or(f64::NAN))
            })
            .collect();
        let mut v2 = GrpcInferenceServiceClient::new(server.channel().await);
        let infer = |matrix: Vec<f64>, rows: usize| v2pb::ModelInferRequest {
            model_name: "shop".into(),
            model_version: version.to_string(),
            inputs: vec![v2pb::model_infer_request::InferInputTensor {
                name: "input".into(),
                datatype: "FP64".into(),
                shape: vec![rows as i64, columns as i64],
                contents: Some(v2pb::InferTensorContents {
                    fp64_contents: matrix,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let answer = v2
            .model_infer(infer(matrix.clone(), complete.len()))
            .await
            .unwrap()
            .into_inner();
        let probability = &answer.outputs[0];
        assert_eq!(probability.name, "probability");
        let served = &probability.contents.as_ref().unwrap().fp64_contents;
        for (i, row) in complete.iter().enumerate() {
            let expected = body.model.predict(&dataset.rows[*row].values);
            assert_eq!(
                served[i].to_bits(),
                expected.to_bits(),
                "v{version} V2 row {row}"
            );
        }
        let mut with_nan = matrix[..columns].to_vec();
        with_nan[2] = f64::NAN;
        let status = v2.model_infer(infer(with_nan, 1)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "input: element [0, 2] is NaN, not a finite number"
        );
        let status = v2
            .model_infer(infer(matrix[..columns - 1].to_vec(), 1))
            .await
            .unwrap_err();
        assert!(
            status.message().starts_with(&format!(
                "input: shape [1, {columns}] says {columns} elements"
            )),
            "{}",
            status.message()
        );
    }

    // Fields that are not inputs, or values of the wrong kind, are named.
    let mut unknown = request(1, &raw, 0, &[]);
    if let Some(event) = unknown.event.as_mut() {
        event.numbers.insert("Administrative".into(), 3.0);
    }
    let status = scoring.score(unknown).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("Administrative"),
        "{}",
        status.message()
    );
    let mut wrong = request(1, &raw, 0, &[]);
    if let Some(event) = wrong.event.as_mut() {
        event.strings.insert("Weekend".into(), "sometimes".into());
    }
    let status = scoring.score(wrong).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("Weekend") && status.message().contains("yes/no"),
        "{}",
        status.message()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_table_model_serves_what_it_trained() {
    served_equals_trained("shop.csv").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_table_written_by_pandas_serves_what_it_trained() {
    served_equals_trained("shop.parquet").await;
}
