"""samft: fine-tune Meta's Segment Anything Model with Lightning and Hydra."""

__version__ = "0.2.0"
