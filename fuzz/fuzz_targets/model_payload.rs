//! Model payloads of every kind (Isolation Forest, Half-Space Trees, EWMA
//! postcard; dense and LSTM autoencoder TFLite via tract) under a valid
//! manifest. Input byte 0 picks the kind's template; byte 1 picks the mode:
//! even = the rest of the input is the payload; odd = the template's real
//! payload, truncated to a length from bytes 2–3 and with byte flips
//! `(offset hi, offset lo, xor)` from the rest applied. Then the detector is
//! built as the agent builds it and used to score.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sad_fuzz::{build_and_score, fit_manifest, quiet_panics, templates};

fuzz_target!(|data: &[u8]| {
    quiet_panics();
    let [which, mode, rest @ ..] = data else {
        return;
    };
    let ts = templates();
    let t = &ts[*which as usize % ts.len()];
    let payload = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        let mut p = t.payload.clone();
        let (cut, flips) = match rest {
            [a, b, flips @ ..] => (u16::from_be_bytes([*a, *b]), flips),
            _ => (u16::MAX, &[][..]),
        };
        if cut != u16::MAX && (cut as usize) < p.len() {
            p.truncate(cut as usize);
        }
        if !p.is_empty() {
            for f in flips.chunks_exact(3) {
                let off = (u16::from_be_bytes([f[0], f[1]]) as usize
                    * (1 + (p.len() >> 16)))
                    % p.len();
                p[off] ^= f[2];
            }
        }
        p
    };
    let manifest = fit_manifest(&t.manifest, &payload);
    build_and_score(&manifest, &payload);
});
