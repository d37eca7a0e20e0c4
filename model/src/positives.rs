//! False negatives of the contrastive loss: in-batch candidates that show the same thing as an
//! anchor's own pair. The captions of one image often arrive in a row, and a replayed pair can
//! share a batch with its fresh copy (or a retrieved caption can be another pair's caption);
//! in plain in-batch InfoNCE each of those would be pushed away from the anchor although it
//! is a true match. Here they become positives instead:
//!
//! - pairs with the same image (same features) or the same caption (same token ids) form one
//!   group, and every pair of a group takes the positives of all of them;
//! - any text candidate equal to a pair's caption, and any image candidate equal to a pair's
//!   image, is a positive of that pair (a hard negative of another pair that happens to be
//!   this pair's caption stays a negative of the other pair only).

use std::collections::HashMap;

use crate::plan::ContrastPair;

/// A hash of an image's (unmasked) features, equal for equal features: the identity of "the
/// same image" (the same bytes decode to the same object sequence).
pub fn image_key(features: &[f32]) -> u64 {
    // FNV-1a over the bit patterns, length included.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ features.len() as u64;
    for v in features {
        // -0.0 and 0.0 are the same feature.
        let bits = if *v == 0.0 { 0 } else { v.to_bits() };
        h ^= u64::from(bits);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Makes every candidate that matches a pair's image or caption a positive of that pair, and
/// shares positives within groups of pairs with the same image or caption.
///
/// `image_keys[c]` is the [`image_key`] of image candidate `c`, `texts[c]` the ids of text
/// candidate `c`; `pairs` index into both.
pub(crate) fn share_positives(pairs: &mut [ContrastPair], image_keys: &[u64], texts: &[&[u32]]) {
    let n = pairs.len();
    // Candidates by identity.
    let mut images_by_key: HashMap<u64, Vec<usize>> = HashMap::new();
    for (c, &k) in image_keys.iter().enumerate() {
        images_by_key.entry(k).or_default().push(c);
    }
    let mut texts_by_ids: HashMap<&[u32], Vec<usize>> = HashMap::new();
    for (c, &t) in texts.iter().enumerate() {
        texts_by_ids.entry(t).or_default().push(c);
    }
    // Groups of pairs (union-find over same image or same caption).
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    let mut first_by_image: HashMap<u64, usize> = HashMap::new();
    let mut first_by_text: HashMap<&[u32], usize> = HashMap::new();
    for (p, pair) in pairs.iter().enumerate() {
        for other in [
            *first_by_image.entry(image_keys[pair.image]).or_insert(p),
            *first_by_text.entry(texts[pair.caption]).or_insert(p),
        ] {
            let (a, b) = (root(&mut parent, p), root(&mut parent, other));
            if a != b {
                parent[a] = b;
            }
        }
    }
    let mut group_texts: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut group_images: HashMap<usize, Vec<usize>> = HashMap::new();
    for (p, pair) in pairs.iter().enumerate() {
        let g = root(&mut parent, p);
        let texts_of = group_texts.entry(g).or_default();
        texts_of.extend(&pair.positive_texts);
        texts_of.extend(texts_by_ids.get(texts[pair.caption]).into_iter().flatten());
        let images_of = group_images.entry(g).or_default();
        images_of.extend(&pair.positive_images);
        images_of.extend(images_by_key.get(&image_keys[pair.image]).into_iter().flatten());
    }
    for (p, pair) in pairs.iter_mut().enumerate() {
        let g = root(&mut parent, p);
        merge(&mut pair.positive_texts, &group_texts[&g]);
        merge(&mut pair.positive_images, &group_images[&g]);
    }
}

/// Appends the entries of `more` missing from `list` (first occurrences keep their order).
fn merge(list: &mut Vec<usize>, more: &[usize]) {
    for &m in more {
        if !list.contains(&m) {
            list.push(m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Arch, ModelConfig};
    use crate::example::{Example, VisualInput};
    use crate::plan::Plan;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn pair(image: usize, caption: usize) -> ContrastPair {
        ContrastPair { image, caption, positive_texts: vec![caption], positive_images: vec![image] }
    }

    #[test]
    fn same_image_and_replayed_copies_are_positives() {
        // Pairs: 0 = (image A, "x"), 1 = (image A, "y"), 2 = (image B, "z"), 3 = replayed
        // copy of 2; text candidate 4 is pair 2's hard negative that equals pair 0's caption.
        let keys = [1, 1, 2, 2];
        let (x, y, z) = (vec![5u32, 6], vec![5u32, 7], vec![8u32]);
        let texts: Vec<&[u32]> = vec![&x, &y, &z, &z, &x];
        let mut pairs = vec![pair(0, 0), pair(1, 1), pair(2, 2), pair(3, 3)];
        share_positives(&mut pairs, &keys, &texts);
        let sorted = |v: &Vec<usize>| {
            let mut v = v.clone();
            v.sort_unstable();
            v
        };
        assert_eq!(sorted(&pairs[0].positive_texts), vec![0, 1, 4], "other caption of A, and the copy of x");
        assert_eq!(sorted(&pairs[1].positive_texts), vec![0, 1, 4]);
        assert_eq!(sorted(&pairs[0].positive_images), vec![0, 1]);
        assert_eq!(sorted(&pairs[2].positive_texts), vec![2, 3], "the replayed copy is no negative");
        assert_eq!(sorted(&pairs[3].positive_images), vec![2, 3]);
        // Pair 2's own hard negative stays a negative of pair 2.
        assert!(!pairs[2].positive_texts.contains(&4));
    }

    #[test]
    fn distinct_pairs_keep_only_their_own_positives() {
        let keys = [1, 2, 3];
        let (a, b, c) = (vec![5u32], vec![6u32], vec![7u32]);
        let texts: Vec<&[u32]> = vec![&a, &b, &c];
        let mut pairs = vec![pair(0, 0), pair(1, 1), pair(2, 2)];
        share_positives(&mut pairs, &keys, &texts);
        for (i, p) in pairs.iter().enumerate() {
            assert_eq!(p.positive_texts, vec![i]);
            assert_eq!(p.positive_images, vec![i]);
        }
    }

    #[test]
    fn image_key_tells_images_apart() {
        assert_eq!(image_key(&[1.0, 2.0]), image_key(&[1.0, 2.0]));
        assert_eq!(image_key(&[0.0, 2.0]), image_key(&[-0.0, 2.0]));
        assert_ne!(image_key(&[1.0, 2.0]), image_key(&[2.0, 1.0]));
        assert_ne!(image_key(&[1.0]), image_key(&[1.0, 0.0]));
    }

    /// Through `Plan::build`: a batch with two captions of one image, and a pair with its
    /// replayed copy.
    #[test]
    fn plan_never_uses_the_same_image_or_a_copy_as_a_negative() {
        use crate::tests::common::SPECIAL;
        let config = ModelConfig::preset(Arch::Unimo, "tiny", 100, 4, SPECIAL).expect("tiny");
        let image = |seed: f32| VisualInput {
            dim: 4,
            features: (0..12).map(|i| seed + i as f32).collect(),
            locations: vec![[0.0, 0.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.5, 1.0, 0.5], [0.5, 0.0, 1.0, 1.0, 0.5]],
            class_probs: None,
        };
        let example = |img: f32, words: &[u32]| Example {
            text: Some([&[SPECIAL.cls][..], words, &[SPECIAL.sep][..]].concat()),
            image: Some(image(img)),
            ..Example::default()
        };
        let examples = vec![
            example(0.0, &[10, 11]),
            example(0.0, &[12, 13]),
            example(50.0, &[14, 15]),
            example(50.0, &[14, 15]),
            example(90.0, &[16, 17]),
        ];
        let plan = Plan::build(&examples, &config, &mut StdRng::seed_from_u64(1));
        let pairs = &plan.cmcl.pairs;
        assert_eq!(pairs.len(), 5);
        let has = |v: &[usize], x: usize| v.contains(&x);
        assert!(has(&pairs[0].positive_texts, pairs[1].caption) && has(&pairs[1].positive_texts, pairs[0].caption));
        assert!(has(&pairs[0].positive_images, pairs[1].image));
        assert!(has(&pairs[2].positive_texts, pairs[3].caption) && has(&pairs[3].positive_images, pairs[2].image));
        assert_eq!(pairs[4].positive_texts, vec![pairs[4].caption]);
        assert!(!has(&pairs[0].positive_texts, pairs[2].caption));
        // ITM: no pair is shown a caption of its own image (or of its copy) as mismatched.
        let joint = &plan.groups[crate::plan::JOINT];
        let mismatched: Vec<_> = plan.itm.iter().filter(|m| !m.matched).collect();
        assert!(!mismatched.is_empty());
        for m in mismatched {
            let key = image_key(&joint.images[m.row].features);
            let text = &joint.texts[m.row];
            for e in &examples {
                let same_image = image_key(&e.image.as_ref().expect("pairs").features) == key;
                assert!(!(same_image && e.text.as_ref() == Some(text)), "a caption of its own image as an ITM negative");
            }
        }
    }
}
