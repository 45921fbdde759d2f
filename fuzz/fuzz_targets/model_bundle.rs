//! A model bundle frame as the agent receives it (or an operator installs it
//! with `model install`): decode the frame, validate the manifest, then, with
//! the payload hash fixed up (as a coordinator that signs anything would),
//! build the detector with `detector_from_parts` and score with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sad_common::{ModelBundle, frame};
use sad_fuzz::{build_and_score, fit_manifest, quiet_panics};

fuzz_target!(|data: &[u8]| {
    quiet_panics();
    let Ok(bundle) = frame::decode::<ModelBundle>(data) else {
        return;
    };
    // As received: the hash must be checked first.
    let _ = sad_models::bundle::detector_from_parts(&bundle.manifest, &bundle.payload);
    let manifest = fit_manifest(&bundle.manifest, &bundle.payload);
    build_and_score(&manifest, &bundle.payload);
});
