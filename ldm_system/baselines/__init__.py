"""Baselines on the LDM's pipeline: a GAN, a Glow-style normalizing flow and an autoregressive model.

Each family is one task of the one engine (`ldm_system/train`), reads the same shards, writes the
same checkpoints, and is evaluated by the same code (`ldm report`, through `eval/protocols.py`).
See `common.py` for the shared model folder.
"""
