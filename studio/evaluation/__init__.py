"""Measuring samples: the clean-image evaluator (:mod:`evaluator`), the metrics in its features
(:mod:`features`), their reference statistics (:mod:`reference`) and the readers of the text
model's prompts (:mod:`text_eval`). Runtime code, below both the sweeps that report these metrics
and the trainers that select models by them."""
