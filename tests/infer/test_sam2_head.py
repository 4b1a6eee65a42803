"""The instance head on SAM 2 (`sam2_tiny` at 64 px), end to end: `HeadInstanceSegmenter`
equals its pieces called by hand (the model's `encode`, `image_embed` with the S/8 and S/4
levels as skips, the whole square resized to the image); a trained checkpoint's head
survives export -> load; `segment` and `eval mode=instance` take it like SAM 1's."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from head_runs import save_head_checkpoint
from PIL import Image
from torch import nn

from samft.data.instance_targets import instance_targets
from samft.data.resize import resize_image
from samft.evaluate.automatic import ground_truth_labels
from samft.evaluate.head import evaluate_head
from samft.infer.head_segment import HeadInstanceSegmenter
from samft.infer.instance_watershed import relabel, seeded_watershed
from samft.infer.segment import segment
from samft.model.registry import build_sam
from samft.model.transforms import SQUARE_RESIZE
from samft.train.instance_metrics import instance_scores
from samft.weights import load_instance_head, load_sam, read_state_dict
from samft.weights.export import export_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64  # sam2_tiny's input square here: a 4 x 4 embedding, skips at 8 x 8 and 16 x 16
IMAGE = "220b37f4ca7cab48.png"  # a 256 x 320 val image: not square


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A samft Lightning checkpoint of `sam2_tiny` at 64 px with a (random) instance head."""
    path = tmp_path_factory.mktemp("run") / "last.ckpt"
    module = save_head_checkpoint(path, "sam2_tiny", SIZE)
    assert module.instance_head.skip_channels == (16, 8)
    return path


@pytest.fixture(scope="module")
def nuclei(shared_data, tmp_path_factory) -> Path:
    """One real, non-square val image of DSB 2018 nuclei with its instance masks."""
    root = tmp_path_factory.mktemp("dsb")
    for folder in ("images", "masks"):
        (root / folder).mkdir()
        shutil.copy(shared_data / "dsb-nuclei" / "val" / folder / IMAGE, root / folder / IMAGE)
    return root


def _image(nuclei: Path) -> np.ndarray:
    image = np.array(Image.open(nuclei / "images" / IMAGE).convert("RGB"))
    assert image.shape == (256, 320, 3)
    return image


def _by_hand(sam, head, image: np.ndarray) -> np.ndarray:
    """The head's maps of `image` from the pieces: SAM 2's square, `encode`, the skips."""
    resized = resize_image(image, SIZE, SQUARE_RESIZE)
    assert resized.shape == (SIZE, SIZE, 3)  # the square: nothing padded, nothing to crop
    pixels = torch.from_numpy(resized).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        x = sam.preprocess(pixels)
        features = sam.encode(x)
        s0, s1 = features.high_res  # B x 8 x 16 x 16, B x 16 x 8 x 8
        logits = head(features.image_embed, x, (s1, s0))
    probs = F.interpolate(logits.sigmoid(), image.shape[:2], mode="bilinear", align_corners=False)
    return probs[0].numpy()


def test_the_segmenter_is_its_pieces_by_hand(trained, nuclei):
    sam = load_sam(trained, image_size=SIZE)
    head = load_instance_head(trained)
    image = _image(nuclei)
    segmenter = HeadInstanceSegmenter(sam, head)
    maps = segmenter.maps(image)
    assert maps.shape == (3, 256, 320)
    np.testing.assert_allclose(maps, _by_hand(sam, head, image), atol=1e-6)
    labels = segmenter.labels(image)
    np.testing.assert_array_equal(labels, seeded_watershed(*_by_hand(sam, head, image)))
    assert labels.max() > 0
    # `encode` is SAM 2's: `no_mem_embed` counts (the encoder alone would not add it)
    without = copy.deepcopy(sam)
    with torch.no_grad():
        without.no_mem_embed.zero_()
    assert np.abs(HeadInstanceSegmenter(without, head).maps(image) - maps).max() > 1e-4


class ExactHead(nn.Module):
    """Answers the targets of a fixed S x S id map as logits, whatever the features."""

    def __init__(self, labels: np.ndarray) -> None:
        super().__init__()
        probs = torch.from_numpy(instance_targets(labels)).clamp(1e-4, 1 - 1e-4)
        self.register_buffer("logits", torch.logit(probs)[None])

    def forward(self, embeddings, images=None, skips=()):
        assert len(skips) == 2
        return self.logits.expand(embeddings.shape[0], -1, -1, -1)


def test_the_whole_square_maps_back_onto_the_image():
    """SAM 2 squeezes a 32 x 64 image into the 64 x 64 square: every row of the maps
    belongs to the image (SAM's crop of the padding would cut the bottom half off)."""
    labels = np.zeros((SIZE, SIZE), dtype=np.int32)
    labels[8:24, 8:40] = 1
    labels[40:48, 8:24] = 2  # in the square's bottom half
    torch.manual_seed(0)
    segmenter = HeadInstanceSegmenter(build_sam("sam2_tiny", image_size=SIZE), ExactHead(labels))
    square = segmenter.generate(np.zeros((SIZE, SIZE, 3), dtype=np.uint8))
    assert [r["bbox"] for r in square] == [[8, 8, 31, 15], [8, 40, 15, 7]]
    squeezed = segmenter.generate(np.zeros((32, SIZE, 3), dtype=np.uint8))
    assert [r["bbox"] for r in squeezed] == [[8, 4, 31, 7], [8, 20, 15, 3]]  # rows halved


def test_export_keeps_the_sam2_file_and_writes_the_head_beside_it(trained, nuclei, tmp_path):
    written = export_checkpoint(trained, tmp_path / "exp" / "m")
    assert written["instance_head"].name == "m.instance_head.safetensors"
    assert set(read_state_dict(written["pth"])) == set(read_state_dict(trained))
    sidecar = json.loads(written["sidecar"].read_text())
    entry = sidecar["instance_head"]
    assert entry["arguments"]["skip_channels"] == [16, 8]
    assert entry["arguments"]["upsample_factor"] == 16 and entry["arguments"]["embed_dim"] == 64
    assert sidecar["files"]["instance_head"]["sha256"] == entry["sha256"]
    assert "preprocessing" in sidecar  # still SAM 2's sidecar

    run_head, export_head = load_instance_head(trained), load_instance_head(written["pth"])
    assert export_head.skip_channels == (16, 8)
    for key, value in run_head.state_dict().items():
        torch.testing.assert_close(export_head.state_dict()[key], value, rtol=0, atol=0)
    image = _image(nuclei)
    from_run = HeadInstanceSegmenter(load_sam(trained, image_size=SIZE), run_head)
    exported = written["safetensors"]
    from_export = HeadInstanceSegmenter(
        load_sam(exported, image_size=SIZE), load_instance_head(exported)
    )
    np.testing.assert_allclose(from_run.maps(image), from_export.maps(image), atol=1e-6)


def test_segment_and_eval_take_a_sam2_head(trained, nuclei, tmp_path):
    sam = load_sam(trained, image_size=SIZE)
    expected = HeadInstanceSegmenter(sam, load_instance_head(trained)).labels(_image(nuclei))
    truth = ground_truth_labels(np.stack(_truth_masks(nuclei)))
    by_hand = instance_scores(expected, truth)

    report = segment(trained, nuclei / "images", tmp_path / "out", image_size=SIZE)
    assert report["mode"] == "head" and report["image_size"] == SIZE
    labels = np.array(Image.open(tmp_path / "out" / report["images"][0]["labels"]))
    np.testing.assert_array_equal(relabel(labels), relabel(expected))  # ids: largest first

    spec = {"format": "folder", "images": str(nuclei / "images"), "masks": str(nuclei / "masks")}
    result = evaluate_head(trained, spec, device="cpu")
    assert result.summary.image_size == SIZE  # the size the run trained at
    image = result.images[0]
    assert image["n_pred"] == expected.max() == by_hand["n_pred"] > 0
    assert image["n_gt"] == by_hand["n_gt"] == truth.max()
    assert image["mSA"] == pytest.approx(by_hand["mSA"])


def _truth_masks(nuclei: Path) -> list[np.ndarray]:
    """The image's objects, one `H x W` bool mask each, from its id map."""
    ids = np.asarray(Image.open(nuclei / "masks" / IMAGE))
    return [ids == value for value in np.unique(ids) if value != 0]
