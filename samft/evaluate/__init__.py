"""Evaluation: prompted metrics through the training module's test step, instance metrics of
automatic masks, and the reports that put checkpoints side by side."""
