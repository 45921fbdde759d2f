//! Rule settings as the agent receives them on `{prefix}/config/{fleet}/{model}`
//! and the coordinator on `PUT /api/v1/models/{name}/rules`: JSON into
//! `RulesConfig`, then `validate`; valid settings drive a rules engine.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sad_agent::rules::{RulesConfig, RulesEngine};

fuzz_target!(|data: &[u8]| {
    let Ok(cfg) = serde_json::from_slice::<RulesConfig>(data) else {
        return;
    };
    if cfg.validate().is_err() {
        return;
    }
    let _ = cfg.enter_threshold(0.5);
    let json = serde_json::to_vec(&cfg).expect("valid settings serialise");
    let back: RulesConfig = serde_json::from_slice(&json).expect("and parse again");
    assert!(back.validate().is_ok());
    let _ = RulesEngine::new(cfg, 0);
});
