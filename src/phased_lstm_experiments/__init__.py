"""Reproduction of the Phased LSTM paper's experiments: ``phased-lstm reproduce freq|freq2|adding``.

Experiment code only: it builds on the public API of :mod:`phased_lstm` (which never imports
this package) and on Lightning, installed with ``pip install phased-lstm[experiments]``.
"""
