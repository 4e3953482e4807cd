"""Caption augmentation at training time: tag shuffling for comma-separated captions.

Captions written as tags ("mychar, solo, red hair, smiling") carry no word order, so kohya-style
fine-tunes shuffle them each epoch: the text model then does not learn the order as content. The
first `keep` tags stay where they are, because users put the trigger word or the subject there.
The shuffle is drawn from the sample's own keyed RNG (seed, epoch, key), so it is the same on
every rank and worker and after a resume.
"""
from __future__ import annotations

from ldm_system.data.transforms import RandomLike

TAG_SEPARATOR = ","


def shuffle_tags(caption: str, keep: int, rng: RandomLike) -> str:
    """`caption` with its comma-separated tags after the first `keep` in a random order (Fisher-Yates
    over `rng.randint`). A caption without commas comes back unchanged."""
    if TAG_SEPARATOR not in caption:
        return caption
    tags = [t.strip() for t in caption.split(TAG_SEPARATOR)]
    tags = [t for t in tags if t]
    head, tail = tags[:keep], tags[keep:]
    for i in range(len(tail) - 1, 0, -1):
        j = rng.randint(0, i)
        tail[i], tail[j] = tail[j], tail[i]
    return ", ".join(head + tail)
