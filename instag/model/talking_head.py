"""The talking head: face cloud + inside-mouth cloud, universal motion fields and per-identity fields.

Per frame (METHOD §2.8, hook per :mod:`instag.model.motion`):

- face: query ``x_q = x + p_xyz`` (aligner, adaptation) ; ``Δ = UMF(x_q, audio, au)`` (+ the
  personalized residual in pre-training) ; ``Δx ← Δx ⊙ p_scale`` ; μ = x + Δx,
  scale = softplus(s + Δs), rotation = normalise(q + Δq), opacity static;
- mouth: μ = x + UMF_mouth(x + p_xyz, audio, hook) (+ residual in pre-training), other
  parameters canonical;
- image = face + (1 − α_face)·(mouth + (1 − α̃_mouth)·background), α̃ optionally dilated.

Checkpoint layout (one directory): ``<name>.safetensors`` (all tensors, prefixed ``face.``,
``mouth.``, ``face_field.``, ``mouth_field.``, ``face_personal.``, ``mouth_personal.``) beside
``<name>.json`` (format, audio extractor, item shape, SH degree, stage, iteration, config).
:meth:`TalkingHead.load` reads ``chkpnt_fuse_latest`` of a model directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instag.audio.registry import check_feature_meta, feature_definition
from instag.errors import InstagError
from instag.model.gaussians import GaussianCloud
from instag.model.motion import (
    HOOK_K,
    Motion,
    PersonalizedField,
    UniversalFaceField,
    UniversalMouthField,
    au_dim_of,
    face_mouth_hook,
)
from instag.render import Camera, rasterize, rasterize_batch

CHECKPOINT_FORMAT = "instag-talking-head"
CHECKPOINT_VERSION = 1
FUSED = "chkpnt_fuse_latest"
MOUTH_INIT_SHRINK = 0.5
MOUTH_INIT_SHIFT_Y = -0.05
DILATE_KERNEL = 13


@dataclass
class Deformed:
    """Per-frame Gaussian parameters of one cloud for B frames (means ``[B,N,3]``, quats ``[B,N,4]``,
    scales ``[B,N,3]`` activated, opacities ``[N]``, colors ``[N,K,3]`` SH) and the motion that made them."""

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    colors: Tensor
    sh_degree: int
    motion: Motion
    personal: Motion | None = None
    align_offset: Tensor | None = None

    def frame(self, b: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.means[b], self.quats[b], self.scales[b], self.opacities, self.colors


def _mouth_from_face(cloud: GaussianCloud) -> None:
    with torch.no_grad():
        cloud.xyz.mul_(MOUTH_INIT_SHRINK)
        cloud.xyz[:, 1] += MOUTH_INIT_SHIFT_Y


class TalkingHead(nn.Module):
    """One identity's head. ``face_field`` / ``mouth_field`` may be shared between heads (pre-training)."""

    def __init__(
        self,
        face: GaussianCloud,
        mouth: GaussianCloud,
        face_field: UniversalFaceField,
        mouth_field: UniversalMouthField,
        face_personal: PersonalizedField,
        mouth_personal: PersonalizedField,
        audio_extractor: str,
        item_shape: tuple[int, int],
        share_audio: bool = False,
    ):
        super().__init__()
        self.face = face
        self.mouth = mouth
        self.face_field = face_field
        self.mouth_field = mouth_field
        self.face_personal = face_personal
        self.mouth_personal = mouth_personal
        self.audio_extractor = audio_extractor
        self.item_shape = (int(item_shape[0]), int(item_shape[1]))
        self.share_audio = share_audio
        self.align = True
        self.hook_k = HOOK_K

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(
        cls,
        audio_extractor: str,
        item_shape: tuple[int, int],
        face_init: int = 2000,
        mouth_init: int = 5000,
        sh_degree: int = 1,
        face_field: UniversalFaceField | None = None,
        mouth_field: UniversalMouthField | None = None,
        share_audio: bool = False,
        generator: torch.Generator | None = None,
    ) -> TalkingHead:
        """A fresh head: random clouds (mouth shrunk and moved below the head centre), fresh
        personalized fields, and the given (or fresh) universal fields."""
        face_field = face_field if face_field is not None else UniversalFaceField(item_shape)
        mouth_field = mouth_field if mouth_field is not None else UniversalMouthField(item_shape)
        face = GaussianCloud.random_init(face_init, box=0.1, sh_degree=sh_degree, generator=generator)
        mouth = GaussianCloud.random_init(mouth_init, box=0.1, sh_degree=sh_degree, generator=generator)
        _mouth_from_face(mouth)
        face_personal = PersonalizedField("face", item_shape, face_field.audio if share_audio else None)
        mouth_personal = PersonalizedField("mouth", item_shape, mouth_field.audio if share_audio else None)
        return cls(face, mouth, face_field, mouth_field, face_personal, mouth_personal, audio_extractor, item_shape, share_audio)

    @property
    def device(self) -> torch.device:
        return self.face.xyz.device

    # ------------------------------------------------------------------ motion
    def face_aligner(self, align: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Face query positions ``[N,3]``, aligner offset ``[N,3]`` and motion scale ``[N,3]`` (None without aligner)."""
        xyz = self.face.xyz
        if not align:
            return xyz, None, None
        p_xyz, p_scale = self.face_personal.align(xyz)
        return xyz + p_xyz, p_xyz, p_scale

    def deform_face(self, audio: Tensor, au: Tensor, *, align: bool, personal_audio: Tensor | None = None) -> Deformed:
        """Face cloud for B frames; ``audio`` ``[B,32]`` from ``face_field.audio``, ``au`` ``[B,AU_DIM]``
        (:data:`instag.data.format.EXPRESSION_AUS`);
        ``personal_audio`` ``[B,32]`` (from ``face_personal.audio``) adds the personalized residual."""
        cloud = self.face
        query, p_xyz, p_scale = self.face_aligner(align)
        motion = self.face_field(query, audio, au)
        personal = None
        if personal_audio is not None:
            personal = self.face_personal(cloud.xyz, personal_audio, au)
            motion = motion.added(personal)
        d_xyz = motion.d_xyz * p_scale[None] if p_scale is not None else motion.d_xyz
        motion = Motion(d_xyz, motion.d_rot, motion.d_scale, motion.d_opacity, motion.att_audio, motion.att_eye)
        means = cloud.xyz[None] + d_xyz
        quats = F.normalize(cloud.rotation_raw[None] + motion.d_rot, dim=-1)
        scales = F.softplus(cloud.scale_raw[None] + motion.d_scale)
        return Deformed(means, quats, scales, cloud.opacities, cloud.sh, cloud.active_sh_degree, motion, personal, p_xyz)

    def hook(self, face_audio: Tensor, align: bool) -> Tensor:
        """FM hook ``[B,3]`` for face audio vectors ``[B,32]`` (same in training and inference)."""
        with torch.no_grad():
            query, _, p_scale = self.face_aligner(align)
        return face_mouth_hook(self.face_field, query.detach(), face_audio.detach(), None if p_scale is None else p_scale.detach(), self.hook_k)

    def deform_mouth(self, audio: Tensor, hook: Tensor, *, align: bool, personal_audio: Tensor | None = None) -> Deformed:
        """Mouth cloud for B frames; ``audio`` ``[B,32]`` from ``mouth_field.audio``, ``hook`` ``[B,3]``;
        ``personal_audio`` ``[B,32]`` (from ``mouth_personal.audio``) adds the personalized residual."""
        cloud = self.mouth
        xyz = cloud.xyz
        p_xyz = None
        query = xyz
        if align:
            p_xyz, _ = self.mouth_personal.align(xyz)
            query = xyz + p_xyz
        motion = self.mouth_field(query, audio, hook)
        personal = None
        if personal_audio is not None:
            personal = self.mouth_personal(xyz, personal_audio)
            motion = Motion(motion.d_xyz + personal.d_xyz, motion.d_rot)
        batch = audio.shape[0]
        means = xyz[None] + motion.d_xyz
        quats = cloud.rotations[None].expand(batch, -1, -1)
        scales = cloud.scales[None].expand(batch, -1, -1)
        return Deformed(means, quats, scales, cloud.opacities, cloud.sh, cloud.active_sh_degree, motion, personal, p_xyz)

    # ------------------------------------------------------------------ rendering
    def _check_window(self, window: Tensor) -> None:
        if tuple(window.shape[-2:]) != self.item_shape:
            raise InstagError(
                f"audio items have shape {tuple(window.shape[-2:])} but this model was trained with the "
                f"{self.audio_extractor!r} extractor (items {self.item_shape}); pass --audio_extractor {self.audio_extractor}"
            )

    @torch.no_grad()
    def render_frames(
        self,
        cameras: list[Camera],
        audio_windows: Tensor,
        au_exps: Tensor,
        backgrounds: Tensor,
        dilate: bool = False,
    ) -> dict[str, Tensor]:
        """Render B frames at once: audio_windows ``[B,8,C,W]``, au_exps ``[B,AU_DIM]``, backgrounds
        ``[B,3,H,W]`` in [0,1] -> dict(image ``[B,3,H,W]``, face_alpha, mouth_alpha ``[B,1,H,W]``, lip_gap ``[B]``:
        the FM hook's gap, how far the model parts the lips)."""
        self._check_window(audio_windows)
        dev = self.device
        audio_windows = audio_windows.to(dev, torch.float32)
        au_exps = au_exps.to(dev, torch.float32)
        backgrounds = backgrounds.to(dev, torch.float32)
        cams = [c.to(dev) for c in cameras]
        face_audio = self.face_field.audio(audio_windows)
        face = self.deform_face(face_audio, au_exps, align=self.align)
        hook = self.hook(face_audio, self.align)  # [B,3]; its gap is also returned: the model's own lip opening
        mouth = self.deform_mouth(self.mouth_field.audio(audio_windows), hook, align=self.align)
        batch = audio_windows.shape[0]

        def raster(d: Deformed):
            return rasterize_batch(
                d.means, d.quats, d.scales, d.opacities[None].expand(batch, -1), d.colors, cams, sh_degree=d.sh_degree,
                compute_normals=False,
            )

        rf, rm = raster(face), raster(mouth)
        mouth_alpha = rm.alpha
        if dilate:
            mouth_alpha = F.max_pool2d(mouth_alpha, DILATE_KERNEL, stride=1, padding=DILATE_KERNEL // 2)
        mouth_img = rm.color + (1 - mouth_alpha) * backgrounds
        image = rf.color + (1 - rf.alpha) * mouth_img
        return {"image": image.clamp(0, 1), "face_alpha": rf.alpha, "mouth_alpha": rm.alpha, "lip_gap": hook[:, 2]}

    @torch.no_grad()
    def au_response(self, rest: Tensor, targets: dict[str, float], camera: Camera) -> dict[str, float]:
        """How far each AU of ``targets`` (name -> value) moves the face on screen when it goes there from ``rest``
        (the AU condition ``[AU_DIM]`` in :data:`instag.data.format.EXPRESSION_AUS` order), silence driving the
        audio: the largest displacement of a visible face Gaussian, in pixels of ``camera``. An AU that the face
        field's condition lacks (a model of the six-AU era) moves nothing: 0."""
        from instag.data.format import EXPRESSION_AUS

        dev = self.device
        names = list(targets)
        au = rest.to(dev, torch.float32)[None].repeat(len(names) + 1, 1)
        for k, name in enumerate(names, 1):
            au[k, EXPRESSION_AUS.index(name)] = float(targets[name])
        silence = self.face_field.audio(torch.zeros(1, 8, *self.item_shape, device=dev))
        means = self.deform_face(silence.expand(len(names) + 1, -1), au, align=self.align).means  # [B,N,3]
        w2c = camera.world_to_camera.to(dev, torch.float32)
        depth = (means[0] @ w2c[:3, :3].T + w2c[:3, 3])[:, 2].clamp_min(camera.near)  # [N]
        visible = self.face.opacities > 0.05
        shift = (means[1:] - means[:1]).norm(dim=-1) * (max(camera.fx, camera.fy) / depth)[None]  # [B-1,N] px
        shift = torch.where(visible[None], shift, torch.zeros_like(shift))
        known = self.face_field.expression.columns
        return {name: float(shift[k].max()) if name in known and shift.shape[1] else 0.0 for k, name in enumerate(names)}

    @torch.no_grad()
    def render_frame(
        self, camera: Camera, audio_window: Tensor, au_exp: Tensor, background: Tensor, dilate: bool = False
    ) -> dict[str, Tensor]:
        """One frame: audio_window ``[8,C,W]``, au_exp ``[AU_DIM]``, background ``[3,H,W]`` ->
        dict(image ``[3,H,W]``, face_alpha ``[1,H,W]``, mouth_alpha ``[1,H,W]``)."""
        out = self.render_frames([camera], audio_window[None], au_exp[None], background[None], dilate)
        return {k: v[0] for k, v in out.items()}

    def render_cloud(self, d: Deformed, b: int, camera: Camera, background: Tensor | None = None, compute_normals: bool = False):
        """Rasterize frame ``b`` of a deformed cloud (training path, with gradients)."""
        means, quats, scales, opac, colors = d.frame(b)
        return rasterize(
            means, quats, scales, opac, colors, camera, sh_degree=d.sh_degree, background=background, compute_normals=compute_normals
        )

    # ------------------------------------------------------------------ checkpoint
    def state_tensors(self) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for prefix, cloud in (("face.", self.face), ("mouth.", self.mouth)):
            out.update({prefix + k: v for k, v in cloud.state_tensors().items()})
        for prefix, module in (
            ("face_field.", self.face_field),
            ("mouth_field.", self.mouth_field),
            ("face_personal.", self.face_personal),
            ("mouth_personal.", self.mouth_personal),
        ):
            out.update({prefix + k: v for k, v in module.state_dict().items()})
        return {k: v.detach().contiguous().cpu() for k, v in out.items()}

    def meta(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "audio_extractor": self.audio_extractor,
            "audio_features": feature_definition(self.audio_extractor),
            "item_shape": list(self.item_shape),
            "share_audio": self.share_audio,
            "sh_degree": self.face.max_sh_degree,
            "align": self.align,
        }

    def save(self, model_dir: str | Path, name: str = FUSED, extra: dict | None = None) -> Path:
        """Write ``<model_dir>/<name>.safetensors`` and ``.json`` atomically; returns the tensor file."""
        from instag.io.atomic import write_json

        model_dir = Path(model_dir)
        path = model_dir / f"{name}.safetensors"
        save_tensors(path, self.state_tensors())
        write_json(model_dir / f"{name}.json", {**self.meta(), **(extra or {})})
        return path

    @classmethod
    def from_state(cls, tensors: dict[str, Tensor], meta: dict) -> TalkingHead:
        item_shape = tuple(meta["item_shape"])
        share = bool(meta.get("share_audio", False))

        def sub(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        face = GaussianCloud.from_state_tensors(sub("face."))
        mouth = GaussianCloud.from_state_tensors(sub("mouth."))
        # a checkpoint of the six-AU era keeps its six (the other AUs are ignored: motion.conform_aus)
        face_field = UniversalFaceField(item_shape, au_dim_of(tensors, "face_field."))
        mouth_field = UniversalMouthField(item_shape)
        face_field.load_state_dict(sub("face_field."))
        mouth_field.load_state_dict(sub("mouth_field."))
        face_personal = PersonalizedField("face", item_shape, face_field.audio if share else None,
                                          au_dim_of(tensors, "face_personal."))
        mouth_personal = PersonalizedField("mouth", item_shape, mouth_field.audio if share else None)
        face_personal.load_state_dict(sub("face_personal."))
        mouth_personal.load_state_dict(sub("mouth_personal."))
        head = cls(face, mouth, face_field, mouth_field, face_personal, mouth_personal, meta["audio_extractor"], item_shape, share)
        head.align = bool(meta.get("align", True))
        return head

    @classmethod
    def load(cls, model_dir: str | Path, device: str | torch.device | None = None, name: str = FUSED,
             source: str | Path | None = None) -> TalkingHead:
        """The fused head of ``model_dir`` (``chkpnt_fuse_latest``), on ``device`` (default: CUDA if available).

        With ``source`` (the processed clip it will render with) a model adapted on another clip is refused
        (see :func:`check_source_clip`)."""
        from instag.io.checks import check_type

        model_dir = Path(model_dir)
        path = model_dir / f"{name}.safetensors"
        if not path.exists():
            if source is not None:
                check_not_swapped(source, model_dir)
            raise InstagError(f"no trained model at {path}; adapt one first: {adapt_command(model_dir, source)}")
        if source is not None:  # before check_source_clip can say anything about it
            from instag.data.format import DatasetLayout

            DatasetLayout.of(source).require()
        tensors, meta = load_tensors(path)
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise InstagError(f"{path} is not an instag talking-head checkpoint (format {meta.get('format')!r})")
        meta_path, hint = path.with_suffix(".json"), f"adapt it again: {adapt_command(model_dir, source, meta)}"
        check_type(meta_path, meta.get("audio_extractor"), "audio_extractor", str, hint)
        item_shape = check_type(meta_path, meta.get("item_shape"), "item_shape", list, hint)
        if len(item_shape) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in item_shape):
            raise InstagError(f"{meta_path}: item_shape is {item_shape!r:.60}, not two positive integers; {hint}")
        for key in ("share_audio", "align"):
            if key in meta:
                check_type(meta_path, meta[key], key, bool, hint)
        for key, tensor in tensors.items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                bad = int((~torch.isfinite(tensor)).sum())
                raise InstagError(f"{path}: {key} holds {bad} NaN or infinite values of {tensor.numel()}; the checkpoint "
                                  f"is damaged or its training diverged; {hint}")
        check_feature_meta(meta, meta_path, "re-run pre-training (bash scripts/pretrain_con.sh data/pretrain "
                                            f"output/pretrain_model 0) and adaptation (instag adapt -S data/<ID> -M {model_dir})")
        if source is not None:
            check_source_clip(meta_path, meta, source)
        try:
            head = cls.from_state(tensors, meta)
        except (RuntimeError, KeyError, ValueError) as err:
            raise InstagError(
                f"{path} does not fit this version's model ({' '.join(str(err).split())[:200]}); {hint}"
            ) from err
        dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return head.to(dev).eval()


def save_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    from safetensors.torch import save_file

    from instag.io.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: Path) -> tuple[dict[str, Tensor], dict]:
    """Tensors of ``path`` (.safetensors) and the JSON beside it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta_path = path.with_suffix(".json")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise InstagError(f"cannot read checkpoint {path} ({err}); it is corrupt or truncated, re-run the stage") from err
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InstagError(f"cannot read {meta_path} ({err}); the checkpoint's config is missing, re-run the stage") from err
    if not isinstance(meta, dict):
        raise InstagError(f"{meta_path} holds {type(meta).__name__} {meta!r:.40}, not the checkpoint's config (an object); "
                          "re-run the stage")
    return tensors, meta


def source_clip(root: str | Path) -> dict:
    """What a checkpoint records of the processed clip it was trained on: its folder and the content
    fingerprint of the video it was processed from (``meta.json``; None for clips made by other tools)."""
    from instag.data.format import DatasetLayout

    fingerprint = None
    try:
        source = json.loads(DatasetLayout.of(root).meta.read_text(encoding="utf-8")).get("source")
        fingerprint = source.get("fingerprint") if isinstance(source, dict) else None
    except (OSError, ValueError, AttributeError):
        pass
    return {"path": str(Path(root).resolve()), "fingerprint": fingerprint if isinstance(fingerprint, str) else None}


def adapt_command(model_dir: str | Path, source: str | Path | None = None, meta: dict | None = None) -> str:
    """The command that adapts the model of ``model_dir``, as the README's recipe does: on ``source`` (or the clip
    ``meta`` records), from the pre-training ``meta`` records when that folder is still there."""
    meta = meta if isinstance(meta, dict) else {}
    clip = source if source is not None else meta.get("source_path")
    command = f"instag adapt -S {clip if isinstance(clip, (str, Path)) else 'data/<ID>'} -M {model_dir}"
    pretrain = meta.get("pretrain_path")
    if isinstance(pretrain, str) and Path(pretrain).exists():
        command += f" --pretrain_path {pretrain}"
    return command


def is_model_folder(folder: str | Path) -> bool:
    return (Path(folder) / f"{FUSED}.safetensors").is_file()


def check_not_swapped(source: str | Path, model_dir: str | Path) -> None:
    """Refuse -S and -M given the wrong way round: ``model_dir`` a processed clip and ``source`` a model folder."""
    from instag.data.format import DatasetLayout

    if DatasetLayout.of(model_dir).transforms("train").exists() and is_model_folder(source):
        raise InstagError(f"-S {source} is a trained model and -M {model_dir} a processed clip: they are swapped; give "
                          f"-S {model_dir} -M {source}")


def models_trained_on(root: str | Path, fingerprint: str | None, searched: list[Path]) -> list[Path]:
    """The model folders directly under each of ``searched`` (e.g. ``output/``) whose checkpoints record
    (:func:`source_clip`) that they were trained on the clip in ``root`` while it held the video of ``fingerprint``
    (any video, for a record without a fingerprint)."""
    here = str(Path(root).resolve())
    found = []
    for parent in dict.fromkeys(p.resolve() for p in searched if p.is_dir()):
        for record in sorted(parent.glob("*/chkpnt_*_latest.json")):
            try:
                clip = json.loads(record.read_text(encoding="utf-8")).get("source_clip")
            except (OSError, ValueError, AttributeError):
                continue
            if not isinstance(clip, dict) or clip.get("path") != here:
                continue
            if clip.get("fingerprint") in (None, fingerprint) and record.parent not in found:
                found.append(record.parent)
    return found


def check_source_clip(meta_path: Path, meta: dict, root: str | Path) -> None:
    """Refuse to render a model with a clip other than the one it was adapted on: the video fingerprint recorded
    in ``meta`` (``source_clip``) differs from ``root``'s. Without two fingerprints to compare (a model or a clip
    from before they were recorded, or a clip made by other tools) a model adapted in another folder is rendered,
    with a note on stderr."""
    import sys

    recorded = meta.get("source_clip")
    recorded = recorded if isinstance(recorded, dict) else {"path": meta.get("source_path")}
    current = source_clip(root)
    was, now, old = recorded.get("fingerprint"), current["fingerprint"], recorded.get("path")
    if isinstance(was, str) and now is not None:
        if was != now:
            raise InstagError(f"{meta_path}: this model was adapted on {old}, whose video is not the one {root} was "
                              f"processed from; render it with -S {old}, or adapt a model on {root}")
    elif isinstance(old, str) and Path(old).resolve() != Path(current["path"]):
        print(f"instag: note: {meta_path.parent} was adapted on {old}, not {root}; rendering it with {root}'s cameras "
              "and backgrounds", file=sys.stderr)
