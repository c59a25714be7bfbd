"""engram_core: a compact, faithful Engram language model (DeepSeek, arXiv 2601.07372).

Headless: torch, numpy, tokenizers and safetensors only. See ENGRAM notes in docs/.
"""

from .addresses import HeadAddress, RowAddress
from .checkpoint import DEFAULT_CHECKPOINT, Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .compression import Compression, build_compression
from .config import BackboneConfig, MemoryConfig, ModelConfig
from .hashing import HashSpec, hash_ids, suffix_ngrams
from .knockout import KnockOut
from .model import EngramLM

__all__ = [
    "DEFAULT_CHECKPOINT",
    "BackboneConfig",
    "Checkpoint",
    "CheckpointError",
    "Compression",
    "EngramLM",
    "HashSpec",
    "HeadAddress",
    "KnockOut",
    "MemoryConfig",
    "ModelConfig",
    "RowAddress",
    "build_compression",
    "hash_ids",
    "load_checkpoint",
    "save_checkpoint",
    "suffix_ngrams",
]
