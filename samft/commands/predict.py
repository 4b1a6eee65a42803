"""`python -m samft predict checkpoint=PATH input=IMAGE_OR_FOLDER prompts=FILE output=DIR`.

For every image with prompts (see `samft.infer.prompts_file` for the file format) it writes

    DIR/<image>/<prompt name>.png   the mask of each prompt, 0 / 255, original size
    DIR/<image>/overlay.png         the image with every mask, point and box drawn on it
    DIR/scores.json                 per image and prompt: the mask file, the IoU head's
                                    score of the kept mask and of every candidate, area

where <image> is the image's path under `input` without its extension. Inference is
`samft.infer.predictor.SamPredictor` (the official predictor's API and processing); the
work is `samft.infer.predict.predict`, this file only reads the config.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from samft.commands.accelerator import check_device
from samft.commands.schema import check_required
from samft.data.images import allow_image_pixels
from samft.infer.predict import predict

# config key -> how the command line and the docs spell it
REQUIRED = {
    "checkpoint": "checkpoint=PATH",
    "input": "input=IMAGE_OR_FOLDER",
    "prompts_file": "prompts=FILE",
    "output": "output=DIR",
}


@hydra.main(version_base="1.3", config_path="pkg://samft.conf", config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    allow_image_pixels(cfg.max_image_pixels)
    check_required(cfg, REQUIRED, "predict")
    check_device(cfg.device)
    predict(
        checkpoint=cfg.checkpoint,
        input=cfg.input,
        prompts=cfg.prompts_file,
        output=cfg.output,
        variant=cfg.variant,
        image_size=cfg.image_size,
        multimask_output=cfg.multimask_output,
        device=cfg.device,
        overlay=cfg.overlay,
    )


def main() -> None:
    """Run the Hydra app, reading `prompts=FILE` as `prompts_file=FILE`.

    `prompts` is also a config group (conf/prompts/, the training prompt samplers), so
    Hydra would look for FILE among that group's options.
    """
    sys.argv = [
        "prompts_file=" + arg.split("=", 1)[1] if arg.startswith("prompts=") else arg
        for arg in sys.argv
    ]
    hydra_main()
