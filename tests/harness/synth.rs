//! Synthetic multimodal stream generator.
//!
//! Produces the three record kinds of docs/interface.md section 3 from one seed, deterministically:
//! image-caption pairs whose PNG images show one to three coloured shapes and whose captions
//! describe exactly what was drawn (colour, shape, size and placement), text-only sentences of
//! the same vocabulary, image-only records, a held-out evaluation set of pairs, and optionally a
//! few records that a correct consumer must reject.
//!
//! The relation between an image and its caption is learnable on purpose: every word of a
//! caption that names a colour, a shape, a size or a position is visible in the pixels, so a
//! model trained on the pairs retrieves the right caption for an image clearly more often than
//! an untrained one. The end-to-end tests rely on that.
//!
//! Every record is drawn from its own random generator seeded from `(seed, stream, index)`, so
//! record `i` of a stream is the same whatever the number of records asked for. Held-out pairs
//! come from their own stream (their ids start with `eval-`) and have pairwise distinct
//! captions, so that retrieval recall over them is well defined.

use std::fmt;
use std::fs::{self, File};
use std::io::{BufWriter, Cursor, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use image::{ImageFormat, Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Background grey of every image; every palette colour stands out against it.
const BACKGROUND: Rgb<u8> = Rgb([128, 128, 128]);

/// How many times a held-out pair is redrawn to find a caption not used yet before giving up.
const EVAL_REDRAWS: usize = 64;

/// A fill colour of a shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Colour {
    /// Pure red.
    Red,
    /// Green.
    Green,
    /// Blue.
    Blue,
    /// Yellow.
    Yellow,
    /// Purple.
    Purple,
    /// Orange.
    Orange,
    /// Black.
    Black,
    /// White.
    White,
}

impl Colour {
    /// Every colour, in a fixed order.
    pub const ALL: [Colour; 8] = [
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Purple,
        Colour::Orange,
        Colour::Black,
        Colour::White,
    ];

    /// The word used in captions.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Purple => "purple",
            Colour::Orange => "orange",
            Colour::Black => "black",
            Colour::White => "white",
        }
    }

    /// The RGB value drawn.
    pub fn rgb(self) -> Rgb<u8> {
        Rgb(match self {
            Colour::Red => [220, 30, 30],
            Colour::Green => [30, 180, 40],
            Colour::Blue => [30, 60, 220],
            Colour::Yellow => [240, 230, 40],
            Colour::Purple => [140, 40, 170],
            Colour::Orange => [250, 140, 20],
            Colour::Black => [10, 10, 10],
            Colour::White => [250, 250, 250],
        })
    }
}

/// The outline of a shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShapeKind {
    /// A filled disc.
    Circle,
    /// A filled axis-aligned square.
    Square,
    /// A filled triangle pointing up.
    Triangle,
}

impl ShapeKind {
    /// Every shape kind, in a fixed order.
    pub const ALL: [ShapeKind; 3] = [ShapeKind::Circle, ShapeKind::Square, ShapeKind::Triangle];

    /// The word used in captions.
    pub fn name(self) -> &'static str {
        match self {
            ShapeKind::Circle => "circle",
            ShapeKind::Square => "square",
            ShapeKind::Triangle => "triangle",
        }
    }
}

/// The size class of a shape, relative to the cell it is drawn in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SizeClass {
    /// About a fifth of the cell's smaller side as radius.
    Small,
    /// About two fifths of the cell's smaller side as radius.
    Large,
}

impl SizeClass {
    /// The word used in captions.
    pub fn name(self) -> &'static str {
        match self {
            SizeClass::Small => "small",
            SizeClass::Large => "large",
        }
    }

    /// Radius as a fraction of the cell's smaller side.
    fn radius_fraction(self) -> f32 {
        match self {
            SizeClass::Small => 0.2,
            SizeClass::Large => 0.4,
        }
    }
}

/// Where the only shape of a one-shape scene sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Left half of the image.
    Left,
    /// Right half.
    Right,
    /// Top half.
    Top,
    /// Bottom half.
    Bottom,
    /// The centre.
    Center,
}

impl Placement {
    const ALL: [Placement; 5] = [
        Placement::Left,
        Placement::Right,
        Placement::Top,
        Placement::Bottom,
        Placement::Center,
    ];

    /// The phrase used in captions.
    pub fn phrase(self) -> &'static str {
        match self {
            Placement::Left => "on the left",
            Placement::Right => "on the right",
            Placement::Top => "at the top",
            Placement::Bottom => "at the bottom",
            Placement::Center => "in the center",
        }
    }
}

/// How the shapes of a scene are laid out; it fixes each shape's cell of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One shape at a placement.
    Single(Placement),
    /// Two shapes side by side: the first on the left.
    Horizontal,
    /// Two shapes one above the other: the first on top.
    Vertical,
    /// Three shapes in a row, from left to right.
    Row,
}

/// One shape of a scene; `cx`, `cy`, `r` are fractions of the image side, so a scene can be
/// rendered at any size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Fill colour.
    pub colour: Colour,
    /// Outline.
    pub kind: ShapeKind,
    /// Size class named in the caption.
    pub size: SizeClass,
    /// Centre, x, in [0, 1].
    pub cx: f32,
    /// Centre, y, in [0, 1] (0 = top).
    pub cy: f32,
    /// Radius (half the side for squares and triangles), as a fraction of the image side.
    pub r: f32,
}

impl Shape {
    /// "large red circle".
    fn noun_phrase(&self) -> String {
        format!(
            "{} {} {}",
            self.size.name(),
            self.colour.name(),
            self.kind.name()
        )
    }

    /// Whether the point (x, y), in fractions of the image side, lies inside the shape.
    fn contains(&self, x: f32, y: f32) -> bool {
        let (dx, dy) = (x - self.cx, y - self.cy);
        match self.kind {
            ShapeKind::Circle => dx * dx + dy * dy <= self.r * self.r,
            ShapeKind::Square => dx.abs() <= self.r && dy.abs() <= self.r,
            ShapeKind::Triangle => {
                // Apex at (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r): at
                // height dy the half-width grows linearly from 0 to r.
                if dy < -self.r || dy > self.r {
                    return false;
                }
                let half_width = self.r * (dy + self.r) / (2.0 * self.r);
                dx.abs() <= half_width
            }
        }
    }

    /// A point well inside the shape (its centroid for triangles), in fractions of the side.
    pub fn inner_point(&self) -> (f32, f32) {
        match self.kind {
            ShapeKind::Triangle => (self.cx, self.cy + self.r / 3.0),
            _ => (self.cx, self.cy),
        }
    }
}

/// What one image shows: one to three shapes and their layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Scene {
    /// The layout, which fixes how the caption relates the shapes.
    pub layout: Layout,
    /// The shapes, in layout order (left to right, or top to bottom).
    pub shapes: Vec<Shape>,
}

impl Scene {
    /// Draws a random scene: one shape (35%), two (45%) or three (20%); no two shapes of a scene
    /// share both colour and kind, so the caption names each one unambiguously.
    pub fn random(rng: &mut impl Rng) -> Scene {
        let roll = rng.random_range(0..100u32);
        let layout = if roll < 35 {
            Layout::Single(Placement::ALL[rng.random_range(0..Placement::ALL.len())])
        } else if roll < 80 {
            if rng.random_bool(0.5) {
                Layout::Horizontal
            } else {
                Layout::Vertical
            }
        } else {
            Layout::Row
        };
        let cells = cells(layout);
        let mut shapes: Vec<Shape> = Vec::with_capacity(cells.len());
        for (x0, y0, w, h) in cells {
            let (colour, kind) = loop {
                let colour = Colour::ALL[rng.random_range(0..Colour::ALL.len())];
                let kind = ShapeKind::ALL[rng.random_range(0..ShapeKind::ALL.len())];
                if !shapes.iter().any(|s| s.colour == colour && s.kind == kind) {
                    break (colour, kind);
                }
            };
            let size = if rng.random_bool(0.5) {
                SizeClass::Small
            } else {
                SizeClass::Large
            };
            let side = w.min(h);
            let r = size.radius_fraction() * side;
            // Jitter the centre by up to half the free margin so that positions vary but a
            // shape never leaves its cell.
            let slack_x = (w / 2.0 - r).max(0.0) * 0.5;
            let slack_y = (h / 2.0 - r).max(0.0) * 0.5;
            let cx = x0 + w / 2.0 + rng.random_range(-1.0..=1.0f32) * slack_x;
            let cy = y0 + h / 2.0 + rng.random_range(-1.0..=1.0f32) * slack_y;
            shapes.push(Shape {
                colour,
                kind,
                size,
                cx,
                cy,
                r,
            });
        }
        Scene { layout, shapes }
    }

    /// The canonical description: every shape's size, colour and kind and how they are placed,
    /// e.g. "a large red circle left of a small blue square". Deterministic.
    pub fn description(&self) -> String {
        let np = |i: usize| format!("a {}", self.shapes[i].noun_phrase());
        match self.layout {
            Layout::Single(p) => format!("{} {}", np(0), p.phrase()),
            Layout::Horizontal => format!("{} left of {}", np(0), np(1)),
            Layout::Vertical => format!("{} above {}", np(0), np(1)),
            Layout::Row => format!("{}, {} and {} from left to right", np(0), np(1), np(2)),
        }
    }

    /// A caption for the scene, with some variation in wording drawn from `rng`: relations may
    /// be stated from either side ("a above b" or "b below a") and a short lead-in may be added.
    pub fn caption(&self, rng: &mut impl Rng) -> String {
        let np = |i: usize| format!("a {}", self.shapes[i].noun_phrase());
        let flip = rng.random_bool(0.5);
        let body = match (self.layout, flip) {
            (Layout::Horizontal, true) => format!("{} right of {}", np(1), np(0)),
            (Layout::Vertical, true) => format!("{} below {}", np(1), np(0)),
            (Layout::Row, true) => {
                format!("from left to right {}, {} and {}", np(0), np(1), np(2))
            }
            _ => self.description(),
        };
        const LEAD_INS: [&str; 4] = ["", "", "a picture of ", "an image of "];
        format!("{}{}", LEAD_INS[rng.random_range(0..LEAD_INS.len())], body)
    }

    /// Renders the scene as a `px` x `px` RGB image on a grey background.
    pub fn render(&self, px: u32) -> RgbImage {
        let mut img = RgbImage::from_pixel(px, px, BACKGROUND);
        let side = px as f32;
        for (x, y, pixel) in img.enumerate_pixels_mut() {
            // Sample at the pixel centre.
            let (fx, fy) = ((x as f32 + 0.5) / side, (y as f32 + 0.5) / side);
            // Later shapes are drawn over earlier ones; cells do not overlap, so this only
            // matters for the single-shape centre placement, which has one shape.
            if let Some(s) = self.shapes.iter().rev().find(|s| s.contains(fx, fy)) {
                *pixel = s.colour.rgb();
            }
        }
        img
    }
}

/// The cells (x0, y0, w, h), in fractions of the image side, that a layout puts shapes into.
fn cells(layout: Layout) -> Vec<(f32, f32, f32, f32)> {
    match layout {
        Layout::Single(Placement::Left) => vec![(0.0, 0.0, 0.5, 1.0)],
        Layout::Single(Placement::Right) => vec![(0.5, 0.0, 0.5, 1.0)],
        Layout::Single(Placement::Top) => vec![(0.0, 0.0, 1.0, 0.5)],
        Layout::Single(Placement::Bottom) => vec![(0.0, 0.5, 1.0, 0.5)],
        Layout::Single(Placement::Center) => vec![(0.25, 0.25, 0.5, 0.5)],
        Layout::Horizontal => vec![(0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 0.5, 1.0)],
        Layout::Vertical => vec![(0.0, 0.0, 1.0, 0.5), (0.0, 0.5, 1.0, 0.5)],
        Layout::Row => {
            let third = 1.0 / 3.0;
            vec![
                (0.0, 0.0, third, 1.0),
                (third, 0.0, third, 1.0),
                (2.0 * third, 0.0, third, 1.0),
            ]
        }
    }
}

/// Encodes an image as PNG bytes.
pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = Cursor::new(Vec::new());
    img.write_to(&mut buf, ImageFormat::Png)
        .context("encoding a synthetic image as PNG")?;
    Ok(buf.into_inner())
}

/// One image-caption pair, as published to `topics.pair`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairRecord {
    /// Record id, `pair-N` (or `eval-N` for held-out pairs).
    pub id: String,
    /// What the image shows.
    pub caption: String,
    /// The PNG image, standard base64.
    pub image_base64: String,
}

/// One text-only record, as published to `topics.text`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextRecord {
    /// Record id, `text-N`.
    pub id: String,
    /// A sentence of the captions' vocabulary.
    pub text: String,
}

/// One image-only record, as published to `topics.image`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Record id, `img-N`.
    pub id: String,
    /// The PNG image, standard base64.
    pub image_base64: String,
}

/// The independent random streams of a generator; each record draws from its own generator
/// seeded from (seed, stream, index).
#[derive(Debug, Clone, Copy)]
enum Stream {
    Pair = 1,
    Text = 2,
    Image = 3,
    Eval = 4,
}

/// SplitMix64 finaliser: spreads (seed, stream, index) over the whole seed space.
fn mix(z: u64) -> u64 {
    unimod_ingest::rng::SplitMix64::mix(z)
}

/// Deterministic source of synthetic records for one seed and image size.
#[derive(Debug, Clone, Copy)]
pub struct Generator {
    seed: u64,
    size: u32,
    /// Colour/shape combinations held out of the training streams ([`Generator::held_out`]).
    holdout: usize,
}

impl Generator {
    /// A generator of `size` x `size` images; the same seed always yields the same records.
    pub fn new(seed: u64, size: u32) -> Generator {
        Generator { seed, size, holdout: 0 }
    }

    /// The same generator with a compositional split: `n` (at most 8) colour/shape
    /// combinations never appear in the training streams (pairs, texts, images) nor in
    /// [`Generator::eval_pairs`], and every scene of [`Generator::eval_unseen_pairs`] shows at
    /// least one of them. Every colour and every shape kind still appears in training.
    pub fn with_holdout(self, n: usize) -> Generator {
        Generator { holdout: n.min(Colour::ALL.len()), ..self }
    }

    /// The held-out colour/shape combinations: colour `i` with kind `(i + seed) mod 3`, for
    /// the first `holdout` colours.
    pub fn held_out(&self) -> Vec<(Colour, ShapeKind)> {
        (0..self.holdout)
            .map(|i| (Colour::ALL[i], ShapeKind::ALL[(i + (self.seed % 3) as usize) % ShapeKind::ALL.len()]))
            .collect()
    }

    /// A random scene on the seen (`unseen = false`) or unseen side of the split; without a
    /// hold-out, exactly one [`Scene::random`] draw.
    fn scene(&self, rng: &mut StdRng, unseen: bool) -> Scene {
        let held = self.held_out();
        loop {
            let scene = Scene::random(rng);
            if held.is_empty() {
                return scene;
            }
            let shows = scene.shapes.iter().any(|s| held.contains(&(s.colour, s.kind)));
            if shows == unseen {
                return scene;
            }
        }
    }

    /// Image side in pixels.
    pub fn size(&self) -> u32 {
        self.size
    }

    fn rng(&self, stream: Stream, index: u64) -> StdRng {
        StdRng::seed_from_u64(mix(mix(self.seed ^ mix(stream as u64)) ^ index))
    }

    fn pair_from(&self, rng: &mut StdRng, id: String) -> Result<(Scene, PairRecord)> {
        self.pair_on_side(rng, id, false)
    }

    fn pair_on_side(&self, rng: &mut StdRng, id: String, unseen: bool) -> Result<(Scene, PairRecord)> {
        let scene = self.scene(rng, unseen);
        let caption = scene.caption(rng);
        let png = encode_png(&scene.render(self.size))?;
        Ok((
            scene,
            PairRecord {
                id,
                caption,
                image_base64: BASE64.encode(png),
            },
        ))
    }

    /// Training pair `index`, with the scene it was drawn from.
    pub fn pair(&self, index: u64) -> Result<(Scene, PairRecord)> {
        let mut rng = self.rng(Stream::Pair, index);
        self.pair_from(&mut rng, format!("pair-{index}"))
    }

    /// Text-only record `index`: a description of a random scene in one of a few sentence
    /// frames, or now and then a plain statement about a shape or colour.
    pub fn text(&self, index: u64) -> TextRecord {
        self.text_with_scene(index).1
    }

    /// Text-only record `index` with the scene it describes and its sentence frame (0-3 describe
    /// the whole scene, 4 and 5 only its first shape).
    pub fn text_with_scene(&self, index: u64) -> (Scene, TextRecord, u32) {
        let mut rng = self.rng(Stream::Text, index);
        let scene = self.scene(&mut rng, false);
        let frame = rng.random_range(0..6u32);
        let text = match frame {
            0 => format!("{}.", scene.caption(&mut rng)),
            1 => format!("here is {}.", scene.description()),
            2 => format!("the picture shows {}.", scene.description()),
            3 => format!("{} on a gray background.", scene.caption(&mut rng)),
            4 => {
                let s = &scene.shapes[0];
                let sides = match s.kind {
                    ShapeKind::Circle => "no corners",
                    ShapeKind::Square => "four equal sides",
                    ShapeKind::Triangle => "three sides",
                };
                format!("a {} has {}.", s.kind.name(), sides)
            }
            _ => {
                let s = &scene.shapes[0];
                format!(
                    "the {} {} is {}.",
                    s.colour.name(),
                    s.kind.name(),
                    s.size.name()
                )
            }
        };
        let record = TextRecord {
            id: format!("text-{index}"),
            text,
        };
        (scene, record, frame)
    }

    /// Image-only record `index`, with the scene it shows.
    pub fn image(&self, index: u64) -> Result<(Scene, ImageRecord)> {
        let mut rng = self.rng(Stream::Image, index);
        let scene = self.scene(&mut rng, false);
        let png = encode_png(&scene.render(self.size))?;
        Ok((
            scene,
            ImageRecord {
                id: format!("img-{index}"),
                image_base64: BASE64.encode(png),
            },
        ))
    }

    /// The first `n` held-out pairs (ids `eval-N`), from their own stream, with pairwise
    /// distinct captions (a pair whose caption was used already is redrawn, a bounded number of
    /// times, so the result has fewer than `n` pairs only if `n` approaches the number of
    /// distinct captions).
    pub fn eval_pairs(&self, n: usize) -> Result<Vec<(Scene, PairRecord)>> {
        self.eval_side(n, false)
    }

    /// With a hold-out ([`Generator::with_holdout`]): `n` held-out pairs (ids `unseen-N`) whose
    /// scenes each show at least one held-out colour/shape combination, with pairwise distinct
    /// captions. Empty without a hold-out.
    pub fn eval_unseen_pairs(&self, n: usize) -> Result<Vec<(Scene, PairRecord)>> {
        if self.holdout == 0 {
            return Ok(Vec::new());
        }
        self.eval_side(n, true)
    }

    fn eval_side(&self, n: usize, unseen: bool) -> Result<Vec<(Scene, PairRecord)>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(n);
        let (prefix, offset) = if unseen { ("unseen", 1u64 << 40) } else { ("eval", 0) };
        for index in 0..n as u64 {
            let mut rng = self.rng(Stream::Eval, offset + index);
            for _ in 0..EVAL_REDRAWS {
                let (scene, rec) = self.pair_on_side(&mut rng, format!("{prefix}-{index}"), unseen)?;
                if seen.insert(rec.caption.clone()) {
                    out.push((scene, rec));
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// What to write with [`write_dataset`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthConfig {
    /// Seed of every stream.
    pub seed: u64,
    /// Image side in pixels.
    pub size: u32,
    /// Training pairs in `pairs.jsonl`.
    pub pairs: usize,
    /// Text-only records in `text.jsonl`.
    pub texts: usize,
    /// Image-only records in `image.jsonl`.
    pub images: usize,
    /// Held-out pairs in `eval_pairs.jsonl` (and, with `holdout`, in `eval_unseen.jsonl`).
    pub eval: usize,
    /// Colour/shape combinations held out of training (0 = none, at most 8): the compositional
    /// split of [`Generator::with_holdout`]; `eval_unseen.jsonl` then holds pairs showing them.
    pub holdout: usize,
    /// Also write the image-only records as PNG files under `images/` (for `unimod produce
    /// --kind image DIR`).
    pub image_files: bool,
    /// Also write records that a consumer must reject: `bad_text.jsonl`, `bad_image.jsonl`
    /// and `bad_pairs.jsonl` (JSON objects, publishable with `unimod produce`),
    /// `bad_not_json.txt` (lines that are not JSON) and `bad_image_raw.bin` (a raw image
    /// record that is not an image).
    pub bad: bool,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            seed: 42,
            size: 64,
            pairs: 256,
            texts: 256,
            images: 128,
            eval: 64,
            holdout: 0,
            image_files: false,
            bad: false,
        }
    }
}

/// Counts of what [`write_dataset`] wrote; also written as `manifest.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The seed used.
    pub seed: u64,
    /// Image side in pixels.
    pub size: u32,
    /// Records in `pairs.jsonl`.
    pub pairs: usize,
    /// Records in `text.jsonl`.
    pub texts: usize,
    /// Records in `image.jsonl` (and PNG files under `images/` when asked for).
    pub images: usize,
    /// Records in `eval_pairs.jsonl`.
    pub eval: usize,
    /// Records in `eval_unseen.jsonl` (0 without a hold-out).
    #[serde(default)]
    pub eval_unseen: usize,
    /// Records in `bad_text.jsonl` (0 when not written).
    pub bad_text: usize,
    /// Records in `bad_image.jsonl`.
    pub bad_image: usize,
    /// Records in `bad_pairs.jsonl`.
    pub bad_pairs: usize,
    /// Lines in `bad_not_json.txt` (one record each, for the text or pair topic).
    pub bad_not_json: usize,
    /// Raw image records in `bad_image_raw.bin` (1 when written).
    pub bad_image_raw: usize,
}

/// A record that a consumer must reject, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRecord {
    /// The raw Kafka value, one JSONL line.
    pub line: String,
    /// Why it must be rejected, for test messages.
    pub why: &'static str,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.line, self.why)
    }
}

/// JSON objects that must be rejected on `topics.text`: missing `text`, empty `text`,
/// whitespace-only `text`, `text` not a string. Every line is a JSON object, so `unimod
/// produce` (which refuses lines that are not) publishes them.
pub fn bad_text_records() -> Vec<BadRecord> {
    vec![
        BadRecord {
            line: json!({"id": "bad-text-0"}).to_string(),
            why: "missing text",
        },
        BadRecord {
            line: json!({"id": "bad-text-1", "text": ""}).to_string(),
            why: "empty text",
        },
        BadRecord {
            line: json!({"id": "bad-text-2", "text": " \t "}).to_string(),
            why: "whitespace-only text",
        },
        BadRecord {
            line: json!({"id": "bad-text-3", "text": 42}).to_string(),
            why: "text not a string",
        },
    ]
}

/// JSON objects that must be rejected on `topics.image`: no image field, base64 of bytes that
/// are not an image, invalid base64.
pub fn bad_image_records() -> Vec<BadRecord> {
    vec![
        BadRecord {
            line: json!({"id": "bad-img-0"}).to_string(),
            why: "missing image",
        },
        BadRecord {
            line:
                json!({"id": "bad-img-1", "image_base64": BASE64.encode(b"definitely not a png")})
                    .to_string(),
            why: "base64 of bytes that are not an image",
        },
        BadRecord {
            line: json!({"id": "bad-img-2", "image_base64": "%%% not base64 %%%"}).to_string(),
            why: "invalid base64",
        },
    ]
}

/// JSON objects that must be rejected on `topics.pair`: missing caption, empty caption, no
/// image, an image that does not decode. `valid_image_base64` is a decodable image used where
/// the record must fail for another reason.
pub fn bad_pair_records(valid_image_base64: &str) -> Vec<BadRecord> {
    vec![
        BadRecord {
            line: json!({"id": "bad-pair-0", "image_base64": valid_image_base64}).to_string(),
            why: "missing caption",
        },
        BadRecord {
            line: json!({"id": "bad-pair-1", "caption": "", "image_base64": valid_image_base64})
                .to_string(),
            why: "empty caption",
        },
        BadRecord {
            line: json!({"id": "bad-pair-2", "caption": "a small red circle on the left"})
                .to_string(),
            why: "missing image",
        },
        BadRecord {
            line: json!({"id": "bad-pair-3", "caption": "a small red circle on the left",
                         "image_base64": BASE64.encode(b"\x89PNG\r\n\x1a\n truncated")})
            .to_string(),
            why: "image does not decode",
        },
    ]
}

/// Values that are not JSON, for the text and pair topics (where JSON is required). `unimod
/// produce` refuses to publish such lines, so they go in `bad_not_json.txt` for raw tools
/// (`kcat -P -l`, the test harness) to publish one line per record.
pub fn not_json_records() -> Vec<BadRecord> {
    vec![
        BadRecord {
            line: "this line is not json".into(),
            why: "not JSON",
        },
        BadRecord {
            line: "{\"id\": \"bad-json-1\", \"text\": ".into(),
            why: "truncated JSON",
        },
    ]
}

/// The value of a raw image record that is not an image (on `topics.image` a non-JSON value
/// is read as image bytes): written as `bad_image_raw.bin`, which `unimod produce --kind
/// image` sends as one raw record.
pub const BAD_RAW_IMAGE: &[u8] = b"neither json nor an image";

/// Writes one JSON value per line.
fn write_jsonl<T: Serialize>(
    path: &Path,
    items: impl IntoIterator<Item = Result<T>>,
) -> Result<usize> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let mut n = 0;
    for item in items {
        serde_json::to_writer(&mut out, &item?)
            .with_context(|| format!("writing {}", path.display()))?;
        out.write_all(b"\n")
            .with_context(|| format!("writing {}", path.display()))?;
        n += 1;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(n)
}

/// Writes raw lines.
fn write_lines(path: &Path, records: &[BadRecord]) -> Result<usize> {
    let mut text = String::new();
    for r in records {
        text.push_str(&r.line);
        text.push('\n');
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(records.len())
}

/// Writes a dataset into `dir` (created if missing): `pairs.jsonl`, `text.jsonl`,
/// `image.jsonl`, `eval_pairs.jsonl`, `manifest.json`, and when asked `images/img-N.png` and
/// the `bad_*` files. Returns what was written.
pub fn write_dataset(dir: &Path, cfg: &SynthConfig) -> Result<Manifest> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let gen = Generator::new(cfg.seed, cfg.size).with_holdout(cfg.holdout);
    let mut m = Manifest {
        seed: cfg.seed,
        size: cfg.size,
        ..Manifest::default()
    };

    m.pairs = write_jsonl(
        &dir.join("pairs.jsonl"),
        (0..cfg.pairs as u64).map(|i| gen.pair(i).map(|(_, r)| r)),
    )?;
    m.texts = write_jsonl(
        &dir.join("text.jsonl"),
        (0..cfg.texts as u64).map(|i| Ok(gen.text(i))),
    )?;

    let image_dir: Option<PathBuf> = cfg.image_files.then(|| dir.join("images"));
    if let Some(d) = &image_dir {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    m.images = write_jsonl(
        &dir.join("image.jsonl"),
        (0..cfg.images as u64).map(|i| {
            let (scene, rec) = gen.image(i)?;
            if let Some(d) = &image_dir {
                let path = d.join(format!("{}.png", rec.id));
                fs::write(&path, encode_png(&scene.render(cfg.size))?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(rec)
        }),
    )?;
    m.eval = write_jsonl(
        &dir.join("eval_pairs.jsonl"),
        gen.eval_pairs(cfg.eval)?.into_iter().map(|(_, r)| Ok(r)),
    )?;
    if cfg.holdout > 0 {
        m.eval_unseen = write_jsonl(
            &dir.join("eval_unseen.jsonl"),
            gen.eval_unseen_pairs(cfg.eval)?.into_iter().map(|(_, r)| Ok(r)),
        )?;
    }

    if cfg.bad {
        let (_, valid) = gen.pair(0)?;
        m.bad_text = write_lines(&dir.join("bad_text.jsonl"), &bad_text_records())?;
        m.bad_image = write_lines(&dir.join("bad_image.jsonl"), &bad_image_records())?;
        m.bad_pairs = write_lines(
            &dir.join("bad_pairs.jsonl"),
            &bad_pair_records(&valid.image_base64),
        )?;
        m.bad_not_json = write_lines(&dir.join("bad_not_json.txt"), &not_json_records())?;
        let raw = dir.join("bad_image_raw.bin");
        fs::write(&raw, BAD_RAW_IMAGE).with_context(|| format!("writing {}", raw.display()))?;
        m.bad_image_raw = 1;
    }

    let manifest_path = dir.join("manifest.json");
    let json = serde_json::to_string_pretty(&m).context("serialising the manifest")?;
    fs::write(&manifest_path, json + "\n")
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(b64: &str) -> RgbImage {
        let bytes = BASE64.decode(b64).expect("generator writes valid base64");
        image::load_from_memory(&bytes)
            .expect("generator writes decodable PNG")
            .to_rgb8()
    }

    #[test]
    fn same_seed_same_records_and_other_seed_differs() {
        let a = Generator::new(7, 32);
        let b = Generator::new(7, 32);
        let c = Generator::new(8, 32);
        let mut differs = 0;
        for i in 0..20 {
            let (_, pa) = a.pair(i).expect("pair");
            let (_, pb) = b.pair(i).expect("pair");
            let (_, pc) = c.pair(i).expect("pair");
            assert_eq!(pa, pb);
            assert_eq!(a.text(i), b.text(i));
            assert_eq!(a.image(i).expect("image").1, b.image(i).expect("image").1);
            if pa.caption != pc.caption {
                differs += 1;
            }
        }
        assert!(
            differs > 10,
            "another seed should give other captions, {differs}/20 differ"
        );
    }

    #[test]
    fn caption_names_every_drawn_shape_and_pixels_show_it() {
        let gen = Generator::new(3, 64);
        for i in 0..50 {
            let (scene, rec) = gen.pair(i).expect("pair");
            assert!((1..=3).contains(&scene.shapes.len()));
            let img = decode(&rec.image_base64);
            assert_eq!(img.dimensions(), (64, 64));
            for s in &scene.shapes {
                let phrase = format!("{} {} {}", s.size.name(), s.colour.name(), s.kind.name());
                assert!(
                    rec.caption.contains(&phrase),
                    "{:?} lacks {phrase}",
                    rec.caption
                );
                let (x, y) = s.inner_point();
                let px = img.get_pixel((x * 64.0) as u32, (y * 64.0) as u32);
                assert_eq!(
                    *px,
                    s.colour.rgb(),
                    "pair {i}: {} not drawn where expected",
                    phrase
                );
            }
            // Colours named in the caption are exactly the drawn ones.
            for c in Colour::ALL {
                let drawn = scene.shapes.iter().any(|s| s.colour == c);
                let named = rec
                    .caption
                    .split(' ')
                    .any(|w| w.trim_matches(',') == c.name());
                assert_eq!(drawn, named, "{:?} and colour {}", rec.caption, c.name());
            }
        }
    }

    #[test]
    fn layout_words_match_positions() {
        let gen = Generator::new(11, 64);
        for i in 0..100 {
            let (scene, rec) = gen.pair(i).expect("pair");
            let s = &scene.shapes;
            match scene.layout {
                Layout::Horizontal => {
                    assert!(s[0].cx < s[1].cx);
                    assert!(rec.caption.contains("left of") || rec.caption.contains("right of"));
                }
                Layout::Vertical => {
                    assert!(s[0].cy < s[1].cy);
                    assert!(rec.caption.contains("above") || rec.caption.contains("below"));
                }
                Layout::Row => {
                    assert!(s[0].cx < s[1].cx && s[1].cx < s[2].cx);
                    assert!(rec.caption.contains("from left to right"));
                }
                Layout::Single(Placement::Left) => assert!(s[0].cx < 0.5),
                Layout::Single(Placement::Right) => assert!(s[0].cx > 0.5),
                Layout::Single(Placement::Top) => assert!(s[0].cy < 0.5),
                Layout::Single(Placement::Bottom) => assert!(s[0].cy > 0.5),
                Layout::Single(Placement::Center) => {
                    assert!((s[0].cx - 0.5).abs() < 0.25 && (s[0].cy - 0.5).abs() < 0.25)
                }
            }
        }
    }

    #[test]
    fn shapes_render_differently() {
        // A circle, a square and a triangle of the same size and place cover different pixels.
        let base = Shape {
            colour: Colour::Red,
            kind: ShapeKind::Circle,
            size: SizeClass::Large,
            cx: 0.5,
            cy: 0.5,
            r: 0.3,
        };
        let count = |kind| {
            let scene = Scene {
                layout: Layout::Single(Placement::Center),
                shapes: vec![Shape { kind, ..base }],
            };
            scene
                .render(64)
                .pixels()
                .filter(|p| **p == Colour::Red.rgb())
                .count()
        };
        let (circle, square, triangle) = (
            count(ShapeKind::Circle),
            count(ShapeKind::Square),
            count(ShapeKind::Triangle),
        );
        assert!(
            square > circle && circle > triangle,
            "{square} {circle} {triangle}"
        );
    }

    #[test]
    fn text_uses_caption_vocabulary() {
        let gen = Generator::new(5, 64);
        let mut vocab: std::collections::HashSet<String> = std::collections::HashSet::new();
        for i in 0..200 {
            for w in gen.pair(i).expect("pair").1.caption.split(' ') {
                vocab.insert(w.trim_matches(',').to_string());
            }
        }
        for i in 0..50 {
            let t = gen.text(i);
            assert!(!t.text.is_empty());
            let known = t
                .text
                .split(' ')
                .map(|w| w.trim_matches(|c| c == ',' || c == '.'))
                .filter(|w| vocab.contains(*w))
                .count();
            assert!(
                known >= 2,
                "text {:?} shares too few words with captions",
                t.text
            );
        }
    }

    #[test]
    fn eval_pairs_are_distinct_and_not_training_ids() {
        let gen = Generator::new(1, 32);
        let eval = gen.eval_pairs(40).expect("eval");
        assert_eq!(eval.len(), 40);
        let captions: std::collections::HashSet<_> = eval.iter().map(|(_, r)| &r.caption).collect();
        assert_eq!(captions.len(), 40);
        assert!(eval.iter().all(|(_, r)| r.id.starts_with("eval-")));
        // Held-out images are not copies of training images.
        let (_, first_train) = gen.pair(0).expect("pair");
        assert!(eval
            .iter()
            .all(|(_, r)| r.image_base64 != first_train.image_base64));
    }

    #[test]
    fn write_dataset_writes_every_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = SynthConfig {
            seed: 9,
            size: 24,
            pairs: 5,
            texts: 4,
            images: 3,
            eval: 6,
            holdout: 0,
            image_files: true,
            bad: true,
        };
        let m = write_dataset(dir.path(), &cfg).expect("write");
        let lines = |name: &str| -> Vec<String> {
            fs::read_to_string(dir.path().join(name))
                .expect("file written")
                .lines()
                .map(str::to_string)
                .collect()
        };
        let pairs: Vec<PairRecord> = lines("pairs.jsonl")
            .iter()
            .map(|l| serde_json::from_str(l).expect("pair"))
            .collect();
        assert_eq!(pairs.len(), 5);
        assert_eq!(decode(&pairs[4].image_base64).dimensions(), (24, 24));
        let texts: Vec<TextRecord> = lines("text.jsonl")
            .iter()
            .map(|l| serde_json::from_str(l).expect("text"))
            .collect();
        assert_eq!(texts.len(), 4);
        let images: Vec<ImageRecord> = lines("image.jsonl")
            .iter()
            .map(|l| serde_json::from_str(l).expect("img"))
            .collect();
        assert_eq!(images.len(), 3);
        let png = fs::read(dir.path().join("images/img-2.png")).expect("png file");
        assert_eq!(BASE64.encode(png), images[2].image_base64);
        assert_eq!(lines("eval_pairs.jsonl").len(), 6);
        assert_eq!(lines("bad_text.jsonl").len(), m.bad_text);
        assert_eq!(lines("bad_image.jsonl").len(), m.bad_image);
        assert_eq!(lines("bad_pairs.jsonl").len(), m.bad_pairs);
        assert_eq!(lines("bad_not_json.txt").len(), m.bad_not_json);
        assert_eq!(
            fs::read(dir.path().join("bad_image_raw.bin")).expect("raw"),
            BAD_RAW_IMAGE
        );
        let written: Manifest = serde_json::from_str(
            &fs::read_to_string(dir.path().join("manifest.json")).expect("manifest"),
        )
        .expect("manifest json");
        assert_eq!(written, m);
        assert_eq!((m.pairs, m.texts, m.images, m.eval), (5, 4, 3, 6));
        // Same config, same bytes.
        let again = tempfile::tempdir().expect("tempdir");
        write_dataset(again.path(), &cfg).expect("write");
        for f in [
            "pairs.jsonl",
            "text.jsonl",
            "image.jsonl",
            "eval_pairs.jsonl",
        ] {
            assert_eq!(
                fs::read(dir.path().join(f)).expect("read"),
                fs::read(again.path().join(f)).expect("read"),
                "{f} differs between runs"
            );
        }
    }

    #[test]
    fn bad_records_really_are_bad() {
        let gen = Generator::new(2, 16);
        let valid = gen.pair(0).expect("pair").1.image_base64;
        let decodes = |b64: &str| {
            BASE64
                .decode(b64)
                .ok()
                .and_then(|b| image::load_from_memory(&b).ok())
                .is_some()
        };
        let all: Vec<BadRecord> = bad_text_records()
            .into_iter()
            .chain(bad_image_records())
            .chain(bad_pair_records(&valid))
            .collect();
        // Publishable with `unimod produce`: every JSONL bad record is a JSON object.
        for r in &all {
            let v: serde_json::Value = serde_json::from_str(&r.line).expect("JSON");
            assert!(v.is_object(), "{r}");
        }
        // Text: lacks a non-blank string "text".
        for r in bad_text_records() {
            let ok = serde_json::from_str::<TextRecord>(&r.line).map(|t| !t.text.trim().is_empty());
            assert!(!matches!(ok, Ok(true)), "{r}");
        }
        // Pairs: each lacks a usable caption or an image that decodes.
        for r in bad_pair_records(&valid) {
            let usable = serde_json::from_str::<PairRecord>(&r.line)
                .ok()
                .filter(|p| !p.caption.is_empty() && decodes(&p.image_base64));
            assert!(usable.is_none(), "{r}");
        }
        // Images: no base64 field decodes to an image.
        for r in bad_image_records() {
            let usable = serde_json::from_str::<ImageRecord>(&r.line)
                .ok()
                .filter(|p| decodes(&p.image_base64));
            assert!(usable.is_none(), "{r}");
        }
        // Not JSON, and the raw image is no image.
        for r in not_json_records() {
            assert!(
                serde_json::from_str::<serde_json::Value>(&r.line).is_err(),
                "{r}"
            );
        }
        assert!(image::load_from_memory(BAD_RAW_IMAGE).is_err());
        // The valid image used inside bad pairs does decode (the pair fails for its caption).
        assert!(decodes(&valid));
    }
    #[test]
    fn holdout_keeps_combinations_out_of_training_and_in_unseen_eval() {
        let plain = Generator::new(5, 16);
        let gen = plain.with_holdout(4);
        let held = gen.held_out();
        assert_eq!(held.len(), 4);
        let shows = |scene: &Scene| scene.shapes.iter().any(|s| held.contains(&(s.colour, s.kind)));
        for i in 0..200 {
            assert!(!shows(&gen.pair(i).expect("pair").0), "training pair {i} shows a held-out combination");
            assert!(!shows(&gen.image(i).expect("image").0));
            assert!(!shows(&gen.text_with_scene(i).0));
        }
        let seen = gen.eval_pairs(30).expect("eval");
        assert!(seen.iter().all(|(s, _)| !shows(s)));
        let unseen = gen.eval_unseen_pairs(30).expect("unseen");
        assert_eq!(unseen.len(), 30);
        assert!(unseen.iter().all(|(s, r)| shows(s) && r.id.starts_with("unseen-")));
        // Every colour and kind still occurs in training.
        let mut colours = std::collections::HashSet::new();
        let mut kinds = std::collections::HashSet::new();
        for i in 0..300 {
            for s in gen.pair(i).expect("pair").0.shapes {
                colours.insert(s.colour);
                kinds.insert(s.kind);
            }
        }
        assert_eq!((colours.len(), kinds.len()), (Colour::ALL.len(), ShapeKind::ALL.len()));
        // Without a hold-out the streams are unchanged.
        assert_eq!(plain.with_holdout(0).pair(3).expect("pair").1, plain.pair(3).expect("pair").1);
        assert!(plain.eval_unseen_pairs(5).expect("none").is_empty());
    }

    /// How the TF-IDF cosine between a pair's caption and its nearest text-only record (in a
    /// window of 512) relates to the record being true of the pair's scene: the measurement
    /// behind `cmcl.text_min_similarity` (docs/configuration.md). Prints a table; run with
    /// `cargo test -p unimod-e2e --lib tfidf_positive_precision -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn tfidf_positive_precision() {
        use unimod_ingest::text::TfIdfWindow;
        for seed in [7u64, 8] {
            let gen = Generator::new(seed, 32);
            let mut window = TfIdfWindow::new(512);
            let mut scenes = Vec::new();
            for i in 0..512u64 {
                let (scene, rec, frame) = gen.text_with_scene(i);
                window.add(i, &rec.text);
                scenes.push((scene, frame));
            }
            let mut rows = Vec::new();
            for i in 0..2000u64 {
                let mut rng = gen.rng(Stream::Pair, i);
                let scene = Scene::random(&mut rng);
                let caption = scene.caption(&mut rng);
                if let Some(&(id, score)) = window.query(&caption, 1).first() {
                    let (ts, frame) = &scenes[id as usize];
                    let first = ts.shapes[0];
                    let true_of = match frame {
                        0..=3 => ts.description() == scene.description(),
                        4 => scene.shapes.iter().any(|s| s.kind == first.kind),
                        _ => scene.shapes.iter().any(|s| s.kind == first.kind && s.colour == first.colour && s.size == first.size),
                    };
                    rows.push((score, true_of));
                }
            }
            println!("seed {seed}: {} captions with a hit", rows.len());
            println!("threshold  accepted  true-of-image");
            for t in [0.0f32, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95] {
                let acc: Vec<bool> = rows.iter().filter(|r| r.0 >= t).map(|r| r.1).collect();
                let precision = acc.iter().filter(|&&b| b).count() as f32 / acc.len().max(1) as f32;
                println!("{t:9.2}  {:8.3}  {precision:13.3}", acc.len() as f32 / 2000.0);
            }
        }
    }
}
