"""Training of the tiny Wan text-to-video model shipped in ``assets/tiny-wan-t2v`` (not installed).

``data`` holds the caption grammar, the renderer and the video reader; ``text`` the tokenizer and text
encoder; ``build`` the model configs and the pipeline; ``echo`` data echoing; ``train`` the training
script, run from the repository root (``python -m tools.tiny_wan.train --out DIR --minutes M``). What
it shares with the tiny FLUX model (drawing, tokenizer, training loop parts, data-parallel plumbing)
lives in :mod:`tools.tiny_common`. Where the weights ship: :mod:`dit_accel.tiny_model`.
"""
