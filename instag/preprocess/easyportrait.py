"""EasyPortrait teeth masks: the FPN + ResNet-50 face-parsing network in plain PyTorch.

Upstream runs EasyPortrait's ``fpn-fp-512.pth`` through mmsegmentation 0.x, whose mmcv-full has no
wheels for current Python. The modules below are named so that the checkpoint's ``state_dict``
loads unchanged (mmseg's ``EncoderDecoder``):

- ``backbone``: ResNetV1c-50 (mmseg ``ResNet(depth=50, deep_stem=True)``): a three-conv stem
  ``stem.{0,1,3,4,6,7}`` (conv 3→32 s2, conv 32→32, conv 32→64, each followed by BatchNorm and
  ReLU), max-pool, then ``layer1..4`` of Bottlenecks ``conv1/bn1, conv2/bn2, conv3/bn3`` with the
  stride on the 3×3 conv ("pytorch" style) and ``downsample.{0,1}`` = 1×1 conv + BN.
- ``neck``: FPN, 4 levels of 256 channels: ``lateral_convs.i.conv`` (1×1, bias) and
  ``fpn_convs.i.conv`` (3×3, bias), no norm and no activation; top-down sum with nearest
  upsampling.
- ``decode_head``: FPNHead with 128 channels: ``scale_heads.i`` = max(1, log2(stride_i/4))
  ConvModules (3×3 conv without bias, ``bn``, ReLU) each followed by ×2 bilinear upsampling for
  the coarser levels; the four are summed at stride 4, then ``conv_seg`` (1×1, 8 classes).

Inference follows the checkpoint's config (``fpn-fp.py``): the BGR frame is converted to RGB and
normalised with mean (143.55, 132.97, 126.95) / std (60.26, 60.33, 59.31), kept at its native
size (the test pipeline has no resize), the logits are resized bilinearly back to H×W and the
per-pixel argmax taken. Classes: background, skin, left brow, right brow, left eye, right eye,
lips, teeth; ``teeth_mask/<i>.png`` = (class == 7), bool [H,W].

Checkpoint loading never unpickles code: ``torch.load(weights_only=True)``, with numpy's scalar
types allowed because mmcv stores numpy floats in the checkpoint's ``meta`` (best-score hooks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instag.errors import InstagError

CLASSES = ("background", "skin", "left brow", "right brow", "left eye", "right eye", "lips", "teeth")
TEETH = 7
MEAN_RGB = (143.55267075, 132.96705975, 126.94924335)
STD_RGB = (60.2625333, 60.32740275, 59.30988645)


class ConvModule(nn.Module):
    """mmcv's ConvModule subset: ``conv`` (+ ``bn``) (+ ReLU); bias only without a norm."""

    def __init__(self, cin: int, cout: int, kernel: int, norm: bool, act: bool):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=not norm)
        if norm:
            self.bn = nn.BatchNorm2d(cout)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.bn(x)
        return F.relu(x) if self.act else x


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False), nn.BatchNorm2d(planes * 4)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNetV1c(nn.Module):
    """ResNet-50 with the deep stem; returns the four stage outputs (strides 4, 8, 16, 32)."""

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), stem_channels: int = 64, base_channels: int = 64):
        super().__init__()
        half = stem_channels // 2
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, half, 3, padding=1, bias=False),
            nn.BatchNorm2d(half),
            nn.ReLU(inplace=True),
            nn.Conv2d(half, stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
        )
        inplanes = stem_channels
        for i, count in enumerate(blocks):
            planes = base_channels * 2**i
            layer = [Bottleneck(inplanes, planes, 1 if i == 0 else 2)]
            inplanes = planes * Bottleneck.expansion
            layer += [Bottleneck(inplanes, planes, 1) for _ in range(count - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
        self.out_channels = [base_channels * 2**i * Bottleneck.expansion for i in range(len(blocks))]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.max_pool2d(self.stem(x), 3, stride=2, padding=1)
        outs = []
        for i in range(len(self.out_channels)):
            x = getattr(self, f"layer{i + 1}")(x)
            outs.append(x)
        return outs


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: int = 256):
        super().__init__()
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1, norm=False, act=False) for c in in_channels)
        self.fpn_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, norm=False, act=False) for _ in in_channels
        )

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest"
            )
        return [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]


class _Upsample2x(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, size=(x.shape[2] * 2, x.shape[3] * 2), mode="bilinear", align_corners=False)


class FPNHead(nn.Module):
    def __init__(
        self,
        in_channels: int = 256,
        channels: int = 128,
        num_classes: int = len(CLASSES),
        strides: tuple[int, ...] = (4, 8, 16, 32),
    ):
        super().__init__()
        heads = []
        for stride in strides:
            length = max(1, int(math.log2(stride) - math.log2(strides[0])))
            modules: list[nn.Module] = []
            for k in range(length):
                modules.append(ConvModule(in_channels if k == 0 else channels, channels, 3, norm=True, act=True))
                if stride != strides[0]:
                    modules.append(_Upsample2x())
            heads.append(nn.Sequential(*modules))
        self.scale_heads = nn.ModuleList(heads)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        out = self.scale_heads[0](feats[0])
        for head, feat in zip(self.scale_heads[1:], feats[1:]):
            out = out + F.interpolate(head(feat), size=out.shape[2:], mode="bilinear", align_corners=False)
        return self.conv_seg(out)  # (dropout before it is the identity at inference)


class EasyPortraitFPN(nn.Module):
    """EasyPortrait's face-parsing network; ``forward`` gives logits [B,8,H/4,W/4]."""

    def __init__(self, num_classes: int = len(CLASSES)):
        super().__init__()
        self.backbone = ResNetV1c()
        self.neck = FPN(self.backbone.out_channels, 256)
        self.decode_head = FPNHead(256, 128, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode_head(self.neck(self.backbone(x)))

    @torch.no_grad()
    def predict(self, bgr: np.ndarray) -> np.ndarray:
        """Per-pixel class ids uint8 [H,W] of one BGR uint8 frame [H,W,3]."""
        device = next(self.parameters()).device
        rgb = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).to(device).permute(2, 0, 1).float()
        mean = torch.tensor(MEAN_RGB, device=device).view(3, 1, 1)
        std = torch.tensor(STD_RGB, device=device).view(3, 1, 1)
        logits = self((rgb - mean)[None] / std)
        logits = F.interpolate(logits, size=bgr.shape[:2], mode="bilinear", align_corners=False)
        return logits[0].argmax(0).to(torch.uint8).cpu().numpy()


def _torch_load_weights_only(path: Path) -> dict:
    import pickle

    safe: list = []
    try:  # mmcv's meta may hold numpy scalars (e.g. the best mIoU); allow exactly those types
        import numpy.dtypes

        safe = [np.dtype, *(getattr(numpy.dtypes, n) for n in dir(numpy.dtypes) if n.endswith("DType"))]
        core = getattr(np, "_core", None) or np.core
        safe.append(core.multiarray.scalar)
    except (ImportError, AttributeError):
        pass
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = " ".join(str(err).split())[:300]
        raise InstagError(
            f"{path} holds objects beyond tensors and numbers ({detail}); it is not loaded because unpickling them could "
            'run code. If you trust the file, save just its weights once with: python -c "import torch; '
            f"c = torch.load('{path}', weights_only=False); torch.save({{'state_dict': c['state_dict']}}, '{path}')\""
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise InstagError(
            f"cannot read {path} ({' '.join(str(err).split())[:200]}); download fpn-fp-512.pth again"
        ) from err


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The network weights of an mmcv checkpoint (``{'state_dict', 'meta', ...}``) or a bare state dict."""
    path = Path(path)
    ckpt = _torch_load_weights_only(path)
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise InstagError(f"{path} is not an mmcv checkpoint of tensors; download fpn-fp-512.pth again")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> EasyPortraitFPN:
    """Build the network and load ``fpn-fp-512.pth`` (default path from the weights registry)."""
    from instag.preprocess import weights

    found = weights.require("easyportrait", path)
    state = load_state_dict(found)
    model = EasyPortraitFPN()
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or wrong:
        what = f"missing {missing[:3]} ({len(missing)} in all)" if missing else f"shape mismatch {wrong[:3]}"
        raise InstagError(
            f"{found} is not EasyPortrait's FPN-ResNet50 face-parsing checkpoint: {what}; "
            f"{weights.where('easyportrait')}"
        )
    model.load_state_dict({k: state[k] for k in own if k in state}, strict=False)
    return model.eval().to(device)


def write_teeth_masks(layout, model: EasyPortraitFPN, *, force: bool = False, progress: bool = True) -> int:
    """Write ``teeth_mask/<i>.png`` (bool [H,W], class 7) for every ``ori_imgs/<i>.jpg``; returns the count."""
    import cv2
    from tqdm import tqdm

    from instag.data.maps import find, write_mask

    n = layout.num_frames()
    if n == 0:
        raise InstagError(f"no frames in {layout.ori_dir}; run the frame step of process.py first")
    done = 0
    for i in tqdm(range(n), desc="teeth masks (EasyPortrait)", disable=not progress):
        out = layout.teeth_mask(i)
        if find(out) is not None and not force:
            continue
        bgr = cv2.imread(str(layout.ori_image(i)))
        if bgr is None:
            raise InstagError(f"cannot read frame {layout.ori_image(i)}; re-run the frame step of process.py")
        write_mask(out, model.predict(bgr) == TEETH)
        done += 1
    return done


@dataclass
class TeethMaskConfig:
    """Teeth masks with EasyPortrait (optional upstream tool; needs fpn-fp-512.pth)."""

    path: str = field(metadata={"help": "processed dataset folder data/<ID>"})
    weights: str | None = field(
        default=None,
        metadata={
            "help": "EasyPortrait checkpoint (default data_utils/easyportrait/fpn-fp-512.pth)",
            "flags": ("--checkpoint",),
        },
    )
    device: str = field(default="auto", metadata={"help": "cuda, cpu or auto"})
    force: bool = field(default=False, metadata={"help": "overwrite existing teeth masks (teeth_mask/<i>.png)"})


def main(argv: list[str] | None = None) -> int:
    from instag.config import parse
    from instag.data.format import DatasetLayout
    from instag.preprocess.weights import positional_as_flag

    cfg = parse(TeethMaskConfig, positional_as_flag(argv, "path"), prog="create_teeth_mask.py")
    layout = DatasetLayout.of(cfg.path)
    if not layout.ori_dir.is_dir():
        raise InstagError(f"{layout.ori_dir} does not exist; run python data_utils/process.py {layout.video} first")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    model = load_model(cfg.weights, device)
    count = write_teeth_masks(layout, model, force=cfg.force)
    print(f"wrote {count} teeth masks to {layout.teeth_dir}")
    return 0
