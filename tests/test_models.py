"""The one model loader: the dtype rule, the packaged GGUF judge and MiniLM, progress lines."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from nanbeige_data.models import (
    PACKAGED_MODEL,
    load_causal_lm,
    load_embedder,
    packaged_smollm2_gguf,
    resolve_dtype,
)
from nanbeige_data.report import Progress

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _native_bf16_cpu() -> bool:
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    native = any(getattr(torch.cpu, p, lambda: False)() for p in probes)
    return native and torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def test_explicit_dtype_wins_and_unknown_is_an_error():
    assert resolve_dtype("float32") == "float32"
    assert resolve_dtype("bfloat16") == "bfloat16"
    with pytest.raises(ValueError, match="'fp16'.*auto"):
        resolve_dtype("fp16")


def test_auto_is_bf16_only_where_native():
    want = "bfloat16" if torch.cuda.is_available() or _native_bf16_cpu() else "float32"
    assert resolve_dtype("auto") == resolve_dtype() == want


def test_auto_is_fp32_on_an_avx2_only_cpu():
    """torch's kernels limited to AVX2 (as on an AMD EPYC without AVX512-BF16): fp32."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "CUDA_VISIBLE_DEVICES": ""}
    code = "from nanbeige_data.models import resolve_dtype; print(resolve_dtype('auto'))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "float32"


def test_packaged_judge_loads_quietly_in_the_requested_dtype(capfd):
    assert packaged_smollm2_gguf().stat().st_size > 50_000_000
    model, tokenizer = load_causal_lm(PACKAGED_MODEL, dtype="float32")
    err = capfd.readouterr().err
    assert "de-quantizing" not in err and "%|" not in err  # no GGUF progress bar
    assert model.dtype == torch.float32 and not model.training
    assert tokenizer.decode(tokenizer.encode("7", add_special_tokens=False)) == "7"
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([tokenizer.encode("The sky is")])).logits
    assert logits.shape[-1] == model.config.vocab_size and torch.isfinite(logits).all()


def test_unknown_model_spec_is_named():
    with pytest.raises(ValueError, match="'no-such-model'"):
        load_causal_lm("no-such-model")


def test_embedder_runs_in_the_resolved_dtype_and_is_loaded_once():
    model = load_embedder("auto")
    assert model is load_embedder(resolve_dtype("auto"))
    assert next(model.parameters()).dtype == getattr(torch, resolve_dtype("auto"))
    fp32 = load_embedder("float32")
    assert next(fp32.parameters()).dtype == torch.float32
    vec = fp32.encode(["A sentence about rivers."], convert_to_tensor=True)
    assert vec.shape == (1, 384)


def test_progress_lines_are_throttled_and_end_with_the_total():
    lines: list[str] = []
    quiet = Progress(lines.append, "judge", 4, "documents", every_s=3600)
    for done in range(1, 5):
        quiet.update(done)
    quiet.finish()
    assert len(lines) == 1 and lines[0].startswith("judge: 4/4 documents, ")
    assert lines[0].endswith(" documents/s")

    lines.clear()
    chatty = Progress(lines.append, "embedding", 3, "rows", every_s=0)
    for _ in range(3):
        chatty.advance(1)
    chatty.finish()  # the last update already said 3/3: no repeat
    assert [line.split(",")[0] for line in lines] == [f"embedding: {i}/3 rows" for i in (1, 2, 3)]
    Progress(None, "silent", 1, "rows", every_s=0).finish()  # no callback: nothing to do
