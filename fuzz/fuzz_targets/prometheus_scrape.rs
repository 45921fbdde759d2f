//! The agent's Prometheus scraper: an HTTP/1.1 response (plain or chunked)
//! through `parse_response`, its body through `parse_exposition` and twice
//! through `ScrapeState::observe` (rates need two scrapes).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use sad_agent::sources::prometheus::{
    ScrapeState, SeriesSelector, parse_exposition, parse_http_url, parse_response,
};

fuzz_target!(|data: &[u8]| {
    let body = match parse_response(data, 1 << 16) {
        Ok(b) => b,
        Err(_) => data.to_vec(),
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        if let Ok(s) = std::str::from_utf8(data) {
            let _ = parse_http_url(s);
        }
        return;
    };
    let _ = parse_http_url(text);
    let (samples, _) = parse_exposition(text);
    let mut select = vec![SeriesSelector {
        metric: "node_cpu_seconds_total".into(),
        labels: [("mode".to_string(), "idle".to_string())].into(),
        rate: None,
        feature: None,
    }];
    if let Some(s) = samples.first() {
        select.push(SeriesSelector {
            metric: s.name.clone(),
            labels: Default::default(),
            rate: Some(true),
            feature: None,
        });
    }
    let mut state = ScrapeState::new(select);
    let t0 = Instant::now();
    let _ = state.observe(text, t0);
    let _ = state.observe(text, t0 + Duration::from_secs(1));
});
