//! The built-in object sequence of MODEL.md: a multi-scale pyramid of boxes over the image
//! (scale `n` = an `n x n` grid), each box resampled by area averaging to a
//! `crop_size x crop_size` RGB patch whose normalised pixels are the region feature, plus the
//! 5-d location `(x1/W, y1/H, x2/W, y2/H, area/(W*H))`. Row 0 is the global `[IMG]` entry:
//! the mean of the region features at location `[0, 0, 1, 1, 1]`.
//!
//! Resampling uses a summed-area table, so every output pixel is an O(1) box mean whatever
//! the box size; images much larger than needed are first reduced by an integer box filter so
//! that the table stays small.

use crate::config::ImageConfig;
use crate::record::ObjectSequence;

use super::decode::RgbBuffer;

/// Per-channel mean of the pixel normalisation (ImageNet statistics, pixels in [0, 1]).
pub const PIXEL_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel standard deviation of the pixel normalisation.
pub const PIXEL_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Builds object sequences from RGB images with a fixed box pyramid and crop size.
#[derive(Debug, Clone)]
pub struct ObjectExtractor {
    scales: Vec<u32>,
    crop: u32,
}

impl ObjectExtractor {
    /// An extractor for `config.box_scales` and `config.crop_size` (assumed validated).
    pub fn new(config: &ImageConfig) -> Self {
        Self { scales: config.box_scales.clone(), crop: config.crop_size.clamp(1, 256) }
    }

    /// Width of one region feature: `3 * crop_size^2`, laid out channel-major
    /// (`c * crop^2 + y * crop + x`).
    pub fn feature_dim(&self) -> usize {
        3 * (self.crop as usize) * (self.crop as usize)
    }

    /// Number of rows of every sequence: the global row plus one per box.
    pub fn rows(&self) -> usize {
        1 + self.scales.iter().map(|&s| (s as usize) * (s as usize)).sum::<usize>()
    }

    /// The smallest image size (width, height) that still gives every box of the finest scale
    /// at least `crop_size` pixels per side: a hint for reduced-scale decoding.
    pub fn min_useful_size(&self) -> (u32, u32) {
        let finest = self.scales.iter().copied().max().unwrap_or(1);
        (finest * self.crop, finest * self.crop)
    }

    /// The object sequence of an image.
    pub fn extract(&self, image: &RgbBuffer) -> ObjectSequence {
        let (min_w, min_h) = self.min_useful_size();
        // Reduce by an integer factor while keeping at least the useful size.
        let factor = (image.width / min_w.max(1)).min(image.height / min_h.max(1)).max(1);
        let reduced;
        let source = if factor >= 2 {
            reduced = box_reduce(image, factor);
            &reduced
        } else {
            image
        };
        let table = SummedArea::new(source);
        let dim = self.feature_dim();
        let rows = self.rows();
        let mut features = vec![0f32; rows * dim];
        let mut locations = Vec::with_capacity(rows);
        locations.push([0.0, 0.0, 1.0, 1.0, 1.0]);
        let (w, h) = (source.width as usize, source.height as usize);
        let mut row = 1;
        for &n in &self.scales {
            let n = n as usize;
            let inv = 1.0 / n as f32;
            for gy in 0..n {
                for gx in 0..n {
                    locations.push([gx as f32 * inv, gy as f32 * inv, (gx + 1) as f32 * inv, (gy + 1) as f32 * inv, inv * inv]);
                    // Cell bounds in source pixels (at least one pixel each way).
                    let x0 = gx * w / n;
                    let x1 = ((gx + 1) * w / n).max(x0 + 1).min(w);
                    let y0 = gy * h / n;
                    let y1 = ((gy + 1) * h / n).max(y0 + 1).min(h);
                    let out = &mut features[row * dim..(row + 1) * dim];
                    self.crop_into(&table, (x0, y0, x1, y1), out);
                    row += 1;
                }
            }
        }
        // Global row: mean of the regions.
        let (global, regions) = features.split_at_mut(dim);
        for region in regions.chunks_exact(dim) {
            for (g, v) in global.iter_mut().zip(region) {
                *g += v;
            }
        }
        let inv_regions = 1.0 / (rows - 1).max(1) as f32;
        global.iter_mut().for_each(|g| *g *= inv_regions);
        ObjectSequence { dim, features, locations, class_probs: None }
    }

    /// Resamples the box `[x0, x1) x [y0, y1)` to `crop x crop` normalised pixels.
    fn crop_into(&self, table: &SummedArea, (x0, y0, x1, y1): (usize, usize, usize, usize), out: &mut [f32]) {
        let c = self.crop as usize;
        let plane = c * c;
        let (bw, bh) = (x1 - x0, y1 - y0);
        // Column bounds are shared by every output row.
        let mut cols = [(0usize, 0usize); 256];
        for (j, col) in cols.iter_mut().enumerate().take(c) {
            let a = x0 + j * bw / c;
            let b = (x0 + (j + 1) * bw / c).max(a + 1).min(x1);
            *col = (a, b);
        }
        let scale: [f32; 3] = std::array::from_fn(|ch| 1.0 / (255.0 * PIXEL_STD[ch]));
        let bias: [f32; 3] = std::array::from_fn(|ch| -PIXEL_MEAN[ch] / PIXEL_STD[ch]);
        for i in 0..c {
            let ya = y0 + i * bh / c;
            let yb = (y0 + (i + 1) * bh / c).max(ya + 1).min(y1);
            for (j, &(xa, xb)) in cols.iter().enumerate().take(c) {
                let sums = table.box_sum(xa, ya, xb, yb);
                let inv_count = 1.0 / ((xb - xa) * (yb - ya)) as f32;
                for ch in 0..3 {
                    out[ch * plane + i * c + j] = sums[ch] as f32 * inv_count * scale[ch] + bias[ch];
                }
            }
        }
    }
}

/// Integer box-filter reduction by `factor` (each output pixel = mean of a factor x factor
/// block; the right and bottom remainders are dropped).
fn box_reduce(image: &RgbBuffer, factor: u32) -> RgbBuffer {
    let f = factor as usize;
    let (w, h) = (image.width as usize, image.height as usize);
    let (ow, oh) = (w / f, h / f);
    let mut acc = vec![0u32; ow * 3];
    let mut data = Vec::with_capacity(ow * oh * 3);
    let div = (f * f) as u32;
    for oy in 0..oh {
        acc.iter_mut().for_each(|a| *a = 0);
        for y in oy * f..(oy + 1) * f {
            let line = &image.data[y * w * 3..(y * w + ow * f) * 3];
            for (ox, block) in line.chunks_exact(f * 3).enumerate() {
                for px in block.chunks_exact(3) {
                    acc[ox * 3] += u32::from(px[0]);
                    acc[ox * 3 + 1] += u32::from(px[1]);
                    acc[ox * 3 + 2] += u32::from(px[2]);
                }
            }
        }
        data.extend(acc.iter().map(|&a| ((a + div / 2) / div) as u8));
    }
    RgbBuffer { width: ow as u32, height: oh as u32, data }
}

/// Summed-area table with one leading zero row and column: `at(x, y)` is the per-channel sum
/// of the pixels in `[0, x) x [0, y)`.
struct SummedArea {
    stride: usize,
    sums: Vec<u64>,
}

impl SummedArea {
    fn new(image: &RgbBuffer) -> Self {
        let (w, h) = (image.width as usize, image.height as usize);
        let stride = (w + 1) * 3;
        let mut sums = vec![0u64; stride * (h + 1)];
        for y in 0..h {
            let src = &image.data[y * w * 3..(y + 1) * w * 3];
            let (prev, cur) = sums[y * stride..(y + 2) * stride].split_at_mut(stride);
            let mut run = [0u64; 3];
            for x in 0..w {
                for ch in 0..3 {
                    run[ch] += u64::from(src[x * 3 + ch]);
                    cur[(x + 1) * 3 + ch] = prev[(x + 1) * 3 + ch] + run[ch];
                }
            }
        }
        Self { stride, sums }
    }

    #[inline]
    fn at(&self, x: usize, y: usize, ch: usize) -> u64 {
        self.sums[y * self.stride + x * 3 + ch]
    }

    #[inline]
    fn box_sum(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> [u64; 3] {
        std::array::from_fn(|ch| self.at(x1, y1, ch) + self.at(x0, y0, ch) - self.at(x0, y1, ch) - self.at(x1, y0, ch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(scales: Vec<u32>, crop: u32) -> ImageConfig {
        ImageConfig { box_scales: scales, crop_size: crop, ..ImageConfig::default() }
    }

    fn normalised(v: u8, ch: usize) -> f32 {
        normalised_f(f32::from(v), ch)
    }

    fn normalised_f(v: f32, ch: usize) -> f32 {
        (v / 255.0 - PIXEL_MEAN[ch]) / PIXEL_STD[ch]
    }

    #[test]
    fn default_pyramid_has_67_rows() {
        let ex = ObjectExtractor::new(&ImageConfig::default());
        let img = RgbBuffer { width: 160, height: 120, data: vec![100; 160 * 120 * 3] };
        let seq = ex.extract(&img);
        assert_eq!(seq.len(), 67);
        assert_eq!(seq.dim, 768);
        assert_eq!(seq.features.len(), 67 * 768);
        assert!(seq.features.iter().all(|v| v.is_finite()));
        // A flat image gives the same normalised value everywhere in a channel.
        for ch in 0..3 {
            let expected = normalised(100, ch);
            for row in seq.features.chunks_exact(768) {
                for v in &row[ch * 256..(ch + 1) * 256] {
                    assert!((v - expected).abs() < 1e-5);
                }
            }
        }
        // Locations of the 6x6 grid's last cell and areas summing to 1 per scale.
        let last = seq.locations[66];
        assert!((last[0] - 5.0 / 6.0).abs() < 1e-6 && (last[2] - 1.0).abs() < 1e-6);
        let area: f32 = seq.locations[1..].iter().map(|l| l[4]).sum();
        assert!((area - 5.0).abs() < 1e-4);
    }

    #[test]
    fn quadrants_are_resampled_by_area_averaging() {
        // 4x4 image, 2x2 grid of 1-pixel crops: each crop is the mean of its quadrant.
        let mut data = vec![0u8; 4 * 4 * 3];
        for y in 0..4 {
            for x in 0..4 {
                let v = (y * 4 + x) as u8 * 10;
                data[(y * 4 + x) * 3..(y * 4 + x) * 3 + 3].copy_from_slice(&[v, 255 - v, 0]);
            }
        }
        let img = RgbBuffer { width: 4, height: 4, data };
        let seq = ObjectExtractor::new(&config(vec![1, 2], 1)).extract(&img);
        assert_eq!(seq.len(), 6);
        assert_eq!(seq.dim, 3);
        // Row 1 is scale 1: the whole-image mean (R values 0..150, mean 75).
        assert!((seq.features[3] - normalised_f(75.0, 0)).abs() < 1e-5);
        assert_eq!(seq.locations[1], [0.0, 0.0, 1.0, 1.0, 1.0]);
        // Row 2 is the top-left quadrant: pixels 0, 1, 4, 5 -> R 0, 10, 40, 50 -> mean 25.
        assert!((seq.features[6] - normalised_f(25.0, 0)).abs() < 1e-5);
        assert!((seq.features[7] - normalised_f(230.0, 1)).abs() < 1e-5);
        assert_eq!(seq.locations[2], [0.0, 0.0, 0.5, 0.5, 0.25]);
        // Row 5 is the bottom-right quadrant: pixels 10, 11, 14, 15 -> mean 125.
        assert!((seq.features[15] - normalised_f(125.0, 0)).abs() < 1e-5);
        assert_eq!(seq.locations[5], [0.5, 0.5, 1.0, 1.0, 0.25]);
        // The global row is the mean of all region rows.
        let mean_r: f32 = (1..6).map(|r| seq.features[r * 3]).sum::<f32>() / 5.0;
        assert!((seq.features[0] - mean_r).abs() < 1e-5);
    }

    #[test]
    fn crop_layout_is_channel_major_and_upsamples_small_boxes() {
        // 2x1 image (red | blue), one scale, 4x4 crop: left half red, right half blue.
        let img = RgbBuffer { width: 2, height: 1, data: vec![255, 0, 0, 0, 0, 255] };
        let seq = ObjectExtractor::new(&config(vec![1], 4)).extract(&img);
        let region = &seq.features[48..96];
        for y in 0..4 {
            for x in 0..4 {
                let (r, b) = if x < 2 { (255, 0) } else { (0, 255) };
                assert!((region[y * 4 + x] - normalised(r, 0)).abs() < 1e-5);
                assert!((region[32 + y * 4 + x] - normalised(b, 2)).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn large_images_are_reduced_to_the_same_features() {
        // An image made of 8x8 flat blocks gives the same features before and after reduction.
        let (w, h) = (96 * 4, 96 * 4);
        let mut data = vec![0u8; w * h * 3];
        for y in 0..h {
            for x in 0..w {
                let v = (((x / 8) * 7 + (y / 8) * 13) % 256) as u8;
                data[(y * w + x) * 3..(y * w + x) * 3 + 3].copy_from_slice(&[v, v / 2, 255 - v]);
            }
        }
        let big = RgbBuffer { width: w as u32, height: h as u32, data };
        let ex = ObjectExtractor::new(&ImageConfig::default());
        let small = box_reduce(&big, 4);
        assert_eq!((small.width, small.height), (96, 96));
        let a = ex.extract(&big);
        let b = ex.extract(&small);
        let max_diff = a.features.iter().zip(&b.features).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(max_diff < 0.05, "max diff {max_diff}");
    }
}
