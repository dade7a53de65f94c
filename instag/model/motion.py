"""Motion fields: universal face / mouth fields, the personalized field with its aligner, and the FM hook.

All fields read tri-plane features of a Gaussian's (query) position and condition on one
audio vector per frame. Frames are batched: positions ``[N,3]`` are shared by the ``B``
frames, audio is ``[B,32]`` and outputs are ``[B,N,*]``. Position features do not depend on
the frame, so they are computed once per call.

AU condition: the face fields read the AUs of :data:`instag.data.format.EXPRESSION_AUS` (AU45 last);
a field restored from a checkpoint of the six-AU era reads the six it was trained with and ignores
the others (:func:`conform_aus`), so old checkpoints keep working.

Face-Mouth hook (METHOD §2.6, fixed per §6 item 16): the mouth field is conditioned on the
k-th largest / smallest vertical displacement of the face Gaussians predicted by the
universal face field with the AU vector zeroed, at the (aligned, when an aligner is used)
query positions and scaled by the aligner's motion scale. :func:`face_mouth_hook` is the one
implementation; training and inference both call it, so they see the same feature.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instag.data.format import EXPRESSION_AUS, LEGACY_EXPRESSION_AUS
from instag.model.audio_encoder import AUDIO_DIM, AudioEncoder
from instag.model.triplane import TriPlaneEncoder

BOUND = 0.15
MOTION_SCALE = 0.01  # network units -> head units for position offsets
AU_DIM = len(EXPRESSION_AUS)
HOOK_K = 10


def mlp(dims: list[int]) -> nn.Sequential:
    """Bias-free Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if i < len(dims) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def face_encoder() -> TriPlaneEncoder:
    return TriPlaneEncoder(bound=BOUND, num_levels=12, base_resolution=16, finest_resolution=256 * BOUND)


def mouth_encoder() -> TriPlaneEncoder:
    return TriPlaneEncoder(bound=BOUND, num_levels=12, base_resolution=64, finest_resolution=384 * BOUND)


@dataclass
class Motion:
    """Per-frame Gaussian offsets. ``d_xyz [B,N,3]`` (head units), ``d_rot [B,N,4]`` (added to raw
    quaternions), ``d_scale [B,N,3]`` (added to raw scales) or None, ``d_opacity [B,N,1]`` or None
    (predicted, regularised, not applied), ``att_audio`` / ``att_eye`` ``[N]`` norms of the
    per-point attention (for regularisers) or None."""

    d_xyz: Tensor
    d_rot: Tensor | None = None
    d_scale: Tensor | None = None
    d_opacity: Tensor | None = None
    att_audio: Tensor | None = None
    att_eye: Tensor | None = None

    def deltas(self) -> list[Tensor]:
        return [t for t in (self.d_xyz, self.d_rot, self.d_opacity, self.d_scale) if t is not None]

    def added(self, other: Motion) -> Motion:
        """Sum of two motions (personalized residual on top of the universal one)."""

        def add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
            if a is None:
                return b
            return a if b is None else a + b

        return Motion(
            add(self.d_xyz, other.d_xyz),
            add(self.d_rot, other.d_rot),
            add(self.d_scale, other.d_scale),
            add(self.d_opacity, other.d_opacity),
            self.att_audio,
            self.att_eye,
        )


def expression_columns(au_dim: int) -> tuple[str, ...]:
    """The AUs, in order, of an ``au_dim``-wide AU condition (the current one or the six-AU legacy one)."""
    for columns in (EXPRESSION_AUS, LEGACY_EXPRESSION_AUS):
        if au_dim == len(columns):
            return columns
    raise ValueError(f"no AU layout is {au_dim} wide (known: {len(EXPRESSION_AUS)}, {len(LEGACY_EXPRESSION_AUS)})")


def conform_aus(au: Tensor, columns: tuple[str, ...]) -> Tensor:
    """AUs ``[..., D]`` in either known layout (by width) -> ``[..., len(columns)]`` in ``columns``' order;
    an AU the input lacks is 0 (neutral)."""
    have = expression_columns(au.shape[-1])
    if have == columns:
        return au
    out = au.new_zeros(*au.shape[:-1], len(columns))
    for j, name in enumerate(columns):
        if name in have:
            out[..., j] = au[..., have.index(name)]
    return out


def au_dim_of(state: dict[str, Tensor], prefix: str = "") -> int:
    """Width of the AU condition that a face field's state dict (keys under ``prefix``) was trained with."""
    weight = state.get(f"{prefix}expression.exp_net.0.weight")
    return AU_DIM if weight is None else int(weight.shape[1]) + 1


class _ExpressionBranch(nn.Module):
    """AU condition: ``e [B,D]`` -> per-point weighted ``[B,N,D]`` (AU45, the last, passes unencoded)."""

    def __init__(self, feat_dim: int, au_dim: int = AU_DIM):
        super().__init__()
        self.columns = expression_columns(au_dim)
        self.exp_net = mlp([au_dim - 1, 16, au_dim - 1])
        self.eye_att = mlp([feat_dim, 16, au_dim])

    def forward(self, h: Tensor, au: Tensor) -> tuple[Tensor, Tensor]:
        au = conform_aus(au, self.columns)
        enc = torch.cat([self.exp_net(au[:, :-1]), au[:, -1:]], dim=-1)  # [B,D]
        att = F.relu(self.eye_att(h))  # [N,D]
        return enc[:, None, :] * att[None], att


def _broadcast(h: Tensor, batch: int) -> Tensor:
    return h[None].expand(batch, *h.shape)


def _split_face_output(out: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return out[..., 0:3] * MOTION_SCALE, out[..., 3:7], out[..., 7:8], out[..., 8:11]


class UniversalFaceField(nn.Module):
    """Universal face motion field: position, audio and AUs -> (Δx, Δq, Δo, Δs) per Gaussian."""

    def __init__(self, item_shape: tuple[int, int], au_dim: int = AU_DIM):
        super().__init__()
        self.encoder = face_encoder()
        self.audio = AudioEncoder(item_shape)
        d = self.encoder.output_dim
        self.audio_att = mlp([d, 32, AUDIO_DIM])
        self.expression = _ExpressionBranch(d, au_dim)
        self.net = mlp([d + AUDIO_DIM + au_dim, 64, 64, 11])

    def use_au_dim(self, au_dim: int) -> None:
        """Rebuild the AU-dependent layers for an ``au_dim``-wide condition (before loading a checkpoint of that width)."""
        if au_dim == len(self.expression.columns):
            return
        ref = self.net[0].weight
        d = self.encoder.output_dim
        self.expression = _ExpressionBranch(d, au_dim).to(ref.device, ref.dtype)
        self.net = mlp([d + AUDIO_DIM + au_dim, 64, 64, 11]).to(ref.device, ref.dtype)

    def forward(self, xyz: Tensor, audio: Tensor, au: Tensor) -> Motion:
        """xyz ``[N,3]`` query positions, audio ``[B,32]`` (from ``self.audio``), au ``[B,AU_DIM]`` (or the
        legacy ``[B,6]``; see :func:`conform_aus`)."""
        h = self.encoder(xyz)
        att_a = self.audio_att(h)  # [N,32]
        a_w = audio[:, None, :] * att_a[None]
        e_w, att_e = self.expression(h, au)
        out = self.net(torch.cat([_broadcast(h, audio.shape[0]), a_w, e_w], dim=-1))
        d_xyz, d_rot, d_opa, d_scale = _split_face_output(out)
        return Motion(d_xyz, d_rot, d_scale, d_opa, att_a.norm(dim=-1), att_e.norm(dim=-1))


class UniversalMouthField(nn.Module):
    """Universal inside-mouth field: position, audio and the FM hook -> Δx (and an unused Δq)."""

    def __init__(self, item_shape: tuple[int, int]):
        super().__init__()
        self.encoder = mouth_encoder()
        self.audio = AudioEncoder(item_shape)
        d = self.encoder.output_dim
        self.net = mlp([d + AUDIO_DIM + 3, 32, 32, 7])
        self.gate = mlp([d + 3, 16, 16, 1])
        self.register_buffer("damping", torch.tensor([0.2, 1.0, 0.2]), persistent=False)

    def forward(self, xyz: Tensor, audio: Tensor, hook: Tensor) -> Motion:
        """xyz ``[N,3]``, audio ``[B,32]``, hook ``[B,3]`` (see :func:`face_mouth_hook`)."""
        batch = audio.shape[0]
        h = _broadcast(self.encoder(xyz), batch)
        hook_n = hook[:, None, :].expand(batch, h.shape[1], 3)
        out = self.net(torch.cat([h, _broadcast_vec(audio, h.shape[1]), hook_n], dim=-1))
        gate = 2.0 * torch.sigmoid(self.gate(torch.cat([h, hook_n], dim=-1)))
        d_xyz = out[..., 0:3] * MOTION_SCALE * self.damping * gate
        return Motion(d_xyz, out[..., 3:7])


def _broadcast_vec(v: Tensor, n: int) -> Tensor:
    return v[:, None, :].expand(v.shape[0], n, v.shape[-1])


class PersonalizedField(nn.Module):
    """Per-identity field: a deformation head (pre-training residual) and the motion aligner.

    ``kind`` is ``"face"`` (AU branch, 11 outputs, hidden 32) or ``"mouth"`` (7 outputs,
    hidden 16). ``shared_audio`` re-uses a universal field's audio encoder; ``au_dim`` is the width of
    the face variant's AU condition (:func:`expression_columns`).
    """

    def __init__(self, kind: str, item_shape: tuple[int, int], shared_audio: AudioEncoder | None = None,
                 au_dim: int = AU_DIM):
        super().__init__()
        if kind not in ("face", "mouth"):
            raise ValueError(f"kind must be face or mouth, got {kind!r}")
        self.kind = kind
        self.encoder = face_encoder()
        self._shared_audio = shared_audio is not None
        self.audio = shared_audio if shared_audio is not None else AudioEncoder(item_shape)
        d = self.encoder.output_dim
        hidden = 32 if kind == "face" else 16
        self.audio_att = mlp([d, 32, AUDIO_DIM])
        if kind == "face":
            self.expression = _ExpressionBranch(d, au_dim)
            self.deform = mlp([d + AUDIO_DIM + au_dim, hidden, hidden, 11])
        else:
            self.deform = mlp([d + AUDIO_DIM, hidden, hidden, 7])
        self.align_net = mlp([d, hidden, 6])

    def own_parameters(self) -> list[nn.Parameter]:
        """Parameters owned by this field (a shared audio encoder is excluded)."""
        shared = {id(p) for p in self.audio.parameters()} if self._shared_audio else set()
        return [p for p in self.parameters() if id(p) not in shared]

    def align(self, xyz: Tensor) -> tuple[Tensor, Tensor]:
        """Motion aligner: canonical xyz ``[N,3]`` -> query offset ``[N,3]`` and motion scale ``[N,3]`` in (0.75, 1.25)."""
        out = self.align_net(self.encoder(xyz))
        return out[:, 0:3] * MOTION_SCALE, 1.0 + 0.25 * torch.tanh(out[:, 3:6] / 5.0)

    def forward(self, xyz: Tensor, audio: Tensor, au: Tensor | None = None) -> Motion:
        """Deformation head at canonical xyz ``[N,3]`` for audio ``[B,32]`` (from ``self.audio``)."""
        h = self.encoder(xyz)
        att_a = self.audio_att(h)
        a_w = audio[:, None, :] * att_a[None]
        parts = [_broadcast(h, audio.shape[0]), a_w]
        att_e = None
        if self.kind == "face":
            if au is None:
                au = audio.new_zeros(audio.shape[0], AU_DIM)
            e_w, att_e = self.expression(h, au)
            parts.append(e_w)
        out = self.deform(torch.cat(parts, dim=-1))
        if self.kind == "face":
            d_xyz, d_rot, d_opa, d_scale = _split_face_output(out)
            return Motion(d_xyz, d_rot, d_scale, d_opa, att_a.norm(dim=-1), att_e.norm(dim=-1))
        return Motion(out[..., 0:3] * MOTION_SCALE, out[..., 3:7], att_audio=att_a.norm(dim=-1))


def hook_from_displacement(d_y: Tensor, k: int = HOOK_K) -> Tensor:
    """Vertical face displacements ``[B,N]`` -> hook ``[B,3]`` = 100·(k-th max, k-th min, their gap)."""
    k = max(1, min(k, d_y.shape[-1]))
    top = d_y.topk(k, dim=-1).values[..., -1]
    bottom = -((-d_y).topk(k, dim=-1).values[..., -1])
    return 100.0 * torch.stack([top, bottom, top - bottom], dim=-1)


def face_mouth_hook(
    face_field: UniversalFaceField,
    face_query: Tensor,
    face_audio: Tensor,
    motion_scale: Tensor | None = None,
    k: int = HOOK_K,
) -> Tensor:
    """The FM hook ``[B,3]``, identical in training and inference.

    face_query ``[N,3]``: face Gaussian query positions (canonical + aligner offset when aligned);
    face_audio ``[B,32]``: the face field's audio vector; motion_scale ``[N,3]``: the face
    aligner's motion scale or None. The universal face field is evaluated with AUs zeroed
    (blinks must not move the hook) and without gradient.
    """
    with torch.no_grad():
        au = face_audio.new_zeros(face_audio.shape[0], AU_DIM)
        d_y = face_field(face_query, face_audio, au).d_xyz[..., 1]
        if motion_scale is not None:
            d_y = d_y * motion_scale[None, :, 1]
        return hook_from_displacement(d_y, k)
