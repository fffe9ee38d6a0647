"""The pretraining model: a Llama-architecture decoder as a torchtitan model spec.

One place turns the recipe's ``model`` section (dim, layers, heads, GQA, FFN) plus the stage's
RoPE base and sequence length into torchtitan's ``Llama3Model.Config`` and ``ModelSpec``; the
model code, parallelisation (FSDP/TP via ``parallelize_llama``) and the Hugging Face state-dict
adapter are torchtitan's own. Changing RoPE theta between stages (ABF in the decay stage)
changes only the non-persistent RoPE cache, so a checkpoint loads across stages unchanged.

Attention is causal SDPA over packed sequences (documents separated by EOS, as in GPT-style
packing): it runs on CPU (FlexAttention has no CPU backward in torch 2.13) and is exactly what
a Hugging Face ``LlamaForCausalLM`` computes, so the exported model's logits can be checked
against the trained one. ``attention="flex"`` gives per-document block-causal masks on GPUs.
Q/K/V are separate projections (``fuse_qkv=False``) so the state dict maps one-to-one onto HF.
"""

from __future__ import annotations

from functools import partial

import torch.nn as nn

from nanbeige_data.config import PositiveInt
from nanbeige_data.pretraining.config import ModelConfig
from nanbeige_train import compat

CODE_VERSION = "1"


class ModelShape(ModelConfig):
    """The recipe's model section plus what the data decides (the tokenizer's vocabulary)."""

    vocab_size: PositiveInt
    tie_embeddings: bool = False

    @classmethod
    def from_recipe(cls, model_section: ModelConfig, vocab_size: int) -> ModelShape:
        return cls(**model_section.model_dump(), vocab_size=vocab_size)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def llama_config(shape: ModelShape, *, rope_theta: float, max_seq_len: int, attention="sdpa"):
    """torchtitan ``Llama3Model.Config`` for this shape (the Trainer builds it on meta)."""
    from torchtitan.models.common import (
        ComplexRoPE,
        Embedding,
        Linear,
        RMSNorm,
    )
    from torchtitan.models.common.attention import FlexAttention, ScaledDotProductAttention
    from torchtitan.models.common.config_utils import make_ffn_config, make_gqa_config
    from torchtitan.models.common.param_init import depth_scaled_std
    from torchtitan.models.llama3.model import Llama3Model, Llama3TransformerBlock

    linear_init = {"weight": partial(nn.init.trunc_normal_, std=0.02), "bias": nn.init.zeros_}
    norm = partial(RMSNorm.Config, normalized_shape=shape.dim, eps=shape.norm_eps)
    norm_init = {"weight": nn.init.ones_}
    inner = ScaledDotProductAttention.Config() if attention == "sdpa" else FlexAttention.Config()
    rope = ComplexRoPE.Config(dim=shape.head_dim, max_seq_len=max_seq_len, theta=rope_theta)

    def depth_init(layer: int) -> dict:
        std = depth_scaled_std(0.02, layer)
        return {"weight": partial(nn.init.trunc_normal_, std=std), "bias": nn.init.zeros_}

    layers = [
        Llama3TransformerBlock.Config(
            attention_norm=norm(param_init=norm_init),
            ffn_norm=norm(param_init=norm_init),
            attention=make_gqa_config(
                dim=shape.dim,
                n_heads=shape.n_heads,
                n_kv_heads=shape.n_kv_heads,
                wqkv_param_init=linear_init,
                wo_param_init=depth_init(layer),
                inner_attention=inner,
                fuse_qkv=False,
                rope=rope,
            ),
            feed_forward=make_ffn_config(
                dim=shape.dim,
                hidden_dim=shape.ffn_dim,
                w1_param_init=linear_init,
                w2w3_param_init=depth_init(layer),
            ),
        )
        for layer in range(shape.n_layers)
    ]
    out_std = shape.dim**-0.5
    return Llama3Model.Config(
        dim=shape.dim,
        vocab_size=shape.vocab_size,
        tok_embeddings=Embedding.Config(
            num_embeddings=shape.vocab_size,
            embedding_dim=shape.dim,
            param_init={"weight": partial(nn.init.normal_, std=1.0)},
        ),
        norm=norm(param_init=norm_init),
        lm_head=Linear.Config(
            in_features=shape.dim,
            out_features=shape.vocab_size,
            param_init={
                "weight": partial(
                    nn.init.trunc_normal_, std=out_std, a=-3 * out_std, b=3 * out_std
                ),
                "bias": nn.init.zeros_,
            },
        ),
        layers=layers,
        enable_weight_tying=shape.tie_embeddings,
    )


def model_spec(shape: ModelShape, *, rope_theta: float, max_seq_len: int, attention="sdpa"):
    """A torchtitan ``ModelSpec``: our config with torchtitan's parallelize fn and HF adapter."""
    from torchtitan.distributed.pipeline_parallel import pipeline_llm
    from torchtitan.models.llama3 import parallelize_llama
    from torchtitan.models.llama3.state_dict_adapter import Llama3StateDictAdapter
    from torchtitan.protocols.model_spec import ModelSpec

    return ModelSpec(
        name="llama3",
        flavor=f"nanbeige-d{shape.dim}-l{shape.n_layers}",
        model=llama_config(
            shape, rope_theta=rope_theta, max_seq_len=max_seq_len, attention=attention
        ),
        parallelize_fn=compat.gloo_parallelize(parallelize_llama),
        pipelining_fn=pipeline_llm,
        post_optimizer_build_fn=None,
        state_dict_adapter=Llama3StateDictAdapter,
    )
