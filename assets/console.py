"""The console of `nanbeige run`: a line when an asset starts and when it ends, one per check.

    [ 3/35] quality_tags ...
      quality_tags: judged 128/512 documents, 9.8 docs/s
    quality_tags done in 41.2s
    check quality_tags:score_gate passed

Dagster's own console logger prints every framework event with run ids and timestamps, and on a
failure the whole framework traceback (often twice). This logger is the CLI's instead: at INFO it
prints the start and finish of every asset step with its wall time, every ``context.log`` line an
asset writes (that is how a long step shows its progress), each check's result, and a failure's
description once -- the exception's own message, without the framework's stack. At DEBUG it
prints every record Dagster emits, tracebacks included. The UI is unaffected: it reads the run's
events from the instance, not from loggers.

Dagster's beta / preview API warnings (``data_version=`` on an Output, ``AssetSelection`` string
parsing) are silenced by category with :func:`quiet_framework_warnings`; other warnings stay.
"""

from __future__ import annotations

import logging
import sys
import warnings
from typing import IO, Any

import dagster as dg

LOGGER = "console"  # the run config key: {"loggers": {"console": {"config": {...}}}}
# errors whose message names what and where (bad input, a bad recipe, a store fault)
CLEAR_ERRORS = frozenset({"Failure", "CorpusError", "RecipeError", "StoreError"})
RUN_FAILURES = ("RESOURCE_INIT_FAILURE", "PIPELINE_FAILURE")  # failures outside any step
# runs whose failure was already explained: Dagster logs the run's failure through a logger of
# its own, after the steps', so this cannot live on one handler
_EXPLAINED: set[str] = set()


def quiet_framework_warnings() -> None:
    """Ignore Dagster's BetaWarning and PreviewWarning (API-stability notices for this project's
    maintainers, not for the person running it); every other warning is left alone."""
    for category in (dg.BetaWarning, dg.PreviewWarning):
        warnings.filterwarnings("ignore", category=category)


def run_config(log_level: str, assets: list[str]) -> dict:
    """The run config that selects this console for a run of ``assets`` (their step keys)."""
    return {"loggers": {LOGGER: {"config": {"log_level": log_level, "assets": assets}}}}


class ConsoleHandler(logging.Handler):
    """Renders Dagster's log records as the few lines a person follows (see the module doc)."""

    def __init__(self, assets: list[str], verbose: bool, stream: IO[str] | None = None):
        super().__init__(logging.DEBUG)  # Dagster logs its events at DEBUG: all must arrive
        self.assets, self.verbose = list(assets), verbose
        self.stream = stream or sys.stdout
        self.started = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.render(record)
        except Exception as exc:  # a console must never fail a run, nor print a page
            line = f"(console: cannot show a log record: {type(exc).__name__}: {exc})"
        if line:
            self.stream.write(line + "\n")
            self.stream.flush()

    def render(self, record: logging.LogRecord) -> str | None:
        meta: dict[str, Any] = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        step = meta.get("step_key") or ""
        if event is None:
            return self._message(record, meta, step)
        line = self._event(event, step, meta.get("run_id") or "")
        if self.verbose:  # everything Dagster says, its tracebacks included
            text = f"{record.levelname:<7} {record.getMessage()}"
            return f"{line}\n{text}" if line else text
        return line

    def _message(self, record: logging.LogRecord, meta: dict, step: str) -> str | None:
        text = str(meta.get("orig_message", record.getMessage()))
        if self.verbose:
            return f"{record.levelname:<7} {step or '-'}: {text}"
        if record.levelno < logging.INFO or (not step and record.levelno < logging.WARNING):
            return None  # run-level chatter (resource setup, engine notices)
        if text.startswith("Dependencies for step"):
            return None  # "... failed. Not executing.": the summary lists what did not run
        mark = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        return f"  {step or 'run'}: {mark}{text}"

    def _event(self, event: Any, step: str, run_id: str) -> str | None:
        kind = event.event_type_value
        data = event.event_specific_data
        if kind == "STEP_START" and step in self.assets:
            self.started += 1
            width = len(str(len(self.assets)))
            return f"[{self.started:>{width}}/{len(self.assets)}] {step} ..."
        if kind == "STEP_SUCCESS" and step in self.assets:
            return f"{step} done in {data.duration_ms / 1000:.1f}s"
        if kind == "ASSET_CHECK_EVALUATION":
            return check_line(data)
        if kind == "STEP_FAILURE":
            _EXPLAINED.add(run_id)  # the run's own failure event repeats it
            return failure_line(step, data)
        if kind in RUN_FAILURES and getattr(data, "error", None) is not None:
            if run_id in _EXPLAINED:
                return None  # the run failure repeats a step's or a resource's error
            _EXPLAINED.add(run_id)
            return f"run FAILED: {failure_text(step, data)}"
        return None


def check_line(evaluation: Any) -> str:
    """``check raw_web:corpus_schema_gate passed`` or ``... FAILED: what failed``."""
    name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
    if evaluation.passed:
        return f"check {name} passed"
    return f"check {name} FAILED" + (
        f": {evaluation.description}" if evaluation.description else ""
    )


def failure_line(step: str, data: Any) -> str | None:
    """A failed step's one line: its Failure's description, or the root exception's message.
    A check step that failed because its (already printed) check failed says nothing more."""
    error = data.error
    if error is not None and error.cls_name == "DagsterAssetCheckFailedError":
        return None
    return f"{step} FAILED: {failure_text(step, data)}"


def failure_text(step: str | None, data: Any) -> str:
    """What went wrong in a failed step (or resource), without the framework's stack: a
    Failure's description, an input error's message, else the root exception and a hint."""
    user = getattr(data, "user_failure_data", None)
    if user is not None and user.description:
        return user.description.removeprefix(f"{step}: ")
    error = getattr(data, "error", None)
    while error is not None and error.cause is not None and error.cls_name.startswith("Dagster"):
        error = error.cause  # Dagster wraps the asset's exception: show the asset's own
    if error is None:
        return "failed (no error recorded)"
    message = error.message.strip()
    if error.cls_name in CLEAR_ERRORS:  # their message already says what and where
        return message.split(f"{error.cls_name}: ", 1)[-1]
    return f"{message} (--log-level DEBUG shows the traceback)"


@dg.logger(
    config_schema={
        "log_level": dg.Field(str, default_value="INFO", is_required=False),
        "assets": dg.Field([str], default_value=[], is_required=False),
    },
    description="nanbeige run's console: start/finish lines per asset, check results, asset "
    "log lines; every record at DEBUG.",
)
def console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    config = init_context.logger_config
    level = logging.getLevelName(str(config["log_level"]).upper())
    verbose = isinstance(level, int) and level <= logging.DEBUG
    logger = logging.Logger("nanbeige.console", level=logging.DEBUG)
    logger.addHandler(ConsoleHandler(config["assets"], verbose))
    return logger
