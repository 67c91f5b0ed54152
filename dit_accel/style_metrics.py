"""Style consistency of a batch of images: offline metrics (OpenCV) and CLIP metrics (local model).

Offline, lower is more consistent, each the mean over all pairs of images of the batch:

* ``gram_distance``: distance between Gram matrices (feature correlations, the classic style
  statistic) of fixed filter responses at three scales: the Lab colour channels and a Gabor bank on
  lightness (4 orientations x 2 wavelengths). Per pair: ``||G_a - G_b||_F / (||G_a||_F + ||G_b||_F)``
  averaged over scales, in [0, 1]. Captures palette and texture, largely independent of layout.
* ``color_histogram_distance``: Bhattacharyya distance between hue-saturation histograms (HSV,
  30 x 32 bins), in [0, 1]. Palette only, fully independent of layout.

With a CLIP model on disk (``transformers`` format, nothing is downloaded), higher is better:
``clip_text_score`` (mean cosine between each image and its prompt) and ``clip_image_similarity``
(mean pairwise cosine between image embeddings), as in the AlignedGen and StyleAligned papers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import PIL.Image
import torch

ImageLike = PIL.Image.Image | np.ndarray | torch.Tensor
T = TypeVar("T")

GRAM_SCALES = 3
GABOR_ORIENTATIONS = 4
GABOR_WAVELENGTHS = (4.0, 8.0)
HIST_BINS = (30, 32)  # hue (OpenCV range 0..180), saturation (0..256)


def to_rgb_uint8(image: ImageLike) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB from a PIL image, an ``(H, W, 3)`` uint8 array or a ``(3, H, W)`` tensor in [0, 1]."""
    if isinstance(image, PIL.Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensors must be (3, H, W) in [0, 1], got shape {tuple(image.shape)}")
        image = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image arrays must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
        return image
    raise TypeError(f"images must be PIL images, numpy arrays or torch tensors, got {type(image).__name__}")


def mean_pairwise(items: Sequence[T], distance: Callable[[T, T], float]) -> float:
    """Mean of ``distance`` over all unordered pairs of ``items`` (at least two)."""
    if len(items) < 2:
        raise ValueError(f"a batch metric needs at least 2 images, got {len(items)}")
    return float(np.mean([distance(a, b) for a, b in itertools.combinations(items, 2)]))


def _gabor_bank() -> list[np.ndarray]:
    kernels = []
    for wavelength in GABOR_WAVELENGTHS:
        size = int(2 * wavelength) | 1
        for i in range(GABOR_ORIENTATIONS):
            theta = np.pi * i / GABOR_ORIENTATIONS
            kernel = cv2.getGaborKernel((size, size), wavelength / 2, theta, wavelength, 0.5, 0, ktype=cv2.CV_32F)
            kernels.append(kernel - kernel.mean())
    return kernels


_GABOR = _gabor_bank()


def gram_matrices(image: ImageLike) -> np.ndarray:
    """``(GRAM_SCALES, C, C)`` Gram matrices of the Lab channels and Gabor responses, one per scale."""
    lab = cv2.cvtColor(to_rgb_uint8(image), cv2.COLOR_RGB2LAB).astype(np.float32) / 255.0
    grams = []
    for _ in range(GRAM_SCALES):
        lightness = np.ascontiguousarray(lab[..., 0])
        responses = [lab[..., c] for c in range(3)] + [cv2.filter2D(lightness, cv2.CV_32F, k) for k in _GABOR]
        features = np.stack(responses).reshape(len(responses), -1).astype(np.float64)
        grams.append(features @ features.T / features.shape[1])
        lab = cv2.pyrDown(lab)
    return np.stack(grams)


def gram_pair_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised Frobenius distance of two stacks of Gram matrices, averaged over scales, in [0, 1]."""
    diff = np.linalg.norm(a - b, axis=(1, 2))
    size = np.linalg.norm(a, axis=(1, 2)) + np.linalg.norm(b, axis=(1, 2))
    return float(np.mean(diff / np.maximum(size, 1e-12)))


def hue_saturation_histogram(image: ImageLike) -> np.ndarray:
    """L1-normalised HSV hue-saturation histogram (float32, as ``cv2.compareHist`` takes it)."""
    hsv = cv2.cvtColor(to_rgb_uint8(image), cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, list(HIST_BINS), [0, 180, 0, 256])
    return hist / max(float(hist.sum()), 1.0)


def histogram_pair_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA))


def gram_distance(images: Sequence[ImageLike]) -> float:
    """Mean pairwise Gram-matrix style distance of a batch; 0 = identical style statistics."""
    return mean_pairwise([gram_matrices(image) for image in images], gram_pair_distance)


def color_histogram_distance(images: Sequence[ImageLike]) -> float:
    """Mean pairwise Bhattacharyya distance of hue-saturation histograms; 0 = identical palettes."""
    return mean_pairwise([hue_saturation_histogram(image) for image in images], histogram_pair_distance)


def offline_style_metrics(images: Sequence[ImageLike]) -> dict[str, float]:
    """Both download-free metrics of a batch."""
    return {"gram_distance": gram_distance(images), "color_histogram_distance": color_histogram_distance(images)}


def _unit(features: Any) -> torch.Tensor:
    """Unit-norm projected CLIP embeddings (transformers 5 returns an output object, 4.x a tensor)."""
    if not isinstance(features, torch.Tensor):
        features = features.pooler_output
    return torch.nn.functional.normalize(features.float(), dim=-1)


@dataclass
class ClipScorer:
    """CLIP metrics from a model directory on disk (``CLIPModel`` + its tokenizer and image processor)."""

    model: Any
    tokenizer: Any
    image_processor: Any

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ClipScorer:
        """Load from a local directory only; a missing path is a ``ValueError``, never a download."""
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        if not Path(path).is_dir():
            raise ValueError(f"clip model path {str(path)!r} is not a local directory")
        model = CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        return cls(model, tokenizer, image_processor)

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[ImageLike]) -> torch.Tensor:
        pil = [PIL.Image.fromarray(to_rgb_uint8(image)) for image in images]
        inputs = self.image_processor(images=pil, return_tensors="pt").to(self.model.device)
        return _unit(self.model.get_image_features(**inputs))

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        inputs = self.tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt").to(self.model.device)
        return _unit(self.model.get_text_features(**inputs))

    def scores(self, images: Sequence[ImageLike], prompts: Sequence[str]) -> dict[str, float]:
        """``clip_text_score`` (image vs its own prompt) and ``clip_image_similarity`` (pairwise), cosines."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; give one prompt per image")
        image_emb = self.image_embeddings(images)
        text_emb = self.text_embeddings(prompts)
        text_score = float((image_emb * text_emb).sum(-1).mean())
        similarity = mean_pairwise(list(image_emb), lambda a, b: float(a @ b))
        return {"clip_text_score": text_score, "clip_image_similarity": similarity}
