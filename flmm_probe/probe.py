"""Exact word-to-patch attention at SDPA speed.

`AttentionProbe` switches the language model of a HuggingFace model to an attention function of ours,
registered with transformers' `AttentionInterface`. That function returns exactly what the model's own
implementation (SDPA, or eager where the model refuses SDPA) returns, so the logits do not change by a
bit, and for the few query rows the caller asks for (the phrase tokens) it also computes

    softmax(q k^T * scaling + mask)   over ALL keys, in float32 (as eager does its softmax),

keeps the asked-for key columns (the image tokens) and writes them into a preallocated buffer. The full
(T x T) attention matrix is never materialised, unlike eager + `output_attentions=True`.

    with AttentionProbe(model, query_positions, key_positions) as probe:   # LongTensors (batch, n)
        model(**inputs, use_cache=False)
    probe.weights   # float32 (batch, layer, head, query, key)
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

# One registered name per wrapped implementation: the mask function must match the attention function,
# since the model builds its mask from the name (boolean for SDPA, additive float for eager).
PROBE_SDPA = "flmm_probe"
PROBE_EAGER = "flmm_probe_eager"

# id(attention module) -> (probe, layer index). The registered function is global, so it finds the
# probe that owns a module through this table; modules of other models pass straight through.
_ACTIVE: dict[int, tuple[AttentionProbe, int]] = {}


# Layers whose score rows are computed together (fewer kernel launches on a GPU): at most QUEUE layers, and no
# more than QUEUE_BYTES of float32 keys and score rows, so that long sequences hold fewer layers at once. A CPU
# has no launches to save, and larger operands cost it time (2,880 image tokens: 1.09x SDPA in groups of 8,
# 1.05x one layer at a time, docs/benchmarks.md): there the probe computes QUEUE_CPU layers at a time.
QUEUE = 8
QUEUE_CPU = 1
QUEUE_BYTES = 256 * 2**20


class ProbeError(RuntimeError):
    """The probe cannot record this model or this call; the message says what to change."""


def _model_eager_function(module: nn.Module) -> Callable:
    """The `eager_attention_forward` defined in the module's own modeling file (softcapping included)."""
    function = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if function is None:
        raise ProbeError(f"{type(module).__name__} has no eager_attention_forward in its modeling file.")
    return function


def _probe_forward(base: str) -> Callable:
    """The attention function registered under the probe's name for `base` ("sdpa" or "eager")."""

    def forward(
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        implementation = sdpa_attention_forward if base == "sdpa" else _model_eager_function(module)
        output = implementation(module, query, key, value, attention_mask, **kwargs)
        owner = _ACTIVE.get(id(module))
        if owner is not None:
            probe, layer = owner
            probe._record(module, layer, query, key, attention_mask, **kwargs)
        return output

    forward.__name__ = f"flmm_probe_{base}_attention_forward"
    return forward


AttentionInterface.register(PROBE_SDPA, _probe_forward("sdpa"))
AttentionInterface.register(PROBE_EAGER, _probe_forward("eager"))
AttentionMaskInterface.register(PROBE_SDPA, sdpa_mask)
AttentionMaskInterface.register(PROBE_EAGER, eager_mask)


def text_config_key(model: PreTrainedModel) -> str | None:
    """The sub-config key of the language model (e.g. "text_config"), or None for a text-only model."""
    text_config = model.config.get_text_config()
    if text_config is model.config:
        return None
    for key in model.config.sub_configs:
        if getattr(model.config, key, None) is text_config:
            return key
    raise ProbeError(f"Cannot find the text sub-config of {type(model.config).__name__}.")


def decoder_attention_layers(model: PreTrainedModel) -> list[nn.Module]:
    """The self-attention modules of the text decoder, in layer order (vision towers excluded).

    They are the modules that carry a `layer_idx` and whose model config is the text config.
    """
    text_config = model.config.get_text_config()
    decoders = [m for m in model.modules() if isinstance(m, PreTrainedModel) and m.config is text_config]
    # The outermost module with the text config holds every decoder layer (a VLM's language_model,
    # or the causal LM itself for a text-only model).
    modules = decoders[0].modules() if decoders else model.modules()
    layers = {m.layer_idx: m for m in modules if hasattr(m, "layer_idx") and "Attention" in type(m).__name__}
    n_layers = text_config.num_hidden_layers
    if sorted(layers) != list(range(n_layers)):
        raise ProbeError(
            f"Expected {n_layers} text attention modules with layer_idx 0..{n_layers - 1}, found {sorted(layers)}."
        )
    return [layers[i] for i in range(n_layers)]


def _config_implementations(model: PreTrainedModel) -> dict[int, tuple[Any, str | None]]:
    """Snapshot of `_attn_implementation_internal` of every config the model holds, keyed by id."""
    configs = {id(m.config): m.config for m in model.modules() if isinstance(m, PreTrainedModel)}
    pending = list(configs.values())
    while pending:
        config = pending.pop()
        for key in config.sub_configs:
            sub = getattr(config, key, None)
            if sub is not None and id(sub) not in configs:
                configs[id(sub)] = sub
                pending.append(sub)
    return {i: (c, c._attn_implementation_internal) for i, c in configs.items()}


def _common_run(positions: torch.Tensor) -> slice | None:
    """slice(start, start + n) if every row of (batch, n) positions is that same run, else None.

    Image tokens usually form one run at the same place in every row; a slice then replaces a gather.
    """
    start = int(positions[0, 0])
    run = torch.arange(start, start + positions.shape[1], device=positions.device)
    return slice(start, start + positions.shape[1]) if bool((positions == run).all()) else None


@dataclass
class _Queued:
    """One layer's recorded query rows (batch, head, query, dim), its keys and the attention arguments."""

    layer: int
    rows: torch.Tensor
    key: torch.Tensor
    attention_mask: torch.Tensor | None
    module: nn.Module
    scaling: float | None
    softcap: float | None
    is_causal: bool | None

    def float32_bytes(self) -> int:
        """What this layer adds to a group's computation: its keys and its score rows, in float32."""
        return 4 * (self.key.numel() + self.rows[..., 0].numel() * self.key.shape[2])

    def joins(self, other: _Queued) -> bool:
        """Whether `other`, the next layer, can be computed with this one: same mask, arguments and shapes."""
        return (other.layer == self.layer + 1 and other.attention_mask is self.attention_mask
                and other.rows.shape == self.rows.shape and other.key.shape == self.key.shape
                and other.key.device == self.key.device and other.key.dtype == self.key.dtype
                and (other.scaling, other.softcap, other.is_causal) == (self.scaling, self.softcap, self.is_causal)
                and getattr(other.module, "is_causal", True) == getattr(self.module, "is_causal", True))


class AttentionProbe:
    """Record attention weights from chosen query positions to chosen key positions, every text layer.

    Args:
        model: a HuggingFace model (vision-language or text-only). It is not modified beyond the
            language model's attention implementation, which is restored on exit.
        query_positions: (batch, n_query) LongTensor of sequence positions whose attention rows to keep
            (pad ragged rows by repeating a valid position; the padded rows are ignored downstream).
        key_positions: (batch, n_key) LongTensor of sequence positions whose columns to keep.

    After a forward pass inside the context, `weights` holds float32 (batch, layer, head, query, key):
    softmax(q k^T * scaling + mask) over all keys, exactly as eager attention computes it;
    `key_norms` holds float32 (batch, layer, kv_head, key), the L2 norm of each recorded key (high-norm
    keys are attention sinks); `recorded` says which layers ran. Prefill only: call the model with `use_cache=False`.
    """

    def __init__(self, model: PreTrainedModel, query_positions: torch.Tensor, key_positions: torch.Tensor):
        if query_positions.ndim != 2 or key_positions.ndim != 2:
            raise ValueError("query_positions and key_positions must be LongTensors shaped (batch, n).")
        if query_positions.shape[0] != key_positions.shape[0]:
            raise ValueError(
                f"query_positions has batch {query_positions.shape[0]} but key_positions has {key_positions.shape[0]}."
            )
        self.model = model
        self.layers = decoder_attention_layers(model)
        text_config = model.config.get_text_config()
        device = next(model.parameters()).device
        self.query_positions = query_positions.to(device=device, dtype=torch.long)
        self.key_positions = key_positions.to(device=device, dtype=torch.long)
        batch, n_query = self.query_positions.shape
        n_heads = text_config.num_attention_heads
        n_key = key_positions.shape[1]
        self.weights = torch.zeros(batch, len(self.layers), n_heads, n_query, n_key, device=device)
        kv_heads = getattr(text_config, "num_key_value_heads", None) or n_heads
        self.key_norms = torch.zeros(batch, len(self.layers), kv_heads, n_key, device=device)
        self.recorded = torch.zeros(len(self.layers), dtype=torch.bool)
        self._key_slice = _common_run(self.key_positions)
        self._queue: list[_Queued] = []
        self._saved: dict[int, tuple[Any, str | None]] = {}

    def __enter__(self) -> AttentionProbe:
        # Checked first: inside a probe the model runs the probe's own implementation, which the check below would name.
        if any(id(m) in _ACTIVE for m in self.layers):
            raise ProbeError("This model already has an active AttentionProbe; nest probes on different models only.")
        current = self.model.config.get_text_config()._attn_implementation
        if current == "sdpa":
            name = PROBE_SDPA
        elif current == "eager":
            name = PROBE_EAGER
        else:
            raise ProbeError(
                f'The language model runs attn_implementation="{current}"; the probe wraps "sdpa" or "eager". '
                'Load the model with attn_implementation="sdpa" (or "eager" where SDPA is refused).'
            )
        self._saved = _config_implementations(self.model)
        key = text_config_key(self.model)
        self.model.set_attn_implementation(name if key is None else {key: name})
        for layer, module in enumerate(self.layers):
            _ACTIVE[id(module)] = (self, layer)
        return self

    def __exit__(self, *exc_info: object) -> None:
        # A pass that stopped early (an exception, or a model that skips its last layers) leaves layers queued.
        if exc_info[0] is None:
            self._flush()
        self._queue.clear()
        for module in self.layers:
            _ACTIVE.pop(id(module), None)
        # Restore every config's own attribute: exact, and silent (no re-validation of the old value).
        for config, implementation in self._saved.values():
            config._attn_implementation_internal = implementation

    @torch.no_grad()
    def _record(
        self,
        module: nn.Module,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        softcap: float | None = None,
        is_causal: bool | None = None,
        **_: Any,
    ) -> None:
        """Queue one layer's recorded query rows and keys; compute them with the layers queued before.

        query: (batch, head, T, dim); key: (batch, kv_head, S, dim); attention_mask: None, or
        (batch or 1, 1 or head, T, S) boolean (True = attend) or additive float.
        A GPU forward pass at LLaVA's 576 image tokens is bound by kernel launches, not arithmetic: a dozen
        small operations per layer made the probe 1.7x slower than SDPA on an H100. Queued layers that share
        a device, a mask and the attention arguments are computed together, a dozen operations per group
        (docs/benchmarks.md); QUEUE (QUEUE_CPU) and QUEUE_BYTES bound how many layers' keys are held at once.
        """
        batch, n_heads, q_len, dim = query.shape
        if q_len != key.shape[2]:
            raise ProbeError("AttentionProbe records the prefill pass only: call the model with use_cache=False.")
        if batch != self.weights.shape[0]:
            raise ProbeError(f"The probe was built for batch {self.weights.shape[0]} but the model ran batch {batch}.")
        # With device_map, layers live on different devices: work on this layer's, store on the probe's.
        rows = self.query_positions.to(query.device)[:, None, :, None].expand(batch, n_heads, -1, dim)
        entry = _Queued(layer, query.gather(2, rows), key, attention_mask, module, scaling, softcap, is_causal)
        if self._queue and not self._queue[-1].joins(entry):
            self._flush()
        self._queue.append(entry)
        queued_bytes = sum(e.float32_bytes() for e in self._queue)
        limit = QUEUE_CPU if query.device.type == "cpu" else QUEUE
        if len(self._queue) == limit or queued_bytes >= QUEUE_BYTES or layer == len(self.layers) - 1:
            self._flush()

    @torch.no_grad()
    def _flush(self) -> None:
        """Write softmax(q k^T * scaling + mask)[query rows, key columns] of the queued layers into `weights`."""
        if not self._queue:
            return
        queued, self._queue = self._queue, []
        first, last = queued[0], queued[-1].layer + 1
        q = torch.stack([e.rows for e in queued], 1).float()  # (batch, layer, head, query, dim)
        key = torch.stack([e.key for e in queued], 1).float()  # (batch, layer, kv_head, S, dim)
        batch, n_layers, n_heads, n_query, dim = q.shape
        kv_heads, kv_len = key.shape[2], key.shape[3]
        scaling = dim**-0.5 if first.scaling is None else first.scaling
        # GQA without repeating keys: query head h reads kv head h // group (as repeat_kv lays them out).
        q = q.reshape(batch, n_layers, kv_heads, n_heads // kv_heads * n_query, dim)
        scores = torch.matmul(q, key.transpose(-1, -2)).mul_(scaling)  # (batch, layer, kv_head, group*query, S)
        scores = scores.reshape(batch, n_layers, n_heads, n_query, kv_len)
        if first.softcap is not None:
            scores = torch.tanh(scores / first.softcap) * first.softcap
        query_positions = self.query_positions.to(q.device)
        mask = self._mask_rows(first.module, first.attention_mask, first.is_causal, kv_len, batch, query_positions)
        weights = torch.softmax(scores.add_(mask[:, None]), dim=-1)  # (batch, layer, head, query, S): all keys
        if self._key_slice is not None:
            kept, kept_keys = weights[..., self._key_slice], key[..., self._key_slice, :]
        else:
            key_positions = self.key_positions.to(q.device)
            kept = weights.gather(-1, key_positions[:, None, None, None, :].expand(batch, n_layers, n_heads, n_query, -1))
            kept_keys = key.gather(3, key_positions[:, None, None, :, None].expand(batch, n_layers, kv_heads, -1, dim))
        self.weights[:, first.layer:last] = kept.to(self.weights.device)
        self.key_norms[:, first.layer:last] = kept_keys.norm(dim=-1).to(self.key_norms.device)
        self.recorded[first.layer:last] = True

    @staticmethod
    def _mask_rows(
        module: nn.Module, attention_mask: torch.Tensor | None, is_causal: bool | None, q_len: int, batch: int,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """Additive float32 mask for the recorded rows (batch, query positions): (batch, 1 or head, query, S)."""
        if attention_mask is None:
            # SDPA got no mask and relies on its is_causal flag, decided as sdpa_attention_forward does.
            causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
            keys = torch.arange(q_len, device=rows.device)
            allowed = keys[None, None, None, :] <= rows[:, None, :, None] if causal and q_len > 1 else None
            if allowed is None:
                return torch.zeros(1, 1, 1, 1, device=rows.device)
            return torch.zeros(allowed.shape, device=rows.device).masked_fill_(~allowed, float("-inf"))
        mask_rows = attention_mask.expand(batch, -1, -1, -1).gather(
            2, rows[:, None, :, None].expand(batch, attention_mask.shape[1], -1, attention_mask.shape[-1])
        )
        if mask_rows.dtype == torch.bool:
            return torch.zeros(mask_rows.shape, device=rows.device).masked_fill_(~mask_rows, float("-inf"))
        return mask_rows.float()
