//! Conversion of ingest's samples (and replay items) into the model's examples.

use unimod_ingest::record::{ObjectSequence, Sample};
use unimod_model::{Example, VisualInput};

use super::replay::ReplayItem;

/// The model's view of an object sequence.
pub fn visual_input(o: &ObjectSequence) -> VisualInput {
    VisualInput {
        dim: o.dim,
        features: o.features.clone(),
        locations: o.locations.clone(),
        class_probs: o.class_probs.as_ref().map(|c| (c.classes, c.probs.clone())),
    }
}

/// A fresh sample as a training example (CMCL extras are added later).
pub fn sample_example(s: &Sample) -> Example {
    Example {
        text: s.text.as_ref().map(|t| t.ids.clone()),
        image: s.image.as_ref().map(visual_input),
        ..Example::default()
    }
}

/// A replayed item as a training example.
pub fn replay_example(item: &ReplayItem) -> Example {
    Example {
        text: item.text.as_ref().map(|t| t.ids.clone()),
        image: item.image.as_ref().map(visual_input),
        ..Example::default()
    }
}
