"""Can this seed judge a swap at all? The preconditions of layer swapping, measured.

Layer swapping (Bandarkar et al., ICLR 2025) helps only where its premises hold: the math
skill crosses languages, it lives in the middle layers, the language expert adds something
and its change sits in the outer layers. Each precondition is measured on every seed, on
items drawn apart from the test sets (a seed of their own, every test item excluded), and
has a value, a threshold and pass/fail (`MEANINGS` says what each value is):
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from mergekit_layerswap.evaluate.quiet import hf_bars_off
from mergekit_layerswap.lab import language, train

#: Items per measurement (problems, sentences, translation pairs).
N_ITEMS = 100
#: Raised whenever a measurement changes: kept measurements of another version are redone.
VERSION = 3
#: What each precondition's value is, and when it passes (lab.md prints these).
MEANINGS = {
    "transfer": "the math expert's accuracy on target-language problems, against the copy "
    "floor (the accuracy of answering each question's first number) plus 5 points",
    "transfer_keywords": "the same on those problems with their operation words in English "
    "(gets, gives, buys, each ... has, more, then, left), against the same floor",
    "math_gain": "the math expert's accuracy on English problems minus the base's (a skill to "
    "carry at all); passes at 0.10 or more",
    "locality": "the share of that gain the math expert keeps when the layers the swap "
    "replaces are reset to the base's (0 when there is no gain); passes at 0.5 or more",
    "language_gain": "the relative drop in held-out target-language loss, language expert "
    "against the base; passes at 0.10 or more",
    "alignment": "top-1 retrieval of each sentence's translation among "
    f"{N_ITEMS} from the base's middle-layer states (mean over tokens; chance "
    f"{1 / N_ITEMS:.2f}); passes at 0.5 or more",
    "change_profile": "the smaller of two ratios from `analyze`: the language expert's mean "
    "change in the outer quarter-layers over its middle ones, and the math expert's middle "
    "over its outer; passes above 1 (each expert changed where the paper finds it)",
}
_FIXED = {
    "math_gain": 0.10,
    "locality": 0.5,
    "language_gain": 0.10,
    "alignment": 0.5,
    "change_profile": 1.0,
}
_NUMBER = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Precondition:
    name: str
    value: float
    threshold: float

    @property
    def passed(self) -> bool:
        return (
            self.value > self.threshold
            if self.name in ("transfer", "transfer_keywords", "change_profile")
            else (self.value >= self.threshold)
        )

    def record(self) -> dict:
        return asdict(self) | {"passed": self.passed}


def by_name(per_seed: Iterable[list[dict]]) -> dict[str, list[dict]]:
    """Each precondition's records over the seeds (`per_seed`: each seed's records), in
    MEANINGS' order; a precondition no seed measured is left out."""
    records = [r for seed in per_seed for r in seed]
    found = {name: [r for r in records if r["name"] == name] for name in MEANINGS}
    return {name: rows for name, rows in found.items() if rows}


def _load(folder: Path, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with hf_bars_off():
        model = AutoModelForCausalLM.from_pretrained(folder).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    return model, tokenizer


def _items(make, lang: str, seed: int, excluded: frozenset) -> list:
    rng, items = random.Random(seed), []
    while len(items) < N_ITEMS:
        item = make(rng, lang)
        if item.key not in excluded:
            items.append(item)
    return items


def _answer(text: str, lang: str) -> int | None:
    """The number after the answer phrase ("The answer is N"), else the last number."""
    text = text.split("\n")[0]
    phrase = language.PROMPT[lang][2]
    tail = text.rsplit(phrase, 1)[1] if phrase in text else text
    found = _NUMBER.findall(tail)
    return int(found[0] if phrase in text else found[-1]) if found else None


def accuracy(model, tokenizer, items: list, max_tokens: int) -> float:
    """Greedy answers to `items` (the lab's prompt format), scored as the lab's tasks
    score them: the final number against the answer."""
    import torch

    lang = items[0].language
    question, answer, _ = language.PROMPT[lang]
    prompts = [f"{question} {item.question}\n{answer}" for item in items]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(
            **batch.to(model.device),
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    right = [
        _answer(text, lang) == item.answer_number for text, item in zip(texts, items, strict=True)
    ]
    return sum(right) / len(items)


def _loss(model, tokenizer, texts: list[str]) -> float:
    import torch

    total = 0.0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            total += model(input_ids=ids.to(model.device), labels=ids.to(model.device)).loss.item()
    return total / len(texts)


def _retrieval(model, tokenizer, pairs: list[tuple[str, str]]) -> float:
    """Top-1 retrieval of each English sentence's translation from mean-pooled states of the
    middle layer."""
    import torch

    middle = model.config.num_hidden_layers // 2

    def states(texts: list[str]):
        rows = []
        with torch.no_grad():
            for text in texts:
                ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
                hidden = model(input_ids=ids.to(model.device), output_hidden_states=True)
                rows.append(hidden.hidden_states[middle][0].mean(0))
        return torch.nn.functional.normalize(torch.stack(rows), dim=-1)

    english, target = states([a for a, _ in pairs]), states([b for _, b in pairs])
    found = (english @ target.T).argmax(dim=1)
    return (found == torch.arange(len(pairs), device=found.device)).float().mean().item()


def _reset(expert, base, layers: list[int], num_layers: int):
    """`expert` with `layers` (and the embeddings/head when they follow those layers' source)
    set back to the base's weights, in place."""
    import torch

    base_state = base.state_dict()
    with torch.no_grad():
        for name, tensor in expert.state_dict().items():
            index = train.layer_index(name)
            outer = (0 in layers and "embed_tokens" in name) or (
                num_layers - 1 in layers and (name.startswith("lm_head") or ".norm." in name)
            )
            if index in layers or outer:
                tensor.copy_(base_state[name])
    return expert


def replaced_layers(swap: dict, num_layers: int) -> list[int]:
    """The layers a designated swap gives the donor (its bottom and top)."""
    bottom, top = swap["donor"].get("bottom", 0), swap["donor"].get("top", 0)
    return sorted({*range(bottom), *range(num_layers - top, num_layers)})


def kept_share(base: float, math: float, reset: float) -> float:
    """`locality`'s value: the share of the math expert's gain over the base (English
    accuracy) left after the reset; 0 when there is no gain to keep."""
    gain = math - base
    return max(0.0, (reset - base) / gain) if gain > 0 else 0.0


def profile_ratio(math_change: list[float], lang_change: list[float]) -> float:
    """`change_profile`'s value: min(language outer/middle, math middle/outer), outer being
    the first and last quarter of the layers."""
    n = len(math_change)
    outer = [i for i in range(n) if i < max(1, n // 4) or i >= n - max(1, n // 4)]
    middle = [i for i in range(n) if i not in outer]

    def mean(values: list[float], where: list[int]) -> float:
        return sum(values[i] for i in where) / len(where)

    lang = mean(lang_change, outer) / max(mean(lang_change, middle), 1e-12)
    math = mean(math_change, middle) / max(mean(math_change, outer), 1e-12)
    return min(lang, math)


def measure(
    models: dict[str, Path],
    swap: dict,
    change: dict[str, list[float]],
    *,
    target: str,
    seed: int,
    excluded: frozenset,
    max_tokens: int,
    device: str = "cpu",
) -> list[Precondition]:
    """Every precondition of one seed (`models`: base, math, lang folders; `change`: the
    per-layer relative change of math and lang from `analyze`)."""
    base, tokenizer = _load(models["base"], device)
    math, _ = _load(models["math"], device)
    lang, _ = _load(models["lang"], device)
    num_layers = base.config.num_hidden_layers
    problems = {
        code: _items(language.problem, code, 7919 + seed, excluded) for code in ("en", target)
    }
    copy_floor = language.copy_floor(problems[target])
    transfer = accuracy(math, tokenizer, problems[target], max_tokens)
    bridged = [language.english_keywords(item) for item in problems[target]]
    keywords = accuracy(math, tokenizer, bridged, max_tokens)
    english = {"base": accuracy(base, tokenizer, problems["en"], max_tokens)}
    english["math"] = accuracy(math, tokenizer, problems["en"], max_tokens)
    _reset(math, base, replaced_layers(swap, num_layers), num_layers)
    english["reset"] = accuracy(math, tokenizer, problems["en"], max_tokens)
    rng = random.Random(104729 + seed)
    texts = [language.generic(rng, target) for _ in range(N_ITEMS)]
    language_gain = 1 - _loss(lang, tokenizer, texts) / _loss(base, tokenizer, texts)
    pairs = [language.generic_pair(rng) for _ in range(N_ITEMS)]
    values = {
        "transfer": (transfer, copy_floor + 0.05),
        "transfer_keywords": (keywords, copy_floor + 0.05),
        "math_gain": (english["math"] - english["base"], _FIXED["math_gain"]),
        "locality": (kept_share(**english), _FIXED["locality"]),
        "language_gain": (language_gain, _FIXED["language_gain"]),
        "alignment": (_retrieval(base, tokenizer, pairs), _FIXED["alignment"]),
        "change_profile": (
            profile_ratio(change["math"], change["lang"]),
            _FIXED["change_profile"],
        ),
    }
    return [Precondition(name, round(v, 4), round(t, 4)) for name, (v, t) in values.items()]
