//! Training and evaluation inputs as plain CPU data, independent of any backend.

/// One image as an object sequence: row 0 is the global `[IMG]` entry (given by ingest),
/// rows 1.. are regions.
#[derive(Debug, Clone, PartialEq)]
pub struct VisualInput {
    /// Width of one feature row.
    pub dim: usize,
    /// Row-major features, `rows x dim`.
    pub features: Vec<f32>,
    /// One 5-d location per row: `(x1/W, y1/H, x2/W, y2/H, area/(W*H))`.
    pub locations: Vec<[f32; 5]>,
    /// Detector class distributions, `(classes, rows x classes)`, when a detector gave them.
    pub class_probs: Option<(usize, Vec<f32>)>,
}

impl VisualInput {
    /// Number of rows (global entry included).
    pub fn rows(&self) -> usize {
        self.locations.len()
    }

    /// Why this input cannot be used with `feature_dim`, if it cannot.
    pub fn problem(&self, feature_dim: usize) -> Option<String> {
        let rows = self.rows();
        if rows == 0 {
            return Some("no visual rows".into());
        }
        if self.dim != feature_dim {
            return Some(format!(
                "feature width {} differs from the model's {}",
                self.dim, feature_dim
            ));
        }
        if self.features.len() != rows * self.dim {
            return Some(format!(
                "{} feature values for {} rows of width {}",
                self.features.len(),
                rows,
                self.dim
            ));
        }
        if let Some((classes, probs)) = &self.class_probs {
            if *classes == 0 || probs.len() != rows * classes {
                return Some("class distributions do not match the rows".into());
            }
        }
        None
    }

    /// Feature row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }
}

/// One training example. Text ids already include `[CLS] ... [SEP]`.
///
/// Text only is a text-only record, image only an image-only record, both a pair.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Example {
    /// Token ids of the text or caption.
    pub text: Option<Vec<u32>>,
    /// The image.
    pub image: Option<VisualInput>,
    /// Rewritten captions (pairs only): CMCL hard negatives and ITM negatives.
    pub hard_negatives: Vec<Vec<u32>>,
    /// Retrieved text-only positives for a pair (added to the CMCL numerator).
    pub extra_texts: Vec<Vec<u32>>,
    /// Retrieved image-only positives for a pair (added to the CMCL numerator).
    pub extra_images: Vec<VisualInput>,
}

/// The kind of record an example is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExampleKind {
    /// Text only.
    Text,
    /// Image only.
    Image,
    /// Image and caption.
    Pair,
}

impl Example {
    /// The kind of record, or `None` for an example with neither text nor image.
    pub fn kind(&self) -> Option<ExampleKind> {
        match (&self.text, &self.image) {
            (Some(_), Some(_)) => Some(ExampleKind::Pair),
            (Some(_), None) => Some(ExampleKind::Text),
            (None, Some(_)) => Some(ExampleKind::Image),
            (None, None) => None,
        }
    }
}
