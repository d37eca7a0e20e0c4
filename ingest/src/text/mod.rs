//! Text processing: tokenisation ([`tokenizer`]), and the data side of cross-modal
//! contrastive learning: hard-negative caption rewriting ([`rewrite`]) and a bounded TF-IDF
//! window for retrieval ([`tfidf`]).

pub mod rewrite;
pub mod tfidf;
pub mod tokenizer;
pub mod words;

pub use rewrite::{Rewrite, RewriterLimits, TextRewriter, WordKind};
pub use tfidf::TfIdfWindow;
pub use tokenizer::{SpecialTokens, TextTokenizer, TokenizerError, TRAINED_SPECIALS};
