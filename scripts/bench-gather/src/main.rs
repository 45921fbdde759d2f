//! Scalar complete-tree walk (the shape of `models/src/iforest/flat.rs`:
//! 100 trees of depth 8, 16 rows interleaved, rows padded to 8 `f32`) against
//! the same walk with AVX-512 gathers (16 rows a vector: thresholds, features
//! and row values gathered per level). Random forest and rows, same sums
//! checked; prints rows/s of both and their ratio, three rounds.
//! x86_64 only. Numbers: docs/coordinator.md.

use std::arch::x86_64::*;
use std::time::Instant;

const D: usize = 8;
const SIZE: usize = 1 << D;
const T: usize = 100;
const LANES: usize = 16;

struct Forest {
    thr: Vec<f32>,
    feat: Vec<u32>,
    leaves: Vec<f64>,
}

fn rng(s: &mut u64) -> f32 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    (*s >> 40) as f32 / (1u64 << 24) as f32
}

fn scalar(f: &Forest, rows: &[[f32; 8]], acc: &mut [f64]) {
    for t in 0..T {
        let thr: &[f32; SIZE] = f.thr[t * SIZE..(t + 1) * SIZE].try_into().unwrap();
        let feat: &[u32; SIZE] = f.feat[t * SIZE..(t + 1) * SIZE].try_into().unwrap();
        let leaves = &f.leaves[t * SIZE..(t + 1) * SIZE];
        for (rows, acc) in rows.chunks_exact(LANES).zip(acc.chunks_exact_mut(LANES)) {
            let mut idx = [1usize; LANES];
            for _ in 0..D {
                for (i, x) in idx.iter_mut().zip(rows) {
                    let j = *i & (SIZE - 1);
                    let v = x[feat[j] as usize & 7];
                    *i = 2 * *i + (usize::from(v <= thr[j]) ^ 1);
                }
            }
            for (a, i) in acc.iter_mut().zip(idx) {
                *a += leaves[i & (SIZE - 1)];
            }
        }
    }
}

#[target_feature(enable = "avx512f")]
#[allow(unsafe_op_in_unsafe_fn)]
unsafe fn simd(f: &Forest, rows: &[[f32; 8]], acc: &mut [f64]) {
    let lane = _mm512_setr_epi32(
        0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 104, 112, 120,
    );
    let one = _mm512_set1_epi32(1);
    let mask = _mm512_set1_epi32((SIZE - 1) as i32);
    for t in 0..T {
        let thr = f.thr.as_ptr().add(t * SIZE);
        let feat = f.feat.as_ptr().add(t * SIZE) as *const i32;
        let leaves = &f.leaves[t * SIZE..(t + 1) * SIZE];
        for (rows, acc) in rows.chunks_exact(LANES).zip(acc.chunks_exact_mut(LANES)) {
            let base = rows.as_ptr() as *const f32;
            let mut idx = one;
            for _ in 0..D {
                let j = _mm512_and_si512(idx, mask);
                let th = _mm512_i32gather_ps::<4>(j, thr);
                let fe = _mm512_i32gather_epi32::<4>(j, feat);
                let off = _mm512_add_epi32(lane, _mm512_and_si512(fe, _mm512_set1_epi32(7)));
                let x = _mm512_i32gather_ps::<4>(off, base);
                let le = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(x, th);
                let two = _mm512_add_epi32(idx, idx);
                // right (+1) where not le
                idx = _mm512_mask_add_epi32(two, !le, two, one);
            }
            let mut out = [0i32; 16];
            _mm512_storeu_si512(out.as_mut_ptr() as *mut _, idx);
            for (a, i) in acc.iter_mut().zip(out) {
                *a += leaves[i as usize & (SIZE - 1)];
            }
        }
    }
}

fn main() {
    if !is_x86_feature_detected!("avx512f") {
        eprintln!("this CPU has no AVX-512F; nothing to compare");
        return;
    }
    let mut s = 42u64;
    let f = Forest {
        thr: (0..T * SIZE).map(|_| rng(&mut s)).collect(),
        feat: (0..T * SIZE)
            .map(|_| (rng(&mut s) * 4.0) as u32 % 4)
            .collect(),
        leaves: (0..T * SIZE).map(|_| rng(&mut s) as f64).collect(),
    };
    let rows: Vec<[f32; 8]> = (0..256)
        .map(|_| {
            let mut r = [0f32; 8];
            for v in r.iter_mut().take(4) {
                *v = rng(&mut s);
            }
            r
        })
        .collect();
    let mut a = vec![0f64; 256];
    let mut b = vec![0f64; 256];
    scalar(&f, &rows, &mut a);
    unsafe { simd(&f, &rows, &mut b) };
    assert_eq!(a, b, "same sums");
    for round in 0..3 {
        let n = 4000;
        let t0 = Instant::now();
        for _ in 0..n {
            a.fill(0.0);
            scalar(&f, std::hint::black_box(&rows), &mut a);
        }
        let ts = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        for _ in 0..n {
            b.fill(0.0);
            unsafe { simd(&f, std::hint::black_box(&rows), &mut b) };
        }
        let tv = t0.elapsed().as_secs_f64();
        println!(
            "round {round}: scalar {:.0} rows/s, avx512 {:.0} rows/s, ratio {:.2}",
            256.0 * n as f64 / ts,
            256.0 * n as f64 / tv,
            ts / tv
        );
    }
}
