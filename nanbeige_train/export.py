"""Export a torchtitan DCP checkpoint to a Hugging Face Llama model directory, and check it.

The model weights are read from the DCP checkpoint into the training model (torchtitan's own
``Llama3Model`` built from the same config), mapped to HF names and Q/K layouts by torchtitan's
``Llama3StateDictAdapter``, and written as ``model.safetensors`` with a ``config.json``
(``LlamaForCausalLM``, RoPE theta of the last stage), ``generation_config.json`` and the
tokenizer files. ``transformers`` loads the directory with ``AutoModelForCausalLM``.

:func:`compare_logits` runs one fixed batch through both the training model and the exported
HF model and returns the largest absolute logit difference (the ``base_model`` check asks for
<= 1e-4 in fp32). Optimizer state is not exported. ``export_version`` and ``check_export`` are
what the ``base_model`` asset and its check call.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nanbeige_data.pretraining.config import ModelConfig
from nanbeige_data.pretraining.tokenizer import (
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
)
from nanbeige_data.report import Report
from nanbeige_data.store.versioned import Version
from nanbeige_train import compat
from nanbeige_train.model import ModelShape, llama_config
from nanbeige_train.pretrain.stage import CHECKPOINT_DIR, model_shape

CODE_VERSION = "1"
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE)
LOGIT_TOLERANCE = 1e-4  # fp32 on both sides: only summation order differs


@dataclass
class ExportStats:
    parameters: int
    bytes: int
    seconds: float
    rope_theta: float
    max_seq_len: int

    def as_dict(self) -> dict:
        return asdict(self)


def export_version(final: Version, tokenizer: Version, model: ModelConfig, out_dir: Path) -> Report:
    """The ``base_model`` version: the last pretraining stage's checkpoint (``final``, a
    ``pretrain_<stage>`` version) as a Hugging Face directory with ``tokenizer``'s files."""
    stage = final.manifest["extra"]["stage"]
    shape = model_shape(model, tokenizer)
    stats = export_hf(
        final.local_path / CHECKPOINT_DIR,
        shape,
        rope_theta=stage["rope_theta"],
        max_seq_len=stage["seq_len"],
        tokenizer_dir=tokenizer.local_path,
        out_dir=out_dir,
    )
    return Report(
        counts={"parameters": stats.parameters, "bytes": stats.bytes},
        values={"rope_theta": stats.rope_theta, "max_seq_len": stats.max_seq_len},
        extra={
            "export": stats.as_dict(),
            "checkpoint": str(final.local_path / CHECKPOINT_DIR),
            "shape": shape.model_dump(),
        },
    )


def check_export(version: Version) -> tuple[bool, dict]:
    """The ``base_model`` gate: transformers' logits on a fixed batch equal the training
    model's (the checkpoint the version was exported from) within ``LOGIT_TOLERANCE``."""
    extra = version.manifest["extra"]
    shape = ModelShape(**extra["shape"])
    model = load_training_model(
        extra["checkpoint"],
        shape,
        rope_theta=extra["export"]["rope_theta"],
        max_seq_len=extra["export"]["max_seq_len"],
    )
    batch = fixed_batch(shape.vocab_size, seq_len=min(64, extra["export"]["max_seq_len"]))
    diff = compare_logits(model, version.local_path, batch)
    return diff <= LOGIT_TOLERANCE, {"max_abs_logit_diff": diff, "tolerance": LOGIT_TOLERANCE}


def load_training_model(
    checkpoint: Path, shape: ModelShape, *, rope_theta: float, max_seq_len: int
) -> torch.nn.Module:
    """The torchtitan model with the checkpoint's weights, on CPU, in eval mode."""
    import torch.distributed.checkpoint as dcp

    compat.isolate_imports(hide_tensorflow=False)
    config = llama_config(shape, rope_theta=rope_theta, max_seq_len=max_seq_len)
    with torch.device("meta"):
        model = config.build()
    model.to_empty(device="cpu")
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cpu"))  # RoPE cache; weights are loaded
    state = {k: v for k, v in model.state_dict().items()}
    missing = _checkpoint_keys(checkpoint)
    absent = sorted(set(state) - missing)
    if absent:
        raise KeyError(f"{checkpoint} lacks model weights {absent[:5]}")
    dcp.load(state, checkpoint_id=str(checkpoint))
    model.load_state_dict(state)
    return model.eval()


def _checkpoint_keys(checkpoint: Path) -> set[str]:
    from torch.distributed.checkpoint import FileSystemReader

    if not (Path(checkpoint) / ".metadata").exists():
        raise FileNotFoundError(f"{checkpoint} is not a DCP checkpoint (no .metadata)")
    return set(FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata)


def hf_config(shape: ModelShape, *, rope_theta: float, max_seq_len: int, eos_id: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": shape.dim,
        "intermediate_size": shape.ffn_dim,
        "num_hidden_layers": shape.n_layers,
        "num_attention_heads": shape.n_heads,
        "num_key_value_heads": shape.n_kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": max_seq_len,
        "rms_norm_eps": shape.norm_eps,
        "rope_theta": rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": rope_theta},
        "vocab_size": shape.vocab_size,
        "tie_word_embeddings": shape.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "pad_token_id": eos_id,
        "torch_dtype": "float32",
    }


def export_hf(
    checkpoint: Path,
    shape: ModelShape,
    *,
    rope_theta: float,
    max_seq_len: int,
    tokenizer_dir: Path,
    out_dir: Path,
) -> ExportStats:
    """Write ``out_dir`` as a Hugging Face Llama model directory from a DCP checkpoint."""
    from safetensors.torch import save_file
    from torchtitan.models.llama3.state_dict_adapter import Llama3StateDictAdapter

    started = time.monotonic()
    model = load_training_model(checkpoint, shape, rope_theta=rope_theta, max_seq_len=max_seq_len)
    adapter = Llama3StateDictAdapter(model_config_for(shape, rope_theta, max_seq_len), None)
    hf_state = {
        k: v.detach().contiguous().clone() for k, v in adapter.to_hf(model.state_dict()).items()
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(hf_state, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    eos_id = _eos_id(Path(tokenizer_dir))
    config = hf_config(shape, rope_theta=rope_theta, max_seq_len=max_seq_len, eos_id=eos_id)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2))
    (out_dir / "generation_config.json").write_text(
        json.dumps({"eos_token_id": eos_id, "pad_token_id": eos_id}, indent=2)
    )
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).exists():
            shutil.copy2(Path(tokenizer_dir) / name, out_dir / name)
    return ExportStats(
        parameters=sum(v.numel() for v in hf_state.values()),
        bytes=(out_dir / "model.safetensors").stat().st_size,
        seconds=time.monotonic() - started,
        rope_theta=rope_theta,
        max_seq_len=max_seq_len,
    )


def model_config_for(shape: ModelShape, rope_theta: float, max_seq_len: int):
    return llama_config(shape, rope_theta=rope_theta, max_seq_len=max_seq_len)


def _eos_id(tokenizer_dir: Path) -> int:
    from tokenizers import Tokenizer

    config = json.loads((tokenizer_dir / TOKENIZER_CONFIG_FILE).read_text())
    eos = config.get("eos_token") or "<|endoftext|>"
    eos = eos["content"] if isinstance(eos, dict) else eos
    token_id = Tokenizer.from_file(str(tokenizer_dir / TOKENIZER_FILE)).token_to_id(eos)
    if token_id is None:
        raise KeyError(f"{tokenizer_dir}: eos token {eos!r} is not in the vocabulary")
    return token_id


def fixed_batch(vocab_size: int, *, batch: int = 2, seq_len: int = 64, seed: int = 0):
    """A reproducible batch of token ids for logit comparisons."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, seq_len), generator=generator)


@torch.no_grad()
def compare_logits(training_model: torch.nn.Module, hf_dir: Path, tokens: torch.Tensor) -> float:
    """Largest |logit difference| between the training model and the exported HF model."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    ours = training_model(tokens).float()
    theirs = hf(tokens).logits.float()
    if ours.shape != theirs.shape:
        raise ValueError(f"logit shapes differ: training {ours.shape}, exported {theirs.shape}")
    return float((ours - theirs).abs().max())
