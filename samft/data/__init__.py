"""Data for SAM fine-tuning.

readers/    COCO, SA-1B and folder formats -> an index of images and objects, pixels on demand
objects     which objects may be prompted, and K of them per sample
augment     albumentations pipelines from plain specs
resize      longest side to the model's input size, as the official transform does
prompts     points, boxes and mask prompts drawn from a mask (pure, seeded)
dataset     one sample per image in the model's input frame
collate     padded batches (the batch contract the training module reads)
datamodule  train / val / test loaders from plain arguments
stats, visualize, report   what `samft data` shows
synthetic   the demo's generated shapes dataset (COCO format)
"""
