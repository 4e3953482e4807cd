"""The data section of a config file: how to pack a dataset and how to stream it.

`configs/data/*.yaml` hold one `DataConfig` each: a `pack` mapping (the options of `ldm data pack`)
and a `stream` mapping (the loader's options); keys are the dataclass field names.
"""
from __future__ import annotations

from dataclasses import dataclass

from ldm_system.data.pack import PackConfig
from ldm_system.data.stream import StreamConfig


@dataclass(frozen=True)
class DataConfig:
    pack: PackConfig
    stream: StreamConfig
