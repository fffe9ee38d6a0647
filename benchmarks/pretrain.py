"""Pretraining throughput: torchtitan vs. a plain PyTorch loop, and tokenization, in one run.

    .venv/bin/python benchmarks/pretrain.py [--steps 60] [--nprocs 1 2] [--repeats 2] [--quick]

Training: the tiny recipe's model (dim 64, 2 layers, 4 heads, 2 KV heads, FFN 256, vocab from
the tokenizer trained here), fp32, the recipe's global batch (8 x 256 tokens), ``--steps``
steps of the constant-LR ``stable_diverse`` stage, on the same token shards, measured as:

* baseline -- a plain PyTorch loop in this process: the same torchtitan ``Llama3Model`` built
  from ``llama_config`` (seed 0, as torchtitan's seed checkpoint), AdamW with ``default_adamw``'s
  settings (fused, betas 0.9/0.95, eps 1e-8, weight decay 0.1), the plan's LR, cross-entropy,
  grad clip 1.0, batches drawn exactly as ``CurriculumDataLoader`` draws them
  (``stage_streams`` + ``MixtureSchedule``); torch threads = cores. Its loss curve equals
  torchtitan's step for step (reported), so both runs do the same arithmetic;
* torchtitan -- ``LocalLauncher(nproc_per_node=n).run_stage(spec)`` for each ``--nprocs``:
  torchrun, a seed-checkpoint process, the stock Trainer (``cores // n`` threads per rank, two
  ranks = FSDP over gloo), a final DCP checkpoint. ``tokens/s`` is the stage's ``result.json``
  figure (first to last logged step); ``wall`` (what a user waits for) is split into seed
  process, start-up to step 1, steps and checkpoint/teardown.

Steady state skips the first ``--warmup`` steps (torchtitan's ``result.json`` skips one). The
median step's tokens/s is shown too: on a shared machine another process taking a core slows
a 2-thread step several-fold, and the median shrugs off such spells. Rounds (``--repeats``)
interleave all configurations and the best run of each is shown; the JSON keeps every run and
the load average before it.

Tokenization, on the refined corpus in the store (newest ``decontaminated`` and
``quality_tiers`` versions) or, without one, a small corpus built from the embedded sources:
``train_tokenizer`` at vocab 8192 (seconds, chars/token), ``write_token_shards`` (tokens/s
end to end: DuckDB join, split, shuffle, encode, write) against bare ``encode_documents`` on
the same kept texts. All scratch lives in a temp directory; results go to
``benchmarks/results/pretrain.json`` (``--out``), the printed tables beside it as ``.md``,
with the machine facts of ``benchmarks/common.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import common  # noqa: E402
from nanbeige_train import compat  # noqa: E402

compat.isolate_imports()  # before anything can import TensorFlow (see compat, item 3)

STORE = REPO / "data" / "store"
STAGE = "stable_diverse"  # a constant-LR stage of the tiny recipe, seq_len 256
DOMAINS = ("web", "books", "code", "papers")


def machine() -> dict:
    return common.machine(packages=("torch", "torchtitan"))


# --------------------------------------------------------------------------- corpus


def store_corpus() -> tuple[Path, Path] | None:
    """(corpus dir, tiers.parquet) of the newest refined corpus in the store, if any."""

    def newest(asset: str, pattern: str) -> Path | None:
        versions = sorted(p for p in (STORE / asset).glob("*") if any(p.glob(pattern)))
        return versions[-1] if versions else None

    corpus, tiers = newest("decontaminated", "*.parquet"), newest("quality_tiers", "tiers.parquet")
    return (corpus, tiers / "tiers.parquet") if corpus and tiers else None


def build_small_corpus(root: Path, max_bytes: int) -> tuple[Path, Path]:
    """Embedded documents per domain and a tiers table: 1 in 5 rejected, 2 in 5 high."""
    import polars as pl

    from nanbeige_data.corpus.build import build_domain
    from nanbeige_data.corpus.config import DomainSource

    corpus = root / "corpus"
    corpus.mkdir()
    for domain in DOMAINS:
        (root / f"raw-{domain}").mkdir()
        build_domain(
            domain,
            DomainSource(max_bytes=max_bytes),
            out_dir=root / f"raw-{domain}",
        )
        for i, shard in enumerate(sorted((root / f"raw-{domain}").glob("*.parquet"))):
            shard.rename(corpus / f"{domain}-{i}.parquet")
    docs = pl.read_parquet(corpus / "*.parquet").select("id", "domain")
    tier = pl.Series(
        [("rejected", "diverse", "diverse", "high", "high")[i % 5] for i in range(docs.height)]
    )
    docs.with_columns(tier=tier).write_parquet(root / "tiers.parquet")
    return corpus, root / "tiers.parquet"


def subset_corpus(corpus: Path, tiers: Path, root: Path, docs: int) -> tuple[Path, Path]:
    """A seeded sample of ``docs`` documents (and their tiers) for a quick run."""
    import polars as pl

    frame = pl.read_parquet(corpus / "*.parquet")
    sample = frame.sample(min(docs, frame.height), seed=0)
    (root / "subset").mkdir()
    sample.write_parquet(root / "subset" / "part-0.parquet")
    kept = pl.read_parquet(tiers).join(sample.select("id"), on="id")
    kept.write_parquet(root / "subset-tiers.parquet")
    return root / "subset", root / "subset-tiers.parquet"


# --------------------------------------------------------------------------- tokenization


def bench_tokenizer(corpus: Path, out: Path, vocab: int) -> dict:
    from nanbeige_data.pretraining.config import TokenizerConfig
    from nanbeige_data.pretraining.tokenizer import corpus_texts, train_tokenizer

    started = time.perf_counter()
    stats = train_tokenizer(corpus_texts(corpus), TokenizerConfig(vocab_size=vocab), out)
    seconds = time.perf_counter() - started
    return {
        "vocab_size": stats.vocab_size,
        "documents": stats.documents,
        "chars": stats.chars,
        "chars_per_token": stats.chars_per_token,
        "seconds": seconds,
        "chars_per_second": stats.chars / seconds,
    }


def bench_shards(corpus: Path, tiers: Path, tok_dir: Path, out: Path) -> dict:
    from nanbeige_data.pretraining.tokenizer import write_token_shards

    started = time.perf_counter()
    index = write_token_shards(str(corpus / "*.parquet"), tiers, tok_dir, out)
    seconds = time.perf_counter() - started
    return {
        "tokens": index.total_tokens,  # EOS included
        "documents": sum(r.documents for r in index.rows),
        "seconds": seconds,
        "tokens_per_second": index.total_tokens / seconds,
    }


def bench_encode(corpus: Path, tiers: Path, tok_dir: Path, batch: int = 256) -> dict:
    """Bare ``encode_documents`` over the texts the shards keep (non-rejected), same batches."""
    import polars as pl

    from nanbeige_data.pretraining.tokenizer import encode_documents, load_tokenizer

    kept = pl.read_parquet(tiers).filter(pl.col("tier") != "rejected").select("id")
    texts = pl.read_parquet(corpus / "*.parquet").join(kept, on="id")["text"].to_list()
    tok, _ = load_tokenizer(tok_dir)
    started = time.perf_counter()
    tokens = sum(
        len(ids)
        for i in range(0, len(texts), batch)
        for ids in encode_documents(tok, texts[i : i + batch])
    )
    seconds = time.perf_counter() - started
    chars = sum(map(len, texts))
    return {
        "documents": len(texts),
        "tokens": tokens,
        "chars": chars,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "chars_per_second": chars / seconds,
    }


# --------------------------------------------------------------------------- plan and spec


def write_plan(shards: Path, steps: int, path: Path):
    """The tiny recipe's plan, ``STAGE`` cut to ``steps`` steps, the others to one step each.

    Every stage draws ``STAGE``'s mixture restricted to the buckets the shards hold."""
    from nanbeige_data.pretraining.curriculum import plan_curriculum
    from nanbeige_data.pretraining.tokenizer import load_index
    from nanbeige_data.recipe import load_recipe

    rcp = load_recipe("tiny")
    have = {b: n for b, n in load_index(shards).bucket_tokens("train").items() if n > 1}
    mix = next(s.mixture for s in rcp.curriculum.stages if s.name == STAGE)
    mix = {b: w for b, w in mix.items() if b in have} or {b: Fraction(1) for b in have}
    mix = {b: Fraction(w) / sum(mix.values()) for b, w in mix.items()}
    per_step = rcp.pretrain.batch_size * rcp.pretrain.grad_accumulation
    stages = [
        s.model_copy(
            update={
                "tokens": per_step * s.seq_len * (steps if s.name == STAGE else 1),
                "mixture": mix,
            }
        )
        for s in rcp.curriculum.stages
    ]
    cur = rcp.curriculum.model_copy(update={"stages": stages})
    plan = plan_curriculum(cur, rcp.pretrain, bucket_tokens=have)
    path.write_text(json.dumps(plan.to_dict(), indent=2))
    return rcp, plan, next(s for s in plan.stages if s.name == STAGE)


# --------------------------------------------------------------------------- training


def plain_batches(shards: Path, plan_dict: dict, batch: int):
    """(inputs, labels) exactly as ``CurriculumDataLoader`` yields them on a single rank."""
    import numpy as np
    import torch

    from nanbeige_train.data import MixtureSchedule, stage_streams

    stage, streams = stage_streams(shards, plan_dict, STAGE)
    schedule = MixtureSchedule(stage["bucket_sequences"])
    while True:
        rows = []
        for _ in range(batch):
            b = schedule.next()
            stream = streams[schedule.buckets[b]]
            rows.append(stream.window(schedule.counts[b] - 1, stage["seq_len"]))
        tokens = torch.from_numpy(np.stack(rows).astype(np.int64))
        yield tokens[:, :-1], tokens[:, 1:]


def materialise_state(opt) -> None:
    """One zero-gradient, zero-LR step, as torchtitan's seed checkpoint does to a fresh AdamW
    (torch's ``_init_optim_state``, so the state can be saved): the first real update is then
    Adam's step 2. With it both runs compute the same losses, step for step."""
    import torch

    lrs = [group["lr"] for group in opt.param_groups]
    for group in opt.param_groups:
        group["lr"] = 0.0
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    for group, lr in zip(opt.param_groups, lrs, strict=True):
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)


def run_plain(shape, plan, stage, shards: Path, plan_path: Path, steps: int, warmup: int) -> dict:
    """The baseline loop: same model, optimizer settings, LR, loss, clipping and batches."""
    import torch
    import torch.nn.functional as F

    from nanbeige_train.model import llama_config
    from nanbeige_train.pretrain.trainer import stage_lr_factor

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    config = llama_config(shape, rope_theta=stage.rope_theta, max_seq_len=stage.seq_len)
    with torch.device("meta"):
        model = config.build()
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))
    model.train()
    params = list(model.parameters())
    opt = torch.optim.AdamW(
        params, lr=plan.lr_peak, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=True
    )
    materialise_state(opt)
    batches = plain_batches(shards, json.loads(plan_path.read_text()), stage.sequences_per_step)
    load, losses, ends, started = os.getloadavg()[0], [], [], time.perf_counter()
    for step in range(1, steps + 1):
        inputs, labels = next(batches)
        for group in opt.param_groups:
            group["lr"] = plan.lr_peak * stage_lr_factor(plan, stage, step)
        opt.zero_grad(set_to_none=True)
        logits = model(inputs)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        ends.append(time.perf_counter())
    return {
        **steady_rates(ends, stage.tokens_per_step, warmup),
        "wall_s": ends[-1] - started,
        "threads": torch.get_num_threads(),
        "load_average_1min_before": load,
        "losses": losses,
    }


def steady_rates(ends: list[float], tokens_per_step: int, warmup: int) -> dict:
    """Tokens/s after ``warmup`` steps from the steps' end times: over the window, and the
    median step's (robust to another process taking a core for a while)."""
    steps = [b - a for a, b in zip(ends[warmup - 1 :], ends[warmup:], strict=False)]
    return {
        "tokens_per_second": tokens_per_step * len(steps) / (ends[-1] - ends[warmup - 1]),
        "median_step_tokens_per_second": tokens_per_step / statistics.median(steps),
    }


def run_torchtitan(spec, nproc: int, warmup: int, tokens_per_step: int) -> dict:
    """One stage through ``LocalLauncher``; wall time split at the first and last logged step."""
    from nanbeige_train.launch import LocalLauncher
    from nanbeige_train.pretrain.trainer import read_metrics, seed_checkpoint

    work = Path(spec.work_dir)
    load, t0 = os.getloadavg()[0], time.time()
    result = LocalLauncher(nproc_per_node=nproc).run_stage(spec)
    t1 = time.time()
    rows = read_metrics(work)
    seed_meta = seed_checkpoint(work) / ".metadata"
    same = steady_rates([r["time"] for r in rows], tokens_per_step, warmup)
    return {
        "nproc": nproc,
        "tokens_per_second": result["tokens_per_second"],  # result.json: steps 2..N
        "same_window_tokens_per_second": same["tokens_per_second"],
        "median_step_tokens_per_second": same["median_step_tokens_per_second"],
        "wall_s": t1 - t0,
        "seed_process_s": seed_meta.stat().st_mtime - t0,  # start to seed checkpoint written
        "to_first_step_s": rows[0]["time"] - t0,
        "steps_s": rows[-1]["time"] - rows[0]["time"],
        "after_last_step_s": t1 - rows[-1]["time"],  # final checkpoint, teardown
        "threads_per_rank": max(1, (os.cpu_count() or 1) // nproc),
        "load_average_1min_before": load,
        "losses": [r["loss"] for r in rows],
    }


def bench_training(args, root: Path, vocab: int) -> tuple[dict, dict]:
    """Plain loop, then torchtitan at each rank count, on the shards under ``root``."""
    from nanbeige_train.model import ModelShape

    shards, tok_dir, plan_path = root / "shards", root / "tokenizer", root / "plan.json"
    rcp, plan, stage = write_plan(shards, args.steps, plan_path)
    shape = ModelShape.from_recipe(rcp.model, vocab_size=vocab)
    settings = {
        **shape.model_dump(),
        "batch": stage.sequences_per_step,
        "seq_len": stage.seq_len,
        "steps": args.steps,
        "warmup": args.warmup,
        "stage": STAGE,
        "lr": plan.lr_peak,
    }
    runs: dict[str, list[dict]] = {"plain": [], **{f"torchtitan_n{n}": [] for n in args.nprocs}}
    for r in range(args.repeats):  # interleaved, so a busy spell hits all of them alike
        print(f"round {r + 1}/{args.repeats}: plain PyTorch loop ...", flush=True)
        runs["plain"].append(
            run_plain(shape, plan, stage, shards, plan_path, args.steps, args.warmup)
        )
        for n in args.nprocs:
            print(f"round {r + 1}/{args.repeats}: torchtitan, {n} rank(s) ...", flush=True)
            work = root / f"tt-{n}-{r}"
            spec = stage_spec(rcp, shape, plan_path, shards, tok_dir, work, args.steps)
            runs[f"torchtitan_n{n}"].append(
                run_torchtitan(spec, n, args.warmup, stage.tokens_per_step)
            )
    training = {key: best_of(rows) for key, rows in runs.items()}
    for row in training.values():
        diffs = [
            abs(a - b) for a, b in zip(row["losses"], training["plain"]["losses"], strict=True)
        ]
        row["max_abs_loss_diff_vs_plain"] = max(diffs)
    return settings, training


def best_of(rows: list[dict]) -> dict:
    """The run with the highest steady tokens/s; every run's rates are kept under ``runs``."""
    keys = ("tokens_per_second", "median_step_tokens_per_second", "wall_s")
    best = max(rows, key=lambda r: r["tokens_per_second"])
    return {**best, "runs": [{k: r[k] for k in (*keys, "load_average_1min_before")} for r in rows]}


def stage_spec(rcp, shape, plan_path: Path, shards: Path, tok_dir: Path, work: Path, steps: int):
    from nanbeige_train.pretrain.trainer import StageSpec

    return StageSpec(
        plan_path=str(plan_path),
        stage=STAGE,
        shards_dir=str(shards),
        tokenizer_dir=str(tok_dir),
        model=shape.model_dump(),
        work_dir=str(work),
        # one checkpoint, at the end, as a stage always writes
        pretrain=rcp.pretrain.model_copy(update={"checkpoint_every": steps}),
    )


# --------------------------------------------------------------------------- report


def _training_rows(training: dict) -> list[tuple]:
    base = training["plain"]
    rows = []
    for key, r in training.items():
        if key == "plain":
            label, threads, startup = "plain PyTorch loop (baseline)", str(r["threads"]), "-"
        else:
            ranks = "1 rank" if r["nproc"] == 1 else f"{r['nproc']} gloo ranks, FSDP"
            label, threads = f"torchtitan, {ranks}", f"{r['threads_per_rank']}/rank"
            startup = f"{r['to_first_step_s']:.1f}"
        mean, median = r["tokens_per_second"], r["median_step_tokens_per_second"]
        rows.append((
            label, threads, f"{mean:,.0f}", f"{mean / base['tokens_per_second']:.2f}",
            f"{median:,.0f}", f"{median / base['median_step_tokens_per_second']:.2f}",
            f"{r['wall_s']:.1f}", startup,
        ))  # fmt: skip
    return rows


def _tokenization_rows(tok: dict) -> list[tuple]:
    enc, shards, trained = (
        tok["encode_documents"],
        tok["write_token_shards"],
        tok["train_tokenizer"],
    )
    ratio = shards["tokens_per_second"] / enc["tokens_per_second"]
    return [
        ("encode_documents (baseline)", f"{enc['tokens_per_second']:,.0f}", "1.00",
         f"{enc['seconds']:.2f}"),
        ("write_token_shards", f"{shards['tokens_per_second']:,.0f}", f"{ratio:.2f}",
         f"{shards['seconds']:.2f}"),
        (f"train_tokenizer (vocab {trained['vocab_size']})", "-", "-",
         f"{trained['seconds']:.2f}"),
    ]  # fmt: skip


def print_report(report: dict) -> None:
    m, s, tok = report["machine"], report["settings"], report["tokenization"]
    print("\n" + common.machine_line(m))
    print(
        f"model dim {s['dim']}, {s['n_layers']} layers, vocab {s['vocab_size']}; batch "
        f"{s['batch']} x {s['seq_len']}, fp32, {s['steps']} steps ({s['warmup']} warm-up)\n"
    )
    header = (
        "training", "threads", "tokens/s", "vs plain", "median step tokens/s", "vs plain",
        "wall s", "to first step s",
    )  # fmt: skip
    print(common.md_table(header, _training_rows(report["training"]), "l" + "r" * 7))
    loads = {
        k: [round(x["load_average_1min_before"], 1) for x in r["runs"]]
        for k, r in report["training"].items()
    }
    print(f"1-min load average before each run: {loads}")
    for key, r in report["training"].items():
        if key != "plain":
            print(
                f"{key}: wall {r['wall_s']:.1f}s = seed process {r['seed_process_s']:.1f}s + "
                f"training process to step 1 {r['to_first_step_s'] - r['seed_process_s']:.1f}s "
                f"+ steps 2..{s['steps']} {r['steps_s']:.1f}s + checkpoint/teardown "
                f"{r['after_last_step_s']:.1f}s; max |loss - plain loss| "
                f"{r['max_abs_loss_diff_vs_plain']:.1e}"
            )
    enc, trained = tok["encode_documents"], tok["train_tokenizer"]
    print(f"\ncorpus: {tok['source']}, {enc['documents']} kept documents, {enc['chars']:,} chars\n")
    header = ("tokenization", "tokens/s", "vs encode", "seconds")
    print(common.md_table(header, _tokenization_rows(tok), "lrrr"))
    print(
        f"\nchars/token {trained['chars_per_token']:.2f}; tokenizer training "
        f"{trained['chars_per_second'] / 1e6:.2f} M chars/s over {trained['chars']:,} chars"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="training steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the baseline")
    parser.add_argument("--nprocs", type=int, nargs="+", help="torchtitan ranks (default 1 2)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; the best run is shown")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--max-docs", type=int, default=None, help="sample the corpus")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 12 steps, 300 docs, 1 rank"
    )
    parser.add_argument("--out", type=Path, default=common.results_path("pretrain"))
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.repeats = 12, 3, 1
        args.nprocs, args.max_docs = args.nprocs or [1], args.max_docs or 300
    args.nprocs = args.nprocs or [1, 2]
    if not 1 <= args.warmup <= args.steps - 3:
        parser.error("need 1 <= --warmup <= --steps - 3")
    started = time.perf_counter()
    report: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as tmp:
        root = Path(tmp)
        found = store_corpus()
        source = f"store {found[0].relative_to(REPO)}" if found else "embedded (built here)"
        corpus, tiers = found or build_small_corpus(root, 100_000 if args.quick else 400_000)
        if args.max_docs:
            corpus, tiers = subset_corpus(corpus, tiers, root, args.max_docs)
        print(f"tokenization on {source} ...", flush=True)
        tok_dir, shards = root / "tokenizer", root / "shards"
        trained = bench_tokenizer(corpus, tok_dir, args.vocab)
        report["tokenization"] = {
            "source": source,
            "train_tokenizer": trained,
            "write_token_shards": bench_shards(corpus, tiers, tok_dir, shards),
            "encode_documents": bench_encode(corpus, tiers, tok_dir),
        }
        report["settings"], report["training"] = bench_training(args, root, trained["vocab_size"])
    report["total_seconds"] = time.perf_counter() - started
    with common.printed() as text:
        print_report(report)
    written = ", ".join(map(str, common.write_results(args.out, report, text.getvalue())))
    print(f"\nbenchmark took {report['total_seconds']:.0f}s; written {written}")


if __name__ == "__main__":
    main()
