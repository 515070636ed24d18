"""Constants and option dataclasses: the one home of pneumoscan's defaults.

Everything that a run can change is a field of a frozen dataclass here; the CLI builds one from
its flags and passes it down, so no module reads globals or environment variables deep inside.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

#: Class order used everywhere: index 0 is NORMAL, index 1 is PNEUMONIA (the positive class).
CLASS_NAMES: tuple[str, str] = ("NORMAL", "PNEUMONIA")
POSITIVE_CLASS = "PNEUMONIA"

#: Square side, in pixels, of the images the models see (the training copy is 224x224).
DEFAULT_IMAGE_SIZE = 224

#: Largest image we agree to decode, in pixels (width * height). Larger files are refused as a
#: likely decompression bomb; the biggest real chest X-rays are around 3000 x 3000 = 9 MP.
MAX_IMAGE_PIXELS = 50_000_000
#: Smallest side, in pixels, that still holds a readable chest X-ray.
MIN_IMAGE_SIDE = 32

DISCLAIMER = (
    "For education and research only. pneumoscan is not a medical device and must not be used "
    "to diagnose, treat or exclude any disease; every image needs a qualified clinician's reading."
)

#: Seed of every random choice that a run does not override: the validation split, augmentation,
#: weight initialisation, the bootstrap. The published numbers use it.
DEFAULT_SEED = 1337
#: Share of the training folder's images (by patient, per class) held out for validation.
DEFAULT_VAL_FRACTION = 0.15
#: Pneumonia recall the operating threshold must reach on validation (screening: miss few).
DEFAULT_TARGET_RECALL = 0.98
#: The architecture ``pneumoscan train`` builds without ``--arch`` (the released model's);
#: the list of names is the registry, :data:`pneumoscan.models.architectures.ARCHITECTURES`.
DEFAULT_ARCH = "mobilenetv2"

#: How ``pneumoscan train`` counters the class imbalance (about 3 pneumonia images per normal one).
#: ``setup_balanced`` also counters the acquisition set-up: images are weighted so that, within
#: the training images, the set-up score of the shortcut audit no longer predicts the label
#: (:func:`pneumoscan.evaluation.shortcuts.setup_balanced_weights`).
IMBALANCE_MODES = ("class_weight", "balanced_sampling", "setup_balanced", "none")
#: How the members of a MobileNetV2 ensemble get their data and their held-out predictions:
#: ``validation``: member ``k`` trains on all but its own seeded patient-level validation split
#: (``val_fraction``, seed ``seed + k``) and keeps its best epoch there, like one single model;
#: ``folds``: member ``k`` trains on every patient fold but ``k`` for fixed epochs (cross-fitting).
MEMBER_SPLITS = ("validation", "folds")
#: ``none``: the default device; ``mirrored``: ``tf.distribute.MirroredStrategy`` over all GPUs.
DISTRIBUTE_MODES = ("none", "mirrored")

#: Images more colourful than this (Hasler-Suesstrunk colourfulness, see
#: :attr:`pneumoscan.data.imaging.DecodedImage.colourfulness`) are likely not X-rays: the app refuses
#: them and the data report counts them. Grey radiographs score 0, a JPEG with a slight colour
#: cast a few units, ordinary colour photographs 20 and more (Hasler and Suesstrunk rate 15
#: "slightly colourful", 33 "moderately colourful").
MAX_COLOURFULNESS = 20.0

BUNDLED_MODEL_NAME = "pneumoscan-mobilenetv2.keras"


def _bundled_models_dir() -> Path:
    """Where the released model lives: inside the installed package (``pneumoscan/bundled/``,
    where the wheel puts the repository's ``models/``), else in the source checkout's ``models/``."""
    here = Path(__file__).resolve().parent
    installed = here / "bundled"
    return installed if (installed / BUNDLED_MODEL_NAME).is_file() else here.parents[1] / "models"


#: The folder of the released model, its LiteRT export, their sidecars and the model card.
BUNDLED_MODELS_DIR = _bundled_models_dir()
#: The released model.
DEFAULT_KERAS_MODEL_PATH = BUNDLED_MODELS_DIR / BUNDLED_MODEL_NAME
#: Its LiteRT export with float16 weights (made and checked by ``pneumoscan export --quantize
#: float16``): what the app, ``serve`` and ``predict`` use by default.
DEFAULT_LITERT_MODEL_PATH = BUNDLED_MODELS_DIR / "pneumoscan-mobilenetv2-litert.tflite"


def default_keras_model_path() -> Path:
    """The Keras model a command uses without ``--model`` (``evaluate``, ``explain``, ``export``,
    ``adapt``): ``$PNEUMOSCAN_MODEL`` when set, else the bundled :data:`DEFAULT_KERAS_MODEL_PATH`."""
    return Path(os.environ.get("PNEUMOSCAN_MODEL", DEFAULT_KERAS_MODEL_PATH))


def default_serving_model_path() -> Path:
    """The model that answers without ``--model`` (the app, ``serve``, ``predict``, ``drift``,
    ``site-check``): ``$PNEUMOSCAN_MODEL`` when set, else the bundled LiteRT export, else the
    bundled Keras model.

    LiteRT because it starts without importing TensorFlow and answers one image about 2.7 times
    faster (``benchmarks/inference.py``); and in the app because Streamlit calls
    ``keras.backend.clear_session()`` after every script run, which drops TensorFlow's kernels, so
    each upload rebuilds them (``benchmarks/app_latency.py``: the README gives the figures).
    """
    if "PNEUMOSCAN_MODEL" in os.environ:
        return Path(os.environ["PNEUMOSCAN_MODEL"])
    return DEFAULT_LITERT_MODEL_PATH if DEFAULT_LITERT_MODEL_PATH.is_file() else DEFAULT_KERAS_MODEL_PATH


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How the training folder is cut into train and validation, by patient.

    Recorded in every model's sidecar (``split``), so that export and comparison recover the very
    images a model was validated on (:func:`pneumoscan.data.dataset.train_val_split`).

    Attributes
    ----------
    val_fraction : float in (0, 1)
        Share of each class's images moved to validation, whole patients at a time.
    seed : int
        Seed of the patient shuffle (and of the subset when ``limit`` is set).
    limit : int or None
        Use at most this many images of the folder, both classes in proportion (smoke runs).
    """

    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = DEFAULT_SEED
    limit: int | None = None

    def __post_init__(self):
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be a positive number of images or None, got {self.limit}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SplitConfig:
        """From a sidecar's ``split`` entry; missing keys take the defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"split has unknown keys {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Augmentation suited to chest X-rays: small geometric and photometric changes, no flips.

    Vertical flips make anatomically impossible images; horizontal flips move the heart to the
    right (dextrocardia), so neither is used.
    """

    rotation_deg: float = 10.0
    shift: float = 0.08
    zoom: float = 0.15
    brightness: float = 0.15
    contrast: float = 0.3
    gamma: float = 0.3
    blur_prob: float = 0.25
    noise_std: float = 6.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every option of ``pneumoscan train``; written to ``config.json`` in the run folder."""

    arch: str = DEFAULT_ARCH  # a name of pneumoscan.models.architectures.ARCHITECTURES
    image_size: int = DEFAULT_IMAGE_SIZE
    batch_size: int = 32
    seed: int = DEFAULT_SEED
    val_fraction: float = DEFAULT_VAL_FRACTION
    imbalance: str = "class_weight"  # one of IMBALANCE_MODES
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    # Plain CNNs: one phase.
    epochs: int = 12
    learning_rate: float = 1e-3
    # MobileNetV2: phase 1 trains the head on a frozen backbone, phase 2 fine-tunes the top.
    head_epochs: int = 5
    head_learning_rate: float = 1e-3
    finetune_epochs: int = 3
    finetune_learning_rate: float = 1e-4
    unfreeze_blocks: int = 3
    dense_units: int = 128
    dropout: float = 0.5
    augmented_views: int = 1
    # MobileNetV2: a deep ensemble of ``members`` tops on one frozen stem; 1 trains one model on a
    # validation split. ``member_split`` (one of MEMBER_SPLITS) says what data each member sees.
    members: int = 3
    member_split: str = "validation"
    target_recall: float = DEFAULT_TARGET_RECALL
    label_smoothing: float = 0.05
    distribute: str = "none"  # one of DISTRIBUTE_MODES
    limit: int | None = None  # use at most this many training images (tests, smoke runs)

    def __post_init__(self):
        # ``arch`` is checked against the registry by the training engine: config is the first
        # stage and cannot import the models stage.
        if self.imbalance not in IMBALANCE_MODES:
            raise ValueError(f"imbalance must be one of {IMBALANCE_MODES}, got {self.imbalance!r}")
        if not 0.0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if not 0.5 <= self.target_recall < 1.0:
            raise ValueError(f"target_recall must be in [0.5, 1), got {self.target_recall}")
        if self.member_split not in MEMBER_SPLITS:
            raise ValueError(f"member_split must be one of {MEMBER_SPLITS}, got {self.member_split!r}")
        if self.distribute not in DISTRIBUTE_MODES:
            raise ValueError(f"distribute must be one of {DISTRIBUTE_MODES}, got {self.distribute!r}")
        if self.image_size < MIN_IMAGE_SIDE:
            raise ValueError(f"image_size must be at least {MIN_IMAGE_SIDE}, got {self.image_size}")
        if self.members < 1 or self.members == 2 or self.members > 10:
            raise ValueError(
                f"members must be 1 (one model) or 3..10 (an ensemble of that many members), "
                f"got {self.members}"
            )

    @property
    def split(self) -> SplitConfig:
        """The patient-level split this run uses (its ``seed``, ``val_fraction`` and ``limit``)."""
        return SplitConfig(val_fraction=self.val_fraction, seed=self.seed, limit=self.limit)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        if isinstance(d.get("augment"), dict):
            d["augment"] = AugmentConfig(**d["augment"])
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


#: What ``pneumoscan distill`` can make (:attr:`DistillConfig.kind`).
DISTILL_KINDS = ("student", "shared-body")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Options of ``pneumoscan distill``; every random choice is seeded with ``seed``.

    Attributes
    ----------
    holdout_fraction : float
        Share of the training folder's images (by patient, per class) kept back for the gate.
    augmented_views : int
        Augmented copies of each distillation image besides the clean one.
    mixup_views : int
        Mixed views added on top of those: each a random pair of distillation views mixed in the
        stem's feature space with a weight drawn uniformly from [0, 1], labelled by the teacher's
        members on the mixture (:func:`pneumoscan.training.distill.mixed_views`). They put
        training points between the classes, where the teacher's answers cross the band's edges,
        which the training films, confidently one class or the other, hardly visit. On the release
        they did not help the shared body (``benchmarks/shared_body.py``, docs/speed.md).
    head_epochs, finetune_epochs : int
        Epochs of the head phase (on pooled features) and of the top-blocks phase.
    head_learning_rate, finetune_learning_rate : float
    batch_size : int
    spread_weight : float
        Weight of the spread's squared error beside the probability's cross-entropy.
    init_member : int or None
        The member whose top the student starts from; ``None`` chooses the one whose calibrated
        probability is closest (squared logit error) to the teacher's on the clean distillation images.
    limit : int or None
        Use at most this many images of the folder (smoke runs and tests).
    max_auc_diff, min_agreement : float
        The gate (module docstring).
    kind : str
        What is distilled: ``"student"``, one top on the stem with a spread unit, or
        ``"shared-body"``, the members' averaged body with their own heads (the teacher's output row
        at the cost of one network; :func:`pneumoscan.training.distill.fit_shared`).
    keep_cache : bool
        Keep the stem features, the teacher's answers and the gate sets in ``OUT/.cache`` so that
        a rerun with other training options (same teacher, data, hold-out, views, seed) skips them.
    """

    holdout_fraction: float = 0.15
    augmented_views: int = 1
    mixup_views: int = 0
    head_epochs: int = 8
    finetune_epochs: int = 1
    head_learning_rate: float = 1e-3
    finetune_learning_rate: float = 1e-4
    batch_size: int = 64
    spread_weight: float = 100.0
    init_member: int | None = None
    limit: int | None = None
    seed: int = 1337
    max_auc_diff: float = 0.005
    min_agreement: float = 0.99
    kind: str = "student"
    keep_cache: bool = False

    def __post_init__(self):
        if self.kind not in DISTILL_KINDS:
            raise ValueError(f"kind must be one of {DISTILL_KINDS}, got {self.kind!r}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ValueError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if min(self.augmented_views, self.mixup_views, self.head_epochs, self.finetune_epochs) < 0:
            raise ValueError("augmented_views, mixup_views, head_epochs and finetune_epochs must be >= 0")
        if self.head_epochs + self.finetune_epochs == 0:
            raise ValueError("head_epochs + finetune_epochs must be at least 1")
