"""Inference: the predictor, prompted prediction over files, automatic masks."""
