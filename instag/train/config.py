"""Typed stage configuration: one :class:`StageConfig` drives the engine for every stage.

A stage is ``(stage, mode)`` with stage in face | mouth | fuse and mode in pretrain | adapt.
:func:`stage_config` returns upstream's recipe (METHOD §3) for a stage; every iteration
threshold in it is a fraction of the run so that ``iterations`` shortens or lengthens a run
with its schedule intact (upstream's 10 000-iteration face adaptation with ``iterations=4000``
warms up for 1 200 iterations instead of 3 000). Densification keeps a 100-step rhythm down to 1 000
iterations; a shorter run densifies in as many rounds as a 1 000-iteration one, closer together, down to
100 iterations (fewer keep the initial clouds, and say so).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from instag.errors import InstagError

STAGES = ("face", "mouth", "fuse")
MODES = ("pretrain", "adapt")

# Weight of the landmark-guided lip motion loss in the face stages (not upstream's: see losses.lip_motion_loss).
# Adaptation, measured on the H100 with the default-recipe pre-training, before the opacity-reset fix
# (bench/results/training_before_reset_fix.json):
# dfrf_cnn2_25fps held-out mouth-opening correlation, seeds 0/1/2 at 0.05 -> 0.32 / -0.17 / -0.11, seeds 1/2 at
# 0.5 -> 0.46 / 0.38, seed 1 at 2.0 -> 0.28 (PSNR -0.7 dB); on its own training frames seed 1 goes 0.17 -> 0.78
# from 0.05 to 0.5 (at 0.05 the mouth was not fitted even where it was seen); mimictalk_german_20s 0.44 -> 0.48.
LIP_MOTION_PRETRAIN = 0.01
LIP_MOTION_ADAPT = 0.5

# Opacity learning rate of the fuse stage (face over mouth against the whole frame). At 0.001 it could not close
# what the face and mouth stages left see-through; at 0.05 (the other stages' rate) held-out PSNR rose on all four
# H100 runs with the default-recipe pre-training (dfrf_cnn2_25fps seeds 1/2: 27.80 -> 28.03, 28.11 -> 28.38;
# mimictalk_german_20s seeds 0/1: 30.61 -> 30.76, 31.48 -> 31.65), mouth-opening correlation within seed noise.
FUSE_OPACITY_LR = 0.05

# Densification threshold of the face stage in few-shot adaptation (upstream: 0.0005, kept for --long, where it was
# not measured). Measured on the H100 with the default-recipe pre-training (bench/results/training.json): upstream's
# value ends with ~4 000 face Gaussians that blur hair and skin even on the training frames; 0.0002 ends with
# ~14 000: mimictalk_german_20s seed 1 PSNR 31.65 -> 32.29, SSIM 0.936 -> 0.944, dfrf_cnn2_25fps seed 1
# 28.03 -> 28.13, 0.926 -> 0.931; 0.0001 (~30 000) 32.42 / 0.947 and 27.99 / 0.932.
FACE_ADAPT_DENSIFY_GRAD = 0.0002

# Runs shorter than SHORT_RUN densify on a proportionally shrunk rhythm (see stage_config); below MIN_DENSIFY_RUN a
# round would gather its gradient statistics over fewer than 10 views, and the clouds are kept as initialised.
SHORT_RUN = 1000
MIN_DENSIFY_RUN = 100

# Upstream iteration counts per (stage, mode); pre-training counts are global (all identities).
UPSTREAM_ITERATIONS = {
    ("face", "pretrain"): 150_000,
    ("mouth", "pretrain"): 150_000,
    ("face", "adapt"): 10_000,
    ("mouth", "adapt"): 10_000,
    ("fuse", "adapt"): 2_000,
}


@dataclass
class StageConfig:
    stage: str
    mode: str
    iterations: int
    long: bool = False
    sh_degree: int = 1
    init_num: int = 2000
    # schedule, as iteration numbers (already scaled to ``iterations``)
    warmup: int = 0  # pretrain: static clouds; adapt: low universal LR and curriculum phase 1
    static_warmup: bool = False  # no motion during warm-up (pre-training)
    align_from: int = 0  # adapt: the aligner is used for it > align_from
    curriculum_end: int = 0
    select_interval: int = 10
    densify_from: int = 500
    densify_until: int = 0
    densify_interval: int = 100
    densify_grad_threshold: float = 0.0002
    opacity_reset_interval: int = 0  # 0 = never
    prune_big_from: int = 3000
    sh_up_interval: int = 1000
    hair_from: int = 0
    hair_until: int = 1 << 30
    hair_every: int = 7  # hair is supervised on one iteration in hair_every
    late_from: int = 1 << 30  # adapt face: lips blanked, mouth mask eroded
    priors_from: int = 1 << 30
    freeze_from: int = 1 << 30  # adapt mouth: only colours train afterwards, black background
    green_reset_from: int = 0
    # learning rates
    position_lr_init: float = 1.6e-4
    position_lr_final: float = 1.6e-6
    position_lr_steps: int = 45_000
    feature_lr: float = 2.5e-3
    opacity_lr: float = 0.05
    scaling_lr: float = 3e-3
    rotation_lr: float = 1e-3
    grid_lr: float = 5e-3
    mlp_lr: float = 5e-4
    att_lr: float = 2.5e-3
    grid_weight_decay: float = 0.01
    personal_grid_lr: float = 1e-3
    personal_mlp_lr: float = 1e-4
    personal_align_lr: float = 5e-5
    personal_att_lr: float = 5e-4
    # losses
    lambda_dssim: float = 0.2
    motion_reg: float = 1e-5
    align_reg: float = 1e-5
    alpha_reg: float = 1e-3
    lips_att_reg: float = 5e-3
    hair_att_reg: float = 1e-4
    contrast: float = 1.0
    contrast_others: int = 4
    normal_prior: float = 0.01
    depth_prior: float = 0.01
    lip_aux: float = 0.0
    lip_motion: float = 0.0  # face stage: landmark-guided lip motion (losses.lip_motion_loss)
    lip_motion_radius: float = 0.006  # head units around the tracked lip landmarks
    # patch LPIPS (used only when its weights are on disk: instag.metrics.lpips)
    lpips: float = 0.0
    lpips_from: int = 1 << 30
    lpips_patch: tuple[int, int] = (32, 42)  # tile size drawn per iteration in [lo, hi]
    # pruning
    green_prune: bool = True
    z_prune: bool = False
    z_prune_below: float = -0.07
    # EMA of the universal field (pre-training)
    ema_decay: float = 0.995
    train_universal: bool = True
    note: str = ""  # what this recipe leaves out, said when the stage starts

    def resets_opacity(self, it: int) -> bool:
        """Whether step ``it`` resets the cloud's opacities.

        Only while the cloud can still relearn them, with ``densify_interval`` supervised steps to spare:
        before the end of densification (upstream: ``iteration < densify_until_iter``), before the late face
        phase (the lips are no longer supervised there) and before the mouth's geometry freezes (opacity
        stops training). A reset later than that leaves the cloud at 1 % opacity for good; before this rule,
        adaptation's default schedule reset the mouth on its freeze step (the inside-mouth cloud ended
        invisible) and the face in its late phase (a see-through hole over lips and chin: median opacity 0.27
        in the lips box of a dfrf_cnn2_25fps model, 0.76 elsewhere).
        """
        every = self.opacity_reset_interval
        last = min(self.densify_until, self.late_from, self.freeze_from) - self.densify_interval  # room to recover
        return bool(every) and it % every == 0 and it < last

    def replace(self, **kw) -> StageConfig:
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def stage_list(text: str, allowed: tuple[str, ...]) -> list[str]:
    """The stages named in a ``--stages`` comma list (``"face,mouth"``); a name not in ``allowed`` is refused."""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise InstagError(f"--stages {text!r}: give a comma list of {', '.join(allowed)}")
    return names


def stage_config(stage: str, mode: str, iterations: int | None = None, long: bool = False, **overrides) -> StageConfig:
    """Upstream's recipe for ``(stage, mode)`` with its schedule scaled to ``iterations``."""
    if stage not in STAGES or mode not in MODES or (stage, mode) not in UPSTREAM_ITERATIONS:
        raise ValueError(f"no stage {stage!r} in mode {mode!r}")
    base = UPSTREAM_ITERATIONS[(stage, mode)]
    total = int(iterations or base)
    f = total / base

    def at(it: int) -> int:
        return max(1, int(round(it * f)))

    common = dict(
        stage=stage,
        mode=mode,
        iterations=total,
        long=long,
        densify_from=max(at(500), 100),
        densify_interval=100,  # not scaled: Gaussians need ~100 steps to regrow after an opacity reset
        sh_up_interval=max(1, at(1000)),
        prune_big_from=max(at(3000), min(3000, total // 2)),
        position_lr_steps=max(1, int(45_000 * f)),
    )
    if stage == "face" and mode == "pretrain":
        cfg = StageConfig(
            **common, sh_degree=2, init_num=2000, warmup=at(5000), static_warmup=True, curriculum_end=at(100_000),
            select_interval=15, densify_until=at(145_000), densify_grad_threshold=0.0005, lips_att_reg=5e-3,
            hair_from=at(5000), lip_aux=0.1, lip_motion=LIP_MOTION_PRETRAIN,
        )
    elif stage == "mouth" and mode == "pretrain":
        cfg = StageConfig(
            **common, sh_degree=2, init_num=5000, warmup=at(15_000), static_warmup=True, curriculum_end=at(100_000),
            select_interval=7, densify_until=at(145_000), densify_grad_threshold=0.0002, contrast_others=1,
            green_prune=False, lip_aux=0.1,
        )
    elif stage == "face":
        cfg = StageConfig(
            **common, sh_degree=2 if long else 1, init_num=2000, warmup=at(3000), align_from=at(1000),
            curriculum_end=total, select_interval=10, densify_until=at(9000),
            densify_grad_threshold=0.0005 if long else FACE_ADAPT_DENSIFY_GRAD,
            opacity_reset_interval=0 if long else at(3000), hair_from=at(3001), hair_until=at(6499),
            late_from=at(7500), priors_from=1 << 30 if long else at(5001), lips_att_reg=1e-4, z_prune=not long,
            contrast=0.0, ema_decay=0.0, lip_motion=LIP_MOTION_ADAPT,
            lpips=0.21 if long else 0.01, lpips_from=at(7500), lpips_patch=(64, 96),
        )
    elif stage == "mouth":
        cfg = StageConfig(
            **common, sh_degree=2 if long else 1, init_num=5000, warmup=at(3000), align_from=at(1000),
            curriculum_end=total, select_interval=7 if long else 5, densify_until=at(45_000) if long else at(9000),
            densify_grad_threshold=0.0002, opacity_reset_interval=0 if long else at(3000),
            freeze_from=1 << 30 if long else at(9000), green_reset_from=at(2000), green_prune=False,
            contrast=0.0, ema_decay=0.0, lpips=0.51 if long else 0.0, lpips_from=at(9000),
        )
    else:  # fuse
        cfg = StageConfig(
            **common, sh_degree=2 if long else 1, warmup=0, densify_until=0, green_prune=False, contrast=0.0,
            ema_decay=0.0, train_universal=False, opacity_lr=FUSE_OPACITY_LR, lpips=0.05, lpips_from=at(1001),
        )
    if total < MIN_DENSIFY_RUN and cfg.densify_until > 0:
        cfg = cfg.replace(densify_until=0, opacity_reset_interval=0,
                          note=f"{total} iterations are too few to densify: the clouds keep their initial Gaussians "
                               f"(give {MIN_DENSIFY_RUN} or more)")
    elif total < SHORT_RUN and cfg.densify_until > 0:
        # below 1 000 iterations the fixed 100-step rhythm would leave at most a round or two of densification
        # (none below ~300): a short run keeps the 1 000-iteration run's rounds, shrunk in proportion. Opacity
        # resets stay off: a cloud needs ~100 steps to relearn its opacities, more than a short run has between them.
        step = round(100 * total / SHORT_RUN)
        cfg = cfg.replace(densify_from=step, densify_interval=step, opacity_reset_interval=0)
    return cfg.replace(**overrides) if overrides else cfg
