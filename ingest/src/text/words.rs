//! Word splitting shared by the text rewriter and the TF-IDF window: words are maximal runs
//! of alphanumeric characters (apostrophes inside a word are kept), compared lowercase.

/// A word in a text: its byte range and lowercase form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordSpan {
    /// Byte offset of the first character.
    pub start: usize,
    /// Byte offset one past the last character.
    pub end: usize,
    /// The word in lowercase.
    pub lower: String,
}

/// Function words that carry no content (ignored by TF-IDF; never rewritten as objects).
pub const STOPWORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "of", "to", "in", "on", "at", "by", "for", "with", "from", "is", "are",
    "was", "were", "be", "been", "it", "its", "this", "that", "these", "those", "there", "their", "his", "her", "as",
    "into", "while", "who", "which", "has", "have", "some", "very", "up", "down", "out", "over", "off", "not", "no",
];

/// True for a stop word (input lowercase).
pub fn is_stopword(lower: &str) -> bool {
    STOPWORDS.contains(&lower)
}

/// The words of `text` with their byte ranges.
pub fn word_spans(text: &str) -> Vec<WordSpan> {
    let mut spans = Vec::new();
    let mut start: Option<usize> = None;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let inner_apostrophe =
            c == '\'' && start.is_some() && chars.peek().is_some_and(|&(_, n)| n.is_alphanumeric());
        if c.is_alphanumeric() || inner_apostrophe {
            start.get_or_insert(i);
        } else if let Some(s) = start.take() {
            spans.push(WordSpan { start: s, end: i, lower: text[s..i].to_lowercase() });
        }
    }
    if let Some(s) = start {
        spans.push(WordSpan { start: s, end: text.len(), lower: text[s..].to_lowercase() });
    }
    spans
}

/// Lowercase words of `text` that are not stop words.
pub fn content_words(text: &str) -> impl Iterator<Item = String> + '_ {
    word_spans(text).into_iter().map(|w| w.lower).filter(|w| !is_stopword(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_words_with_ranges() {
        let text = "A dog's ball, 3 Cats!";
        let spans = word_spans(text);
        let words: Vec<&str> = spans.iter().map(|s| &text[s.start..s.end]).collect();
        assert_eq!(words, vec!["A", "dog's", "ball", "3", "Cats"]);
        assert_eq!(spans[4].lower, "cats");
        assert_eq!(content_words(text).collect::<Vec<_>>(), vec!["dog's", "ball", "3", "cats"]);
    }
}
