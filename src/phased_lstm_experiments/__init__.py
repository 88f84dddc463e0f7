"""Reproduction of the Phased LSTM paper's experiments: ``phased-lstm reproduce EXPERIMENT`` with
EXPERIMENT one of ``freq`` (frequency discrimination, Task 1), ``freq2`` (two frequencies, fig.
3e), ``adding`` (the adding task, Task 2), ``nmnist`` (event-camera digits, Task 3) and
``fusion`` (multi-rate sensor fusion, Task 4); also ``phased-lstm bench`` and ``phased-lstm data``.

Experiment code only: it builds on the public API of :mod:`phased_lstm` (which never imports
this package) and on Lightning, installed with ``pip install phased-lstm[experiments]``.
docs/architecture.md describes its layout.
"""
