"""The suggested layer swap: the donor's outer blocks where it changed more than the host,
and the `layer_swap` config that applies them, with the rule and its numbers as comments."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mergekit_layerswap import swap, swap_rule
from mergekit_layerswap.analysis.inputs import Model
from mergekit_layerswap.analysis.measure import ratio as _ratio

SUGGESTION_FILE = "suggested-layerswap.yml"


@dataclass(frozen=True)
class Suggestion:
    """The donor's outer blocks where it changed more than the host (none: nothing to swap)."""

    host: str
    donor: str
    ratio: float
    bottom: int
    top: int
    transition: int
    host_change: tuple[float, ...]  # per-layer relative change
    donor_change: tuple[float, ...]

    @property
    def donor_layers(self) -> list[int]:
        n = len(self.host_change)
        return [*range(self.bottom), *range(n - self.top, n)]

    def describe(self) -> str:
        """The suggestion in one sentence."""
        if not self.donor_layers:
            return f"no outer layer changed more in {self.donor} than in {self.host}: no swap"
        n = len(self.host_change)
        blocks = [f"layers 0-{self.bottom - 1} (bottom: {self.bottom})"] if self.bottom else []
        blocks += [f"layers {n - self.top}-{n - 1} (top: {self.top})"] if self.top else []
        return (
            f"host {self.host}, donor {self.donor}: take the donor's {' and '.join(blocks)}, "
            f"transition {self.transition}"
        )

    def table(self) -> list[str]:
        """One line per layer: both changes, their ratio, and which layers are the donor's."""
        lines = [f"{'layer':>5}  {'r_host':>10}  {'r_donor':>10}  {'donor/host':>10}"]
        donor = set(self.donor_layers)
        for layer, (h, d) in enumerate(zip(self.host_change, self.donor_change, strict=True)):
            mark = "  <- donor" if layer in donor else ""
            lines.append(f"{layer:>5}  {h:>10.4g}  {d:>10.4g}  {_ratio(d, h):>10.3g}{mark}")
        return lines

    def rule(self) -> str:
        """The rule in words, with this suggestion's names and ratio."""
        return (
            f"layer l goes to the donor ({self.donor}) when r_donor(l) > {self.ratio:g} x "
            f"r_host(l) ({self.host}), where r(l) = ||W_expert - W_base||_F / ||W_base||_F "
            "over all of layer l's tensors; bottom = the longest run of such layers from layer "
            "0, top = the longest run ending at the last layer; transition = 1 when the host "
            "layers between the blocks leave room for one blended layer at each inner edge, "
            "else 0."
        )


def suggest(
    host: str,
    donor: str,
    host_change: Sequence[float],
    donor_change: Sequence[float],
    ratio: float = 1.0,
) -> Suggestion:
    """The rule: layer l is the donor's when donor_change[l] > ratio × host_change[l];
    bottom = the longest run of such layers from layer 0, top = the longest run ending at the
    last layer (not overlapping bottom); transition = 1 when the host layers between the blocks
    leave room for one blended layer at each inner edge (the swap rule's check), else 0."""
    n = len(host_change)
    wins = [d > ratio * h for h, d in zip(host_change, donor_change, strict=True)]
    bottom = next((i for i, win in enumerate(wins) if not win), n)
    top = next((i for i, win in enumerate(reversed(wins[bottom:])) if not win), n - bottom)
    claim = swap.Claim(donor, bottom, top)
    edges = bottom + top < n  # some host layers remain, next to the blocks' inner edges
    fits = edges and not swap_rule.problems(swap.SwapConfig(host, (claim,), transition=1), n)
    return Suggestion(
        host, donor, ratio, bottom, top, int(fits), tuple(host_change), tuple(donor_change)
    )


def suggestion_yaml(s: Suggestion, host: Model, donor: Model, dtype: str) -> str:
    """A complete `layer_swap` config for `s`, with the rule and its numbers as comments."""
    import textwrap

    import yaml

    claims = {key: value for key, value in (("bottom", s.bottom), ("top", s.top)) if value}
    config = {
        "merge_method": "layer_swap",
        "base_model": host.merge_reference,
        "models": [
            {"model": host.merge_reference},
            {"model": donor.merge_reference, "parameters": claims},
        ],
        "parameters": {"transition": s.transition},
        "dtype": dtype,
    }
    comments = [
        "Suggested by `mergekit-layerswap analyze`; run: mergekit-yaml THIS_FILE OUTPUT_DIR",
        *textwrap.wrap("Rule: " + s.rule(), 90),
        "",
        *s.table(),
    ]
    header = "".join(f"# {line}".rstrip() + "\n" for line in comments)
    return header + yaml.safe_dump(config, sort_keys=False)
