"""The pretrain group: pretrain_<stage> (one asset per FG-WSD stage, each resuming from the
previous stage) -> base_model (Hugging Face export), and the FG-WSD vs vanilla-WSD ablation.

Stages come from the recipe the Definitions are built from; training is launched through the
``launcher`` resource (local torchrun here; a cluster launcher elsewhere)."""

import functools
import hashlib
import json

import dagster as dg

from assets.checks import version_check
from assets.curriculum import PLAN_FILE, STAGE_PLAN_FILE, VANILLA_FILE, stage_names
from assets.resources import RecipeResource, StoreResource
from assets.versioning import code_version, commit, staged
from nanbeige_data.recipe import Recipe
from nanbeige_data.store.versioned import Version
from nanbeige_train import export
from nanbeige_train.pretrain import stage as runner
from nanbeige_train.launch import LocalLauncher, TrainingError
from nanbeige_train.model import ModelShape

GROUP = "pretrain"
SECTIONS = ("model", "pretrain")


class LauncherResource(dg.ConfigurableResource):
    """How training processes start: torchrun on this machine with ``nproc_per_node`` ranks
    (0 = the recipe's ``pretrain.nproc_per_node``)."""

    nproc_per_node: int = 0
    timeout_s: int = 0

    def launcher(self, rcp: Recipe) -> LocalLauncher:
        return LocalLauncher(
            nproc_per_node=self.nproc_per_node or rcp.pretrain.nproc_per_node,
            timeout_s=self.timeout_s or None,
        )


def _shape(rcp: Recipe, tokenizer: Version) -> ModelShape:
    return ModelShape.from_recipe(rcp.model, tokenizer.manifest["counts"]["vocab_size"])


def _fingerprint(context: dg.AssetExecutionContext, *inputs: Version) -> str:
    """Same code and inputs -> same work directory, so a crashed attempt is resumed."""
    code = context.assets_def.code_versions_by_key.get(context.asset_key) or ""
    blob = code + "|" + "|".join(v.data_version for v in inputs)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _progress(context: dg.AssetExecutionContext, every: int = 10):
    """Log every ``every``-th training step line (and errors) to the Dagster run."""

    def on_line(line: str) -> None:
        if " step:" in line:
            step = line.split(" step:", 1)[1].split()[0]
            if step.isdigit() and (int(step) == 1 or int(step) % every == 0):
                context.log.info(line.split(" - ")[-1])
        elif ("Error" in line and "lspci" not in line) or "Traceback" in line:
            context.log.warning(line)

    return on_line


def _stage_metadata(report: runner.StageReport, plot: str) -> dict:
    rows = ["| bucket | planned | seen |", "|---|---:|---:|"]
    rows += [
        f"| {b} | {report.tokens_planned.get(b, 0)} | {report.tokens_seen.get(b, 0)} |"
        for b in sorted(set(report.tokens_planned) | set(report.tokens_seen))
    ]
    return {
        "loss_curve": dg.MetadataValue.md(plot),
        "tokens_per_bucket": dg.MetadataValue.md("\n".join(rows)),
        "tokens_per_second": round(report.tokens_per_second, 1),
        "first_loss": round(report.first_loss, 4),
        "last_loss": round(report.last_loss, 4),
        "checkpoint_bytes": report.checkpoint_bytes,
        "resumed_from": report.resumed_from or "",
        "world_size": report.world_size,
    }


def _train_stage(
    context: dg.AssetExecutionContext,
    rcp: Recipe,
    store: StoreResource,
    launcher: LauncherResource,
    stage: str,
    inputs: dict[str, Version],
) -> dg.Output[Version]:
    """Train ``stage`` from the plan (resuming a crashed attempt) and commit its version."""
    vstore = store.open()
    plan, shards, tok = inputs[f"plan_{stage}"], inputs["token_shards"], inputs["tokenizer"]
    previous = next((v for k, v in inputs.items() if k.startswith("pretrain_")), None)
    key = context.asset_key.to_python_identifier()
    work = vstore.workdir(key, _fingerprint(context, *inputs.values()))
    spec = runner.stage_spec(
        plan_path=plan.local_path / STAGE_PLAN_FILE,
        stage=stage,
        shards_dir=shards.local_path,
        tokenizer_dir=tok.local_path,
        shape=_shape(rcp, tok),
        work_dir=work,
        init_checkpoint=previous.local_path / "checkpoint" if previous else None,
        pretrain=rcp.pretrain,
        seed=rcp.seed,
    )
    with staged(vstore, context) as out:
        try:
            first = previous.manifest["extra"]["report"]["run_first_loss"] if previous else None
            report = runner.train_stage(
                spec, out.path, launcher.launcher(rcp), _progress(context), first
            )
        except (TrainingError, KeyError) as exc:
            raise dg.Failure(
                description=f"{key}: {str(exc).splitlines()[0]}",
                metadata={
                    "log_tail": dg.MetadataValue.text(str(exc)[-4000:]),
                    "work_dir": dg.MetadataValue.path(str(work)),
                },
            ) from exc
        plot = runner.plot_losses(
            {stage: runner.read_metrics(out.path)}, out.path / "loss.png", f"{key} loss"
        )
        version = commit(
            context,
            vstore,
            out,
            recipe=rcp,
            section=SECTIONS,
            inputs=inputs,
            counts={"steps": report.steps, "tokens": sum(report.tokens_seen.values())},
            metadata=_stage_metadata(report, plot),
            extra={
                "report": report.as_dict(),
                "stage": _plan_stage(spec),
            },
        )
    vstore.discard_workdir(work)
    return version


def pretrain_stage_asset(stage: str, previous: str | None) -> dg.AssetsDefinition:
    """``pretrain_<stage>``; it depends on ``pretrain_<previous>`` when there is one."""
    ins = {name: dg.AssetIn(name) for name in (f"plan_{stage}", "token_shards", "tokenizer")}
    if previous:
        ins["previous"] = dg.AssetIn(f"pretrain_{previous}")

    @dg.asset(
        name=f"pretrain_{stage}",
        group_name=GROUP,
        ins=ins,
        code_version=code_version(runner.CODE_VERSION, *SECTIONS),
        description=f"FG-WSD stage '{stage}' trained by torchtitan"
        + (f", resuming from pretrain_{previous}'s checkpoint" if previous else "")
        + ". Holds the DCP checkpoint, loss curve and tokens seen per bucket.",
        kinds={"torchtitan", "pytorch"},
    )
    def _stage(
        context: dg.AssetExecutionContext,
        recipe: RecipeResource,
        store: StoreResource,
        launcher: LauncherResource,
        **versions: Version,
    ) -> dg.Output[Version]:
        inputs = {k: v for k, v in versions.items() if k != "previous"}
        if "previous" in versions:
            inputs[f"pretrain_{previous}"] = versions["previous"]
        return _train_stage(context, recipe.load(), store, launcher, stage, inputs)

    return _stage


def _plan_stage(spec) -> dict:
    _, stage = spec.plan_stage()
    return {"name": stage.name, "seq_len": stage.seq_len, "rope_theta": stage.rope_theta}


def _loss_falls(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    report = version.manifest["extra"]["report"]
    first_stage = not any(k.startswith("pretrain_") for k in version.manifest["inputs"])
    reference = None if first_stage else report["run_first_loss"]
    ok, detail = runner.loss_ok(runner.read_metrics(version.local_path), reference=reference)
    return ok, {k: float(v) for k, v in detail.items()}


def _tokens_match(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    ok, detail = runner.tokens_match(version.manifest["extra"]["report"])
    return ok, {
        "worst_relative_error": detail["worst_relative_error"],
        "buckets": dg.MetadataValue.json(detail["buckets"]),
    }


def _reloads(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    stage = version.manifest["extra"]["stage"]
    spec = json.loads((version.local_path / "spec.json").read_text())
    return runner.checkpoint_reloads(
        version.local_path / "checkpoint",
        ModelShape(**spec["model"]),
        rope_theta=stage["rope_theta"],
        seq_len=stage["seq_len"],
    )


def stage_checks(stage: str) -> list[dg.AssetChecksDefinition]:
    asset = f"pretrain_{stage}"
    return [
        version_check(
            asset,
            name="loss_finite_and_falling",
            evaluate=_loss_falls,
            description="Every loss is finite; the last steps' mean is below the first steps' "
            "(the run's first steps for a later stage, whose loss has plateaued).",
        ),
        version_check(
            asset,
            name="tokens_match_plan",
            evaluate=_tokens_match,
            description="Tokens seen per bucket are within 1% of the plan.",
        ),
        version_check(
            asset,
            name="checkpoint_reloads",
            evaluate=_reloads,
            description="The DCP checkpoint loads into the model and gives finite logits.",
        ),
    ]


STAGES = stage_names()
STAGE_ASSETS = [
    pretrain_stage_asset(name, STAGES[i - 1] if i else None) for i, name in enumerate(STAGES)
]
LAST_STAGE = f"pretrain_{STAGES[-1]}"


@dg.asset(
    group_name=GROUP,
    ins={"final": dg.AssetIn(LAST_STAGE), "tokenizer": dg.AssetIn("tokenizer")},
    code_version=code_version(export.CODE_VERSION, "model"),
    description="The pretrained base model in Hugging Face format (safetensors, config.json, "
    "tokenizer) that transformers loads as a Llama causal LM.",
    kinds={"huggingface", "safetensors"},
)
def base_model(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    final: Version,
    tokenizer: Version,
) -> dg.Output[Version]:
    rcp, vstore = recipe.load(), store.open()
    stage = final.manifest["extra"]["stage"]
    shape = _shape(rcp, tokenizer)
    with staged(vstore, context) as out:
        stats = export.export_hf(
            final.local_path / "checkpoint",
            shape,
            rope_theta=stage["rope_theta"],
            max_seq_len=stage["seq_len"],
            tokenizer_dir=tokenizer.local_path,
            out_dir=out.path,
        )
        return commit(
            context,
            vstore,
            out,
            recipe=rcp,
            section="model",
            inputs={LAST_STAGE: final, "tokenizer": tokenizer},
            counts={"parameters": stats.parameters, "bytes": stats.bytes},
            metadata={"rope_theta": stats.rope_theta, "max_seq_len": stats.max_seq_len},
            extra={
                "export": stats.as_dict(),
                "checkpoint": str(final.local_path / "checkpoint"),
                "shape": shape.__dict__,
            },
        )


def _logits_match(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    extra = version.manifest["extra"]
    shape = ModelShape(**extra["shape"])
    model = export.load_training_model(
        extra["checkpoint"],
        shape,
        rope_theta=extra["export"]["rope_theta"],
        max_seq_len=extra["export"]["max_seq_len"],
    )
    seq = min(64, extra["export"]["max_seq_len"])
    batch = export.fixed_batch(shape.vocab_size, seq_len=seq)
    diff = export.compare_logits(model, version.local_path, batch)
    return diff <= 1e-4, {"max_abs_logit_diff": diff, "tolerance": 1e-4}


@dg.asset(
    group_name=GROUP,
    ins={
        **{f"pretrain_{s}": dg.AssetIn(f"pretrain_{s}") for s in STAGES},
        **{name: dg.AssetIn(name) for name in ("fgwsd_plan", "token_shards", "tokenizer")},
    },
    code_version=code_version(runner.CODE_VERSION, *SECTIONS, "curriculum"),
    description="FG-WSD vs vanilla WSD on the same token budget and LR: the vanilla plan (one "
    "fixed mixture) is trained here, both are scored on every held-out bucket and the "
    "reasoning set; extra seeds of both plans when the recipe asks for them.",
    kinds={"torchtitan"},
)
def pretrain_ablation(
    context: dg.AssetExecutionContext,
    recipe: RecipeResource,
    store: StoreResource,
    launcher: LauncherResource,
    fgwsd_plan: Version,
    token_shards: Version,
    tokenizer: Version,
    **stages: Version,
) -> dg.Output[Version]:
    rcp, vstore = recipe.load(), store.open()
    inputs = {"fgwsd_plan": fgwsd_plan, "token_shards": token_shards, "tokenizer": tokenizer}
    inputs.update(stages)
    shape = _shape(rcp, tokenizer)
    work = vstore.workdir("pretrain_ablation", _fingerprint(context, *inputs.values()))
    final = stages[LAST_STAGE]
    last = final.manifest["extra"]["stage"]
    checkpoints = {"fgwsd/seed0": final.local_path / "checkpoint"}
    curves = {
        "fgwsd/seed0": [
            r for s in STAGES for r in runner.read_metrics(stages[f"pretrain_{s}"].local_path)
        ]
    }
    runs = {
        f"vanilla_wsd/seed{i}": (fgwsd_plan.local_path / VANILLA_FILE, rcp.seed + i)
        for i in range(rcp.curriculum.ablation_seeds)
    }
    runs.update(
        {
            f"fgwsd/seed{i}": (fgwsd_plan.local_path / PLAN_FILE, rcp.seed + i)
            for i in range(1, rcp.curriculum.ablation_seeds)
        }
    )
    make_spec = functools.partial(
        runner.stage_spec,
        shards_dir=token_shards.local_path,
        tokenizer_dir=tokenizer.local_path,
        shape=shape,
        pretrain=rcp.pretrain,
    )
    with staged(vstore, context) as out:
        context.log.info(f"ablation: training {', '.join(runs)}")
        try:
            trained = runner.train_runs(
                runs, make_spec, work, out.path, launcher.launcher(rcp), _progress(context, 50)
            )
        except TrainingError as exc:
            raise dg.Failure(
                description=f"pretrain_ablation: {str(exc).splitlines()[0]}",
                metadata={"log_tail": dg.MetadataValue.text(str(exc)[-4000:])},
            ) from exc
        checkpoints.update(trained)
        curves.update({name: runner.run_curve(out.path / name, STAGES) for name in trained})
        losses = runner.compare_heldout(
            checkpoints,
            token_shards.local_path,
            shape,
            rope_theta=last["rope_theta"],
            seq_len=last["seq_len"],
        )
        table, summary = runner.ablation_table(losses)
        plot = runner.plot_ablation(summary, curves, out.path / "ablation.png")
        (out.path / "ablation.json").write_text(
            json.dumps({"losses": losses, "summary": summary}, indent=2)
        )
        (out.path / "ablation.md").write_text(table)
        version = commit(
            context,
            vstore,
            out,
            recipe=rcp,
            section=(*SECTIONS, "curriculum"),
            inputs=inputs,
            counts={"seeds": rcp.curriculum.ablation_seeds, "heldout_sets": summary["sets"]},
            metadata={
                "heldout_loss": dg.MetadataValue.md(table),
                "plot": dg.MetadataValue.md(plot),
                "mean_delta_nats": round(summary["mean_delta"], 4),
                "fgwsd_lower_on": f"{summary['fgwsd_better']}/{summary['sets']}",
            },
            extra={"summary": summary},
        )
    vstore.discard_workdir(work)
    return version


def _ablation_finite(version: Version, rcp: Recipe) -> tuple[bool, dict]:
    summary = version.manifest["extra"]["summary"]
    values = [v for b in summary["buckets"].values() for v in (b["fgwsd"], b["vanilla_wsd"])]
    ok = bool(values) and all(v == v and v < float("inf") for v in values)
    return ok, {"sets": summary["sets"], "all_finite": ok}


ASSETS = [*STAGE_ASSETS, base_model, pretrain_ablation]
CHECKS = [
    *[check for name in STAGES for check in stage_checks(name)],
    version_check(
        "base_model",
        name="logits_match_training_model",
        evaluate=_logits_match,
        description="transformers' logits on a fixed batch equal the training model's (1e-4).",
    ),
    version_check(
        "pretrain_ablation",
        name="heldout_losses_finite",
        evaluate=_ablation_finite,
        description="Both plans were scored on every held-out set with finite losses.",
    ),
]
