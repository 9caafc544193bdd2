"""TensorBoard scalars without TensorFlow: the trainer's and evaluator's metric
writer.

``train/trainer.py`` writes ``train/<name>`` and ``evaluator.py`` writes
``eval/<name>`` scalars into the workdir (one run in TensorBoard). Both used
clu's ``metric_writers``, but clu imports TensorFlow (its summary writer is
``tf.summary``), and the accelerator images we target ship ``tensorboard``
(with protobuf, absl, etils, numpy) but neither TensorFlow nor clu.
tensorboardX would work but is one more dependency; ``tensorboard`` is
already required and present. So this module writes the event files with
tensorboard's own pieces, none of which import TensorFlow:

* ``tensorboard.compat.proto`` ``Event``/``Summary`` protos;
* ``tensorboard.plugins.scalar.metadata`` and ``tensorboard.util.tensor_util``,
  so each value is what ``tf.summary.scalar`` (hence clu) wrote: a float32
  scalar tensor tagged for the scalars plugin;
* ``tensorboard.summary.writer.record_writer.RecordWriter``, the TFRecord
  framing (length, masked CRC32C) that tensorboard's ``EventFileWriter`` uses.

It does not use ``EventFileWriter`` itself: that opens its file through
``tensorboard.compat.tf``, which imports TensorFlow whenever it is installed
(and a stub otherwise), so the writer would behave differently with and
without TensorFlow. Here the file is opened with ``etils.epath`` like every
other output of the project (local paths, and ``gs://`` through TensorFlow or
fsspec/gcsfs, whichever epath finds), and never needs TensorFlow.

Semantics kept from clu's ``create_default_writer(workdir, just_logging=...)``:
every ``write_scalars`` call is logged at INFO (``[step] k=v, ...``) on every
process; only the writer built with ``just_logging=False`` (process 0) also
creates the workdir and an ``events.out.tfevents.*`` file in it, so the other
processes write nothing. Events are buffered and flushed every ``flush_secs``
(120 s, tf.summary's default), on ``flush()`` and on ``close()``.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from typing import Mapping, Optional

from absl import logging
from etils import epath
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.summary.writer import record_writer
from tensorboard.util import tensor_util

_FILE_IDS = itertools.count()  # two writers in one process, same second


class SummaryWriter:
  """Scalars to the INFO log and (unless ``just_logging``) to an event file.

  Use ``write_scalars(step, {tag: value})``, then ``flush()`` or ``close()``
  (``close`` flushes; it is idempotent, and the writer is a context manager).
  """

  def __init__(self, logdir: Optional[epath.PathLike], *,
               just_logging: bool = False, flush_secs: float = 120.0):
    self._flush_secs = float(flush_secs)
    self._records = None
    self._path = None
    self._closed = False
    self._last_flush = time.monotonic()
    if just_logging or logdir is None:
      return
    logdir = epath.Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    self._path = logdir / ("events.out.tfevents.%010d.%s.%d.%d.v2" % (
        time.time(), socket.gethostname(), os.getpid(), next(_FILE_IDS)))
    self._records = record_writer.RecordWriter(self._path.open("wb"))
    self._add(event_pb2.Event(
        wall_time=time.time(), file_version="brain.Event:2",
        source_metadata=event_pb2.SourceMetadata(writer=__name__)))
    self.flush()

  @property
  def path(self) -> Optional[epath.Path]:
    """The event file, or None when this writer only logs."""
    return self._path

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """One event at ``step`` holding every ``tag: value`` (numeric 0-d)."""
    if self._closed:
      raise ValueError("write_scalars on a closed SummaryWriter")
    values = {}
    for tag, value in scalars.items():
      arr = np.asarray(value)
      if arr.shape != () or arr.dtype.kind not in "biuf":
        raise ValueError(f"scalar {tag!r}: expected a real number, got "
                         f"{arr.dtype} of shape {arr.shape}")
      values[tag] = arr.astype(np.float32)
    logging.info("[%d] %s", step, ", ".join(
        f"{k}={float(v):.6g}" for k, v in sorted(values.items())))
    if self._records is None:
      return
    summary = summary_pb2.Summary()
    meta = scalar_metadata.create_summary_metadata(display_name=None,
                                                   description=None)
    for tag, arr in values.items():
      summary.value.add(tag=tag, metadata=meta,
                        tensor=tensor_util.make_tensor_proto(arr))
    self._add(event_pb2.Event(wall_time=time.time(), step=int(step),
                              summary=summary))
    if time.monotonic() - self._last_flush >= self._flush_secs:
      self.flush()

  def flush(self) -> None:
    if self._records is not None:
      self._records.flush()
    self._last_flush = time.monotonic()

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    if self._records is not None:
      self._records.flush()
      self._records.close()
      self._records = None

  def __enter__(self) -> "SummaryWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _add(self, event: event_pb2.Event) -> None:
    self._records.write(event.SerializeToString())


def create_default_writer(logdir: Optional[epath.PathLike], *,
                          just_logging: bool = False) -> SummaryWriter:
  """clu's ``metric_writers.create_default_writer`` without TensorFlow: pass
  ``just_logging=jax.process_index() > 0`` so only process 0 writes events."""
  return SummaryWriter(logdir, just_logging=just_logging)
