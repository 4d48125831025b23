"""The lab's fast 3D path: a small differentiable volume, trained with the real guidance code.

What a threestudio NeRF run does, in plain PyTorch and small enough for many seeds on a CPU:

* **Cameras** as threestudio's ``random-camera-datamodule`` samples them (``data/uncond.py``),
  with the data block of a shipped NeRF config: elevation uniform in degrees or uniform on the
  sphere (probability 1/2 each), azimuth stratified over the batch, distance and fovy uniform,
  camera / centre / up perturbations, the "dreamfusion" light near the camera; the first step
  looks from the front at the evaluation elevation (its ``progressive_view`` with
  ``progressive_until: 0``). Pinhole rays in its convention (``lab.world`` uses the same).
* **Geometry**: a voxel grid (density and albedo logits, trilinear) over the ball of radius
  ``radius``, with threestudio's ``blob_magic3d`` density bias and softplus activation;
  "analytic" normals are minus the gradient of the density (finite differences of the grid plus
  the blob's exact gradient). Not threestudio's hash grid + MLP: a grid trains in a few hundred
  steps on a CPU.
* **Material**: threestudio's ``diffuse-with-point-light-material``: albedo only before
  ``ambient_only_steps``, afterwards albedo / textureless / diffuse with its probabilities;
  diffuse at test time with the light at the camera.
* **Background**: a neural environment map (spherical harmonics of the ray direction, bands
  0-2 as tiny-cuda-nn's degree 3, an MLP with 16 neurons x 2 hidden layers without biases, sigmoid).
* **Rendering**: ``samples`` stratified points per ray inside the ball, alpha compositing,
  background behind.
* **Losses**: the guidance's ``loss_sds`` (times ``lambda_sds``), the orientation loss and the
  sparsity loss of threestudio's ``dreamfusion-system`` with the config's lambdas (schedules as
  threestudio's ``C``); Adam with the config's per-module learning rates. With ``VSDSettings``:
  ``prolificdreamer-system``'s lambda_vsd loss_vsd + lambda_lora loss_lora instead of the SDS
  term, the guidance's LoRA and camera embedding trained by the VSD config's optimiser.

The guidance is ``antijanus.core.guidance.ScoreDistillationGuidance`` itself, called like a
threestudio system calls it (``update_step`` each step, renders [B, H, W, 3], the cameras'
elevation / azimuth / distance; VSD's ``VSDGuidance`` also the batch's ``c2w`` / ``mvp_mtx``),
with a prompt output from ``lab.prompt_output``.

    cameras    camera settings, the training camera sampler, the test orbit's cameras
    volume     the voxel volume, the background, the scene
    rendering  volume rendering, the material's shading, the test orbit
    training   the losses, the optimiser's settings and the training loop
"""

from .cameras import (LAB_LATENT_RESOLUTION, LAB_RESOLUTION, CameraSampler, Cameras, CameraSettings, SampledCameras,
                      camera_matrices, look_at_rays, orbit_cameras, spherical)
from .rendering import Material, ball_interval, render, render_orbit
from .training import (GuidanceTraining, SystemSettings, TrainResult, VSDSettings, opaque_loss, orientation_loss,
                       sparsity_loss, train)
from .volume import (EnvironmentBackground, Scene, VolumeSettings, VoxelVolume, colour_channels, make_scene,
                     sh_basis)

__all__ = [
    "LAB_LATENT_RESOLUTION", "LAB_RESOLUTION", "CameraSampler", "CameraSettings", "Cameras", "EnvironmentBackground",
    "GuidanceTraining", "Material", "SampledCameras", "Scene", "SystemSettings", "TrainResult", "VSDSettings",
    "VolumeSettings", "VoxelVolume", "ball_interval", "camera_matrices", "colour_channels", "look_at_rays", "make_scene", "opaque_loss", "orbit_cameras", "orientation_loss", "render",
    "render_orbit", "sh_basis", "sparsity_loss", "spherical", "train",
]
