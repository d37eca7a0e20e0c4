//! Checkpoint store (being written).
