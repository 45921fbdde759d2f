//! Payload parsing of the agent's MQTT, HTTP `/ingest` and file sources:
//! `Mapping::parse_payload` (JSON object, JSON array or CSV line, detected),
//! `parse_csv_line` and `split_csv`, under several mappings. Input: one byte
//! picks the mapping, then the MQTT topic up to the first NUL, then the payload.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sad_agent::sources::{Mapping, MappingConfig, SeriesKey, split_csv};

fn mappings() -> &'static [Mapping] {
    static M: OnceLock<Vec<Mapping>> = OnceLock::new();
    M.get_or_init(|| {
        let plain = MappingConfig::new(&["x", "y"]);
        let mut named = MappingConfig::new(&["temp", "rpm"]);
        named.columns = Some(vec![
            "ts".into(),
            "machine".into(),
            "temp".into(),
            "rpm".into(),
            "label".into(),
        ]);
        named.series = Some(SeriesKey {
            field: Some("machine".into()),
            topic_level: None,
            fixed: None,
        });
        named.timestamp_field = Some("ts".into());
        named.label_field = Some("label".into());
        let mut topic = MappingConfig::new(&["value"]);
        topic.series = Some(SeriesKey {
            field: None,
            topic_level: Some(2),
            fixed: None,
        });
        topic.featurize_window = Some(4);
        let mut small = MappingConfig::new(&["a"]);
        small.max_payload_bytes = 64;
        [plain, named, topic, small]
            .iter()
            .map(|c| c.build("fuzz").expect("valid mapping"))
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let maps = mappings();
    let mapping = &maps[which as usize % maps.len()];
    let (topic, payload) = match rest.iter().position(|b| *b == 0) {
        Some(i) => (std::str::from_utf8(&rest[..i]).ok(), &rest[i + 1..]),
        None => (None, rest),
    };
    if let Ok(ev) = mapping.parse_payload(payload, topic, 1_700_000_000_000) {
        assert_eq!(ev.values.len(), mapping.fields().len());
        assert!(ev.values.iter().all(|v| v.is_finite()));
    }
    if let Ok(line) = std::str::from_utf8(payload) {
        let _ = mapping.parse_csv_line(line, topic, 0);
        let _ = split_csv(line);
    }
    for line in payload.split(|b| *b == b'\n') {
        let _ = mapping.parse_payload(line, topic, 0);
    }
});
