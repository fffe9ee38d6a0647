"""The curriculum dataloader: draws packed sequences from token-shard buckets by a stage's plan.

A stage of the FG-WSD plan says how many sequences it takes from each bucket
(``bucket_sequences``). The loader interleaves them with a deficit round-robin: sequence ``j``
of the stage goes to the bucket furthest behind its share ``n_b * (j + 1) / N`` (ties by bucket
name). The interleave is smooth (a bucket is never more than one sequence off its share at any
point) and exact at the end, so tokens seen per bucket equal the plan -- the loader also
counts what it really emitted, and the pretrain checks compare that count with the plan.

Each bucket is read as an endless stream (wrapping = another epoch) from where the earlier
stages left it, ``seq_len + 1`` tokens per sequence, stepping ``seq_len``. Shards are written in
a seeded document order, so reading sequentially is reading shuffled documents.

Data parallelism: every rank runs the same global schedule (a few integer operations per
sequence) and reads only its slice of each global batch, so no rank coordination is needed and
the state is one integer plus the per-bucket counts -- identical on every rank, cheap to
checkpoint, and an exact resume point. No worker processes: reading a window from a memmap
costs microseconds next to a training step.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CODE_VERSION = "1"


class MixtureSchedule:
    """Deficit round-robin over buckets with exact totals ``bucket_sequences``."""

    def __init__(self, bucket_sequences: Mapping[str, int]):
        self.buckets = sorted(b for b, n in bucket_sequences.items() if n > 0)
        self.targets = [int(bucket_sequences[b]) for b in self.buckets]
        self.total = sum(self.targets)
        if self.total <= 0:
            raise ValueError("a stage must draw at least one sequence")
        self.position = 0
        self.counts = [0] * len(self.buckets)

    def next(self) -> int:
        """Index (into ``buckets``) of the bucket that sequence ``position`` comes from."""
        if self.position >= self.total:
            raise StopIteration(f"the stage's {self.total} planned sequences are all drawn")
        j = self.position
        deficits = [
            n * (j + 1) - c * self.total for n, c in zip(self.targets, self.counts, strict=True)
        ]
        best = max(range(len(deficits)), key=lambda i: (deficits[i], -i))
        self.counts[best] += 1
        self.position += 1
        return best

    def state(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "counts": dict(zip(self.buckets, self.counts, strict=True)),
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        self.position = int(state["position"])
        self.counts = [int(state["counts"].get(b, 0)) for b in self.buckets]


@dataclass(frozen=True)
class BucketStream:
    """One bucket's train tokens as an endless stream starting at ``offset``."""

    tokens: np.ndarray  # memmap
    offset: int

    def window(self, index: int, seq_len: int) -> np.ndarray:
        n = len(self.tokens)
        start = (self.offset + index * seq_len) % n
        stop = start + seq_len + 1
        if stop <= n:
            return np.asarray(self.tokens[start:stop])
        return np.concatenate([self.tokens[start:], self.tokens[: stop - n]])


def stage_streams(
    shards_dir: Path, plan: Mapping[str, Any], stage_name: str
) -> tuple[dict[str, Any], dict[str, BucketStream]]:
    """The stage's plan entry and a stream per bucket, offset past what earlier stages read."""
    index = json.loads((Path(shards_dir) / "index.json").read_text())
    files = {
        r["bucket"]: (r["path"], r["dtype"], r["tokens"])
        for r in index["rows"]
        if r["split"] == "train"
    }
    stages = plan["stages"]
    names = [s["name"] for s in stages]
    if stage_name not in names:
        raise KeyError(f"stage {stage_name!r} is not in the plan (stages: {names})")
    stage = stages[names.index(stage_name)]
    streams = {}
    for bucket, n_seq in stage["bucket_sequences"].items():
        if n_seq <= 0:
            continue
        if bucket not in files:
            raise KeyError(f"stage {stage_name}: bucket {bucket!r} has no train shard in {index}")
        path, dtype, n_tokens = files[bucket]
        if n_tokens < 2:
            raise ValueError(f"bucket {bucket} has {n_tokens} train tokens: too few to train on")
        earlier = sum(
            s["bucket_sequences"].get(bucket, 0) * s["seq_len"]
            for s in stages[: names.index(stage_name)]
        )
        tokens = np.memmap(Path(shards_dir) / path, dtype=np.dtype(dtype), mode="r")
        streams[bucket] = BucketStream(tokens, earlier % len(tokens))
    return stage, streams


def _base_loader():
    from torchtitan.components.dataloader import BaseDataLoader

    return BaseDataLoader


class CurriculumDataLoader(_base_loader()):
    """torchtitan dataloader for one FG-WSD stage (built by the Trainer from its Config)."""

    @dataclass(kw_only=True, slots=True)
    class Config(_base_loader().Config):
        shards_dir: str = ""
        plan_path: str = ""
        stage: str = ""

    def __init__(
        self,
        config: Config,
        *,
        dp_world_size: int,
        dp_rank: int,
        tokenizer=None,
        seq_len: int,
        local_batch_size: int,
        snapshot_every_n_steps: int | None = None,
    ):
        plan = json.loads(Path(config.plan_path).read_text())
        self.stage, self.streams = stage_streams(Path(config.shards_dir), plan, config.stage)
        if seq_len != self.stage["seq_len"]:
            raise ValueError(
                f"trainer seq_len {seq_len} differs from stage {config.stage}'s "
                f"{self.stage['seq_len']}"
            )
        self.seq_len = seq_len
        self.local_batch_size = local_batch_size
        self.dp_rank, self.dp_world_size = dp_rank, dp_world_size
        self.schedule = MixtureSchedule(self.stage["bucket_sequences"])
        self.drawn = dict.fromkeys(self.schedule.buckets, 0)  # per bucket, over all ranks

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Local batches; every rank walks the global schedule and keeps its own slice."""
        local = self.local_batch_size
        mine = range(self.dp_rank * local, (self.dp_rank + 1) * local)
        while self.schedule.position < self.schedule.total:
            rows = []
            for i in range(local * self.dp_world_size):
                b = self.schedule.next()
                if i in mine:
                    stream = self.streams[self.schedule.buckets[b]]
                    rows.append(stream.window(self.schedule.counts[b] - 1, self.seq_len))
            batch = torch.from_numpy(np.stack(rows).astype(np.int64))
            yield {"input": batch[:, :-1]}, batch[:, 1:]

    def tokens_seen(self) -> dict[str, int]:
        """Tokens per bucket this stage has emitted over all ranks (kept across a resume)."""
        state = self.schedule.state()
        return {b: n * self.seq_len for b, n in state["counts"].items()}

    def state_dict(self) -> dict[str, Any]:
        return {"curriculum": json.dumps(self.schedule.state())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict and "curriculum" in state_dict:
            self.schedule.restore(json.loads(state_dict["curriculum"]))
