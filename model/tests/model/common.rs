//! Tiny configurations and synthetic examples shared by the tests (also the crate's unit
//! tests: the items live in `fixtures.rs`).

// Each test crate (`model`, `wgpu`) uses a part of them.
#![allow(dead_code)]

use unimod_model::{Arch, Example, ModelConfig, SpecialTokens, StepReport, TrainSettings, VisualInput};

include!("fixtures.rs");
