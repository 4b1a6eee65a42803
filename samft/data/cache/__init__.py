"""An on-disk cache of image embeddings from a frozen image encoder.

With the encoder frozen, its output for an image never changes during training, and it is
by far the most expensive part of a step (vit_b: ~16 s per 1024 px image on a 2-core CPU).
`python -m samft cache` computes each embedding once (`writer.build_cache`); the
datamodule then serves them (`SamDataModule(embedding_cache=...)`).

Layout of a cache directory:

    manifest.json              what the embeddings depend on (`CacheKey`), one entry per
                               (image file, orientation), and `complete`, true only once
                               every entry is written (the manifest is replaced atomically)
    shard-00000.safetensors    fp16 embeddings, read memory-mapped: SAM's `C x S/16 x S/16`
                               (2 MiB per image at S = 1024), or SAM 2's three levels as
                               three tensors (`C x S/16`², `C/8 x S/4`², `C/4 x S/8`²: 8 MiB
                               per image at S = 1024, C = 256; the two high-resolution
                               levels after the decoder's `conv_s0` / `conv_s1`, which a
                               frozen encoder freezes with it)

An entry is keyed on the image file's absolute path and its orientation (`none`, `h`, `v`,
`hv`: the flips a sample may show); it records the file's size and modification time, so an
edited image is noticed. A cache built for another encoder (sha256 of its weights), input
size, pixel mean/std or format version, a cache missing entries, or one whose build was
interrupted is refused with an error that says which; it is never used silently.
"""

from samft.data.cache.eligibility import flip_probabilities, orientations_for, why_not_cached
from samft.data.cache.key import CacheError, CacheKey, cache_key
from samft.data.cache.reader import EmbeddingCache
from samft.data.cache.writer import CacheJob, build_cache

__all__ = [
    "CacheError",
    "CacheJob",
    "CacheKey",
    "EmbeddingCache",
    "build_cache",
    "cache_key",
    "flip_probabilities",
    "orientations_for",
    "why_not_cached",
]
