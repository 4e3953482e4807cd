"""What `ldm data pack` reads: image sources.

  base.py            the `Source` protocol the packer reads, `Item`, `SkipItem`
  folder.py          an image folder (classes from subfolders, captions from .txt files)
  fashion_mnist.py   builtin:fashion-mnist (the IDX files of the Debian package)
  photos.py          builtin:photos (random crops of scikit-image's sample photos)
  registry.py        `open_source(SRC)`: a folder path or `builtin:NAME[:SPLIT]` → a Source
"""
