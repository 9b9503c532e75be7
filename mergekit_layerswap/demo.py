"""`mergekit-layerswap demo`: the whole pipeline on tiny local models, in minutes on a CPU.

Builds a tiny base model, fine-tunes two experts from it for a few CPU steps on different
text (English arithmetic word problems written here; generic Swahili sentences written
here; never MGSM items), then runs the `tiny-demo` suite recipe against them: layer-swap
variants and baseline merges, each scored on MGSM and ranked.
"""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

import yaml

from mergekit_layerswap import tiny

_NAMES = ["Amina", "Tom", "Juma", "Lee", "Sara", "Ravi", "Neema", "Ken"]
_THINGS = ["apples", "books", "pens", "eggs", "coins", "cards"]
_SWAHILI = [
    "Habari ya asubuhi, {name}. Leo ni siku nzuri sana.",
    "{name} anaishi mjini na anapenda kusoma vitabu jioni.",
    "Watoto wanacheza mpira uwanjani baada ya shule.",
    "Mama yake {name} anapika chakula kitamu kwa familia yote.",
    "Tunakwenda sokoni kununua matunda na mboga kila Jumamosi.",
    "Mvua ilinyesha usiku kucha na barabara zikajaa maji.",
    "{name} alisema asante kwa rafiki yake aliyemsaidia.",
    "Shule yetu ina walimu wazuri na maktaba kubwa.",
]


def math_text(rng: random.Random) -> str:
    """An English word problem with a step-by-step answer (MGSM's answer format)."""
    name, thing = rng.choice(_NAMES), rng.choice(_THINGS)
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    if rng.random() < 0.5:
        question = f"{name} has {a} {thing} and gets {b} more. How many {thing} now?"
        work, answer = f"{a} + {b} = {a + b}.", a + b
    else:
        question = f"{name} buys {a} bags with {b} {thing} each. How many {thing}?"
        work, answer = f"{a} * {b} = {a * b}.", a * b
    return f"Question: {question}\nStep-by-Step Answer: {work} The answer is {answer}."


def swahili_text(rng: random.Random) -> str:
    """Generic Swahili sentences (the language expert's instructions stand-in)."""
    return " ".join(rng.choice(_SWAHILI).format(name=rng.choice(_NAMES)) for _ in range(3))


def fine_tune(base: Path, out: Path, make_text, *, steps: int, seed: int) -> Path:
    """A few AdamW steps of causal-LM training from `base`; saves model + tokenizer to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        batch = tokenizer(
            [make_text(rng) for _ in range(8)],
            return_tensors="pt", padding=True, truncation=True, max_length=96,
        )  # fmt: skip
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_models(folder: Path, *, steps: int = 60) -> dict[str, Path]:
    """The tiny base and its two experts, built once (reused when already complete)."""
    paths = {name: folder / name for name in ("base", "math", "swahili")}
    if all((p / "model.safetensors").is_file() for p in paths.values()):
        return paths
    tokenizer = tiny.train_tokenizer(folder / "tokenizer")
    print("demo: building a tiny base model and fine-tuning two experts on the CPU", flush=True)
    tiny.build_model(paths["base"], num_layers=8, seed=0, tokenizer_dir=tokenizer)
    fine_tune(paths["base"], paths["math"], math_text, steps=steps, seed=1)
    fine_tune(paths["base"], paths["swahili"], swahili_text, steps=steps, seed=2)
    return paths


def recipe(name: str) -> dict:
    """A recipe YAML shipped with the package (or, in a source checkout, from recipes/)."""
    shipped = resources.files("mergekit_layerswap") / "recipes" / name
    source = Path(__file__).resolve().parents[1] / "recipes" / name
    text = shipped.read_text() if shipped.is_file() else source.read_text()
    return yaml.safe_load(text)


def run_demo(out_dir: str | Path, *, limit: int | None = None, data_dir: str | None = None):
    """Build the tiny experts, run the tiny-demo suite, return its leaderboard rows.

    The evaluation settings, the MGSM data and the output folder are checked (EvalInputError)
    before any model is built.
    """
    from mergekit_layerswap.evaluate.run import check_writable
    from mergekit_layerswap.evaluate.tasks import check_data_dir
    from mergekit_layerswap.suite.runner import run_suite
    from mergekit_layerswap.suite.schema import Evaluation, parse_suite

    out = Path(out_dir)
    raw = recipe("tiny-demo.yml")
    evaluation = Evaluation.model_validate(raw["evaluation"])
    settings = evaluation.settings(limit=limit, data_dir=data_dir)
    check_data_dir(settings.data_dir, settings.languages)
    check_writable(out, "output")
    models = build_models(out / "models")
    raw["models"] = {alias: str(models[alias]) for alias in raw["models"]}
    return run_suite(parse_suite(raw), out, limit=limit, data_dir=data_dir)
