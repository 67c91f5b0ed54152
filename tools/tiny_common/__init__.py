"""Pieces shared by the tiny models' lab code (``tools/tiny_wan``, ``tools/tiny_flux``; not installed).

``drawing`` holds the colour words, shapes and background patterns both data generators draw with;
``text`` the word-level tokenizer and T5-family encoders; ``training`` the budgeted training loop's
parts (schedule, logging, optimiser, rectified-flow pairs, saving); ``distributed`` the data-parallel
plumbing.
"""
