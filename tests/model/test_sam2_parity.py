"""samft's SAM 2 image model against Meta's `sam2` on identical random weights.

Fast tests use `sam2_tiny` and the same architecture built with Meta's classes
(`reference_sam2.tiny_config`); the slow ones use Meta's real `sam2.1_hiera_t` config.
Every comparison is fp32 on the CPU within `ATOL`; the state dict is compared bit for bit.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from reference_sam2 import build_tiny_meta, import_sam2, perturb_, sam2_hydra, same_weights_tiny
from torch import Tensor, nn

from samft.model.registry import VARIANTS, build_sam
from samft.model.sam2 import Sam2, Sam2Features
from samft.model.sam2.carried import is_video_part
from samft.model.sam2.image_encoder import feature_sizes
from samft.model.sam2.mask_decoder import stability_score
from samft.model.sam2.model import LOW_RES_CLAMP

pytestmark = pytest.mark.usefixtures("one_thread")

ATOL = 1e-4
IMAGE = "4d4f254f3b8b4408"  # dsb-nuclei val: 256 x 320 (not square), 15 nuclei
VIDEO_PREDICTOR = "sam2.sam2_video_predictor.SAM2VideoPredictor"


def close(got: Tensor, want: Tensor, atol: float = ATOL) -> float:
    """Assert `got` equals `want` within `atol`; the max abs difference (printed with -s)."""
    got, want = torch.as_tensor(got), torch.as_tensor(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    diff = (got.float() - want.float()).abs().max().item() if got.numel() else 0.0
    print(f"max abs diff {diff:.2e}")
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=0)
    return diff


@pytest.fixture(scope="module")
def meta():
    return import_sam2()


@pytest.fixture(scope="module")
def tiny_pair(meta) -> tuple[Sam2, nn.Module]:
    """(samft sam2_tiny, Meta's SAM2Base of the same architecture), same random weights."""
    return same_weights_tiny(seed=0)


@pytest.fixture(scope="module")
def nuclei(shared_data: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A real dsb-nuclei image (`H x W x 3` uint8) and prompts from one of its nuclei, in
    the original frame: a positive click on it, a negative one, and its box."""
    split = shared_data / "dsb-nuclei" / "val"
    image = np.array(Image.open(split / "images" / f"{IMAGE}.png").convert("RGB"))
    ids = np.asarray(Image.open(split / "masks" / f"{IMAGE}.png")).astype(np.int64)
    instances = np.unique(ids[ids > 0])
    ys, xs = np.nonzero(ids == instances[len(instances) // 2])
    prompts = {
        "points": np.array([[xs.mean(), ys.mean()], [xs.max() + 6.0, ys.mean()]]),
        "labels": np.array([1, 0]),
        "box": np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64),
    }
    return image, prompts


def _image_batch(size: int, seed: int = 0) -> Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- state dict: Meta's keys, video parts carried bit for bit -------------------------------


def test_state_dict_round_trips_bit_identical_with_video_parts(meta, tiny_pair):
    ours, ref = tiny_pair
    want = ref.state_dict()
    got = ours.state_dict()
    assert set(got) == set(want)
    for key, tensor in want.items():
        assert torch.equal(got[key], tensor) and got[key].dtype == tensor.dtype, key
    # the video parts are carried, never parameters (not trained, not counted)
    video = [k for k in want if is_video_part(k)]
    assert len(ours.video_parts) == len(video) > 0
    assert not any(is_video_part(name) for name, _ in ours.named_parameters())
    assert set(want) - set(video) == set(build_sam("sam2_tiny").state_dict())


def test_meta_video_predictor_loads_samft_export_strictly(meta, tiny_pair):
    ours, ref = tiny_pair
    video = build_tiny_meta(VIDEO_PREDICTOR)
    video.load_state_dict(ours.state_dict(), strict=True)
    for key, tensor in ref.state_dict().items():
        assert torch.equal(video.state_dict()[key], tensor), key


def test_carried_parts_strictness_and_dtype(tiny_pair):
    _, ref = tiny_pair
    fresh = build_sam("sam2_tiny")
    assert len(fresh.video_parts) == 0
    without_memory = {k: v for k, v in ref.state_dict().items() if not k.startswith("memory_")}
    fresh.load_state_dict(without_memory, strict=True)  # takes the video parts it is given
    fresh.load_state_dict(ref.state_dict(), strict=True)
    # once carried, they are part of the model: a state dict without them misses them
    missing = fresh.load_state_dict(without_memory, strict=False).missing_keys
    assert missing and all(k.startswith("memory_") for k in missing)
    with pytest.raises(RuntimeError, match="memory_attention"):
        fresh.load_state_dict(without_memory, strict=True)
    # nested (as in a LightningModule) and cast: they come back as they were loaded
    holder = nn.ModuleDict({"model": fresh.to(torch.float64)})
    exported = holder.state_dict()
    for key, tensor in ref.state_dict().items():
        if is_video_part(key):
            assert torch.equal(exported[f"model.{key}"], tensor)
            assert exported[f"model.{key}"].dtype == torch.float32
    holder.load_state_dict(exported, strict=True)


# --- image encoder --------------------------------------------------------------------------


def test_hiera_levels_match(tiny_pair):
    ours, ref = tiny_pair
    x = _image_batch(256)
    with torch.no_grad():
        got = ours.image_encoder.trunk(x)
        want = ref.image_encoder.trunk(x)
    assert [tuple(g.shape[-3:]) for g in got] == [
        (16, 64, 64),
        (32, 32, 32),
        (64, 16, 16),
        (128, 8, 8),
    ]
    for g, w in zip(got, want, strict=True):
        close(g, w)


def test_fpn_neck_and_encoder_match(tiny_pair):
    ours, ref = tiny_pair
    x = _image_batch(256, seed=1)
    with torch.no_grad():
        trunk = ref.image_encoder.trunk(x)
        neck_want, _ = ref.image_encoder.neck(trunk)
        neck_got = ours.image_encoder.neck(trunk)
        for g, w in zip(neck_got, neck_want, strict=True):
            close(g, w)
        encoded = ours.image_encoder(x)
        backbone = ref.forward_image(x)  # conv_s0 / conv_s1 applied to the two high levels
        assert len(encoded) == 3
        close(encoded[2], backbone["vision_features"])
        features = ours.encode(x)
        close(features.high_res[0], backbone["backbone_fpn"][0])
        close(features.high_res[1], backbone["backbone_fpn"][1])
        _, vision_feats, _, sizes = ref._prepare_backbone_features(backbone)
        embed = (vision_feats[-1] + ref.no_mem_embed).permute(1, 2, 0).reshape(2, -1, *sizes[-1])
        close(features.image_embed, embed)


# --- prompt encoder -------------------------------------------------------------------------


def _prompts(kind: str, n: int = 3, size: int = 256):
    g = torch.Generator().manual_seed(5)
    coords = torch.rand(n, 2, 2, generator=g) * size
    labels = torch.tensor([[1, 0], [1, 1], [0, 1]])[:n]
    boxes = torch.cat([coords[:, 0], coords[:, 0] + 40], dim=1)
    masks = torch.randn(n, 1, size // 4, size // 4, generator=g)
    return {
        "points": {"points": (coords, labels), "boxes": None, "masks": None},
        "box": {"points": None, "boxes": boxes, "masks": None},
        "box+points": {"points": (coords, labels), "boxes": boxes, "masks": None},
        "corners+point": {  # the predictor's form: the box as labelled corners first
            "points": (
                torch.cat([boxes.reshape(-1, 2, 2), coords[:, :1]], 1),
                torch.cat([torch.tensor([[2, 3]]).expand(n, 2), labels[:, :1]], 1),
            ),
            "boxes": None,
            "masks": None,
        },
        "mask": {"points": None, "boxes": None, "masks": masks},
        "points+mask": {"points": (coords, labels), "boxes": None, "masks": masks},
    }[kind]


@pytest.mark.parametrize(
    "kind", ["points", "box", "box+points", "corners+point", "mask", "points+mask"]
)
def test_prompt_encoder_matches(tiny_pair, kind):
    ours, ref = tiny_pair
    prompts = _prompts(kind)
    with torch.no_grad():
        sparse, dense = ours.sam_prompt_encoder(**prompts)
        sparse_ref, dense_ref = ref.sam_prompt_encoder(**prompts)
    close(sparse, sparse_ref)
    close(dense, dense_ref)
    close(ours.sam_prompt_encoder.get_dense_pe(), ref.sam_prompt_encoder.get_dense_pe())


# --- mask decoder ---------------------------------------------------------------------------


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("kind", ["points", "corners+point", "points+mask"])
def test_mask_decoder_matches(tiny_pair, multimask, kind):
    ours, ref = tiny_pair
    with torch.no_grad():
        features = ours.encode(_image_batch(256, seed=2)[:1])
        sparse, dense = ref.sam_prompt_encoder(**_prompts(kind))
        args = {
            "image_embeddings": features.image_embed,
            "image_pe": ref.sam_prompt_encoder.get_dense_pe(),
            "sparse_prompt_embeddings": sparse,
            "dense_prompt_embeddings": dense,
            "multimask_output": multimask,
            "high_res_features": list(features.high_res),
        }
        masks, iou, object_score = ours.sam_mask_decoder(**args)
        masks_ref, iou_ref, _, object_ref = ref.sam_mask_decoder(**args, repeat_image=True)
    assert masks.shape == (3, 3 if multimask else 1, 64, 64)
    close(masks, masks_ref)
    close(iou, iou_ref)
    close(object_score, object_ref)


def test_mask_decoder_batched_images_match_per_image(tiny_pair):
    """Prompts of two images in one call (`image_index`) equal Meta's per-image calls."""
    ours, ref = tiny_pair
    with torch.no_grad():
        features = ours.encode(_image_batch(256, seed=3))
        sparse, dense = ref.sam_prompt_encoder(**_prompts("points"))
        index = torch.tensor([1, 0, 1])
        masks, iou, obj = ours.sam_mask_decoder(
            features.image_embed,
            ours.sam_prompt_encoder.get_dense_pe(),
            sparse,
            dense,
            multimask_output=True,
            high_res_features=features.high_res,
            image_index=index,
        )
        for n, i in enumerate(index.tolist()):
            want = ref.sam_mask_decoder(
                image_embeddings=features.image_embed[i : i + 1],
                image_pe=ref.sam_prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse[n : n + 1],
                dense_prompt_embeddings=dense[n : n + 1],
                multimask_output=True,
                repeat_image=False,
                high_res_features=[f[i : i + 1] for f in features.high_res],
            )
            close(masks[n : n + 1], want[0])
            close(iou[n : n + 1], want[1])
            close(obj[n : n + 1], want[3])


def test_single_mask_stability_fallback_matches(tiny_pair):
    """Crafted logits with stable and unstable single masks choose as Meta's decoder does."""
    ours, ref = tiny_pair
    g = torch.Generator().manual_seed(4)
    masks = torch.randn(6, 4, 16, 16, generator=g)
    masks[::2, 0] = masks[::2, 0].sign() * 5  # far from 0: stable
    iou = torch.rand(6, 4, generator=g)
    got = ours.sam_mask_decoder.stable_single_mask(masks, iou)
    want = ref.sam_mask_decoder._dynamic_multimask_via_stability(masks, iou)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(
        stability_score(masks, 0.05), ref.sam_mask_decoder._get_stability_scores(masks)
    )


# --- the image predictor path on a real image ----------------------------------------------


def meta_predictor(meta, model: nn.Module, image_size: int):
    # torch.jit.script (deprecated) changes nothing in the transforms' arithmetic
    predictor = meta.sam2_image_predictor.SAM2ImagePredictor(model, disable_torch_jit=True)
    # Meta's predictor hard-codes the 1024 px feature sizes
    predictor._bb_feat_sizes = feature_sizes(image_size)
    return predictor


def samft_encode(model: Sam2, image: np.ndarray) -> Sam2Features:
    """Meta's `set_image` with samft's parts: `H x W x 3` uint8 -> features."""
    return model.encode(model.preprocess(torch.from_numpy(image).permute(2, 0, 1)[None]))


def samft_predict(
    model: Sam2,
    features: Sam2Features,
    original: tuple[int, int],
    prompts: dict,
    multimask: bool,
    mask_input: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Meta's `predict(return_logits=True)` with samft's parts: logits in the original
    frame (H, W), IoU, and low-res logits clamped as Meta's predictor returns them."""
    coords = labels = boxes = None
    if "points" in prompts:
        coords = model.transform_coords(
            torch.as_tensor(prompts["points"], dtype=torch.float32), original
        )[None]
        labels = torch.as_tensor(prompts["labels"])[None]
    if "box" in prompts:
        boxes = model.transform_boxes(
            torch.as_tensor(prompts["box"], dtype=torch.float32)[None], original
        )
    low_res, iou, _ = model.decode(features, coords, labels, boxes, mask_input, multimask)
    masks = model.postprocess_masks(low_res, original)
    return masks[0], iou[0], low_res.clamp(-LOW_RES_CLAMP, LOW_RES_CLAMP)[0]


PREDICT_CASES = [
    ("points", True),
    ("points", False),
    ("box", False),
    ("box", True),
    ("box+points", False),
]


def _select(prompts: dict, kind: str) -> dict:
    keys = {
        "points": ("points", "labels"),
        "box": ("box",),
        "box+points": ("points", "labels", "box"),
    }
    return {k: prompts[k] for k in keys[kind]}


@pytest.mark.parametrize(("kind", "multimask"), PREDICT_CASES)
def test_image_predictor_path_matches_on_real_image(meta, tiny_pair, nuclei, kind, multimask):
    ours, ref = tiny_pair
    image, prompts = nuclei
    prompts = _select(prompts, kind)
    predictor = meta_predictor(meta, ref, ours.image_size)
    predictor.set_image(image)
    point_args = {"point_coords": prompts.get("points"), "point_labels": prompts.get("labels")}
    want = predictor.predict(
        **point_args, box=prompts.get("box"), multimask_output=multimask, return_logits=True
    )
    with torch.no_grad():
        features = samft_encode(ours, image)
        got = samft_predict(ours, features, image.shape[:2], prompts, multimask)
    assert got[0].shape[-2:] == image.shape[:2]
    for g, w in zip(got, want, strict=True):
        close(g, torch.from_numpy(w))

    # a second round with the low-res answer as mask input, as an interactive tool does
    best = int(np.argmax(want[1]))
    want2 = predictor.predict(
        **point_args,
        box=prompts.get("box"),
        mask_input=want[2][best : best + 1],
        multimask_output=False,
        return_logits=True,
    )
    with torch.no_grad():
        mask_input = torch.from_numpy(want[2][best : best + 1])[None]
        got2 = samft_predict(ours, features, image.shape[:2], prompts, False, mask_input)
    for g, w in zip(got2, want2, strict=True):
        close(g, torch.from_numpy(w))


def test_preprocess_matches_meta_transforms(meta, tiny_pair, nuclei):
    ours, ref = tiny_pair
    image, _ = nuclei
    transforms = meta.utils.transforms.SAM2Transforms(256, 0.0, disable_torch_jit=True)
    want = transforms(image)
    got = ours.preprocess(torch.from_numpy(image).permute(2, 0, 1)[None])[0]
    close(got, want, atol=1e-6)


# --- registry -------------------------------------------------------------------------------


def test_sam2_variants_are_registered():
    assert VARIANTS["sam2.1_hiera_t"].stages == (1, 2, 7, 2)
    assert VARIANTS["sam2.1_hiera_l"].window_spec == (8, 4, 16, 8)
    assert VARIANTS["sam2_hiera_b+"] == VARIANTS["sam2.1_hiera_b+"]  # same image model
    with pytest.raises(ValueError, match="multiple of 32, got 500"):
        build_sam("sam2_tiny", image_size=500)
    small = build_sam("sam2_tiny", image_size=128)
    assert small.sam_prompt_encoder.image_embedding_size == (8, 8)


@pytest.mark.parametrize("size", ["t", "s", "b+", "l"])
@pytest.mark.parametrize("version", ["sam2.1", "sam2"])
def test_real_variants_match_meta_configs(meta, version, size):
    """All eight released configs (read from Meta's package) give our hyper-parameters.
    (Meta's Hiera cannot be built on the meta device; the slow tests build hiera_t.)"""
    config = Path(meta.__file__).parent / "configs" / version / f"{version}_hiera_{size}.yaml"
    model = OmegaConf.to_container(OmegaConf.load(config))["model"]
    trunk, neck = model["image_encoder"]["trunk"], model["image_encoder"]["neck"]
    defaults = inspect.signature(meta.modeling.backbones.hieradet.Hiera).parameters
    variant = f"{version}_hiera_{size}"
    hp = VARIANTS[variant]
    for field in (
        "embed_dim",
        "num_heads",
        "stages",
        "global_att_blocks",
        "window_spec",
        "window_pos_embed_bkg_spatial_size",
        "q_pool",
    ):
        want = trunk.get(field, defaults[field].default)
        assert tuple(np.atleast_1d(getattr(hp, field))) == tuple(np.atleast_1d(want)), field
    assert (hp.image_size, hp.prompt_embed_dim) == (model["image_size"], neck["d_model"])
    assert hp.fpn_top_down_levels == tuple(neck["fpn_top_down_levels"])
    assert neck["fpn_interp_model"] == "nearest" and model["image_encoder"]["scalp"] == 1
    with torch.device("meta"):
        assert build_sam(variant).image_encoder.trunk.channel_list == neck["backbone_channel_list"]
    assert model["pred_obj_scores_mlp"] == hp.pred_obj_scores_mlp
    flags = (
        "use_high_res_features_in_sam",
        "iou_prediction_use_sigmoid",
        "pred_obj_scores",
        "directly_add_no_mem_embed",
    )
    assert all(model[flag] for flag in flags)


# --- the real sam2.1_hiera_t config ---------------------------------------------------------


@pytest.fixture(scope="module")
def hiera_t_pair(meta) -> tuple[Sam2, nn.Module]:
    with sam2_hydra():
        ref = meta.build_sam.build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", device="cpu")
    perturb_(ref, seed=1, scale=0.02)
    ours = build_sam("sam2.1_hiera_t")
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


@pytest.mark.slow
def test_hiera_t_round_trip_and_meta_video_predictor_load(meta, hiera_t_pair):
    ours, ref = hiera_t_pair
    want = ref.state_dict()
    got = ours.state_dict()
    assert set(got) == set(want) and len(got) == 471
    assert all(torch.equal(got[k], v) for k, v in want.items())
    with sam2_hydra():
        video = meta.build_sam.build_sam2_video_predictor(
            "configs/sam2.1/sam2.1_hiera_t.yaml", device="cpu"
        )
    video.load_state_dict(got, strict=True)


@pytest.mark.slow
def test_hiera_t_image_predictor_path_matches(meta, hiera_t_pair, nuclei):
    ours, ref = hiera_t_pair
    image, prompts = nuclei
    levels: dict[str, list[Tensor]] = {}
    hooks = [
        model.image_encoder.trunk.register_forward_hook(
            lambda _m, _i, out, name=name: levels.__setitem__(name, out)
        )
        for name, model in (("ours", ours), ("ref", ref))
    ]
    try:
        predictor = meta_predictor(meta, ref, 1024)
        predictor.set_image(image)
        with torch.no_grad():
            features = samft_encode(ours, image)
    finally:
        for hook in hooks:
            hook.remove()
    for g, w in zip(levels["ours"], levels["ref"], strict=True):  # Hiera, level by level
        close(g, w)
    close(features.image_embed, predictor._features["image_embed"])
    for g, w in zip(features.high_res, predictor._features["high_res_feats"], strict=True):
        close(g, w)
    for kind, multimask in [("points", True), ("box", False)]:
        selected = _select(prompts, kind)
        want = predictor.predict(
            point_coords=selected.get("points"),
            point_labels=selected.get("labels"),
            box=selected.get("box"),
            multimask_output=multimask,
            return_logits=True,
        )
        with torch.no_grad():
            got = samft_predict(ours, features, image.shape[:2], selected, multimask)
        for g, w in zip(got, want, strict=True):
            close(g, torch.from_numpy(w))
