"""Tiny Llama models trained from scratch on the lab's two languages, on a CPU in minutes.

A tokenizer over the lab's closed vocabulary (word-level or subword; every number 0-200 one
token, so arithmetic is a lookup the tiny model can learn); `train` a base from random
weights, then each expert from it, optionally training only some layers or reverting the
rest afterwards (the modular experts of Bandarkar & Peng 2025). Runs are deterministic for
a seed on one machine.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mergekit_layerswap.evaluate.quiet import hf_bars_off
from mergekit_layerswap.lab import language

#: Model sizes: (hidden size, layers, heads, intermediate size).
#: deep: twice tiny's layers at half its width (a middle to keep, less room per layer).
SIZES = {"tiny": (128, 8, 4, 384), "deep": (64, 16, 4, 192), "small": (256, 12, 8, 768)}
MAX_TOKENS = 128
BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"


#: Word pieces the subword tokenizer learns (BPE) beyond its characters: the fewest, in
#: steps of 25, that keep every step-by-step answer within the lab's 48 generated tokens
#: (125 merges: answers of up to 49 tokens).
SUBWORD_MERGES = 150


def build_tokenizer(out_dir: Path, kind: str = "word"):
    """A tokenizer over `language.vocabulary()`, saved to `out_dir`: `word`, one token per
    word (split on whitespace); `subword`, BPE pieces learned from the words of both
    languages at once (pieces shared across them where their spellings share them), with
    every number 0-200 still one token, so arithmetic stays a lookup."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = [BOS, EOS, PAD, UNK]
    words = language.vocabulary()
    if kind == "word":
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(special + words)}, UNK))
    else:
        numbers = [w for w in words if w.isdigit()]
        spelled = [w for w in words if not w.isdigit()]
        tok = Tokenizer(models.BPE(unk_token=UNK, continuing_subword_prefix="##"))
        alphabet = sorted({c for w in spelled for c in w})
        size = len(special) + 2 * len(alphabet) + SUBWORD_MERGES  # letters, ##letters, merges
        trainer = trainers.BpeTrainer(
            vocab_size=size,
            special_tokens=special,
            initial_alphabet=alphabet,
            continuing_subword_prefix="##",
            show_progress=False,
        )
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.train_from_iterator(_corpus(), trainer)
        tok.add_tokens([AddedToken(n, single_word=True, normalized=False) for n in numbers])
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins pieces, words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )
    fast.save_pretrained(out_dir)
    return fast


def _corpus(n: int = 1000) -> list[str]:
    """Text in both languages, in the proportions the lab writes it, for learning the BPE
    merges (frequent words become one piece, rare ones stay split): problems, reading items
    and narration, from a fixed seed."""
    rng = random.Random(0)
    texts = []
    for _ in range(n):
        for lang in language.LANGUAGES:
            texts += [
                language.as_text(language.problem(rng, lang)),
                language.as_text(language.reading_item(rng, lang)),
                language.generic(rng, lang),
            ]
    return texts


def load_tokenizer(folder: Path):
    """The tokenizer `build_tokenizer` saved in `folder`."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def new_model(size: str, vocab_size: int, seed: int):
    """A randomly initialised LlamaForCausalLM of the given size (float32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, intermediate = SIZES[size]
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


@dataclass(frozen=True)
class Schedule:
    steps: int
    lr: float
    batch: int = 32
    warmup: int = 20


def train(
    model,
    tokenizer,
    sample: Callable[[random.Random], tuple[str, str]],
    schedule: Schedule,
    *,
    seed: int,
    trainable: Callable[[str], bool] | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> None:
    """AdamW on batches of `sample(rng)` = (prompt, completion) texts; the loss covers the
    completion only (the whole text when the prompt is empty). `trainable(name)` picks the
    parameters to update (all when None). Cosine decay after a linear warm-up."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trainable is None or trainable(name))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=schedule.lr, weight_decay=0.0)

    def rate(step: int) -> float:
        if step < schedule.warmup:
            return (step + 1) / schedule.warmup
        done = (step - schedule.warmup) / max(1, schedule.steps - schedule.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
    model.train()
    for step in range(schedule.steps):
        pairs = [sample(rng) for _ in range(schedule.batch)]
        ids, labels = (t.to(model.device) for t in _batch(tokenizer, pairs))
        mask = ids != tokenizer.pad_token_id
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if progress is not None:
            progress(step, loss.item())
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(True)


def _batch(tokenizer, pairs: list[tuple[str, str]]):
    import torch

    rows, masks = [], []
    for prompt, completion in pairs:
        head = tokenizer.encode(prompt, add_special_tokens=False) if prompt else []
        tail = [*tokenizer.encode(completion, add_special_tokens=False), tokenizer.eos_token_id]
        row = [*head, *tail][:MAX_TOKENS]  # no BOS: lm-eval's prompts carry none either
        rows.append(row)
        masks.append(([False] * len(head) + [True] * len(tail))[:MAX_TOKENS])
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    for i, (row, mask) in enumerate(zip(rows, masks, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        keep = torch.tensor(mask)
        labels[i, : len(row)] = torch.where(keep, torch.tensor(row), torch.tensor(-100))
    return ids, labels


def revert(model, base, keep: Callable[[str], bool]) -> None:
    """Set every parameter of `model` outside `keep(name)` back to `base`'s, in place: an
    expert trained in full, then reverted to its part (Bandarkar & Peng 2025)."""
    import torch

    before = dict(base.named_parameters())
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not keep(name):
                parameter.copy_(before[name])


def layer_index(name: str) -> int | None:
    """The decoder layer a parameter belongs to (None for embeddings, final norm, head)."""
    parts = name.split(".")
    return int(parts[parts.index("layers") + 1]) if "layers" in parts else None


def save(model, tokenizer, out_dir: Path) -> Path:
    """Save in float32 (a tiny model's fine-tuning deltas would partly round away in
    bfloat16) as safetensors, with the tokenizer: what merges and evaluations read."""
    with hf_bars_off():  # a "Writing model shards" bar for one tiny file is noise
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
