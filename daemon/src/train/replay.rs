//! Reservoir-sampled replay buffers, one per record kind (Vitter's algorithm R), persisted
//! with every checkpoint. Replayed samples are mixed into batches at `train.replay_ratio`
//! and never count as fresh records.
//!
//! The persisted form is a compact little-endian binary encoding (features are f32 arrays;
//! JSON would triple their size).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::mix::{kind_index as index, weighted_pick};
use unimod_ingest::record::{ClassProbs, ObjectSequence, RecordKind, TokenSequence};

/// What a replay buffer keeps of a sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayItem {
    /// Text or caption.
    pub text: Option<TokenSequence>,
    /// Object sequence.
    pub image: Option<ObjectSequence>,
}

/// One reservoir.
#[derive(Debug, Clone, PartialEq)]
struct Reservoir {
    items: Vec<ReplayItem>,
    /// Fresh items offered so far (the reservoir's `n`).
    seen: u64,
}

/// The per-kind replay buffers.
#[derive(Debug, Clone)]
pub struct ReplayBuffers {
    capacity: usize,
    reservoirs: [Reservoir; 3],
    rng: StdRng,
}

/// A persisted buffer that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("replay buffer state is corrupt: {0}")]
pub struct ReplayDecodeError(&'static str);

impl ReplayBuffers {
    /// Empty buffers of `capacity` items per kind.
    pub fn new(capacity: usize, seed: u64) -> Self {
        let empty = || Reservoir { items: Vec::new(), seen: 0 };
        Self { capacity, reservoirs: [empty(), empty(), empty()], rng: StdRng::seed_from_u64(seed) }
    }

    /// Offers a fresh sample: kept with probability `capacity / seen`.
    pub fn offer(&mut self, kind: RecordKind, item: ReplayItem) {
        if self.capacity == 0 {
            return;
        }
        let cap = self.capacity;
        let r = &mut self.reservoirs[index(kind)];
        r.seen += 1;
        if r.items.len() < cap {
            r.items.push(item);
        } else {
            let j = self.rng.random_range(0..r.seen);
            if (j as usize) < cap {
                r.items[j as usize] = item;
            }
        }
    }

    /// Items held for `kind`.
    pub fn len(&self, kind: RecordKind) -> usize {
        self.reservoirs[index(kind)].items.len()
    }

    /// Total items held.
    pub fn total(&self) -> usize {
        self.reservoirs.iter().map(|r| r.items.len()).sum()
    }

    /// Draws `n` items (with replacement), kinds chosen in proportion to their `weights`
    /// among kinds that hold anything.
    pub fn sample(&mut self, n: usize, weights: [f64; 3]) -> Vec<(RecordKind, ReplayItem)> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let held: Vec<usize> = (0..3).filter(|&i| !self.reservoirs[i].items.is_empty()).collect();
            let Some(pick) = weighted_pick(&mut self.rng, &held, &weights) else { break };
            let items = &self.reservoirs[pick].items;
            let item = items[self.rng.random_range(0..items.len())].clone();
            out.push((RecordKind::ALL[pick], item));
        }
        out
    }

    /// Serialises the buffers (not the RNG: a resumed run reseeds).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::new());
        w.u32(1); // format version
        w.u64(self.capacity as u64);
        for r in &self.reservoirs {
            w.u64(r.seen);
            w.u64(r.items.len() as u64);
            for item in &r.items {
                match &item.text {
                    None => w.u8(0),
                    Some(t) => {
                        w.u8(1);
                        w.bytes(t.text.as_bytes());
                        w.u64(t.ids.len() as u64);
                        t.ids.iter().for_each(|&x| w.u32(x));
                    }
                }
                match &item.image {
                    None => w.u8(0),
                    Some(o) => {
                        w.u8(1);
                        w.u64(o.dim as u64);
                        w.u64(o.locations.len() as u64);
                        o.features.iter().for_each(|&x| w.f32(x));
                        o.locations.iter().flatten().for_each(|&x| w.f32(x));
                        match &o.class_probs {
                            None => w.u8(0),
                            Some(c) => {
                                w.u8(1);
                                w.u64(c.classes as u64);
                                c.probs.iter().for_each(|&x| w.f32(x));
                            }
                        }
                    }
                }
            }
        }
        w.0
    }

    /// Restores buffers written by [`encode`](Self::encode), with a new capacity (extra
    /// items beyond it are dropped) and seed.
    pub fn decode(bytes: &[u8], capacity: usize, seed: u64) -> Result<Self, ReplayDecodeError> {
        let mut r = Reader(bytes);
        if r.u32()? != 1 {
            return Err(ReplayDecodeError("unknown format version"));
        }
        let _old_capacity = r.u64()?;
        let mut out = Self::new(capacity, seed);
        for res in out.reservoirs.iter_mut() {
            res.seen = r.u64()?;
            let n = r.len()?;
            for _ in 0..n {
                let text = match r.u8()? {
                    0 => None,
                    1 => {
                        let text = String::from_utf8(r.bytes()?.to_vec())
                            .map_err(|_| ReplayDecodeError("text is not UTF-8"))?;
                        let k = r.len()?;
                        let ids = (0..k).map(|_| r.u32()).collect::<Result<Vec<_>, _>>()?;
                        Some(TokenSequence { ids, text })
                    }
                    _ => return Err(ReplayDecodeError("bad text tag")),
                };
                let image = match r.u8()? {
                    0 => None,
                    1 => {
                        let dim = r.len()?;
                        let rows = r.len()?;
                        let features = (0..rows.checked_mul(dim).ok_or(ReplayDecodeError("size overflow"))?)
                            .map(|_| r.f32())
                            .collect::<Result<Vec<_>, _>>()?;
                        let mut locations = Vec::with_capacity(rows);
                        for _ in 0..rows {
                            locations.push([r.f32()?, r.f32()?, r.f32()?, r.f32()?, r.f32()?]);
                        }
                        let class_probs = match r.u8()? {
                            0 => None,
                            1 => {
                                let classes = r.len()?;
                                let probs = (0..rows * classes).map(|_| r.f32()).collect::<Result<Vec<_>, _>>()?;
                                Some(ClassProbs { classes, probs })
                            }
                            _ => return Err(ReplayDecodeError("bad class tag")),
                        };
                        Some(ObjectSequence { dim, features, locations, class_probs })
                    }
                    _ => return Err(ReplayDecodeError("bad image tag")),
                };
                if res.items.len() < capacity {
                    res.items.push(ReplayItem { text, image });
                }
            }
        }
        if !r.0.is_empty() {
            return Err(ReplayDecodeError("trailing bytes"));
        }
        Ok(out)
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, x: u8) {
        self.0.push(x);
    }
    fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn f32(&mut self, x: f32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ReplayDecodeError> {
        if self.0.len() < n {
            return Err(ReplayDecodeError("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ReplayDecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, ReplayDecodeError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| ReplayDecodeError("truncated"))?))
    }
    fn u64(&mut self) -> Result<u64, ReplayDecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().map_err(|_| ReplayDecodeError("truncated"))?))
    }
    fn f32(&mut self) -> Result<f32, ReplayDecodeError> {
        Ok(f32::from_le_bytes(self.take(4)?.try_into().map_err(|_| ReplayDecodeError("truncated"))?))
    }
    /// A length that must fit in what is left (guards against huge allocations).
    fn len(&mut self) -> Result<usize, ReplayDecodeError> {
        let n = self.u64()?;
        if n > self.0.len() as u64 * 8 + 1 {
            return Err(ReplayDecodeError("length exceeds data"));
        }
        Ok(n as usize)
    }
    fn bytes(&mut self) -> Result<&'a [u8], ReplayDecodeError> {
        let n = self.len()?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_item(i: u32) -> ReplayItem {
        ReplayItem { text: Some(TokenSequence { ids: vec![1, i, 2], text: format!("t{i}") }), image: None }
    }

    fn image_item(v: f32) -> ReplayItem {
        ReplayItem {
            text: None,
            image: Some(ObjectSequence {
                dim: 2,
                features: vec![v, v + 1.0, v + 2.0, v + 3.0],
                locations: vec![[0.0, 0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5, 0.25]],
                class_probs: Some(ClassProbs { classes: 1, probs: vec![1.0, 1.0] }),
            }),
        }
    }

    #[test]
    fn reservoir_is_bounded_and_uniform() {
        let mut b = ReplayBuffers::new(100, 7);
        for i in 0..10_000 {
            b.offer(RecordKind::Text, text_item(i));
        }
        assert_eq!(b.len(RecordKind::Text), 100);
        // Uniform over the stream: about half the kept items come from the second half.
        let late = b.reservoirs[0].items.iter().filter(|it| it.text.as_ref().map_or(0, |t| t.ids[1]) >= 5000).count();
        assert!((30..=70).contains(&late), "late items kept: {late}");
    }

    #[test]
    fn sample_respects_availability() {
        let mut b = ReplayBuffers::new(4, 1);
        assert!(b.sample(3, [1.0, 1.0, 1.0]).is_empty());
        b.offer(RecordKind::Image, image_item(1.0));
        let s = b.sample(5, [1.0, 1.0, 1.0]);
        assert_eq!(s.len(), 5);
        assert!(s.iter().all(|(k, _)| *k == RecordKind::Image));
        assert!(b.sample(2, [1.0, 0.0, 1.0]).is_empty(), "zero weight kinds are not drawn");
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut b = ReplayBuffers::new(3, 1);
        for i in 0..5 {
            b.offer(RecordKind::Text, text_item(i));
            b.offer(RecordKind::Pair, ReplayItem { text: text_item(i).text, image: image_item(i as f32).image });
        }
        b.offer(RecordKind::Image, image_item(9.0));
        let bytes = b.encode();
        let c = ReplayBuffers::decode(&bytes, 3, 2).expect("decodes");
        assert_eq!(c.reservoirs, b.reservoirs);
        assert!(ReplayBuffers::decode(&bytes[..bytes.len() - 1], 3, 2).is_err());
        let smaller = ReplayBuffers::decode(&bytes, 1, 2).expect("decodes smaller");
        assert_eq!(smaller.len(RecordKind::Text), 1);
    }
}
