"""Policy files: how many channels to keep in each channel group of a model, as JSON.

```
{
  "format": "amc-policy/1",
  "model": "resnet56",
  "budget": {"kind": "flops", "ratio": 0.5},            # or null
  "groups": [{"name": "layer1.0.conv1", "channels": 16, "keep": 8}, ...],
  "predicted": {"macs": 62697984, "params": 520000, "macs_ratio": 0.4996, "params_ratio": 0.61},
  "method": "uniform", ...                               # any further fields, kept verbatim
}
```
`keep` is authoritative; `predicted` is informational (what the cost model said when the policy was
made). A group of the model that the file does not list is kept whole, so a hand-written policy may
name only the groups it prunes. `format`, `model` and `groups` are required; `budget` and `predicted`
may be left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from amc.engine.budget import Budget
from amc.engine.pruner import ChannelPruner
from amc.errors import AmcError, first
from amc.fileio import atomic_write_json

POLICY_FORMAT = "amc-policy/1"
_FIELDS = ("format", "model", "budget", "groups", "predicted")


@dataclass(frozen=True)
class GroupKeep:
    """Keep `keep` of the `channels` channels of group `name`."""

    name: str
    channels: int
    keep: int


@dataclass
class Policy:
    """Kept channel counts per group for `model` (a registry name or factory spec).

    `budget` is the budget the policy was made for (None: unknown); `predicted` the cost model's
    `macs`, `params`, `macs_ratio` and `params_ratio` (fractions of the dense model); `extra` any
    further top-level fields of the file (method, val_accuracy, seed, ...), saved verbatim.
    """

    model: str
    groups: list[GroupKeep]
    budget: Budget | None = None
    predicted: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_counts(
        cls, pruner: ChannelPruner, model_spec: str, counts: np.ndarray, budget: Budget | None = None, **extra: Any
    ) -> Policy:
        """The policy keeping `counts[i]` channels of `pruner.groups[i]` (counts: ints, shape [G]).

        `predicted` is filled from `pruner.cost`; `extra` keyword arguments become extra fields, after
        `selection`: how the pruner chooses a group's channels (`ls`, `l1`, ...), so `amc apply` keeps the same,
        and `channel_round` when the pruner rounds kept counts.
        """
        counts = np.asarray(counts, dtype=np.int64)
        if counts.shape != pruner.channels.shape:
            raise ValueError(f"counts has shape {counts.shape}; the model has {len(pruner.names)} groups")
        clashing = sorted(set(extra) & set(_FIELDS))
        if clashing:
            raise ValueError(f"extra fields {clashing} would overwrite the policy's own fields")
        macs, params = int(pruner.cost.macs(counts)), int(pruner.cost.params(counts))
        dense_macs, dense_params = int(pruner.cost.macs(pruner.channels)), int(pruner.cost.params(pruner.channels))
        predicted = {
            "macs": macs,
            "params": params,
            "macs_ratio": macs / dense_macs,
            "params_ratio": params / dense_params,
        }
        # in the producer's channels: a group cut into sections counts units of one channel per section
        groups = [GroupKeep(g.name, g.width, int(n) * g.sections) for g, n in zip(pruner.groups, counts)]
        rounding = {"channel_round": pruner.channel_round} if pruner.channel_round > 1 else {}
        return cls(model_spec, groups, budget, predicted, {"selection": pruner.selection, **rounding, **extra})

    def to_dict(self) -> dict[str, Any]:
        """The file's JSON object."""
        return {
            "format": POLICY_FORMAT,
            "model": self.model,
            "budget": None if self.budget is None else self.budget.to_dict(),
            "groups": [{"name": g.name, "channels": g.channels, "keep": g.keep} for g in self.groups],
            "predicted": dict(self.predicted),
            **self.extra,
        }

    def save(self, path: str | Path) -> None:
        """Write the policy to `path` as JSON (atomically)."""
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        """Read and check a policy file.

        Raises:
            AmcError: missing file, not JSON, wrong format version, or malformed fields. Whether the
                groups fit a model is checked by `counts_for`.
        """
        path = Path(path)
        if not path.is_file():
            raise AmcError(f"policy file {path} not found; write one with `amc baseline ... --out {path}`")
        try:
            data = json.loads(path.read_bytes())
        except json.JSONDecodeError as exc:
            raise AmcError(
                f"policy file {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                "fix the file or write it again"
            ) from None
        except UnicodeDecodeError:
            raise AmcError(f"policy file {path} is not a JSON text file; pass the .json policy file") from None
        except RecursionError:
            raise AmcError(f"policy file {path} is nested too deeply to be an amc policy; pass the .json policy "
                           "file amc wrote") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> Policy:
        """Check a policy's JSON object; `source` (e.g. the file path) names it in errors."""
        where = f"policy file {source}" if source else "the policy"
        if not isinstance(data, dict):
            raise AmcError(f"{where} holds a JSON {type(data).__name__}, not an object; pass an amc policy file")
        version = data.get("format")
        if version != POLICY_FORMAT:
            if isinstance(version, str) and version.startswith("amc-policy/"):
                raise AmcError(f"{where} has format {version}; this amc reads {POLICY_FORMAT}: write the policy "
                               "again with this amc (amc baseline or amc train-agent), or use the amc that wrote it")
            found = "no \"format\" field" if version is None else f"format {version!r}"
            raise AmcError(f"{where} has {found}, not {POLICY_FORMAT!r}; pass a policy written by amc")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise AmcError(f"{where} needs a \"model\" string naming the model it was made for")
        budget = data.get("budget")
        if budget is not None:
            if not isinstance(budget, dict) or set(budget) != {"kind", "ratio"}:
                raise AmcError(f"{where}: \"budget\" must be null or {{\"kind\": ..., \"ratio\": ...}}")
            try:
                budget = Budget(budget["kind"], budget["ratio"])
            except AmcError as exc:
                raise AmcError(f"{where} has an invalid budget: {exc}") from None
        predicted = data.get("predicted", {})
        if not isinstance(predicted, dict):
            raise AmcError(f"{where}: \"predicted\" must be an object (or left out)")
        groups = _parse_groups(data.get("groups"), where)
        extra = {k: v for k, v in data.items() if k not in _FIELDS}
        return cls(model, groups, budget, predicted, extra)

    def counts_for(self, pruner: ChannelPruner) -> np.ndarray:
        """Kept channel counts in `pruner`'s group order, shape [G]; groups the policy omits are kept whole.

        Raises:
            AmcError: the policy names groups the model lacks, a group's channels differ from the
                model's, or a `keep` lies outside [min_keep, channels].
        """
        by_name = {g.name: g for g in pruner.groups}
        unknown = [g.name for g in self.groups if g.name not in by_name]
        if unknown:
            raise AmcError(
                f"the policy (made for model {self.model}) names {len(unknown)} group(s) the model does not have: "
                f"{first(unknown)}; `amc profile --model MODEL` lists a model's groups"
            )
        counts = pruner.channels.copy()
        index = {name: i for i, name in enumerate(pruner.names)}
        for entry in self.groups:
            group = by_name[entry.name]
            if entry.channels != group.width:
                raise AmcError(
                    f"the policy says group {entry.name} has {entry.channels} channels but the model's has "
                    f"{group.width}; the policy was made for another model"
                )
            low, step = group.min_keep * group.sections, group.sections
            if not low <= entry.keep <= group.width:
                raise AmcError(
                    f"the policy keeps {entry.keep} channels of group {entry.name}, outside "
                    f"[{low}, {group.width}]; keep between {low} and {group.width}"
                )
            if entry.keep % step:
                raise AmcError(
                    f"the policy keeps {entry.keep} channels of group {entry.name}, which the model cuts into {step} "
                    f"equal sections (torch.chunk); keep a multiple of {step}, e.g. {entry.keep // step * step or step}"
                )
            counts[index[entry.name]] = entry.keep // step
        return counts


def _parse_groups(groups: Any, where: str) -> list[GroupKeep]:
    if not isinstance(groups, list):
        raise AmcError(f"{where} needs a \"groups\" list of {{\"name\", \"channels\", \"keep\"}} objects")
    parsed: list[GroupKeep] = []
    seen: set[str] = set()
    for i, entry in enumerate(groups):
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and all(_is_int(entry.get(key)) for key in ("channels", "keep"))
        ):
            raise AmcError(
                f"{where}: groups[{i}] must be {{\"name\": string, \"channels\": integer, \"keep\": integer}}, "
                f"got {json.dumps(entry)[:80]}"
            )
        if entry["name"] in seen:
            raise AmcError(f"{where} lists group {entry['name']} twice; keep one entry per group")
        seen.add(entry["name"])
        parsed.append(GroupKeep(entry["name"], entry["channels"], entry["keep"]))
    return parsed


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
