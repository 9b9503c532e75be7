"""What the lab trains on: samplers of (prompt, completion) texts for the base and both
experts, drawn from `language`'s templates, never writing a test item."""

from __future__ import annotations

import random

from mergekit_layerswap.lab import language
from mergekit_layerswap.lab.settings import LabSettings


def samplers(settings: LabSettings, excluded: frozenset[tuple]):
    """(base, math expert, language expert) samplers of (prompt, completion) pairs; no
    sampler ever writes a test item (`excluded` keys), in either language."""
    target = settings.language

    def fresh(make, rng: random.Random, lang: str) -> language.Problem:
        item = make(rng, lang)
        while item.key in excluded:
            item = make(rng, lang)
        return item

    def fresh_pair(make, rng: random.Random) -> tuple[language.Problem, language.Problem]:
        items = language.pair(make, rng)
        while items[0].key in excluded:
            items = language.pair(make, rng)
        return items

    def parallel(rng: random.Random) -> str:
        if rng.random() < 0.5:
            return " = ".join(language.generic_pair(rng))
        return " = ".join(item.question for item in fresh_pair(language.reading_item, rng))

    text = {
        "generic_en": lambda rng: language.generic(rng, "en"),
        "generic_target": lambda rng: language.generic(rng, target),
        "parallel": parallel,
        "reading_en": lambda rng: language.as_text(fresh(language.reading_item, rng, "en")),
        "reading_target": lambda rng: language.as_text(fresh(language.reading_item, rng, target)),
        "arithmetic": language.fact,
        "story_en": lambda rng: language.statement(fresh(language.problem, rng, "en")),
        "story_target": lambda rng: language.statement(fresh(language.problem, rng, target)),
        "story_parallel": lambda rng: " = ".join(
            map(language.statement, fresh_pair(language.problem, rng))
        ),
    }
    kinds = list(settings.mixture)
    weights = [settings.mixture[k] for k in kinds]

    def base(rng: random.Random) -> tuple[str, str]:
        return "", text[rng.choices(kinds, weights)[0]](rng)

    def math(rng: random.Random) -> tuple[str, str]:
        item = fresh(language.problem, rng, "en")
        question, answer, _ = language.PROMPT["en"]
        return f"{question} {item.question}", f"{answer} {item.answer}"

    def lang(rng: random.Random) -> tuple[str, str]:
        if rng.random() < 0.6:
            return "", language.generic(rng, target)
        return "", text["reading_target"](rng)

    return base, math, lang
