//! Sources against real endpoints: a Prometheus scrape of a tiny axum server
//! serving a fixture whose counter grows between scrapes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use sad_agent::sources::BadInputReporter;
use sad_agent::sources::prometheus::{PrometheusSourceConfig, SeriesSelector};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_prometheus_scrape_turns_chosen_series_into_events_with_counter_rates() {
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let n = h.fetch_add(1, Ordering::SeqCst);
            async move {
                format!(
                    "# TYPE requests_total counter\nrequests_total{{code=\"200\"}} {}\nrequests_total{{code=\"500\"}} 7\n# TYPE temp gauge\ntemp 21.5\n",
                    1000 + n * 50
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let cfg = PrometheusSourceConfig {
        name: "node".into(),
        url: format!("http://{addr}/metrics"),
        interval_ms: 100,
        timeout_ms: 2000,
        max_body_bytes: 1 << 20,
        series: None,
        model: None,
        select: vec![
            SeriesSelector {
                metric: "requests_total".into(),
                labels: [("code".to_string(), "200".to_string())]
                    .into_iter()
                    .collect(),
                rate: None,
                feature: Some("ok_rate".into()),
            },
            SeriesSelector {
                metric: "temp".into(),
                labels: Default::default(),
                rate: None,
                feature: None,
            },
        ],
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let stop = CancellationToken::new();
    let task = tokio::spawn(cfg.run(tx, BadInputReporter::detached(), stop.clone()));
    let env = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an event within 20 s")
        .unwrap();
    assert_eq!(env.event.series, "node");
    assert_eq!(env.source.feature_names, vec!["ok_rate", "temp"]);
    assert!(env.event.values[0] > 0.0, "{:?}", env.event.values);
    assert_eq!(env.event.values[1], 21.5);
    assert!(
        hits.load(Ordering::SeqCst) >= 2,
        "the first scrape only primes the rate"
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}
