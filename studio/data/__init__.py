"""The synthetic data sets the built-in models are trained and measured on: coloured digits
(:mod:`digits`) and captioned coloured digits (:mod:`captions`). Rendered here, nothing downloaded."""
