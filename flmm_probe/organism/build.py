"""Builders for the organism: a word-level fast tokenizer, a LlavaProcessor and tiny LLaVA / SAM models.

Everything here is a real upstream class (``transformers`` LLaVA + CLIP + Llama, ``segment_anything``
Sam) with a tiny config; only the sizes are ours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from flmm_probe.data.shapes import IMAGE_SIZE, vocabulary

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "<image>")
CHAT_WORDS = ("USER", "ASSISTANT", ":")
# user turn = "<image>\n" + instruction; the generation prompt ends where the answer begins.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<image>\\n' }}{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{{ c['text'] }}{% endfor %}{% endif %}{{ '</s>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT: ' }}{% endif %}"
)
# CLIP's own normalisation constants.
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class OrganismConfig:
    """Sizes of one organism LMM variant; ``patch`` sets the vision grid ((IMAGE_SIZE / patch) ** 2 tokens)."""

    patch: int = 8
    vision_width: int = 128
    vision_layers: int = 3
    vision_heads: int = 4
    text_width: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 4
    text_mlp: int = 384


VARIANTS: dict[str, OrganismConfig] = {
    # 10x10 grid of 8-pixel patches, a 4-layer language model
    "small": OrganismConfig(),
    # 5x5 grid of 16-pixel patches (a coarser vision backbone), a 6-layer language model with GQA
    "coarse": OrganismConfig(patch=16, text_layers=6, text_heads=8, text_kv_heads=2, text_width=128),
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over the shapes world's words; whitespace/punctuation pre-tokenizer."""
    vocab = {t: i for i, t in enumerate(list(SPECIAL_TOKENS) + list(CHAT_WORDS) + vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="left",
    )
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(patch: int) -> LlavaProcessor:
    """A LlavaProcessor that sees the whole IMAGE_SIZE image and expands <image> to one token per patch."""
    image_processor = CLIPImageProcessor(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_center_crop=False,
        do_resize=True,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(),
        patch_size=patch,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )


def build_lmm(cfg: OrganismConfig, tokenizer: PreTrainedTokenizerFast) -> LlavaForConditionalGeneration:
    """A randomly initialised tiny LLaVA (CLIP vision tower + Llama) for the shapes world."""
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_width,
        intermediate_size=4 * cfg.vision_width,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=IMAGE_SIZE,
        patch_size=cfg.patch,
        projection_dim=cfg.vision_width,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_width,
        intermediate_size=cfg.text_mlp,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    n_patches = (IMAGE_SIZE // cfg.patch) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        image_seq_length=n_patches,
        tie_word_embeddings=True,
    )
    config.organism = asdict(cfg)
    return LlavaForConditionalGeneration(config)


@dataclass
class SamConfig:
    """Sizes of the organism SAM; the image encoder sees the IMAGE_SIZE image on a (IMAGE_SIZE/patch)^2 grid."""

    img_size: int = IMAGE_SIZE
    patch: int = 4
    encoder_width: int = 64
    encoder_depth: int = 3
    encoder_heads: int = 4
    prompt_dim: int = 64
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp: int = 256
    # As SAM's ViT: attention within windows (here 10x10 patches, a quarter of the grid) in the first blocks
    # and over the whole grid in the last; window 0 attends globally in every block. A windowed training step
    # takes 0.84x the time of a global one (benchmarks/organism_sam_step.py).
    window: int = 10
    global_layers: tuple[int, ...] = (2,)


def build_sam(cfg: SamConfig) -> Sam:
    """segment_anything's own Sam with tiny parts; pixel statistics are SAM's defaults (0-255 RGB)."""
    grid = cfg.img_size // cfg.patch
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=cfg.img_size,
            patch_size=cfg.patch,
            embed_dim=cfg.encoder_width,
            depth=cfg.encoder_depth,
            num_heads=cfg.encoder_heads,
            mlp_ratio=4.0,
            out_chans=cfg.prompt_dim,
            qkv_bias=True,
            use_rel_pos=True,
            window_size=cfg.window,
            global_attn_indexes=tuple(cfg.global_layers),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg.prompt_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(cfg.img_size, cfg.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=cfg.decoder_depth, embedding_dim=cfg.prompt_dim, mlp_dim=cfg.decoder_mlp, num_heads=cfg.decoder_heads
            ),
            transformer_dim=cfg.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=cfg.prompt_dim,
        ),
    )
