"""Training of the tiny FLUX text-to-image model (not installed), the image counterpart of ``tools/tiny_wan``.

``data`` holds the caption grammar (one to three objects with colours, shapes, sizes and relations on
patterned backgrounds), the layouts and the batched renderer with ground-truth masks; ``reader``
recovers objects and masks from any image and scores it against a caption; ``build`` the model
configs and the ``FluxPipeline``; ``train`` the training script (``python -m tools.tiny_flux.train
--out DIR --minutes M``); ``evaluate`` caption adherence on held-out captions. Shared pieces come
from :mod:`tools.tiny_common`.
"""
