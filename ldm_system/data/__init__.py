"""Data: packing images into WebDataset shards and streaming them back, exactly once per epoch.

Modules, in the order data flows through them:
  sources/                                  inputs: an image folder, builtin:fashion-mnist, builtin:photos
  pack.py                                   `pack()`: source -> shards + manifest.json
  buckets.py                                aspect-ratio buckets: the list, nearest bucket, cover + crop
  writer.py, manifest.py                    generic shard writing (sha256, counts) and the manifest
  encode.py                                 image shards -> latent shards (stage 1 autoencoder)
  stream.py                                 `make_loader()`: shards -> batches, resumable
  shardlist.py, partition.py                shard specs, the rank x worker split
  stream_worker.py                          one worker's deterministic stream of batches
  bucket_batcher.py                         one bucket per batch; what waits in buckets is state
  captions.py                               tag shuffling of comma-separated captions
  tario.py, decode.py, transforms.py        tar reading, sample decoding, image transforms
Importing this package imports none of them, so `import ldm_system.data` stays cheap.
"""
