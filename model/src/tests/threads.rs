//! Trainers on several threads of one process. burn-autodiff 0.21 frees unused graph steps
//! process-wide at the end of every `backward()`, including steps another thread is still
//! building, and that thread's backward then silently misses a gradient
//! (tracel-ai/burn#5573; seen here as a 0.6% smaller gradient norm in a CI run).
//! [`crate::autodiff_lock`] serialises graph building and backward across the process.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Tensor;

use crate::{Arch, StepReport, Trainer};

use super::common::{mixed_batch, settings, tiny, Train};

fn run(state: &crate::TrainerState, steps: usize) -> Vec<StepReport> {
    let mut t = Trainer::<Train>::load(state, settings(), Default::default()).expect("load");
    (0..steps).map(|_| t.step(&[mixed_batch()], 1e-3)).collect()
}

#[test]
fn trainers_on_several_threads_get_the_gradients_of_one_alone() {
    const STEPS: usize = 10;
    const THREADS: usize = 4;
    const ROUNDS: usize = 3;
    let state = Trainer::<Train>::new(tiny(Arch::Unimo), settings(), Default::default())
        .expect("trainer")
        .save()
        .expect("save");
    let alone = run(&state, STEPS);
    for round in 0..ROUNDS {
        let done = AtomicBool::new(false);
        let together: Vec<Vec<StepReport>> = std::thread::scope(|s| {
            // Another user of autodiff in the process: many small backward passes, each
            // ending in the process-wide cleanup, taking the lock as the crate asks.
            s.spawn(|| {
                let device = Default::default();
                while !done.load(Ordering::Relaxed) {
                    let _guard = crate::autodiff_lock();
                    let x = Tensor::<Train, 2>::ones([8, 8], &device).require_grad();
                    let y = Tensor::cat(vec![x.clone(), x.clone() * 2.0], 0).sum();
                    let _ = y.backward();
                    drop(_guard);
                    std::thread::yield_now();
                }
            });
            let handles: Vec<_> = (0..THREADS).map(|_| s.spawn(|| run(&state, STEPS))).collect();
            let out = handles.into_iter().map(|h| h.join().expect("thread")).collect();
            done.store(true, Ordering::Relaxed);
            out
        });
        for (thread, reports) in together.iter().enumerate() {
            for (step, (a, b)) in alone.iter().zip(reports).enumerate() {
                let rel = (a.grad_norm - b.grad_norm).abs() / a.grad_norm.max(1.0);
                assert!(
                    rel <= 1e-5,
                    "round {round}, thread {thread}, step {step}: gradient norm {} alone, {} beside other trainers",
                    a.grad_norm,
                    b.grad_norm
                );
            }
        }
    }
}
