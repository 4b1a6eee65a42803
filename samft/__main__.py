"""`python -m samft <command> [hydra overrides]`: dispatch only.

Each command is a Hydra application in `samft.commands`. The command name is removed from
`sys.argv` before Hydra parses it and kept in the environment (`SAMFT_COMMAND`): Lightning's
DDP launcher re-runs `python -m samft <argv[1:]>` for every other rank, and those children
find their command there.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "train": "Fine-tune SAM (Lightning Trainer.fit).",
    "eval": "Score checkpoints on a dataset: mIoU / Dice per prompt type, clicks and size.",
    "predict": "Masks, scores and overlays for images and a prompts file.",
    "export": "Write a checkpoint in the official layout (.pth/.safetensors) or ONNX.",
    "cache": "Precompute image embeddings of a frozen encoder.",
    "data": "Dataset statistics and a picture of augmented samples with prompts.",
}
ENV_COMMAND = "SAMFT_COMMAND"


def usage() -> str:
    lines = ["usage: python -m samft <command> [+experiment=NAME] [key=value ...]", ""]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    lines += ["", "`python -m samft <command> --help` lists the config groups and options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if len(argv) > 1 and argv[1] in COMMANDS:
        command = argv.pop(1)
    elif os.environ.get(ENV_COMMAND) in COMMANDS:
        command = os.environ[ENV_COMMAND]
    else:
        print(usage(), file=sys.stderr)
        raise SystemExit(0 if len(argv) > 1 and argv[1] in ("-h", "--help") else 2)
    os.environ[ENV_COMMAND] = command
    sys.argv = argv
    module = importlib.import_module(f"samft.commands.{command}")
    module.main()


if __name__ == "__main__":
    main()
