"""Offline builder: raw videos -> object cubes + teacher targets -> TFDS/TFRecord shards."""
