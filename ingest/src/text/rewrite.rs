//! Hard-negative captions for cross-modal contrastive learning (UNIMO's text rewriting, done
//! by rules instead of a scene-graph parser): replace one object, attribute, number or
//! relation word of a caption by another word of the same kind that cannot mean the same
//! (synonyms and hypernyms such as grey/gray, big/large, man/person are never exchanged).
//!
//! Seed word lists give each kind a start; [`TextRewriter::observe`] learns more words from
//! the stream with simple context rules (a word after a determiner, number or attribute and
//! before a relation word or the end is an object; an unknown word between a determiner or
//! number and a known object is an attribute). A candidate becomes usable after `min_count`
//! sightings; every table is bounded. Rewriting is deterministic given the seed and the state.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;
use super::words::{is_stopword, word_spans, WordSpan};

/// The kind of a replaceable word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WordKind {
    /// A thing: `dog`, `car`, `table`.
    Object,
    /// A property: `red`, `small`, `wooden`.
    Attribute,
    /// A count: `two`, `3`.
    Number,
    /// A relation: `on`, `under`, `behind`, `holding`.
    Relation,
}

impl WordKind {
    const ALL: [WordKind; 4] = [WordKind::Object, WordKind::Attribute, WordKind::Number, WordKind::Relation];

    fn index(self) -> usize {
        match self {
            WordKind::Object => 0,
            WordKind::Attribute => 1,
            WordKind::Number => 2,
            WordKind::Relation => 3,
        }
    }
}

const SEED_OBJECTS: &[&str] = &[
    "man", "woman", "person", "child", "boy", "girl", "people", "dog", "cat", "horse", "bird", "cow", "sheep",
    "car", "bus", "truck", "bicycle", "motorcycle", "train", "boat", "plane", "table", "chair", "sofa", "bed",
    "tree", "flower", "street", "road", "building", "house", "window", "door", "ball", "frisbee", "kite", "pizza",
    "cake", "plate", "cup", "bottle", "phone", "laptop", "book", "clock", "umbrella", "bag", "hat", "shirt",
    "beach", "field", "water", "mountain", "sky", "snow", "grass", "wall", "room", "kitchen", "city", "park",
];
const SEED_ATTRIBUTES: &[&str] = &[
    "red", "blue", "green", "yellow", "white", "black", "brown", "gray", "grey", "orange", "pink", "purple",
    "small", "large", "big", "little", "tall", "short", "young", "old", "new", "wooden", "metal", "empty",
    "busy", "wet", "dry", "sunny", "dark", "bright", "open", "closed", "happy", "long",
];
const SEED_NUMBERS: &[&str] = &[
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "several", "many", "few",
];
const SEED_RELATIONS: &[&str] = &[
    "on", "in", "under", "above", "behind", "beside", "near", "next", "inside", "outside", "holding", "riding",
    "wearing", "carrying", "eating", "watching", "playing", "sitting", "standing", "walking", "lying", "across",
    "along", "against", "through", "toward", "below", "between",
];
/// Words of one kind that can describe the same thing (synonyms, and a hypernym with its
/// hyponyms). A replacement never shares a class with the word it replaces: "a big dog" ->
/// "a large dog" or "a man" -> "a person" would be a hard negative that is true of the image.
/// Two words are exchangeable only when no class holds both (man and woman share none).
/// The classes cover the seed lists; a word learned from the stream and listed nowhere here is
/// exchangeable with every other word of its kind.
const SAME_MEANING: &[&[&str]] = &[
    // Objects.
    &["person", "man", "people"],
    &["person", "woman", "people"],
    &["person", "child", "boy", "people"],
    &["person", "child", "girl", "people"],
    &["street", "road"],
    &["building", "house"],
    &["room", "kitchen"],
    &["field", "grass"],
    // Attributes.
    &["gray", "grey"],
    &["big", "large", "tall", "long"],
    &["small", "little", "short"],
    &["young", "new"],
    &["dark", "black"],
    &["bright", "sunny"],
    // Numbers.
    &["several", "many", "few"],
    // Relations.
    &["near", "beside", "next", "by"],
    &["in", "inside"],
    &["under", "below", "beneath"],
    &["on", "above"],
    &["holding", "carrying"],
    &["across", "through", "along"],
];

/// Whether `a` and `b` (lowercase) can mean the same thing: equal, or in one class of
/// [`SAME_MEANING`].
pub fn same_meaning(a: &str, b: &str) -> bool {
    a == b || SAME_MEANING.iter().any(|class| class.contains(&a) && class.contains(&b))
}

const DETERMINERS: &[&str] = &["a", "an", "the", "some", "this", "that", "these", "those", "his", "her", "their"];

/// Limits of the learned vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewriterLimits {
    /// Sightings before a learned word is used as a replacement.
    pub min_count: u32,
    /// Largest number of words per kind (seeds included).
    pub max_words_per_kind: usize,
    /// Largest number of candidate words being counted.
    pub max_candidates: usize,
}

impl Default for RewriterLimits {
    fn default() -> Self {
        Self { min_count: 3, max_words_per_kind: 5000, max_candidates: 50_000 }
    }
}

/// One rewritten caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// The caption with one word replaced.
    pub text: String,
    /// Kind of the replaced word.
    pub kind: WordKind,
    /// The word replaced (lowercase).
    pub original: String,
    /// The word put in its place (lowercase).
    pub replacement: String,
}

/// The rule-based rewriter with its learned vocabulary (serialisable for checkpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextRewriter {
    limits: RewriterLimits,
    /// Words per kind (index = `WordKind::index`), in the order they became known.
    vocab: [Vec<String>; 4],
    /// Word -> kind, for every word in `vocab`.
    kinds: HashMap<String, WordKind>,
    /// Candidate word -> (kind, sightings).
    candidates: HashMap<String, (WordKind, u32)>,
}

impl Default for TextRewriter {
    fn default() -> Self {
        Self::new(RewriterLimits::default())
    }
}

fn is_digits(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_digit())
}

fn plain_word(word: &str) -> bool {
    word.len() >= 2 && word.len() <= 24 && word.chars().all(|c| c.is_alphabetic())
}

impl TextRewriter {
    /// A rewriter knowing only the seed words.
    pub fn new(limits: RewriterLimits) -> Self {
        let mut rewriter = Self { limits, vocab: Default::default(), kinds: HashMap::new(), candidates: HashMap::new() };
        for (kind, words) in [
            (WordKind::Object, SEED_OBJECTS),
            (WordKind::Attribute, SEED_ATTRIBUTES),
            (WordKind::Number, SEED_NUMBERS),
            (WordKind::Relation, SEED_RELATIONS),
        ] {
            for w in words {
                rewriter.learn(w, kind);
            }
        }
        rewriter
    }

    fn learn(&mut self, word: &str, kind: WordKind) {
        if self.kinds.contains_key(word) || self.vocab[kind.index()].len() >= self.limits.max_words_per_kind {
            return;
        }
        self.kinds.insert(word.to_string(), kind);
        self.vocab[kind.index()].push(word.to_string());
    }

    /// The kind of a (lowercase) word, if known. Digit strings are numbers.
    pub fn kind_of(&self, lower: &str) -> Option<WordKind> {
        if is_digits(lower) {
            return Some(WordKind::Number);
        }
        self.kinds.get(lower).copied()
    }

    /// Number of known words of a kind.
    pub fn known_words(&self, kind: WordKind) -> usize {
        self.vocab[kind.index()].len()
    }

    fn sighting(&mut self, word: &str, kind: WordKind) {
        if !plain_word(word) || is_stopword(word) || self.kinds.contains_key(word) {
            return;
        }
        if !self.candidates.contains_key(word) && self.candidates.len() >= self.limits.max_candidates {
            return;
        }
        let entry = self.candidates.entry(word.to_string()).or_insert((kind, 0));
        if entry.0 != kind {
            // Seen in contexts of different kinds: ambiguous, start over with the new one.
            *entry = (kind, 0);
        }
        entry.1 += 1;
        if entry.1 >= self.limits.min_count {
            self.candidates.remove(word);
            self.learn(word, kind);
        }
    }

    /// Learns object and attribute words from one text of the stream.
    pub fn observe(&mut self, text: &str) {
        let words: Vec<String> = word_spans(text).into_iter().map(|w| w.lower).collect();
        for i in 0..words.len() {
            let word = words[i].as_str();
            if self.kinds.contains_key(word) {
                continue;
            }
            let prev = i.checked_sub(1).map(|p| words[p].as_str());
            let next = words.get(i + 1).map(String::as_str);
            let prev_opens = prev.is_some_and(|p| {
                DETERMINERS.contains(&p)
                    || matches!(self.kind_of(p), Some(WordKind::Number) | Some(WordKind::Attribute))
            });
            if !prev_opens {
                continue;
            }
            let next_kind = next.and_then(|n| self.kind_of(n));
            if next_kind == Some(WordKind::Object) {
                self.sighting(word, WordKind::Attribute);
            } else if next.is_none() || next_kind == Some(WordKind::Relation) || next.is_some_and(is_stopword) {
                self.sighting(word, WordKind::Object);
            }
        }
    }

    /// One hard negative of `text`, chosen by `seed`: a replaceable word swapped for another
    /// word of the same kind and a different meaning ([`same_meaning`]). `None` when the text has no replaceable word.
    pub fn rewrite(&self, text: &str, seed: u64) -> Option<Rewrite> {
        self.rewrites(text, 1, seed).into_iter().next()
    }

    /// Up to `n` distinct hard negatives of `text`, deterministic given `seed` and the state.
    pub fn rewrites(&self, text: &str, n: usize, seed: u64) -> Vec<Rewrite> {
        let spans: Vec<(WordSpan, WordKind)> = word_spans(text)
            .into_iter()
            .filter_map(|s| {
                let kind = self.kind_of(&s.lower)?;
                // Numbers need an alternative; digit strings always have one.
                (self.vocab[kind.index()].len() > 1 || kind == WordKind::Number).then_some((s, kind))
            })
            .collect();
        let mut out: Vec<Rewrite> = Vec::new();
        if spans.is_empty() || n == 0 {
            return out;
        }
        let mut rng = SplitMix64::new(seed);
        for _ in 0..n.saturating_mul(4) {
            if out.len() >= n {
                break;
            }
            let (span, kind) = &spans[rng.below(spans.len())];
            let replacement = self.pick_replacement(&span.lower, *kind, &mut rng);
            let Some(replacement) = replacement else { continue };
            let original = &text[span.start..span.end];
            let cased = match_case(original, &replacement);
            let rewritten = format!("{}{}{}", &text[..span.start], cased, &text[span.end..]);
            if out.iter().any(|r| r.text == rewritten) {
                continue;
            }
            out.push(Rewrite { text: rewritten, kind: *kind, original: span.lower.clone(), replacement });
        }
        out
    }

    fn pick_replacement(&self, word: &str, kind: WordKind, rng: &mut SplitMix64) -> Option<String> {
        if kind == WordKind::Number && is_digits(word) {
            let value: u64 = word.parse().unwrap_or(0);
            let delta = 1 + rng.below(5) as u64;
            let other = if value > delta && rng.below(2) == 0 { value - delta } else { value + delta };
            return Some(other.to_string());
        }
        let words = &self.vocab[kind.index()];
        if words.len() < 2 {
            return None;
        }
        // Any word of the kind that cannot mean the same: rejection sampling among the others
        // (the classes are small, so a few draws suffice), then a scan as a fallback.
        for _ in 0..16 {
            let candidate = &words[rng.below(words.len())];
            if !same_meaning(word, candidate) {
                return Some(candidate.clone());
            }
        }
        let others: Vec<&String> = words.iter().filter(|w| !same_meaning(word, w)).collect();
        (!others.is_empty()).then(|| others[rng.below(others.len())].clone())
    }

    /// Every kind with its known-word count (for logs).
    pub fn summary(&self) -> [(WordKind, usize); 4] {
        WordKind::ALL.map(|k| (k, self.known_words(k)))
    }
}

/// `replacement` with the capitalisation of `original` (all caps, or a capital first letter).
fn match_case(original: &str, replacement: &str) -> String {
    let letters: Vec<char> = original.chars().filter(|c| c.is_alphabetic()).collect();
    if letters.len() > 1 && letters.iter().all(|c| c.is_uppercase()) {
        return replacement.to_uppercase();
    }
    if original.chars().next().is_some_and(char::is_uppercase) {
        let mut chars = replacement.chars();
        return chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default();
    }
    replacement.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_one_word_of_the_same_kind() {
        let rewriter = TextRewriter::default();
        let text = "Two dogs playing on the red sofa";
        let rewrites = rewriter.rewrites(text, 5, 42);
        assert_eq!(rewrites.len(), 5);
        for r in &rewrites {
            assert_ne!(r.text, text);
            assert_ne!(r.original, r.replacement);
            assert_eq!(rewriter.kind_of(&r.replacement), Some(r.kind), "{r:?}");
            assert_eq!(rewriter.kind_of(&r.original), Some(r.kind), "{r:?}");
            // Exactly one word differs.
            let a: Vec<&str> = text.split(' ').collect();
            let b: Vec<&str> = r.text.split(' ').collect();
            assert_eq!(a.len(), b.len());
            assert_eq!(a.iter().zip(&b).filter(|(x, y)| x != y).count(), 1, "{r:?}");
        }
        // Deterministic given the seed; different seeds explore different rewrites.
        assert_eq!(rewriter.rewrites(text, 5, 42), rewrites);
        let other: Vec<String> = (0..20).filter_map(|s| rewriter.rewrite(text, s)).map(|r| r.text).collect();
        let distinct: std::collections::HashSet<&String> = other.iter().collect();
        assert!(distinct.len() > 5);
        assert!(rewriter.rewrite("hmm xyzzy", 1).is_none());
    }

    #[test]
    fn digits_and_case_are_handled() {
        let rewriter = TextRewriter::default();
        let r = rewriter.rewrite("12", 3).expect("number rewrite");
        assert_eq!(r.kind, WordKind::Number);
        assert_ne!(r.text, "12");
        assert!(r.text.parse::<u64>().is_ok());
        assert_eq!(match_case("Dog", "cat"), "Cat");
        assert_eq!(match_case("DOG", "cat"), "CAT");
        assert_eq!(match_case("dog", "cat"), "cat");
    }

    #[test]
    fn learns_objects_and_attributes_from_the_stream() {
        let mut rewriter = TextRewriter::new(RewriterLimits { min_count: 2, ..RewriterLimits::default() });
        assert_eq!(rewriter.kind_of("giraffe"), None);
        assert_eq!(rewriter.kind_of("spotted"), None);
        rewriter.observe("a giraffe under a tree");
        assert_eq!(rewriter.kind_of("giraffe"), None, "one sighting is not enough");
        rewriter.observe("two spotted dog near the giraffe");
        rewriter.observe("the giraffe");
        assert_eq!(rewriter.kind_of("giraffe"), Some(WordKind::Object));
        rewriter.observe("a spotted cat");
        assert_eq!(rewriter.kind_of("spotted"), Some(WordKind::Attribute));
        // Learned words are used as replacements.
        let found = (0..200).filter_map(|s| rewriter.rewrite("a dog", s)).any(|r| r.replacement == "giraffe");
        assert!(found);
        // Serialisable for checkpoints.
        let json = serde_json::to_string(&rewriter).expect("serialises");
        let back: TextRewriter = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, rewriter);
    }

    #[test]
    fn vocabulary_is_bounded() {
        let limits = RewriterLimits { min_count: 1, max_words_per_kind: SEED_OBJECTS.len() + 3, max_candidates: 5 };
        let mut rewriter = TextRewriter::new(limits);
        for i in 0..100 {
            let word: String = std::iter::repeat_n('q', 2 + i % 20).chain("zz".chars()).collect();
            rewriter.observe(&format!("the {word}{}", "x".repeat(i / 20)));
        }
        assert_eq!(rewriter.known_words(WordKind::Object), SEED_OBJECTS.len() + 3);
        let mut counting = TextRewriter::new(RewriterLimits { min_count: 100, max_words_per_kind: 10_000, max_candidates: 5 });
        for i in 0..50 {
            counting.observe(&format!("the {}", "q".repeat(2 + i % 20)));
        }
        assert_eq!(counting.candidates.len(), 5);
    }
    #[test]
    fn never_substitutes_a_word_of_the_same_meaning() {
        let rewriter = TextRewriter::default();
        let text = "a big grey man near a small house on the street with several people";
        let mut replaced = std::collections::HashSet::new();
        for seed in 0..2000 {
            for r in rewriter.rewrites(text, 3, seed) {
                assert!(
                    !same_meaning(&r.original, &r.replacement),
                    "{} -> {} means the same: {}",
                    r.original,
                    r.replacement,
                    r.text
                );
                replaced.insert(r.original.clone());
            }
        }
        // Every replaceable word was rewritten, to something else than its synonyms.
        for w in ["big", "grey", "man", "near", "small", "house", "on", "street", "several", "people"] {
            assert!(replaced.contains(w), "{w} never rewritten");
        }
        for (a, b) in [("grey", "gray"), ("big", "large"), ("man", "person"), ("small", "little"), ("under", "below")] {
            assert!(same_meaning(a, b) && same_meaning(b, a));
            for seed in 0..300 {
                for r in rewriter.rewrites(&format!("the {a} one"), 2, seed) {
                    assert_ne!(r.replacement, b, "{a} rewritten to its synonym");
                }
            }
        }
        // Words of different meaning are still exchanged (man -> woman is a real negative).
        assert!(!same_meaning("man", "woman") && !same_meaning("boy", "girl"));
        let woman = (0..500).filter_map(|s| rewriter.rewrite("a man", s)).any(|r| r.replacement == "woman");
        assert!(woman);
    }
}
