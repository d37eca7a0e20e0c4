"""The twin's region extractor against the Rust one (golden file written by
`ingest/tests/objects_golden.rs`): bit-identical features and locations on PNG files."""

import base64
import json
import os
import struct
import unittest

import torch

from unimod_torch.objects import ObjectExtractor, decode_image, parse_regions

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "objects_golden.json")


class ObjectsMatchRust(unittest.TestCase):
    def test_golden_cases(self):
        with open(GOLDEN, encoding="utf-8") as f:
            cases = json.load(f)["cases"]
        self.assertGreaterEqual(len(cases), 4)
        salient_rows = 0
        for case in cases:
            with self.subTest(case["name"]):
                rgb = decode_image(base64.b64decode(case["png_base64"]))
                seq = ObjectExtractor(case["box_scales"], case["crop_size"], case.get("salient_boxes", 0)).extract(rgb)
                want_f = torch.tensor(case["features"], dtype=torch.float32).reshape(-1, case["dim"])
                want_l = torch.tensor(case["locations"], dtype=torch.float32)
                self.assertEqual(tuple(seq.features.shape), tuple(want_f.shape))
                diff = (seq.features - want_f).abs().max().item()
                self.assertEqual(diff, 0.0, f"features differ by up to {diff}")
                self.assertTrue(torch.equal(seq.locations, want_l))
                if case.get("salient_boxes", 0):
                    salient_rows += seq.features.shape[0] - 1 - sum(n * n for n in case["box_scales"])
        # The salient cases find objects (the drawn shapes, the busy pattern's blobs).
        self.assertGreaterEqual(salient_rows, 8)

    def test_regions_get_a_mean_row_and_relative_locations(self):
        b64 = base64.b64encode(struct.pack("<4f", 1.0, 2.0, 3.0, 6.0)).decode()
        seq = parse_regions({"image_w": 100, "image_h": 50, "dim": 2,
                             "boxes": [[0, 0, 50, 50], [50, 10, 100, 20]], "features_base64": b64})
        self.assertEqual(seq.features.tolist(), [[2.0, 4.0], [1.0, 2.0], [3.0, 6.0]])
        self.assertEqual(seq.locations[2].tolist()[:4], [0.5, 0.20000000298023224, 1.0, 0.4000000059604645])


if __name__ == "__main__":
    unittest.main()
