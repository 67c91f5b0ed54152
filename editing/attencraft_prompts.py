"""The prompts of AttenCraft's training steps: union sampling names the concepts a step draws.

A step that draws only some of the concepts is prompted with a template holding their phrases
(Break-A-Scene's "a photo of {}", on which AttenCraft builds); a step that draws them all, or any step
when there are no templates, with the image's whole prompt. Each distinct prompt is encoded once. The
concepts' token positions are found in the step's own prompt, in the order the template inserted them,
after the template's text before the slot (so that "a dog and {}" does not mistake its own "dog" for
the concept). Every (subset, template) prompt is tokenised when the prompts are built, so that a
template the tokenizer splits differently fails before any training.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import torch

from .attencraft_masks import phrase_positions


@dataclass
class StepText:
    """A step's prompt as the transformer sees it, and the text positions of the concepts it trains."""

    prompt: str
    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor
    tokens: list[list[int]]


def subset_prompt(template: str, phrases: list[str], joiner: str) -> str:
    """``template`` with its ``{}`` replaced by ``phrases`` joined by ``joiner``."""
    return template.replace("{}", joiner.join(phrases), 1)


def subset_positions(
    tokenizer: Any, template: str, phrases: list[str], joiner: str, max_length: int
) -> list[list[int]]:
    """Text positions of each phrase where the template inserted it (in order, after the slot's prefix)."""
    prompt = subset_prompt(template, phrases, joiner)
    prefix = template.split("{}", 1)[0]
    # one token of slack: a tokenizer may end the prefix alone with a lone word-start token
    cursor = max(0, len(tokenizer(prefix, add_special_tokens=False).input_ids) - 1)
    positions = []
    for phrase in phrases:
        found = phrase_positions(tokenizer, prompt, phrase, max_length, start=cursor)
        positions.append(found)
        cursor = found[-1] + 1
    return positions


def _warn_unknown_words(tokenizer: Any, templates: tuple[str, ...]) -> None:
    """Warn of templates with words the tokenizer maps to its unknown token (a closed vocabulary, like the
    tiny FLUX's, does not know "photo"): the steps would be prompted with words that mean nothing."""
    unknown = getattr(tokenizer, "unk_token_id", None)
    if unknown is None:
        return
    for template in templates:
        if unknown in tokenizer(template.replace("{}", " "), add_special_tokens=False).input_ids:
            warnings.warn(
                f"subset template {template!r} has words the tokenizer does not know ({tokenizer.unk_token}); "
                "give subset_template in the model's own words",
                stacklevel=3,
            )


class StepPrompts:
    """The text conditioning of every training step (see the module's docstring)."""

    def __init__(
        self, pipe: Any, prompt: str, concepts: list[str], templates: tuple[str, ...], joiner: str, max_length: int
    ) -> None:
        self.pipe = pipe
        self.prompt = prompt
        self.concepts = concepts
        self.templates = templates
        self.joiner = joiner
        self.max_length = max_length
        tokenizer = pipe.tokenizer_2
        self.whole_tokens = [phrase_positions(tokenizer, prompt, c, max_length) for c in concepts]
        _warn_unknown_words(tokenizer, templates)
        self._tokens: dict[tuple[tuple[int, ...], int], list[list[int]]] = {}
        for size in range(1, len(concepts)):
            for chosen in combinations(range(len(concepts)), size):
                for draw, template in enumerate(templates):
                    phrases = [concepts[k] for k in chosen]
                    self._tokens[(chosen, draw)] = subset_positions(tokenizer, template, phrases, joiner, max_length)
        self._encoded: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def uses_template(self, chosen: list[int]) -> bool:
        """Whether a step drawing ``chosen`` is prompted from a template (else the whole prompt)."""
        return bool(self.templates) and len(chosen) < len(self.concepts)

    def step_prompt(self, chosen: list[int], draw: int = 0) -> str:
        """The prompt of a step drawing the concepts ``chosen`` (indices), template ``draw``."""
        if not self.uses_template(chosen):
            return self.prompt
        return subset_prompt(self.templates[draw], [self.concepts[k] for k in chosen], self.joiner)

    def text(self, chosen: list[int], draw: int = 0) -> StepText:
        """The step's prompt, encoded (once per distinct prompt), and the chosen concepts' positions in it."""
        prompt = self.step_prompt(chosen, draw)
        if self.uses_template(chosen):
            tokens = self._tokens[(tuple(chosen), draw)]
        else:
            tokens = [self.whole_tokens[k] for k in chosen]
        if prompt not in self._encoded:
            with torch.no_grad():
                self._encoded[prompt] = self.pipe.encode_prompt(
                    prompt, None, device=self.pipe.transformer.device, max_sequence_length=self.max_length
                )
        return StepText(prompt, *self._encoded[prompt], tokens)

    def draw(self, chosen: list[int], generator: torch.Generator) -> StepText:
        """:meth:`text` for a training step: one of several templates drawn with ``generator`` (nothing is
        drawn when the step takes the whole prompt or there is one template)."""
        several = self.uses_template(chosen) and len(self.templates) > 1
        return self.text(chosen, int(torch.randint(len(self.templates), (1,), generator=generator)) if several else 0)

    def whole(self) -> StepText:
        """The image's whole prompt with every concept's positions (the masks are read under it)."""
        return self.text(list(range(len(self.concepts))))
