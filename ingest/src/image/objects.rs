//! The built-in object sequence of MODEL.md: a multi-scale pyramid of boxes over the image
//! (scale `n` = an `n x n` grid), each box resampled by area averaging to a
//! `crop_size x crop_size` RGB patch whose normalised pixels are the region feature, plus the
//! 5-d location `(x1/W, y1/H, x2/W, y2/H, area/(W*H))`. Row 0 is the global `[IMG]` entry:
//! the mean of the region features at location `[0, 0, 1, 1, 1]`.
//!
//! After the pyramid come up to `image.salient_boxes` saliency-ranked object boxes (MODEL.md's
//! "optional saliency-ranked boxes", our stand-in for a detector's proposals): the background
//! colour is the per-channel median of the border pixels; a pixel is foreground when its
//! colour differs from it by more than [`FOREGROUND_DISTANCE`] (sum over channels); two
//! 4-neighbouring foreground pixels belong to one object when their colours differ by at most
//! [`JOIN_DISTANCE`]. The largest objects (at least [`MIN_OBJECT_AREA_PER_MILLE`] of the
//! image) come first, ties in raster order of their first pixel; each is cropped by its tight
//! bounding box, and the pixels of that box that are not the object's (background, or a
//! neighbour inside the box) count as [`BACKDROP`], darker than any colour. A grid cell shows an
//! object cut at arbitrary places; the tight crop shows it whole and scaled to the patch, so a
//! shape is the same feature wherever it is drawn; and since every colour lies above the
//! backdrop, which crop pixels are object is a linear read-out whatever the object's colour (on
//! the image's own background, a black and a white disc would have corners on opposite sides
//! of their centres, and no linear function of the pixels would tell a disc from a square of
//! every colour). All of it is integer arithmetic on the pixels, which the PyTorch twin repeats
//! bit for bit.
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

/// A pixel is foreground when the sum over channels of its absolute difference from the
/// background colour exceeds this.
pub const FOREGROUND_DISTANCE: u32 = 60;
/// Two neighbouring foreground pixels are one object when the sum over channels of their
/// absolute difference is at most this.
pub const JOIN_DISTANCE: u32 = 60;
/// With salient boxes on, images are never box-reduced below this side: an object's tight
/// crop needs the pixels of the original, not of the pyramid's coarsest need.
pub const SALIENT_MIN_SIDE: u32 = 128;
/// The value, in 8-bit pixel units, that a salient object's crop gives every pixel of its box
/// that is not the object's: half a full scale below black, so that each channel of every
/// colour lies above it and a crop pixel's value rises with the share of the object in it.
pub const BACKDROP: i64 = -128;
/// Smallest object kept, in thousandths of the image's pixels (and at least 4 pixels).
pub const MIN_OBJECT_AREA_PER_MILLE: usize = 1;

/// Builds object sequences from RGB images with a fixed box pyramid and crop size.
#[derive(Debug, Clone)]
pub struct ObjectExtractor {
    scales: Vec<u32>,
    crop: u32,
    salient: usize,
}

impl ObjectExtractor {
    /// An extractor for `config.box_scales` and `config.crop_size` (assumed validated).
    pub fn new(config: &ImageConfig) -> Self {
        Self { scales: config.box_scales.clone(), crop: config.crop_size.clamp(1, 256), salient: config.salient_boxes.min(64) }
    }

    /// Width of one region feature: `3 * crop_size^2`, laid out channel-major
    /// (`c * crop^2 + y * crop + x`).
    pub fn feature_dim(&self) -> usize {
        3 * (self.crop as usize) * (self.crop as usize)
    }

    /// Rows before the salient boxes: the global row plus one per pyramid box.
    fn pyramid_rows(&self) -> usize {
        1 + self.scales.iter().map(|&s| (s as usize) * (s as usize)).sum::<usize>()
    }

    /// The smallest image size (width, height) that still gives every box of the finest scale
    /// at least `crop_size` pixels per side (and, with salient boxes, at least
    /// [`SALIENT_MIN_SIDE`]): a hint for reduced-scale decoding.
    pub fn min_useful_size(&self) -> (u32, u32) {
        let finest = self.scales.iter().copied().max().unwrap_or(1);
        let mut side = finest * self.crop;
        if self.salient > 0 {
            side = side.max(SALIENT_MIN_SIDE);
        }
        (side, side)
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
        let (w, h) = (source.width as usize, source.height as usize);
        let (objects, labels) = salient_objects(source, self.salient);
        let rows = self.pyramid_rows() + objects.len();
        let mut features = vec![0f32; rows * dim];
        let mut locations = Vec::with_capacity(rows);
        locations.push([0.0, 0.0, 1.0, 1.0, 1.0]);
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
        let (wf, hf, area) = (w as f32, h as f32, (w * h) as f32);
        for b in &objects {
            locations.push([b.x0 as f32 / wf, b.y0 as f32 / hf, b.x1 as f32 / wf, b.y1 as f32 / hf, ((b.x1 - b.x0) * (b.y1 - b.y0)) as f32 / area]);
            let out = &mut features[row * dim..(row + 1) * dim];
            self.crop_into(&SummedArea::masked(source, &labels, b), (0, 0, b.x1 - b.x0, b.y1 - b.y0), out);
            row += 1;
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

    /// Resamples the box `[x0, x1) x [y0, y1)` of `table` to `crop x crop` normalised pixels.
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

/// The tight bounding box `[x0, x1) x [y0, y1)` of one salient object, in source pixels, and
/// the object's label in the label map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ObjectBox {
    x0: usize,
    y0: usize,
    x1: usize,
    y1: usize,
    id: u32,
}

/// Sum over the three channels of the absolute differences of two pixels.
#[inline]
fn colour_distance(a: &[u8], b: &[u8]) -> u32 {
    a.iter().zip(b).map(|(&x, &y)| u32::from(x.abs_diff(y))).sum()
}

/// Per-channel median of the border pixels (top and bottom rows, then the left and right
/// columns without the corners): the upper median of each channel's sorted values.
fn border_colour(image: &RgbBuffer) -> [u8; 3] {
    let (w, h) = (image.width as usize, image.height as usize);
    let px = |x: usize, y: usize| &image.data[(y * w + x) * 3..(y * w + x) * 3 + 3];
    let mut border: Vec<&[u8]> = Vec::with_capacity(2 * (w + h));
    for x in 0..w {
        border.push(px(x, 0));
        if h > 1 {
            border.push(px(x, h - 1));
        }
    }
    for y in 1..h.saturating_sub(1) {
        border.push(px(0, y));
        if w > 1 {
            border.push(px(w - 1, y));
        }
    }
    std::array::from_fn(|ch| {
        let mut values: Vec<u8> = border.iter().map(|p| p[ch]).collect();
        values.sort_unstable();
        values[values.len() / 2]
    })
}

/// Up to `limit` salient objects of `image` (module documentation), largest first, and the
/// label map (one label per pixel, row-major) that their `id`s index.
fn salient_objects(image: &RgbBuffer, limit: usize) -> (Vec<ObjectBox>, Vec<u32>) {
    let (w, h) = (image.width as usize, image.height as usize);
    if limit == 0 || w < 3 || h < 3 {
        return (Vec::new(), Vec::new());
    }
    let background = border_colour(image);
    let px = |i: usize| &image.data[i * 3..i * 3 + 3];
    const UNSEEN: u32 = u32::MAX;
    const BACKGROUND: u32 = u32::MAX - 1;
    let mut label = vec![UNSEEN; w * h];
    for (i, l) in label.iter_mut().enumerate() {
        if colour_distance(px(i), &background) <= FOREGROUND_DISTANCE {
            *l = BACKGROUND;
        }
    }
    // (pixels, first pixel index, box) per object, found by flood fill in raster order.
    let mut found: Vec<(usize, usize, ObjectBox)> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if label[start] != UNSEEN {
            continue;
        }
        let id = found.len() as u32;
        label[start] = id;
        stack.push(start);
        let (mut count, mut b) = (0usize, ObjectBox { x0: w, y0: h, x1: 0, y1: 0, id });
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            count += 1;
            b.x0 = b.x0.min(x);
            b.y0 = b.y0.min(y);
            b.x1 = b.x1.max(x + 1);
            b.y1 = b.y1.max(y + 1);
            let mut visit = |j: usize| {
                if label[j] == UNSEEN && colour_distance(px(i), px(j)) <= JOIN_DISTANCE {
                    label[j] = id;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
        found.push((count, start, b));
    }
    let min_pixels = (w * h * MIN_OBJECT_AREA_PER_MILLE).div_ceil(1000).max(4);
    found.retain(|&(count, _, _)| count >= min_pixels);
    found.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    (found.into_iter().take(limit).map(|(_, _, b)| b).collect(), label)
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

/// Summed-area table with one leading zero row and column over a `w x h` grid of per-channel
/// values: `box_sum(x0, y0, x1, y1)` is the per-channel sum over `[x0, x1) x [y0, y1)`.
struct SummedArea {
    stride: usize,
    sums: Vec<i64>,
}

impl SummedArea {
    /// The table of an image's pixels.
    fn new(image: &RgbBuffer) -> Self {
        let w = image.width as usize;
        Self::from_fn(w, image.height as usize, |x, y, ch| i64::from(image.data[(y * w + x) * 3 + ch]))
    }

    /// The table of one salient object's box: the object's pixels with their colour, every
    /// other pixel of the box as [`BACKDROP`]; coordinates relative to the box.
    fn masked(image: &RgbBuffer, labels: &[u32], b: &ObjectBox) -> Self {
        let w = image.width as usize;
        Self::from_fn(b.x1 - b.x0, b.y1 - b.y0, |x, y, ch| {
            let i = (b.y0 + y) * w + b.x0 + x;
            if labels[i] == b.id { i64::from(image.data[i * 3 + ch]) } else { BACKDROP }
        })
    }

    fn from_fn(w: usize, h: usize, value: impl Fn(usize, usize, usize) -> i64) -> Self {
        let stride = (w + 1) * 3;
        let mut sums = vec![0i64; stride * (h + 1)];
        for y in 0..h {
            let (prev, cur) = sums[y * stride..(y + 2) * stride].split_at_mut(stride);
            let mut run = [0i64; 3];
            for x in 0..w {
                for ch in 0..3 {
                    run[ch] += value(x, y, ch);
                    cur[(x + 1) * 3 + ch] = prev[(x + 1) * 3 + ch] + run[ch];
                }
            }
        }
        Self { stride, sums }
    }

    #[inline]
    fn at(&self, x: usize, y: usize, ch: usize) -> i64 {
        self.sums[y * self.stride + x * 3 + ch]
    }

    #[inline]
    fn box_sum(&self, x0: usize, y0: usize, x1: usize, y1: usize) -> [i64; 3] {
        std::array::from_fn(|ch| self.at(x1, y1, ch) + self.at(x0, y0, ch) - self.at(x0, y1, ch) - self.at(x1, y0, ch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(scales: Vec<u32>, crop: u32) -> ImageConfig {
        ImageConfig { box_scales: scales, crop_size: crop, salient_boxes: 0, ..ImageConfig::default() }
    }

    /// A `side x side` grey image with the given filled rectangles and discs drawn in order.
    enum Draw {
        Rect { x0: usize, y0: usize, x1: usize, y1: usize, rgb: [u8; 3] },
        Disc { cx: f32, cy: f32, r: f32, rgb: [u8; 3] },
    }

    fn scene(side: usize, draws: &[Draw]) -> RgbBuffer {
        let mut data = vec![128u8; side * side * 3];
        for y in 0..side {
            for x in 0..side {
                for d in draws {
                    let (inside, rgb) = match *d {
                        Draw::Rect { x0, y0, x1, y1, rgb } => ((x0..x1).contains(&x) && (y0..y1).contains(&y), rgb),
                        Draw::Disc { cx, cy, r, rgb } => {
                            let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                            (dx * dx + dy * dy <= r * r, rgb)
                        }
                    };
                    if inside {
                        data[(y * side + x) * 3..][..3].copy_from_slice(&rgb);
                    }
                }
            }
        }
        RgbBuffer { width: side as u32, height: side as u32, data }
    }

    fn salient(scales: Vec<u32>, crop: u32, boxes: usize) -> ObjectExtractor {
        ObjectExtractor::new(&ImageConfig { box_scales: scales, crop_size: crop, salient_boxes: boxes, ..ImageConfig::default() })
    }

    const RED: [u8; 3] = [220, 30, 30];
    const BLUE: [u8; 3] = [30, 60, 220];

    #[test]
    fn salient_boxes_crop_each_object_by_its_tight_box_largest_first() {
        // A 10x10 red square at (5, 40) and a blue disc of radius 8 centred at (44, 20).
        let img = scene(64, &[Draw::Rect { x0: 5, y0: 40, x1: 15, y1: 50, rgb: RED }, Draw::Disc { cx: 44.0, cy: 20.0, r: 8.0, rgb: BLUE }]);
        let seq = salient(vec![1, 2], 4, 6).extract(&img);
        // Global + 5 pyramid rows + 2 objects: the disc (about 200 pixels) before the square (100).
        assert_eq!(seq.len(), 8);
        let disc = seq.locations[6];
        assert_eq!(disc, [36.0 / 64.0, 12.0 / 64.0, 52.0 / 64.0, 28.0 / 64.0, 256.0 / 4096.0]);
        let square = seq.locations[7];
        assert_eq!(square, [5.0 / 64.0, 40.0 / 64.0, 15.0 / 64.0, 50.0 / 64.0, 100.0 / 4096.0]);
        // The square's crop is red everywhere; the disc's crop has grey-ish corners, a blue
        // centre.
        let dim = seq.dim;
        let sq = &seq.features[7 * dim..8 * dim];
        for ch in 0..3 {
            for v in &sq[ch * 16..(ch + 1) * 16] {
                assert!((v - normalised(RED[ch], ch)).abs() < 1e-5);
            }
        }
        let dc = &seq.features[6 * dim..7 * dim];
        let blue_at = |i: usize| dc[2 * 16 + i];
        assert!(blue_at(0) < blue_at(5) - 1.0, "corner {} centre {}", blue_at(0), blue_at(5));
        assert!((blue_at(5) - normalised(BLUE[2], 2)).abs() < 1e-5);
        // The global row is the mean of every region row, the objects included.
        for k in [0, 17, 40] {
            let mean = (1..8).map(|r| seq.features[r * dim + k]).sum::<f32>() / 7.0;
            assert!((seq.features[k] - mean).abs() < 1e-5);
        }
    }

    #[test]
    fn a_salient_crop_shows_the_object_against_the_backdrop_whatever_its_colour() {
        // A disc and a square, in black, white and red. The corners of a disc's crop are the
        // backdrop and its centre its colour; a square's crop is its colour everywhere; the
        // backdrop lies below every colour. So "corner above the backdrop" tells a square from a
        // disc in every colour (against the grey background a black disc's corners would lie
        // above its centre and a white disc's below: no one linear read-out for both).
        let ex = salient(vec![1], 8, 6);
        let backdrop = |ch: usize| normalised_f(BACKDROP as f32, ch);
        for rgb in [[0u8, 0, 0], [255, 255, 255], RED] {
            let disc = ex.extract(&scene(64, &[Draw::Disc { cx: 32.0, cy: 32.0, r: 12.0, rgb }]));
            let square = ex.extract(&scene(64, &[Draw::Rect { x0: 20, y0: 20, x1: 44, y1: 44, rgb }]));
            assert_eq!((disc.len(), square.len()), (3, 3), "{rgb:?}");
            let (d, q) = (&disc.features[2 * disc.dim..], &square.features[2 * square.dim..]);
            for ch in 0..3 {
                assert!(backdrop(ch) < normalised(0, ch) - 1.0);
                assert!((d[ch * 64] - backdrop(ch)).abs() < 1e-5, "{rgb:?} disc corner {} channel {ch}", d[ch * 64]);
                assert!((d[ch * 64 + 3 * 8 + 3] - normalised(rgb[ch], ch)).abs() < 1e-5, "{rgb:?} disc centre");
                for (i, v) in q[ch * 64..(ch + 1) * 64].iter().enumerate() {
                    assert!((v - normalised(rgb[ch], ch)).abs() < 1e-5, "{rgb:?} square pixel {i} channel {ch}: {v}");
                }
            }
        }
        // A neighbour inside an object's box is not the object: the red ring around a blue disc
        // has the backdrop where the disc is, and the disc is its own object.
        let ring = ex.extract(&scene(64, &[Draw::Rect { x0: 20, y0: 20, x1: 44, y1: 44, rgb: RED }, Draw::Disc { cx: 32.0, cy: 32.0, r: 6.0, rgb: BLUE }]));
        assert_eq!(ring.len(), 4);
        let r = &ring.features[2 * ring.dim..3 * ring.dim];
        assert!((r[3 * 8 + 3] - backdrop(0)).abs() < 1e-5, "ring centre {}", r[3 * 8 + 3]);
        assert!((r[0] - normalised(RED[0], 0)).abs() < 1e-5);
    }

    #[test]
    fn an_object_gives_the_same_salient_feature_wherever_it_is() {
        let ex = salient(vec![1, 2, 3], 8, 6);
        let at = |x0: usize, y0: usize| {
            let seq = ex.extract(&scene(64, &[Draw::Rect { x0, y0, x1: x0 + 12, y1: y0 + 12, rgb: RED }, Draw::Disc { cx: x0 as f32 + 6.0, cy: y0 as f32 + 6.0, r: 4.0, rgb: BLUE }]));
            // Two objects: the red ring around the disc (144 - 52 pixels) first, then the disc.
            assert_eq!(seq.len(), 1 + 14 + 2);
            seq.features[15 * seq.dim..].to_vec()
        };
        let (a, b) = (at(3, 5), at(40, 31));
        assert_eq!(a, b);
        // The grid cells containing the object differ between the two positions.
        let grid = |x0: usize, y0: usize| ex.extract(&scene(64, &[Draw::Rect { x0, y0, x1: x0 + 12, y1: y0 + 12, rgb: RED }])).features[..15 * 192].to_vec();
        assert_ne!(grid(3, 5), grid(40, 31));
    }

    #[test]
    fn touching_objects_of_other_colours_are_separate_specks_are_dropped_and_the_limit_holds() {
        let touching = scene(64, &[Draw::Rect { x0: 10, y0: 10, x1: 30, y1: 30, rgb: RED }, Draw::Rect { x0: 30, y0: 10, x1: 40, y1: 30, rgb: BLUE }]);
        let seq = salient(vec![1], 2, 6).extract(&touching);
        assert_eq!(&seq.locations[2..], &[[10.0 / 64.0, 10.0 / 64.0, 30.0 / 64.0, 30.0 / 64.0, 400.0 / 4096.0], [30.0 / 64.0, 10.0 / 64.0, 40.0 / 64.0, 30.0 / 64.0, 200.0 / 4096.0]]);
        // Limit 1 keeps the largest.
        let seq = salient(vec![1], 2, 1).extract(&touching);
        assert_eq!(seq.len(), 3);
        assert_eq!(seq.locations[2][0], 10.0 / 64.0);
        // A 2x2 speck (4 pixels; a thousandth of 4096 rounds up to 5) is no object; a 3x3 one is.
        let specks = scene(64, &[Draw::Rect { x0: 5, y0: 5, x1: 7, y1: 7, rgb: RED }, Draw::Rect { x0: 50, y0: 50, x1: 53, y1: 53, rgb: BLUE }]);
        let seq = salient(vec![1], 2, 6).extract(&specks);
        assert_eq!(&seq.locations[2..], &[[50.0 / 64.0, 50.0 / 64.0, 53.0 / 64.0, 53.0 / 64.0, 9.0 / 4096.0]]);
        // Off, and a plain image: the pyramid only.
        assert_eq!(salient(vec![1], 2, 0).extract(&touching).len(), 2);
        assert_eq!(salient(vec![1], 2, 6).extract(&scene(64, &[])).len(), 2);
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
        // The pyramid alone (with salient boxes the image keeps at least 128 pixels a side).
        let ex = ObjectExtractor::new(&ImageConfig { salient_boxes: 0, ..ImageConfig::default() });
        let small = box_reduce(&big, 4);
        assert_eq!((small.width, small.height), (96, 96));
        let a = ex.extract(&big);
        let b = ex.extract(&small);
        let max_diff = a.features.iter().zip(&b.features).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        assert!(max_diff < 0.05, "max diff {max_diff}");
    }
}
