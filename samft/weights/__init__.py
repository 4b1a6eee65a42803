"""SAM weights in and out: every checkpoint layout samft reads and writes.

`load_sam(path)` is the one way to get a model with weights; `save_sam` writes the
official layout; `export_checkpoint` adds the sidecar and other formats.
"""

from samft.weights.files import CheckpointError
from samft.weights.instance_head import load_instance_head
from samft.weights.load import load_sam, read_sam_state_dict
from samft.weights.read import read_state_dict
from samft.weights.save import save_sam

__all__ = [
    "CheckpointError",
    "load_instance_head",
    "load_sam",
    "read_sam_state_dict",
    "read_state_dict",
    "save_sam",
]
