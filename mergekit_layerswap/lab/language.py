"""Two languages, one meaning: English and Swahili written from the same templates.

Every sentence the lab trains or tests on comes from here: a closed lexicon (names, objects,
the words of each template) in two languages that share names, digits and `+ - * =`, so a
word-level tokenizer covers all of it. Each template has an English and a Swahili form with
the same slots, so the same draw gives a translation pair.

- `generic`: daily-life narration and dialogue (no numbers): the base's and the language
  expert's text; `generic_pair` gives a sentence with its translation.
- `reading_item`: a question whose answer is stated in the text ("has 5 books ... how many?"):
  teaches the base the question/answer format and numbers in both languages, no arithmetic.
- `statement`: a word problem's story without its question or answer (narration with
  numbers), for the base, alone or as a translation pair (`pair`).
- `fact`: bare arithmetic (`3 + 4 = 7`), language-neutral, for the base.
- `problem`: a word problem with a step-by-step answer in MGSM's format (addition,
  subtraction, multiplication, two steps): the math expert's English training data, and the
  held-out test sets in both languages.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

LANGUAGES = ("en", "sw")
NAMES = (
    "Amina",
    "Juma",
    "Neema",
    "Baraka",
    "Zawadi",
    "Imani",
    "Rehema",
    "Hassani",
    "Pendo",
    "Tumaini",
    "Musa",
    "Halima",
)
#: (English plural, Swahili) object words.
OBJECTS = (
    ("apples", "matofaa"),
    ("books", "vitabu"),
    ("pens", "kalamu"),
    ("eggs", "mayai"),
    ("cups", "vikombe"),
    ("mangoes", "maembe"),
    ("chairs", "viti"),
    ("shoes", "viatu"),
    ("bananas", "ndizi"),
    ("balls", "mipira"),
)
#: MGSM's native chain-of-thought prompt words (lm-eval's mgsm_native_cot_{en,sw}).
PROMPT = {
    "en": ("Question:", "Step-by-Step Answer:", "The answer is"),
    "sw": ("Swali:", "Jibu la Hatua kwa Hatua:", "Jibu ni"),
}
KINDS = ("add", "sub", "mul", "two_step")

_GENERIC = (
    (
        "{n} lives in the city and likes to read in the evening .",
        "{n} anaishi mjini na anapenda kusoma jioni .",
    ),
    (
        "Good morning {n} . Today is a very nice day .",
        "Habari ya asubuhi {n} . Leo ni siku nzuri sana .",
    ),
    ("{n} goes to the market to buy {o} .", "{n} anakwenda sokoni kununua {o} ."),
    ("The children play with the {o} after school .", "Watoto wanacheza na {o} baada ya shule ."),
    ("{n} thanks a friend for the {o} .", "{n} anamshukuru rafiki kwa {o} ."),
    (
        "The mother of {n} cooks food for the whole family .",
        "Mama yake {n} anapika chakula kwa familia yote .",
    ),
    (
        "It rained all night and the road is wet .",
        "Mvua ilinyesha usiku kucha na barabara ni mbichi .",
    ),
    (
        "{n} asks : where are the {o} ? {m} says : the {o} are at home .",
        "{n} anauliza : {o} ziko wapi ? {m} anasema : {o} ziko nyumbani .",
    ),
    ("{n} and {m} walk to school together .", "{n} na {m} wanatembea kwenda shule pamoja ."),
    (
        "Our school has good teachers and a big library .",
        "Shule yetu ina walimu wazuri na maktaba kubwa .",
    ),
    ("{n} gives the {o} to a friend .", "{n} anampa rafiki {o} ."),
    ("{n} gets more {o} from the market .", "{n} anapata {o} zaidi kutoka sokoni ."),
    ("Each box has {o} inside .", "Kila sanduku lina {o} ndani ."),
    ("{n} buys boxes of {o} for the family .", "{n} ananunua masanduku ya {o} kwa familia ."),
)

_READING = (
    (
        "{n} has {a} {o} .",
        "{n} ana {o} {a} .",
        "How many {o} does {n} have ?",
        "{o} ngapi {n} anazo ?",
    ),
    (
        "{n} buys {a} boxes .",
        "{n} ananunua masanduku {a} .",
        "How many boxes does {n} buy ?",
        "{n} ananunua masanduku mangapi ?",
    ),
    (
        "{n} gives {a} {o} to a friend .",
        "{n} anampa rafiki {o} {a} .",
        "How many {o} does {n} give ?",
        "{n} anampa rafiki {o} ngapi ?",
    ),
)

_PROBLEMS = {
    "add": (
        "{n} has {a} {o} . {n} gets {b} more {o} . How many {o} does {n} have now ?",
        "{n} ana {o} {a} . {n} anapata {o} {b} zaidi . {n} ana {o} ngapi sasa ?",
        (
            "{n} has {a} {o} and gets {b} more . {a} + {b} = {r} .",
            "{n} ana {o} {a} na anapata {b} zaidi . {a} + {b} = {r} .",
        ),
    ),
    "sub": (
        "{n} has {a} {o} . {n} gives {b} {o} to a friend . How many {o} does {n} have left ?",
        "{n} ana {o} {a} . {n} anampa rafiki {o} {b} . {n} amebaki na {o} ngapi ?",
        (
            "{n} has {a} {o} and gives {b} away . {a} - {b} = {r} .",
            "{n} ana {o} {a} na anatoa {b} . {a} - {b} = {r} .",
        ),
    ),
    "mul": (
        "{n} buys {a} boxes . Each box has {b} {o} . How many {o} does {n} buy ?",
        "{n} ananunua masanduku {a} . Kila sanduku lina {o} {b} . {n} ananunua {o} ngapi ?",
        (
            "{n} buys {a} boxes of {b} {o} . {a} * {b} = {r} .",
            "{n} ananunua masanduku {a} ya {o} {b} . {a} * {b} = {r} .",
        ),
    ),
    "two_step": (
        "{n} has {a} {o} . {n} gets {b} more {o} and then gives {c} to a friend . "
        "How many {o} does {n} have now ?",
        "{n} ana {o} {a} . {n} anapata {o} {b} zaidi kisha anampa rafiki {c} . "
        "{n} ana {o} ngapi sasa ?",
        (
            "{n} has {a} {o} and gets {b} more . {a} + {b} = {s} . {n} gives {c} away . "
            "{s} - {c} = {r} .",
            "{n} ana {o} {a} na anapata {b} zaidi . {a} + {b} = {s} . {n} anatoa {c} . "
            "{s} - {c} = {r} .",
        ),
    ),
}


@dataclass(frozen=True)
class Problem:
    """One word problem in one language: MGSM's columns (question, answer, answer_number)."""

    language: str
    kind: str
    question: str
    answer: str  # the step-by-step answer, ending "The answer is N ." / "Jibu ni N ."
    answer_number: int
    key: tuple  # (kind, the English text): equal keys = the same item, in either language


def _slots(rng: random.Random) -> dict:
    n, m = rng.sample(NAMES, 2)
    return {"n": n, "m": m, "o": rng.randrange(len(OBJECTS))}


def _fill(template: str, slots: dict, language: str) -> str:
    obj = OBJECTS[slots["o"]][LANGUAGES.index(language)]
    return template.format(**{**slots, "o": obj})


def generic(rng: random.Random, language: str) -> str:
    """A daily-life sentence or exchange (no numbers)."""
    pair = rng.choice(_GENERIC)
    return _fill(pair[LANGUAGES.index(language)], _slots(rng), language)


def generic_pair(rng: random.Random) -> tuple[str, str]:
    """A generic sentence and its translation."""
    slots = _slots(rng)
    english, swahili = rng.choice(_GENERIC)
    return _fill(english, slots, "en"), _fill(swahili, slots, "sw")


def reading_item(rng: random.Random, language: str) -> Problem:
    """A question answered by the text itself (no arithmetic), as a `Problem` of kind
    "read" in the word problems' question/answer format."""
    slots = {**_slots(rng), "a": rng.randint(1, 20)}
    i = LANGUAGES.index(language)
    index = rng.randrange(len(_READING))
    template = _READING[index]
    fact, question = _fill(template[i], slots, language), _fill(template[2 + i], slots, language)
    answer = f"{fact} {PROMPT[language][2]} {slots['a']} ."
    key = ("read", _fill(template[0], slots, "en"), _fill(template[2], slots, "en"))
    return Problem(language, "read", f"{fact} {question}", answer, slots["a"], key)


def fact(rng: random.Random) -> str:
    """Bare arithmetic, the same in both languages."""
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        return f"{a} * {b} = {a * b} ."
    a, b = rng.randint(1, 40), rng.randint(1, 40)
    if op == "-":
        a, b = max(a, b), min(a, b)
    return f"{a} {op} {b} = {a + b if op == '+' else a - b} ."


def problem(rng: random.Random, language: str, kind: str | None = None) -> Problem:
    """A word problem with its step-by-step answer (operands kept small: results <= 81)."""
    kind = kind or rng.choice(KINDS)
    slots = _slots(rng)
    if kind == "add":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        numbers, result = {"a": a, "b": b}, a + b
    elif kind == "sub":
        a = rng.randint(2, 30)
        b = rng.randint(1, a - 1)
        numbers, result = {"a": a, "b": b}, a - b
    elif kind == "mul":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        numbers, result = {"a": a, "b": b}, a * b
    else:
        a, b = rng.randint(1, 15), rng.randint(1, 15)
        c = rng.randint(1, a + b - 1)
        numbers, result = {"a": a, "b": b, "c": c, "s": a + b}, a + b - c
    en, sw, steps = _PROBLEMS[kind]
    i = LANGUAGES.index(language)
    slots = {**slots, **numbers, "r": result}
    question = _fill((en, sw)[i], slots, language)
    answer = f"{_fill(steps[i], slots, language)} {PROMPT[language][2]} {result} ."
    key = (kind, _fill(en, slots, "en"))  # the draw, whatever language it is written in
    return Problem(language, kind, question, answer, result, key)


def pair(make, rng: random.Random) -> tuple[Problem, Problem]:
    """The same draw of `make(rng, language)` in English and in the target language."""
    state = rng.getstate()
    english = make(rng, "en")
    rng.setstate(state)
    return english, make(rng, "sw")


def statement(item: Problem) -> str:
    """A problem's story without its question (narration with numbers, no arithmetic)."""
    return item.question.rsplit(" . ", 1)[0] + " ."


#: Swahili operation words and their English (every one in the vocabulary).
_OPERATION_WORDS = {
    "anapata": "gets",
    "zaidi": "more",
    "anampa": "gives",
    "amebaki": "left",
    "ananunua": "buys",
    "Kila": "Each",
    "lina": "has",
    "kisha": "then",
}


def english_keywords(item: Problem) -> Problem:
    """A target-language problem with its operation words in English (`gets`, `gives`,
    `buys`, `Each ... has`, `more`, `then`, `left`): the question with a lexical bridge."""
    question = " ".join(_OPERATION_WORDS.get(w, w) for w in item.question.split())
    return Problem(item.language, item.kind, question, item.answer, item.answer_number, item.key)


def copy_floor(items: list[Problem]) -> float:
    """The share of `items` whose answer is the first number of the question: what copying
    that number scores."""
    first = [next(int(w) for w in item.question.split() if w.isdigit()) for item in items]
    return sum(n == item.answer_number for n, item in zip(first, items, strict=True)) / len(items)


def as_text(item: Problem) -> str:
    """A problem as training text, in the prompt format the tests use."""
    q, a, _ = PROMPT[item.language]
    return f"{q} {item.question}\n{a} {item.answer}"


def vocabulary() -> list[str]:
    """Every word any generator can write (numbers 0-200 included), for a word-level tokenizer."""
    words: set[str] = set(NAMES) | {w for pair in OBJECTS for w in pair}
    words |= {w for pair in PROMPT.values() for phrase in pair for w in phrase.split()}
    texts = [t for pair in _GENERIC for t in pair] + [t for row in _READING for t in row]
    texts += [t for en, sw, steps in _PROBLEMS.values() for t in (en, sw, *steps)]
    for text in texts:
        words |= {w for w in text.split() if not w.startswith("{")}
    words |= {str(i) for i in range(201)} | {"+", "-", "*", "=", "."}
    return sorted(words)
