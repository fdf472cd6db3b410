"""The typed experiment config: one pydantic model per section, defaults live here once.

Covers every section of the DLAE manual's config file (model type, data paths, preprocessing,
augmentation, loss + parameters, learning-rate schedule, optimizer + parameters, training
options, monitors, saving) as clean YAML with real types, plus what ctdl adds (sampling,
inference, post-processing, evaluation). Unknown keys are errors (``extra="forbid"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Triple = tuple[float, float, float]
IntTriple = tuple[int, int, int]

DLAE_NORMALIZATIONS = (
    "none",
    "samplewise_unity_x",
    "samplewise_negpos_x",
    "global_unity_x",
    "global_negpos_x",
    "samplewise_unity_xy",
    "samplewise_negpos_xy",
    "global_unity_xy",
    "global_negpos_xy",
)
NORMALIZATIONS = DLAE_NORMALIZATIONS + ("zscore", "unity_minus_mean")


class SplitConfig(Section):
    """How cases are divided into train/validation/test (seeded, stratified where labels allow)."""

    train: float = Field(0.7, ge=0, le=1, description="fraction of cases for training")
    val: float = Field(0.15, ge=0, le=1, description="fraction of cases for validation")
    test: float = Field(0.15, ge=0, le=1, description="fraction of cases for testing")
    seed: Optional[int] = Field(None, description="split seed (default: the experiment seed)")
    train_cases: Optional[list[str]] = Field(None, description="explicit training case ids (overrides fractions)")
    val_cases: Optional[list[str]] = Field(None, description="explicit validation case ids")
    test_cases: Optional[list[str]] = Field(None, description="explicit test case ids")

    @model_validator(mode="after")
    def _fractions(self) -> "SplitConfig":
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1, got {total:g}")
        return self


class DataConfig(Section):
    """Where the cases are and how they are laid out (DLAE: `paths`)."""

    format: Literal["kits19", "folder", "manifest", "hdf5", "synthetic_kits", "class_folders", "video", "synthetic_tb",
                    "synthetic_video"] = Field(
        "kits19", description="dataset layout: kits19 (case_XXXXX/imaging+segmentation), folder (images/labels pair), manifest (CSV path,label[,split]), hdf5 (DLAE), synthetic_kits (phantoms rendered from KiTS19 masks)"
    )
    root: Optional[Path] = Field(None, description="dataset root folder (kits19, folder, synthetic_kits)")
    images_dir: str = Field("images", description="folder layout: sub-folder of images")
    labels_dir: str = Field("labels", description="folder layout: sub-folder of label maps, matched by file name")
    manifest: Optional[Path] = Field(None, description="CSV manifest path,label[,split] for classification")
    train_x: Optional[Path] = Field(None, description="DLAE HDF5 training images")
    train_y: Optional[Path] = Field(None, description="DLAE HDF5 training annotations")
    val_x: Optional[Path] = Field(None, description="DLAE HDF5 validation images")
    val_y: Optional[Path] = Field(None, description="DLAE HDF5 validation annotations")
    test_x: Optional[Path] = Field(None, description="DLAE HDF5 test images")
    test_y: Optional[Path] = Field(None, description="HDF5 test annotations (not in DLAE; used for evaluation)")
    cases: Optional[Union[int, list[str]]] = Field(None, description="limit to the first N cases or to these case ids")
    classes: list[str] = Field(["background", "kidney", "tumor"], description="class names; index = label value")
    split: SplitConfig = Field(default_factory=SplitConfig)
    cache_dir: Optional[Path] = Field(None, description="preprocessed-volume cache (default: <output_dir>/.cache)")
    synth_source: Optional[Path] = Field(None, description="synthetic_kits: folder of KiTS19 masks to render phantoms from")
    synth_spacing: Optional[Triple] = Field((3.0, 1.5, 1.5), description="synthetic_kits: phantom voxel spacing (D, H, W) mm")
    synth_margin_slices: Optional[int] = Field(8, description="synthetic_kits: crop slices to kidneys +- this margin")

    @model_validator(mode="after")
    def _paths(self) -> "DataConfig":
        if self.format in ("kits19", "folder") and self.root is None:
            raise ValueError(f"data.root is required for format '{self.format}'")
        if self.format == "synthetic_kits" and self.synth_source is None:
            raise ValueError("data.synth_source (a KiTS19 mask folder) is required for format 'synthetic_kits'")
        if self.format == "manifest" and self.manifest is None:
            raise ValueError("data.manifest is required for format 'manifest'")
        if self.format == "hdf5" and (self.train_x is None) != (self.train_y is None):
            raise ValueError("data.train_x and data.train_y must be given together")
        if len(self.classes) < 1:
            raise ValueError("data.classes needs at least one class name")
        return self


class RoiConfig(Section):
    """Region-of-interest cropping around the kidneys (FCN-PPM: 150 x 150 in-plane window)."""

    enabled: bool = Field(False, description="crop around the foreground before training/inference")
    size_hw: Optional[tuple[int, int]] = Field(None, description="fixed in-plane window (rows, cols) around each kidney; None = bounding box")
    margin: IntTriple = Field((4, 8, 8), description="margin in voxels (D, H, W) around the bounding box")
    per_kidney: bool = Field(False, description="one crop per kidney (connected component) instead of one around both")


class PreprocessingConfig(Section):
    """Deterministic steps applied to every case (cached on disk)."""

    reorient: bool = Field(True, description="flip to the canonical orientation before anything else")
    spacing: Optional[Triple] = Field(None, description="resample to this voxel spacing (D, H, W) mm; None keeps native")
    image_interpolation: Literal["linear", "bspline"] = Field("linear", description="image resampling (labels use nearest)")
    hu_window: Optional[Union[str, tuple[float, float]]] = Field(
        "kidney", description="HU clip window: a preset (kidney [-200, 500], abdomen, lung, bone, soft_tissue) or [low, high]"
    )
    normalization: str = Field("samplewise_unity_x", description=f"one of {', '.join(NORMALIZATIONS)}")
    intensity_range: Optional[tuple[float, float]] = Field(None, description="global_* normalizations: dataset [min, max] of the images")
    label_range: Optional[tuple[float, float]] = Field(None, description="global_*_xy normalizations: dataset [min, max] of the targets")
    dataset_mean: Optional[float] = Field(None, description="unity_minus_mean: mean to subtract (None = computed on the training set)")
    roi: RoiConfig = Field(default_factory=RoiConfig)
    inplane_size: Optional[tuple[int, int]] = Field(None, description="resize every slice to (rows, cols), e.g. 128 x 128 (thesis)")
    zoom_shape: Optional[IntTriple] = Field(None, description="spline-zoom the whole volume to (D, H, W), e.g. 70 x 224 x 224 (ViPTT-Net)")
    zoom_order: int = Field(3, ge=0, le=5, description="spline order of zoom_shape")
    remove_background_slices: bool = Field(False, description="training: drop slices without any foreground label (thesis)")
    repeat_channels: int = Field(1, ge=1, description="repeat the image along the channel axis (DLAE repeat_X)")
    center: Literal["none", "samplewise", "featurewise"] = Field(
        "none", description="subtract the mean before normalization: samplewise = one scalar over the sample, featurewise = per channel of the sample (DLAE centering switches; applied by the data.format hdf5 reader)"
    )
    std_normalize: Literal["none", "samplewise", "featurewise"] = Field(
        "none", description="divide by std + 1e-6 before normalization: samplewise = one scalar, featurewise = per channel (DLAE normalization switches; applied by the data.format hdf5 reader)"
    )
    zca_epsilon: Optional[float] = Field(None, gt=0, description="ZCA-whiten each 2D sample (rows x cols*channels) with this epsilon (DLAE zca_epsilon; applied by the data.format hdf5 reader); None = off")

    @field_validator("normalization")
    @classmethod
    def _norm(cls, v: str) -> str:
        if v not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization '{v}'; expected one of {', '.join(NORMALIZATIONS)}")
        return v

    @field_validator("hu_window")
    @classmethod
    def _window(cls, v: Any) -> Any:
        if isinstance(v, (tuple, list)) and not v[0] < v[1]:
            raise ValueError(f"hu_window low must be below high, got {list(v)}")
        return v


class SamplingConfig(Section):
    """How training examples are drawn from preprocessed volumes."""

    mode: Literal["patch3d", "slices2d", "blocks3d", "whole"] = Field(
        "patch3d", description="patch3d: random 3D patches; slices2d: axial slices; blocks3d: N-slice blocks with overlap (thesis); whole: entire volumes"
    )
    patch_size: IntTriple = Field((32, 64, 64), description="patch3d: patch (D, H, W)")
    samples_per_volume: int = Field(4, ge=1, description="patches drawn per volume per epoch")
    patch_inside: bool = Field(
        False, description="patch3d: shift a patch so it lies inside the volume along every axis the volume is at least as long as the patch "
        "(MONAI RandCropByLabelClasses' rule; suits ROI crops, where inference sees whole crops); False: centre exactly on the drawn voxel and pad outside (nnU-Net)"
    )
    class_ratios: Optional[list[float]] = Field(
        None, description="patch3d: probability of centring a patch on each class (e.g. [1, 1, 2] oversamples tumour); None = uniform positions"
    )
    block_slices: int = Field(32, ge=1, description="blocks3d: slices per block (thesis 32)")
    block_overlap: int = Field(12, ge=0, description="blocks3d: overlap between blocks (thesis 12)")
    tumor_duplication: int = Field(0, ge=0, description="extra copies of slices/blocks containing tumour (thesis: 4)")
    tumor_label: int = Field(2, ge=1, description="label value treated as tumour for oversampling")


class AugmentationConfig(Section):
    """Random training-time augmentation (MONAI transforms), image and label together."""

    enabled: bool = Field(True, description="apply augmentation to training samples (DLAE apply_augmentation_switch)")
    flip_axes: list[int] = Field([2], description="spatial axes (0=D, 1=H, 2=W) flipped at random (W = left-right = DLAE horizontal flip)")
    flip_prob: float = Field(0.5, ge=0, le=1)
    rotation_deg: float = Field(0.0, ge=0, description="max in-plane rotation in degrees (thesis 5)")
    rotation_choices: Optional[list[float]] = Field(None, description="draw the rotation angle from this discrete set instead (ViPTT-Net)")
    zoom: float = Field(0.0, ge=0, lt=1, description="max zoom fraction, e.g. 0.05 = +-5 %")
    shift_px: int = Field(0, ge=0, description="max in-plane shift in pixels (thesis 10)")
    shear_deg: float = Field(0.0, ge=0, description="max in-plane shear in degrees (DLAE shear_range)")
    intensity_scale: float = Field(0.0, ge=0, description="random multiplicative intensity jitter fraction")
    intensity_shift: float = Field(0.0, ge=0, description="random additive intensity jitter (normalized units)")
    brightness_range: Optional[tuple[float, float]] = Field(None, description="DLAE brightness: multiply by U(low, high)")
    channel_shift: float = Field(0.0, ge=0, description="DLAE channel shift range")
    noise_std: float = Field(0.0, ge=0, description="additive Gaussian noise std (normalized units)")
    prob: float = Field(0.5, ge=0, le=1, description="probability of each spatial/intensity transform")
    fill_mode: Literal["nearest", "constant", "reflect", "wrap"] = Field("nearest", description="edge filling for affine transforms")
    cval: float = Field(0.0, description="fill value for fill_mode=constant")
    rounds: int = Field(1, ge=1, description="amplification of the training set per epoch (DLAE rounds)")
    height_shift: float = Field(0.0, ge=0, description="dlae affine: max row shift, a fraction of the rows if < 1, else pixels (DLAE height_shift)")
    width_shift: float = Field(0.0, ge=0, description="dlae affine: max column shift, a fraction of the columns if < 1, else pixels (DLAE width_shift)")
    affine: Literal["monai", "dlae"] = Field(
        "monai", description="monai: RandAffine with prob; dlae: DLAE's affine (one draw per sample: rotation/shear in degrees, zoom per axis, "
        "height/width_shift, flips p=0.5 from flip_axes), identical on image and label, slice by slice in 3D (ctdl.data.dlae_transforms)"
    )


class LossConfig(Section):
    """Loss function from the loss registry, with its parameters."""

    name: str = Field("dice_ce", description="registered loss name (ctdl losses lists them)")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the loss")
    class_weights: Optional[Union[Literal["balanced"], list[float]]] = Field(
        None, description="per-class weights, or 'balanced' (computed from training label frequencies, scikit-learn rule)"
    )
    class_weight_factors: Optional[list[float]] = Field(None, description="multiply the class weights by these per-class factors (thesis)")


class OptimizerConfig(Section):
    """Optimizer and its parameters (every optimizer DLAE offers, plus AdamW)."""

    name: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "adamax", "nadam"] = Field("adam")
    lr: float = Field(1e-3, gt=0, description="base learning rate")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay")
    momentum: float = Field(0.9, ge=0, description="SGD / RMSprop momentum")
    nesterov: bool = Field(False, description="SGD Nesterov momentum")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam-family beta1, beta2")
    eps: float = Field(1e-8, gt=0, description="numerical epsilon")
    rho: float = Field(0.9, gt=0, lt=1, description="RMSprop alpha / Adadelta rho")


class ScheduleConfig(Section):
    """Learning-rate schedule, stepped once per epoch (plateau on the monitored value)."""

    name: Literal["none", "multistep", "step", "exponential", "time_decay", "plateau", "polynomial", "cosine"] = Field("none")
    milestones: list[int] = Field([3, 5, 7], description="multistep: epochs at which lr is multiplied by gamma (FCN-PPM [3, 5, 7])")
    gamma: float = Field(0.1, gt=0, description="multistep/step/exponential factor")
    step_size: int = Field(3, ge=1, description="step: period in epochs")
    decay: float = Field(0.0, ge=0, description="time_decay: lr = lr0 / (1 + decay * epoch)")
    factor: float = Field(0.1, gt=0, lt=1, description="plateau: multiply lr by this")
    patience: int = Field(3, ge=0, description="plateau: epochs without improvement")
    cooldown: int = Field(0, ge=0, description="plateau: epochs to wait after a reduction")
    min_lr: float = Field(0.0, ge=0, description="lower bound on the learning rate")
    power: float = Field(0.9, gt=0, description="polynomial: exponent")
    warmup_epochs: int = Field(0, ge=0, description="linear warm-up epochs before the schedule")


class EarlyStoppingConfig(Section):
    enabled: bool = Field(False)
    patience: int = Field(10, ge=1, description="epochs without improvement of the monitored value")
    min_delta: float = Field(0.0, ge=0)
    restore_best: bool = Field(True, description="restore the best weights when stopping")


class TrainingConfig(Section):
    """Training loop options (DLAE `training_configurations`)."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(2, ge=1)
    steps_per_epoch: Optional[int] = Field(None, ge=1, description="cap on batches per epoch (None = one pass)")
    val_every: int = Field(1, ge=1, description="validate every N epochs")
    monitor: str = Field("val_dice_mean", description="value used for best checkpoint, plateau and early stopping")
    monitor_mode: Literal["min", "max"] = Field("max")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    grad_clip: Optional[float] = Field(None, gt=0, description="clip gradient norm to this value")
    amp: bool = Field(False, description="mixed precision where the device supports it: float16 with loss scaling on CUDA, "
                      "bfloat16 autocast on a CPU with native bfloat16 (AVX512-BF16 or AMX); elsewhere float32 with a warning")
    channels_last: bool = Field(False, description="channels-last memory layout for the model and its 4D/5D inputs "
                                "(faster convolutions on CPU with oneDNN, above all with amp)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    num_workers: int = Field(0, ge=0, description="data-loader worker processes")
    shuffle: bool = Field(True)
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads (None = torch default)")
    deterministic: bool = Field(True, description="deterministic algorithms where available")


class MonitorsConfig(Section):
    """Extra metrics logged each epoch (DLAE `monitors`)."""

    metrics: list[str] = Field(["dice"], description="validation metrics: dice, jaccard, weighted_jaccard, accuracy, mse, mae")


class CheckpointConfig(Section):
    """What is saved (DLAE `save_configurations`); every write is atomic."""

    save_last: bool = Field(True)
    save_best: bool = Field(True)
    every_n: int = Field(0, ge=0, description="also keep a checkpoint every N epochs (0 = off)")
    csv: bool = Field(True, description="history.csv")
    tensorboard: bool = Field(True, description="TensorBoard event files")


class CrfConfig(Section):
    enabled: bool = Field(False)
    iterations: int = Field(5, ge=1)
    w_gaussian: float = Field(3.0, ge=0)
    sigma_gaussian_mm: float = Field(2.0, gt=0, description="smoothness kernel width (mm)")
    w_bilateral: float = Field(5.0, ge=0)
    sigma_bilateral_mm: float = Field(5.0, gt=0, description="appearance kernel spatial width (mm)")
    sigma_intensity: Optional[float] = Field(
        None, gt=0, description="appearance kernel intensity width in normalized units (None = 10 % of the 1-99 % range)"
    )


class LargestComponentConfig(Section):
    enabled: bool = Field(False)
    connectivity: Literal[6, 18, 26] = Field(18, description="3D connectivity (FCN-PPM: 18)")
    keep: int = Field(2, ge=1, description="components kept (1 per ROI, 2 for a full CT with both kidneys)")


class PostprocessConfig(Section):
    crf: CrfConfig = Field(default_factory=CrfConfig)
    largest_component: LargestComponentConfig = Field(default_factory=LargestComponentConfig)
    fill_holes: bool = Field(False)


class InferenceConfig(Section):
    """Whole-volume prediction."""

    method: Literal["voting", "sliding_window", "slices2d"] = Field("sliding_window")
    window: int = Field(64, ge=1, description="voting: sub-volume depth in slices (FCN-PPM 64)")
    overlap_slices: int = Field(16, ge=0, description="voting: overlap between sub-volumes")
    roi_size: Optional[IntTriple] = Field(None, description="sliding_window: window (D, H, W); None = sampling.patch_size")
    overlap: float = Field(0.25, ge=0, lt=1, description="sliding_window: overlap fraction")
    blend: Literal["gaussian", "constant"] = Field("gaussian")
    tta_flips: bool = Field(False, description="average predictions over flips along the training flip axes (augmentation.flip_axes)")
    batch_size: int = Field(2, ge=1, description="windows per forward pass (bench/inference_batch.py: 2 took 0.43 x "
                            "the time of 1 on 2 CPU threads, same labels)")
    two_stage: bool = Field(False, description="coarse pass finds the kidneys, the model runs only on their crops")
    coarse_spacing: Triple = Field((6.0, 3.0, 3.0), description="two_stage: spacing (D, H, W) mm of the coarse localiser")
    coarse_epochs: int = Field(6, ge=1, description="two_stage: epochs of the coarse localiser (trained with the model)")
    coarse_steps_per_epoch: int = Field(30, ge=1, description="two_stage: batches per coarse epoch")
    coarse_patch_size: IntTriple = Field((16, 64, 64), description="two_stage: coarse training patch (D, H, W)")
    roi_margin_mm: Triple = Field((12.0, 15.0, 15.0), description="two_stage: margin around the coarse foreground box")


class EvaluationConfig(Section):
    kidney_includes_tumor: bool = Field(False, description="score 'kidney' as kidney+tumour (KiTS19 convention)")
    report_cases: int = Field(4, ge=0, description="cases shown as overlays in the HTML report")
    previews: bool = Field(True, description="live validation previews: at each validation epoch save a downsampled "
                           "prediction of the first validation case under <run>/previews/ (the web viewer's epoch slider)")


class ModelConfig(Section):
    """Model from the registry (DLAE prebuilt) or a DLAE layer list."""

    name: str = Field("unet3d_small", description="registered model name (ctdl models lists them)")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model factory")
    in_channels: Optional[int] = Field(None, ge=1, description="input channels (default: preprocessing.repeat_channels)")
    pretrained: Optional[Path] = Field(None, description="local weight file (never downloaded)")
    layers: Optional[list[str]] = Field(None, description="DLAE serial layer list (instead of name)")


class ClassificationConfig(Section):
    """Whole-volume classification / regression settings (ViPTT-Net seed).

    Data formats (``data.format``): manifest (CSV path,label[,split]), class_folders (``root/<class>/<volume>``),
    video (``root/<class>/<clip>.avi|.mp4`` or ``root/<class>/<clip>/<frame>.png``), synthetic_tb (TB chest
    phantoms), synthetic_video (moving shapes, 10 classes). Every sample is windowed, then spline-zoomed to
    ``preprocessing.zoom_shape`` (paper 70 x 224 x 224, order ``preprocessing.zoom_order``) and normalized.
    """

    label_base: int = Field(0, description="integer labels in a manifest start at this value (ImageCLEF: 1)")
    finetune_from: Optional[Path] = Field(None, description="checkpoint (.pt or run folder) whose weights start this run (video pretraining -> CT)")
    replace_head: bool = Field(True, description="finetune_from: drop the checkpoint's classifier head (model attribute 'head') and start a new one")
    freeze: list[str] = Field(default_factory=list, description="parameter name prefixes kept frozen (e.g. [features] = the VGG16 part)")
    synth_per_class: int = Field(20, ge=1, description="synthetic_tb / synthetic_video: samples per class")
    synth_shape: IntTriple = Field((40, 96, 96), description="synthetic_tb / synthetic_video: size (D, H, W) before the zoom; TB depth varies +-25 %")
    synth_noise_hu: float = Field(40.0, ge=0, description="synthetic_tb: Gaussian noise (HU)")
    video_frames: Optional[int] = Field(None, ge=1, description="video: frames read per clip before the zoom (None = all)")
    eval_split: Literal["auto", "val", "test"] = Field("auto", description="split scored at the end (auto: test, or val when test is empty, as the paper's Table 1)")
    report: bool = Field(True, description="write report.html (confusion matrix PNG, Table-1-style F1 table)")


class GanNetConfig(Section):
    """One GAN network: a registered model (``ctdl models``) or a DLAE layer list."""

    name: str = Field("unet_generator2d", description="registered generator/discriminator name (task 'gan')")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the model factory")
    layers: Optional[list[str]] = Field(None, description="DLAE layer list (generator_layer_list / discriminator_layer_list) instead of name")


def _gan_optimizer() -> OptimizerConfig:
    return OptimizerConfig(name="adam", lr=2e-4, betas=(0.5, 0.999))


class GanConfig(Section):
    """Image-to-image translation settings (pix2pix, CycleGAN).

    Data: ``sampling.mode`` slices2d (2D nets on axial slices) or patch3d (3D nets on patches of
    ``sampling.patch_size``); ``preprocessing.hu_window`` is the HU range mapped linearly to [-1, 1]
    for both source and target (the generators end in tanh). Sources: ``data.format`` folder
    (``data.images_dir`` = source, ``data.labels_dir`` = target, matched by file name), manifest (CSV
    ``source,target[,split]``), hdf5 (DLAE ``train_x``/``train_y`` = source/target) or synthetic_kits
    with ``gan.phantom`` (demo pairs rendered from KiTS19 masks).
    """

    mode: Literal["pix2pix", "cyclegan"] = Field("pix2pix", description="pix2pix: paired conditional GAN + L1; cyclegan: unpaired, two generators and two discriminators")
    generator: GanNetConfig = Field(default_factory=GanNetConfig, description="generator (CycleGAN builds two from it: G source->target, F target->source)")
    discriminator: GanNetConfig = Field(
        default_factory=lambda: GanNetConfig(name="patchgan2d"),
        description="discriminator (pix2pix: sees source and target concatenated; CycleGAN: one per domain, unconditioned)",
    )
    adversarial_loss: Literal["lsgan", "bce"] = Field(
        "lsgan",
        description="lsgan (default): least squares, what DLAE actually trains with (MSE against 1/0 patch maps), so imported DLAE "
        "configs behave as before, and it does not saturate, which is why CycleGAN uses it too; bce: the original log loss "
        "(sigmoid cross-entropy, non-saturating generator form) the DLAE manual writes",
    )
    lambda_l1: float = Field(100.0, ge=0, description="pix2pix: weight of the L1 term (DLAE loss parameter 1; pix2pix paper 100)")
    lambda_cycle: float = Field(10.0, ge=0, description="cyclegan: weight of each cycle-consistency L1 term (DLAE parameter 1)")
    lambda_identity: float = Field(
        5.0, ge=0, description="cyclegan: absolute weight of each identity L1 term (DLAE parameter 2; CycleGAN paper 0.5 x lambda_cycle)"
    )
    g_optimizer: OptimizerConfig = Field(default_factory=_gan_optimizer, description="generator(s) optimizer (DLAE gan_optimizer; the name is used)")
    d_optimizer: OptimizerConfig = Field(default_factory=_gan_optimizer, description="discriminator(s) optimizer (DLAE discriminator_optimizer)")
    pool_size: int = Field(50, ge=0, description="cyclegan: history pool of generated images shown to D (0 = off)")
    preview_every: int = Field(1, ge=1, description="write preview_epoch_NNN.png every N epochs (source | generated | target)")
    phantom: Literal["denoise", "contrast"] = Field(
        "denoise",
        description="synthetic_kits demo pairs: denoise (source = clean phantom + low-dose-like noise and blur, target = clean); "
        "contrast (source = arterial-phase phantoms, target = non-contrast phantoms of other cases: unpaired)",
    )
    phantom_noise_hu: float = Field(60.0, ge=0, description="denoise: std (HU) of the added low-dose-like noise")
    phantom_noise_corr: float = Field(0.6, ge=0, description="denoise: Gaussian correlation length (voxels, in-plane) of that noise")
    phantom_blur: float = Field(0.0, ge=0, description="denoise: extra in-plane Gaussian blur (voxels) of the source")
    baseline_sigmas: list[float] = Field([0.5, 0.75, 1.0, 1.5, 2.0], description="evaluation: in-plane Gaussian-filter baseline sigmas (voxels); the best on the test cases is reported")


class DetectionConfig(Section):
    """Box detection settings (SSD); names follow DLAE's `bbd_options` (see ctdl.detection.anchors)."""

    backbone: str = Field("ssd", description="registered detector (task detection, e.g. ssd, ssd_small) or feature extractor (task ssd_features, e.g. resnet50_ssd) wrapped by the generic SSD head")
    input_size: tuple[int, int] = Field((128, 128), description="slices are resized to (rows, cols) before detection; anchors use min(rows, cols)")
    slice_axis: int = Field(0, ge=0, le=2, description="volumes are cut into 2D slices along this axis (0 = axial)")
    nested_classes: bool = Field(True, description="label-map boxes: class k's box covers labels >= k (KiTS: the kidney box includes its tumour)")
    min_box_size: int = Field(3, ge=1, description="label-map boxes: drop components whose box is narrower than this (pixels, after resizing)")
    empty_slice_fraction: float = Field(0.0, ge=0, le=1, description="training: fraction of slices without boxes kept (as pure negatives)")
    scaling_type: Literal["global", "per_layer"] = Field("global", description="global: scales = [min, max] spread linearly over n_layers + 1 values; per_layer: n_layers + 1 values")
    scales: list[float] = Field([0.1, 0.9], description="anchor sizes as fractions of min(rows, cols)")
    aspect_ratios_type: Literal["global", "per_layer"] = Field("global", description="global: one list for every layer; per_layer: a list per layer")
    aspect_ratios: Union[list[float], list[list[float]]] = Field([1.0, 2.0, 0.5], description="anchor width/height ratios")
    two_boxes_for_ar1: bool = Field(True, description="an extra ratio-1 anchor of size sqrt(s_k * s_k+1) (DLAE two_boxes_for_AR1_switch)")
    steps: Optional[list[Union[float, tuple[float, float]]]] = Field(None, description="anchor centre spacing per layer in pixels, scalar or (rows, cols); None = input size / feature size")
    offsets: Optional[list[Union[float, tuple[float, float]]]] = Field(None, description="first anchor centre per layer in units of the step; None = 0.5")
    clip_boxes: bool = Field(False, description="clip anchors to the image (DLAE clip_boxes_switch)")
    normalize_coords: bool = Field(True, description="anchors and boxes in [0, 1] image units (DLAE normalize_coordinates_switch)")
    variances: tuple[float, float, float, float] = Field((0.1, 0.1, 0.2, 0.2), description="box encoding divisors (cx, cy, w, h)")
    pos_iou_threshold: float = Field(0.5, gt=0, le=1, description="matching: anchors with IoU >= this to a box are positives")
    neg_iou_limit: float = Field(0.3, ge=0, le=1, description="matching: unmatched anchors with IoU >= this are neutral (not negatives)")
    neg_pos_ratio: float = Field(3.0, ge=0, description="loss: hard negatives kept per positive (DLAE loss parameter1)")
    n_neg_min: int = Field(0, ge=0, description="loss: negatives kept at least per batch (ssd_keras n_neg_min)")
    alpha: float = Field(1.0, ge=0, description="loss: weight of the localisation term (DLAE loss parameter2)")
    confidence_threshold: float = Field(0.01, ge=0, le=1, description="decoding: minimum class score")
    iou_threshold: float = Field(0.45, gt=0, le=1, description="decoding: NMS drops boxes with IoU above this")
    top_k: int = Field(200, ge=0, description="decoding: boxes kept per image after NMS (0 = all)")
    max_outputs: int = Field(400, ge=1, description="decoding: boxes kept per class by NMS (DLAE nms_maximum_output, unused there)")
    eval_iou: float = Field(0.5, gt=0, le=1, description="evaluation: IoU for a detection to count as a hit")
    froc_fps: list[float] = Field([0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0], description="evaluation: false positives per image for the FROC points")

    @model_validator(mode="after")
    def _shapes(self) -> "DetectionConfig":
        nested = [isinstance(a, list) for a in self.aspect_ratios]
        if self.aspect_ratios_type == "per_layer" and not all(nested):
            raise ValueError("detection.aspect_ratios: per_layer needs one list of ratios per layer")
        if self.aspect_ratios_type == "global" and any(nested):
            raise ValueError("detection.aspect_ratios: global needs one flat list of ratios (or set aspect_ratios_type: per_layer)")
        if self.scaling_type == "global" and len(self.scales) != 2:
            raise ValueError(f"detection.scales: global scaling needs [min, max], got {len(self.scales)} values")
        if self.neg_iou_limit > self.pos_iou_threshold:
            raise ValueError("detection.neg_iou_limit must not exceed pos_iou_threshold")
        return self


class ExperimentConfig(Section):
    """A whole experiment. DLAE's `config_file.model_signal` is `task`."""

    name: str = Field("experiment", description="run name (the run folder is <output_dir>/<name>)")
    task: Literal["segmentation", "classification", "regression", "gan", "detection"] = Field("segmentation")
    seed: int = Field(0, description="seeds Python, NumPy and torch")
    output_dir: Path = Field(Path("runs"), description="parent folder of run folders")
    data: DataConfig
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    monitors: MonitorsConfig = Field(default_factory=MonitorsConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    postprocess: PostprocessConfig = Field(default_factory=PostprocessConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    classification: ClassificationConfig = Field(default_factory=ClassificationConfig)
    gan: GanConfig = Field(default_factory=GanConfig)
    detection: DetectionConfig = Field(default_factory=DetectionConfig)
    scales: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named override sets, e.g. {demo: {training.epochs: 2}}, applied by --scale NAME"
    )

    @model_validator(mode="after")
    def _dlae_sample_steps_need_hdf5(self) -> "ExperimentConfig":
        pre = self.preprocessing
        used = [k for k, on in (("center", pre.center != "none"), ("std_normalize", pre.std_normalize != "none"),
                                ("zca_epsilon", pre.zca_epsilon is not None)) if on]
        if used and self.data.format != "hdf5":
            raise ValueError(f"preprocessing.{used[0]} is a DLAE sample step applied to HDF5 data only "
                             f"(data.format: hdf5); got data.format '{self.data.format}'")
        return self

    @property
    def n_classes(self) -> int:
        return len(self.data.classes)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name
