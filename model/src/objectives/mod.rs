//! Loss functions of the pretraining objectives, on already gathered tensors. Each returns
//! a `[1]` tensor: the mean over its own valid targets.

pub mod caption;
pub mod contrastive;
pub mod matching;
pub mod region;
pub mod token;
