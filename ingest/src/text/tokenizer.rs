//! Text to token ids with the `tokenizers` crate.
//!
//! Either a `tokenizer.json` given in the config, or a byte-level BPE trained from a bootstrap
//! sample of the stream's texts and captions. A trained tokenizer has the special tokens
//! `[PAD]=0 [CLS]=1 [SEP]=2 [MASK]=3 [IMG]=4`; a loaded one has them looked up by name (BERT
//! style `[CLS]` or RoBERTa style `<s>`, ...; `[IMG]` is added when missing). Either way the
//! tokenizer serialises to a JSON string that the daemon stores with its checkpoints.

use std::collections::HashSet;
use std::path::Path;
use std::str::FromStr;

use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::config::TextConfig;
use crate::decode::normalize_text;
use crate::record::TokenSequence;

/// Tokenizer errors.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer file could not be read or parsed.
    #[error("cannot load tokenizer from {path}: {message}")]
    Load {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A serialised tokenizer (from a checkpoint) could not be parsed.
    #[error("cannot parse serialised tokenizer: {0}")]
    Parse(String),
    /// A required special token is missing from a loaded tokenizer.
    #[error("tokenizer has no {0} token (looked for {1:?})")]
    MissingSpecial(&'static str, &'static [&'static str]),
    /// Training failed or had no input.
    #[error("cannot train tokenizer: {0}")]
    Train(String),
    /// Serialisation failed.
    #[error("cannot serialise tokenizer: {0}")]
    Serialize(String),
    /// Encoding a text failed.
    #[error("cannot encode text: {0}")]
    Encode(String),
}

/// Ids of the special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialTokens {
    /// Padding.
    pub pad: u32,
    /// Start of text; its final state is the pooled text representation.
    pub cls: u32,
    /// End of text.
    pub sep: u32,
    /// Masked token for masked language modelling.
    pub mask: u32,
    /// Global image entry.
    pub img: u32,
}

/// The special tokens of a trained tokenizer, in id order.
pub const TRAINED_SPECIALS: [&str; 5] = ["[PAD]", "[CLS]", "[SEP]", "[MASK]", "[IMG]"];

const PAD_NAMES: &[&str] = &["[PAD]", "<pad>"];
const CLS_NAMES: &[&str] = &["[CLS]", "<s>", "<cls>"];
const SEP_NAMES: &[&str] = &["[SEP]", "</s>", "<sep>"];
const MASK_NAMES: &[&str] = &["[MASK]", "<mask>"];
const IMG_NAMES: &[&str] = &["[IMG]", "<img>"];

/// A tokenizer with its special tokens and the maximum sequence length.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    special: SpecialTokens,
    max_length: usize,
}

impl TextTokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path, max_length: usize) -> Result<Self, TokenizerError> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| TokenizerError::Load { path: path.display().to_string(), message: e.to_string() })?;
        Self::with_lookup(inner, max_length)
    }

    /// Parses a tokenizer serialised by [`to_json`](Self::to_json) (or any `tokenizer.json`).
    pub fn from_json(json: &str, max_length: usize) -> Result<Self, TokenizerError> {
        let inner = Tokenizer::from_str(json).map_err(|e| TokenizerError::Parse(e.to_string()))?;
        Self::with_lookup(inner, max_length)
    }

    /// Trains a byte-level BPE on `texts` with `config.vocab_size` entries and the trained
    /// special tokens ([`TRAINED_SPECIALS`], ids 0..=4). Deterministic for the same texts.
    pub fn train<I, S>(texts: I, config: &TextConfig) -> Result<Self, TokenizerError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let texts: Vec<String> = texts
            .into_iter()
            .map(|t| normalize_text(t.as_ref()))
            .filter(|t| !t.is_empty())
            .collect();
        if texts.is_empty() {
            return Err(TokenizerError::Train("no non-empty texts to train on".into()));
        }
        let mut inner = Tokenizer::new(BPE::default());
        inner.with_pre_tokenizer(Some(ByteLevel::new(true, true, true)));
        inner.with_decoder(Some(ByteLevel::default()));
        let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
        let specials = TRAINED_SPECIALS.iter().map(|s| AddedToken::from(*s, true)).collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(config.vocab_size)
            .min_frequency(config.min_frequency)
            .show_progress(false)
            .special_tokens(specials)
            .initial_alphabet(alphabet)
            .build()
            .into();
        inner
            .train(&mut trainer, texts.iter())
            .map_err(|e| TokenizerError::Train(e.to_string()))?;
        Self::with_lookup(inner, config.max_length)
    }

    /// Builds from the config: loads `tokenizer_path` when set, else trains on `bootstrap`.
    pub fn from_config<S: AsRef<str>>(config: &TextConfig, bootstrap: &[S]) -> Result<Self, TokenizerError> {
        match &config.tokenizer_path {
            Some(path) => Self::from_file(path, config.max_length),
            None => Self::train(bootstrap.iter().map(AsRef::as_ref), config),
        }
    }

    fn with_lookup(mut inner: Tokenizer, max_length: usize) -> Result<Self, TokenizerError> {
        // Truncation and special tokens are applied here, not by the tokenizer's own
        // post-processor, so that loaded and trained tokenizers behave alike.
        let _ = inner.with_truncation(None);
        inner.with_padding(None);
        let find = |names: &'static [&'static str], inner: &Tokenizer| names.iter().find_map(|n| inner.token_to_id(n));
        if find(IMG_NAMES, &inner).is_none() {
            inner.add_special_tokens(&[AddedToken::from("[IMG]", true)]);
        }
        let get = |what: &'static str, names: &'static [&'static str]| {
            find(names, &inner).ok_or(TokenizerError::MissingSpecial(what, names))
        };
        let special = SpecialTokens {
            pad: get("pad", PAD_NAMES)?,
            cls: get("cls", CLS_NAMES)?,
            sep: get("sep", SEP_NAMES)?,
            mask: get("mask", MASK_NAMES)?,
            img: get("img", IMG_NAMES)?,
        };
        Ok(Self { inner, special, max_length: max_length.max(3) })
    }

    /// The special token ids.
    pub fn special(&self) -> SpecialTokens {
        self.special
    }

    /// Vocabulary size including added tokens (the model's embedding rows).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Largest sequence length, `[CLS]` and `[SEP]` included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// `[CLS] w1 .. wn [SEP]` for the whitespace-normalised text, truncated to `max_length`.
    pub fn encode(&self, text: &str) -> Result<TokenSequence, TokenizerError> {
        let text = normalize_text(text);
        let encoding = self
            .inner
            .encode_fast(text.as_str(), false)
            .map_err(|e| TokenizerError::Encode(e.to_string()))?;
        let body = encoding.get_ids();
        let keep = body.len().min(self.max_length - 2);
        let mut ids = Vec::with_capacity(keep + 2);
        ids.push(self.special.cls);
        ids.extend_from_slice(&body[..keep]);
        ids.push(self.special.sep);
        Ok(TokenSequence { ids, text })
    }

    /// Token ids back to text (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, true).map_err(|e| TokenizerError::Encode(e.to_string()))
    }

    /// The tokenizer as a `tokenizer.json` string (for checkpoints and `checkpoint export`).
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        self.inner.to_string(false).map_err(|e| TokenizerError::Serialize(e.to_string()))
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<String> {
        let base = [
            "a red car parked on the street",
            "two dogs playing in the park",
            "a man riding a horse on the beach",
            "the cat sleeps on a blue sofa",
            "three children eating ice cream",
        ];
        (0..20).flat_map(|i| base.iter().map(move |s| format!("{s} {i}"))).collect()
    }

    fn config() -> TextConfig {
        TextConfig { vocab_size: 400, max_length: 8, min_frequency: 2, ..TextConfig::default() }
    }

    #[test]
    fn trained_tokenizer_has_fixed_specials_and_wraps_text() {
        let tok = TextTokenizer::train(corpus(), &config()).expect("trains");
        assert_eq!(tok.special(), SpecialTokens { pad: 0, cls: 1, sep: 2, mask: 3, img: 4 });
        assert!(tok.vocab_size() <= 400 && tok.vocab_size() > 261, "{}", tok.vocab_size());
        let seq = tok.encode("  a red   car ").expect("encodes");
        assert_eq!(seq.text, "a red car");
        assert_eq!(seq.ids.first(), Some(&1));
        assert_eq!(seq.ids.last(), Some(&2));
        assert!(seq.ids[1..seq.ids.len() - 1].iter().all(|&id| id > 4));
        assert_eq!(tok.decode(&seq.ids).expect("decodes").trim(), "a red car");
        // Unseen characters still encode (byte-level), and long texts are truncated.
        let long = tok.encode("ünïcödé 🙂 words that go on and on and on and on").expect("encodes");
        assert_eq!(long.ids.len(), 8);
        assert_eq!(long.ids[7], 2);
    }

    #[test]
    fn serialises_and_restores_identically() {
        let tok = TextTokenizer::train(corpus(), &config()).expect("trains");
        let json = tok.to_json().expect("serialises");
        let back = TextTokenizer::from_json(&json, 8).expect("parses");
        assert_eq!(back.special(), tok.special());
        assert_eq!(back.vocab_size(), tok.vocab_size());
        for text in ["a blue horse", "two cats 19"] {
            assert_eq!(back.encode(text).expect("ok").ids, tok.encode(text).expect("ok").ids);
        }
        // Same texts, same tokenizer.
        let again = TextTokenizer::train(corpus(), &config()).expect("trains");
        assert_eq!(again.to_json().expect("serialises"), json);
        assert!(TextTokenizer::from_json("{not json", 8).is_err());
        assert!(TextTokenizer::train(Vec::<String>::new(), &config()).is_err());
    }

    #[test]
    fn loaded_tokenizer_looks_up_specials_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokenizer.json");
        // A RoBERTa-style tokenizer: <s> </s> <pad> <mask>, no [IMG].
        let mut roberta = Tokenizer::new(BPE::default());
        roberta.with_pre_tokenizer(Some(ByteLevel::default()));
        let alphabet: HashSet<char> = ByteLevel::alphabet().into_iter().collect();
        let specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"].iter().map(|s| AddedToken::from(*s, true)).collect();
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(300)
            .special_tokens(specials)
            .initial_alphabet(alphabet)
            .show_progress(false)
            .build()
            .into();
        roberta.train(&mut trainer, corpus().iter()).expect("trains");
        roberta.save(&path, false).expect("saves");
        let tok = TextTokenizer::from_file(&path, 16).expect("loads");
        let s = tok.special();
        assert_eq!((s.cls, s.pad, s.sep, s.mask), (0, 1, 2, 4));
        assert_eq!(tok.inner().id_to_token(s.img).as_deref(), Some("[IMG]"));
        let seq = tok.encode("a red car").expect("encodes");
        assert_eq!((seq.ids[0], *seq.ids.last().expect("non-empty")), (0, 2));
        assert!(TextTokenizer::from_file(&dir.path().join("missing.json"), 16).is_err());
    }
}
