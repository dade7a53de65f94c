"""A cloud of 3D Gaussians: parameters, activations, initialisation and 3DGS densification.

Activations (METHOD 2.1): softplus scales (inverse ``x + log(-expm1(-x))``), sigmoid opacity,
L2-normalised quaternions (w, x, y, z), colours as SH with RGB = ``SH_C0 * dc + 0.5`` at degree 0.

Densification edits every per-Gaussian parameter *and* its Adam moments in the optimiser (the group
holding the parameter, whatever its name), so that rows stay aligned: pruned rows are removed from
``exp_avg``/``exp_avg_sq``, new rows start with zero moments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from instag.model.knn import knn_mean_sq_dist
from instag.render.reference import quat_to_rotmat as unit_quat_to_rotmat

PARAM_NAMES = ("xyz", "features_dc", "features_rest", "opacity_raw", "scale_raw", "rotation_raw")
STAT_NAMES = ("xyz_grad_accum", "denom", "max_radii2d")
PERCENT_DENSE = 0.005


def inverse_softplus(x: Tensor) -> Tensor:
    return x + torch.log(-torch.expm1(-x))


def inverse_sigmoid(x: Tensor) -> Tensor:
    return torch.log(x / (1 - x))


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Quaternions ``[..., 4]`` (w, x, y, z; normalised here) -> ``[..., 3, 3]``."""
    return unit_quat_to_rotmat(F.normalize(quats, dim=-1))


class GaussianCloud(nn.Module):
    """Parameters (raw, pre-activation):

    - ``xyz`` ``[N,3]`` canonical positions;
    - ``features_dc`` ``[N,1,3]`` and ``features_rest`` ``[N,(d+1)^2-1,3]`` SH coefficients;
    - ``opacity_raw`` ``[N,1]``, ``scale_raw`` ``[N,3]``, ``rotation_raw`` ``[N,4]``.

    Buffers for densification: ``xyz_grad_accum`` ``[N]`` (sum of screen-space gradient norms),
    ``denom`` ``[N]`` (times visible) and ``max_radii2d`` ``[N]`` (largest screen radius), all since
    the last densification.
    """

    def __init__(
        self,
        xyz: Tensor,
        features_dc: Tensor,
        features_rest: Tensor,
        opacity_raw: Tensor,
        scale_raw: Tensor,
        rotation_raw: Tensor,
        max_sh_degree: int,
        active_sh_degree: int = 0,
    ):
        super().__init__()
        n = xyz.shape[0] if xyz.dim() else -1
        shapes = {"xyz": (n, 3), "features_dc": (n, 1, 3), "features_rest": (n, (max_sh_degree + 1) ** 2 - 1, 3),
                  "opacity_raw": (n, 1), "scale_raw": (n, 3), "rotation_raw": (n, 4)}
        for name, value in zip(PARAM_NAMES, (xyz, features_dc, features_rest, opacity_raw, scale_raw, rotation_raw)):
            if tuple(value.shape) != shapes[name]:
                raise ValueError(f"{name} has shape {list(value.shape)}, not {list(shapes[name])} (N = {n}, SH degree "
                                 f"{max_sh_degree})")
        if not 0 <= active_sh_degree <= max_sh_degree:
            raise ValueError(f"active SH degree {active_sh_degree} outside 0..{max_sh_degree}")
        self.max_sh_degree = max_sh_degree
        self.active_sh_degree = active_sh_degree
        for name, value in zip(PARAM_NAMES, (xyz, features_dc, features_rest, opacity_raw, scale_raw, rotation_raw)):
            setattr(self, name, nn.Parameter(value.detach().clone()))
        for name in STAT_NAMES:
            self.register_buffer(name, torch.zeros(xyz.shape[0], dtype=xyz.dtype, device=xyz.device))

    # ---------------------------------------------------------------- construction
    @classmethod
    def random_init(
        cls,
        num: int,
        box: float = 0.1,
        sh_degree: int = 1,
        generator: torch.Generator | None = None,
        opacity: float = 0.1,
        device: torch.device | str | None = None,
    ) -> GaussianCloud:
        """``num`` points uniform in ``[-box, box]^3``, mid-grey, opacity 0.1, identity rotation, isotropic
        scale = root-mean-square distance to the 3 nearest neighbours (METHOD 2.2)."""
        xyz = (torch.rand(num, 3, generator=generator) * 2 - 1) * box
        xyz = xyz.to(device)
        dist = knn_mean_sq_dist(xyz, k=3).sqrt()
        scale_raw = inverse_softplus(dist)[:, None].repeat(1, 3)
        rotation = torch.zeros(num, 4, device=xyz.device)
        rotation[:, 0] = 1
        opacity_raw = inverse_sigmoid(torch.full((num, 1), opacity, device=xyz.device))
        features_dc = torch.zeros(num, 1, 3, device=xyz.device)  # SH DC of RGB 0.5
        features_rest = torch.zeros(num, (sh_degree + 1) ** 2 - 1, 3, device=xyz.device)
        return cls(xyz, features_dc, features_rest, opacity_raw, scale_raw, rotation, sh_degree)

    def state_tensors(self) -> dict[str, Tensor]:
        """Everything needed to rebuild the cloud, as plain tensors (for safetensors)."""
        out = {name: getattr(self, name).detach().contiguous() for name in PARAM_NAMES + STAT_NAMES}
        out["max_sh_degree"] = torch.tensor(self.max_sh_degree)
        out["active_sh_degree"] = torch.tensor(self.active_sh_degree)
        return out

    @classmethod
    def from_state_tensors(cls, state: dict[str, Tensor]) -> GaussianCloud:
        cloud = cls(*(state[name] for name in PARAM_NAMES), int(state["max_sh_degree"]), int(state["active_sh_degree"]))
        for name in STAT_NAMES:
            if name in state:
                getattr(cloud, name).copy_(state[name])
        return cloud

    # ---------------------------------------------------------------- activations
    def __len__(self) -> int:
        return self.xyz.shape[0]

    @property
    def num_points(self) -> int:
        return self.xyz.shape[0]

    @property
    def scales(self) -> Tensor:
        """``[N,3]`` softplus of the raw scales."""
        return F.softplus(self.scale_raw)

    @property
    def opacities(self) -> Tensor:
        """``[N]`` sigmoid of the raw opacities."""
        return torch.sigmoid(self.opacity_raw)[:, 0]

    @property
    def rotations(self) -> Tensor:
        """``[N,4]`` unit quaternions (w, x, y, z)."""
        return F.normalize(self.rotation_raw, dim=-1)

    @property
    def sh(self) -> Tensor:
        """``[N,(max_sh_degree+1)^2,3]`` SH coefficients (render with ``sh_degree=active_sh_degree``)."""
        return torch.cat([self.features_dc, self.features_rest], 1)

    def one_up_sh_degree(self) -> None:
        self.active_sh_degree = min(self.active_sh_degree + 1, self.max_sh_degree)

    def optimizer_groups(self, lrs: dict[str, float]) -> list[dict]:
        """Adam parameter groups, one per parameter, named as in :data:`PARAM_NAMES`."""
        missing = [name for name in PARAM_NAMES if name not in lrs]
        if missing:
            raise ValueError(f"learning rates missing for {missing}; expected keys {PARAM_NAMES}")
        return [{"name": name, "params": [getattr(self, name)], "lr": lrs[name]} for name in PARAM_NAMES]

    # ---------------------------------------------------------------- optimiser surgery
    def _replace(
        self,
        optimizer: torch.optim.Optimizer | None,
        params: dict[str, Tensor],
        moment_fn: Callable[[str, Tensor], Tensor],
    ) -> None:
        """Swap in new parameter tensors; ``moment_fn(name, moment)`` maps each old Adam moment to the new rows."""
        groups = optimizer.param_groups if optimizer is not None else []
        for name, value in params.items():
            old = getattr(self, name)
            new = nn.Parameter(value.detach().contiguous().requires_grad_(old.requires_grad))
            for group in groups:  # found by identity, so renamed or merged groups work too
                if any(p is old for p in group["params"]):
                    state = optimizer.state.pop(old, None)
                    if state:
                        for key, moment in state.items():
                            if torch.is_tensor(moment) and moment.shape == old.shape:
                                state[key] = moment_fn(name, moment)
                        optimizer.state[new] = state
                    group["params"] = [new if p is old else p for p in group["params"]]
            setattr(self, name, new)

    def _append(self, optimizer: torch.optim.Optimizer | None, rows: dict[str, Tensor]) -> None:
        count = rows["xyz"].shape[0]
        params = {name: torch.cat([getattr(self, name).detach(), rows[name]], 0) for name in PARAM_NAMES}
        self._replace(optimizer, params, lambda name, m: torch.cat([m, m.new_zeros((count,) + m.shape[1:])], 0))
        for name in STAT_NAMES:
            stat = getattr(self, name)
            setattr(self, name, torch.cat([stat, stat.new_zeros(count)]))

    def prune(self, mask: Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Remove the Gaussians where ``mask`` [N] is True."""
        keep = ~mask.to(torch.bool)
        params = {name: getattr(self, name).detach()[keep] for name in PARAM_NAMES}
        self._replace(optimizer, params, lambda name, m: m[keep])
        for name in STAT_NAMES:
            setattr(self, name, getattr(self, name)[keep])

    # ---------------------------------------------------------------- densification
    @torch.no_grad()
    def add_densify_stats(
        self,
        means2d_grad: Tensor,
        visible: Tensor,
        radii: Tensor | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        """Accumulate one view's screen-space gradient norms.

        ``means2d_grad`` ``[N,2]`` is ``RenderOutput.means2d.grad`` (pixels). With ``image_size=(W, H)``
        it is scaled by ``(W/2, H/2)`` to the normalised-device units that 3DGS's thresholds
        (0.0002 / 0.0005) assume. ``radii`` ``[N]`` updates the largest screen radius.
        """
        grad = means2d_grad
        if image_size is not None:
            grad = grad * grad.new_tensor([image_size[0] / 2, image_size[1] / 2])
        vis = visible.to(torch.bool)
        self.xyz_grad_accum[vis] += grad[vis].norm(dim=-1)
        self.denom[vis] += 1
        if radii is not None:
            self.max_radii2d[vis] = torch.maximum(self.max_radii2d[vis], radii[vis].to(self.max_radii2d.dtype))

    @torch.no_grad()
    def densify_and_prune(
        self,
        optimizer: torch.optim.Optimizer | None,
        grad_threshold: float,
        min_opacity: float,
        extent: float,
        max_screen_size: float | None = None,
        max_world_scale: float | None = None,
        percent_dense: float = PERCENT_DENSE,
        generator: torch.Generator | None = None,
    ) -> dict[str, int]:
        """3DGS densification: clone small Gaussians with a large mean screen gradient, split large
        ones into two (samples from their own Gaussian, scales / 1.6), then prune transparent ones
        (opacity < ``min_opacity``), screen-large ones (radius > ``max_screen_size`` px since the last
        densification) and world-large ones (max scale > ``max_world_scale``). Resets the statistics.
        Returns the counts ``{"cloned", "split", "pruned"}``."""
        grads = torch.nan_to_num(self.xyz_grad_accum / self.denom, nan=0.0, posinf=0.0)
        big_grad = grads >= grad_threshold
        size_limit = percent_dense * extent

        clone = big_grad & (self.scales.max(1).values <= size_limit)
        self._append(optimizer, {name: getattr(self, name).detach()[clone] for name in PARAM_NAMES})

        pad = torch.zeros(int(clone.sum()), dtype=torch.bool, device=grads.device)
        split = torch.cat([big_grad, pad]) & (self.scales.max(1).values > size_limit)
        num_split = int(split.sum())
        if num_split:
            n = 2
            stds = self.scales[split].repeat(n, 1)
            samples = torch.normal(torch.zeros_like(stds), stds, generator=generator)
            rots = quat_to_rotmat(self.rotation_raw[split]).repeat(n, 1, 1)
            rows = {}
            for name in PARAM_NAMES:
                parent = getattr(self, name).detach()[split]
                rows[name] = parent.repeat(n, *[1] * (parent.dim() - 1))
            rows["xyz"] = (rots @ samples[..., None])[..., 0] + rows["xyz"]
            rows["scale_raw"] = inverse_softplus(stds / (0.8 * n))
            self._append(optimizer, rows)
            self.prune(torch.cat([split, torch.zeros(n * num_split, dtype=torch.bool, device=split.device)]), optimizer)

        prune = self.opacities < min_opacity
        if max_screen_size is not None:
            prune |= self.max_radii2d > max_screen_size
        if max_world_scale is not None:
            prune |= self.scales.max(1).values > max_world_scale
        num_pruned = int(prune.sum())
        self.prune(prune, optimizer)
        for name in STAT_NAMES:
            getattr(self, name).zero_()
        return {"cloned": int(clone.sum()), "split": num_split, "pruned": num_pruned}

    @torch.no_grad()
    def reset_opacity(self, optimizer: torch.optim.Optimizer | None, value: float = 0.01) -> None:
        """opacity <- min(opacity, value); the opacity moments restart from zero."""
        capped = torch.clamp_max(self.opacities, value)[:, None]
        self._replace(optimizer, {"opacity_raw": inverse_sigmoid(capped)}, lambda name, m: torch.zeros_like(m))

    @torch.no_grad()
    def reset_params(
        self,
        mask: Tensor,
        optimizer: torch.optim.Optimizer | None,
        opacity: float = 0.1,
        scale_factor: float = 0.1,
    ) -> None:
        """Restart the Gaussians in ``mask`` [N] (the mouth's green-Gaussian reset, METHOD 3.1):
        opacity set to ``opacity``, activated scale multiplied by ``scale_factor`` (upstream divided the
        raw value, which grows the usual negative raw scales), gradient accumulator halved, and their
        Adam moments zeroed (upstream kept stale moments)."""
        mask = mask.to(torch.bool)
        opacity_raw = self.opacity_raw.detach().clone()
        opacity_raw[mask] = inverse_sigmoid(torch.tensor(opacity, dtype=opacity_raw.dtype, device=opacity_raw.device))
        scale_raw = self.scale_raw.detach().clone()
        scale_raw[mask] = inverse_softplus(self.scales[mask] * scale_factor)

        def zero_rows(name: str, moment: Tensor) -> Tensor:
            moment = moment.clone()
            moment[mask] = 0
            return moment

        self._replace(optimizer, {"opacity_raw": opacity_raw, "scale_raw": scale_raw}, zero_rows)
        self.xyz_grad_accum[mask] *= 0.5
