//! Model invariants on tiny configurations (issue 3, item 8): shapes, attention masks by
//! perturbation, every objective learning a fixed batch, contrastive retrieval on a toy,
//! bit-exact save/load, ViLBERT, and the non-finite guard.

mod common;
mod compat;
mod contrastive_toy;
mod export;
mod generation;
mod matching;
mod save_load;
mod training;
