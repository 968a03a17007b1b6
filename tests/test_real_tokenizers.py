"""Every family with its checkpoint's tokenizer pipeline and chat-template layout: phrases land on exactly their
tokens, and the answer is tokenized as the model writes it after the template's generation prompt.

The tokenizers are trained here on a small corpus with the real pipelines (tiny.real_tokenizer); the templates
keep each checkpoint's turn layout and the exact end of its generation prompt (from the model cards), with the
image placeholder the tiny processor expands.
"""

import pytest

import flmm_probe.backbones  # noqa: F401  (registers the adapters)
from flmm_probe import load_backbone

from checks import check_backbone_against_eager
from test_apps_families import BUILDERS
from tiny import LLAVA15_TEMPLATE, image, pipeline

# family -> (pipeline of its checkpoints' tokenizer, chat template with the checkpoint's layout; None: no template)
REAL = {
    "llava": ("metaspace", LLAVA15_TEMPLATE),  # llava-1.5 (Vicuna): "USER: <image>\n... ASSISTANT:"
    "llava_next": ("metaspace",  # llava-v1.6-mistral: "[INST] <image>\n... [/INST]"
                   "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {% for c in m['content'] %}{% if c['type'] == "
                   "'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %} [/INST]{% endif %}{% endfor %}"),
    "llava_onevision": ("byte_level",  # Qwen2 ChatML
                        "{% for m in messages %}<|im_start|>{{ m['role'] }} {% for c in m['content'] %}{% if c['type'] == "
                        "'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>{% endfor %}"
                        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "deepseek_vl": ("byte_level",  # deepseek-vl-chat: "...\n\nUser: <image>...\n\nAssistant:"
                    "You are a helpful language and vision assistant.\n\n{% for m in messages %}User: {% for c in m['content'] %}"
                    "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n\n{% endfor %}"
                    "{% if add_generation_prompt %}Assistant:{% endif %}"),
    "qwen2_vl": ("byte_level", None), "qwen2_5_vl": ("byte_level", None), "qwen3_vl": ("byte_level", None),  # ChatML as built
    "internvl": ("byte_level",  # InternVL3 (Qwen2.5): ChatML
                 "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}"
                 "<IMG_CONTEXT>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "gemma3": ("gemma", None),  # "<start_of_turn>model\n" as built
    "idefics3": ("byte_level",  # Idefics3 (Llama 3) and SmolVLM: "User:<image>...<end_of_utterance>\nAssistant:"
                 "{% for m in messages %}User:{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}"
                 "{{ c['text'] }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
                 "{% if add_generation_prompt %}Assistant:{% endif %}"),
    "paligemma": ("gemma", None),  # no chat template: the prefix, then "\n"
}
REAL["smolvlm"] = REAL["idefics3"]
TEXT = "A boy's 2 dogs and the well-known cat  sat naïve, the cat"
# Leading word, apostrophe, digit, hyphen, a word inside a phrase, surrounding whitespace, unicode, a repeated word.
PHRASES = ["A boy's", "2 dogs", "well-known cat", " sat ", "naïve", (len(TEXT) - 7, len(TEXT))]


def test_every_family_has_a_real_pipeline():
    assert set(REAL) == set(BUILDERS)


@pytest.mark.parametrize("family", sorted(REAL))
def test_phrases_land_on_their_tokens_and_the_answer_is_what_the_model_writes(family):
    name, template = REAL[family]
    with pipeline(name):
        model, processor = BUILDERS[family]()
    if template is not None:
        processor.chat_template = template
    backbone = load_backbone(model, processor)
    tokenizer = processor.tokenizer
    prep = backbone.prepare([image(48, 64, seed=2)], [TEXT], [PHRASES])
    ids = prep.inputs["input_ids"][0].tolist()
    # The answer's ids are those the model writes after its generation prompt: the prompt's own tokens are a
    # prefix of prompt + answer (no piece spans the join), and what follows them is in the processed prompt.
    prompt, answer_prompt = backbone.prompt(), backbone.answer_prompt()
    alone = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    whole = tokenizer(answer_prompt + TEXT, add_special_tokens=False)["input_ids"]
    assert whole[: len(alone)] == alone, "the generation prompt's tokens end where the answer starts"
    written = whole[len(alone):]
    assert any(ids[k : k + len(written)] == written for k in range(len(ids))), "the processed prompt holds them"
    # Each phrase's tokens decode to the phrase, no more and no less (surrounding whitespace left out).
    spans = [(TEXT.index(p.strip()), TEXT.index(p.strip()) + len(p.strip())) if isinstance(p, str) else p for p in PHRASES]
    for (start, stop), tokens in zip(spans, prep.tokens[0]):
        assert tokenizer.decode([ids[t] for t in tokens]).strip() == TEXT[start:stop], (family, TEXT[start:stop])
    assert prep.tokens[0][-1].min() > prep.tokens[0][2].max(), "the repeated 'the cat' is its second occurrence"
    check_backbone_against_eager(backbone, [(image(48, 64, seed=2), TEXT, PHRASES[:3])])
