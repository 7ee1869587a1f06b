"""Plain ``nn.Module`` architectures (METHODS.md §4), no per-method variants: every method reaches them through
:func:`pyro_sparse.sparsify`.

============  ==========================================================================================
name          network (inputs as ``ToTensor()`` gives them; the first layer standardises them)
============  ==========================================================================================
logreg        multiclass logistic regression ``Linear(in, classes)`` (Molchanov et al. 2017, Table 2)
lenet300      784-300-100-10 MLP, ReLU
lenet500      784-500-300-10 MLP, ReLU
lenet5        LeNet-5-Caffe: conv 20@5×5 → pool 2 → conv 50@5×5 → pool 2 → fc 800→500 → fc 500→classes
vgg_like      13 conv3×3 + BatchNorm + ReLU, widths ``k``·(64,64 | 128,128 | 256×3 | 512×3 | 512×3), max-pool after
              each group, fc 512k→512k + BatchNorm + ReLU, fc → classes (Zagoruyko 2015 as in the BB paper)
conv3fc3      sparse-VD paper's CIFAR-10 net (Table 4): 3 conv 5×5 + ReLU + max-pool 3/2, fc → 512 → 512 → classes,
              optional binary dropout (``dropout="conv"`` / ``"all"``, Srivastava et al. 2014's rates)
resnet20/56   CIFAR ResNets of He et al. 2016 (Sec. 4.2): 3 stages of n = 3 / 9 basic blocks, 16-32-64 channels.
              Shortcuts are **option B**: identity where the shape is kept, 1×1 conv + BatchNorm projection where
              it changes (the paper's CIFAR nets use option A, zero-padding; B is the common re-implementation and
              keeps every shortcut a layer that a dependency graph can follow)
vit_cifar     a small vision transformer for 32×32 images (torchvision's ``VisionTransformer``): patches 4×4 (64
              tokens + class token), 6 encoder blocks of 4-head attention, width 128, MLP 256 (issue 28's CPU-budget
              demonstration; heads and MLP units are the unit latents, the LayerNorm'd residual stream stays dense)
============  ==========================================================================================

:func:`build` makes one by name; the instance remembers how it was made (``pyro_sparse_factory``: the name and its
options, plain data), so that a compact network saved by :func:`pyro_sparse.save_compact` loads again by replaying its
pruning on a fresh one. :func:`check_options` validates recorded options by type and range before anything is built.
"""

from __future__ import annotations

import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pyro_sparse.nn import Standardize

#: attribute on a built network: ``{"name": ..., "kwargs": {...}}`` (JSON-able), used by save/load of compact nets
FACTORY_ATTR = "pyro_sparse_factory"


def _mlp(hidden: Sequence[int], input_shape, num_classes, mean, std) -> nn.Sequential:
    sizes = [int(torch.Size(input_shape).numel()), *hidden, num_classes]
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten(), standardize=Standardize(mean, std))
    for i in range(len(sizes) - 1):
        layers[f"fc{i + 1}"] = nn.Linear(sizes[i], sizes[i + 1])
        if i < len(sizes) - 2:
            layers[f"relu_fc{i + 1}"] = nn.ReLU()
    return nn.Sequential(layers)


def logreg(input_shape=(64,), num_classes: int = 10, mean=0.0, std=1.0) -> nn.Sequential:
    return _mlp([], input_shape, num_classes, mean, std)


def lenet300(input_shape=(1, 28, 28), num_classes: int = 10, mean=0.0, std=1.0) -> nn.Sequential:
    return _mlp([300, 100], input_shape, num_classes, mean, std)


def lenet500(input_shape=(1, 28, 28), num_classes: int = 10, mean=0.0, std=1.0) -> nn.Sequential:
    return _mlp([500, 300], input_shape, num_classes, mean, std)


def lenet5(input_shape=(1, 28, 28), num_classes: int = 10, mean=0.0, std=1.0) -> nn.Sequential:
    """LeNet-5-Caffe. :raises ValueError: inputs other than ``[1, 28, 28]``."""
    if tuple(input_shape) != (1, 28, 28):
        raise ValueError(f"arch lenet5 expects 28x28 images [1, 28, 28], got examples of shape {list(input_shape)}")
    return nn.Sequential(OrderedDict(
        standardize=Standardize(mean, std), conv1=nn.Conv2d(1, 20, 5), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2),
        conv2=nn.Conv2d(20, 50, 5), relu2=nn.ReLU(), pool2=nn.MaxPool2d(2), flatten=nn.Flatten(),
        fc1=nn.Linear(800, 500), relu_fc1=nn.ReLU(), fc2=nn.Linear(500, num_classes)))


VGG_WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg_like(input_shape=(3, 32, 32), num_classes: int = 10, mean=0.0, std=1.0, k: float = 1.0) -> nn.Sequential:
    """VGG-like of METHODS.md §4 with width multiplier ``k`` (channels ``round(k·w)``, at least 1).

    Layer names: ``conv{i}``/``bn{i}``/``relu{i}`` for i = 1…13, ``pool{g}`` after group g, ``fc1``, ``bn_fc1``,
    ``fc2``. :raises ValueError: inputs other than 3×32×32, or ``k <= 0``.
    """
    if tuple(input_shape) != (3, 32, 32):
        raise ValueError(f"arch vgg_like expects CIFAR images [3, 32, 32], got examples of shape {list(input_shape)}")
    if not k > 0:
        raise ValueError(f"vgg_like width multiplier k must be > 0, got {k}")
    layers: OrderedDict[str, nn.Module] = OrderedDict(standardize=Standardize(mean, std))
    c_in, i = 3, 0
    for g, widths in enumerate(VGG_WIDTHS):
        for w in widths:
            i += 1
            c = max(1, round(k * w))
            layers[f"conv{i}"] = nn.Conv2d(c_in, c, 3, padding=1)
            layers[f"bn{i}"] = nn.BatchNorm2d(c)
            layers[f"relu{i}"] = nn.ReLU()
            c_in = c
        layers[f"pool{g + 1}"] = nn.MaxPool2d(2)
    hidden = max(1, round(k * 512))
    layers.update(flatten=nn.Flatten(), fc1=nn.Linear(c_in, hidden), bn_fc1=nn.BatchNorm1d(hidden),
                  relu_fc1=nn.ReLU(), fc2=nn.Linear(hidden, num_classes))
    return nn.Sequential(layers)


#: layer widths of :func:`conv3fc3` (our choice: the sparse-VD paper says only "smaller than Srivastava et al. 2014",
#: whose net has 96-128-256 conv filters and 2048-2048 hidden units)
CONV3FC3_WIDTHS = ((32, 64, 128), (512, 512))
#: binary dropout rates on the inputs of conv1, conv2, conv3, fc1, fc2, fc3: Srivastava et al. 2014 (Appendix B.2,
#: CIFAR-10: retention probabilities 0.9, 0.75, 0.75, 0.5, 0.5, 0.5 from the input to the fully connected layers)
CONV3FC3_DROPOUT = (0.1, 0.25, 0.25, 0.5, 0.5, 0.5)
DROPOUT_MODES = ("none", "conv", "all")


def conv3fc3(input_shape=(3, 32, 32), num_classes: int = 10, mean=0.0, std=1.0, dropout: str = "none") -> nn.Sequential:
    """The CIFAR-10 net of the sparse-VD paper's Table 4 (Molchanov et al. 2017, Sec. 6.3): three conv 5×5 (stride 1,
    padding 2) each with ReLU and 3×3 / stride-2 max-pooling, then three fully connected layers with ReLU; widths
    :data:`CONV3FC3_WIDTHS`.

    :param dropout: binary dropout (``nn.Dropout``, rates :data:`CONV3FC3_DROPOUT` on each layer's input):
        ``"none"``; ``"conv"``: on the inputs of the conv layers only (the paper's BD + VD configurations, with SVD on
        the dense layers: ``sparsify(net, "svd", x, include=nn.Linear)``); ``"all"``: on every layer.
    :raises ValueError: inputs other than 3×32×32, or an unknown ``dropout``.

    Layer names: ``conv{i}``, ``relu{i}``, ``pool{i}`` (i = 1…3), ``flatten``, ``fc1``…``fc3``, ``relu_fc{i}``,
    ``drop_conv{i}`` / ``drop_fc{i}`` before the layer they feed.
    """
    if tuple(input_shape) != (3, 32, 32):
        raise ValueError(f"arch conv3fc3 expects CIFAR images [3, 32, 32], got examples of shape {list(input_shape)}")
    if dropout not in DROPOUT_MODES:
        raise ValueError(f"conv3fc3 dropout must be one of {', '.join(DROPOUT_MODES)}, got {dropout!r}")
    rates = iter(CONV3FC3_DROPOUT)
    layers: OrderedDict[str, nn.Module] = OrderedDict(standardize=Standardize(mean, std))
    c_in = 3
    for i, c in enumerate(CONV3FC3_WIDTHS[0], 1):
        p = next(rates)
        if dropout != "none":
            layers[f"drop_conv{i}"] = nn.Dropout(p)
        layers.update({f"conv{i}": nn.Conv2d(c_in, c, 5, padding=2), f"relu{i}": nn.ReLU(),
                       f"pool{i}": nn.MaxPool2d(3, 2)})
        c_in = c
    layers["flatten"] = nn.Flatten()
    sizes = [c_in * 3 * 3, *CONV3FC3_WIDTHS[1], num_classes]  # 32 → 15 → 7 → 3 pixels after the three poolings
    for i in range(3):
        p = next(rates)
        if dropout == "all":
            layers[f"drop_fc{i + 1}"] = nn.Dropout(p)
        layers[f"fc{i + 1}"] = nn.Linear(sizes[i], sizes[i + 1])
        if i < 2:
            layers[f"relu_fc{i + 1}"] = nn.ReLU()
    return nn.Sequential(layers)


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN, plus the shortcut (identity, or 1×1 conv + BN: option B), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al. 2016 CIFAR ResNet with ``6n + 2`` layers (option-B shortcuts, see the module docstring)."""

    def __init__(self, n: int, num_classes: int = 10, mean=0.0, std=1.0):
        super().__init__()
        self.standardize = Standardize(mean, std)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        stages, c_in = [], 16
        for i, c in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c_in, c, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(self.standardize(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet20(input_shape=(3, 32, 32), num_classes: int = 10, mean=0.0, std=1.0) -> CifarResNet:
    return CifarResNet(3, num_classes, mean, std)


def resnet56(input_shape=(3, 32, 32), num_classes: int = 10, mean=0.0, std=1.0) -> CifarResNet:
    return CifarResNet(9, num_classes, mean, std)


#: :func:`vit_cifar`'s configuration: patch size, encoder blocks, heads, width, MLP width
VIT_CIFAR = {"patch_size": 4, "num_layers": 6, "num_heads": 4, "hidden_dim": 128, "mlp_dim": 256}


def vit_cifar(input_shape=(3, 32, 32), num_classes: int = 10, mean=0.0, std=1.0) -> nn.Sequential:
    """A small ViT for CIFAR-sized images (:data:`VIT_CIFAR`), torchvision's ``VisionTransformer`` behind the input
    standardisation; layer names ``standardize``, ``vit`` (then torchvision's). :raises ValueError: inputs other
    than 3×32×32."""
    import torchvision

    if tuple(input_shape) != (3, 32, 32):
        raise ValueError(f"arch vit_cifar expects CIFAR images [3, 32, 32], got examples of shape {list(input_shape)}")
    return nn.Sequential(OrderedDict(standardize=Standardize(mean, std), vit=torchvision.models.VisionTransformer(
        image_size=32, num_classes=num_classes, **VIT_CIFAR)))


NETS: dict[str, Callable[..., nn.Module]] = {
    "logreg": logreg, "lenet300": lenet300, "lenet500": lenet500, "lenet5": lenet5, "vgg_like": vgg_like,
    "resnet20": resnet20, "resnet56": resnet56, "conv3fc3": conv3fc3, "vit_cifar": vit_cifar,
}


#: bounds on recorded options (a compact.json or config.json may be hostile: no memory bomb through its options)
MAX_INPUT_FEATURES = 2**22
MAX_CLASSES = 100_000
MAX_WIDTH = 16.0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_options(name: str, options: dict) -> None:
    """Check the options of architecture ``name`` by type and range (they may come from a file).

    Valid keys: ``input_shape`` (1–4 positive ints, at most :data:`MAX_INPUT_FEATURES` features), ``num_classes``
    (1 … :data:`MAX_CLASSES`), ``mean`` / ``std`` (finite numbers, or one per channel; ``std > 0``), and the
    architecture's own (``k`` of ``vgg_like``: 0 < k ≤ :data:`MAX_WIDTH`).

    :raises ValueError: an unknown name or key, or a value of the wrong type or out of range (one line).
    """
    if name not in NETS:
        raise ValueError(f"unknown arch {name!r}; expected one of {', '.join(NETS)}")
    own = [p for p in inspect.signature(NETS[name]).parameters if p not in _COMMON]
    unknown = sorted(set(options) - set(_COMMON) - set(own))
    if unknown:
        raise ValueError(f"arch {name!r}: unknown option(s) {', '.join(map(repr, unknown))}; valid: "
                         f"{', '.join([*_COMMON, *own])}")
    shape = options.get("input_shape", ())
    if not isinstance(shape, (list, tuple)) or not 1 <= len(shape) <= 4 or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape) \
            or math.prod(shape) > MAX_INPUT_FEATURES:
        raise ValueError(f"arch {name!r}: input_shape must be 1 to 4 positive integers with at most "
                         f"{MAX_INPUT_FEATURES} features, got {shape!r}")
    classes = options.get("num_classes", 10)
    if not isinstance(classes, int) or isinstance(classes, bool) or not 1 <= classes <= MAX_CLASSES:
        raise ValueError(f"arch {name!r}: num_classes must be an integer in 1 … {MAX_CLASSES}, got {classes!r}")
    for key in ("mean", "std"):
        v = options.get(key, 0.0 if key == "mean" else 1.0)
        values = v if isinstance(v, (list, tuple)) else [v]
        if not values or len(values) > shape[0] or not all(_number(x) for x in values) or (
                key == "std" and not all(x > 0 for x in values)):
            raise ValueError(f"arch {name!r}: {key} must be a finite number{' > 0' if key == 'std' else ''} or one "
                             f"per input channel, got {v!r}")
    if "dropout" in options and options["dropout"] not in DROPOUT_MODES:
        raise ValueError(f"arch {name!r}: dropout must be one of {', '.join(DROPOUT_MODES)}, got "
                         f"{options['dropout']!r}")
    if "k" in options and (not _number(options["k"]) or not 0 < options["k"] <= MAX_WIDTH):
        raise ValueError(f"arch {name!r}: width multiplier k must be a number in (0, {MAX_WIDTH:g}], got "
                         f"{options['k']!r}")


_COMMON = ("input_shape", "num_classes", "mean", "std")


def build(name: str, input_shape: Sequence[int] = (), num_classes: int = 10, mean=0.0, std=1.0,
          **kwargs) -> nn.Module:
    """The plain network ``name`` (see the module docstring) for examples of ``input_shape`` (no batch dim).

    A user's own network is not built here: call your factory and pass the module (or, to record its name for
    :func:`pyro_sparse.load_compact`, :func:`user_network`).

    :param mean, std: input standardisation (scalars or one per channel).
    :param kwargs: architecture options (``k`` for ``vgg_like``).
    :raises ValueError: unknown name, options of the wrong type or out of range (:func:`check_options`), or an input
        shape the architecture cannot take.
    """
    if isinstance(name, str) and ":" in name:
        raise ValueError(f"arch {name!r} is a user's factory: build it with user_network(name, factory) (the CLI "
                         "imports it from --arch); nets.build takes only " + ", ".join(NETS))
    mean = mean.tolist() if torch.is_tensor(mean) else mean
    std = std.tolist() if torch.is_tensor(std) else std
    options = {"input_shape": list(input_shape), "num_classes": num_classes, "mean": mean, "std": std, **kwargs}
    check_options(name, options)
    net = NETS[name](**{**options, "input_shape": tuple(input_shape)})
    setattr(net, FACTORY_ATTR, {"name": name, "kwargs": options})
    return net


def user_network(name: str, factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()``, a user's own network, remembering ``name`` (``package.module:factory``) so that its compact
    network records which factory rebuilds it (loading it again still needs that factory passed, or
    ``trust_code=True``: :mod:`pyro_sparse.trust`).

    :raises ValueError: the factory returns no ``nn.Module``.
    """
    net = factory()
    if not isinstance(net, nn.Module):
        raise ValueError(f"arch {name!r}: the factory returned a {type(net).__name__}, expected an nn.Module")
    setattr(net, FACTORY_ATTR, {"name": name, "kwargs": {}})
    return net
