//! One group of planned rows as padded backend tensors, with lengths rounded up to the
//! configured buckets so that a GPU backend sees few distinct shapes.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::attention_mask::{full_bias, padding_bias, MaskKind, MaskRow};
use crate::config::ModelConfig;
use crate::plan::Group;
use crate::layout::GroupShape;

/// Padded tensors of one encoder call.
#[derive(Debug, Clone)]
pub(crate) struct GroupTensors<B: Backend> {
    /// Rows in the call.
    pub(crate) rows: usize,
    /// Padded visual length (0 without images).
    pub(crate) n: usize,
    /// Padded text length (0 without texts).
    pub(crate) t: usize,
    /// Token ids, `[rows, t]`.
    pub(crate) ids: Option<Tensor<B, 2, Int>>,
    /// Visual features, `[rows, n, feature_dim]`.
    pub(crate) features: Option<Tensor<B, 3>>,
    /// Visual locations, `[rows, n, 5]`.
    pub(crate) locations: Option<Tensor<B, 3>>,
    mask_rows: Vec<MaskRow>,
    full_mask: bool,
    /// `[rows, n]` key-padding bias made on the device ([`GroupTensors::visual_only`]),
    /// used instead of `mask_rows`.
    row_bias: Option<Tensor<B, 2>>,
    device: B::Device,
}

impl<B: Backend> GroupTensors<B> {
    /// Pads `group` to bucketed lengths and uploads it to `device`.
    #[cfg(test)]
    pub(crate) fn new(group: &Group, config: &ModelConfig, settings: &crate::settings::TrainSettings, device: &B::Device) -> Self {
        Self::with_shape(group, GroupShape::of(group, config, settings), config, device)
    }

    /// Pads `group` to `shape` (which must hold it: at least its rows and lengths) and
    /// uploads it. Padding rows hold one visible pad token and/or one zero visual row, so
    /// that every row attends to something; nothing reads their outputs.
    pub(crate) fn with_shape(group: &Group, shape: GroupShape, config: &ModelConfig, device: &B::Device) -> Self {
        let GroupShape { rows, n, t, full_mask } = shape;
        debug_assert!(rows >= group.rows(), "{rows} < {}", group.rows());
        let ids = (t > 0).then(|| {
            let mut data = vec![config.special.pad as i64; rows * t];
            for (r, text) in group.texts.iter().enumerate() {
                for (i, &id) in text.iter().take(t).enumerate() {
                    data[r * t + i] = id as i64;
                }
            }
            Tensor::from_data(TensorData::new(data, [rows, t]), device)
        });
        let (features, locations) = if n > 0 {
            let f = config.feature_dim;
            let mut feats = vec![0.0f32; rows * n * f];
            let mut locs = vec![0.0f32; rows * n * 5];
            for (r, image) in group.images.iter().enumerate() {
                let k = image.rows().min(n);
                feats[r * n * f..r * n * f + k * f].copy_from_slice(&image.features[..k * f]);
                for (i, loc) in image.locations.iter().take(k).enumerate() {
                    locs[(r * n + i) * 5..(r * n + i + 1) * 5].copy_from_slice(loc);
                }
            }
            (
                Some(Tensor::from_data(TensorData::new(feats, [rows, n, f]), device)),
                Some(Tensor::from_data(TensorData::new(locs, [rows, n, 5]), device)),
            )
        } else {
            (None, None)
        };
        let mut mask_rows = group.mask_rows();
        mask_rows.resize(
            rows,
            MaskRow {
                visual: usize::from(n > 0),
                text: usize::from(t > 0),
                kind: MaskKind::Bidirectional,
            },
        );
        Self {
            rows,
            n,
            t,
            ids,
            features,
            locations,
            mask_rows,
            full_mask,
            row_bias: None,
            device: device.clone(),
        }
    }

    /// A group of bidirectional visual-only rows already on the device, with their key
    /// padding given as a `[rows, n]` bias (0 on a row's regions, [`crate::attention_mask::BLOCKED`]
    /// past them): rows whose lengths only the device knows (retrieved images,
    /// [`crate::memory`]).
    pub(crate) fn visual_only(features: Tensor<B, 3>, locations: Tensor<B, 3>, row_bias: Tensor<B, 2>) -> Self {
        let [rows, n, _] = features.dims();
        let device = features.device();
        Self {
            rows,
            n,
            t: 0,
            ids: None,
            features: Some(features),
            locations: Some(locations),
            mask_rows: Vec::new(),
            full_mask: false,
            row_bias: Some(row_bias),
            device,
        }
    }

    /// Attention bias over the joint sequence `[visual; text]`: `[rows, 1, 1, n + t]` when
    /// every row is bidirectional, `[rows, 1, n + t, n + t]` otherwise.
    pub(crate) fn joint_bias(&self) -> Tensor<B, 4> {
        if let Some(bias) = &self.row_bias {
            return bias.clone().reshape([self.rows, 1, 1, self.n]);
        }
        self.bias_of(&self.mask_rows, self.n, self.t, self.full_mask)
    }

    /// Self-attention bias of the text part alone (ViLBERT's text stream).
    pub(crate) fn text_bias(&self) -> Tensor<B, 4> {
        let rows: Vec<MaskRow> = self.mask_rows.iter().map(|r| MaskRow { visual: 0, ..*r }).collect();
        self.bias_of(&rows, 0, self.t, self.full_mask)
    }

    /// Key-padding bias of the visual part alone, `[rows, 1, 1, n]`.
    pub(crate) fn visual_keys(&self) -> Tensor<B, 4> {
        if let Some(bias) = &self.row_bias {
            return bias.clone().reshape([self.rows, 1, 1, self.n]);
        }
        let rows: Vec<MaskRow> = self
            .mask_rows
            .iter()
            .map(|r| MaskRow {
                text: 0,
                kind: MaskKind::Bidirectional,
                ..*r
            })
            .collect();
        self.bias_of(&rows, self.n, 0, false)
    }

    /// Key-padding bias of the text part alone, `[rows, 1, 1, t]`.
    pub(crate) fn text_keys(&self) -> Tensor<B, 4> {
        let rows: Vec<MaskRow> = self
            .mask_rows
            .iter()
            .map(|r| MaskRow {
                visual: 0,
                kind: MaskKind::Bidirectional,
                ..*r
            })
            .collect();
        self.bias_of(&rows, 0, self.t, false)
    }

    /// `[rows, 1, 1, l]` key-padding bias, or `[rows, 1, l, l]` when `full` (one shape per
    /// group shape, whatever the rows' rules).
    fn bias_of(&self, rows: &[MaskRow], n: usize, t: usize, full: bool) -> Tensor<B, 4> {
        let l = n + t;
        let b = rows.len();
        if !full {
            debug_assert!(rows.iter().all(|r| r.kind == MaskKind::Bidirectional));
            let data = padding_bias(rows, n, t);
            Tensor::<B, 2>::from_data(TensorData::new(data, [b, l]), &self.device).reshape([b, 1, 1, l])
        } else {
            let data = full_bias(rows, n, t);
            Tensor::<B, 3>::from_data(TensorData::new(data, [b, l, l]), &self.device).reshape([b, 1, l, l])
        }
    }
}

/// Hidden states of one encoder call, flattened so that rows can be gathered by index.
#[derive(Debug, Clone)]
pub(crate) struct Encoded<B: Backend> {
    /// Visual states, `[rows * n, visual_hidden]`.
    pub(crate) visual: Option<Tensor<B, 2>>,
    /// Text states, `[rows * t, text_hidden]`.
    pub(crate) text: Option<Tensor<B, 2>>,
    /// Padded visual length (row stride of `visual`).
    pub(crate) n: usize,
    /// Padded text length (row stride of `text`).
    pub(crate) t: usize,
}
