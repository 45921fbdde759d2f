//! Every wire type through `sad_common::frame::decode`: the first input byte
//! picks the type, the rest is the frame. A frame that decodes must encode
//! again and decode to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sad_common::frame::{self, Wire};
use sad_common::{
    Ack, Alert, AlertBatch, Event, FeatureVector, Heartbeat, LabelCounts, ModelBundle, ModelManifest,
    Samples,
};

fn roundtrip<T: Wire + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(v) = frame::decode::<T>(bytes) {
        let again = frame::encode_checked(&v).expect("a decoded value encodes");
        let back = frame::decode::<T>(&again).expect("an encoded value decodes");
        // NaN-free by validation, so equality is meaningful.
        assert_eq!(back, v);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 10 {
        0 => roundtrip::<Event>(bytes),
        1 => roundtrip::<FeatureVector>(bytes),
        2 => roundtrip::<Alert>(bytes),
        3 => roundtrip::<AlertBatch>(bytes),
        4 => roundtrip::<Ack>(bytes),
        5 => roundtrip::<Heartbeat>(bytes),
        6 => roundtrip::<Samples>(bytes),
        7 => roundtrip::<ModelManifest>(bytes),
        8 => roundtrip::<LabelCounts>(bytes),
        _ => roundtrip::<ModelBundle>(bytes),
    }
});
