"""The synthetic sample capture: the stand-in body performing a procedural motion, rendered
through the project's own rasterizer, with masks, full tracking and a held-out test split.

It is the embedded default dataset for the demo, the tests and the benchmarks. The person wears
a high-frequency procedural outfit and a loose tunic that flares below the waist, so the body
template does *not* fit the silhouette exactly (as with real clothes). FaceVerse and MANO
parameters are derived from the same performance so that every input of the avatar methods is
present and consistent. The stand-in models are always used, whatever model folders are set,
so the data is the same on every machine.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.spatial import cKDTree

from backend.bodies import load_faceverse, load_mano, load_smplx
from backend.bodies.base import BodyModel
from backend.capture.appearance import Outfit, shade
from backend.capture.files import write_tracking
from backend.capture.motion import (
    SPLIT_TEST,
    SPLIT_TRAIN,
    CameraTrack,
    FaceVerseTrack,
    ManoTrack,
    SmplxMotion,
    Tracking,
)
from backend.capture.procedural import Performance, test_performance, training_performance
from backend.paths import ModelFolders
from backend.progress import Progress, make_progress
from backend.raster import get_rasterizer, interpolate, look_at, project_to_clip, vertex_normals

STANDINS = ModelFolders()  # every family left unset: the generated stand-ins
BACKGROUND = (0.42, 0.45, 0.50)
SUPERSAMPLE = 2
BATCH = 16
PELVIS, L_HIP, L_KNEE, NECK, HEAD, L_SHOULDER, L_WRIST, R_WRIST = 0, 1, 4, 12, 15, 16, 20, 21


@dataclass(frozen=True)
class SampleCaptureConfig:
    train_frames: int = 360
    test_frames: int = 60
    size: int = 256  # output frames are size x size
    seed: int = 0
    noise: float = 0.0  # std of tracking noise on the written poses (radians; translations get noise x 0.05 m)
    fps: float = 30.0

    def __post_init__(self) -> None:
        if self.train_frames < 2 or self.test_frames < 0:
            raise ValueError("need at least 2 training frames and a non-negative number of test frames")
        if not 16 <= self.size <= 4096:
            raise ValueError(f"size must be between 16 and 4096, got {self.size}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")


# ----------------------------------------------------------------------------- geometry


@dataclass
class Garment:
    """A loose tunic: rest vertices, faces and skinning weights over the body's joints."""

    vertices: np.ndarray  # (G, 3)
    faces: np.ndarray  # (Fg, 3)
    weights: np.ndarray  # (G, J)


def build_garment(body: BodyModel, rest_joints: np.ndarray, rest_vertices: np.ndarray) -> Garment:
    """Rings around the torso from the chest down to mid-thigh, snug at the top, loose below the
    waist and flaring towards the hem; skinned from the nearest body vertices, with the skirt part
    pulled towards the pelvis so it does not follow the legs exactly."""
    top = rest_joints[L_SHOULDER, 1] - 0.10
    waist = rest_joints[PELVIS, 1] + 0.08
    hip = rest_joints[L_HIP, 1]
    hem = rest_joints[L_KNEE, 1] + 0.22
    arm_limit = abs(rest_joints[L_SHOULDER, 0]) * 0.85
    heights = np.linspace(top, hem, 28)
    around = 72
    angles = np.linspace(0, 2 * np.pi, around, endpoint=False)
    trunk = rest_vertices[np.abs(rest_vertices[:, 0]) < arm_limit]
    rings = []
    for y in heights:
        band = trunk[np.abs(trunk[:, 1] - y) < 0.015]
        centre_x = 0.5 * (band[:, 0].max() + band[:, 0].min())
        centre_z = 0.5 * (band[:, 2].max() + band[:, 2].min())
        radius_x = 0.5 * (band[:, 0].max() - band[:, 0].min())
        radius_z = 0.5 * (band[:, 2].max() - band[:, 2].min())
        ease = 0.008 + 0.035 * np.clip((top - y) / (top - waist), 0, 1)  # snug at the chest, loose at the waist
        flare = 0.09 * np.clip((hip - y) / (hip - hem), 0, 1) ** 1.3
        ripple = 0.006 * np.sin(7 * angles) * np.clip((waist - y) / (waist - hem), 0, 1)
        ring = np.stack(
            [
                centre_x + (radius_x + ease + flare + ripple) * np.sin(angles),
                np.full(around, y),
                centre_z + (radius_z + ease + flare + ripple) * np.cos(angles),
            ],
            axis=1,
        )
        rings.append(ring)
    vertices = np.concatenate(rings).astype(np.float32)
    faces = []
    for r in range(len(heights) - 1):
        for k in range(around):
            a, b = r * around + k, r * around + (k + 1) % around
            c, d = a + around, b + around
            faces += [(a, b, d), (a, d, c)]  # counter-clockwise seen from outside
    faces = np.asarray(faces, np.int64)
    body_weights = body.skinning_weights.detach().cpu().numpy()
    _, nearest = cKDTree(rest_vertices).query(vertices, k=4)
    weights = body_weights[nearest].mean(axis=1)
    skirt = np.clip((waist - vertices[:, 1]) / (waist - hem), 0, 1)[:, None] * 0.6
    weights = (1 - skirt) * weights
    weights[:, PELVIS] += skirt[:, 0]
    weights /= weights.sum(axis=1, keepdims=True)
    return Garment(vertices, faces, weights.astype(np.float32))


def skin_points(rest_points: torch.Tensor, weights: torch.Tensor, transforms: torch.Tensor, rest_joints: torch.Tensor) -> torch.Tensor:
    """Linear blend skinning of rest points (P, 3) with the body's joint transforms (B, J, 4, 4)."""
    local = rest_points[None, :, None, :] - rest_joints[None, None, :, :]  # (1, P, J, 3)
    moved = torch.einsum("bjkl,bpjl->bpjk", transforms[:, :, :3, :3], local.expand(transforms.shape[0], -1, -1, -1))
    moved = moved + transforms[:, None, :, :3, 3]
    return (weights[None, :, :, None] * moved).sum(dim=2)


# ----------------------------------------------------------------------------- alignment of face and hands


def rigid_fit(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t minimising |R source + t - target| (Kabsch)."""
    source_mean, target_mean = source.mean(0), target.mean(0)
    u, _, vt = np.linalg.svd((source - source_mean).T @ (target - target_mean))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rotation = vt.T @ np.diag([1, 1, d]) @ u.T
    return rotation, target_mean - rotation @ source_mean


def _landmarks(body: BodyModel, vertices: torch.Tensor) -> torch.Tensor:
    """SMPL-X's 51 static face landmarks (iBUG 17..67) from the model file's embedding."""
    layer = body.layer  # the smplx module: holds lmk_faces_idx / lmk_bary_coords
    corners = vertices[:, body.faces[layer.lmk_faces_idx]]  # (B, 51, 3, 3)
    return (corners * layer.lmk_bary_coords[None, :, :, None]).sum(dim=2)


def _axis_angle(matrices: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(matrices.astype(np.float64)).as_rotvec().astype(np.float32)


def _matrices(axis_angles: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(axis_angles.reshape(-1, 3).astype(np.float64)).as_matrix()


def faceverse_track(face_model: BodyModel, body: BodyModel, head: np.ndarray, rest: dict, arkit: dict) -> FaceVerseTrack:
    """FaceVerse parameters that put its face on the SMPL-X head in every frame."""
    from backend.bodies.faceverse import matrix_to_euler

    keypoints = face_model.keypoint_indices
    face_rest = face_model.rest_vertices().detach().cpu().numpy()
    align_r, align_t = rigid_fit(face_rest[keypoints[17:68]], rest["landmarks"])
    head_rotation, head_position = head[:, :3, :3], head[:, :3, 3]
    rotation = head_rotation @ align_r
    translation = np.einsum("bij,j->bi", head_rotation, align_t - rest["joints"][HEAD]) + head_position
    frames = head.shape[0]
    expression = np.zeros((frames, len(face_model.expression_names)), np.float32)
    for index, name in enumerate(face_model.expression_names):
        if name in arkit:
            expression[:, index] = arkit[name]
    angles = matrix_to_euler(torch.from_numpy(rotation.astype(np.float32))).numpy()
    return FaceVerseTrack(
        identity=np.zeros(len(face_model.shape_names), np.float32), expression=expression, rotation=angles, translation=translation
    )


def mano_track(hand: BodyModel, side: str, wrist: np.ndarray, hand_pose: np.ndarray, rest_body_joints: np.ndarray) -> ManoTrack:
    """MANO parameters reproducing the SMPL-X hand: same finger rotations, wrist frame aligned."""
    wrist_index = L_WRIST if side == "left" else R_WRIST
    first = 25 if side == "left" else 40
    mano_rest = hand.rest_joints().detach().cpu().numpy()
    smplx_hand = rest_body_joints[[wrist_index, *range(first, first + 15)]]
    align_r, align_t = rigid_fit(mano_rest, smplx_hand)
    # Finger rotations are expressed in the MANO frame: conjugate by the alignment rotation.
    local = _matrices(hand_pose).reshape(-1, 15, 3, 3)
    local = np.einsum("ij,bnjk,kl->bnil", align_r.T, local, align_r)
    rotation = wrist[:, :3, :3] @ align_r
    root = mano_rest[0]
    transl = np.einsum("bij,j->bi", wrist[:, :3, :3], align_r @ root + align_t - rest_body_joints[wrist_index])
    transl = transl + wrist[:, :3, 3] - root
    return ManoTrack(
        side=side,
        global_orient=_axis_angle(rotation),
        hand_pose=_axis_angle(local.reshape(-1, 3, 3)).reshape(-1, 45),
        transl=transl.astype(np.float32),
    )


# ----------------------------------------------------------------------------- rendering


def frame_camera(points: np.ndarray, size: int, distance: float = 3.5) -> tuple[np.ndarray, np.ndarray]:
    """A fixed camera in front of the body (+Z) whose focal length keeps every point (N, 3) in view."""
    low, high = points.min(0), points.max(0)
    centre = 0.5 * (low + high)
    eye = centre + np.array([0.0, 0.1, distance])
    world_to_camera = look_at(torch.tensor(eye, dtype=torch.float32), torch.tensor(centre, dtype=torch.float32)).numpy()
    camera = points @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    spread = np.abs(camera[:, :2] / camera[:, 2:]).max()  # widest tangent from the optical axis
    focal = 0.5 * size * 0.94 / spread  # 6% margin
    K = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]], np.float32)
    return K, world_to_camera


def _save_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=6)


class _Renderer:
    """Renders the body + tunic with the procedural outfit for batches of frames."""

    def __init__(self, body: BodyModel, garment: Garment, betas: torch.Tensor, size: int):
        self.body = body
        self.size = size
        self.rasterizer = get_rasterizer()
        self.rest_joints = body.rest_joints(betas)
        self.body_rest = body.rest_vertices(betas)
        self.garment_rest = torch.from_numpy(garment.vertices)
        self.garment_weights = torch.from_numpy(garment.weights)
        self.faces = torch.cat([body.faces, torch.from_numpy(garment.faces) + body.num_vertices]).to(torch.int32)
        self.canonical = torch.cat([self.body_rest, self.garment_rest])
        self.is_garment = torch.cat([torch.zeros(body.num_vertices), torch.ones(len(garment.vertices))])[:, None]
        self.outfit = Outfit(self.rest_joints)

    def posed(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.body(**params)
        garment = skin_points(self.garment_rest, self.garment_weights, out.joint_transforms, self.rest_joints)
        return torch.cat([out.vertices, garment], dim=1)

    def render(self, vertices: torch.Tensor, K: torch.Tensor, world_to_camera: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        high = self.size * SUPERSAMPLE
        K_high = K.clone()
        K_high[:2] *= SUPERSAMPLE
        clip = project_to_clip(vertices, K_high, world_to_camera, (high, high))
        rast = self.rasterizer.rasterize(clip, self.faces, (high, high))
        covered = (rast[..., 3] > 0).float()
        attributes = torch.cat(
            [self.canonical.expand(vertices.shape[0], -1, -1), vertex_normals(vertices, self.faces.long()), vertices,
             self.is_garment.expand(vertices.shape[0], -1, -1)],
            dim=-1,
        )
        pixels = interpolate(attributes, rast, self.faces.long())[covered > 0]  # shade covered pixels only
        canonical, normals, positions, garment = pixels[:, :3], pixels[:, 3:6], pixels[:, 6:9], pixels[:, 9]
        normals = F.normalize(normals, dim=-1)
        camera_centre = -world_to_camera[:3, :3].T @ world_to_camera[:3, 3]
        view = F.normalize(camera_centre - positions, dim=-1)
        image = torch.tensor(BACKGROUND).repeat(*covered.shape, 1)
        image[covered > 0] = shade(self.outfit.colors(canonical, garment > 0.5), normals, view)
        # Average the supersamples: anti-aliased edges and a soft mask.
        image = F.avg_pool2d(image.permute(0, 3, 1, 2), SUPERSAMPLE).permute(0, 2, 3, 1)
        mask = F.avg_pool2d(covered[:, None], SUPERSAMPLE)[:, 0]
        to_uint8 = lambda x: (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()  # noqa: E731
        return to_uint8(image), to_uint8(mask)


def _concatenate(train: Performance, test: Performance) -> tuple[SmplxMotion, dict[str, np.ndarray]]:
    motions = [train.motion, test.motion]
    arrays = {key: np.concatenate([m.arrays()[key] for m in motions]) for key in train.motion.arrays() if key != "betas"}
    motion = SmplxMotion(fps=train.motion.fps, betas=train.motion.betas, **arrays)
    names = set(train.arkit) | set(test.arkit)
    zeros = (np.zeros(train.motion.num_frames, np.float32), np.zeros(test.motion.num_frames, np.float32))
    arkit = {name: np.concatenate([train.arkit.get(name, zeros[0]), test.arkit.get(name, zeros[1])]) for name in names}
    return motion, arkit


def generate_sample_capture(out: str | Path, config: SampleCaptureConfig = SampleCaptureConfig(), progress: Progress | None = None) -> Path:
    """Write the sample capture folder to ``out`` (replaced atomically if it exists)."""
    from backend.bodies.standin_face import arkit_to_expression

    out = Path(out)
    progress = progress or make_progress("none")
    rng = np.random.default_rng(config.seed)
    body = load_smplx(STANDINS)
    face_model = load_faceverse(STANDINS)
    hands = {side: load_mano(STANDINS, side=side) for side in ("left", "right")}

    train, test = training_performance(config.train_frames, config.fps, config.seed), test_performance(
        config.test_frames, config.fps, config.seed + 1
    )
    motion, arkit = _concatenate(train, test) if config.test_frames else (train.motion, train.arkit)
    frames = motion.num_frames
    names = sorted(arkit)
    motion.expression = arkit_to_expression(names, np.stack([arkit[n] for n in names], axis=1)).astype(np.float32)
    motion.betas = np.zeros(len(body.shape_names), np.float32)
    split = np.full(frames, SPLIT_TRAIN, np.uint8)
    split[config.train_frames :] = SPLIT_TEST

    with torch.inference_mode():
        betas = torch.from_numpy(motion.betas)
        rest_vertices = body.rest_vertices(betas).numpy()
        rest_joints = body.rest_joints(betas).numpy()
        rest = {"joints": rest_joints, "landmarks": _landmarks(body, torch.from_numpy(rest_vertices)[None])[0].numpy()}
        garment = build_garment(body, rest_joints, rest_vertices)
        renderer = _Renderer(body, garment, betas, config.size)
        per_frame = {key: torch.from_numpy(value) for key, value in motion.arrays().items() if key != "betas"}

        def params(batch: slice) -> dict[str, torch.Tensor]:
            return {**{k: v[batch] for k, v in per_frame.items()}, "betas": betas[None].expand(batch.stop - batch.start, -1)}

        # Pass 1: pose every frame once for the camera framing and the face/hand transforms.
        samples = []
        head = np.zeros((frames, 4, 4), np.float32)
        wrists = {"left": np.zeros((frames, 4, 4), np.float32), "right": np.zeros((frames, 4, 4), np.float32)}
        for start in range(0, frames, BATCH):
            batch = slice(start, min(start + BATCH, frames))
            vertices = renderer.posed(params(batch))
            samples.append(vertices[:, ::7].reshape(-1, 3).numpy())
            transforms = body(**params(batch)).joint_transforms.numpy()
            head[batch], wrists["left"][batch], wrists["right"][batch] = (
                transforms[:, HEAD], transforms[:, L_WRIST], transforms[:, R_WRIST],
            )
        K, world_to_camera = frame_camera(np.concatenate(samples), config.size)

        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent if out.parent.exists() else None))
        try:
            (staging / "frames").mkdir()
            (staging / "masks").mkdir()
            K_t, w2c_t = torch.from_numpy(K), torch.from_numpy(world_to_camera)
            for start in range(0, frames, BATCH):
                if progress.cancelled():
                    raise KeyboardInterrupt("sample capture cancelled")
                batch = slice(start, min(start + BATCH, frames))
                images, masks = renderer.render(renderer.posed(params(batch)), K_t, w2c_t)
                for offset, (image, mask) in enumerate(zip(images, masks)):
                    _save_png(staging / "frames" / f"{start + offset:06d}.png", image)
                    _save_png(staging / "masks" / f"{start + offset:06d}.png", mask)
                progress.update(batch.stop, frames, message="rendering the sample capture")

            written = _with_tracking_noise(motion, config.noise, rng)
            tracking = Tracking(
                motion=written,
                camera=CameraTrack(np.repeat(K[None], frames, 0), np.repeat(world_to_camera[None], frames, 0), (config.size, config.size)),
                faceverse=faceverse_track(face_model, body, head, rest, arkit),
                mano={
                    side: mano_track(hands[side], side, wrists[side], getattr(written, f"{side}_hand_pose"), rest_joints)
                    for side in ("left", "right")
                },
                split=split,
            )
            write_tracking(staging / "tracking.npz", tracking)
            info = {
                "description": "Synthetic sample capture: the stand-in SMPL-X body in a procedural outfit and a loose "
                "tunic, rendered by Neural Avatar's own rasterizer. Train it with the stand-in body models.",
                "body_model": body.label,
                "config": asdict(config),
                "train_frames": int((split == SPLIT_TRAIN).sum()),
                "test_frames": int((split == SPLIT_TEST).sum()),
            }
            (staging / "sample_capture.json").write_text(json.dumps(info, indent=1))
            if out.exists():
                shutil.rmtree(out)
            os.replace(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return out


def _with_tracking_noise(motion: SmplxMotion, noise: float, rng: np.random.Generator) -> SmplxMotion:
    """The motion as a tracker would report it: the rendered truth plus Gaussian noise."""
    if noise == 0:
        return motion
    arrays = motion.arrays()
    noisy = {}
    for key in ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "jaw_pose"):
        noisy[key] = arrays[key] + rng.normal(scale=noise, size=arrays[key].shape).astype(np.float32)
    noisy["transl"] = arrays["transl"] + rng.normal(scale=0.05 * noise, size=arrays["transl"].shape).astype(np.float32)
    others = {k: v for k, v in arrays.items() if k not in noisy and k != "betas"}
    return SmplxMotion(fps=motion.fps, betas=motion.betas, gender=motion.gender, **others, **noisy)


def contact_sheet(capture: str | Path, out: str | Path, columns: int = 8) -> Path:
    """A PNG grid of evenly spaced frames (top row) and their masks (bottom row)."""
    from backend.capture.folder import CaptureFolder

    folder = CaptureFolder(capture)
    picks = np.linspace(0, folder.num_frames - 1, columns).round().astype(int)
    frames = [folder.frame(i) for i in picks]
    masks = [np.repeat(folder.mask(i)[..., None], 3, axis=2) if folder.has_masks else np.zeros_like(frames[0]) for i in picks]
    sheet = np.concatenate([np.concatenate(frames, axis=1), np.concatenate(masks, axis=1)], axis=0)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(out)
    return out
