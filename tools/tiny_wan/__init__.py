"""Training of the tiny Wan text-to-video model shipped in ``assets/tiny-wan-t2v`` (not installed).

``data`` holds the caption grammar, the renderer and the video reader; ``text`` the tokenizer and text
encoder; ``build`` the model configs and the pipeline; ``echo`` data echoing; ``distributed`` the
data-parallel plumbing; ``train`` the training script, run from the repository root
(``python -m tools.tiny_wan.train --out DIR --minutes M``). Where the weights ship:
:mod:`dit_accel.tiny_model`.
"""
