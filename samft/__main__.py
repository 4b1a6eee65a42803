"""`python -m samft <command> [hydra overrides]`: dispatch, and errors said in one line.

Each command is a Hydra application in `samft.commands`. The command name is removed from
`sys.argv` before Hydra parses it and kept in the environment (`SAMFT_COMMAND`): Lightning's
DDP launcher re-runs `python -m samft <argv[1:]>` for every other rank, and those children
find their command there.

A user error (a bad override or config value, a checkpoint, data, cache or output problem:
the `ValueError`s samft raises, also from a DataLoader worker, Hydra's and OmegaConf's config
errors, an OS error on a named path, a full disk anywhere) prints as one short message and
exits 2; a diverged run (`NonFiniteTrainingError`) exits 3. `HYDRA_FULL_ERROR=1`
shows the traceback. Any other exception keeps its traceback and exits 1. In a DDP run the
first rank to fail says it, once; the ranks that fail because it did exit quietly with its
code (`samft.commands.rank_errors`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import signal
import sys
import traceback
from collections.abc import Iterator

COMMANDS = {
    "train": "Fine-tune SAM (Lightning Trainer.fit).",
    "eval": "Score checkpoints on a dataset: mIoU / Dice per prompt type, clicks and size.",
    "predict": "Masks, scores and overlays for images and a prompts file.",
    "segment": "Segment everything: instance masks from a point grid, per image.",
    "export": "Write a checkpoint in the official layout (.pth/.safetensors) or ONNX.",
    "cache": "Precompute image embeddings of a frozen encoder.",
    "data": "Dataset statistics and a picture of augmented samples with prompts.",
    "weights": "Known pretrained weights (sam_vit_b, mobile_sam, litemedsam...): list, fetch.",
}
CONFIG_NAMES = {"data": "data_report"}  # the others compose conf/<command>.yaml
ENV_COMMAND = "SAMFT_COMMAND"
ENV_TRACEBACK = "SAMFT_TRACEBACK"  # the user's HYDRA_FULL_ERROR, kept for DDP children
USER_ERROR = 2


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
    os.environ.setdefault(ENV_TRACEBACK, os.environ.get("HYDRA_FULL_ERROR", "0"))
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises: the errors are reported below
    sys.argv = argv
    from samft.commands import rank_errors
    from samft.commands.quiet import quiet_library_noise

    rank_errors.prepare_note()  # before Lightning launches DDP ranks with this environment
    quiet_library_noise()
    module = importlib.import_module(f"samft.commands.{command}")
    try:
        with _stop_on_sigterm(command != "train"):  # train stops between steps and saves
            module.main()
    except (Stopped, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, Stopped) else int(signal.SIGINT)
        print(
            f"samft {command}: stopped by {signal.Signals(signum).name}; the files it finished "
            "are complete (each is written whole), the rest is not written",
            file=sys.stderr,
        )
        raise SystemExit(128 + signum) from None
    except Exception as err:
        if os.environ.get(ENV_TRACEBACK) == "1":
            raise
        if rank_errors.peer_failed(err):  # another rank failed: it says why
            code = rank_errors.wait_for_report()
            if code is not None:
                raise SystemExit(code) from None
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if rank_errors.claim_report(1):
                print(
                    f"samft {command}: error: another process of this multi-process run "
                    f"stopped (its message is above; none if it was killed): {first}",
                    file=sys.stderr,
                )
            raise SystemExit(1) from None
        code, message = describe_error(err, command, argv[1:])
        if message is None:
            if not rank_errors.claim_report(1):
                raise SystemExit(1) from None  # another rank failed first and said why
            raise
        if rank_errors.claim_report(code):  # once per run, whichever rank raised it
            where = "" if not rank_errors.rank() else f" (rank {rank_errors.rank()})"
            print(f"samft {command}: error{where}: {message}", file=sys.stderr)
            print("(set HYDRA_FULL_ERROR=1 to see the traceback)", file=sys.stderr)
        raise SystemExit(code) from None


class Stopped(BaseException):  # noqa: N818 (a stop, not an error)
    """A stop signal received by a command other than train. A `BaseException`, as
    `KeyboardInterrupt` is: the `except Exception` of a library (logging's, when the signal
    lands while a log line is written) must not swallow it and let the command run on."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, frame: object) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def _stop_on_sigterm(enabled: bool) -> Iterator[None]:
    """SIGTERM raises `Stopped` inside (as SIGINT raises KeyboardInterrupt); the previous
    handler is back afterwards (the process's, or a test's)."""
    previous = signal.signal(signal.SIGTERM, _stop) if enabled else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raised_in_samft(err: BaseException) -> bool:
    if type(err).__module__.startswith("samft"):
        return True
    frames = traceback.extract_tb(err.__traceback__)
    package = os.path.dirname(os.path.abspath(__file__))
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(package)


def describe_error(err: Exception, command: str, overrides: list[str]) -> tuple[int, str | None]:
    """(exit code, one message) for an error the user can fix; (1, None) for a bug."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from samft.io.files import disk_full_error, write_error

    full = disk_full_error(err)
    if full is not None:
        if full.filename:
            return USER_ERROR, f"OutputError: {write_error(full.filename, full)}"
        return USER_ERROR, f"OutputError: {write_error(os.getcwd(), full, 'writing under')}"
    if isinstance(err, (HydraException, OmegaConfBaseException)):
        message = str(err).strip()
        known = _known_keys_hint(message, command, overrides)
        return USER_ERROR, message + (f"\n{known}" if known else "")
    if hasattr(err, "exit_code") and type(err).__module__.startswith("samft"):
        return int(err.exit_code), f"{type(err).__name__}: {_own_message(err)}"
    memory = _out_of_memory(err)
    if memory:
        return USER_ERROR, memory
    if isinstance(err, OSError) and err.filename:  # a path the user gave or we derived
        reason = err.strerror or str(err)
        return USER_ERROR, f"{type(err).__name__}: {err.filename}: {reason}"
    if isinstance(err, ValueError) and (_raised_in_samft(err) or _from_a_worker(err)):
        return USER_ERROR, f"{type(err).__name__}: {_own_message(err)}"
    return 1, None


ALLOCATION_FAILED = re.compile(
    r"(can't allocate memory: you tried to allocate (\d+) bytes)|(CUDA out of memory\. Tried to "
    r"allocate ([\d.]+ [KMGT]iB))"
)


def _out_of_memory(err: BaseException) -> str | None:
    """One sentence for an allocation that failed (CPU or GPU), or None."""
    found = ALLOCATION_FAILED.search(str(err))
    if not found:
        return None
    size = f"{int(found.group(2)) / 2**30:.1f} GiB" if found.group(2) else found.group(4)
    where = "GPU" if found.group(3) else "CPU"
    return (
        f"OutOfMemory: the {where} could not allocate {size}. Make the work smaller: "
        "data.batch_size, model.image_size, points_per_batch (segment/eval), or +memory=low "
        "(activation checkpointing) for training"
    )


WORKER_PREFIX = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")


def _from_a_worker(err: BaseException) -> bool:
    """An error a DataLoader worker raised, re-raised here with the worker's traceback as
    its message (the type is kept: samft's own when `_own_message` finds it)."""
    return bool(WORKER_PREFIX.match(str(err))) and type(err).__module__.startswith("samft")


def _own_message(err: BaseException) -> str:
    """The error's own sentence: for one re-raised from a DataLoader worker, the last line
    of the worker's traceback without its `module.Type: ` prefix."""
    text = str(err)
    if not WORKER_PREFIX.match(text):
        return text
    lines = [line for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else text
    name = f"{type(err).__module__}.{type(err).__name__}: "
    return last[len(name) :] if last.startswith(name) else last


def _known_keys_hint(message: str, command: str, overrides: list[str]) -> str:
    """'known keys of <group>: [...]' for an override of a key the config lacks."""
    found = re.search(r"Could not override '([^']+)'", message)
    if not found or "." not in found.group(1):
        return ""
    key = found.group(1)
    group = key.rsplit(".", 1)[0]
    others = [
        o
        for o in overrides
        if "=" in o and not o.startswith(("-", "hydra.", "hydra/")) and key not in o.split("=")[0]
    ]
    try:
        from hydra import compose, initialize_config_module
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import DictConfig, OmegaConf

        GlobalHydra.instance().clear()
        config_name = CONFIG_NAMES.get(command, command)
        with initialize_config_module("samft.conf", version_base="1.3"):
            cfg = compose(config_name, overrides=others)
        node = OmegaConf.select(cfg, group)
    except Exception:  # the hint is a courtesy: never hide the original error
        return ""
    if not isinstance(node, DictConfig):
        return ""
    return f"known keys of '{group}': {sorted(node.keys())}"


if __name__ == "__main__":
    main()
