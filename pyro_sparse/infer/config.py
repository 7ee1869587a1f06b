"""What a training run is told: the method's hyperparameters (what the result depends on) apart from the engine's
settings (how and where it runs), and :class:`TrainConfig`, the two together as :func:`pyro_sparse.infer.fit` and
``config.json`` take them (docs/design.md, contract 6; issue 27, item 4).

``TrainConfig(...)`` keeps every field flat (``TrainConfig(epochs=200, lr_latent=0.1, device="cuda")``);
``cfg.hyperparameters`` and ``cfg.engine`` are its two parts, and ``TrainConfig.combine(hyperparameters, engine)``
puts two parts together (``fit`` accepts either form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..data import AUGMENTATIONS
from ..errors import InvalidInputError
from ..poutine import check_kl_scale

SCHEDULES = ("constant", "linear", "step")
#: seeds must fit ``pyro.set_rng_seed`` (NumPy's 32-bit seeds)
MAX_SEED = 2**32 - 1


class _Checks:
    """Field checks shared by the two parts; each message names the field (with ``flag_prefix``, the CLI's flag)."""

    def _bad(self, prefix: str, name: str, value, expected: str):
        raise InvalidInputError(f"{prefix}{name.replace('_', '-')} must be {expected}, got {value!r}")

    def _number(self, prefix: str, name: str, positive: bool = False, non_negative: bool = False,
                optional: bool = False) -> None:
        v = getattr(self, name)
        if v is None and optional:
            return
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            self._bad(prefix, name, v, "a finite number")
        if positive and not v > 0:
            self._bad(prefix, name, v, "> 0")
        if non_negative and not v >= 0:
            self._bad(prefix, name, v, ">= 0")

    def _positive_int(self, prefix: str, *names: str) -> None:
        for name in names:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                self._bad(prefix, name, v, "a positive integer")


@dataclass
class Hyperparameters(_Checks):
    """The method's training recipe: every field changes what is learned (defaults: METHODS.md §1 schedule for SVD;
    :meth:`TrainConfig.for_method` fills in a method's own, :attr:`pyro_sparse.Method.training`).

    :ivar epochs: number of epochs (> 0).
    :ivar batch_size: minibatch size B (the global batch: data-parallel processes split it).
    :ivar lr: Adam learning rate of the model's point estimates (weights, biases).
    :ivar lr_latent: learning rate of the guide's parameters (θ, log σ², noise and gate parameters); None = ``lr``.
    :ivar weight_decay: L2 weight decay on the model's point estimates only.
    :ivar lr_schedule: ``constant``; ``linear`` (constant until ``decay_start``·epochs, then linear to 0);
        ``step`` (×0.1 at 50% and 80% of the epochs).
    :ivar decay_start: ``linear``: the fraction of the epochs before the decay starts.
    :ivar warmup_start, warmup_end: KL weight β is 0 before epoch ``warmup_start`` and rises linearly to 1 at
        ``warmup_end`` (equal values: no warm-up).
    :ivar seed: epoch ``e`` seeds its shuffling and its noise with ``seed·100003 + e``.
    :ivar weight_threshold: SVD's keep rule: weights with log α ≥ this are pruned; ``None`` (default): the method's
        3. Refused for a model without latent weights.
    :ivar unit_threshold: the unit methods' keep rule: units with SNR (SBP) or E[π] (BB, DBB) below this are pruned;
        ``None`` (default): the method's 1 / 1e-3. Refused for a model without unit latents.
    :ivar train_clip_from: SVD only: from this epoch on (0-based, like ``warmup_start``) weights with
        log α ≥ ``weight_threshold`` also leave the training-time mean (:func:`pyro_sparse.nn.set_train_clip`, the
        reference code's ``train_clip``); before it clipping is off. ``None``: the model's own setting is kept.
    :ivar kl_scale: ``{layer: s}``: the KL of that layer's latent sites is multiplied by ``s`` (> 0) in the
        objective (:func:`pyro_sparse.poutine.kl_scale`; the BB authors' code uses conv1 40, conv2 16 on LeNet-5);
        empty (default): the ELBO. The logged ``kl`` is the objective's, with these scales.
    :ivar augment: ``None`` (default) or ``"crop-flip"``: random 4-pixel crops and horizontal flips of every training
        batch, made on the device (:func:`pyro_sparse.data.augment`); image data only.
    """

    epochs: int = 200
    batch_size: int = 100
    lr: float = 1e-3
    lr_latent: float | None = None
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    decay_start: float = 0.5
    warmup_start: int = 0
    warmup_end: int = 0
    seed: int = 0
    weight_threshold: float | None = None
    unit_threshold: float | None = None
    train_clip_from: int | None = None
    kl_scale: dict[str, float] = field(default_factory=dict)
    augment: str | None = None

    def validate(self, flag_prefix: str = "") -> None:
        """Check every field: finite, in range, consistent with the others.

        :param flag_prefix: put before field names in messages (the CLI passes ``"--"``: ``--lr must be > 0``).
        :raises InvalidInputError: (a ``ValueError``) naming the field, its value and what was expected.
        """
        self._validate_hyperparameters(flag_prefix)

    def _validate_hyperparameters(self, p: str) -> None:
        self._positive_int(p, "epochs", "batch_size")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            self._bad(p, "seed", self.seed, f"an integer in 0 … {MAX_SEED}")
        self._number(p, "lr", positive=True)
        self._number(p, "lr_latent", positive=True, optional=True)
        self._number(p, "weight_decay", non_negative=True)
        self._number(p, "weight_threshold", optional=True)
        self._number(p, "unit_threshold", positive=True, optional=True)
        self._number(p, "decay_start")
        if not 0 <= self.decay_start <= 1:
            self._bad(p, "decay_start", self.decay_start, "a fraction of the epochs in [0, 1]")
        if self.lr_schedule not in SCHEDULES:
            self._bad(p, "lr_schedule", self.lr_schedule, f"one of {', '.join(SCHEDULES)}")
        for name in ("warmup_start", "warmup_end"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                self._bad(p, name, v, "an epoch >= 0")
        if self.warmup_end < self.warmup_start:
            raise InvalidInputError(f"warmup END ({self.warmup_end}) must be >= START ({self.warmup_start})")
        if self.train_clip_from is not None and (
                isinstance(self.train_clip_from, bool) or not isinstance(self.train_clip_from, int)
                or not 0 <= self.train_clip_from < self.epochs):
            self._bad(p, "train_clip_from", self.train_clip_from,
                      f"an epoch in 0 … {self.epochs - 1} (0-based, < epochs)")
        if self.augment is not None and self.augment not in AUGMENTATIONS:
            self._bad(p, "augment", self.augment, f"one of {', '.join(AUGMENTATIONS)} or None")
        if not isinstance(self.kl_scale, dict):
            self._bad(p, "kl_scale", self.kl_scale, "a {layer: scale} mapping")
        try:
            check_kl_scale(self.kl_scale)
        except ValueError as e:
            raise InvalidInputError(str(e)) from None

    def kl_weight(self, epoch: int) -> float:
        """KL warm-up β for ``epoch`` (0-based)."""
        if self.warmup_end <= self.warmup_start:
            return 1.0
        return min(1.0, max(0.0, (epoch - self.warmup_start) / (self.warmup_end - self.warmup_start)))

    def lr_factor(self, epoch: int) -> float:
        """Multiplier of the learning rates in ``epoch`` (0-based)."""
        if self.lr_schedule == "linear":
            start = int(self.decay_start * self.epochs)
            return 1.0 if epoch < start else max(0.0, 1.0 - (epoch - start) / max(1, self.epochs - start))
        if self.lr_schedule == "step":
            return 0.1 ** ((epoch >= 0.5 * self.epochs) + (epoch >= 0.8 * self.epochs))
        return 1.0


@dataclass
class EngineSettings(_Checks):
    """How and where the engine runs a recipe: none of these changes what is learned, beyond floating-point
    rounding (``bf16`` and ``channels_last`` round differently; say so when comparing runs).

    :ivar device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (:func:`pyro_sparse.devices.resolve_device`).
    :ivar measure_latency: measure the compact network's CPU latency (batch 1 and 1000) into ``metrics.json``.
    :ivar progress_every: steps between progress-bar updates, each one host read of the epoch's running totals (and
        of the divergence check); the totals are read once more at the end of the epoch. Steps themselves read
        nothing back to the host.
    :ivar bf16: run the network's forward pass under ``torch.autocast`` with bfloat16 (the convolutions and matrix
        products; logits, likelihood, KL and the distributions stay float32/float64). Off by default: it changes
        results.
    :ivar compile: ``torch.compile`` the user's network (``nn.Module.compile``: parameter names and checkpoints
        unchanged) for training. Off by default; the first step then compiles (a minute on a CPU). The unit latents'
        hooks draw through Pyro, which dynamo cannot trace: they run eagerly, so the graph breaks at every unit
        layer and the segments between them are compiled (once, in the first step). SVD's local reparameterisation
        compiles whole.
    :ivar flush_denormal: while training, CPU float ops treat subnormal numbers (below 1.18e-38 in float32) as zero
        (:func:`pyro_sparse.settings.flush_denormals`; restored after). On by default: the pruned units of a BB
        network drive Adam's second moments into that range, where CPUs compute 10-100x slower (LeNet-500-300 BB:
        47-131 s per epoch instead of ~7 s). Values that small only ever become 0; ``False`` keeps IEEE subnormals.
    :ivar channels_last: hand the network its image batches (``[B, C, H, W]``) in ``torch.channels_last`` memory
        format, which cuDNN's convolutions (bf16 above all) run faster on a GPU; the convolutions' outputs follow the
        input's format. Same values up to floating-point rounding; off by default.

    Data-parallel training needs no field here: launched by ``torchrun`` (or ``pyro-sparse train --devices N``),
    :func:`~pyro_sparse.infer.fit` splits each global batch over the processes (:mod:`pyro_sparse.infer.distributed`).
    """

    device: str = "cpu"
    measure_latency: bool = True
    progress_every: int = 20
    bf16: bool = False
    compile: bool = False
    channels_last: bool = False
    flush_denormal: bool = True

    def validate(self, flag_prefix: str = "") -> None:
        """:raises InvalidInputError: a field of the wrong type or out of range, named."""
        self._validate_engine(flag_prefix)

    def _validate_engine(self, p: str) -> None:
        self._positive_int(p, "progress_every")
        for name in ("measure_latency", "bf16", "compile", "channels_last", "flush_denormal"):
            if not isinstance(getattr(self, name), bool):
                self._bad(p, name, getattr(self, name), "True or False")


@dataclass
class TrainConfig(EngineSettings, Hyperparameters):  # (field order: the hyperparameters first)
    """One run's :class:`Hyperparameters` and :class:`EngineSettings` as one flat record (every field of both; see
    there). ``config.json`` records it (``"config"``) and :func:`~pyro_sparse.infer.fit` reads it.

    >>> cfg = TrainConfig.for_method("bb", epochs=200, device="cuda")
    >>> cfg.hyperparameters.lr_latent, cfg.engine.device
    (0.01, 'cuda')
    """

    @classmethod
    def combine(cls, hyperparameters: Hyperparameters, engine: EngineSettings | None = None) -> TrainConfig:
        """The run of ``hyperparameters`` on ``engine`` (default: :class:`EngineSettings`'s defaults, the CPU).

        :raises InvalidInputError: arguments of another type."""
        engine = EngineSettings() if engine is None else engine
        if not isinstance(hyperparameters, Hyperparameters) or not isinstance(engine, EngineSettings):
            raise InvalidInputError(f"TrainConfig.combine expects Hyperparameters and EngineSettings, got "
                                    f"{type(hyperparameters).__name__} and {type(engine).__name__}")
        return cls(**_part(hyperparameters, Hyperparameters), **_part(engine, EngineSettings))

    @property
    def hyperparameters(self) -> Hyperparameters:
        """The method's recipe (a copy)."""
        return Hyperparameters(**_part(self, Hyperparameters))

    @property
    def engine(self) -> EngineSettings:
        """The engine's settings (a copy)."""
        return EngineSettings(**_part(self, EngineSettings))

    @classmethod
    def for_method(cls, method: str, epochs: int = 200, **overrides) -> TrainConfig:
        """The configuration ``pyro-sparse train --method METHOD`` uses on MNIST (:attr:`pyro_sparse.Method.training`:
        SVD's linear decay and KL warm-up 5 → 20 of 200 epochs, scaled for shorter runs; SBP's gate lr 1e-2; BB/DBB's
        step schedule, gate lr 1e-2 and weight decay 1e-4), with ``overrides`` (any field) on top.

        :raises InvalidInputError: an unknown method or field."""
        from pyro_sparse.sparsify import training_defaults

        d = training_defaults(method)
        warm = (5, 20) if epochs >= 40 else (epochs // 8, epochs // 2)
        values = {"epochs": epochs, "lr_schedule": d.get("lr_schedule", "linear"), "lr_latent": d.get("lr_latent"),
                  "weight_decay": d.get("weight_decay", 0.0)}
        if d.get("kl_warmup"):
            values["warmup_start"], values["warmup_end"] = warm
        unknown = sorted(set(overrides) - set(cls.__dataclass_fields__))
        if unknown:
            raise InvalidInputError(f"TrainConfig.for_method: unknown field(s) {', '.join(unknown)}; valid: "
                                    f"{', '.join(cls.__dataclass_fields__)}")
        return cls(**{**values, **overrides})

    def validate(self, flag_prefix: str = "") -> None:
        """Check every field of both parts.

        :param flag_prefix: put before field names in messages (the CLI passes ``"--"``: ``--lr must be > 0``).
        :raises InvalidInputError: (a ``ValueError``) naming the field, its value and what was expected.
        """
        self._validate_hyperparameters(flag_prefix)
        self._validate_engine(flag_prefix)


def _part(obj, part: type) -> dict:
    return {f.name: getattr(obj, f.name) for f in fields(part)}


def _checked_init(cls):
    """An unknown option is refused naming the valid ones (not Python's bare TypeError)."""
    init = cls.__init__
    names = [f.name for f in fields(cls)]

    def __init__(self, *args, **kwargs):
        unknown = sorted(set(kwargs) - set(names))
        if unknown or len(args) > len(names):
            what = ", ".join(map(repr, unknown)) if unknown else f"{len(args)} positional values"
            raise InvalidInputError(f"{cls.__name__}: unknown option(s) {what}; valid: {', '.join(names)}")
        init(self, *args, **kwargs)

    __init__.__doc__, __init__.__wrapped__ = init.__doc__, init
    cls.__init__ = __init__


for _cls in (Hyperparameters, EngineSettings, TrainConfig):
    _checked_init(_cls)

__all__ = ["EngineSettings", "Hyperparameters", "TrainConfig"]
