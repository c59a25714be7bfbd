"""Meituan LongCat-Flash-Lite: hashed N-gram embeddings of raw token ids at the input layer.

The family's rules, as vLLM serves it (`vllm/model_executor/models/longcat_flash_ngram.py` and
the kernel `csrc/libtorch_stable/ngram_embedding_kernels.cu`; docs/addressing.md names the
commits):
- no tokenizer-side compression: the raw ids are hashed;
- orders 2..`emb_neighbor_num`, `emb_split_num` embedders (heads) each, order-major: embedder
  e = (order - 2) x split + head;
- embedder e has m + 2e + 1 rows, m = `ngram_vocab_size_ratio` x `vocab_size` (odd sizes, not
  primes), its rows `hidden_size / embedders` values wide;
- a polynomial hash in the vocabulary size: row = sum_k x_{t-k} (V^k mod size) mod size, over the
  N-gram's own tokens, the current one first;
- EOS is dead: an EOS position reads row 0 of every embedder, and no N-gram reaches back over
  an EOS or before the request's first token (a slot it cannot reach adds nothing, as a 0 would);
- each embedder is its own tensor, `model.ngram_embeddings.embedders.<e>.weight`; read as one
  table of the input layer (layer 0), embedder e starts at the sum of the sizes before it.

The model's own remote code is said to hash an EOS with the tokens before it (it ends a
segment rather than blocking); that code is in no public repository found, so only vLLM's rule
is offered (docs/addressing.md).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from ..compression import Compression
from ..hashing import HashSpec
from ..layout import LayoutError, MemoryLayout
from ._config import check_tokenizer, eos_token, positive_int

NAME = "longcat-flash-lite"
MODEL_TYPES = ("longcat_flash_ngram",)
LAYER = 0  # the input layer: the N-gram embeddings sit beside the token embedding
# the released config's N-gram keys (the rest of the model is not this tool's business)
CONFIG: dict[str, Any] = {
    "model_type": "longcat_flash_ngram",
    "vocab_size": 131_072,
    "hidden_size": 3072,
    "emb_neighbor_num": 4,  # orders 2-4
    "emb_split_num": 4,  # embedders per order: 12 in all, 256 values a row
    "ngram_vocab_size_ratio": 78,  # m = 78 x 131,072 = 10,223,616
    "eos_token_id": 2,
    "torch_dtype": "bfloat16",
}
TABLE = "model.ngram_embeddings.embedders.{}.weight"


class LongcatSpec(HashSpec):
    """The hash spec of LongCat's N-gram embedders: sizes m + 2e + 1, weights V^k mod size.

    `table_sizes` holds m once per order; `primes` (the name every spec uses for the table size of
    each head) are these odd sizes, and `multipliers[layer]` is (heads, max order): head e's weights.
    """

    @cached_property
    def primes(self) -> dict[int, tuple[int, ...]]:
        m = self.table_sizes[0]
        return {layer: tuple(m + 2 * e + 1 for e in range(self.heads_per_layer)) for layer in self.layer_ids}

    @cached_property
    def multipliers(self) -> dict[int, np.ndarray]:
        return {
            layer: np.array(
                [[pow(self.vocab_size, k, size) for k in range(self.max_ngram)] for size in sizes], np.int64
            )
            for layer, sizes in self.primes.items()
        }

    def head_mixes(self, slots, layer: int, orders=None):
        """(head index, sum of slot x weight): the sum is < 2^63 (checked in `layout`), reduced by the caller.

        The reference reduces every term before adding; the sum's remainder is the same number."""
        orders = self.orders if orders is None else tuple(orders)
        w = self.multipliers[layer]
        for n in orders:
            for h in range(self.heads_per_ngram):
                j = self.head_index(n, h)
                mix = slots[0] * w[j, 0]
                for k in range(1, n):
                    mix = mix + slots[k] * w[j, k]
                yield j, mix

    def plain_mix(self, slots, layer: int, index: int) -> np.ndarray:
        order, _ = self.head_address(index)
        w, size = self.multipliers[layer][index], self.primes[layer][index]
        return sum((slots[k] * w[k]) % size for k in range(order))


def layout(config: dict, tokenizer=None, name: str = NAME) -> MemoryLayout:
    """The layout of a LongCat N-gram config, every number cross-checked."""
    vocab, hidden = positive_int(config, "vocab_size"), positive_int(config, "hidden_size")
    neighbours, split = positive_int(config, "emb_neighbor_num"), positive_int(config, "emb_split_num")
    ratio = positive_int(config, "ngram_vocab_size_ratio")
    if neighbours < 2:
        raise LayoutError(f"config.json: emb_neighbor_num {neighbours} gives no N-gram of order 2 or more")
    heads = (neighbours - 1) * split
    if hidden % heads:
        raise LayoutError(f"config.json: hidden_size {hidden} does not split over {heads} N-gram embedders")
    eos = eos_token(config, vocab, lowest=1)  # the reference marks an EOS dead by negating it: 0 would stay 0
    m = ratio * vocab
    total = heads * (m + heads)  # the sum of m + 2e + 1 over the embedders
    if total >= 1 << 31 or neighbours * vocab * (m + 2 * heads) >= 1 << 63:
        raise LayoutError(f"config.json: N-gram tables of {total:,} rows overflow the reference's int32 ids")
    check_tokenizer(tokenizer, vocab)
    spec = LongcatSpec(
        vocab_size=vocab,
        table_sizes=(m,) * (neighbours - 1),
        max_ngram=neighbours,
        heads_per_ngram=split,
        layer_ids=(LAYER,),
        pad_id=0,  # an unreachable slot adds nothing: the same sum as a 0 there
    )
    dtype = config.get("torch_dtype", config.get("dtype"))
    return MemoryLayout(
        name,
        spec,
        Compression(table=np.arange(vocab, dtype=np.int64), size=vocab),  # raw ids are hashed
        tokenizer,
        hidden // heads,
        {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}.get(dtype, "bfloat16"),
        block_dead=False,
        has_backbone=False,
        dead_token=eos,
        table_per_head=True,
    )


def preset() -> MemoryLayout:
    """The released LongCat-Flash-Lite layout; its tokenizer is not on PyPI: give ids, or load the
    model's folder (config.json and tokenizer.json) for text."""
    return layout(CONFIG)
