"""Procedural appearance of the sample-capture person: clothing, skin and hair as a solid texture.

Colours are a function of each surface point's *canonical* (rest-pose) position, so they stick to
the body as it moves. The patterns are deliberately high-frequency (stripes, checks, denim noise,
hair streaks, a chest logo) so that a blurry avatar scores visibly worse than a sharp one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# SMPL-X joint indices used to lay out the clothing regions.
_PELVIS, _L_KNEE, _L_ANKLE, _NECK, _HEAD, _L_SHOULDER, _L_ELBOW, _L_WRIST, _JAW = 0, 4, 7, 12, 15, 16, 18, 20, 22
_L_EYE, _R_EYE = 23, 24

SKIN = (0.87, 0.66, 0.53)
LIPS = (0.70, 0.30, 0.32)
HAIR = (0.16, 0.10, 0.06)
SHIRT_A = (0.80, 0.18, 0.16)
SHIRT_B = (0.95, 0.92, 0.85)
DENIM = (0.17, 0.25, 0.45)
SHOE = (0.10, 0.10, 0.11)
IRIS = (0.10, 0.18, 0.30)


def _rgb(color: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(color, dtype=like.dtype, device=like.device)


def _hash(cells: torch.Tensor) -> torch.Tensor:
    """Deterministic pseudo-random value in [0, 1) per integer lattice cell (..., 3)."""
    dot = cells[..., 0] * 127.1 + cells[..., 1] * 311.7 + cells[..., 2] * 74.7
    return torch.frac(torch.sin(dot) * 43758.5453).abs()


def value_noise(points: torch.Tensor, frequency: float) -> torch.Tensor:
    """Smooth 3D value noise in [0, 1] (trilinear interpolation of lattice hashes)."""
    p = points * frequency
    base = torch.floor(p)
    f = p - base
    f = f * f * (3 - 2 * f)
    out = torch.zeros(points.shape[:-1], dtype=points.dtype, device=points.device)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                corner = base + torch.tensor((dx, dy, dz), dtype=points.dtype, device=points.device)
                wx = f[..., 0] if dx else 1 - f[..., 0]
                wy = f[..., 1] if dy else 1 - f[..., 1]
                wz = f[..., 2] if dz else 1 - f[..., 2]
                out = out + wx * wy * wz * _hash(corner)
    return out


@dataclass
class Outfit:
    """Region boundaries taken from the body model's rest joints (metres, Y up, facing +Z)."""

    rest_joints: torch.Tensor  # (55, 3)

    def colors(self, points: torch.Tensor, garment: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] for canonical points (..., 3); ``garment`` (...,) is 1 on the loose layer."""
        j = self.rest_joints.to(points)
        x, y, z = points[..., 0], points[..., 1], points[..., 2]
        ax = x.abs()
        noise = value_noise(points, 180.0)
        skin = _rgb(SKIN, points) * (0.92 + 0.1 * value_noise(points, 60.0)[..., None])
        out = skin.expand(*points.shape[:-1], 3).clone()

        # Trousers: denim noise with a fine diagonal weave; dark shoes below the ankles.
        waist_y = j[_PELVIS, 1] + 0.06
        weave = 0.5 + 0.5 * torch.sin((y + x + z) * 700.0)
        denim = _rgb(DENIM, points) * (0.75 + 0.35 * noise[..., None] + 0.1 * weave[..., None])
        legs = (y < waist_y).unsqueeze(-1)
        out = torch.where(legs, denim, out)
        shoe = (y < j[_L_ANKLE, 1] + 0.03).unsqueeze(-1)
        out = torch.where(shoe, _rgb(SHOE, points) + 0.1 * noise[..., None], out)

        # Shirt: horizontal stripes with a check, short sleeves to mid upper arm, a round chest logo.
        sleeve_x = 0.5 * (j[_L_SHOULDER, 0] + j[_L_ELBOW, 0])
        shirt_region = (y >= waist_y) & (y < j[_NECK, 1] - 0.03) & (ax < sleeve_x)
        stripes = (torch.sin(y * 2 * torch.pi / 0.025) > 0).to(points.dtype)
        check = (torch.sin(x * 2 * torch.pi / 0.04) * torch.sin(y * 2 * torch.pi / 0.04) > 0).to(points.dtype)
        mix = (0.65 * stripes + 0.35 * check)[..., None]
        shirt = _rgb(SHIRT_A, points) * mix + _rgb(SHIRT_B, points) * (1 - mix)
        chest = torch.stack([j[_NECK, 0] + 0.07, j[_NECK, 1] - 0.15], dim=0)
        logo_d = torch.sqrt((x - chest[0]) ** 2 + (y - chest[1]) ** 2)
        logo = ((logo_d < 0.035) & (z > j[_NECK, 2])).unsqueeze(-1)
        ring = ((logo_d > 0.045) & (logo_d < 0.05) & (z > j[_NECK, 2])).unsqueeze(-1)
        shirt = torch.where(logo, _rgb((0.95, 0.8, 0.1), points), shirt)
        shirt = torch.where(ring, _rgb((0.05, 0.05, 0.05), points), shirt)
        out = torch.where(shirt_region.unsqueeze(-1), shirt, out)

        # The loose layer (a tunic flaring below the waist) carries the shirt pattern, slightly darker.
        out = torch.where(garment.bool().unsqueeze(-1), 0.85 * shirt, out)

        # Head: hair on the top and back, lips below the nose, dark irises on the eyeballs.
        head = j[_HEAD]
        eyes_y = 0.5 * (j[_L_EYE, 1] + j[_R_EYE, 1])
        hair_region = (y > eyes_y + 0.035) | ((z < head[2] - 0.01) & (y > j[_NECK, 1] + 0.02))
        hair_region = hair_region & (y > j[_NECK, 1] + 0.02)
        streaks = 0.7 + 0.3 * torch.sin(x * 900.0 + 3 * value_noise(points, 40.0))
        out = torch.where(hair_region.unsqueeze(-1), _rgb(HAIR, points) * streaks[..., None], out)
        mouth_y = j[_JAW, 1] + 0.5 * (eyes_y - j[_JAW, 1]) * 0.55
        lips = (
            (torch.abs(y - mouth_y) < 0.008)
            & (ax < 0.025)
            & (z > head[2] + 0.05)
            & (y < eyes_y)
            & (y > j[_NECK, 1])
        )
        out = torch.where(lips.unsqueeze(-1), _rgb(LIPS, points), out)
        for eye in (_L_EYE, _R_EYE):
            d = torch.linalg.norm(points - j[eye], dim=-1)
            iris = ((d < 0.02) & (z > j[eye, 2] + 0.005)).unsqueeze(-1)
            out = torch.where(iris, _rgb(IRIS, points), out)
        return out.clamp(0, 1)


def shade(albedo: torch.Tensor, normals: torch.Tensor, view_dirs: torch.Tensor) -> torch.Tensor:
    """Two-light Lambert + a soft rim, in world space; inputs (..., 3), normals unit length."""
    key = torch.tensor((0.4, 0.7, 0.6), dtype=albedo.dtype, device=albedo.device)
    fill = torch.tensor((-0.6, 0.2, 0.4), dtype=albedo.dtype, device=albedo.device)
    key, fill = key / key.norm(), fill / fill.norm()
    diffuse = 0.75 * (normals @ key).clamp(min=0) + 0.25 * (normals @ fill).clamp(min=0)
    rim = (1 - (normals * view_dirs).sum(-1).abs()).clamp(0, 1) ** 3
    light = 0.3 + diffuse + 0.15 * rim
    return (albedo * light[..., None]).clamp(0, 1)
