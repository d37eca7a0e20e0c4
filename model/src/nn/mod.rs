//! Building blocks shared by UNIMO and ViLBERT: attention, feed-forward, Transformer
//! layers, co-attention, embeddings and initialisation.

pub mod attention;
pub mod co_attention;
mod cpu;
pub mod embeddings;
pub mod feed_forward;
pub mod init;
pub mod norm;
pub mod ops;
pub mod transformer;
